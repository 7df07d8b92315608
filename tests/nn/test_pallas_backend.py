"""The fused Pallas convolution (``"pallas"`` backend) against the e3nn reference: values and
first and second derivatives in FP64 (the kernels' backward passes are kernels of their own, so
each derivative order is a separate code path), padding, sorted-edge promises, the bf16-mixed
error, and whole NequIP / MACE models: energies, forces, the parameter gradient of an energy +
force loss, rotation equivariance and forces = -dE/dr by FP64 finite differences.

On CPU the kernels run in Pallas's interpreter (the same kernel code the GPU compiles through
Triton; ``experiments/perf/pallas_conv.py`` checks the compiled kernels on a GPU).
"""

from __future__ import annotations

from functools import partial

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax.nn import available_backends, get_backend, ops
from mpnn_jax.nn import pallas_conv as pc
from mpnn_jax.nn.convolution import e3nn_convolution
from mpnn_jax.precision import get_policy

from .backend_checks import (
    FILTER,
    N_NODES,
    check_equivariance,
    check_fp64_finite_differences,
    check_model_matches_reference,
    conv_derivatives,
    conv_inputs,
    model_case,
    rel,
)


def _conv(backend: str, policy):
    fn = e3nn_convolution if backend == "e3nn" else pc.pallas_convolution
    return partial(fn, irreps_out=FILTER, avg_num_neighbors=3.0, policy=policy)


