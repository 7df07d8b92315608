"""The notebooks under notebooks/ run top to bottom (nbmake, in a subprocess; < 2 min each)."""

import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "precision_explorer.ipynb"}


@pytest.mark.parametrize(
    "notebook",
    [  # the quickstart in the default suite, the others with -m slow (40-50 s each on 2 cores)
        p if p.stem == "quickstart" else pytest.param(p, marks=pytest.mark.slow) for p in NOTEBOOKS
    ],
    ids=[p.stem for p in NOTEBOOKS],
)
def test_notebook_runs(notebook, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "--nbmake",
        "--nbmake-timeout=120",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        str(notebook),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
