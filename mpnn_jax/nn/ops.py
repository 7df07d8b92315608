"""Contractions of the nn blocks: operands in a stage dtype, accumulation in the policy's
accumulator dtype.

Thin wrappers over :func:`mpnn_jax.precision.ops.accum_einsum`, which lowers to the native
mixed-precision dot on accelerators (``preferred_element_type``) and to an exact upcast emulation
on CPU, whose XLA runtime rejects ``BF16 x BF16 = F32`` dots.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mpnn_jax.precision import Policy
from mpnn_jax.precision.ops import accum_einsum


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
    """``table[indices]`` in the ``stage`` dtype, as a contraction with a one-hot matrix.

    Selecting with an exact 0/1 factor is exact, and its gradient with respect to ``table`` is a
    sum over rows accumulated in ``policy.accum(stage)`` (a reduction or a GEMM), where a gather's
    is a scatter-add in the stage dtype: on GPUs, 16-bit atomics that all land on a few rows.
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
    onehot = indices[:, None] == jnp.arange(table.shape[0])  # [n, n_rows]
    onehot = jnp.asarray(onehot, dtype=policy.dtype(stage))
    return policy.cast(stage, einsum_accum(policy, stage, "ns,s...->n...", onehot, table))
