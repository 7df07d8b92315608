"""The species-indexed linear kernel (:mod:`mpnn_jax.nn.pallas_linear`) against the reference's
dense path: values in FP64 in both layouts with a padded tail, first and second derivatives (the
backward pass is the kernel again, so each order is its own code path), the layer in fp32 and
bf16-mixed, the precision audit, the matmul precision it asks Triton for, and a MACE model whose
indexed linears run the kernel (energies, forces and the loss gradient through second
derivatives, equal to the reference's).

On CPU the kernel runs in Pallas's interpreter; ``test_triton_lowering.py`` lowers it for a GPU.
"""

from __future__ import annotations

import re

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax.nn import backends, linear
from mpnn_jax.nn import pallas_linear as pli
from mpnn_jax.nn.linear import Linear
from mpnn_jax.precision import get_policy
from mpnn_jax.precision.audit import audit

from .backend_checks import check_model_matches_reference, model_case, register_reference_plus, rel


def _operands(n, u, v, d, n_sets, dtype, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(k[0], (n, u, d), dtype)  # [n, u, d]
    w = jax.random.normal(k[1], (n_sets, u, v), dtype)  # [n_sets, u, v]
    idx = jax.random.randint(k[2], (n,), 0, n_sets)
    return x, w, idx


def _reference(x, w, idx):
    return jnp.einsum("nud,nuv->ndv", x, w[idx])  # [n, d, v]


@pytest.mark.parametrize("x_rows, out_rows", [(False, True), (True, False), (True, True)])
@pytest.mark.parametrize("d, block", [(1, 16), (5, 16), (7, 32)])
def test_kernel_values_fp64_both_layouts(x64, x_rows, out_rows, d, block):
    """Every layout, with a row count that leaves a padded tail (13 nodes x d rows), two input
    slices per product (u = 32, block_k = 16)."""
    x, w, idx = _operands(13, 32, 16, d, 3, jnp.float64)
    want = _reference(x, w, idx)  # [n, d, v]
    xin = jnp.swapaxes(x, 1, 2) if x_rows else x
    order = jax.random.permutation(jax.random.PRNGKey(3), idx.shape[0])  # any order
    got = pli.indexed_kernel(
        xin, w, idx, order, x_rows=x_rows, out_rows=out_rows, acc_dtype=jnp.float64, block=block,
        block_k=16, warps=4, precision=jax.lax.Precision.HIGHEST,
    )  # fmt: skip
    got = got if out_rows else jnp.swapaxes(got, 1, 2)
    assert got.shape == want.shape and got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_rows_of_no_set_get_zeros(x64):
    """An index outside ``[0, n_sets)`` matches no set (documented: zeros, not garbage)."""
    x, w, idx = _operands(4, 16, 16, 3, 2, jnp.float64)
    got = pli.indexed_matmul(x, w, idx.at[1].set(5))
    np.testing.assert_array_equal(got[1], 0.0)
    np.testing.assert_allclose(got[0], _reference(x, w, idx)[0], rtol=1e-12)


@pytest.mark.parametrize("dx_rows", [0, 1])
def test_first_and_second_derivatives_fp64(x64, dx_rows, monkeypatch):
    """Gradients, and gradients of functions of gradients (what forces and a force loss's
    parameter gradient need), equal to the reference's in FP64; with the derivative's kernel
    writing e3nn's layout directly or row-major then transposed (``INDEXED_DX_ROWS``)."""
    monkeypatch.setattr(pli, "INDEXED_DX_ROWS", dx_rows)
    x, w, idx = _operands(9, 16, 32, 5, 3, jnp.float64, seed=1)
    g = jax.random.normal(jax.random.PRNGKey(7), (9, 5, 32), jnp.float64)
    fns = {
        "kernel": lambda x, w: pli.indexed_matmul(x, w, idx),
        "ref": lambda x, w: _reference(x, w, idx),
    }

    def loss(fn):
        return lambda x, w: jnp.sum(jnp.sin(fn(x, w)) * g)

    def second(fn):  # d/dw and d/dx of the squared gradients
        def h(x, w):
            gx, gw = jax.grad(loss(fn), argnums=(0, 1))(x, w)
            return jnp.sum(gx**2 * jnp.cos(x)) + jnp.sum(gw**3)

        return jax.jit(jax.grad(h, argnums=(0, 1)))(x, w)

    first = {k: jax.jit(jax.grad(loss(f), argnums=(0, 1)))(x, w) for k, f in fns.items()}
    for a, b in zip(first["kernel"], first["ref"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)
    for a, b in zip(second(fns["kernel"]), second(fns["ref"]), strict=True):
        assert np.abs(np.asarray(b)).max() > 1e-3
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


IRREPS = "16x0e+16x1o+16x2e+16x3o"


def _layer(backend: str, preset: str, x, idx):
    lin = Linear(IRREPS, get_policy(preset), "update", num_indexed_weights=3, backend=backend)
    params = lin.init(jax.random.PRNGKey(1), x, idx)
    return lin, params


@pytest.mark.parametrize("preset", ["fp32", "bf16-mixed"])
def test_layer_matches_dense_path(preset):
    """The layer with ``backend="pallas"`` against the dense path, same parameters: equal in
    fp32; in bf16-mixed no further from fp32 than the dense path (which rounds each set's result
    to BF16 before selecting it)."""
    x = e3nn.normal(IRREPS, jax.random.PRNGKey(0), (11,))
    idx = jnp.array([0, 1, 2, 2, 1, 0, 0, 1, 2, 1, 0])
    lin_ref, params = _layer("e3nn", "fp32", x, idx)
    exact = lin_ref.apply(params, x, idx).array
    out = {
        b: jax.jit(_layer(b, preset, x, idx)[0].apply)(params, x, idx) for b in ("e3nn", "pallas")
    }
    assert out["pallas"].irreps == out["e3nn"].irreps
    assert out["pallas"].dtype == get_policy(preset).dtype("update")
    err = {b: rel(o.array, exact) for b, o in out.items()}
    print(f"{preset}: pallas {err['pallas']:.1e}, dense {err['e3nn']:.1e} against fp32 dense")
    if preset == "fp32":
        assert err["pallas"] < 1e-5
    else:
        assert 0 < err["pallas"] <= 1.5 * err["e3nn"]


def test_kernel_runs_where_the_shapes_suit_it_and_the_switch_turns_it_off(monkeypatch):
    """The pallas_call appears in the layer's program for 16 channels, not for 8 (the dense
    path), and not with ``INDEXED_LINEAR = 0``."""

    def kernels(irreps):
        x = e3nn.normal(irreps, jax.random.PRNGKey(0), (5,))
        idx = jnp.array([0, 1, 1, 0, 1])
        lin = Linear(irreps, get_policy("fp32"), "update", 2, backend="pallas")
        params = lin.init(jax.random.PRNGKey(1), x, idx)
        return str(jax.make_jaxpr(lin.apply)(params, x, idx)).count(" name=mpnn_indexed_linear")

    assert kernels("16x0e+16x1o") == 2  # one per chunk
    assert kernels("8x0e+8x1o") == 0
    monkeypatch.setattr(pli, "INDEXED_LINEAR", 0)
    assert kernels("16x0e+16x1o") == 0


def test_audit_reads_one_fp32_contraction_per_chunk():
    """bf16-mixed: the kernel is one contraction of BF16 operands accumulating in FP32 in the
    ``update`` stage (forward, and the transposed kernel in the backward pass); the policy's
    check passes."""
    policy = get_policy("bf16-mixed")
    x = e3nn.normal("16x0e+16x2e", jax.random.PRNGKey(0), (6,))
    idx = jnp.array([0, 1, 2, 0, 1, 2])
    lin = Linear("16x0e+16x2e", policy, "update", 3, backend="pallas")
    params = lin.init(jax.random.PRNGKey(1), x, idx)

    def energy(arr):
        y = lin.apply(params, e3nn.IrrepsArray(x.irreps, arr), idx)
        return jnp.sum(y.array.astype(jnp.float32) ** 2)

    report = audit(jax.grad(energy), x.array)
    calls = [r for r in report.records if r.primitive == "indexed_kernel"]
    assert len(calls) == 4  # two chunks, forward and transposed
    assert {r.stage for r in calls} == {"update"} and {r.kind for r in calls} == {"matmul"}
    assert all(r.in_dtypes == ("bf16", "bf16") and r.accum == "f32" for r in calls)
    assert sum(r.backward for r in calls) == 2
    assert report.check(policy) == []


def test_matmul_precision_follows_jax_setting():
    """TF32 products (Triton's DEFAULT) under TF32 matmuls (JAX's default on GPUs, as XLA's FP32
    GEMMs; the GPU test session sets ``highest``, ``conftest.py``); IEEE FP32 (HIGHEST) in the
    fp32-highest preset's context and for FP64 operands."""
    with jax.default_matmul_precision("tensorfloat32"):
        assert pli._precision(jnp.float32) == jax.lax.Precision.DEFAULT
        assert pli._precision(jnp.bfloat16) == jax.lax.Precision.DEFAULT
        assert pli._precision(jnp.float64) == jax.lax.Precision.HIGHEST
    with get_policy("fp32-highest").matmul_context():
        assert pli._precision(jnp.float32) == jax.lax.Precision.HIGHEST


def test_sixteen_bit_accumulation_keeps_the_dense_path():
    """A policy that accumulates in 16 bits (``bf16-pure``) is not given the kernel's FP32 sums."""
    x = e3nn.normal("16x0e", jax.random.PRNGKey(0), (4,))
    idx = jnp.array([0, 1, 1, 0])
    lin = Linear("16x0e", get_policy("bf16-pure"), "update", 2, backend="pallas")
    params = lin.init(jax.random.PRNGKey(1), x, idx)
    assert "mpnn_indexed_linear" not in str(jax.make_jaxpr(lin.apply)(params, x, idx))


@pytest.fixture(scope="module")
def mace16():
    register_reference_plus("e3nn+indexed", indexed_matmul=backends.PallasBackend.indexed_matmul)
    # 16 channels: the kernel's smallest tile; l <= 1 keeps the interpreted program small
    return model_case("mace", "e3nn+indexed", second_order=True, num_channels=16)


def test_mace_with_the_kernel_matches_reference(mace16):
    """Energies, forces and the parameter gradient of an energy + force loss (second
    derivatives through the kernel) equal to the dense path's; the kernel is in the program."""
    params, graph, mods, fns = mace16
    check_model_matches_reference(fns, params, graph, "e3nn+indexed", "mace16")
    jaxpr = str(jax.make_jaxpr(fns["e3nn+indexed"])(params, graph))
    assert "mpnn_indexed_linear" in jaxpr
    assert "mpnn_indexed_linear" not in str(jax.make_jaxpr(fns["e3nn"])(params, graph))


def test_dense_index_max_still_bounds_the_kernel():
    """Many sets (over :data:`linear.DENSE_INDEX_MAX`) gather a matrix per row instead: the
    kernel, which multiplies by every set, is not used there."""
    n_sets = linear.DENSE_INDEX_MAX + 1
    x = e3nn.normal("16x0e", jax.random.PRNGKey(0), (4,))
    idx = jnp.array([0, 1, n_sets - 1, 2])
    lin = Linear("16x0e", get_policy("fp32"), "update", n_sets, backend="pallas")
    params = lin.init(jax.random.PRNGKey(1), x, idx)
    assert "mpnn_indexed_linear" not in str(jax.make_jaxpr(lin.apply)(params, x, idx))


def test_composed_weights_equal_two_maps_fp64(x64):
    """One indexed map with :func:`linear.composed_weights` equals a linear map followed by an
    indexed one, where the middle irreps repeat an irrep (two paths into one output) and the
    fan-ins of the two maps differ, in FP64 (the reference's dense path, no kernel)."""
    policy = get_policy("fp64")
    irreps_in, mid, out = map(e3nn.Irreps, ("3x0e+2x1o", "4x0e+3x1o+2x0e+1x2e", "2x0e+5x1o"))
    x = e3nn.normal(irreps_in, jax.random.PRNGKey(0), (6,), dtype=jnp.float64)
    idx = jnp.array([0, 2, 1, 1, 0, 2])
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 20))
    w1 = [
        jax.random.normal(next(keys), (irreps_in[i].mul, mid[j].mul), jnp.float64)
        for i, j in linear.linear_paths(irreps_in, mid)
    ]
    w2 = [
        jax.random.normal(next(keys), (3, mid[j].mul, out[k].mul), jnp.float64)
        for j, k in linear.linear_paths(mid, out)
    ]
    kw = dict(policy=policy, stage="update")
    two = linear.equivariant_linear(
        w2, linear.equivariant_linear(w1, x, irreps_out=mid, **kw), irreps_out=out, indices=idx,
        **kw,
    )  # fmt: skip
    one = linear.equivariant_linear(
        linear.composed_weights(w1, w2, irreps_in, mid, out), x, irreps_out=out, indices=idx, **kw
    )
    assert one.irreps == two.irreps and np.abs(np.asarray(two.array)).max() > 0.1
    np.testing.assert_allclose(one.array, two.array, rtol=1e-12, atol=1e-12)


