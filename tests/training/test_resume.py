"""Exact resume: a run SIGKILLed (or interrupted) mid-way and resumed has the same loss curve."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mpnn_jax.training import loop
from mpnn_jax.training.config import load_config
from mpnn_jax.training.loop import train

from .test_train_presets import FAST as RESUME
from .test_train_presets import TINY, read_losses

ROOT = Path(__file__).resolve().parents[2]


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_curve(a: Path, b: Path) -> None:
    ra, rb = _records(a), _records(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, 46))
    np.testing.assert_allclose(read_losses(a), read_losses(b), rtol=1e-6, atol=0)
    for key in ("lr", "grad_norm", "epoch", "loss_scale", "skipped"):
        np.testing.assert_allclose([r[key] for r in ra], [r[key] for r in rb], rtol=1e-6)
    va = [r["val"]["forces_mae_mev_per_A"] for r in ra if "val" in r]
    vb = [r["val"]["forces_mae_mev_per_A"] for r in rb if "val" in r]
    np.testing.assert_allclose(va, vb, rtol=1e-6)


@pytest.fixture(scope="module")
def reference_run(tiny_run):
    """The uninterrupted run: the session's shared tiny fp32 run (``RESUME`` is its config)."""
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["step"] == 45
    return tiny_run


def test_sigkill_and_resume_gives_identical_curve(tmp_path, reference_run, compilation_cache):
    workdir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mpnn_jax.training.loop", str(TINY), str(workdir), *RESUME]
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": compilation_cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    meta = workdir / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if meta.exists() and json.loads(meta.read_text())["step"] >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = json.loads(meta.read_text())["step"]
    assert 4 <= killed_at < 45
    # resume (a new process would do the same; in-process keeps the test fast)
    summary = train(load_config(TINY, overrides=RESUME), workdir)
    assert summary["status"] == "done" and summary["step"] == 45
    _assert_same_curve(reference_run, workdir)


def test_keyboard_interrupt_saves_and_resumes(tmp_path, reference_run, monkeypatch):
    workdir = tmp_path / "interrupted"
    real_progress = loop._progress

    class InterruptingBar:
        def __init__(self, total, initial):
            self.bar = real_progress(total, initial)
            self.n = initial

        def update(self, k):
            self.n += k
            if self.n == 6:  # not a checkpoint step: the handler must save step 6
                raise KeyboardInterrupt

        def __getattr__(self, name):
            return getattr(self.bar, name)

    monkeypatch.setattr(loop, "_progress", InterruptingBar)
    summary = train(load_config(TINY, overrides=RESUME), workdir)
    assert summary["status"] == "interrupted" and summary["step"] == 6
    assert json.loads((workdir / "checkpoints" / "latest.json").read_text())["step"] == 6
    monkeypatch.setattr(loop, "_progress", real_progress)
    summary = train(load_config(TINY, overrides=RESUME), workdir)
    assert summary["status"] == "done"
    _assert_same_curve(reference_run, workdir)


def test_max_minutes_stops_cleanly_and_resumes(tmp_path, reference_run):
    workdir = tmp_path / "time_limited"
    summary = train(load_config(TINY, overrides=[*RESUME, "train.max_minutes=1e-5"]), workdir)
    assert summary["status"] == "time_limit" and summary["step"] == 1
    assert json.loads((workdir / "checkpoints" / "latest.json").read_text())["step"] == 1
    summary = train(load_config(TINY, overrides=[*RESUME, "train.max_minutes=null"]), workdir)
    assert summary["status"] == "done" and summary["step"] == 45
    _assert_same_curve(reference_run, workdir)


def test_resume_with_other_data_order_warns(tmp_path, reference_run):
    import shutil

    workdir = tmp_path / "copy"
    shutil.copytree(reference_run, workdir)
    with pytest.warns(UserWarning, match=r"train\.seed: 0 -> 1"):
        summary = train(load_config(TINY, overrides=[*RESUME, "train.seed=1"]), workdir)
    assert summary["step"] == 45  # already finished: nothing more to do


def test_steps_per_call_gives_the_same_curve(tmp_path, reference_run):
    """Three optimiser steps per device call (a lax.scan) follow the one-step-per-call run."""
    every3 = ["train.steps_per_call=3", "train.log_every=3", "train.checkpoint_every=3"]
    summary = train(load_config(TINY, overrides=[*RESUME, *every3]), tmp_path)
    assert summary["status"] == "done" and summary["step"] == 45
    ra = {r["step"]: r for r in _records(reference_run)}
    rb = _records(tmp_path)
    assert [r["step"] for r in rb] == list(range(3, 46, 3))
    for key in ("loss", "grad_norm", "lr", "epoch", "loss_scale"):
        np.testing.assert_allclose(
            [r[key] for r in rb], [ra[r["step"]][key] for r in rb], rtol=2e-5, err_msg=key
        )
    vb = [r["val"]["forces_mae_mev_per_A"] for r in rb if "val" in r]
    va = [ra[r["step"]]["val"]["forces_mae_mev_per_A"] for r in rb if "val" in r]
    assert len(vb) == 3
    np.testing.assert_allclose(vb, va, rtol=2e-5)
