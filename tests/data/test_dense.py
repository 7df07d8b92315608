"""The receiver-dense edge layout (:mod:`mpnn_jax.data.dense`): every node's slots hold exactly
its incoming edges, reverses are reverses, and bad input is refused."""

import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax import testing
from mpnn_jax.data import (
    SpeciesTable,
    atoms_to_graph,
    batch_graphs,
    bundled_path,
    edge_mask,
    pad_graph,
    read_xyz,
)
from mpnn_jax.data.dense import (
    dense_slots,
    in_degrees,
    is_receiver_dense,
    slot_fill,
    to_receiver_dense,
)


@pytest.fixture(scope="module")
def padded():
    rng = np.random.default_rng(0)
    real = testing.batch(
        [
            testing.molecule_graph(rng, n_atoms=6),
            testing.periodic_graph(rng, n_atoms=3, cell_length=3.0),  # self-image edges
            testing.molecule_graph(rng, n_atoms=4),
        ]
    )
    return testing.pad(real, n_node=20, n_edge=int(real.n_edge.sum()) + 5, n_graph=5)


def _edge_set(senders, receivers, shifts):
    return sorted(
        (int(s), int(r), *np.rint(t).astype(int).tolist())
        for s, r, t in zip(senders, receivers, shifts)
    )


def test_slots_hold_exactly_the_incoming_edges(padded):
    k = dense_slots(padded)
    d = to_receiver_dense(padded, slots=k)
    n_nodes = padded.nodes["positions"].shape[0]
    assert is_receiver_dense(d) and not is_receiver_dense(padded)
    assert d.senders.shape == (n_nodes * k,)
    np.testing.assert_array_equal(d.receivers, np.repeat(np.arange(n_nodes), k))
    np.testing.assert_array_equal(d.n_edge, padded.n_node * k)
    real = np.asarray(edge_mask(padded))
    m = np.asarray(edge_mask(d))
    assert m.sum() == real.sum() and np.array_equal(m, d.edges["mask"])
    # the same edges (sender, receiver, shift), nothing lost or invented
    assert _edge_set(d.senders[m], d.receivers[m], d.edges["shifts"][m]) == _edge_set(
        padded.senders[real], padded.receivers[real], padded.edges["shifts"][real]
    )
    # real edges first in each node's slots; empty slots are zero-shift self-loops
    per_node = d.edges["mask"].reshape(n_nodes, k)
    assert np.all(np.diff(per_node.astype(int), axis=1) <= 0)
    np.testing.assert_array_equal(d.senders[~m], d.receivers[~m])
    assert np.all(d.edges["shifts"][~m] == 0)
    np.testing.assert_array_equal(per_node.sum(1), in_degrees(padded))
    assert slot_fill(d) == pytest.approx(real.sum() / (n_nodes * k))
    # nodes and globals unchanged
    np.testing.assert_array_equal(d.nodes["positions"], padded.nodes["positions"])
    np.testing.assert_array_equal(d.globals["cell"], padded.globals["cell"])


def test_reverse_is_the_reverse_edge(padded):
    d = to_receiver_dense(padded)
    m, rev = d.edges["mask"], d.edges["reverse"]
    e = np.flatnonzero(m)
    assert np.all(m[rev[e]])  # reverses of real edges are real
    np.testing.assert_array_equal(rev[rev[e]], e)  # an involution
    np.testing.assert_array_equal(d.senders[rev[e]], d.receivers[e])
    np.testing.assert_array_equal(d.receivers[rev[e]], d.senders[e])
    np.testing.assert_array_equal(d.edges["shifts"][rev[e]], -d.edges["shifts"][e])
    empty = np.flatnonzero(~m)
    np.testing.assert_array_equal(rev[empty], empty)
    # the periodic graph has self-image edges (i -> i, shift != 0): their reverse is i -> i, -shift
    self_image = e[d.senders[e] == d.receivers[e]]
    assert self_image.size > 0
    assert np.all(rev[self_image] != self_image)


def test_edge_vectors_match_the_flat_graph(padded):
    """Each real slot's vector is the vector of the same edge in the flat graph."""
    from mpnn_jax.data import graph_index
    from mpnn_jax.potential import edge_vectors, layout_kwargs
    from mpnn_jax.precision import get_policy

    policy = get_policy("fp32")

    def vectors(g):
        return np.asarray(
            edge_vectors(
                g.nodes["positions"],
                g.globals["cell"],
                g.edges["shifts"],
                g.senders,
                g.receivers,
                graph_index(g, of="edge"),
                policy=policy,
                edge_mask=edge_mask(g),
                **layout_kwargs(g),
            )
        )

    d = to_receiver_dense(padded)
    flat, dense = vectors(padded), vectors(d)
    real, m = np.asarray(edge_mask(padded)), d.edges["mask"]
    key = {
        e: i for i, e in enumerate(_rows(padded.senders, padded.receivers, padded.edges["shifts"]))
    }
    rows = _rows(d.senders, d.receivers, d.edges["shifts"])
    for slot in np.flatnonzero(m):
        np.testing.assert_allclose(dense[slot], flat[key[rows[slot]]], atol=1e-6)
    assert np.all(dense[~m] == 0)
    assert real.sum() == m.sum()


def _rows(s, r, t):
    return [(int(a), int(b), *np.rint(c).astype(int).tolist()) for a, b, c in zip(s, r, t)]


def test_real_dataset_batch():
    """A padded batch of rMD17 ethanol: 8 neighbours per atom at most (9 atoms, 5 Å)."""
    table = SpeciesTable((1, 6, 8))
    configs = read_xyz(bundled_path("rmd17_ethanol", "test"), index=slice(0, 4))
    real = batch_graphs([atoms_to_graph(c, cutoff=5.0, species_table=table) for c in configs])
    g = pad_graph(real, n_node=40, n_edge=300, n_graph=5)
    assert dense_slots(g) == 8 and dense_slots(g, multiple=1) == 8
    d = to_receiver_dense(g)
    assert d.senders.shape == (40 * 8,)
    assert slot_fill(d) == pytest.approx(4 * 72 / 320)
    assert bool(jnp.sum(edge_mask(d))) and int(np.sum(edge_mask(d))) == 4 * 72


def test_refuses_bad_input(padded):
    k = dense_slots(padded, multiple=1)
    with pytest.raises(ValueError, match="cannot hold a node"):
        to_receiver_dense(padded, slots=k - 1)
    with pytest.raises(ValueError, match="already receiver-dense"):
        to_receiver_dense(to_receiver_dense(padded))
    # drop one edge: its reverse has none
    keep = np.ones(padded.senders.shape[0], bool)
    keep[0] = False
    broken = padded._replace(
        senders=padded.senders[keep],
        receivers=padded.receivers[keep],
        edges={k: v[keep] for k, v in padded.edges.items()},
        n_edge=np.concatenate([[padded.n_edge[0] - 1], padded.n_edge[1:]]),
    )
    with pytest.raises(ValueError, match="no reverse edge"):
        to_receiver_dense(broken)
    # a repeated edge
    doubled = padded._replace(
        senders=np.concatenate([padded.senders[:1], padded.senders]),
        receivers=np.concatenate([padded.receivers[:1], padded.receivers]),
        edges={k: np.concatenate([v[:1], v]) for k, v in padded.edges.items()},
        n_edge=np.concatenate([[padded.n_edge[0] + 1], padded.n_edge[1:]]),
    )
    with pytest.raises(ValueError, match="distinct edges"):
        to_receiver_dense(doubled)
