"""Contractions of the nn blocks: operands in a stage dtype, accumulation in the policy's
accumulator dtype.

Thin wrappers over :func:`mpnn_jax.precision.ops.accum_einsum`, which lowers to the native
mixed-precision dot on accelerators (``preferred_element_type``) and to an exact upcast emulation
on CPU, whose XLA runtime rejects ``BF16 x BF16 = F32`` dots.
"""

from __future__ import annotations

import jax

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
