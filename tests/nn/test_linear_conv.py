"""Equivariant linear layer and convolution: equivariance (rotations and inversion), references,
dtypes, padding."""

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax.nn import (
    Convolution,
    Linear,
    available_backends,
    e3nn_convolution,
    edge_basis,
    edge_lengths,
    equivariant_linear,
    get_backend,
    linear_paths,
    num_path_weights,
    tp_paths,
)
from mpnn_jax.precision import get_policy
from mpnn_jax.testing import equivariance_error, random_o3

IRREPS_IN = e3nn.Irreps("4x0e+3x1o+2x2e+1x1e")
CONV_IN = e3nn.Irreps("2x0e+2x1o+1x2e+1x1e")


def test_linear_matches_e3nn_functional_linear():
    x = e3nn.normal(IRREPS_IN, jax.random.PRNGKey(0), (5,))
    lin = Linear("3x0e+2x1o+2x2e+1x3o", get_policy("fp32"), "update")
    params = lin.init(jax.random.PRNGKey(1), x)
    y = lin.apply(params, x)
    ref_lin = e3nn.FunctionalLinear(x.irreps.regroup(), e3nn.Irreps("3x0e+2x1o+2x2e+1x3o"))
    assert len(ref_lin.instructions) == len(params["params"])
    ws = list(params["params"].values())
    ref = jax.vmap(lambda xi: ref_lin(ws, xi))(x.regroup())
    # e3nn "element" path normalisation equals ours when one input irrep feeds each output
    np.testing.assert_allclose(np.asarray(y.array), np.asarray(ref.array), atol=1e-5)
    assert np.all(np.asarray(y.filter(keep="3o").array) == 0.0)  # no input path to 3o


@pytest.mark.parametrize("indexed", [False, True])
def test_linear_equivariant(rng, indexed):
    x = e3nn.normal(IRREPS_IN, jax.random.PRNGKey(0), (6,))
    idx = jnp.asarray(rng.integers(0, 3, 6)) if indexed else None
    lin = Linear("5x0e+2x1o+3x2e+1x1e", get_policy("fp32"), "update", 3 if indexed else None)
    params = lin.init(jax.random.PRNGKey(1), x, idx)
    fn = lambda x: lin.apply(params, x, idx)
    for improper in (False, True):
        assert equivariance_error(fn, random_o3(rng, improper=improper), x) < 1e-5


def test_linear_indexed_uses_the_index():
    x = e3nn.normal("2x0e", jax.random.PRNGKey(0), (2,))
    x = e3nn.IrrepsArray("2x0e", jnp.ones((2, 2)))
    lin = Linear("1x0e", get_policy("fp32"), "update", 2)
    params = lin.init(jax.random.PRNGKey(1), x, jnp.array([0, 1]))
    y = np.asarray(lin.apply(params, x, jnp.array([0, 1])).array)
    w = np.asarray(next(iter(params["params"].values())))  # [2, 2, 1]
    np.testing.assert_allclose(y[:, 0], w.sum(axis=1)[:, 0] / np.sqrt(2), rtol=1e-6)


