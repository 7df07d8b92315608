"""Contractions and row selections of the nn blocks: operands in a stage dtype, accumulation in
the policy's accumulator dtype.

Thin wrappers over :func:`mpnn_jax.precision.ops.accum_einsum`, which lowers to the native
mixed-precision dot on accelerators (``preferred_element_type``) and to an exact upcast emulation
on CPU, whose XLA runtime rejects ``BF16 x BF16 = F32`` dots.

Two implementation choices are module settings, read when a function is traced (like
:data:`mpnn_jax.precision.ops.SMALL_CONTRACTION`), so that variants can be compiled side by side
in one process (:func:`implementation` sets them for a ``with`` block):

* :data:`TAKE_ROWS`: how :func:`take_rows` and :func:`select_sets` select species rows,
  ``"take"`` (the default: a gather in the aggregation dtype; gradient = an FP32 scatter-add)
  or ``"onehot"`` (a contraction with a one-hot matrix; gradient = a reduction). Same values;
  ``take`` measured 20% faster for an fp32 MACE training step on an H100 and equal for E+F.
* :data:`SORTED_EDGES`: which edge index array the caller promises is sorted, ``"none"``,
  ``"senders"`` or ``"receivers"``; the convolution passes ``indices_are_sorted`` to the sender
  gather (whose gradient is a scatter-add over senders) or to the receiver ``segment_sum``.
  A false promise gives wrong sums on GPUs: set it only for graphs sorted that way (the neighbour
  list of :mod:`mpnn_jax.data.neighbours` sorts by sender, and batching and padding keep that
  order; ``mpnn_jax.benchmark.sort_edges`` re-sorts by receiver). The ``"pallas"`` backend also
  takes the promise to cover the masked edges: they come last (padded edges point at padding
  nodes past every real node, as jraph's padding and the MD neighbour lists leave them).
* :data:`EDGE_GATHER`: how :func:`gather_rows` selects the edge vectors' positions
  (``positions[senders]``, ``positions[receivers]``) by an index array that is not promised
  sorted. ``"direct"``: a gather, whose gradient is a scatter-add in edge order; ``"sorted"``
  (the default): the same rows gathered in sorted index order and put back in edge order by a
  permutation, so that the gradient's scatter-add runs in sorted order (one sort per call).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp

from mpnn_jax.precision import Policy
from mpnn_jax.precision.ops import accum_einsum

#: Implementation of :func:`take_rows` / :func:`select_sets`: ``"onehot"`` or ``"take"``.
TAKE_ROWS = "take"  # H100: fp32 MACE train 37.2 -> 29.7 ms (PERFORMANCE_LOG, change 5)
TAKE_ROWS_CHOICES = ("onehot", "take")
#: Edge index array promised sorted: ``"none"``, ``"senders"`` or ``"receivers"``.
SORTED_EDGES = "none"
SORTED_EDGES_CHOICES = ("none", "senders", "receivers")
#: :func:`gather_rows` for the edge vectors: ``"sorted"`` or ``"direct"``.
EDGE_GATHER = "sorted"  # H100, MACE MP-S E+F on 10k atoms: PERFORMANCE_LOG entry 19
GATHER_CHOICES = ("direct", "sorted")


@contextlib.contextmanager
def implementation(
    *, take_rows: str | None = None, sorted_edges: str | None = None
) -> Iterator[None]:
    """Sets :data:`TAKE_ROWS` and/or :data:`SORTED_EDGES` for the functions traced in the block.

    Example:
        >>> from mpnn_jax.nn import ops
        >>> with ops.implementation(take_rows="onehot"):
        ...     ops.TAKE_ROWS
        'onehot'
        >>> ops.TAKE_ROWS
        'take'
    """
    global TAKE_ROWS, SORTED_EDGES
    if take_rows is not None and take_rows not in TAKE_ROWS_CHOICES:
        raise ValueError(f"unknown take_rows {take_rows!r}; expected one of {TAKE_ROWS_CHOICES}")
    if sorted_edges is not None and sorted_edges not in SORTED_EDGES_CHOICES:
        raise ValueError(
            f"unknown sorted_edges {sorted_edges!r}; expected one of {SORTED_EDGES_CHOICES}"
        )
    saved = TAKE_ROWS, SORTED_EDGES
    TAKE_ROWS = take_rows or TAKE_ROWS
    SORTED_EDGES = sorted_edges or SORTED_EDGES
    try:
        yield
    finally:
        TAKE_ROWS, SORTED_EDGES = saved


def gather_rows(
    x: jax.Array, indices: jax.Array, *, how: str = "sorted", promised_sorted: bool = False
) -> jax.Array:
    """``x[indices]`` [n, ...]: the same values, with a gradient that sums in sorted order.

    The gradient of a gather is a scatter-add of ``n`` rows onto ``x``. On GPUs its atomics run
    fast when neighbouring updates hit the same row (sorted indices: edges grouped by that node)
    and slowly when they are scattered: the sender side of receiver-sorted edges
    (``positions[senders]``: 0.86 ms of a 14.7-ms MACE E+F on an H100 for 547k x 3 values,
    against 0.02 ms for the receiver side). With ``how="sorted"`` the indices are sorted once
    (``lax.sort``, one key-value sort), the rows gathered in that order and moved back to the
    callers' order by the inverse permutation; the gradient is then a permutation (no
    collisions: ``unique_indices``) and a scatter-add in sorted order. Forward values are exact
    and identical; gradients differ from the direct ones only in the order of their sums.

    Args:
        x: [n_rows, ...] rows (e.g. positions [n_nodes, 3] Å or node features).
        indices: int [n] row indices in ``[0, n_rows)``.
        how: ``"sorted"`` or ``"direct"`` (a plain gather).
        promised_sorted: the caller promises ``indices`` is sorted: a plain gather, told so.

    Returns:
        [n, ...] in ``x.dtype``.

    Example:
        >>> x = jnp.arange(4.0)
        >>> gather_rows(x, jnp.array([3, 0, 3, 1])).tolist()
        [3.0, 0.0, 3.0, 1.0]
    """
    if how not in GATHER_CHOICES:
        raise ValueError(f"unknown gather {how!r}; expected one of {GATHER_CHOICES}")
    x, indices = jnp.asarray(x), jnp.asarray(indices)
    if promised_sorted or how == "direct":
        return x.at[indices].get(indices_are_sorted=promised_sorted, mode="promise_in_bounds")
    n = indices.shape[0]
    iota = jnp.arange(n, dtype=jnp.int32)
    keys, perm = jax.lax.sort((indices.astype(jnp.int32), iota), num_keys=1)  # [n] each
    inverse = jnp.zeros_like(iota).at[perm].set(iota, unique_indices=True)  # [n]
    rows = x.at[keys].get(indices_are_sorted=True, mode="promise_in_bounds")  # [n, ...] sorted
    return rows.at[inverse].get(unique_indices=True, mode="promise_in_bounds")


def einsum_accum(policy: Policy, stage: str, subscripts: str, *operands: jax.Array) -> jax.Array:
    """``einsum`` of ``operands`` rounded to the ``stage`` dtype, result in ``policy.accum(stage)``.

    Args:
        policy: precision policy.
        stage: stage whose dtype the operands are cast to.
        subscripts: ``jnp.einsum`` subscripts.
        *operands: arrays (any float dtype).

    Returns:
        The contraction in the accumulator dtype (the caller casts it back to the stage dtype).
    """
    ops = [policy.cast(stage, o) for o in operands]
    return accum_einsum(subscripts, *ops, accum_dtype=policy.accum(stage))


def matmul_accum(policy: Policy, stage: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` (``a`` [..., k], ``b`` [k, n]) as :func:`einsum_accum`."""
    return einsum_accum(policy, stage, "...k,kn->...n", a, b)


