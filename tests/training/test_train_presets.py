"""A few real training steps (tiny MACE, bundled ethanol) under each precision preset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mpnn_jax.training.config import load_config
from mpnn_jax.training.loop import train

TINY = Path(__file__).resolve().parents[2] / "experiments" / "configs" / "tiny.yaml"
# 3 batches of 5 per epoch; shared with test_resume.py so that the fp32 programs are compiled once
FAST = [
    "data.n_train=15",
    "data.n_valid=5",
    "data.test=null",
    "train.max_steps=45",
    "train.eval_every=15",
    "train.checkpoint_every=4",
    "train.log_every=1",
    "train.schedule=warmup_cosine",
    "train.warmup_steps=3",
    "train.lr=0.02",
]


def read_losses(workdir: Path) -> list[float]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.mark.parametrize(
    "policy",
    [
        "fp32",
        # the loop is fp32's; the bf16-mixed model step is tested per model (tests/models/)
        pytest.param("bf16-mixed", marks=pytest.mark.slow),
        "fp16-mixed",  # dynamic loss scaling: skipped steps and the scale's record
        pytest.param("bf16-pure", marks=pytest.mark.slow),
    ],
)
def test_few_steps_decrease_loss_without_nan(tmp_path, policy, request):
    if policy == "fp32":  # the tiny config's own policy: the session's shared run, read-only
        tmp_path = request.getfixturevalue("tiny_run")
        summary = json.loads((tmp_path / "summary.json").read_text())
    else:
        cfg = load_config(TINY, overrides=[*FAST, f"precision.policy={policy}"])
        summary = train(cfg, tmp_path)
    assert summary["status"] == "done" and summary["step"] == 45
    losses = np.array(read_losses(tmp_path))
    assert losses.shape == (45,)
    assert np.all(np.isfinite(losses)), losses
    # three batches per epoch: compare the first and the last epoch
    assert losses[-3:].mean() < 0.6 * losses[:3].mean(), losses
    val = summary["val"]
    assert np.isfinite(val["forces_mae_mev_per_A"]) and val["n_configs"] == 5
    skipped = [json.loads(line)["skipped"] for line in (tmp_path / "metrics.jsonl").open()]
    if policy == "fp16-mixed":
        # the first steps overflow at the initial 2^15 and are skipped, each halving the scale;
        # then the scale is low enough for (nearly) every step: a later overflow halves it again
        assert skipped[:3] == [1, 2, 3] and skipped[-1] < 10, skipped
        scales = [json.loads(line)["loss_scale"] for line in (tmp_path / "metrics.jsonl").open()]
        # a record holds the scale its step used, and the skips counted after that step
        assert scales == [2.0 ** (15 - k) for k in [0, *skipped[:-1]]], (scales, skipped)
    else:
        assert skipped[-1] == 0
    for name in ("config.yaml", "summary.json", "learning_curve.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "checkpoints" / "best.msgpack").is_file()
    meta = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    assert meta["step"] == 45 and meta["policy"] == policy and meta["species"] == [1, 6, 8]