def test_linear_indexed_matches_fp64_rows():
    """Each row with its own set's matrices, in float64 NumPy: values, the input gradient and the
    weights' gradient (a sum over the rows of each set); under bf16-mixed, BF16 roundings only."""
    irreps_in, irreps_out = e3nn.Irreps("3x0e+2x1o"), e3nn.Irreps("2x0e+2x1o")
    x = e3nn.normal(irreps_in, jax.random.PRNGKey(0), (7,))
    idx = jnp.array([2, 0, 0, 1, 2, 2, 0])
    lin = Linear(irreps_out, get_policy("fp32"), "update", 3)
    params = lin.init(jax.random.PRNGKey(1), x, idx)
    proj = jax.random.normal(jax.random.PRNGKey(2), (7, irreps_out.dim))

    def loss(p, a):
        return jnp.sum(lin.apply(p, e3nn.IrrepsArray(irreps_in, a), idx).array * proj)

    with jax.default_matmul_precision("highest"):
        y = np.asarray(lin.apply(params, x, idx).array, np.float64)
        gp, gx = jax.grad(loss, argnums=(0, 1))(params, x.array)
    w0, w1 = (np.asarray(w, np.float64) for w in params["params"].values())  # [3, u, w]
    xa, k = np.asarray(x.array, np.float64), np.asarray(idx)
    x0, x1 = xa[:, :3], xa[:, 3:].reshape(7, 2, 3)  # [n, u] and [n, u, 3]
    ref0 = np.einsum("nu,nuw->nw", x0, w0[k]) / np.sqrt(3)
    ref1 = np.einsum("nui,nuw->nwi", x1, w1[k]) / np.sqrt(2)
    ref = np.concatenate([ref0, ref1.reshape(7, 6)], axis=1)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    # gradients through the reference: the loss is linear in x and in each set's weights
    p0, p1 = (
        np.asarray(proj[:, :2], np.float64),
        np.asarray(proj[:, 2:], np.float64).reshape(7, 2, 3),
    )
    gw0 = np.zeros_like(w0)
    np.add.at(gw0, k, np.einsum("nu,nw->nuw", x0, p0) / np.sqrt(3))
    gw1 = np.zeros_like(w1)
    np.add.at(gw1, k, np.einsum("nui,nwi->nuw", x1, p1) / np.sqrt(2))
    got0, got1 = (np.asarray(g) for g in gp["params"].values())
    np.testing.assert_allclose(got0, gw0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got1, gw1, rtol=1e-5, atol=1e-6)
    gx0 = np.einsum("nuw,nw->nu", w0[k], p0) / np.sqrt(3)
    gx1 = np.einsum("nuw,nwi->nui", w1[k], p1) / np.sqrt(2)
    np.testing.assert_allclose(
        np.asarray(gx), np.concatenate([gx0, gx1.reshape(7, 6)], 1), rtol=1e-5, atol=1e-6
    )
    low = lin.clone(policy=get_policy("bf16-mixed")).apply(params, x, idx).array
    err = np.abs(np.asarray(low, np.float64) - ref).max() / np.abs(ref).max()
    assert 0 < err < 2e-2