def take_rows(policy: Policy, stage: str, table: jax.Array, indices: jax.Array) -> jax.Array:
    """``table[indices]`` in the ``stage`` dtype (implementation chosen by :data:`TAKE_ROWS`).

    ``"onehot"``: a contraction with a one-hot matrix. Selecting with an exact 0/1 factor is
    exact, and its gradient with respect to ``table`` is a sum over rows accumulated in
    ``policy.accum(stage)`` (a reduction or a GEMM), where a gather's is a scatter-add in the stage
    dtype: on GPUs, 16-bit atomics that all land on a few rows. It costs [n, n_rows, ...]
    products.

    ``"take"``: a gather of ``table`` cast to the ``aggregation`` dtype (FP32 in every mixed
    preset), under ``Policy.scope("aggregation")``, then a cast to the stage: the same values, and
    the gradient is an FP32 scatter-add (as a plain gather has in FP32 programs).

    Meant for short tables (species-dependent weights).

    Args:
        policy: precision policy.
        stage: stage whose dtype is used.
        table: [n_rows, ...] (e.g. FP32 parameters).
        indices: int [n] row indices in ``[0, n_rows)``.

    Returns:
        [n, ...] in the dtype of ``stage``.

    Example:
        >>> from mpnn_jax.precision import get_policy
        >>> t = jnp.arange(6.0).reshape(3, 2)
        >>> take_rows(get_policy("fp32"), "update", t, jnp.array([2, 0])).tolist()
        [[4.0, 5.0], [0.0, 1.0]]
    """
    if TAKE_ROWS == "take":
        with Policy.scope("aggregation"):
            wide = policy.cast("aggregation", table)  # [n_rows, ...]
            rows = wide.at[indices].get(mode="promise_in_bounds")  # [n, ...]
        return policy.cast(stage, rows)
    onehot = indices[:, None] == jnp.arange(table.shape[0])  # [n, n_rows]
    onehot = jnp.asarray(onehot, dtype=policy.dtype(stage))
    return policy.cast(stage, einsum_accum(policy, stage, "ns,s...->n...", onehot, table))


