"""The receiver-dense edge layout: ``K`` edge slots per node, sums without scatter-adds.

:func:`to_receiver_dense` reorders a graph's edges (host side, numpy) so that node ``i`` owns the
slots ``i*K ... i*K + K - 1``: its incoming edges first, then empty slots. On a GPU the
neighbour sums then become dense reductions and their transposes gathers
(:mod:`mpnn_jax.nn.dense_edges`), where the flat layout uses atomic scatter-adds. The price is
the empty slots: every per-edge stage runs on ``n_nodes * K`` slots instead of ``n_edges``
(:func:`slot_fill` says how full they are).

A receiver-dense graph follows the schema of :mod:`mpnn_jax.data.graphs` with:

* ``senders``, ``receivers`` int32 [n_nodes * K]; ``receivers[e] = e // K``; an empty slot is a
  self-loop of its node with zero shift;
* ``edges["mask"]`` bool [n_nodes * K], False on empty slots
  (:func:`mpnn_jax.data.graphs.edge_mask` honours it);
* ``edges["reverse"]`` int32 [n_nodes * K]: the slot of each real edge's reverse (sender and
  receiver swapped, shift negated); an empty slot points to itself;
* ``n_edge[g] = n_node[g] * K`` (empty slots belong to their node's graph), so static shapes
  follow from the node budget alone.

Padding and batching come first: convert a padded batch (padding nodes get empty slots only; the
padding graph's edges are dropped). Every real edge must have its reverse in the graph (true of
every neighbour list of :mod:`mpnn_jax.data.neighbours`); a ``ValueError`` says which edge has
none. Models take the layout from the graph (the ``reverse`` field), so the same parameters serve
both layouts.

Example:
    >>> import numpy as np
    >>> from mpnn_jax import testing
    >>> flat = testing.pad(testing.molecule_graph(np.random.default_rng(0)),
    ...                    n_node=8, n_edge=64, n_graph=2)
    >>> g = to_receiver_dense(flat, slots=8)
    >>> int(g.senders.shape[0]) == 8 * int(g.nodes["positions"].shape[0])
    True
    >>> is_receiver_dense(g)
    True
"""

from __future__ import annotations

import jraph
import numpy as np

from mpnn_jax.data.graphs import _to_numpy

MASK_KEY = "mask"
REVERSE_KEY = "reverse"


def is_receiver_dense(graph: jraph.GraphsTuple) -> bool:
    """True if the graph carries the dense layout's ``reverse`` edge field."""
    return isinstance(graph.edges, dict) and REVERSE_KEY in graph.edges


def in_degrees(graph: jraph.GraphsTuple, *, padded: bool = True) -> np.ndarray:
    """int [n_nodes]: real incoming edges of each node (``padded``: as in
    :func:`to_receiver_dense`)."""
    graph = _to_numpy(graph)
    real = _mask_of(graph, padded)
    return np.bincount(graph.receivers[real], minlength=graph.nodes["positions"].shape[0])


def _mask_of(graph: jraph.GraphsTuple, padded: bool) -> np.ndarray:
    if not padded:
        return np.ones(graph.senders.shape[0], bool)
    from mpnn_jax.data.graphs import edge_mask

    return np.asarray(edge_mask(graph))