@pytest.mark.parametrize(
    "spec, dtype", [("fp32", "float32"), ("bf16-mixed", "bfloat16"), ("fp16-mixed", "float16")]
)
def test_linear_dtype_and_fp32_params(spec, dtype):
    x = e3nn.normal(IRREPS_IN, jax.random.PRNGKey(0), (3,))
    lin = Linear("2x0e+2x1o", get_policy(spec), "update")
    params = lin.init(jax.random.PRNGKey(1), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
    assert lin.apply(params, x).dtype == jnp.dtype(dtype)


def _edge_inputs(rng, n_nodes=6, n_edges=20, n_pad=3):
    s = rng.integers(0, n_nodes, n_edges)
    r = (s + rng.integers(1, n_nodes, n_edges)) % n_nodes
    v = rng.normal(size=(n_edges, 3))
    mask = np.ones(n_edges, bool)
    mask[-n_pad:] = False
    v[-n_pad:] = 0.0
    return (
        jnp.asarray(v, jnp.float32),
        jnp.asarray(s, jnp.int32),
        jnp.asarray(r, jnp.int32),
        jnp.asarray(mask),
    )


def _conv_fn(policy, rng, irreps_out="4x0e+4x1o+4x2e+4x1e"):
    v, s, r, m = _edge_inputs(rng)
    x = e3nn.normal(CONV_IN, jax.random.PRNGKey(0), (6,))
    lengths = edge_lengths(v, m, policy=policy)
    sh, radial = edge_basis(v, lengths, m, max_ell=2, n_basis=6, cutoff=4.0, policy=policy)
    conv = Convolution(irreps_out, 3.0, (8,), policy)
    params = conv.init(jax.random.PRNGKey(1), x, sh, radial, s, r, m)

    def fn(x, vec):
        lengths = edge_lengths(vec.array, m, policy=policy)
        sh, radial = edge_basis(
            vec.array, lengths, m, max_ell=2, n_basis=6, cutoff=4.0, policy=policy
        )
        return conv.apply(params, x, sh, radial, s, r, m)

    return fn, x, e3nn.IrrepsArray("1o", v), (s, r, m)


def test_convolution_equivariant(rng):
    fn, x, vec, _ = _conv_fn(get_policy("fp32"), rng)
    out = fn(x, vec)
    # paths into 0e: 0e*0e (2), 1o*1o (2), 2e*2e (1)
    assert out.irreps == e3nn.Irreps("5x0e+8x1o+5x1e+7x2e")
    err = equivariance_error(fn, random_o3(rng, improper=True), x, vec)
    assert err < 2e-5, err


def test_convolution_bf16_equivariance_error_measured(rng):
    fn, x, vec, _ = _conv_fn(get_policy("bf16-mixed"), rng)
    err = equivariance_error(fn, random_o3(rng, improper=True), x, vec)
    scale = float(np.max(np.abs(np.asarray(fn(x, vec).array, np.float32))))
    print(f"convolution bf16-mixed equivariance error {err / scale:.2e} (relative)")
    assert err / scale < 5e-2


def test_convolution_matches_e3nn_tensor_product(rng):
    v, s, r, m = _edge_inputs(rng)
    x = e3nn.normal(CONV_IN, jax.random.PRNGKey(0), (6,))
    sh = e3nn.spherical_harmonics("0e+1o+2e", v, normalize=True, normalization="component")
    filt = e3nn.Irreps("0e+1o+2e+1e")
    w = jax.random.normal(jax.random.PRNGKey(2), (20, num_path_weights(x.irreps, sh.irreps, filt)))
    out = e3nn_convolution(
        x, sh, w, s, r, m, irreps_out=filt, avg_num_neighbors=2.0, policy=get_policy("fp32")
    )
    # reference: e3nn's tensor product path by path, each output channel scaled by its weight
    chunks, offset = [], 0
    for i, j, ir_out in tp_paths(x.irreps, sh.irreps, filt):
        xi = e3nn.IrrepsArray(e3nn.Irreps([x.irreps[i]]), x.chunks[i].reshape(6, -1))
        yj = e3nn.IrrepsArray(e3nn.Irreps([sh.irreps[j]]), sh.chunks[j].reshape(20, -1))
        tp = e3nn.tensor_product(xi[s], yj, filter_ir_out=[ir_out])  # [20, mul x ir_out]
        mul = x.irreps[i].mul
        chunks.append(tp.mul_to_axis().array * w[:, offset : offset + mul, None])
        offset += mul
    paths = tp_paths(x.irreps, sh.irreps, filt)
    ref_irreps = e3nn.Irreps([(x.irreps[i].mul, ir) for i, _, ir in paths])
    msg = e3nn.from_chunks(ref_irreps, chunks, (20,))
    arr = jnp.where(m[:, None], msg.array, 0.0)
    ref = e3nn.IrrepsArray(ref_irreps, jax.ops.segment_sum(arr, r, 6) / 2.0).regroup()
    assert out.irreps == ref.irreps
    np.testing.assert_allclose(np.asarray(out.array), np.asarray(ref.array), atol=2e-5)


def test_convolution_padded_edges_send_nothing(rng):
    fn, x, vec, (s, r, m) = _conv_fn(get_policy("fp32"), rng)
    out = np.asarray(fn(x, vec).array)
    # padded edges with arbitrary (nonzero) vectors change nothing
    vec2 = e3nn.IrrepsArray("1o", vec.array.at[-3:].set(1.0))
    np.testing.assert_array_equal(np.asarray(fn(x, vec2).array), out)
    # nodes that receive only padded edges get exactly zero
    lonely = np.setdiff1d(np.arange(6), np.asarray(r)[np.asarray(m)])
    assert np.all(out[lonely] == 0.0)


@pytest.mark.parametrize("spec", ["fp32", "bf16-mixed"])
def test_convolution_stage_dtypes(spec, rng):
    policy = get_policy(spec)
    fn, x, vec, _ = _conv_fn(policy, rng)
    assert fn(x, vec).dtype == policy.dtype("aggregation")
    text = str(jax.make_jaxpr(fn)(x, vec))
    if spec == "bf16-mixed":
        assert "bf16" in text  # BF16 really happens in the messages stage


def test_backend_registry():
    assert "e3nn" in available_backends()
    assert get_backend("e3nn").convolution is not None
    with pytest.raises(ValueError, match="unknown or unavailable backend"):
        get_backend("nope")
    import doctest

    from mpnn_jax.nn import backends

    result = doctest.testmod(backends)
    assert result.attempted >= 4 and result.failed == 0


def test_auto_backend_is_pallas_on_recent_nvidia_gpus_only(monkeypatch):
    from types import SimpleNamespace

    from mpnn_jax.nn.backends import resolve

    assert resolve("auto", "cpu") == resolve("auto", "tpu") == "e3nn"
    assert resolve("cueq", "gpu") == "cueq" and resolve("e3nn", "gpu") == "e3nn"
    on_this = "pallas" if jax.default_backend() == "gpu" else "e3nn"  # (every GPU we test is sm90)
    assert get_backend("auto").name == on_this
    for capability, expected in [
        ("9.0", "pallas"),
        ("8.0", "pallas"),
        ("7.0", "e3nn"),
        (None, "e3nn"),
    ]:
        device = (
            SimpleNamespace()
            if capability is None
            else SimpleNamespace(compute_capability=capability)
        )
        monkeypatch.setattr(jax, "devices", lambda *a, d=device: [d])
        assert resolve("auto", "gpu") == expected, capability

    def no_gpu(*args):
        raise RuntimeError("Unknown backend gpu")

    monkeypatch.setattr(jax, "devices", no_gpu)
    assert resolve("auto", "gpu") == "e3nn"


def test_auto_backend_falls_back_where_jax_has_no_pallas_triton(monkeypatch):
    """Pallas's Triton backend is deprecated (JAX 0.11.0) and due to be removed: on a JAX without
    it, "auto" resolves to the reference on the same sm90 GPU instead of failing to trace."""
    import importlib.util
    from types import SimpleNamespace

    from mpnn_jax.nn import backends

    assert backends.pallas_triton_available()  # this JAX has it (the default suite's kernels)
    monkeypatch.setattr(jax, "devices", lambda *a: [SimpleNamespace(compute_capability="9.0")])
    assert backends.resolve("auto", "gpu") == "pallas"
    find_spec = importlib.util.find_spec

    def without_triton(name, *args):
        return None if name == "jax.experimental.pallas.triton" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_triton)
    assert not backends.pallas_triton_available()
    assert backends.resolve("auto", "gpu") == "e3nn"


