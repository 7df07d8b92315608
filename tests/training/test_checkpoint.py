"""Checkpoints: exact round trip of the train state, no pickle, atomic writes."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax.precision import get_policy, loss_scale_for
from mpnn_jax.training import checkpoint as ckpt
from mpnn_jax.training.optim import make_optimizer
from mpnn_jax.training.state import init_train_state

from .conftest import toy_params


def _state(seed=0, policy="fp16-mixed", schedule="plateau"):
    params = jax.tree_util.tree_map(
        lambda x: x + jax.random.normal(jax.random.PRNGKey(seed), x.shape), toy_params()
    )
    opt, _ = make_optimizer(lr=1e-2, schedule=schedule, weight_decay=1e-3, clip_norm=10.0)
    ls = loss_scale_for(get_policy(policy), initial=2.0**10, period=7)
    return init_train_state(params=params, optimizer=opt, loss_scale=ls, rng=jax.random.PRNGKey(5))


def _equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert np.asarray(x).dtype == np.asarray(y).dtype


def test_round_trip_exact(tmp_path):
    state = _state(1)
    state = state.replace(step=jnp.int32(17), epoch=jnp.int32(2), position=jnp.int32(3))
    meta = {"step": 17, "species": [1, 6, 8], "e0s": np.array([-1.0, -2.0, -3.0])}
    path = ckpt.save_checkpoint(tmp_path, state=state, ema_params=state.ema_params, metadata=meta)
    restored, meta2 = ckpt.restore_state(path, _state(2))
    _equal(restored, state)
    assert restored.loss_scale.period == 7  # static aux data comes from the template
    assert meta2["e0s"] == [-1.0, -2.0, -3.0]
    params, meta3 = ckpt.load_weights(path)
    _equal(params, state.ema_params)
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 17
    # no pickle anywhere: the file is a msgpack map
    assert b"pickle" not in path.read_bytes() and path.read_bytes()[:1] in (b"\x84", b"\xde")


def test_restore_rejects_a_different_structure(tmp_path):
    state = _state(1)
    path = ckpt.save_checkpoint(tmp_path, state=state, ema_params=state.ema_params, metadata={})
    with pytest.raises(ValueError, match="does not match"):
        ckpt.restore_state(path, _state(1, schedule="constant"))


def test_crash_during_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    good = _state(1)
    ckpt.save_checkpoint(tmp_path, state=good, ema_params=good.ema_params, metadata={"step": 1})
    before = sorted(p.name for p in tmp_path.iterdir())

    def crash(f, data):
        f.write(bytes(data[: len(data) // 2]))  # half the bytes reach the disk...
        raise OSError("simulated crash mid-write")  # ...then the process dies

    monkeypatch.setattr(ckpt, "_write_all", crash)
    newer = _state(2)
    with pytest.raises(OSError, match="simulated crash"):
        ckpt.save_checkpoint(tmp_path, state=newer, ema_params=newer.ema_params, metadata={})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temp file left behind
    restored, meta = ckpt.restore_state(ckpt.checkpoint_path(tmp_path), _state(3))
    _equal(restored, good)
    assert meta == {"step": 1}


def test_torn_file_is_detected(tmp_path):
    good = _state(1)
    path = ckpt.save_checkpoint(tmp_path, state=good, ema_params=good.ema_params, metadata={})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # what a non-atomic writer could leave
    with pytest.raises(Exception):  # noqa: B017 - msgpack raises its own error types
        ckpt.restore_state(path, good)