def test_docstring_example():
    import doctest

    result = doctest.testmod(pc, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def _grid(f, *args) -> tuple:
    """The grid of the one Pallas kernel that ``f(*args)`` launches (its programs)."""
    (eqn,) = [q for q in jax.make_jaxpr(f)(*args).eqns if q.primitive.name == "pallas_call"]
    return eqn.params["grid_mapping"].grid


def test_warps_keep_the_measured_work_per_thread(monkeypatch):
    """At NequIP-M's 32 channels the rule gives the warps measured fastest on an H200 (2 for each
    kernel's default block, log entry 14); wider channels get more warps (at most 8), narrower
    fewer (at least 1); an explicit setting wins."""
    kinds = {"node": pc.BLOCK_NODES, "transposed": pc.BLOCK_NODES_T, "edge": 8}
    assert {k: pc.warps_for(k, b, 32) for k, b in kinds.items()} == dict.fromkeys(kinds, 2)
    assert pc.edge_tile(32, 35) == (8, 2)  # NequIP-M's edge kernel keeps its measured tile
    assert pc.warps_for("node", 8, 128) == 8 and pc.warps_for("node", 8, 48) == 2
    assert pc.warps_for("edge", 1, 2) == 1 and pc.warps_for("node", 64, 256) == 8
    monkeypatch.setattr(pc, "EDGE_WARPS", 4)
    assert pc.warps_for("edge", 8, 32) == 4 and pc.warps_for("node", 8, 32) == 2


def test_edge_kernel_runs_one_warp_programs_at_128_channels(monkeypatch):
    """Where the channels fill a warp's row (C >= 128, MACE), the edge kernel's programs are one
    warp over EDGE_WARP_VALUES values of each row per thread (2 edges at C = 128); not at
    NequIP's 32 channels, not where the components would hold more than MAX_ACC_VALUES values
    per thread (MACE-L's 71), not where the block or the warps are set; the kernel is launched on
    that block (its grid) and its gradients are the 8-edge tile's."""
    monkeypatch.setattr(pc, "EDGE_WARP_VALUES", 8)  # the default; the rule whatever it is
    assert pc.edge_tile(128, 16) == (2, 1) and pc.edge_tile(256, 16) == (1, 1)
    assert pc.edge_tile(32, 35) == (8, 2) and pc.edge_tile(128, 71) == (8, pc.MAX_WARPS)
    monkeypatch.setattr(pc, "EDGE_WARPS", 4)
    assert pc.edge_tile(128, 16) == (8, 4)
    monkeypatch.setattr(pc, "EDGE_WARPS", 0)
    monkeypatch.setattr(pc, "BLOCK_EDGES", 4)
    assert pc.edge_tile(128, 16) == (4, 4)
    monkeypatch.setattr(pc, "BLOCK_EDGES", 0)
    plan, _ = pc.conv_plan("128x0e", "0e+1o+2e+3o", "128x0e+128x1o+128x2e+128x3o")
    assert (plan.n_out, plan.d_sh) == (16, 16)  # MACE MP-S's edge kernel
    n, e = 12, 37  # an odd edge count: a padded last block
    k = jax.random.split(jax.random.PRNGKey(1), 6)
    args = (
        jax.random.normal(k[0], (n, plan.n_in, 128)),
        jax.random.normal(k[1], (e, plan.n_paths, 128)),
        jax.random.normal(k[2], (e, plan.d_sh)),
        jax.random.normal(k[3], (n, plan.n_out, 128)),
        jax.random.randint(k[4], (e,), 0, n),
        jax.random.randint(k[5], (e,), 0, n),
        jnp.arange(e) < e - 3,  # three masked edges
    )  # fmt: skip
    f = partial(pc._edge_contract, plan=plan, scale=1.0, acc=jnp.float32, want=("dw", "dsh"))
    assert _grid(f, *args) == (-(-e // 2),)
    one_warp = f(*args)
    monkeypatch.setattr(pc, "EDGE_WARP_VALUES", 0)  # off: 8 edges per program
    wide = f(*args)
    for key in ("dw", "dsh"):
        np.testing.assert_allclose(one_warp[key], wide[key], rtol=1e-6, atol=1e-5)
    assert np.all(np.abs(np.asarray(one_warp["dsh"])[: e - 3]).max(axis=1) > 0)  # live edges
    assert np.all(np.asarray(one_warp["dw"])[-3:] == 0)  # masked edges: zero


def test_bf16_blocks_keep_the_fp32_bytes_per_thread(monkeypatch):
    """Where 2-byte operands meet warps at their cap (C = 128), the node kernel and its transpose
    take BF16_BLOCK_SCALE times their block, so each thread holds as many bytes as in FP32; not
    at 32 channels, not in FP32, not where the warps are set, not where the accumulators would
    exceed MAX_ACC_VALUES per thread; and the kernel is launched on that
    block (its grid: one program per block of receivers), with bit-identical sums."""
    monkeypatch.setattr(pc, "BF16_BLOCK_SCALE", 2)  # the default; the rule whatever it is
    assert pc.node_tile("node", 128, 2) == (2 * pc.BLOCK_NODES, pc.MAX_WARPS)
    assert pc.node_tile("transposed", 128, 2)[0] == 2 * pc.BLOCK_NODES_T
    assert pc.node_tile("node", 128, 4) == (pc.BLOCK_NODES, pc.MAX_WARPS)
    assert pc.node_tile("node", 32, 2) == (pc.BLOCK_NODES, 2)
    # MACE MP-S's 16 accumulators fit twice the tile; MACE-L's second layer's 71 would spill
    assert pc.node_tile("node", 128, 2, 16)[0] == 2 * pc.BLOCK_NODES
    assert pc.node_tile("node", 128, 2, 71)[0] == pc.BLOCK_NODES
    plan, _ = pc.conv_plan("128x0e", "0e+1o", "128x0e+128x1o")
    n = 40
    deg = np.arange(n) % 6  # in-degrees 0 to 5: blocks of uneven work
    start = jnp.asarray(np.concatenate([[0], np.cumsum(deg)]), jnp.int32)  # edges by target
    e = int(deg.sum())
    s = jnp.asarray((np.arange(e) * 7) % n, jnp.int32)  # their sources

    k = jax.random.split(jax.random.PRNGKey(0), 3)
    args = [
        jax.random.normal(k[0], (n, plan.n_in, 128), jnp.bfloat16),
        jax.random.normal(k[1], (e, plan.n_paths, 128), jnp.bfloat16),
        jax.random.normal(k[2], (e, plan.d_sh), jnp.bfloat16),
        start, None, s,
    ]  # fmt: skip
    f = partial(pc._gather_sum, plan=plan, scale=1.0, acc=jnp.float32, out_dtype=jnp.float32)

    fp32_args = [a.astype(jnp.float32) for a in args[:3]] + args[3:]
    assert _grid(f, *args) == (-(-n // (2 * pc.BLOCK_NODES)),)
    assert _grid(f, *fp32_args) == (-(-n // pc.BLOCK_NODES),)
    # each receiver's sum visits its edges in the same order whatever the block: bit-identical
    doubled = f(*args)
    monkeypatch.setattr(pc, "BF16_BLOCK_SCALE", 1)
    np.testing.assert_array_equal(np.asarray(doubled), np.asarray(f(*args)))
    assert float(jnp.abs(doubled).max()) > 0
    assert pc.node_tile("transposed", 128, 2)[0] == pc.BLOCK_NODES_T
    monkeypatch.setattr(pc, "BF16_BLOCK_SCALE", 2)
    monkeypatch.setattr(pc, "NUM_WARPS", pc.MAX_WARPS)
    assert pc.node_tile("node", 128, 2) == (pc.BLOCK_NODES, pc.MAX_WARPS)


def test_registered():
    assert "pallas" in available_backends() and get_backend("pallas").name == "pallas"


def test_plan_blocks_transpose_and_layout_round_trip():
    """Channel blocks of gcd(multiplicities); the transposed plan swaps inputs and outputs; the
    node layout conversion is a bijection."""
    plan, irreps = pc.conv_plan("4x0e+2x1o", "0e+1o+2e", FILTER)
    assert plan.channels == 2 and plan.n_in == 2 * 1 + 1 * 3
    assert plan.transposed().transposed() == plan
    assert (plan.transposed().n_in, plan.transposed().n_out) == (plan.n_out, plan.n_in)
    assert plan.transposed().transpose and not plan.transpose
    assert plan.n_out * plan.channels == irreps.dim
    x = e3nn.normal(irreps, jax.random.PRNGKey(0), (3,))
    blocks = pc._to_blocks(x.chunks, plan.channels)
    assert blocks.shape == (3, plan.n_out, plan.channels)
    for a, b in zip(pc._from_blocks(blocks, irreps, plan.channels), x.chunks, strict=True):
        np.testing.assert_array_equal(a, b)


def _fp64_derivatives(x, sh, w, s, r, m, *, second_order: bool) -> dict:
    """``{backend: conv_derivatives(...)}`` for e3nn and pallas in FP64: one program per backend
    with the values, the gradients (the kernels' forward and backward passes) and, with
    ``second_order``, the second derivatives."""
    res = {}
    for backend in ("e3nn", "pallas"):
        conv = _conv(backend, get_policy("fp64"))

        def conv_arrays(xa, y, w, conv=conv):
            return conv(e3nn.IrrepsArray(x.irreps, xa), e3nn.IrrepsArray(sh.irreps, y), w, s, r, m)

        res[backend] = conv_derivatives(
            conv_arrays, x.array, sh.array, w, second_order=second_order
        )
    return res


@pytest.mark.parametrize(
    "irreps_in, block, split, order",
    [
        ("2x0e+2x1o+2x2e", 2, False, 1),
        # second order: 64 s on 2 cores (the default suite has the pallas kernels' second
        # derivatives on l <= 1 inputs, tests/nn/test_pairs.py, and in the NequIP model below)
        pytest.param("2x0e+2x1o+2x2e", 2, False, 2, marks=pytest.mark.slow),
        # the non-default settings (20 s on 2 cores)
        pytest.param("4x0e+2x1o+2x1e", 8, True, 2, marks=pytest.mark.slow),
    ],
)
def test_fp64_values_first_and_second_derivatives(x64, irreps_in, block, split, order, monkeypatch):
    """Output, gradients (the transposed node kernel and the edge kernel) and (``order`` 2) a
    gradient of a gradient norm (the edge kernel's own derivative) equal the reference to FP64
    rounding, for a block smaller and one larger than the nodes' in-degrees, one and two
    multiplicities, and
    with the kernels' outputs split over several calls (``NODE_GROUPS``, ``EDGE_SPLIT``), the
    neighbour indices read through the permutation (``NBR_IN_ORDER``) and the transposed kernel
    on a block of its own (``BLOCK_NODES_T``), the loop's loads issued a step ahead
    (``PREFETCH``), the padded edges' garbage weights unmasked (``MASK_WEIGHTS``): no program
    may read them, and the edge kernel visiting the edges by receiver (``EDGE_IN_TARGET_ORDER``)."""
    monkeypatch.setattr(pc, "BLOCK_NODES", block)
    monkeypatch.setattr(pc, "BLOCK_NODES_T", 2 * block if not split else block // 2)
    monkeypatch.setattr(pc, "BLOCK_EDGES", 2 * block)
    monkeypatch.setattr(pc, "NODE_GROUPS", 3 if split else 1)
    monkeypatch.setattr(pc, "EDGE_SPLIT", split)
    monkeypatch.setattr(pc, "NBR_IN_ORDER", split)
    monkeypatch.setattr(pc, "PREFETCH", 1 if split else 0)  # the default (2): every other test
    monkeypatch.setattr(pc, "MASK_WEIGHTS", split)  # off: padded edges' 1e3 weights reach it
    monkeypatch.setattr(pc, "EDGE_IN_TARGET_ORDER", not split)
    monkeypatch.setattr(pc, "EDGE_STREAM", 3 if order == 2 else 0)  # its own derivative too
    x, sh, w, s, r, m = conv_inputs(irreps_in, dtype=jnp.float64)
    res = _fp64_derivatives(x, sh, w, s, r, m, second_order=order == 2)
    ((_, ref), g_ref), h_ref = res["e3nn"]
    ((_, out), g_out), h_out = res["pallas"]
    assert out.dtype == jnp.float64 and out.irreps == ref.irreps
    errs = [rel(out.array, ref.array)]
    errs += [rel(a, b) for a, b in zip(g_out, g_ref, strict=True)]
    errs += [rel(a, b) for a, b in zip(h_out, h_ref, strict=True)]
    print(f"pallas fp64 {irreps_in}, block {block}: value, 3 gradients, order-2 terms", errs)
    assert max(errs) < 1e-12 and len(errs) == 4 + 3 * (order == 2)
    if order == 2:
        assert np.abs(np.asarray(h_ref[2])).max() > 1e-3  # the second derivative is not trivial
    assert np.all(np.asarray(g_out[2])[~np.asarray(m)] == 0.0)  # no gradient into padding
    # nodes that receive only padded edges get exactly zero
    lonely = np.setdiff1d(np.arange(N_NODES), np.asarray(r)[np.asarray(m)])
    assert lonely.size > 0 and np.all(np.asarray(out.array)[lonely] == 0.0)


@pytest.mark.parametrize(
    "tiles, stream, irreps_in, groups",
    [
        (True, 0, "2x0e+1x1o", 1),
        (False, 0, "2x0e+1x1o", 1),
        (True, 2, "2x0e", 1),
        (False, 1, "2x0e+1x1o", 1),
        (True, 0, "2x0e+1x1o", 3),
        (False, 2, "2x0e+1x1o", 20),  # more groups than paths: one call per path
    ],
)
def test_edge_kernel_harmonic_tiles_give_the_reference_gradients(
    x64, tiles, stream, irreps_in, groups, monkeypatch
):
    """Harmonics to l = 3 (16 components, a power of two: the edge kernel reads and writes each
    edge's row as one tile, ``EDGE_SH_TILES``) or by scalar accesses, the terms all at once or
    output component by output component (``EDGE_STREAM``; MACE's scalar input, where each
    harmonic component has one term, and a mixed one, where they have several), the paths in one
    kernel call or split over several (``EDGE_GROUPS``: weight cotangents joined, harmonic
    cotangents summed): the gradients with respect to the harmonics and the weights equal the
    reference's in FP64."""
    monkeypatch.setattr(pc, "EDGE_SH_TILES", tiles)
    monkeypatch.setattr(pc, "EDGE_STREAM", stream)
    monkeypatch.setattr(pc, "EDGE_GROUPS", groups)
    monkeypatch.setattr(pc, "BLOCK_EDGES", 8)  # 24 edges: 3 programs
    x, sh, w, s, r, m = conv_inputs(irreps_in, dtype=jnp.float64, irreps_sh="0e+1o+2e+3o")
    res = _fp64_derivatives(x, sh, w, s, r, m, second_order=False)
    ((_, ref), g_ref), _ = res["e3nn"]
    ((_, out), g_out), _ = res["pallas"]
    assert sh.shape[-1] == 16 and np.abs(np.asarray(g_ref[1])).max() > 1e-3
    errs = [rel(out.array, ref.array)] + [rel(a, b) for a, b in zip(g_out, g_ref, strict=True)]
    assert max(errs) < 1e-12, errs
    assert np.all(np.asarray(g_out[1])[~np.asarray(m)] == 0.0)  # padded edges: zero dsh rows


def test_csr_leaves_masked_edges_out_of_every_range():
    """Masked edges sit past every node's range (no program walks them: the padding node's
    hundreds of padded edges once made one program the whole kernel's time), live edges each in
    their target's range, in a stable order; the sorted path gives the same offsets."""
    _, _, _, s, r, m = conv_inputs("2x0e")
    start, perm = pc.csr(r, N_NODES, m)
    start, perm, r_np, m_np = (np.asarray(a) for a in (start, perm, r, m))
    assert start[-1] == m_np.sum() and np.all(np.diff(start) >= 0)
    for t in range(N_NODES):
        edges = perm[start[t] : start[t + 1]]
        assert np.all(r_np[edges] == t) and np.all(m_np[edges]) and np.all(np.diff(edges) > 0)
    assert not np.any(m_np[perm[start[-1] :]])  # the masked ones, after every range
    order = np.argsort(r_np, kind="stable")  # padded edges point at the last node: they stay last
    sorted_start, none = pc._csr_of(jnp.asarray(r_np[order]), N_NODES, True, m[order])
    assert none is None and np.array_equal(np.asarray(sorted_start), start)


@pytest.mark.parametrize("prefetch", [0, 1, 3, 4])
def test_prefetch_depth_gives_the_same_sums_and_gradients(x64, prefetch, monkeypatch):
    """Every depth of the hand-pipelined loop (``PREFETCH``: none, indices only, the operands of
    2 and 3 steps ahead) walks the same edges: output and node-feature gradient (the transposed
    node kernel) equal the reference's in FP64, with blocks whose in-degrees are shorter and
    longer than the depth."""
    monkeypatch.setattr(pc, "PREFETCH", prefetch)
    monkeypatch.setattr(pc, "BLOCK_NODES", 4)
    x, sh, w, s, r, m = conv_inputs("2x0e+2x1o", dtype=jnp.float64)
    policy = get_policy("fp64")
    res = {}
    for backend in ("e3nn", "pallas"):
        conv = _conv(backend, policy)

        def f(xa, conv=conv):
            out = conv(e3nn.IrrepsArray(x.irreps, xa), sh, w, s, r, m).array
            return jnp.sum(jnp.sin(out)), out

        res[backend] = jax.jit(jax.value_and_grad(f, has_aux=True))(x.array)
    ((_, ref), g_ref), ((_, out), g_out) = res["e3nn"], res["pallas"]
    assert max(rel(out, ref), rel(g_out, g_ref)) < 1e-12


def test_sorted_edge_promise_gives_the_same_sums():
    x, sh, w, s, r, m = conv_inputs("2x0e+2x1o")
    order = np.argsort(np.asarray(r), kind="stable")
    args = (x, sh[order], w[order], s[order], r[order], m[order])
    policy = get_policy("fp32")
    plain = jax.jit(_conv("pallas", policy))(*args)
    with ops.implementation(sorted_edges="receivers"):
        promised = jax.jit(_conv("pallas", policy))(*args)
    np.testing.assert_allclose(promised.array, plain.array, rtol=1e-6, atol=1e-6)


def test_bf16_mixed_dtypes_and_error_no_worse_than_reference():
    """The kernel reads BF16 and accumulates in FP32 without rounding each message: its error
    against FP32 is at most the reference's (which rounds every message to BF16)."""
    x, sh, w, s, r, m = conv_inputs("2x0e+2x1o+2x2e")
    ref = jax.jit(_conv("e3nn", get_policy("fp32")))(x, sh, w, s, r, m)
    policy = get_policy("bf16-mixed")
    low_ref, low_out = (jax.jit(_conv(b, policy))(x, sh, w, s, r, m) for b in ("e3nn", "pallas"))
    assert low_out.dtype == policy.dtype("aggregation")
    err_out, err_ref = rel(low_out.array, ref.array), rel(low_ref.array, ref.array)
    print(f"bf16-mixed convolution error vs fp32: pallas {err_out:.1e}, e3nn {err_ref:.1e}")
    assert 0 < err_out <= 1.5 * err_ref
    # the kernels' operands are 16-bit: the pallas_call reads BF16 node features and weights
    jaxpr = jax.make_jaxpr(_conv("pallas", policy))(x, sh, w, s, r, m)
    calls = [e for e in jaxpr.eqns if e.primitive.name == "custom_vjp_call"]
    assert calls
    dtypes = {v.aval.dtype for v in calls[0].invars if jnp.issubdtype(v.aval.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}


# --- whole models -------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["mace", "nequip"])
def models(request):
    name = request.param
    # the parameter gradient (second derivatives) for NequIP, whose convolution has l = 1 inputs
    return name, *model_case(name, "pallas", second_order=name == "nequip")


def test_model_energy_forces_and_loss_gradient_match_e3nn(models):
    name, params, graph, _, fns = models
    check_model_matches_reference(fns, params, graph, "pallas", name)


def test_model_rotation_inversion_equivariance(models):
    _, params, graph, _, fns = models
    check_equivariance(fns["pallas"], params, graph)


def test_nequip_forces_match_fp64_finite_differences(models, x64):
    name, params, _, mods, _ = models
    if name != "nequip":
        pytest.skip("one model suffices")
    model64 = mods["pallas"].clone(policy=get_policy("fp64"))
    check_fp64_finite_differences(model64, params, "nequip pallas")


def test_path_groups_cover_the_weight_rows_in_order_with_balanced_outputs():
    """``_path_groups``: contiguous runs of weight rows, all of them once, in order, at most the
    groups asked for, their output components (MACE-L's second layer: 71) within a path's size
    of an equal share."""
    plan, _ = pc.conv_plan("128x0e+128x1o+128x2e", "0e+1o+2e+3o", "128x0e+128x1o+128x2e+128x3o")
    d_out = {p.weight: p.d_out for p in plan.paths}
    assert plan.n_out == 71 and plan.n_paths == 17
    for n in (1, 2, 3, 5, 17, 40):
        groups = pc._path_groups(plan, n)
        assert [p for g in groups for p in g] == list(range(plan.n_paths))
        assert all(g and g == tuple(range(g[0], g[-1] + 1)) for g in groups)
        assert len(groups) <= n
        sizes = [sum(d_out[p] for p in g) for g in groups]
        if n <= 5:
            assert len(groups) == n and max(sizes) - min(sizes) <= max(d_out.values())
    assert [len(g) for g in pc._path_groups(plan, 1)] == [17]
