"""Loss scaling: exact scale trajectories (eager, jit, AOT-compiled); skipped non-finite steps."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mpnn_jax.precision import (
    DynamicLossScale,
    NoOpLossScale,
    Policy,
    StaticLossScale,
    all_finite,
    apply_if_finite,
    get_policy,
    loss_scale_for,
    select_tree,
)

# finite?, expected scale after the step, expected counter (period 3, factor 2, floor 4)
TRAJECTORY = [
    (True, 32.0, 1),
    (True, 32.0, 2),
    (True, 64.0, 0),  # 3 good steps: doubles
    (False, 32.0, 0),  # overflow: halves
    (True, 32.0, 1),
    (False, 16.0, 0),  # overflow resets the counter
    (False, 8.0, 0),
    (False, 4.0, 0),
    (False, 4.0, 0),  # floor
    (True, 4.0, 1),
    (True, 4.0, 2),
    (True, 8.0, 0),
]


def _initial():
    return DynamicLossScale(
        jnp.float32(32.0), jnp.zeros([], jnp.int32), period=3, factor=2, min_loss_scale=4.0
    )


def _run(adjust):
    ls, seen = _initial(), []
    for finite, _, _ in TRAJECTORY:
        ls = adjust(ls, jnp.array(finite))
        assert isinstance(ls, DynamicLossScale) and ls.min_loss_scale == 4.0 and ls.period == 3
        seen.append((float(ls.loss_scale), int(ls.counter)))
    assert seen == [(s, c) for _, s, c in TRAJECTORY]
    assert ls.loss_scale.dtype == jnp.float32 and ls.counter.dtype == jnp.int32


def test_trajectory_eager():
    _run(lambda ls, f: ls.adjust(f))


def test_trajectory_jit():
    traces = []

    def adjust(ls, f):
        traces.append(1)
        return ls.adjust(f)

    _run(jax.jit(adjust))
    assert len(traces) == 1  # the state's aux data is stable: no recompiles


def test_trajectory_aot_lowered_with_scale_argument():
    compiled = jax.jit(lambda ls, f: ls.adjust(f)).lower(_initial(), jnp.array(True)).compile()
    _run(compiled)


def test_min_loss_scale_period_factor_survive_jit():
    ls = DynamicLossScale(jnp.float32(8.0), period=7, factor=4.0, min_loss_scale=2.0)
    out = jax.jit(lambda s: s)(ls)
    assert (out.period, out.factor, out.min_loss_scale) == (7, 4.0, 2.0)
    # two overflows from 8 with factor 4: 2 (floor), not 0.5
    twice = jax.jit(lambda s: s.adjust(jnp.array(False)).adjust(jnp.array(False)))(ls)
    assert float(twice.loss_scale) == 2.0
    leaves, treedef = jax.tree_util.tree_flatten(ls)
    assert len(leaves) == 2 and jax.tree_util.tree_unflatten(treedef, leaves).min_loss_scale == 2.0


def test_growth_that_overflows_keeps_the_scale():
    big = float(jnp.finfo(jnp.float32).max)
    ls = DynamicLossScale(jnp.float32(big), period=1)
    assert float(ls.adjust(jnp.array(True)).loss_scale) == big


def test_bad_arguments():
    with pytest.raises(ValueError, match="factor > 1"):
        DynamicLossScale(jnp.float32(1.0), factor=1.0)
    with pytest.raises(ValueError, match="scalar"):
        _initial().adjust(jnp.array([True, False]))
    with pytest.raises(ValueError, match="bool scalar"):
        select_tree(jnp.array([True]), 1.0, 2.0)


def test_scale_and_unscale():
    ls = DynamicLossScale(jnp.float32(2.0**15))
    loss = jnp.float16(3.0)  # 3 * 2^15 > 65504: the scaled loss must not stay FP16
    assert ls.scale(loss).dtype == jnp.float32 and float(ls.scale(loss)) == 3.0 * 2**15
    grads = {"a": jnp.full(3, 2.0**16, jnp.float32), "b": jnp.float16(2.0**15)}
    un = ls.unscale(grads)
    np.testing.assert_array_equal(un["a"], 2.0)
    assert un["a"].dtype == jnp.float32 and float(un["b"]) == 1.0
    static = StaticLossScale(jnp.float32(8.0))
    assert float(static.unscale(static.scale(jnp.float32(3.0)))) == 3.0
    assert static.adjust(jnp.array(False)) is static
    noop = NoOpLossScale()
    assert noop.scale(loss) is loss and noop.adjust(jnp.array(False)) is noop
    assert float(noop.loss_scale) == 1.0


@pytest.mark.parametrize("ls", [NoOpLossScale(), StaticLossScale(jnp.float32(4.0)), _initial()])
def test_every_loss_scale_passes_jit_and_lower(ls):
    f = jax.jit(lambda s, x: (s.unscale(s.scale(x)), s.adjust(all_finite(x))))
    out, new = f.lower(ls, jnp.ones(3)).compile()(ls, jnp.ones(3))
    np.testing.assert_array_equal(out, 1.0)
    assert type(new) is type(ls)


def test_loss_scale_for_policy():
    ls = loss_scale_for(get_policy("fp16-mixed"), initial=2.0**10, period=5, min_loss_scale=2.0)
    assert isinstance(ls, DynamicLossScale)
    assert (float(ls.loss_scale), int(ls.counter), ls.period, ls.min_loss_scale) == (
        1024.0,
        0,
        5,
        2.0,
    )
    assert float(loss_scale_for(get_policy("fp16-mixed")).loss_scale) == 2.0**15
    for name in ("fp32", "bf16-mixed", "bf16-pure"):
        assert isinstance(loss_scale_for(get_policy(name)), NoOpLossScale)


def test_all_finite():
    assert bool(all_finite({"a": jnp.ones(3), "b": (jnp.zeros(2),)}))
    assert not bool(all_finite({"a": jnp.ones(3), "b": jnp.array([1.0, jnp.nan])}))
    assert not bool(all_finite([jnp.array([jnp.inf], jnp.float16)]))
    assert bool(all_finite({}))
    assert all_finite([jnp.ones(2)]).shape == ()


def _fp16_train_step(optimizer):
    """A jitted FP16 step: loss in FP16, FP32 master weights, skipped when grads overflow."""
    f16 = jnp.float16

    def loss_fn(params, x):
        return jnp.sum(Policy.cast_to(f16, params["w"]) * Policy.cast_to(f16, x))  # f16 loss

    @jax.jit
    def step(params, opt_state, loss_scale, x):
        grads = jax.grad(lambda p: loss_scale.scale(loss_fn(p, x)))(params)
        grads = loss_scale.unscale(grads)
        finite = all_finite(grads)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        params, opt_state = apply_if_finite(
            finite, (new_params, new_opt_state), (params, opt_state)
        )
        return params, opt_state, loss_scale.adjust(finite), finite

    return step


def _assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_overflowing_fp16_steps_leave_params_and_optimizer_state_unchanged():
    optimizer = optax.adam(1e-2)
    step = _fp16_train_step(optimizer)
    params = {"w": jnp.ones(3, jnp.float32)}
    opt_state = optimizer.init(params)
    params, opt_state, _, finite = step(params, opt_state, NoOpLossScale(), jnp.full(3, 1.0))
    assert bool(finite)  # one ordinary step so that Adam's moments and count are non-trivial
    ls = loss_scale_for(get_policy("fp16-mixed"), min_loss_scale=1.0)
    x = jnp.full(3, 1000.0)  # d(scale * loss)/dw = scale * 1000: overflows FP16 above scale 64
    scales = []
    for _ in range(9):
        new_params, new_opt_state, ls, finite = step(params, opt_state, ls, x)
        assert not bool(finite)
        _assert_trees_equal(new_params, params)
        _assert_trees_equal(new_opt_state, opt_state)
        scales.append(float(ls.loss_scale))
    assert scales == [2.0**k for k in range(14, 5, -1)]  # 2^14 ... 2^6 = 64
    new_params, new_opt_state, ls, finite = step(params, opt_state, ls, x)
    assert bool(finite) and float(ls.loss_scale) == 64.0 and int(ls.counter) == 1
    assert not np.allclose(new_params["w"], params["w"])
    assert int(new_opt_state[0].count) == int(opt_state[0].count) + 1
    # the unscaled gradient reached Adam: its first moment moved towards 1000
    mu_old, mu_new = opt_state[0].mu["w"], new_opt_state[0].mu["w"]
    np.testing.assert_allclose(mu_new, 0.9 * mu_old + 0.1 * 1000.0, rtol=1e-6)


def test_apply_if_finite_on_nan_gradient():
    params = {"w": jnp.arange(3.0), "n": jnp.int32(2)}
    other = {"w": jnp.zeros(3), "n": jnp.int32(5)}
    grads = {"w": jnp.array([0.0, jnp.nan, 1.0])}
    _assert_trees_equal(apply_if_finite(all_finite(grads), other, params), params)
    _assert_trees_equal(apply_if_finite(jnp.array(True), other, params), other)
    assert dataclasses.is_dataclass(_initial())
