"""The precision audit: stage attribution, every preset on a toy potential, and caught mistakes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax.precision import (
    PRESETS,
    STAGES,
    Policy,
    audit,
    audit_jaxpr,
    dtype_short,
    get_policy,
    stage_of,
)

from .toy_model import init_params, toy_energy, toy_forces, toy_graph

MIXED = ("bf16-mixed", "fp16-mixed")


def _args(policy):
    g, params = toy_graph(), init_params()
    pos = g["positions"]
    if policy.uses_x64:
        pos = jnp.asarray(np.asarray(pos), jnp.float64)
    return (params, pos, g["species"], g["senders"], g["receivers"], g["graph_index"])


@pytest.fixture(params=list(PRESETS))
def policy(request):
    p = get_policy(request.param)
    if p.uses_x64:
        with jax.enable_x64(True):
            yield p
    else:
        yield p


@pytest.mark.parametrize(
    "name_stack, stage",
    [
        ("messages", "messages"),
        ("energy/readout/i,ij->j", "readout"),
        ("jvp(energy)/readout", "readout"),
        ("transpose(jvp(messages))", "messages"),
        ("transpose(jvp(energy))/jvp(energy)", "energy"),
        ("forces/transpose(jvp(geometry))/ei,ei->e", "geometry"),
        ("vmap(jvp(basis))/foo", "basis"),
        ("messages_extra/foo", "unscoped"),  # whole components only
        ("", "unscoped"),
    ],
)
def test_stage_of(name_stack, stage):
    assert stage_of(name_stack) == stage


def test_every_stage_in_policy_dtype(policy):
    report = audit(toy_energy, *_args(policy), policy=policy)
    assert report.check(policy) == []
    assert report.stages() == [s for s in STAGES if s != "forces"]
    for s in report.stages():
        d = dtype_short(policy.dtype(s))
        assert report.of(s), s
        ops = {t for r in report.of(s, "op") for t in r.out_dtypes}
        assert ops <= {d}, (s, ops)
        for r in report.of(s, "matmul"):
            assert r.in_dtypes == (d, d) and r.accum == dtype_short(policy.accum(s))
    # the sums over neighbours and atoms accumulate in the policy's dtype (FP32 when mixed)
    for s, prims in (("aggregation", {"scatter-add"}), ("energy", {"scatter-add", "reduce_sum"})):
        red = report.of(s, "reduction")
        assert {r.primitive for r in red} == prims
        assert {r.accum for r in red} == {dtype_short(policy.dtype(s))}
        if policy.name in MIXED:
            assert {r.accum for r in red} == {"f32"}
    if policy.name in MIXED:  # matmuls accumulate in FP32, low-precision ones too
        for s in ("radial", "messages", "update", "readout"):
            d = dtype_short(policy.dtype(s))
            assert report.matmuls(s) == {f"{d}*{d}->f32": 1}, s


def test_gradient_forces_audit(policy):
    report = audit(toy_forces, *_args(policy), policy=policy)
    assert report.check(policy) == []
    assert report.stages() == list(STAGES)
    assert any(r.backward for r in report.records)
    assert set(report.op_dtypes("forces")) == {dtype_short(policy.dtype("forces"))}
    bwd = [r for r in report.of("geometry", "op") if r.backward]
    assert bwd and {t for r in bwd for t in r.out_dtypes} == {dtype_short(policy.dtype("geometry"))}
    if policy.name in MIXED:
        bwd_mm = [r for r in report.of("messages", "matmul") if r.backward]
        assert bwd_mm and all(r.accum == "f32" for r in bwd_mm)


@pytest.mark.parametrize(
    "name, stages",
    [("bf16-mixed", set()), ("fp16-seed", set()), ("bf16-mixed+geometry=bf16", {"geometry"})],
)
def test_low_precision_scatter_adds(name, stages):
    # the positions' gathers of a 16-bit geometry stage transpose into 16-bit scatter-adds
    policy = get_policy(name)
    report = audit(toy_forces, *_args(policy), policy=policy)
    found = report.low_precision_scatter_adds()
    assert {r.stage for r in found} == stages
    assert all(r.backward and r.accum == "bf16" for r in found)
    # and the JSON form lists the same sums
    listed = json.loads(json.dumps(report.to_json(policy)))["low_precision_scatter_adds"]
    assert [(d["stage"], d["accum"], d["backward"]) for d in listed] == [
        (r.stage, r.accum, r.backward) for r in found
    ]


def test_messages_in_fp32_under_bf16_mixed_is_a_violation():
    p = get_policy("bf16-mixed")
    bad = audit(toy_energy, *_args(p), policy=p, mistake="messages_f32")
    problems = bad.check(p)
    assert problems and all(m.startswith("messages:") for m in problems)
    assert any("dot_general" in m and "('f32', 'f32')" in m for m in problems)
    assert any("mul" in m and "computes in f32, policy says bf16" in m for m in problems)
    assert "| messages | bf16 |" in bad.table(p) and "NO (" in bad.table(p)
    # the same code is fine where the policy says FP32, and in the gradient it is caught too
    fp32 = get_policy("fp32")
    assert audit(toy_energy, *_args(fp32), policy=fp32, mistake="messages_f32").check(fp32) == []
    grad_problems = audit(toy_forces, *_args(p), policy=p, mistake="messages_f32").check(p)
    assert any(m.startswith("messages") for m in grad_problems)


def test_low_precision_aggregation_sum_is_a_violation():
    p = get_policy("bf16-mixed")
    problems = audit(toy_energy, *_args(p), policy=p, mistake="aggregation_low").check(p)
    assert any(
        "scatter-add" in m and "sum accumulates in bf16, policy says f32" in m for m in problems
    )
    # ... which is exactly what the ablation fp32+aggregation=bf16 asks for
    q = get_policy("bf16-mixed+aggregation=bf16")
    assert audit(toy_energy, *_args(q), policy=q).check(q) == []


def test_hidden_fp32_accumulation_of_jnp_sum_is_reported():
    p = get_policy("bf16-pure")

    def f(x):
        with Policy.scope("energy"):
            return jnp.sum(p.cast("energy", x))  # JAX sums 16-bit floats in FP32

    report = audit(f, jnp.ones(4))
    assert report.reductions("energy") == {"reduce_sum:f32": 1}
    assert any("sum accumulates in f32, policy says bf16" in m for m in report.check(p))
    assert report.check(p, allow_wider_accum=True) == []


def test_nested_jaxprs_are_walked_and_attributed():
    p = get_policy("bf16-mixed")

    @jax.custom_vjp
    def cube(x):
        return x**3

    cube.defvjp(lambda x: (x**3, x), lambda x, g: (3 * x**2 * g,))

    def f(x):
        with Policy.scope("messages"):
            h = p.cast("messages", x)
            h = jax.jit(jnp.sin)(h)  # pjit
            h = jax.lax.scan(lambda c, a: (c, jnp.cos(a)), 0.0, h)[1]  # scan
            h = jax.lax.cond(h[0] > 0, jnp.tanh, jnp.exp, h)  # cond
            h = jax.lax.fori_loop(0, 2, lambda i, a: a * 0.5, h)  # while
            h = jax.nn.relu(h)  # custom_jvp
            h = cube(h)  # custom_vjp
            h = jax.checkpoint(jnp.log1p)(h)  # remat
        h = h * 2  # unscoped
        with Policy.scope("energy"):
            return jnp.sum(p.cast("energy", h))

    for fn in (f, jax.grad(f)):
        report = audit(fn, jnp.ones(3))
        prims = {r.primitive for r in report.of("messages")}
        assert {"sin", "cos", "tanh", "exp", "log1p", "max", "integer_pow"} <= prims, prims
        assert report.of("messages", "op") and report.check(p) == []
        assert [r.primitive for r in report.of("unscoped")][:1] == ["mul"]

    # the scalar combiner of scatter-add is not counted as an op
    def g(x):
        with Policy.scope("aggregation"):
            return jax.ops.segment_sum(x, jnp.array([0, 1, 1]), 2)

    # the scatter-add alone: the zeros it adds into are a constant fill, no arithmetic
    assert audit(g, jnp.ones(3)).op_dtypes("aggregation") == {"f32": 1}


def test_table_and_json():
    p = get_policy("bf16-mixed")
    report = audit(toy_energy, *_args(p), policy=p)
    table = report.table(p)
    lines = table.splitlines()
    assert lines[0].startswith("| stage | policy dtype | op dtypes seen | matmul accumulation")
    assert len(lines) == 2 + len(report.stages())
    assert "| aggregation | f32 |" in table and "scatter-add:f32 x1" in table
    assert all(line.endswith("| yes |") for line in lines[2:])
    assert "| - |" in report.table()  # no policy: no verdict
    js = report.to_json(p)
    json.dumps(js)
    assert js["violations"] == [] and js["stages"]["messages"]["policy_dtype"] == "bf16"
    assert js["stages"]["messages"]["matmuls"] == {"bf16*bf16->f32": 1}
    assert js["stages"]["aggregation"]["casts"] == {"bf16->f32": 1}


def test_platform_dependent_reads_one_branch():
    """policy.einsum upcasts on CPU (XLA:CPU has no BF16 x BF16 = F32 dot); the audit reads the
    GPU branch by default, the CPU one on request, and never both."""
    p = get_policy("bf16-mixed")
    jaxpr = jax.make_jaxpr(lambda *a: toy_energy(*a, policy=p))(*_args(p))
    gpu, cpu = audit_jaxpr(jaxpr), audit_jaxpr(jaxpr, platform="cpu")
    assert gpu.check(p) == [] and gpu.matmuls("messages") == {"bf16*bf16->f32": 1}
    assert cpu.matmuls("messages") == {"f32*f32->f32": 1}
    assert any("has operands ('f32', 'f32'), policy says bf16" in m for m in cpu.check(p))
    assert audit_jaxpr(jaxpr, platform="tpu").matmuls("messages") == {"bf16*bf16->f32": 1}


def test_tiny_contraction_is_one_matmul_record():
    """A tiny contraction runs as upcast x multiply + sum (``accum_contraction``); the audit
    reports it as one matmul with the stage's operands and the FP32 accumulator, forward and
    backward, and never as FP32 elementwise work in a BF16 stage."""
    from mpnn_jax.precision.ops import accum_contraction, accum_einsum

    p = get_policy("bf16-mixed")
    a = jnp.linspace(-1, 1, 5 * 4 * 3).reshape(5, 4, 3)
    b = jnp.linspace(0, 2, 5 * 3 * 2).reshape(5, 3, 2)

    def f(a, b):
        with Policy.scope("messages"):
            y = p.einsum("messages", "eui,eik->euk", a, b)
        with Policy.scope("energy"):
            return jnp.sum(p.cast("energy", y))

    report = audit(jax.grad(f, argnums=(0, 1)), a, b)
    assert report.check(p) == []
    fwd = [r for r in report.of("messages", "matmul") if not r.backward]
    bwd = [r for r in report.of("messages", "matmul") if r.backward]
    assert [(r.primitive, r.in_dtypes, r.accum) for r in fwd] == [
        ("accum_contraction", ("bf16", "bf16"), "f32")
    ]
    assert bwd and all(r.primitive == "accum_contraction" and r.accum == "f32" for r in bwd)
    # same numbers as the FP32 einsum of the BF16-rounded operands
    a16, b16 = (p.cast("messages", t) for t in (a, b))
    want = np.einsum("eui,eik->euk", *(np.asarray(t, np.float64) for t in (a16, b16)))
    got = accum_contraction("eui,eik->euk", a16, b16, accum_dtype=jnp.float32)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
    x, w = jnp.ones((2, 64), jnp.bfloat16), jnp.ones((64, 2), jnp.bfloat16)
    big = audit(lambda x, w: accum_einsum("ij,jk->ik", x, w, accum_dtype=jnp.float32), x, w)
    assert [r.primitive for r in big.records if r.kind == "matmul"] == ["dot_general"]


@pytest.mark.parametrize("elementwise", [False, True])
def test_tiny_unbatched_matmul_is_a_dot_unless_asked(monkeypatch, elementwise):
    """A plain matmul with a short contracted side (the radial MLP's first layer, K = n_basis)
    stays a ``dot_general`` (its elementwise form's transpose is a slow reduction over the wide
    side); ``SMALL_CONTRACTION_UNBATCHED`` turns the elementwise path back on. Same values and
    gradients either way."""
    from mpnn_jax.precision import ops as pops

    monkeypatch.setattr(pops, "SMALL_CONTRACTION_UNBATCHED", elementwise)
    x = jnp.linspace(-1, 1, 6 * 8).reshape(6, 8)
    w = jnp.linspace(0, 2, 8 * 64).reshape(8, 64)

    def f(x, w):
        return jnp.sum(jnp.sin(pops.accum_einsum("...k,kn->...n", x, w, accum_dtype=jnp.float32)))

    report = audit(jax.grad(f, argnums=(0, 1)), x, w)
    want = "accum_contraction" if elementwise else "dot_general"
    assert {r.primitive for r in report.records if r.kind == "matmul"} == {want}
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    gx, gw = jax.grad(f, argnums=(0, 1))(x, w)
    c = np.cos(x64 @ w64)
    np.testing.assert_allclose(np.asarray(gx), c @ w64.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gw), x64.T @ c, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", MIXED)
@pytest.mark.parametrize("store", [True, False])
def test_16bit_result_is_stored_by_the_dot(monkeypatch, preset, store):
    """With ``STORE_16BIT`` a 16-bit stage's GEMM names its arithmetic (16-bit operands, FP32
    accumulator) and writes 16 bits itself: no FP32 result and no cast pass, forward or backward,
    and the audit reads the algorithm's FP32 accumulator. Off: FP32 result, then a cast. The
    stored value is the FP64 product of the rounded operands rounded once (<= 1 ulp)."""
    from mpnn_jax.precision import ops as pops

    monkeypatch.setattr(pops, "STORE_16BIT", store)
    p = get_policy(preset)
    d = p.dtype("update")
    x = jnp.linspace(-1, 1, 6 * 64).reshape(6, 64)
    w = jnp.cos(jnp.linspace(0, 5, 64 * 3)).reshape(64, 3)

    def f(x, w):
        with Policy.scope("update"):
            y = p.einsum("update", "ij,jk->ik", x, w)
        with Policy.scope("energy"):
            return jnp.sum(p.cast("energy", y) ** 2)

    report = audit(jax.grad(f, argnums=(0, 1)), x, w)
    assert report.check(p) == []
    dots = report.of("update", "matmul")
    assert len(dots) == 3 and all(r.accum == "f32" for r in dots)  # forward, two transposes
    fwd = [r for r in dots if not r.backward]
    casts = [r for r in report.of("update", "cast") if not r.backward and r.in_dtypes == ("f32",)]
    assert [r.out_dtypes for r in fwd] == [(dtype_short(d),) if store else ("f32",)]
    assert len(casts) == 2 + (not store)  # x and w; the result's cast only without STORE_16BIT
    x16, w16 = p.cast("update", x), p.cast("update", w)
    exact = np.asarray(x16, np.float64) @ np.asarray(w16, np.float64)
    ulp = np.abs(exact) * float(jnp.finfo(d).eps)
    stored = [p.einsum("update", "ij,jk->ik", x, w)]  # this platform's (CPU) branch
    if d == jnp.bfloat16:  # and the accelerators' dot itself (XLA:CPU runs BF16_BF16_F32 only)
        algorithm = pops.ALGORITHMS[jnp.dtype(d)]
        stored.append(
            jnp.einsum("ij,jk->ik", x16, w16, precision=algorithm, preferred_element_type=d)
        )
    for got in stored:
        assert got.dtype == d
        assert np.all(np.abs(np.asarray(got, np.float64) - exact) <= ulp + 1e-30)


def _kernel(name: str, acc_dtype, out_dtype):
    """A Pallas kernel ``name`` summing ``a * b`` over rows in ``acc_dtype``, storing
    ``out_dtype`` (made with jax.make_jaxpr only: the audit reads the traced program)."""
    from jax.experimental import pallas as pl

    def body(a_ref, b_ref, o_ref):
        prod = a_ref[...].astype(acc_dtype) * b_ref[...].astype(acc_dtype)
        acc = prod[0]
        for i in range(1, prod.shape[0]):  # not jnp.sum, which sums 16-bit arrays in FP32
            acc = acc + prod[i]
        o_ref[...] = acc.astype(out_dtype)

    def call(a, b):
        out = jax.ShapeDtypeStruct((a.shape[1],), out_dtype)
        return pl.pallas_call(body, out_shape=out, name=name, interpret=True)(a, b)

    return call


@pytest.mark.parametrize(
    "stage, operands, acc_dtype, wrong",
    [
        ("messages", jnp.bfloat16, jnp.float32, None),  # BF16 operands, FP32 sums: the policy
        ("messages", jnp.float32, jnp.float32, "has operands ('f32', 'f32'), policy says bf16"),
        ("aggregation", jnp.bfloat16, jnp.bfloat16, "accumulates in bf16, policy says f32/f32"),
    ],
)
def test_a_kernel_of_ours_is_one_contraction(stage, operands, acc_dtype, wrong):
    """A Pallas kernel of ours (``pallas_call(name="mpnn_...")``) is read as one contraction:
    its operands, its widest arithmetic as its accumulator, not the ops of its body (which may
    compute in FP32 inside a BF16 stage, as a matmul accumulates). A kernel of another name is
    read op by op."""
    p = get_policy("bf16-mixed")
    a = jnp.ones((8, 16), operands)

    def f(a, kernel):
        with Policy.scope(stage):
            return kernel(a, a)

    ours = audit(f, a, kernel=_kernel("mpnn_test_sum", acc_dtype, acc_dtype))
    (rec,) = ours.of(stage, "matmul")
    assert rec.primitive == "mpnn_test_sum" and rec.accum == dtype_short(acc_dtype)
    problems = ours.check(p)
    assert problems == [] if wrong is None else any(wrong in m for m in problems), problems
    other = audit(f, a, kernel=_kernel("their_sum", acc_dtype, acc_dtype))
    assert not other.of(stage, "matmul") and len(other.of(stage)) > 1


def test_constant_fill_is_not_arithmetic():
    """``jnp.zeros`` (a broadcast of a literal: the residual slots a differentiated cond fills
    for its other branch) computes nothing; a broadcast of a computed FP32 array in a BF16
    stage is still a violation."""
    p = get_policy("bf16-mixed")

    def f(x):
        with Policy.scope("messages"):
            return jnp.zeros((4, 3), jnp.float32), jnp.broadcast_to(x * 2.0, (4, 3))

    report = audit(f, jnp.ones((3,), jnp.float32))
    assert [r.primitive for r in report.of("messages")] == ["mul", "broadcast_in_dim"]
    assert len(report.check(p)) == 2