def select_sets(policy: Policy, stage: str, y: jax.Array, indices: jax.Array) -> jax.Array:
    """Each row's own set: ``y[n, ..., indices[n], :]`` in the ``stage`` dtype (:data:`TAKE_ROWS`).

    Used after a dense contraction with every weight set (``"nisw"`` in
    :func:`mpnn_jax.nn.linear.equivariant_linear`). ``y`` is rounded to the stage dtype first in
    both implementations, so they give the same values; ``"onehot"`` contracts with a one-hot
    factor (gradient: a broadcast product), ``"take"`` gathers in the aggregation dtype (gradient:
    a scatter into distinct rows, FP32).

    Args:
        policy: precision policy.
        stage: stage whose dtype is used.
        y: [n, i, s, w] (any float dtype; typically the accumulator dtype).
        indices: int [n] set indices in ``[0, s)``.

    Returns:
        [n, i, w] in the accumulator dtype of ``stage`` (the caller casts it back).
    """
    if TAKE_ROWS == "take":
        y = policy.cast(stage, y)
        with Policy.scope("aggregation"):
            wide = policy.cast("aggregation", y)  # [n, i, s, w]
            out = jnp.take_along_axis(
                wide, indices[:, None, None, None], axis=2, mode="promise_in_bounds"
            )[:, :, 0]
        return jnp.asarray(out, policy.accum(stage))  # [n, i, w]
    onehot = jnp.asarray(indices[:, None] == jnp.arange(y.shape[2]), policy.dtype(stage))
    # selecting with a one-hot factor is exact, and its gradient is no scatter
    return einsum_accum(policy, stage, "nisw,ns->niw", y, onehot)
