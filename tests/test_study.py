"""The precision study (mpnn_jax.study, mpnn_jax.study_runs): errors against fp64, table, JSON,
verdict rule, plots, and the helpers of the training comparison."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from repo_scripts import load_script

from mpnn_jax import study, study_runs
from mpnn_jax.precision import STAGES

POLICIES = ["fp32", "fp32+messages=bf16", "bf16-pure"]


@pytest.fixture(scope="module")
def tiny():
    """A tiny random-init NequIP and 4 ethanol configurations (float64 graphs)."""
    from mpnn_jax.data import GraphLoader, SpeciesTable, bundled_path, read_xyz
    from mpnn_jax.models import build_model
    from mpnn_jax.potential import init_params
    from mpnn_jax.training.data import configs_to_graphs

    configs = read_xyz(bundled_path("rmd17_ethanol", "test"))[:4]
    species = SpeciesTable.from_configs(configs)
    graphs = configs_to_graphs(configs, cutoff=3.0, species=species, dtype=np.float64)
    model = build_model(
        "nequip",
        policy="fp32",
        n_species=len(species),
        cutoff=3.0,
        avg_num_neighbors=5.0,
        n_layers=1,
        hidden_irreps="4x0e+2x1o",
        radial_features=(8,),
    )
    batch = next(
        GraphLoader(study.cast_graphs(graphs, np.float32), batch_size=4, shuffle=False).iterate(0)
    )
    params = init_params(model, jax.random.PRNGKey(0), batch)
    return model, params, graphs, species, configs[0]


@pytest.fixture(scope="module")
def rows(tiny):
    model, params, graphs, _, _ = tiny
    return study.stage_errors(model, params, graphs, policies=POLICIES, model_error=True)


def test_fp32_matches_fp64_and_low_precision_is_worse(rows):
    by = {r["policy"]: r for r in rows}
    fp32, msg, pure = by["fp32"], by["fp32+messages=bf16"], by["bf16-pure"]
    assert fp32["forces_rel_rmse"] < 1e-4
    assert msg["forces_rel_rmse"] > 1e-4
    assert msg["forces_mae_mev_per_A"] > 10 * fp32["forces_mae_mev_per_A"]
    assert pure["forces_mae_mev_per_A"] > msg["forces_mae_mev_per_A"]
    assert pure["energy_mae_mev_per_atom"] > fp32["energy_mae_mev_per_atom"]
    assert all(r["finite"] for r in rows)
    assert fp32["stress_mae_mev_per_A3"] is None  # molecules: no stress
    assert (msg["kind"], msg["stage"], msg["dtype"]) == ("ablation", "messages", "bf16")
    assert fp32["kind"] == "preset" and fp32["verdict"] == "safe"


def test_study_leaves_x64_off(rows):
    assert jnp.zeros(1).dtype == jnp.float32


def test_model_error_gives_fractions(rows):
    fp32, pure = rows[0], rows[-1]
    assert 0 <= fp32["forces_frac"] < 1e-4 and fp32["energy_frac"] >= 0
    # the fraction is the error over the same model's own test error: one ratio for all rows
    ratio = pure["forces_mae_mev_per_A"] / pure["forces_frac"]
    assert fp32["forces_mae_mev_per_A"] / fp32["forces_frac"] == pytest.approx(ratio)


def test_table_has_every_stage(rows):
    table = study.stage_table(rows)
    lines = table.splitlines()
    assert lines[0].startswith("| stage | the seed's claim | measured BF16 error")
    for s in STAGES:
        assert sum(line.startswith(f"| {s} |") for line in lines) == 1, s
    assert "| messages |" in table and "BF16" in next(
        x for x in lines if x.startswith("| messages")
    )
    assert "| bf16-pure |" in table


def test_json_round_trip(rows, tmp_path):
    path = study.save_json(tmp_path / "e.json", rows, command="x --y", seeds={"init": 0})
    back, meta = study.load_json(path)
    assert back == json.loads(json.dumps(rows))
    assert meta == {"command": "x --y", "seeds": {"init": 0}}


def _row(f, e=0.0, **kw):
    return {"forces_mae_mev_per_A": f, "energy_mae_mev_per_atom": e, "finite": True, **kw}


def test_verdict_rule():
    # random init: absolute force thresholds 1 and 10 meV/Å
    assert study.verdict(_row(0.99)) == "safe"
    assert study.verdict(_row(1.01)) == "caution"
    assert study.verdict(_row(10.5)) == "unsafe"
    assert study.verdict(_row(0.5, 1.5)) == "caution"  # and 1 / 10 meV/atom on the energy
    assert study.verdict(_row(0.5, 8000.0)) == "unsafe"
    assert study.verdict(_row(math.nan)) == "fails"
    assert study.verdict({**_row(0.1), "finite": False}) == "fails"
    # trained: fractions of the model's own test error (forces and energy), 10% and 100%
    assert study.verdict(_row(50.0, forces_frac=0.09, energy_frac=0.01)) == "safe"
    assert study.verdict(_row(0.01, forces_frac=0.01, energy_frac=0.2)) == "caution"
    assert study.verdict(_row(0.01, forces_frac=1.5, energy_frac=0.0)) == "unsafe"


def test_stage_verdict_against_the_seed():
    safe, bad = {"verdict": "safe"}, {"verdict": "unsafe"}
    assert study._stage_verdict("messages", safe, safe).endswith("seed confirmed")
    assert study._stage_verdict("messages", bad, safe).endswith("seed holds for FP16 only")
    assert study._stage_verdict("messages", bad, bad).endswith("seed refuted")
    assert study._stage_verdict("energy", safe, safe).endswith("seed over-cautious")
    assert study._stage_verdict("energy", bad, bad).endswith("seed confirmed")
    assert study._stage_verdict("energy", bad, safe).endswith("seed confirmed for BF16; FP16 safe")
    assert study._stage_verdict("energy", None, None) == "not measured"


def test_plot_stage_errors(rows, tmp_path):
    path = study.plot_stage_errors(rows, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_study_policies_and_cast():
    pols = study.study_policies()
    n = len(study.STUDY_PRESETS)
    assert len(pols) == 2 * len(STAGES) + n and pols[-n:] == list(study.STUDY_PRESETS)
    assert "fp32+forces=f16" in pols
    g = study.cast_graphs([{"x": np.ones(2), "i": np.arange(2)}], np.float32)[0]
    assert g["x"].dtype == np.float32 and g["i"].dtype == np.arange(2).dtype


def test_training_comparison_helpers(tmp_path):
    records = [
        {"step": 10, "loss": 1.0, "loss_scale": 32768.0, "skipped": 0},
        {"step": 20, "loss": 0.5, "loss_scale": 16384.0, "skipped": 1},
        {"step": 20, "val": {}},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    h = study_runs.loss_scale_history(tmp_path / "metrics.jsonl")
    assert h == {"steps": [10, 20], "loss_scale": [32768.0, 16384.0], "skipped": [0, 1]}
    hot = tmp_path / "test_MD_600K.xyz"
    hot.write_text("")
    assert study_runs.default_test_files(str(tmp_path / "test_MD_300K.xyz")) == [
        str(tmp_path / "test_MD_300K.xyz"),
        str(hot),
    ]
    assert study_runs.default_test_files(None) == []
    res = {
        "fp32": {
            "steps": 20,
            "skipped": 1,
            "minutes": 0.5,
            "loss_scale": h,
            "test": {"t.xyz": {"energy_mae_mev_per_atom": 1.0, "forces_mae_mev_per_A": 2.0}},
        }
    }
    assert "| fp32 | t.xyz | 1.000 | 2.00 | 20 | 1 | 0.5 |" in study_runs.comparison_table(res)
    assert study_runs.plot_loss_scales(res, tmp_path / "ls.png").exists()
    # one process per policy, merged afterwards: both policies, their curves, the fp64 columns
    roots = []
    for spec, ferr in (("fp32", 0.01), ("bf16-mixed", 3.0)):
        root = tmp_path / "side" / spec
        (root / spec).mkdir(parents=True)
        recs = [*records[:2], {"step": 20, "val": {"forces_mae_mev_per_A": 5.0}}]
        (root / spec / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        r = dict(res["fp32"], vs_fp64={"forces_mae_mev_per_A": ferr, "stress_mae_mev_per_A3": None})
        study_runs.write_comparison(root, {spec: r}, {"config": "c.yaml"}, {})
        roots.append(root)
    merged = study_runs.merge_comparisons(roots, tmp_path / "merged")
    assert list(merged) == ["fp32", "bf16-mixed"]
    table = (tmp_path / "merged" / "comparison.md").read_text()
    assert "| bf16-mixed | t.xyz | 1.000 | 2.00 | 20 | 1 | 0.5 | 3 | - |" in table
    meta = json.loads((tmp_path / "merged" / "comparison.json").read_text())
    assert meta["config"] == "c.yaml" and len(meta["merged_from"]) == 2
    assert (tmp_path / "merged" / "learning_curves.png").exists()


def test_nve_drift_writes_drift_and_plot(tiny, tmp_path):
    import ase

    model, params, _, species, config = tiny
    atoms = ase.Atoms(numbers=config.numbers, positions=config.positions)
    res = study_runs.nve_drift(
        (model, params, species, 3.0),
        atoms,
        policies=["fp32"],
        steps=20,
        dt=0.5,
        log_every=5,
        out=tmp_path,
    )
    r = res["fp32"]
    assert len(r["times_ps"]) == 5 and r["times_ps"][-1] == pytest.approx(0.01)
    assert math.isfinite(r["drift_meV_per_atom_per_ps"]) and r["fluctuation_meV_per_atom"] >= 0
    assert json.loads((tmp_path / "nve_drift.json").read_text())["steps"] == 20
    assert (tmp_path / "nve_energy.png").exists()
    # a second run (another policy, as one process per policy would write) merges with it
    study_runs.nve_drift(
        (model, params, species, 3.0),
        atoms,
        policies=["bf16-mixed"],
        steps=20,
        log_every=5,
        out=tmp_path / "b",
    )
    merged = study_runs.merge_nve([tmp_path, tmp_path / "b"], tmp_path / "m")
    assert sorted(merged) == ["bf16-mixed", "fp32"]
    assert merged["fp32"] == r
    assert (tmp_path / "m" / "nve_energy.png").exists()


def test_nve_one_ps_conserves_energy_and_bf16_adds_noise(tiny):
    """The study's short NVE: 1 ps (2000 x 0.5 fs, lax.scan on the device) of ethanol with the
    tiny model. FP64 and FP32 conserve the total energy (drift and fluctuation far below
    1 meV/atom); BF16's rounding shows up as a larger fluctuation, as in the 20 ps GPU runs."""
    import ase

    model, params, _, species, config = tiny
    atoms = ase.Atoms(numbers=config.numbers, positions=config.positions)
    res = study_runs.nve_drift(
        (model, params, species, 3.0),
        atoms,
        policies=["fp64", "fp32", "bf16-mixed"],
        steps=2000,
        dt=0.5,
        log_every=20,
        progress=False,
    )
    for spec in ("fp64", "fp32"):
        r = res[spec]
        assert r["times_ps"][-1] == pytest.approx(1.0)
        assert abs(r["drift_meV_per_atom_per_ps"]) < 0.2, (spec, r["drift_meV_per_atom_per_ps"])
        assert r["fluctuation_meV_per_atom"] < 0.2, (spec, r["fluctuation_meV_per_atom"])
    # same start, same physics: fp32 follows fp64's total energy
    assert abs(res["fp32"]["total_eV"][0] - res["fp64"]["total_eV"][0]) < 1e-4
    bf16 = res["bf16-mixed"]
    assert math.isfinite(bf16["drift_meV_per_atom_per_ps"])
    assert bf16["fluctuation_meV_per_atom"] > 2 * res["fp32"]["fluctuation_meV_per_atom"]


