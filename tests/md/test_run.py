"""run_md and Calculator.from_run on a (faked) trained run: files, summary, policy hand-over."""

from __future__ import annotations

import json

import ase.io
import jax
import numpy as np
import pytest

from mpnn_jax.md import Calculator, run_md

from .conftest import CUTOFF


@pytest.fixture
def fake_run(monkeypatch, make_pair_model):
    """Replaces training's ``load_run`` by one returning the pair model; records the policy."""
    calls = []

    def load_run(workdir, *, policy=None, backend=None):
        calls.append((str(workdir), policy))
        model, params = make_pair_model("fp32")
        model = model.clone(backend=backend or "auto")  # a run trained with backend "auto"
        if policy is not None:
            model = model.clone(policy=policy)
        return model, params, {"species": [1, 6, 8], "cutoff": CUTOFF, "policy": "fp32"}

    import mpnn_jax.training

    monkeypatch.setattr(mpnn_jax.training, "load_run", load_run, raising=False)
    return calls


def test_run_md_nve_writes_files_and_summary(tmp_path, fake_run, molecule):
    structure = tmp_path / "start.xyz"
    ase.io.write(structure, molecule)
    out = tmp_path / "md"
    summary = run_md(
        tmp_path / "run",
        structure,
        steps=200,
        dt=0.5,
        temperature=300.0,
        log_every=20,
        out=out,
        progress=False,
    )
    assert fake_run == [(str(tmp_path / "run"), None)]
    for key in (
        "ns_per_day",
        "atom_steps_per_s",
        "drift_meV_per_atom_per_ps",
        "fluctuation_meV_per_atom",
        "mean_temperature_K",
        "n_compilations",
    ):
        assert np.isfinite(summary[key]), key
    assert summary["steps"] == 200 and summary["n_atoms"] == 7 and summary["ensemble"] == "nve"
    assert summary["policy"] == "fp32"
    assert abs(summary["simulated_ps"] - 0.1) < 1e-12
    assert abs(summary["drift_meV_per_atom_per_ps"]) < 20.0  # float32, 0.1 ps
    assert summary["mean_temperature_K"] > 100.0  # starts at 300 K, then heats as it binds
    assert json.loads((out / "summary.json").read_text()) == summary
    table = np.loadtxt(out / "energies.csv", delimiter=",", skiprows=1)
    assert table.shape == (11, 6)
    np.testing.assert_allclose(table[:, 4], table[:, 2] + table[:, 3], atol=1e-8)
    frames = ase.io.read(out / "trajectory.xyz", index=":")
    assert len(frames) == 11 and frames[-1].info["step"] == 200


def test_run_md_nvt_and_policy(tmp_path, fake_run, crystal):
    summary = run_md(
        tmp_path,
        crystal,
        steps=40,
        ensemble="nvt",
        temperature=500.0,
        policy="fp32-highest",
        progress=True,
    )
    assert fake_run[0][1].name == "fp32-highest"
    assert summary["ensemble"] == "nvt" and summary["policy"] == "fp32-highest"
    # the summary names the backend that ran, not "auto"
    assert summary["backend"] == ("pallas" if jax.default_backend() == "gpu" else "e3nn")
    assert summary["steps"] == 40


def test_run_md_bad_structure(tmp_path, fake_run, molecule):
    with pytest.raises(FileNotFoundError, match="no such structure"):
        run_md(tmp_path, tmp_path / "missing.xyz", steps=1, progress=False)
    molecule.symbols[0] = "Cl"
    with pytest.raises(ValueError, match="Cl not in the model"):
        run_md(tmp_path, molecule, steps=1, progress=False)


def test_calculator_from_run(tmp_path, fake_run, molecule):
    calc = Calculator.from_run(tmp_path, policy="fp32")
    assert calc.cutoff == CUTOFF and calc.species_table.numbers == (1, 6, 8)
    assert fake_run[0][1].name == "fp32"
    molecule.calc = calc
    assert np.isfinite(molecule.get_potential_energy())
