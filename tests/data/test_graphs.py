"""Graph schema, batching round trip, padding conventions and padding invariance."""

import chex
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from mpnn_jax.data import (
    SpeciesTable,
    atoms_to_graph,
    batch_graphs,
    edge_mask,
    graph_index,
    graph_mask,
    node_mask,
    pad_graph,
    unbatch,
)

from .conftest import make_config

TABLE = SpeciesTable((1, 6, 8, 29))


def toy_configs(seed=0):
    rng = np.random.default_rng(seed)
    cell = np.array([[3.0, 0.0, 0.0], [0.7, 3.3, 0.0], [0.2, 0.4, 2.9]])
    return [
        make_config(
            [6, 1, 1, 8],
            rng.normal(scale=1.2, size=(4, 3)),
            energy=-3.0,
            forces=rng.normal(size=(4, 3)),
        ),
        make_config(
            [29] * 3,
            rng.random((3, 3)) @ cell,
            cell=cell,
            pbc=True,
            energy=-7.5,
            forces=rng.normal(size=(3, 3)),
            stress=np.diag([0.1, 0.2, 0.3]),
        ),
        make_config([1, 8], rng.normal(size=(2, 3)), energy=None, forces=None),
    ]


def toy_graphs(dtype=np.float32, cutoff=3.5):
    return [
        atoms_to_graph(c, cutoff=cutoff, species_table=TABLE, dtype=dtype) for c in toy_configs()
    ]


def test_schema_of_one_graph():
    config = toy_configs()[1]
    g = atoms_to_graph(config, cutoff=3.5, species_table=TABLE)
    n, e = 3, int(g.n_edge[0])
    assert e > 0 and g.n_node.tolist() == [n]
    chex.assert_shape(g.nodes["positions"], (n, 3))
    chex.assert_shape(g.nodes["forces"], (n, 3))
    chex.assert_shape(g.nodes["species"], (n,))
    chex.assert_shape(g.edges["shifts"], (e, 3))
    chex.assert_shape([g.senders, g.receivers], (e,))
    chex.assert_shape([g.globals["cell"], g.globals["stress"]], (1, 3, 3))
    for key in ("energy", "weight", "has_stress", "pbc"):
        chex.assert_shape(g.globals[key], (1,))
    assert g.nodes["species"].dtype == np.int32 and g.nodes["species"].tolist() == [3, 3, 3]
    assert g.senders.dtype == np.int32 and g.n_node.dtype == np.int32 and g.n_edge.dtype == np.int32
    for leaf in (g.nodes["positions"], g.edges["shifts"], g.globals["cell"], g.globals["energy"]):
        assert leaf.dtype == np.float32
    assert g.globals["has_stress"][0] == 1.0 and g.globals["pbc"][0] == 1.0
    np.testing.assert_allclose(g.globals["stress"][0], np.diag([0.1, 0.2, 0.3]), rtol=1e-6)
    # Edge vectors with the schema's convention are within the cutoff.
    vectors = (
        g.nodes["positions"][g.receivers]
        - g.nodes["positions"][g.senders]
        + g.edges["shifts"] @ g.globals["cell"][0]
    )
    assert np.all(np.linalg.norm(vectors, axis=1) < 3.5 + 1e-5)


def test_molecule_and_missing_labels():
    mol, _, unlabelled = toy_graphs(dtype=np.float64)
    assert mol.nodes["positions"].dtype == np.float64
    assert mol.globals["pbc"][0] == 0.0 and not np.any(mol.globals["cell"])
    assert not np.any(mol.edges["shifts"])
    assert unlabelled.globals["energy"][0] == 0.0 and not np.any(unlabelled.nodes["forces"])
    assert unlabelled.globals["has_stress"][0] == 0.0 and unlabelled.globals["weight"][0] == 1.0