def test_doctests():
    import doctest

    assert doctest.testmod(study).failed == 0


def test_stress_error_on_periodic_graphs(tiny):
    from mpnn_jax import testing

    model, params, _, _, _ = tiny
    rng = np.random.default_rng(1)
    cells = [testing.periodic_graph(rng, n_species=3, dtype=np.float64) for _ in range(2)]
    (row,) = study.stage_errors(model, params, cells, policies=["fp32+geometry=bf16"])
    assert row["stress_mae_mev_per_A3"] is not None and row["stress_mae_mev_per_A3"] > 0
    assert "S " in study._cell(row)


_ROUNDING_PROBE = """
import json, os, sys
from mpnn_jax import study
if sys.argv[1] == "strict":
    study.forbid_excess_precision()
import jax, jax.numpy as jnp, ml_dtypes, numpy as np
x = np.random.default_rng(0).normal(size=4096).astype(np.float32)
# a BF16 multiply whose result is cast to FP32: strict rounding must round the product
y = jax.jit(lambda x: (x.astype(jnp.bfloat16) * jnp.bfloat16(3.0)).astype(jnp.float32))(x)
b = ml_dtypes.bfloat16
want = (x.astype(b) * b(3.0)).astype(b).astype(np.float32)  # numpy's BF16 arithmetic
diff = float(np.abs(np.asarray(y) - want).max())
print(json.dumps({"strict": study.strict_rounding(), "max_diff": diff}))
"""


