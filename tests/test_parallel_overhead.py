"""``experiments/perf/parallel_overhead.py --quick`` keeps working on the CPU (no timing claim)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "perf" / "parallel_overhead.py"


@pytest.mark.slow  # an experiment script's smoke run (33 s); tests/training covers the step
def test_quick_run_writes_every_case(tmp_path):
    out = tmp_path / "overhead.json"
    args = ["--quick", "--model", "nequip", "--batch-sizes", "3", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "ratio" in proc.stdout
    result = json.loads(out.read_text())
    assert result["info"]["device"] and result["info"]["jax"] == jax.__version__
    assert "commit" in result["info"] and result["command"].endswith(" ".join(args))
    assert result["model"] == "nequip" and result["quick"] is True
    assert [(r["mode"], r["batch_size"]) for r in result["rows"]] == [("train", 3), ("ef", 3)]
    for row in result["rows"]:
        assert row["n_atoms"] == 27 and row["padded_nodes"] > 27
        for path in ("plain", "sharded"):
            t = row[path]
            for key in ("median_ms", "p10_ms", "p90_ms", "compile_s"):
                assert math.isfinite(t[key]) and t[key] > 0, (path, key, t)
            assert t["p10_ms"] <= t["median_ms"] <= t["p90_ms"]
            assert t["repeats"] == result["repeats"]
        assert math.isclose(row["ratio"], row["sharded"]["median_ms"] / row["plain"]["median_ms"])
