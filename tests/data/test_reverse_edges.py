"""Reverse-edge index: `reverse_edges`, and ``edges["reverse"]`` through batching, padding,
unbatching and `sort_edges`."""

import chex
import numpy as np
import pytest

from mpnn_jax.benchmark.systems import sort_edges
from mpnn_jax.data import (
    GraphLoader,
    SpeciesTable,
    atoms_to_graph,
    batch_graphs,
    bundled_path,
    graph_index,
    neighbour_list,
    pad_graph,
    read_xyz,
    reverse_edges,
    unbatch,
)

from .conftest import make_config

TABLE = SpeciesTable((1, 6, 8, 29))


def assert_reverse(senders, receivers, shifts, reverse):
    """Every property of the contract, elementwise."""
    n = senders.shape[0]
    chex.assert_shape(reverse, (n,))
    assert reverse.dtype == np.int32
    assert np.all((reverse >= 0) & (reverse < n))
    np.testing.assert_array_equal(senders[reverse], receivers)
    np.testing.assert_array_equal(receivers[reverse], senders)
    np.testing.assert_array_equal(shifts[reverse], -shifts)
    np.testing.assert_array_equal(reverse[reverse], np.arange(n))
    assert not np.any(reverse == np.arange(n))


def cu_config():
    """A rattled 2x1x1 fcc Cu cell (8 atoms, a = 3.61 Å): at a 5 Å cutoff atoms see their own
    images (shift S and -S) and each neighbour through several images."""
    rng = np.random.default_rng(0)
    a = 3.61
    base = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]) * a
    positions = np.concatenate([base, base + [a, 0, 0]]) + rng.normal(scale=0.05, size=(8, 3))
    cell = np.diag([2 * a, a, a])
    return make_config([29] * 8, positions, cell=cell, pbc=True, energy=-1.0)


def ethanol_config():
    return read_xyz(bundled_path("rmd17_ethanol", "test"), index=0)[0]


def test_one_atom_sees_its_images_in_pairs():
    # One atom in a 2 Å cube, cutoff 4.5 Å: every edge is 0 -> 0, paired with the opposite shift;
    # 56 = 6 + 12 + 8 + 6 + 24 lattice vectors with |n|^2 = 1..5 < (4.5 / 2)^2.
    s, r, S = neighbour_list(np.zeros((1, 3)), 2.0 * np.eye(3), True, 4.5)
    assert len(s) == 56 and np.all(s == 0) and np.all(r == 0)
    reverse = reverse_edges(s, r, S.astype(np.float32))
    assert_reverse(s, r, S, reverse)


@pytest.mark.parametrize("make", [cu_config, ethanol_config], ids=["cu_fcc", "ethanol"])
def test_reverse_edges_of_a_neighbour_list(make):
    config = make()
    s, r, S = neighbour_list(config.positions, config.cell, config.pbc, 5.0)
    if config.periodic:
        assert np.any((s == r) & np.any(S != 0, axis=1))  # self-images are there
    reverse = reverse_edges(s, r, S.astype(np.float32))
    assert_reverse(s, r, S, reverse)
    # A shuffled list gives the same pairs, renumbered.
    perm = np.random.default_rng(1).permutation(len(s))
    shuffled = reverse_edges(s[perm], r[perm], S[perm])
    np.testing.assert_array_equal(perm[shuffled], reverse[perm])


def test_asymmetric_lists_have_no_reverse():
    config = ethanol_config()
    s, r, S = neighbour_list(config.positions, config.cell, config.pbc, 5.0)
    keep = np.arange(len(s)) != 7  # drop one edge: its reverse has none
    assert reverse_edges(s[keep], r[keep], S[keep]) is None
    flipped = S.copy()
    flipped[3, 0] = 1  # an edge whose shift has no opposite
    assert reverse_edges(s, r, flipped) is None
    # A self pair with zero shift would be its own reverse.
    zero = np.zeros((1, 3))
    assert reverse_edges(np.array([0]), np.array([0]), zero) is None
    with pytest.raises(ValueError, match="integer"):
        reverse_edges(s, r, S + 0.5)


def test_duplicate_edges_are_paired_one_to_one():
    config = cu_config()
    s, r, S = neighbour_list(config.positions, config.cell, config.pbc, 5.0)
    s2, r2, S2 = (np.concatenate([x, x]) for x in (s, r, S))  # every edge twice
    reverse = reverse_edges(s2, r2, S2)
    assert_reverse(s2, r2, S2, reverse)
    n = len(s)  # k-th copy with k-th copy: the first half pairs within itself
    assert np.all(reverse[:n] < n) and np.all(reverse[n:] >= n)
    # Three copies of an edge and one of its reverse: no one-to-one pairing.
    assert reverse_edges(np.array([0, 0, 0, 1]), np.array([1, 1, 1, 0]), np.zeros((4, 3))) is None
    assert reverse_edges(np.zeros(0, int), np.zeros(0, int), np.zeros((0, 3))).shape == (0,)


