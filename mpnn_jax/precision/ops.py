"""Contractions with low-precision operands and a wider accumulator, on every backend.

On GPUs and TPUs, XLA runs ``dot_general(bf16, bf16, preferred_element_type=f32)`` natively
(tensor cores accumulate in FP32). XLA's CPU runtime does not ("Unsupported element type for
DotThunk::Execute: BF16 x BF16 = F32", jaxlib 0.10). :func:`accum_einsum` therefore lowers per
platform with ``jax.lax.platform_dependent``: the accelerator branch is the native mixed-precision
dot; the CPU branch upcasts the operands to the accumulator dtype first. The two compute the same
function: a product of two BF16 (8-bit significand) or FP16 (11-bit) numbers is exact in FP32
(24-bit), so only the order of the FP32 additions can differ.

The dtype audit (:mod:`mpnn_jax.precision.audit`) reads the accelerator branch, which is what
runs on the hardware the policy is for.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def accum_einsum(subscripts: str, *operands: jax.Array, accum_dtype: Any) -> jax.Array:
    """``jnp.einsum`` of ``operands`` (kept in their dtype) accumulating in ``accum_dtype``.

    Args:
        subscripts: einsum subscripts.
        *operands: arrays, already in the stage's compute dtype.
        accum_dtype: accumulator and result dtype (e.g. float32).

    Returns:
        The contraction, in ``accum_dtype``.
    """
    accum_dtype = jnp.dtype(accum_dtype)
    if all(jnp.dtype(o.dtype) == accum_dtype for o in operands):
        return jnp.einsum(subscripts, *operands, preferred_element_type=accum_dtype)

    def native(*ops):
        return jnp.einsum(subscripts, *ops, preferred_element_type=accum_dtype)

    def upcast(*ops):
        wide = [o.astype(accum_dtype) if jnp.dtype(o.dtype) != accum_dtype else o for o in ops]
        return jnp.einsum(subscripts, *wide, preferred_element_type=accum_dtype)

    return jax.lax.platform_dependent(*operands, cpu=upcast, default=native)


def accum_matmul(a: jax.Array, b: jax.Array, *, accum_dtype: Any) -> jax.Array:
    """``a @ b`` for ``a`` [..., k] and ``b`` [k, n], accumulating in ``accum_dtype``."""
    return accum_einsum("...k,kn->...n", a, b, accum_dtype=accum_dtype)
