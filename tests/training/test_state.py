"""The train step: non-finite gradients skip the update and lower the scale; EMA; optimiser."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mpnn_jax.precision import get_policy, loss_scale_for
from mpnn_jax.training.loss import make_loss_fn
from mpnn_jax.training.optim import ema_update, make_optimizer, make_schedule, plateau_scale
from mpnn_jax.training.state import init_train_state, make_train_step

from .conftest import make_toy_predictor, padded_batches, toy_params


def _setup(policy_name, *, initial=2.0**15, period=2000, schedule="constant", lr=1e-2):
    policy = get_policy(policy_name)
    opt, _ = make_optimizer(lr=lr, clip_norm=100.0, schedule=schedule)
    state = init_train_state(
        params=toy_params(),
        optimizer=opt,
        loss_scale=loss_scale_for(policy, initial=initial, period=period),
        rng=jax.random.PRNGKey(0),
    )
    step = jax.jit(
        make_train_step(
            make_toy_predictor(policy),
            loss_fn=make_loss_fn(energy_weight=1.0, forces_weight=10.0),
            optimizer=opt,
            ema_decay=0.9,
            batches_per_epoch=2,
            plateau=schedule == "plateau",
        )
    )
    return state, step


def _same(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_fp16_overflow_skips_update_and_lowers_scale(graphs8):
    batch = padded_batches(graphs8[:4], 4)[0]
    # a scale of 2^40 overflows the FP16 cotangents of the messages stage
    state, step = _setup("fp16-mixed", initial=2.0**40)
    new, m = step(state, batch)
    assert bool(m["skipped"])
    assert not np.isfinite(float(m["grad_norm"]))
    _same(new.params, state.params)
    _same(new.opt_state, state.opt_state)
    _same(new.ema_params, state.ema_params)
    assert float(new.loss_scale.loss_scale) == 2.0**39
    assert int(new.n_skipped) == 1 and int(new.step) == 1 and int(new.position) == 1
    # the scale keeps halving until the gradients are finite, then training proceeds
    for _ in range(40):
        new, m = step(new, batch)
        if not bool(m["skipped"]):
            break
    assert not bool(m["skipped"])
    assert float(new.loss_scale.loss_scale) < 2.0**30
    assert int(new.n_skipped) >= 10
    assert any(
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(
            jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(state.params)
        )
    )


def test_fp16_scale_grows_after_period_of_finite_steps(graphs8):
    batch = padded_batches(graphs8[:4], 4)[0]
    state, step = _setup("fp16-mixed", initial=2.0**8, period=3)
    for _ in range(3):
        state, m = step(state, batch)
        assert not bool(m["skipped"])
    assert float(state.loss_scale.loss_scale) == 2.0**9
    assert int(state.epoch) == 1 and int(state.position) == 1  # wrapped after 2 batches


def test_nan_target_skips_step_without_loss_scaling(graphs8):
    batch = padded_batches(graphs8[:4], 4)[0]
    bad = batch._replace(globals={**batch.globals, "energy": batch.globals["energy"] * np.nan})
    state, step = _setup("fp32")
    new, m = step(state, bad)
    assert bool(m["skipped"]) and int(new.n_skipped) == 1
    _same(new.params, state.params)
    _same(new.opt_state, state.opt_state)
    new, m = step(new, batch)
    assert not bool(m["skipped"]) and int(new.n_skipped) == 1


@pytest.mark.parametrize("policy", ["fp32", "bf16-mixed", "fp16-mixed"])
def test_toy_training_decreases_loss(graphs8, policy):
    batches = padded_batches(graphs8, 4)
    state, step = _setup(policy, schedule="plateau", lr=0.05)
    losses = []
    for i in range(30):
        state, m = step(state, batches[i % 2])
        losses.append(float(m["loss"]))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
    assert float(plateau_scale(state.opt_state)) == 1.0


def test_ema_and_schedules():
    ema = {"w": jnp.zeros(3)}
    p = {"w": jnp.ones(3)}
    # warm-up: d = min(0.99, 1/10) at step 0
    np.testing.assert_allclose(ema_update(ema, p, jnp.int32(0), decay=0.99)["w"], 0.9)
    np.testing.assert_allclose(
        ema_update(ema, p, jnp.int32(10**6), decay=0.99)["w"], 0.01, rtol=1e-5
    )
    s = make_schedule(
        lr=1.0, schedule="warmup_cosine", warmup_steps=10, max_steps=110, min_lr_ratio=0.1
    )
    assert float(s(0)) == 0.0 and float(s(10)) == pytest.approx(1.0)
    assert float(s(60)) == pytest.approx(0.55, rel=1e-3) and float(s(110)) == pytest.approx(0.1)
    opt, _ = make_optimizer(lr=0.1, optimizer="amsgrad", weight_decay=0.5)
    params = {"m": jnp.ones((2, 2)), "b": jnp.ones(2)}
    grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    upd, _ = opt.update(grads, opt.init(params), params)
    # decoupled decay: matrices shrink by lr * wd * w, vectors are not decayed
    np.testing.assert_allclose(optax.apply_updates(params, upd)["m"], 0.95)
    np.testing.assert_allclose(optax.apply_updates(params, upd)["b"], 1.0)