@pytest.mark.parametrize("indexed", [False, True])
@pytest.mark.parametrize("preset", ["bf16-mixed", "fp16-mixed"])
def test_single_path_outputs_store_16bit_and_take_16bit_cotangents(monkeypatch, preset, indexed):
    """``STORE_SINGLE_PATH``: an output irrep that one path reaches is stored in the stage dtype
    by its GEMM (one rounding of the FP32 sums, as the cast it replaces), an output summing two
    paths keeps its FP32 sum, and the dense indexed GEMM (whose rows are rounded before they are
    selected) always stores; the first and second derivatives of a stored output then run no
    FP32 x 16-bit GEMM (off, the FP32 cotangent of the cast meets the 16-bit operands); values
    and gradients are those of the setting off."""
    from mpnn_jax.nn import linear as linear_mod
    from mpnn_jax.precision import Policy, audit
    from mpnn_jax.precision.policy import dtype_short

    p = get_policy(preset)
    short = dtype_short(p.dtype("update"))
    irreps_in, irreps_out = e3nn.Irreps("8x0e+6x0e+4x1o"), e3nn.Irreps("5x0e+3x1o")
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    x = e3nn.normal(irreps_in, keys[0], (7,)).array
    sets = (3,) if indexed else ()
    ws = [
        jax.random.normal(k, (*sets, irreps_in[i].mul, irreps_out[j].mul))
        for k, (i, j) in zip(keys[1:], linear_paths(irreps_in, irreps_out), strict=True)
    ]
    indices = jnp.array([0, 2, 1, 1, 0, 2, 2]) if indexed else None

    def energy(ws, x):
        with Policy.scope("update"):
            y = equivariant_linear(
                ws, e3nn.IrrepsArray(irreps_in, x), irreps_out=irreps_out, policy=p,
                stage="update", indices=indices,
            )  # fmt: skip
        with Policy.scope("energy"):
            return jnp.sum(p.cast("energy", y.array) ** 2)

    def force_loss(ws, x):  # a training step's second derivatives
        return jnp.sum(jax.grad(energy, argnums=1)(ws, x) ** 2)

    runs, violations, mixed = {}, {}, {}
    for store in (False, True):
        monkeypatch.setattr(linear_mod, "STORE_SINGLE_PATH", store)
        grads = jax.grad(force_loss, argnums=(0, 1))
        report = audit(grads, ws, x)
        # the two 0e paths' FP32 sum is an FP32 op in a 16-bit stage, with the setting or not
        violations[store] = report.check(p)
        forward = [r for r in report.of("update", "matmul") if not r.backward]
        forward = [r for r in forward if r.primitive == "dot_general"]
        outs = sorted(r.out_dtypes[0] for r in forward)  # one per path
        stored = 0 if not store else 3 if indexed else 1  # indexed: all; else the 1o output
        assert outs == sorted([short] * stored + ["f32"] * (3 - stored))
        mixed[store] = len(report.mixed_gemms(p))
        runs[store] = (energy(ws, x), jax.grad(energy, argnums=(0, 1))(ws, x), grads(ws, x))
    assert violations[True] == violations[False]
    # each path's first and second derivatives ran FP32 x 16-bit GEMMs; a stored one's no longer
    assert mixed[False] > 0 and mixed[True] * 3 == mixed[False] * (3 - stored)
    for a, b in zip(jax.tree.leaves(runs[False]), jax.tree.leaves(runs[True]), strict=True):
        np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-6, atol=1e-6
        )
