"""load_run / evaluate on a trained tiny run: metrics against a per-config numpy computation."""

from __future__ import annotations

import numpy as np
import pytest

from mpnn_jax.data import SpeciesTable, atoms_to_graph, bundled_path, pad_graph, read_xyz
from mpnn_jax.potential import make_potential
from mpnn_jax.training.evaluate import evaluate, format_metrics, load_run

TEST = "bundled:rmd17_ethanol/test"


def test_evaluate_matches_per_config_reference(run_dir):
    result = evaluate(run_dir, TEST, n_configs=7, batch_size=3)
    model, params, meta = load_run(run_dir)
    assert meta["policy"] == "fp32" and meta["species"] == [1, 6, 8]
    assert result["policy"] == "fp32" and result["n_configs"] == 7
    potential = make_potential(model, params)
    species = SpeciesTable.from_list(meta["species"])
    de, df = [], []
    for c in read_xyz(bundled_path("rmd17_ethanol", "test"), index="0:7"):
        g = atoms_to_graph(c, cutoff=meta["cutoff"], species_table=species)
        out = potential(pad_graph(g, n_node=10, n_edge=96, n_graph=2))  # one graph at a time
        de.append((float(out["energy"][0]) - c.energy) / c.n_atoms)
        df.append(np.asarray(out["forces"][: c.n_atoms], np.float64) - c.forces)
    de, df = np.array(de), np.concatenate(df)
    # float32 energies of ~ -4200 eV: 0.5 meV resolution, i.e. ~0.06 meV/atom
    assert result["energy_mae_mev_per_atom"] == pytest.approx(1e3 * np.abs(de).mean(), abs=0.1)
    assert result["forces_mae_mev_per_A"] == pytest.approx(1e3 * np.abs(df).mean(), rel=1e-4)
    assert result["forces_rmse_mev_per_A"] == pytest.approx(1e3 * np.sqrt((df**2).mean()), rel=1e-4)
    assert "stress_mae_mev_per_A3" not in result
    table = format_metrics(result)
    assert "forces_mae_mev_per_A" in table and "fp32" in table


def test_policy_override_changes_only_precision(run_dir):
    ref = evaluate(run_dir, TEST, n_configs=5)
    low = evaluate(run_dir, TEST, n_configs=5, policy="bf16-mixed")
    assert low["policy"] == "bf16-mixed"
    model, _, _ = load_run(run_dir, policy="bf16-mixed")
    assert model.policy.name == "bf16-mixed"
    # same weights: bf16 messages move the force errors by a little, not by a different model
    assert low["forces_mae_mev_per_A"] != ref["forces_mae_mev_per_A"]
    assert low["forces_mae_mev_per_A"] == pytest.approx(ref["forces_mae_mev_per_A"], rel=0.2)


def test_backend_is_recorded_and_can_be_overridden(run_dir):
    """The run records its backend; evaluate/load_run can swap it (same weights, same numbers);
    a spec from before backends were recorded builds with e3nn; an unavailable one is an error."""
    from mpnn_jax.nn.backends import available_backends
    from mpnn_jax.training.loop import build_model_from_spec

    model, _, meta = load_run(run_dir)
    assert meta["model"]["backend"] == "e3nn" and model.backend == "e3nn"
    old_spec = {k: v for k, v in meta["model"].items() if k != "backend"}
    assert build_model_from_spec(old_spec, policy="fp32").backend == "e3nn"
    ref = evaluate(run_dir, TEST, n_configs=5)  # the batch (program) of the test above
    assert ref["backend"] == "e3nn"
    if "cueq" in available_backends():
        other = evaluate(run_dir, TEST, n_configs=5, backend="cueq")
        assert other["backend"] == "cueq" and load_run(run_dir, backend="cueq")[0].backend == "cueq"
        for key in ("energy_mae_mev_per_atom", "forces_mae_mev_per_A", "forces_rmse_mev_per_A"):
            assert other[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-3)
    else:
        with pytest.raises(ValueError, match="cueq extra"):
            evaluate(run_dir, TEST, n_configs=4, backend="cueq")
    with pytest.raises(ValueError, match="unknown or unavailable backend 'nope'"):
        load_run(run_dir, backend="nope")


def test_audit_run_checks_the_trained_policy(run_dir):
    from mpnn_jax.precision import get_policy
    from mpnn_jax.training.evaluate import audit_run

    report = audit_run(run_dir)
    assert report.check(get_policy("fp32")) == []
    assert "messages" in report.stages()


def test_policy_vs_fp64_of_a_trained_run(run_dir):
    from mpnn_jax.study_runs import policy_vs_fp64

    # the run was trained in fp32: its own policy against fp64 differs by FP32 rounding only
    err = policy_vs_fp64(run_dir, TEST, 4)
    assert err["finite"] and 0.0 < err["forces_mae_mev_per_A"] < 1e-2
    assert err["stress_mae_mev_per_A3"] is None  # molecules: no stress
