"""The graph schema of mpnn_jax: building, batching, unbatching, padding and masks.

A graph is a `jraph.GraphsTuple` of numpy arrays (host side) with:

    nodes:   positions [n_nodes, 3] Å (float), species int32 [n_nodes], forces [n_nodes, 3] eV/Å
    edges:   shifts [n_edges, 3] integer cell shifts stored as float,
             reverse: optional int32 [n_edges], the index of each edge's reverse within the
             GraphsTuple (batch-global; see `mpnn_jax.data.neighbours.reverse_edges`)
    globals: cell [n_graphs, 3, 3] Å (rows are lattice vectors, zeros for molecules),
             energy [n_graphs] eV, stress [n_graphs, 3, 3] eV/Å^3, weight [n_graphs],
             has_stress [n_graphs] (1.0 / 0.0), pbc [n_graphs] (1.0 if any direction periodic)
    senders, receivers int32 [n_edges]; n_node, n_edge int32 [n_graphs]

Edge vectors are computed by the model side:
    r = positions[receivers] - positions[senders] + shifts @ cell[graph_of_edge]   # [n_edges, 3]

The reverse of edge e = (s, r, S) is the edge (r, s, -S): ``reverse`` is an involution without
fixed points (``reverse[reverse[e]] == e != reverse[e]``) that pairs real edges within their graph
and padding edges among themselves. It is present when every edge has its reverse (always so for
`neighbour_list`); `batch_graphs` keeps it only if every graph has it, `pad_graph` only if the
number of padding edges is even. Without it the model evaluates its radial MLP per edge.

Padding follows `jraph.pad_with_graphs`: after the real graphs comes one padding graph holding
all padding nodes and edges, then empty padding graphs; padded edges connect padding nodes only;
padding entries are zero (weight 0) except ``reverse``. The masks below reproduce jraph's and
work under `jax.jit` (they only read ``n_node``/``n_edge`` and static shapes). As in jraph, masks
are only meaningful on padded graphs: the last graph is always taken to be padding.

Batching, unbatching and padding are numpy-only (not jittable); masks are jittable.
"""

from __future__ import annotations

import jax.numpy as jnp
import jraph
import numpy as np

from mpnn_jax.data.neighbours import neighbour_list, pad_reverse, reverse_edges
from mpnn_jax.data.species import SpeciesTable
from mpnn_jax.data.xyz import Configuration

NODE_KEYS = ("positions", "species", "forces")
EDGE_KEYS = ("shifts",)
#: Optional edge key: int32 [n_edges] index of each edge's reverse (batch-global).
REVERSE_KEY = "reverse"
GLOBAL_KEYS = ("cell", "energy", "stress", "weight", "has_stress", "pbc")


def atoms_to_graph(
    config: Configuration,
    *,
    cutoff: float,
    species_table: SpeciesTable,
    dtype=np.float32,
) -> jraph.GraphsTuple:
    """One unpadded graph (numpy arrays) from a configuration.

    Args:
        config: a `Configuration` (positions Å, energy eV, forces eV/Å, stress eV/Å^3).
        cutoff: neighbour-list radius in Å.
        species_table: maps atomic numbers to species indices.
        dtype: float dtype of positions, forces, shifts and all float globals.

    Returns:
        A GraphsTuple with n_graphs = 1 following the module schema; missing labels are zeros
        (energy 0, forces 0, stress 0 with has_stress 0); ``edges["reverse"]`` when every edge
        has its reverse (`reverse_edges`).

    Example:
        >>> from mpnn_jax.data import bundled_path, read_xyz, SpeciesTable
        >>> config = read_xyz(bundled_path("rmd17_ethanol", "test"), index=0)[0]
        >>> g = atoms_to_graph(config, cutoff=5.0, species_table=SpeciesTable((1, 6, 8)))
        >>> g.nodes["positions"].shape, g.n_edge.tolist(), g.edges["reverse"][:3].tolist()
        ((9, 3), [72], [8, 16, 24])
    """
    senders, receivers, shifts = neighbour_list(config.positions, config.cell, config.pbc, cutoff)
    edges = {"shifts": np.asarray(shifts, dtype=dtype)}  # [n_edges, 3]
    reverse = reverse_edges(senders, receivers, shifts)
    if reverse is not None:
        edges[REVERSE_KEY] = reverse  # [n_edges] int32
    n = config.n_atoms
    forces = config.forces if config.forces is not None else np.zeros((n, 3))
    has_stress = config.stress is not None
    stress = config.stress if has_stress else np.zeros((3, 3))
    energy = config.energy if config.energy is not None else 0.0
    return jraph.GraphsTuple(
        nodes={
            "positions": np.asarray(config.positions, dtype=dtype),  # [n_nodes, 3]
            "species": species_table.index(config.numbers),  # [n_nodes] int32
            "forces": np.asarray(forces, dtype=dtype),  # [n_nodes, 3]
        },
        edges=edges,
        globals={
            "cell": np.asarray(config.cell, dtype=dtype)[None],  # [1, 3, 3]
            "energy": np.asarray([energy], dtype=dtype),  # [1]
            "stress": np.asarray(stress, dtype=dtype)[None],  # [1, 3, 3]
            "weight": np.asarray([config.weight], dtype=dtype),  # [1]
            "has_stress": np.asarray([float(has_stress)], dtype=dtype),  # [1]
            "pbc": np.asarray([float(config.periodic)], dtype=dtype),  # [1]
        },
        senders=senders.astype(np.int32),
        receivers=receivers.astype(np.int32),
        n_node=np.asarray([n], dtype=np.int32),
        n_edge=np.asarray([senders.shape[0]], dtype=np.int32),
    )