def dense_slots(graph: jraph.GraphsTuple, *, multiple: int = 4, padded: bool = True) -> int:
    """The smallest ``K`` that holds the largest in-degree, rounded up to ``multiple``."""
    top = int(np.max(in_degrees(graph, padded=padded), initial=0))
    return max(multiple, -(-top // multiple) * multiple)


def slot_fill(graph: jraph.GraphsTuple) -> float:
    """Fraction of a receiver-dense graph's slots that hold real edges."""
    return float(np.mean(np.asarray(graph.edges[MASK_KEY])))


def to_receiver_dense(
    graph: jraph.GraphsTuple, *, slots: int | None = None, padded: bool = True
) -> jraph.GraphsTuple:
    """The graph with its edges in the receiver-dense layout (numpy, host side).

    Args:
        graph: a GraphsTuple of the schema, usually a padded batch (``padded=True``: jraph's
            padding rule decides which edges are real); with ``padded=False`` every edge is real.
        slots: ``K``, the slots per node; ``None`` picks :func:`dense_slots` (the largest
            in-degree rounded up to 4). Give it explicitly to keep shapes static across batches.
        padded: whether ``graph`` follows jraph's padding convention.

    Returns:
        The receiver-dense GraphsTuple (see the module docstring): nodes and globals unchanged,
        ``n_nodes * slots`` edges.

    Raises:
        ValueError: if the graph is already dense, a node has more than ``slots`` incoming edges,
            an edge repeats, or an edge has no reverse.
    """
    graph = _to_numpy(graph)
    if is_receiver_dense(graph):
        raise ValueError("graph is already receiver-dense")
    n_nodes = graph.nodes["positions"].shape[0]
    real = _mask_of(graph, padded)
    senders = graph.senders[real].astype(np.int64)
    receivers = graph.receivers[real].astype(np.int64)
    shifts = graph.edges["shifts"][real]
    ishift = np.rint(shifts).astype(np.int64)  # integer cell shifts
    if not np.array_equal(ishift, shifts):
        raise ValueError("edge shifts must be integer cell shifts")
    degree = np.bincount(receivers, minlength=n_nodes)
    k = dense_slots(graph, padded=padded) if slots is None else int(slots)
    if k < 1 or degree.max(initial=0) > k:
        raise ValueError(
            f"slots={k} cannot hold a node with {int(degree.max(initial=0))} incoming edges; "
            f"use slots >= {int(degree.max(initial=0))} (dense_slots gives the smallest)"
        )
    # slot of each real edge: receiver-major, stable within a receiver
    order = np.argsort(receivers, kind="stable")
    first = np.concatenate([[0], np.cumsum(degree)[:-1]])
    rank = np.empty(senders.shape[0], np.int64)
    rank[order] = np.arange(senders.shape[0]) - first[receivers[order]]
    slot = receivers * k + rank  # [n_real]
    reverse_real = _reverse_index(senders, receivers, ishift)
    n_slots = n_nodes * k
    out_senders = np.repeat(np.arange(n_nodes, dtype=np.int64), k)  # empty: self-loops
    out_senders[slot] = senders
    out_reverse = np.arange(n_slots, dtype=np.int64)  # empty: themselves
    out_reverse[slot] = slot[reverse_real]
    mask = np.zeros(n_slots, bool)
    mask[slot] = True
    edges = {}
    for key, value in graph.edges.items():
        full = np.zeros((n_slots,) + value.shape[1:], value.dtype)
        full[slot] = value[real]
        edges[key] = full
    edges[MASK_KEY] = mask
    edges[REVERSE_KEY] = out_reverse.astype(np.int32)
    return graph._replace(
        edges=edges,
        senders=out_senders.astype(np.int32),
        receivers=np.repeat(np.arange(n_nodes, dtype=np.int32), k),
        n_edge=(graph.n_node * k).astype(np.int32),
    )


def _reverse_index(senders: np.ndarray, receivers: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """int [n_real]: for each edge the index of the edge ``receiver -> sender`` with ``-shift``."""
    n = senders.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    forward = np.column_stack([senders, receivers, shifts])  # [n, 5]
    backward = np.column_stack([receivers, senders, -shifts])  # [n, 5]
    rows, inverse = np.unique(np.concatenate([forward, backward]), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    if np.unique(inverse[:n]).shape[0] != n:
        raise ValueError("a receiver-dense layout needs distinct edges; the graph repeats one")
    edge_of_row = np.full(rows.shape[0], -1, np.int64)
    edge_of_row[inverse[:n]] = np.arange(n)
    reverse = edge_of_row[inverse[n:]]
    if np.any(reverse < 0):
        e = int(np.flatnonzero(reverse < 0)[0])
        raise ValueError(
            f"edge {int(senders[e])} -> {int(receivers[e])} (shift {shifts[e].tolist()}) has no "
            "reverse edge; a receiver-dense layout needs a full (symmetric) neighbour list"
        )
    return reverse
