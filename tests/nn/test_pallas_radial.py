"""The radial MLP's fused kernels (:mod:`mpnn_jax.nn.pallas_radial`) against the JAX MLP
(:func:`mpnn_jax.nn.radial.radial_mlp`): values and first and second derivatives in FP64, the
dtypes of each preset, where the kernels run, the audit, and a model whose only Pallas code is
these kernels. On CPU the kernels run in Pallas's interpreter."""

from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax.nn import backends, radial
from mpnn_jax.nn import pallas_radial as pr
from mpnn_jax.precision import audit, get_policy

from .backend_checks import check_model_matches_reference, model_case, register_reference_plus

PALLAS = backends.PallasBackend.radial_mlp


@pytest.fixture(autouse=True)
def kernels_on(monkeypatch):
    """The kernels in every program, their own derivative rules included (``RADIAL_FUSED = 2``;
    the default, 1, keeps them out of programs that differentiate the weights: tested below)."""
    monkeypatch.setattr(pr, "RADIAL_FUSED", 2)


AUDIT = importlib.import_module(
    "mpnn_jax.precision.audit"
)  # the module (``audit`` is its function)


def _weights(sizes, dtype, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), len(sizes))
    return [
        jax.random.normal(k, (a, b), dtype) for k, a, b in zip(keys, sizes[:-1], sizes[1:])
    ]  # fmt: skip


def _mlp(ws, x, policy, fused, **kw):
    return radial.radial_mlp(ws, x, policy=policy, fused=PALLAS if fused else None, **kw)


SHAPES = [  # (n_in, *hidden, n_out), rows: a padded tail, one block, a single row
    ((8, 16, 32, 64, 128), 45),  # MACE's layout (three hidden layers), 2 output tiles
    ((8, 16, 32), 64),  # one hidden layer, an output narrower than a tile
    ((16, 32, 64), 1),
    ((3, 16, 16, 48), 20),  # an input width and an output width that are not powers of two
]


@pytest.mark.parametrize("sizes,rows", SHAPES)
def test_fp64_values_and_derivatives_to_second_order(x64, sizes, rows):
    """Values, the input and weight gradients, and the gradient of a function of the input
    gradient (the training step's second derivatives) equal the JAX MLP's in FP64."""
    policy = get_policy("fp64")
    ws = _weights(sizes, jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(9), (rows, sizes[0]), jnp.float64)
    g = jax.random.normal(jax.random.PRNGKey(8), (rows, sizes[-1]), jnp.float64)

    def first(fused):
        return lambda ws, x: jnp.sum(_mlp(ws, x, policy, fused) * g)

    def second(fused):
        def f(ws, x):
            dx = jax.grad(first(fused), argnums=1)(ws, x)
            return jnp.sum(jnp.sin(dx)) + first(fused)(ws, x)

        return f

    for fn in (lambda f: lambda ws, x: _mlp(ws, x, policy, f), first, second):
        if fn is first or fn is second:
            out = {f: jax.grad(fn(f), argnums=(0, 1))(ws, x) for f in (True, False)}
        else:
            out = {f: fn(f)(ws, x) for f in (True, False)}
        for a, b in zip(jax.tree.leaves(out[True]), jax.tree.leaves(out[False]), strict=True):
            assert np.abs(np.asarray(b)).max() > 1e-3
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11 * np.abs(b).max())
    jaxpr = str(jax.make_jaxpr(jax.grad(second(True), argnums=(0, 1)))(ws, x))
    assert "mpnn_radial_mlp_dx" in jaxpr and jaxpr.count("mpnn_radial_mlp") >= 2


def test_default_keeps_the_kernels_out_of_programs_that_differentiate_the_weights(x64, monkeypatch):
    """``RADIAL_FUSED = 1``: energies and forces and a Hessian-vector product over the input
    (reverse over reverse) run the kernels; a gradient over the weights (of the energy, or of a
    loss on the forces: a training loop of one's own) runs none, and equals the JAX MLP's in
    FP64, as do the forces."""
    monkeypatch.setattr(pr, "RADIAL_FUSED", 1)
    policy = get_policy("fp64")
    sizes, rows = (8, 16, 32, 64), 21
    ws = _weights(sizes, jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(9), (rows, sizes[0]), jnp.float64)

    def energy(fused):
        return lambda ws, x: jnp.sum(jnp.sin(_mlp(ws, x, policy, fused)))

    def loss(fused):  # forces and energy, as in the training step
        def f(ws, x):
            forces = -jax.grad(energy(fused), argnums=1)(ws, x)
            return jnp.sum(forces**2) + energy(fused)(ws, x)

        return f

    def kernels(fn, *args):
        return str(jax.make_jaxpr(fn)(*args)).count("mpnn_radial_mlp")

    forces = {f: jax.grad(energy(f), argnums=1) for f in (True, False)}
    assert kernels(functools.partial(forces[True], ws), x) >= 2  # forward and derivative
    for f in (energy, loss):
        grads = {k: jax.grad(f(k), argnums=(0, 1)) for k in (True, False)}
        assert kernels(grads[True], ws, x) == 0
        for a, b in zip(*(jax.tree.leaves(grads[k](ws, x)) for k in (True, False)), strict=True):
            assert np.abs(np.asarray(b)).max() > 1e-3
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max())
    np.testing.assert_allclose(forces[True](ws, x), forces[False](ws, x), rtol=1e-11, atol=1e-12)
    hvp = {f: jax.grad(lambda x, f=f: jnp.sum(forces[f](ws, x) * x)) for f in (True, False)}
    assert kernels(hvp[True], x) >= 2
    np.testing.assert_allclose(hvp[True](x), hvp[False](x), rtol=1e-11, atol=1e-11)
    monkeypatch.setattr(pr, "RADIAL_FUSED", 2)
    assert kernels(jax.grad(loss(True)), ws, x) >= 2