def batch_graphs(graphs: list[jraph.GraphsTuple]) -> jraph.GraphsTuple:
    """Concatenates graphs into one GraphsTuple (numpy), offsetting senders and receivers.

    Args:
        graphs: non-empty list of GraphsTuples following the schema (each may hold several graphs).

    Returns:
        The batched GraphsTuple; n_graphs is the sum of the inputs' n_graphs. ``reverse`` is
        offset by each input's first edge, and kept only if every input has it.
    """
    if not graphs:
        raise ValueError("batch_graphs needs at least one graph")
    node_counts = np.array([int(np.sum(g.n_node)) for g in graphs])
    offsets = np.concatenate([[0], np.cumsum(node_counts)[:-1]])
    edge_counts = np.array([int(np.sum(g.n_edge)) for g in graphs])
    edge_offsets = np.concatenate([[0], np.cumsum(edge_counts)[:-1]])
    edges = {
        k: np.concatenate([g.edges[k] for g in graphs]) for k in graphs[0].edges if k != REVERSE_KEY
    }
    if all(REVERSE_KEY in g.edges for g in graphs):
        edges[REVERSE_KEY] = np.concatenate(
            [np.asarray(g.edges[REVERSE_KEY]) + o for g, o in zip(graphs, edge_offsets)]
        ).astype(np.int32)  # [n_edges]
    return jraph.GraphsTuple(
        nodes={k: np.concatenate([g.nodes[k] for g in graphs]) for k in graphs[0].nodes},
        edges=edges,
        globals={k: np.concatenate([g.globals[k] for g in graphs]) for k in graphs[0].globals},
        senders=np.concatenate([g.senders + o for g, o in zip(graphs, offsets)]).astype(np.int32),
        receivers=np.concatenate([g.receivers + o for g, o in zip(graphs, offsets)]).astype(
            np.int32
        ),
        n_node=np.concatenate([g.n_node for g in graphs]).astype(np.int32),
        n_edge=np.concatenate([g.n_edge for g in graphs]).astype(np.int32),
    )


def unbatch(graph: jraph.GraphsTuple) -> list[jraph.GraphsTuple]:
    """Splits a batched GraphsTuple (numpy) into single-graph GraphsTuples; inverse of batching.

    Padding graphs, if any, are returned as graphs too (use `graph_mask` to drop them).
    ``reverse`` becomes local to each graph (its first edge's offset removed).
    """
    graph = _to_numpy(graph)
    n_node = np.asarray(graph.n_node)
    n_edge = np.asarray(graph.n_edge)
    node_starts = np.concatenate([[0], np.cumsum(n_node)])
    edge_starts = np.concatenate([[0], np.cumsum(n_edge)])
    out = []
    for g in range(n_node.shape[0]):
        ns = slice(node_starts[g], node_starts[g + 1])
        es = slice(edge_starts[g], edge_starts[g + 1])
        edges = {k: v[es] for k, v in graph.edges.items()}
        if REVERSE_KEY in edges:
            edges[REVERSE_KEY] = (edges[REVERSE_KEY] - edge_starts[g]).astype(np.int32)
        out.append(
            jraph.GraphsTuple(
                nodes={k: v[ns] for k, v in graph.nodes.items()},
                edges=edges,
                globals={k: v[g : g + 1] for k, v in graph.globals.items()},
                senders=(graph.senders[es] - node_starts[g]).astype(np.int32),
                receivers=(graph.receivers[es] - node_starts[g]).astype(np.int32),
                n_node=n_node[g : g + 1].astype(np.int32),
                n_edge=n_edge[g : g + 1].astype(np.int32),
            )
        )
    return out


