"""Multi-process data parallelism for real: 2 processes on localhost, 2 CPU devices each.

Both processes call ``train`` with ``parallel.num_processes=2`` (``jax.distributed.initialize``
on a local coordinator; cross-process CPU collectives through gloo) and form one 4-device mesh.
Checked against a single-process run on 4 forced CPU devices over the same global batches:
(a) the parameters, EMA weights and logged losses agree to FP32 rounding; (b) only process 0
wrote files (process 1 is given its own, never-created run directory) and each process padded
only its devices' share of the host batches; (c) both processes resume from the shared
checkpoint.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mpnn_jax.training import checkpoint as ckpt

from .test_train_presets import FAST

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("multiprocess_checks.py")
# 3 host batches of 5 per epoch; 5 steps x 4 devices = 20 batches (crossing epochs)
RUN = [*FAST, "train.max_steps=5", "train.eval_every=5", "parallel.devices=all"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdirs: list[Path], n_local: int, overrides: list[str], cache: str) -> list:
    """Starts ``len(workdirs)`` processes of one run (process i in ``workdirs[i]``)."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    n = len(workdirs)
    dist = []
    if n > 1:
        address = f"127.0.0.1:{_free_port()}"
        dist = [f"parallel.num_processes={n}", f"parallel.coordinator_address={address}"]
    return [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), str(w), str(n_local), *overrides, *dist]
            + ([f"parallel.process_id={i}"] if n > 1 else []),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, w in enumerate(workdirs)
    ]


def _wait(procs: list) -> list[dict]:
    """The JSON line of each process; kills the others if one fails (they would wait forever in
    a collective)."""
    outs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=300)
            assert p.returncode == 0, stderr[-4000:]
            outs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return outs


def _state(workdir: Path) -> dict:
    return ckpt.read_checkpoint(workdir / "checkpoints" / "latest.msgpack")


def _losses(workdir: Path) -> list[float]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.mark.slow  # 38 s on 2 cores; the one-process four-device step test runs by default
def test_two_processes_match_one_process_on_four_devices(tmp_path, compilation_cache):
    ref_dir, run0, run1 = tmp_path / "ref", tmp_path / "p0", tmp_path / "p1"
    # the reference and the two processes run side by side (compiling is mostly serial)
    procs = _start([ref_dir], 4, RUN, compilation_cache)
    procs += _start([run0, run1], 2, RUN, compilation_cache)
    ref, *outs = _wait(procs)
    assert (ref["process_count"], ref["devices"]) == (1, 4)
    for i, out in enumerate(outs):
        assert (out["process_index"], out["process_count"]) == (i, 2)
        assert (out["local_devices"], out["devices"]) == (2, 4)
        assert out["summary"]["status"] == "done" and out["summary"]["step"] == 5
        # 1 init batch + own rows only: 5 steps x 2 rows + 2 of the 4 validation rows
        assert out["batches_built"] == 1 + (ref["batches_built"] - 1) // 2, (out, ref)

    # (b) process 0 wrote everything, process 1 nothing (not even its run directory)
    assert not run1.exists(), sorted(run1.rglob("*"))
    names = {p.relative_to(run0).as_posix() for p in run0.rglob("*") if p.is_file()}
    expected = {"config.yaml", "metrics.jsonl", "summary.json", "learning_curve.png"}
    expected |= {f"checkpoints/{n}.{s}" for n in ("latest", "best") for s in ("msgpack", "json")}
    assert names == expected, names

    # (a) the same parameters, EMA weights and loss curve as one process over 4 devices
    a, b = _state(ref_dir), _state(run0)
    assert set(a["state"]) == set(b["state"])
    for key, value in a["state"].items():
        np.testing.assert_allclose(b["state"][key], value, rtol=2e-5, atol=1e-6, err_msg=key)
    assert a["metadata"]["step"] == b["metadata"]["step"] == 5
    assert b["metadata"]["n_devices"] == 4
    np.testing.assert_allclose(_losses(run0), _losses(ref_dir), rtol=2e-5)
    assert outs[0]["summary"]["best_val_loss"] == outs[1]["summary"]["best_val_loss"]


@pytest.mark.slow  # 40 s on a 2-core CI machine; `make test-all` runs it
def test_two_processes_resume_from_process_zeros_checkpoint(tmp_path, compilation_cache):
    """Every process reads the shared checkpoint (a process that started afresh would fail the
    loop's same-step check) and the run continues to the end on both."""
    run = tmp_path / "run"
    outs = _wait(_start([run, run], 2, RUN, compilation_cache))
    assert [o["summary"]["step"] for o in outs] == [5, 5]
    more = [*FAST, "train.max_steps=7", "train.eval_every=7", "parallel.devices=all"]
    outs = _wait(_start([run, run], 2, more, compilation_cache))
    assert [o["summary"]["step"] for o in outs] == [7, 7]
    # each process built only its share: 2 steps x 2 rows, 2 validation rows, 1 init batch
    assert [o["batches_built"] for o in outs] == [7, 7]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 8))
    assert _state(run)["metadata"]["step"] == 7