def toy_graphs():
    rng = np.random.default_rng(2)
    water = make_config([8, 1, 1], rng.normal(scale=0.8, size=(3, 3)), energy=-2.0)
    return [
        atoms_to_graph(c, cutoff=5.0, species_table=TABLE)
        for c in (ethanol_config(), cu_config(), water)
    ]


def assert_graph_reverse(graph):
    """The contract over a whole (padded) batch: real edges pair within their graph, padding
    edges with padding edges."""
    reverse = graph.edges["reverse"]
    assert_reverse(graph.senders, graph.receivers, graph.edges["shifts"], reverse)
    of_edge = np.asarray(graph_index(graph, of="edge"))  # [n_edges]
    np.testing.assert_array_equal(of_edge[reverse], of_edge)


def test_atoms_to_graph_adds_reverse():
    for g in toy_graphs():
        assert_graph_reverse(g)


def test_batch_pad_unbatch_keep_the_pairs():
    graphs = toy_graphs()
    batch = batch_graphs(graphs)
    assert_graph_reverse(batch)
    real_edges = int(batch.n_edge.sum())
    assert real_edges % 2 == 0
    padded = pad_graph(batch, n_node=int(batch.n_node.sum()) + 5, n_edge=real_edges + 10, n_graph=5)
    assert_graph_reverse(padded)  # padding edges sit in the padding graph, so pair among themselves
    np.testing.assert_array_equal(padded.edges["reverse"][:real_edges], batch.edges["reverse"])
    assert padded.edges["reverse"][real_edges:].tolist() == [
        real_edges + k for k in (1, 0, 3, 2, 5, 4, 7, 6, 9, 8)
    ]
    # Unbatching removes the offsets: the real graphs come back exactly.
    for original, back in zip(graphs, unbatch(padded)[:3]):
        assert back.edges.keys() == original.edges.keys()
        np.testing.assert_array_equal(back.edges["reverse"], original.edges["reverse"])
        np.testing.assert_array_equal(back.senders, original.senders)
    assert unbatch(padded)[3].edges["reverse"].tolist() == [1, 0, 3, 2, 5, 4, 7, 6, 9, 8]
    # No padding edges: nothing to pair, the key stays.
    assert "reverse" in pad_graph(batch, n_node=100, n_edge=real_edges, n_graph=4).edges


def test_reverse_is_dropped_when_it_cannot_hold():
    graphs = toy_graphs()
    batch = batch_graphs(graphs)
    n, e = int(batch.n_node.sum()), int(batch.n_edge.sum())
    odd = pad_graph(batch, n_node=n + 1, n_edge=e + 3, n_graph=4)
    assert "reverse" not in odd.edges and "shifts" in odd.edges
    without = graphs[1]._replace(edges={"shifts": graphs[1].edges["shifts"]})
    mixed = batch_graphs([graphs[0], without, graphs[2]])
    assert set(mixed.edges) == {"shifts"}
    np.testing.assert_array_equal(mixed.edges["shifts"], batch.edges["shifts"])
    assert "reverse" not in pad_graph(mixed, n_node=n + 1, n_edge=e + 4, n_graph=4).edges


def test_loader_batches_carry_reverse():
    graphs = toy_graphs() * 3
    loader = GraphLoader(graphs, batch_size=4, shuffle=True, seed=0)
    for batch in loader.iterate(0):
        assert_graph_reverse(batch)


def test_sort_edges_renumbers_reverse():
    batch = batch_graphs(toy_graphs())  # sorted by (sender, receiver, shift) within each graph
    n, e = int(batch.n_node.sum()), int(batch.n_edge.sum())
    padded = pad_graph(batch, n_node=n + 7, n_edge=e + 64, n_graph=4)
    by_receivers = sort_edges(padded, by="receivers")
    assert np.all(np.diff(by_receivers.receivers) >= 0)
    assert not np.array_equal(by_receivers.senders, padded.senders)  # the order did change
    assert_graph_reverse(by_receivers)
    # Sorting back by senders (stably) restores the original order, reverse included.
    back = sort_edges(by_receivers, by="senders")
    assert_graph_reverse(back)
    np.testing.assert_array_equal(back.senders, padded.senders)
    np.testing.assert_array_equal(back.receivers, padded.receivers)
    np.testing.assert_array_equal(back.edges["reverse"], padded.edges["reverse"])
