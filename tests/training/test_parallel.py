"""Data parallelism over 4 host CPU devices (in subprocesses: the device count is fixed at import).

(1) a 4-device step equals a single-device step on the mean loss of the same 4 batches; (2) a
non-finite gradient on one device skips the step everywhere and lowers the loss scale; (3) a
4-device checkpoint resumes on 1 device, continuing the data order from the same batch; (4) the
``parallel`` config section is validated.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from mpnn_jax.training import checkpoint as ckpt
from mpnn_jax.training.config import ConfigError, apply_overrides, config_from_dict, load_config

from .test_train_presets import FAST, TINY

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("parallel_checks.py")
# 3 host batches per epoch; 5 steps x 4 devices = 20 batches: ends at epoch 6, position 2
FOUR = [*FAST, "train.max_steps=5", "train.eval_every=5", "parallel.devices=4"]


def _run_checks(names: list[str], workdir: Path, cache: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT), ",".join(names), str(workdir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _run_check(name: str, workdir: Path, cache: str) -> str:
    proc = _run_checks([name], workdir, cache)
    assert proc.returncode == 0 and f"{name} passed" in proc.stdout, proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(scope="module")
def step_and_overflow(tmp_path_factory, compilation_cache):
    """The two checks below in one subprocess: one start and one draw of the FP32 parameters
    (the same for both policies); each test reads its own check's result."""
    return _run_checks(["step", "overflow"], tmp_path_factory.mktemp("parallel"), compilation_cache)


def test_parallel_step_equals_mean_of_single_device_losses(step_and_overflow):
    proc = step_and_overflow
    assert "step passed" in proc.stdout, proc.stderr[-4000:]
    assert "ok: 4 batches, 2 distinct buckets" in proc.stdout


def test_overflow_on_one_device_skips_everywhere(step_and_overflow):
    proc = step_and_overflow
    assert "overflow passed" in proc.stdout, proc.stderr[-4000:]


@pytest.mark.slow  # 21 s on 2 cores
def test_four_device_checkpoint_resumes_on_one(tmp_path, compilation_cache):
    from mpnn_jax.data import SpeciesTable
    from mpnn_jax.potential import make_predictor
    from mpnn_jax.training.data import make_loader, prepare_data
    from mpnn_jax.training.evaluate import load_run
    from mpnn_jax.training.loop import train
    from mpnn_jax.training.loss import make_loss_fn

    workdir = tmp_path / "run"
    assert "ok" in _run_check("train", workdir, compilation_cache)
    meta = json.loads((workdir / "checkpoints" / "latest.json").read_text())
    assert (meta["step"], meta["epoch"], meta["position"], meta["n_devices"]) == (5, 6, 2, 4)
    saved = ckpt.read_checkpoint(workdir / "checkpoints" / "latest.msgpack")
    shutil.copy(workdir / "metrics.jsonl", tmp_path / "metrics4.jsonl")

    assert jax.device_count() == 1
    cfg = load_config(TINY, overrides=[*FAST, "train.max_steps=8", "parallel.devices=1"])
    with pytest.warns(UserWarning, match="written with 4 device"):
        summary = train(cfg, workdir)
    assert summary["status"] == "done" and summary["step"] == 8
    meta = json.loads((workdir / "checkpoints" / "latest.json").read_text())
    assert (meta["step"], meta["epoch"], meta["position"], meta["n_devices"]) == (8, 7, 2, 1)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert [r["epoch"] for r in records[5:]] == [6, 7, 7]

    # step 6 trained on the batch at (epoch 6, position 2) with the 4-device run's parameters
    model, _, _ = load_run(workdir, which="latest")
    template = saved["ema_params"]
    flat = {k[len(".params") :]: v for k, v in saved["state"].items() if k.startswith(".params[")}
    params = ckpt.unflatten_state(template, flat)
    data = prepare_data(
        cfg.data,
        seed=cfg.train.seed,
        species=SpeciesTable.from_list(meta["species"]),
        e0s=np.asarray(meta["e0s"]),
    )
    loader = make_loader(data.train, batch_size=5, shuffle=True, seed=cfg.train.seed)
    batch = next(loader.iterate(6, start_step=2))
    loss_fn = make_loss_fn(energy_weight=1000.0, forces_weight=100.0)
    expected, _ = jax.jit(lambda p, g: loss_fn(make_predictor(model)(p, g), g))(params, batch)
    np.testing.assert_allclose(records[5]["loss"], float(expected), rtol=1e-5)


def test_parallel_config_validation():
    base = {"data": {"train": "/abs/train.xyz"}}
    cfg = config_from_dict(base)
    assert cfg.parallel.devices == "all" and cfg.parallel.num_processes == 1
    assert apply_overrides(cfg, ["parallel.devices=4"]).parallel.devices == 4
    ok = {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}
    assert config_from_dict({**base, "parallel": ok}).parallel.process_id == 1
    bad = [
        ({"devices": "some"}, "expected 'all' or an int"),
        ({"devices": 0}, "must be >= 1"),
        ({"devices": 1.5}, "does not match"),
        ({"num_processes": 0}, "num_processes must be >= 1"),
        ({"num_processes": 2, "process_id": 0}, "coordinator_address is required"),
        ({**ok, "process_id": 2}, r"process_id must be in \[0, 2\)"),
        ({**ok, "process_id": None}, "process_id must be in"),
        ({"gpus": 2}, r"unknown key parallel\.gpus"),
    ]
    for section, match in bad:
        with pytest.raises(ConfigError, match=match):
            config_from_dict({**base, "parallel": section})
    with pytest.raises(ValueError, match="device"):
        from mpnn_jax.training.parallel import select_devices

        select_devices(jax.device_count() + 1)
