"""Shared fixtures of the data tests: tiny configurations and the optional real datasets."""

from pathlib import Path

import numpy as np
import pytest

from mpnn_jax.data import (
    Configuration,
    shared_data_dir,  # noqa: E402,F401  (re-exported for the tests)
)


def make_config(numbers, positions, cell=None, pbc=False, energy=None, forces=None, stress=None):
    numbers = np.asarray(numbers, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.float64)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    cell = np.zeros((3, 3)) if cell is None or not pbc.any() else np.asarray(cell, np.float64)
    return Configuration(
        numbers=numbers,
        positions=positions,
        cell=cell,
        pbc=pbc,
        energy=energy,
        forces=forces,
        stress=stress,
    )


@pytest.fixture
def write_xyz(tmp_path):
    """Writes text to a temporary .xyz file and returns its path."""

    def _write(text: str, name: str = "data.xyz") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write