def _to_numpy(graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
    def conv(d):
        return {k: np.asarray(v) for k, v in d.items()}

    return jraph.GraphsTuple(
        nodes=conv(graph.nodes),
        edges=conv(graph.edges),
        globals=conv(graph.globals),
        senders=np.asarray(graph.senders),
        receivers=np.asarray(graph.receivers),
        n_node=np.asarray(graph.n_node),
        n_edge=np.asarray(graph.n_edge),
    )


def _pad_rows(x: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([x, np.zeros((n,) + x.shape[1:], dtype=x.dtype)])


def pad_graph(
    graph: jraph.GraphsTuple, *, n_node: int, n_edge: int, n_graph: int
) -> jraph.GraphsTuple:
    """Pads a (batched) graph to fixed sizes with jraph's `pad_with_graphs` conventions.

    Args:
        graph: numpy GraphsTuple following the schema.
        n_node: total nodes after padding; must exceed the real node count (>= 1 padding node).
        n_edge: total edges after padding; at least the real edge count.
        n_graph: total graphs after padding; must exceed the real graph count.

    Returns:
        The padded GraphsTuple: one padding graph holding all padding nodes and edges (edges from
        and to its first node, zero shifts), then empty graphs; all padding features are zero,
        including weight. Padding edges are paired among themselves in ``reverse``: padding edge
        k (index ``real_edges + k``) reverses ``real_edges + (k ^ 1)``; with an odd number of
        padding edges ``reverse`` is dropped (the model then works per edge).

    Raises:
        ValueError: if the graph does not fit (never truncates).
    """
    graph = _to_numpy(graph)
    real_nodes = int(np.sum(graph.n_node))
    real_edges = int(np.sum(graph.n_edge))
    real_graphs = int(graph.n_node.shape[0])
    pad_nodes, pad_edges, pad_graphs = (
        n_node - real_nodes,
        n_edge - real_edges,
        n_graph - real_graphs,
    )
    if pad_nodes <= 0 or pad_edges < 0 or pad_graphs <= 0:
        raise ValueError(
            f"graph with {real_nodes} nodes, {real_edges} edges, {real_graphs} graphs does not fit "
            f"padding budget (n_node={n_node}, n_edge={n_edge}, n_graph={n_graph}); padding needs "
            "at least one extra node and one extra graph"
        )
    pad_n_node = np.zeros(pad_graphs, np.int32)
    pad_n_node[0] = pad_nodes
    pad_n_edge = np.zeros(pad_graphs, np.int32)
    pad_n_edge[0] = pad_edges
    pad_index = np.full(pad_edges, real_nodes, dtype=np.int32)  # first padding node
    edges = {k: _pad_rows(v, pad_edges) for k, v in graph.edges.items() if k != REVERSE_KEY}
    reverse = pad_reverse(graph.edges.get(REVERSE_KEY), pad_edges)  # [n_edge] or None
    if reverse is not None:
        edges[REVERSE_KEY] = reverse
    return jraph.GraphsTuple(
        nodes={k: _pad_rows(v, pad_nodes) for k, v in graph.nodes.items()},
        edges=edges,
        globals={k: _pad_rows(v, pad_graphs) for k, v in graph.globals.items()},
        senders=np.concatenate([graph.senders.astype(np.int32), pad_index]),
        receivers=np.concatenate([graph.receivers.astype(np.int32), pad_index]),
        n_node=np.concatenate([graph.n_node.astype(np.int32), pad_n_node]),
        n_edge=np.concatenate([graph.n_edge.astype(np.int32), pad_n_edge]),
    )


def _n_padding_graphs(graph: jraph.GraphsTuple):
    """jraph's rule: trailing graphs with 0 nodes, plus the one padding graph before them."""
    n_node = jnp.asarray(graph.n_node)
    return jnp.argmin(n_node[::-1] == 0) + 1


def graph_mask(graph: jraph.GraphsTuple) -> jnp.ndarray:
    """bool [n_graphs]: True for real graphs. Jittable."""
    n_graphs = graph.n_node.shape[0]
    return jnp.arange(n_graphs) < n_graphs - _n_padding_graphs(graph)


def node_mask(graph: jraph.GraphsTuple) -> jnp.ndarray:
    """bool [n_nodes]: True for real nodes. Jittable."""
    total = graph.nodes["positions"].shape[0]
    n_real = jnp.sum(jnp.where(graph_mask(graph), jnp.asarray(graph.n_node), 0))
    return jnp.arange(total) < n_real


def edge_mask(graph: jraph.GraphsTuple) -> jnp.ndarray:
    """bool [n_edges]: True for real edges. Jittable."""
    total = graph.senders.shape[0]
    n_real = jnp.sum(jnp.where(graph_mask(graph), jnp.asarray(graph.n_edge), 0))
    return jnp.arange(total) < n_real


def graph_index(graph: jraph.GraphsTuple, *, of: str = "node") -> jnp.ndarray:
    """int32 index of the graph that each node (``of="node"``) or edge (``of="edge"``) belongs to.

    Jittable: total lengths come from static shapes.
    """
    counts = jnp.asarray(graph.n_node if of == "node" else graph.n_edge)
    total = graph.nodes["positions"].shape[0] if of == "node" else graph.senders.shape[0]
    return jnp.repeat(jnp.arange(counts.shape[0]), counts, total_repeat_length=total).astype(
        jnp.int32
    )
