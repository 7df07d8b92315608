"""Pairs of reverse edges: one radial-MLP evaluation for an edge and its reverse.

A neighbour list holds every edge ``j -> i`` (cell shift ``S``) together with its reverse
``i -> j`` (shift ``-S``): the same distance, so the same radial basis and the same radial-MLP
output. Where the graph says which edge reverses which (``graph.edges["reverse"]``,
:func:`mpnn_jax.data.neighbours.reverse_edges`), the models evaluate the radial MLP once per
pair, ``[n_edges / 2, n_weights]``, and the convolutions read each edge's weights from its pair's
row (:func:`per_edge`; the ``"pallas"`` backend reads them in its kernels and sums the two edges'
weight gradients in the kernel). The function is unchanged: the radial MLP of an edge equals that
of its reverse, to the last bit (their lengths are computed from negated vectors).

Contract of ``reverse`` (int32 [n_edges]): an involution without fixed points,
``reverse[reverse[e]] == e != reverse[e]``, pairing live edges with live edges and padded edges
with padded ones (so ``n_edges`` is even). It is checked where it is built (on the host), not
here: under ``jit`` a wrong ``reverse`` gives wrong weights, not an error.

Example:
    >>> import jax.numpy as jnp
    >>> p = edge_pairs(jnp.array([2, 3, 0, 1]))  # edges 0 <-> 2, 1 <-> 3
    >>> p.first.tolist(), p.second.tolist(), p.of_edge.tolist()
    ([0, 1], [2, 3], [0, 1, 0, 1])
    >>> per_edge(jnp.array([[10.0], [20.0]]), p)[:, 0].tolist()
    [10.0, 20.0, 10.0, 20.0]
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class EdgePairs(NamedTuple):
    """Static-shape description of the pairs (a pytree of int32 arrays).

    Attributes:
        first: [n_pairs] the lower-numbered edge of each pair, ascending.
        second: [n_pairs] its reverse (``reverse[first]``).
        of_edge: [n_edges] the pair of each edge (``of_edge[first] == of_edge[second] ==
            arange(n_pairs)``).
    """

    first: jax.Array
    second: jax.Array
    of_edge: jax.Array


def edge_pairs(reverse: jax.Array) -> EdgePairs:
    """The :class:`EdgePairs` of ``reverse`` (int32 [n_edges], see the module's contract).

    Jittable: ``n_pairs = n_edges // 2`` is static. Raises ``ValueError`` for an odd edge count.
    """
    n = reverse.shape[0]
    if n % 2:
        raise ValueError(f"an edge list of reverse pairs has an even length, got {n} edges")
    reverse = reverse.astype(jnp.int32)
    edges = jnp.arange(n, dtype=jnp.int32)
    is_first = edges < reverse  # [n_edges]
    rank = jnp.cumsum(is_first.astype(jnp.int32)) - 1  # [n_edges] pair id of a first edge
    first = jnp.nonzero(is_first, size=n // 2, fill_value=0)[0].astype(jnp.int32)  # [n_pairs]
    of_edge = jnp.where(is_first, rank, rank[reverse])  # [n_edges]
    return EdgePairs(first, reverse[first], of_edge.astype(jnp.int32))


@jax.custom_vjp
def per_edge(values: jax.Array, pairs: EdgePairs) -> jax.Array:
    """``values[pairs.of_edge]``: [n_pairs, ...] -> [n_edges, ...] (each pair's row, twice).

    The gradient is ``ct[first] + ct[second]`` (two gathers and an add, no scatter): every pair
    has exactly two edges.
    """
    return values[pairs.of_edge]


def _per_edge_fwd(values, pairs):
    return values[pairs.of_edge], pairs


def _per_edge_bwd(pairs, ct):
    zeros = jax.tree.map(lambda a: None, pairs)
    return ct[pairs.first] + ct[pairs.second], zeros


per_edge.defvjp(_per_edge_fwd, _per_edge_bwd)