def test_unknown_element_is_an_error():
    config = make_config([1, 79], [[0, 0, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match="Au"):
        atoms_to_graph(config, cutoff=2.0, species_table=TABLE)


def test_nonpositive_cutoff_is_an_error():
    with pytest.raises(ValueError, match="cutoff"):
        atoms_to_graph(toy_configs()[0], cutoff=0.0, species_table=TABLE)


def assert_graphs_equal(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def test_batch_unbatch_round_trip():
    graphs = toy_graphs()
    batch = batch_graphs(graphs)
    assert batch.n_node.tolist() == [4, 3, 2]
    assert batch.senders.max() < 9 and batch.senders[batch.n_edge[0] :].min() >= 4
    back = unbatch(batch)
    assert len(back) == 3
    for a, b in zip(graphs, back):
        assert_graphs_equal(a, b)
    assert_graphs_equal(batch_graphs(back), batch)


def test_padding_conventions_match_jraph():
    batch = batch_graphs(toy_graphs())
    real_nodes, real_edges = int(batch.n_node.sum()), int(batch.n_edge.sum())
    padded = pad_graph(batch, n_node=16, n_edge=real_edges + 20, n_graph=6)
    assert padded.n_node.tolist() == [4, 3, 2, 7, 0, 0]
    assert padded.n_edge[3] == 20 and padded.n_edge[4:].tolist() == [0, 0]
    pad_edges = slice(real_edges, None)
    assert np.all(padded.senders[pad_edges] >= real_nodes)
    assert np.all(padded.receivers[pad_edges] >= real_nodes)
    assert padded.globals["weight"][3:].tolist() == [0.0, 0.0, 0.0]
    assert not np.any(padded.nodes["positions"][real_nodes:])
    np.testing.assert_array_equal(node_mask(padded), jraph.get_node_padding_mask(padded))
    np.testing.assert_array_equal(edge_mask(padded), jraph.get_edge_padding_mask(padded))
    np.testing.assert_array_equal(graph_mask(padded), jraph.get_graph_padding_mask(padded))
    assert int(node_mask(padded).sum()) == real_nodes and int(edge_mask(padded).sum()) == real_edges
    # Unbatching a padded graph returns the real graphs first.
    for a, b in zip(toy_graphs(), unbatch(padded)[:3]):
        assert_graphs_equal(a, b)


def test_padding_never_truncates():
    batch = batch_graphs(toy_graphs())
    n, e = int(batch.n_node.sum()), int(batch.n_edge.sum())
    with pytest.raises(ValueError, match="does not fit"):
        pad_graph(batch, n_node=n, n_edge=e, n_graph=4)  # no room for a padding node
    with pytest.raises(ValueError, match="does not fit"):
        pad_graph(batch, n_node=n + 1, n_edge=e - 1, n_graph=4)
    with pytest.raises(ValueError, match="does not fit"):
        pad_graph(batch, n_node=n + 1, n_edge=e, n_graph=3)


@jax.jit
def edge_length_sum(graph):
    """Toy per-node quantity: sum of incoming masked edge lengths (NaN-safe on padding)."""
    g_of_edge = graph_index(graph, of="edge")  # [n_edges]
    pos = graph.nodes["positions"]
    vectors = (
        pos[graph.receivers]
        - pos[graph.senders]
        + jnp.einsum("ei,eij->ej", graph.edges["shifts"], graph.globals["cell"][g_of_edge])
    )  # [n_edges, 3]
    mask = edge_mask(graph)
    sq = jnp.where(mask, jnp.sum(vectors**2, axis=1), 1.0)
    lengths = jnp.where(mask, jnp.sqrt(sq), 0.0)  # [n_edges]
    per_node = jax.ops.segment_sum(lengths, graph.receivers, num_segments=pos.shape[0])
    return jnp.where(node_mask(graph), per_node, 0.0)  # [n_nodes]


def test_padding_invariance_of_a_jitted_segment_sum(x64):
    graphs = toy_graphs(dtype=np.float64)
    batch = batch_graphs(graphs)
    n, e = int(batch.n_node.sum()), int(batch.n_edge.sum())
    small = np.asarray(edge_length_sum(pad_graph(batch, n_node=n + 1, n_edge=e, n_graph=4)))
    large = np.asarray(edge_length_sum(pad_graph(batch, n_node=n + 23, n_edge=e + 70, n_graph=9)))
    np.testing.assert_array_equal(small[:n], large[:n])
    assert not np.any(large[n:])
    # Float64 reference computed graph by graph without padding or jit.
    reference = []
    for g in graphs:
        cell = g.globals["cell"][0]
        v = (
            g.nodes["positions"][g.receivers]
            - g.nodes["positions"][g.senders]
            + g.edges["shifts"] @ cell
        )
        reference.append(np.bincount(g.receivers, np.linalg.norm(v, axis=1), minlength=g.n_node[0]))
    assert small.dtype == np.float64
    np.testing.assert_allclose(small[:n], np.concatenate(reference), rtol=1e-12)


def test_masks_under_jit_and_graph_index():
    padded = pad_graph(batch_graphs(toy_graphs()), n_node=16, n_edge=128, n_graph=5)
    masks = jax.jit(lambda g: (node_mask(g), edge_mask(g), graph_mask(g)))(padded)
    assert int(masks[0].sum()) == 9 and masks[2].tolist() == [True, True, True, False, False]
    idx = np.asarray(graph_index(padded, of="node"))
    assert idx.tolist() == [0] * 4 + [1] * 3 + [2] * 2 + [3] * 7
