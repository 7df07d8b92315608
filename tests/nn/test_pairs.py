"""Radial weights per pair of reverse edges (:mod:`mpnn_jax.nn.pairs`): the pair bookkeeping, the
gradient of :func:`per_edge`, the convolutions (e3nn reference and the Pallas kernels, which read
each edge's weights from its pair's row and sum a pair's two weight gradients in the edge kernel)
against the reference on weights expanded to the edges by a plain gather, to second derivatives in
FP64, and whole models on a graph with ``edges["reverse"]`` against the same graph without it."""

from __future__ import annotations

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax import potential, testing
from mpnn_jax.data.graphs import pad_graph
from mpnn_jax.data.neighbours import reverse_edges
from mpnn_jax.nn import available_backends
from mpnn_jax.nn import pairs as pr
from mpnn_jax.nn import pallas_conv as pc
from mpnn_jax.nn.convolution import e3nn_convolution, num_path_weights
from mpnn_jax.precision import get_policy

from .backend_checks import FILTER, MODELS, conv_derivatives, conv_inputs, loss_and_grad, rel


def _random_reverse(n: int, seed: int = 0) -> np.ndarray:
    """A random fixed-point-free involution of ``n`` edges."""
    perm = np.random.default_rng(seed).permutation(n)
    rev = np.empty(n, np.int32)
    rev[perm[::2]], rev[perm[1::2]] = perm[1::2], perm[::2]
    return rev


def test_docstring_example():
    import doctest

    result = doctest.testmod(pr)
    assert result.attempted > 0 and result.failed == 0


def test_pairs_of_an_involution():
    rev = _random_reverse(40)
    p = jax.jit(pr.edge_pairs)(jnp.asarray(rev))
    first, second, of_edge = (np.asarray(a) for a in p)
    assert first.shape == second.shape == (20,) and of_edge.shape == (40,)
    assert np.all(np.diff(first) > 0) and np.all(first < second)
    np.testing.assert_array_equal(second, rev[first])
    np.testing.assert_array_equal(np.sort(np.concatenate([first, second])), np.arange(40))
    np.testing.assert_array_equal(of_edge[first], np.arange(20))
    np.testing.assert_array_equal(of_edge[second], np.arange(20))
    with pytest.raises(ValueError, match="even"):
        pr.edge_pairs(jnp.arange(3))


def test_per_edge_gradients_match_a_plain_gather(x64):
    p = pr.edge_pairs(jnp.asarray(_random_reverse(12, seed=1)))
    w = jax.random.normal(jax.random.PRNGKey(0), (6, 3), jnp.float64)
    f = lambda w: jnp.sum(jnp.sin(pr.per_edge(w, p)) ** 3)  # noqa: E731
    ref = lambda w: jnp.sum(jnp.sin(w[p.of_edge]) ** 3)  # noqa: E731
    np.testing.assert_array_equal(pr.per_edge(w, p), w[p.of_edge])
    assert rel(jax.jit(jax.grad(f))(w), jax.grad(ref)(w)) < 1e-14
    assert rel(jax.jit(jax.hessian(f))(w), jax.hessian(ref)(w)) < 1e-14


