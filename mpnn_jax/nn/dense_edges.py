"""Gathers and neighbour sums over a receiver-dense edge layout, without scatter-adds.

In the receiver-dense layout (built on the host by :func:`mpnn_jax.data.dense.to_receiver_dense`)
node ``i`` owns the ``K = n_edges // n_nodes`` edge slots ``i*K ... i*K + K - 1``: its incoming
edges first, then empty slots (``edge_mask`` False). Each real edge ``e`` knows its reverse
``reverse[e]`` (the edge from its receiver to its sender, with the opposite cell shift), as every
full neighbour list has. Then every operation of a message-passing step is a gather or a dense
reduction:

* sums over a receiver's edges: ``x.reshape(n_nodes, K, ...).sum(1)`` (:func:`sum_receivers`),
  whose transpose is a broadcast (:func:`broadcast_receivers`) and vice versa;
* the sender gather ``x[senders]`` (:func:`gather_senders`), whose transpose would be a
  scatter-add over senders (GPU atomics), is given the transpose :func:`sum_senders`: node
  ``j``'s outgoing edges are the reverses of its incoming ones, so
  ``sum_{e: sender(e)=j} g[e] = sum_k g[reverse[j*K + k]]``, a gather and a reduction. The two
  are each other's transpose (custom VJPs both ways), so forces and their parameter gradients
  (the training step's second derivatives) never scatter.

Both sender functions mask: ``gather_senders`` returns 0 on empty slots and ``sum_senders``
ignores them, which is what makes them exact transposes. All functions are jittable; reverse-mode
derivatives of any order work, forward mode (``jax.jvp``) does not (custom VJPs).

Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(3.0)[:, None]                        # [n_nodes=3, 1]
    >>> senders = jnp.array([1, 0, 0, 2, 1, 2])             # K = 2 slots per node
    >>> reverse = jnp.array([2, 0, 1, 3, 4, 5])             # 0<->2 are reverses of each other
    >>> mask = jnp.array([True, False, True, False, False, False])
    >>> gather_senders(x, senders, reverse, mask)[:, 0].tolist()
    [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    >>> sum_receivers(jnp.ones((6, 1)), 3)[:, 0].tolist()
    [2.0, 2.0, 2.0]
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def slots_per_node(n_edges: int, n_nodes: int) -> int:
    """``K = n_edges // n_nodes``, checked (static shapes of a receiver-dense graph)."""
    if n_nodes <= 0 or n_edges % n_nodes:
        raise ValueError(
            f"a receiver-dense layout needs n_edges = K * n_nodes; got {n_edges} edges for "
            f"{n_nodes} nodes (build the graph with mpnn_jax.data.to_receiver_dense)"
        )
    return n_edges // n_nodes


def _expand(mask: jax.Array, x: jax.Array) -> jax.Array:
    return mask.reshape(mask.shape + (1,) * (x.ndim - 1))


def sum_receivers(x: jax.Array, n_nodes: int, *, dtype=None) -> jax.Array:
    """``[n_edges, ...] -> [n_nodes, ...]``: the sum over each node's ``K`` slots.

    ``dtype`` is the accumulation and result dtype (default ``x.dtype``); a 16-bit ``x`` with
    ``dtype=float32`` is read once and summed in FP32. The caller masks empty slots.
    """
    k = slots_per_node(x.shape[0], n_nodes)
    return jnp.sum(x.reshape((n_nodes, k) + x.shape[1:]), axis=1, dtype=dtype)


def broadcast_receivers(x: jax.Array, n_edges: int) -> jax.Array:
    """``[n_nodes, ...] -> [n_edges, ...]``: ``x[receivers]`` of the dense layout (a broadcast)."""
    n_nodes = x.shape[0]
    k = slots_per_node(n_edges, n_nodes)
    return jnp.broadcast_to(x[:, None], (n_nodes, k) + x.shape[1:]).reshape(
        (n_edges,) + x.shape[1:]
    )


def _gather(x, senders, mask):
    y = jnp.asarray(x).at[senders].get(mode="promise_in_bounds")  # [n_edges, ...]
    return jnp.where(_expand(mask, y), y, jnp.zeros_like(y))


def _sum(g, reverse, mask, n_nodes):
    g = jnp.where(_expand(mask, g), g, jnp.zeros_like(g))
    rows = jnp.asarray(g).at[reverse].get(mode="promise_in_bounds")  # [n_edges, ...]: edge e's reverse
    return sum_receivers(rows, n_nodes)


@jax.custom_vjp
def gather_senders(
    x: jax.Array, senders: jax.Array, reverse: jax.Array, mask: jax.Array
) -> jax.Array:
    """``mask[e] * x[senders[e]]``: ``[n_nodes, ...] -> [n_edges, ...]``, transposed without
    atomics.

    Args:
        x: [n_nodes, ...] node values (any float dtype).
        senders: int32 [n_edges], sender of each slot (the node itself on empty slots).
        reverse: int32 [n_edges], index of each real edge's reverse edge.
        mask: bool [n_edges], False on empty slots (and on padding).

    Returns:
        [n_edges, ...] in ``x.dtype``, zero on empty slots.
    """
    return _gather(x, senders, mask)


def _gather_fwd(x, senders, reverse, mask):
    # a [n_nodes, 0] array carries the static node count through the residuals
    # calling the custom function (not _gather) keeps higher derivatives on the custom rules
    y = gather_senders(x, senders, reverse, mask)
    return y, (senders, reverse, mask, jnp.zeros((x.shape[0], 0), x.dtype))


def _gather_bwd(res, g):
    senders, reverse, mask, nodes = res
    return sum_senders(g, senders, reverse, mask, nodes.shape[0]), None, None, None


gather_senders.defvjp(_gather_fwd, _gather_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def sum_senders(
    g: jax.Array, senders: jax.Array, reverse: jax.Array, mask: jax.Array, n_nodes: int
) -> jax.Array:
    """``h[j] = sum of g[e] over real edges e with senders[e] == j``: ``[n_edges, ...] ->
    [n_nodes, ...]``.

    The transpose of :func:`gather_senders`, computed as a gather by ``reverse`` and a dense sum
    over each node's slots (no scatter-add). Same arguments; ``n_nodes`` is static.
    """
    return _sum(g, reverse, mask, n_nodes)


def _sum_fwd(g, senders, reverse, mask, n_nodes):
    return sum_senders(g, senders, reverse, mask, n_nodes), (senders, reverse, mask)


def _sum_bwd(n_nodes, res, ct):
    senders, reverse, mask = res
    return gather_senders(ct, senders, reverse, mask), None, None, None


sum_senders.defvjp(_sum_fwd, _sum_bwd)