class _Pair(nn.Module):
    """MACE layer 0's pair of maps: a linear, then a species-indexed one."""

    irreps: str
    preset: str
    backend: str

    @nn.compact
    def __call__(self, x, idx):
        policy = get_policy(self.preset)
        first = Linear(self.irreps, policy, "update")
        second = Linear(self.irreps, policy, "update", 3, backend=self.backend)
        return linear.linear_then_indexed(first, second, x, idx)


@pytest.mark.parametrize("preset", ["fp32", "bf16-mixed", "fp16-mixed"])
def test_linear_then_indexed_is_one_kernel_with_the_same_values(preset, monkeypatch):
    """With ``backend="pallas"`` the pair is one kernel call per chunk and no GEMM over the
    nodes for the first map, with the same parameters and values as the two maps: to FP32
    rounding in fp32; in 16-bit presets within 20% of the two 16-bit maps' distance from the
    fp32 pair (one rounding of the composed weights instead of the middle result's)."""
    x = e3nn.normal(IRREPS, jax.random.PRNGKey(0), (9,))
    idx = jnp.array([0, 1, 2, 2, 1, 0, 0, 1, 2])
    params = _Pair(IRREPS, "fp32", "e3nn").init(jax.random.PRNGKey(1), x, idx)
    exact = _Pair(IRREPS, "fp32", "e3nn").apply(params, x, idx).array
    pair = _Pair(IRREPS, preset, "pallas")
    assert jax.tree_util.tree_structure(pair.init(jax.random.PRNGKey(1), x, idx)) == (
        jax.tree_util.tree_structure(params)
    )

    def node_dots(module):  # GEMMs over the 9 nodes (the weights' own products are [3, ...])
        jaxpr = str(jax.make_jaxpr(module.apply)(params, x, idx))
        assert jaxpr.count(" name=mpnn_indexed_linear") == 4  # one kernel per chunk
        return len(re.findall(r"\[9,\d+,\d+\][^\n]*= dot_general", jaxpr))

    assert node_dots(pair) == 0  # the first map is folded into the kernel's weights
    got = jax.jit(pair.apply)(params, x, idx)
    assert got.dtype == get_policy(preset).dtype("update")
    monkeypatch.setattr(linear, "COMPOSE_INDEXED", False)
    assert node_dots(_Pair(IRREPS, preset, "pallas")) >= 4  # its GEMM per chunk is back
    two = jax.jit(_Pair(IRREPS, preset, "pallas").apply)(params, x, idx)
    err, err_two = rel(got.array, exact), rel(two.array, exact)
    print(f"{preset}: composed {err:.1e}, two maps {err_two:.1e} against the fp32 pair")
    if preset == "fp32":
        assert err < 1e-5 and err_two < 1e-5
    else:
        assert 0 < err <= 1.2 * err_two