def _paired_inputs(irreps_in: str, dtype=jnp.float64, n_nodes: int = 7, n_real: int = 10):
    """A convolution's inputs on edges that come in reverse pairs (``2 n_real`` live edges, then
    4 padded edges paired among themselves on the last node), in a shuffled order; weights per
    pair, the padded pairs' weights large (they must send nothing)."""
    rng = np.random.default_rng(3)
    s = rng.integers(0, n_nodes - 1, n_real)
    r = (s + rng.integers(1, n_nodes - 1, n_real)) % (n_nodes - 1)
    pad = np.full(4, n_nodes - 1)
    senders = np.concatenate([s, r, pad])
    receivers = np.concatenate([r, s, pad])
    n = senders.size
    rev = np.concatenate(
        [np.arange(n_real, 2 * n_real), np.arange(n_real), 2 * n_real + np.array([1, 0, 3, 2])]
    )
    mask = np.arange(n) < 2 * n_real
    order = rng.permutation(n)  # shuffled: pairs are not adjacent
    inv = np.argsort(order)
    senders, receivers, mask, rev = senders[order], receivers[order], mask[order], inv[rev[order]]
    x = e3nn.normal(irreps_in, jax.random.PRNGKey(0), (n_nodes,), dtype=dtype)
    sh = e3nn.normal("0e+1o+2e", jax.random.PRNGKey(1), (n,), dtype=dtype)
    p = pr.edge_pairs(jnp.asarray(rev, jnp.int32))
    w = jax.random.normal(
        jax.random.PRNGKey(2), (n // 2, num_path_weights(x.irreps, sh.irreps, FILTER)), dtype
    )
    w = w.at[~mask[np.asarray(p.first)]].set(1e3)
    idx = (jnp.asarray(a, jnp.int32) for a in (senders, receivers))
    return x, sh, w, *idx, jnp.asarray(mask), p


@pytest.mark.parametrize(
    "backend, second_order",
    [
        ("pallas", False),
        # the edge kernel's own derivative on pairs, and the e3nn backend's pairs (per_edge, also
        # in the NequIP model test below): 35 s on 2 cores
        pytest.param("pallas", True, marks=pytest.mark.slow),
        pytest.param("e3nn", True, marks=pytest.mark.slow),
        ("cueq", False),  # each edge's weight row as an operand index (the naive method on CPU)
    ],
)
def test_convolution_on_pairs_matches_the_reference_to_second_order(
    x64, backend, second_order, monkeypatch
):
    """Values, the three gradients and (``second_order``) the derivatives of a gradient norm of
    the convolution with per-pair weights equal the reference's on the weights gathered to every
    edge (a plain gather that autodiff transposes): for Pallas, the node kernels' weight rows and
    the edge kernel's sum of a pair's two weight gradients (with the target-order option set:
    pairs ignore it; the edge kernel's paths split over two calls, ``EDGE_GROUPS``)."""
    if backend not in available_backends():
        pytest.skip(f"backend {backend!r} is not installed")
    monkeypatch.setattr(pc, "EDGE_IN_TARGET_ORDER", True)
    monkeypatch.setattr(pc, "BLOCK_EDGES", 4)  # several programs, a padded tail of rows
    monkeypatch.setattr(pc, "EDGE_GROUPS", 2)  # the edge kernel's paths over two calls
    x, sh, w, s, r, m, p = _paired_inputs("2x0e+2x1o")
    policy = get_policy("fp64")
    kw = dict(irreps_out=FILTER, avg_num_neighbors=3.0, policy=policy)
    paired = {"e3nn": e3nn_convolution, "pallas": pc.pallas_convolution}.get(backend)
    if backend == "cueq":
        from mpnn_jax.nn.cueq import cueq_convolution as paired

    def conv_paired(xa, y, w):
        xs, ys = e3nn.IrrepsArray(x.irreps, xa), e3nn.IrrepsArray(sh.irreps, y)
        return paired(xs, ys, w, s, r, m, pairs=p, **kw).array

    def conv_ref(xa, y, w):
        xs, ys = e3nn.IrrepsArray(x.irreps, xa), e3nn.IrrepsArray(sh.irreps, y)
        return e3nn_convolution(xs, ys, w[p.of_edge], s, r, m, **kw).array

    res = {
        name: conv_derivatives(conv, x.array, sh.array, w, second_order=second_order)
        for name, conv in (("paired", conv_paired), ("ref", conv_ref))
    }
    (((_, out), g_out), h_out), (((_, ref), g_ref), h_ref) = res["paired"], res["ref"]
    errs = [rel(out, ref)]
    errs += [rel(a, b) for a, b in zip((*g_out, *h_out), (*g_ref, *h_ref), strict=True)]
    print(f"{backend} with pairs vs reference, fp64: value, 3 gradients, order-2 terms", errs)
    assert max(errs) < 1e-12 and len(errs) == 4 + 3 * second_order
    assert np.abs(np.asarray(g_ref[2])).max() > 1e-3
    assert not second_order or np.abs(np.asarray(h_ref[2])).max() > 1e-3
    padded_pairs = ~np.asarray(m)[np.asarray(p.first)]
    assert padded_pairs.any() and np.all(np.asarray(g_out[2])[padded_pairs] == 0.0)


def _graphs():
    """A padded 6-atom molecule with ``edges["reverse"]`` (the data pipeline's padding pairs the
    padded edges among themselves) and the same graph without it."""
    g = testing.molecule_graph(np.random.default_rng(2), n_atoms=6, n_species=2, cutoff=3.0)
    rev = reverse_edges(g.senders, g.receivers, np.asarray(g.edges["shifts"]))
    assert rev is not None
    g = g._replace(edges={**g.edges, "reverse": rev})
    g_rev = pad_graph(g, n_node=int(g.n_node.sum()) + 2, n_edge=int(g.n_edge.sum()) + 8, n_graph=2)
    assert "reverse" in g_rev.edges
    edges = {k: v for k, v in g_rev.edges.items() if k != "reverse"}
    return g_rev, g_rev._replace(edges=edges)


@pytest.mark.parametrize(
    "name, backend, second_order",
    # the Pallas kernels' second derivatives on pairs: the convolution test above (MACE's
    # compile with them takes 35 s on 2 cores)
    [
        ("mace", "pallas", False),
        ("nequip", "e3nn", True),
        # weights read through an operand index; 17 s on 2 cores (the naive method on CPUs)
        pytest.param("mace", "cueq", True, marks=pytest.mark.slow),
    ],
)
def test_model_with_reverse_edges_equals_the_model_without(
    name, backend, second_order, monkeypatch
):
    """A padded graph with ``edges["reverse"]`` (radial MLPs per pair) gives the energies, forces
    and (NequIP) energy + force loss gradient (second derivatives through the pairs) of the same
    graph without it (per edge), in FP32; :data:`potential.PAIR_EDGES` off ignores the key."""
    if backend not in available_backends():
        pytest.skip(f"backend {backend!r} is not installed")
    model = testing.tiny_model(name, **MODELS[name]).clone(backend=backend)
    g_rev, g = _graphs()
    params = testing.random_params(model, g)
    (_, out), grad = loss_and_grad(model, second_order=second_order)(params, g)
    (_, out_p), grad_p = loss_and_grad(model, second_order=second_order)(params, g_rev)
    errs = [rel(out_p["energy"], out["energy"]), rel(out_p["forces"], out["forces"])]
    leaves = zip(jax.tree_util.tree_leaves(grad_p), jax.tree_util.tree_leaves(grad), strict=True)
    errs.append(max((rel(a, b) for a, b in leaves), default=0.0))
    print(f"{name} {backend}: pairs vs edges, energy / forces / loss gradient", errs)
    assert np.abs(np.asarray(out["forces"])).max() > 1e-3
    assert max(errs) < 1e-5
    monkeypatch.setattr(potential, "PAIR_EDGES", False)
    (_, out_off), _ = loss_and_grad(model, second_order=False)(params, g_rev)
    # the same program as the per-edge graph's (to the GPU's atomic-add order: 7e-9 on an H100)
    np.testing.assert_allclose(out_off["forces"], out["forces"], rtol=1e-6, atol=1e-7)


def test_radial_mlp_runs_on_pairs():
    """With ``reverse`` the radial MLP's hidden layer has ``n_edges / 2`` rows (from the jaxpr)."""
    n_hidden = 7  # a width no other array has
    model = testing.tiny_model("nequip", **{**MODELS["nequip"], "radial_features": (n_hidden,)})
    g_rev, g = _graphs()
    params = testing.random_params(model, g)
    n_e = g.senders.shape[0]
    texts = [str(jax.make_jaxpr(potential.make_predictor(model))(params, x)) for x in (g_rev, g)]
    pairs, edges = f"f32[{n_e // 2},{n_hidden}]", f"f32[{n_e},{n_hidden}]"
    assert pairs in texts[0] and edges not in texts[0]
    assert edges in texts[1] and pairs not in texts[1]


def test_a_per_edge_backend_runs_on_graphs_with_reverse_edges(monkeypatch):
    """A registered backend without ``takes_pairs`` gets the weights expanded to the edges by
    :class:`Convolution` (its ``convolution`` has no ``pairs`` argument): the output and the
    gradients of the reference backend on pairs."""
    from mpnn_jax.nn import backends as bk
    from mpnn_jax.nn.convolution import Convolution

    rows = []

    class PerEdge:  # a user's backend written before the pairs
        name = "per-edge"

        @staticmethod
        def convolution(node_feats, sh, weights, senders, receivers, edge_mask, **kw):
            rows.append(weights.shape[0])
            return e3nn_convolution(node_feats, sh, weights, senders, receivers, edge_mask, **kw)

    monkeypatch.setitem(bk._REGISTRY, "per-edge", PerEdge())
    assert not bk.takes_pairs(PerEdge()) and bk.takes_pairs(bk.get_backend("e3nn"))
    x, sh, _, s, r, m = conv_inputs("2x0e+1x1o")
    n_e = s.shape[0]
    p = pr.edge_pairs(jnp.asarray(_random_reverse(n_e, seed=3)))
    radial = jax.random.normal(jax.random.PRNGKey(4), (n_e // 2, 4))  # [n_pairs, n_basis]
    policy = get_policy("fp32")
    out = {}
    for backend in ("e3nn", "per-edge"):
        conv = Convolution(FILTER, 3.0, (8,), policy, backend=backend)
        params = conv.init(jax.random.PRNGKey(0), x, sh, radial, s, r, m, pairs=p)

        def f(params, x, radial, conv=conv):
            y = conv.apply(params, x, sh, radial, s, r, m, pairs=p)
            return jnp.sum(jnp.sin(y.array)), y.array

        out[backend] = jax.jit(jax.value_and_grad(f, (0, 1, 2), has_aux=True))(params, x, radial)
    assert set(rows) == {n_e}  # the per-edge backend saw weights per edge
    for a, b in zip(*(jax.tree_util.tree_leaves(out[k]) for k in out), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