@pytest.mark.parametrize("setting", ["RADIAL_DX_SPLIT", "RADIAL_DX_RECOMPUTE"])
def test_fp64_derivative_under_each_setting(x64, monkeypatch, setting):
    """The input derivative under the other value of each setting (its largest product in the
    kernel or in XLA: ``RADIAL_DX_SPLIT``; every activation held or recomputed:
    ``RADIAL_DX_RECOMPUTE``) equals the JAX MLP's in FP64 (the defaults: the other tests)."""
    monkeypatch.setattr(pr, setting, 1 - getattr(pr, setting))
    policy = get_policy("fp64")
    sizes, rows = (8, 16, 32, 64, 128), 45
    ws = _weights(sizes, jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(9), (rows, sizes[0]), jnp.float64)
    g = jax.random.normal(jax.random.PRNGKey(8), (rows, sizes[-1]), jnp.float64)
    dx = {f: jax.grad(lambda x, f=f: jnp.sum(_mlp(ws, x, policy, f) * g))(x) for f in (True, False)}
    np.testing.assert_allclose(dx[True], dx[False], rtol=1e-11, atol=1e-11)
    assert np.abs(np.asarray(dx[False])).max() > 1e-3


@pytest.mark.parametrize(
    "preset,act,out",
    [("fp32", "f32", "f32"), ("bf16-mixed", "f32", "bf16"), ("bf16-seed", "bf16", "bf16")],
)
def test_dtypes_of_the_presets(preset, act, out):
    """The output in the messages stage's dtype (written by the kernel), close to the JAX MLP's;
    the input gradient in the input's dtype, close to the JAX MLP's."""
    policy = get_policy(preset)
    sizes = (8, 16, 32, 64)
    ws = _weights(sizes, jnp.float32)
    x = jax.random.normal(jax.random.PRNGKey(1), (40, 8))
    kw = {"out_dtype": policy.dtype("messages")}

    def energy(x, fused):
        return jnp.sum(_mlp(ws, x, policy, fused, **kw).astype(jnp.float32) ** 2)

    with jax.default_matmul_precision("highest"):
        y = {f: _mlp(ws, x, policy, f, **kw) for f in (True, False)}
        dx = {f: jax.grad(energy)(x, f) for f in (True, False)}
    assert policy.dtype("radial") == jnp.dtype({"f32": "float32", "bf16": "bfloat16"}[act])
    assert y[True].dtype == y[False].dtype == policy.dtype("messages")
    assert y[True].dtype == jnp.dtype({"f32": "float32", "bf16": "bfloat16"}[out])
    tol = 1e-5 if out == "f32" else (1e-2 if act == "f32" else 5e-2)
    a, b = (np.asarray(y[f], np.float64) for f in (True, False))
    assert np.abs(a - b).max() <= tol * np.abs(b).max()
    assert dx[True].dtype == jnp.float32
    np.testing.assert_allclose(dx[True], dx[False], atol=3 * tol * np.abs(dx[False]).max())


def test_where_the_kernels_run():
    """Shapes (:func:`pallas_radial.usable`), the switch, 16-bit accumulation and
    ``FOLD_SCALES = False`` keep the JAX MLP."""
    assert pr.usable((8, 64, 64, 64, 512)) and pr.usable((8, 16, 32))
    assert pr.usable((8, 64, 352)) and pr._bo(352) == 32 and pr._bo(48) == 16
    assert not pr.usable((8, 64, 100)) and not pr.usable((8, 12, 64))
    assert not pr.usable((17, 16, 64)) and not pr.usable((8, 512))
    x = jnp.ones((5, 8))

    def has_kernel(sizes, preset="fp32"):
        ws = _weights(sizes, jnp.float32)
        jaxpr = str(jax.make_jaxpr(lambda x: _mlp(ws, x, get_policy(preset), True))(x))
        return "mpnn_radial_mlp" in jaxpr

    assert has_kernel((8, 16, 64)) and not has_kernel((8, 16, 40)) and not has_kernel((8, 8, 64))
    assert not has_kernel((8, 16, 64), "bf16-pure")  # 16-bit sums: not the kernel's FP32 ones
    old = pr.RADIAL_FUSED, radial.FOLD_SCALES
    try:
        pr.RADIAL_FUSED = 0
        assert not has_kernel((8, 16, 64))
        pr.RADIAL_FUSED = 1
        assert has_kernel((8, 16, 64))
        pr.RADIAL_FUSED, radial.FOLD_SCALES = 2, False
        assert not has_kernel((8, 16, 64))
    finally:
        pr.RADIAL_FUSED, radial.FOLD_SCALES = old