@pytest.mark.parametrize("mode", ["strict", "default"])
def test_forbid_excess_precision_makes_bf16_ops_round(mode):
    """Under the study's flag a BF16 op rounds its result exactly as BF16 arithmetic does; the
    flag is recorded (``strict_rounding``). XLA's default is free to keep the product in FP32,
    so there only the recording is checked."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(study.STRICT_ROUNDING_FLAG, "")
    res = subprocess.run(
        [sys.executable, "-c", _ROUNDING_PROBE, mode],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["strict"] is (mode == "strict")
    if mode == "strict":
        assert out["max_diff"] == 0.0


def test_script_summary_and_table(rows, tmp_path, capsys):
    """``precision_study.py summary`` puts several studies side by side; ``table`` re-renders."""
    script = load_script("experiments/precision_study.py")
    meta = {"command": "test", "note": "", "source": {"model": {"name": "nequip"}}, "n_configs": 4}
    study.save_json(tmp_path / "a" / "stage_errors.json", rows, **meta)
    assert script.main(["table", str(tmp_path / "a" / "stage_errors.json")]) == 0
    assert (tmp_path / "a" / "stage_table.md").exists()
    out = tmp_path / "summary.md"
    argv = ["summary", f"A={tmp_path / 'a' / 'stage_errors.json'}", "--out", str(out)]
    assert script.main(argv) == 0
    table = out.read_text().splitlines()
    assert table[0] == "| stage | A BF16 / FP16 |"
    msg = next(r for r in rows if r["policy"] == "fp32+messages=bf16")
    line = next(t for t in table if t.startswith("| messages |"))
    assert line.startswith(f"| messages | {msg['forces_mae_mev_per_A']:.2g} (")
    assert any(t.startswith("| preset **bf16-pure** |") for t in table)
    with pytest.raises(SystemExit):
        script.main(["summary", "no-label-given.json"])


@pytest.mark.slow
def test_study_all_quick_runs_end_to_end(tmp_path):
    """The whole study from one command (``QUICK=1``: tiny models, a few steps; ~10 min on two
    cores): training under two policies per data set, NVE, per-stage tables, one SUMMARY.md."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "data").exists() and not (root.parent / "shared" / "data").exists():
        pytest.skip("the study's data sets (../shared/data) are not here")
    env = {**os.environ, "QUICK": "1", "JAX_PLATFORMS": "cpu"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(
        ["bash", "experiments/study_all.sh", str(tmp_path / "study")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = (tmp_path / "study" / "SUMMARY.md").read_text()
    for section in ("Training under each policy: ethanol", "acac", "cu", "## NVE"):
        assert section in summary, section
    for table in ("stages_mace_trained", "stages_nequip_trained", "stages_mace_random_init"):
        assert f"## Per-stage errors: {table}" in summary
        assert (tmp_path / "study" / table / "stage_errors.png").exists()
    assert "| bf16-mixed |" in summary


def test_plot_nve_gives_an_outlier_its_own_panel(tmp_path):
    """A policy that fluctuates by eV (bf16-pure) gets a panel of its own, so the others stay
    readable; without one, a single panel."""
    import matplotlib.image

    t = np.linspace(0.0, 1.0, 50).tolist()
    rng = np.random.default_rng(0)

    def run(noise):
        return {
            "times_ps": t,
            "total_eV": (-100.0 + noise * rng.normal(size=50)).tolist(),
            "drift_meV_per_atom_per_ps": 0.0,
            "fluctuation_meV_per_atom": 1000.0 * noise / 9,
        }

    calm = {"fp32": run(1e-4), "fp16-mixed": run(2e-4), "bf16-mixed": run(1e-3)}
    study_runs.plot_nve(calm, tmp_path / "calm.png", n_atoms=9)
    study_runs.plot_nve({**calm, "bf16-pure": run(10.0)}, tmp_path / "wild.png", n_atoms=9)
    one = matplotlib.image.imread(tmp_path / "calm.png").shape[1]
    two = matplotlib.image.imread(tmp_path / "wild.png").shape[1]
    assert two == pytest.approx(2 * one, rel=0.02)
