"""A real (tiny, 4-step) training run, then run_md and Calculator.from_run on its workdir."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest

from mpnn_jax.data import bundled_path
from mpnn_jax.md import Calculator, run_md

TINY = Path(__file__).resolve().parents[2] / "experiments" / "configs" / "tiny.yaml"


@pytest.mark.slow
def test_md_on_a_trained_run(tmp_path):
    from mpnn_jax.training.config import load_config
    from mpnn_jax.training.loop import train

    if not TINY.exists():
        pytest.skip("experiments/configs/tiny.yaml is absent")
    overrides = ["train.max_steps=4", "train.eval_every=2", "train.log_every=2"]
    workdir = tmp_path / "run"
    assert train(load_config(TINY, overrides=overrides), workdir)["status"] == "done"
    structure = bundled_path("rmd17_ethanol", "test")
    summary = run_md(
        workdir, structure, steps=100, log_every=20, out=tmp_path / "md", progress=False
    )
    assert summary["n_atoms"] == 9 and summary["steps"] == 100
    assert np.isfinite(summary["drift_meV_per_atom_per_ps"])
    assert summary["n_compilations"] == 1
    assert len(ase.io.read(tmp_path / "md" / "trajectory.xyz", index=":")) == 6
    atoms = ase.io.read(structure, index=0)
    atoms.calc = Calculator.from_run(workdir)
    assert atoms.get_forces().shape == (9, 3)
    assert np.isfinite(atoms.get_potential_energy())