def test_audit_reads_each_kernel_as_one_fp32_contraction(monkeypatch):
    """bf16-mixed: the forward kernel reads FP32 operands in the radial stage; its derivative also
    reads the BF16 cotangent of the output it wrote (converted up in the kernel: accepted as an
    upcasting call, a violation without that rule); the policy's check passes."""
    policy = get_policy("bf16-mixed")
    ws = _weights((8, 16, 64), jnp.float32)
    x = jax.random.normal(jax.random.PRNGKey(1), (10, 8))

    def energy(x):
        y = _mlp(ws, x, policy, True, out_dtype=policy.dtype("messages"))
        return jnp.sum(y.astype(jnp.float32) ** 2)

    report = audit(jax.grad(energy), x)
    calls = {r.primitive: r for r in report.records if r.primitive.startswith("radial_")}
    assert set(calls) == {"radial_kernel", "radial_dx_kernel"}
    fwd, dx = calls["radial_kernel"], calls["radial_dx_kernel"]
    assert fwd.stage == dx.stage == "radial" and fwd.kind == dx.kind == "matmul"
    assert set(fwd.in_dtypes) == {"f32"} and fwd.out_dtypes == ("bf16",) and not fwd.backward
    assert "bf16" in dx.in_dtypes and dx.accum == "f32" and dx.backward
    assert report.check(policy) == []
    monkeypatch.setattr(AUDIT, "UPCASTING_CALLS", ())
    assert any("radial_dx_kernel" in m for m in report.check(policy))


@pytest.fixture(scope="module")
def mace_radial():
    register_reference_plus("e3nn+radial", radial_mlp=PALLAS)
    # 16 channels x 2 paths = 32 path weights; hidden width 16: the kernels' smallest tiles
    return model_case(
        "mace", "e3nn+radial", second_order=True, num_channels=16, radial_features=(16, 16)
    )


def test_mace_with_the_kernels_matches_reference(mace_radial):
    """Energies, forces and the gradient of an energy + force loss (second derivatives through
    the kernels' rules) equal the JAX MLP's; both kernels are in the program."""
    params, graph, mods, fns = mace_radial
    check_model_matches_reference(fns, params, graph, "e3nn+radial", "mace_radial")
    jaxpr = str(jax.make_jaxpr(fns["e3nn+radial"])(params, graph))
    assert "mpnn_radial_mlp_dx" in jaxpr and jaxpr.count("mpnn_radial_mlp") >= 4
    assert "mpnn_radial_mlp" not in str(jax.make_jaxpr(fns["e3nn"])(params, graph))


def test_library_training_step_keeps_xla_radial_mlp(mace_radial, monkeypatch):
    """``RADIAL_FUSED = 1``: the library's training step (traced inside
    ``backends.training_program``) has no radial kernel and does not call them (XLA's radial MLP,
    not the rules' fallback), while the same model's energy-and-force program has both; under 2
    the training step runs them too."""
    from mpnn_jax.benchmark.models import make_train_state_and_step
    from mpnn_jax.potential import make_predictor

    params, graph, mods, _ = mace_radial
    model = mods["e3nn+radial"]
    state, step = make_train_state_and_step(model, params)

    def kernels(fn, *args):
        return str(jax.make_jaxpr(fn)(*args)).count("mpnn_radial_mlp")

    calls = []  # the kernels' function not even called: XLA's program, not the rules' fallback
    monkeypatch.setattr(
        pr, "radial_mlp", lambda *a, _f=pr.radial_mlp, **k: calls.append(1) or _f(*a, **k)
    )
    monkeypatch.setattr(pr, "RADIAL_FUSED", 1)
    assert kernels(step, state, graph) == 0 and not calls
    assert kernels(make_predictor(model), params, graph) >= 4 and calls  # forward, derivative
    assert not backends.in_training_program()  # the block closed with the trace
    monkeypatch.setattr(pr, "RADIAL_FUSED", 2)
    state, step = make_train_state_and_step(model, params)  # a new function: traced anew
    assert kernels(step, state, graph) >= 4
