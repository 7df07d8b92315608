"""Contractions with low-precision operands and a wider accumulator, on every backend.

On GPUs and TPUs, XLA runs ``dot_general(bf16, bf16, preferred_element_type=f32)`` natively
(tensor cores accumulate in FP32). XLA's CPU runtime does not ("Unsupported element type for
DotThunk::Execute: BF16 x BF16 = F32", jaxlib 0.10). :func:`accum_einsum` therefore lowers per
platform with ``jax.lax.platform_dependent``: the accelerator branch is the native mixed-precision
dot; the CPU branch upcasts the operands to the accumulator dtype first. The two compute the same
function: a product of two BF16 (8-bit significand) or FP16 (11-bit) numbers is exact in FP32
(24-bit), so only the order of the FP32 additions can differ.

Tiny contractions (contracted size at most :data:`SMALL_CONTRACTION`, e.g. the per-path
``"eui,eik->euk"`` of the convolution, batched over edges) are no matrix work: as a mixed-precision
``dot_general`` XLA:GPU runs them as batched GEMMs of 1-16 wide matrices (it strength-reduces such
dots into fused elementwise code only when operands and result share a dtype). On accelerators
:func:`accum_einsum` evaluates them with :func:`accum_contraction` instead: the operands are
upcast to the accumulator dtype, multiplied elementwise (exact, as above) and summed in the
accumulator dtype, which XLA fuses with its neighbours. The same function again. Only batched
contractions take that path (:data:`SMALL_CONTRACTION_UNBATCHED`): a plain matmul with a short
contracted side is still a GEMM for XLA, and its elementwise form's gradient is a slow reduction.

A 16-bit stage keeps a contraction's result in 16 bits. XLA does not fuse the cast of an FP32 dot
result into the GEMM that produced it, so ``dot(bf16, bf16) -> f32`` then ``-> bf16`` writes the
FP32 array, reads it back and writes it again halved. With :data:`STORE_16BIT` such a dot names
its arithmetic instead (``precision="BF16_BF16_F32"`` or ``"F16_F16_F32"``: 16-bit operands,
FP32 accumulation) and stores 16 bits directly (``out_dtype`` of :func:`accum_einsum`): the same
function, one rounding of the FP32 sum, half the bytes written and no second pass. It keeps a
CPU branch too: XLA:CPU runs ``BF16_BF16_F32`` only for dots with one contracting dimension
("Dot with multiple contracting dimensions is not implemented"), and autodiff's transposes
of the model's einsums have several.

The dtype audit (:mod:`mpnn_jax.precision.audit`) reads the accelerator branch, which is what
runs on the hardware the policy is for; it reports an :func:`accum_contraction` as one matmul
(its operand dtypes and its accumulator), like the dot it replaces.
"""

from __future__ import annotations

import functools
import math
import string
from typing import Any

import jax
import jax.numpy as jnp

#: Contractions whose contracted size (the product of the summed dimensions) is at most this are
#: evaluated by :func:`accum_contraction` on accelerators; 0 disables it.
SMALL_CONTRACTION = 16
#: Whether tiny contractions whose operands are already in the accumulator dtype (FP32 stages)
#: take the elementwise path too.
SMALL_CONTRACTION_SAME_DTYPE = True
#: Whether tiny *unbatched* contractions (no output dimension shared by two operands: plain
#: matmuls such as the radial MLP's first layer, ``[n_edges, n_basis] @ [n_basis, 64]``) take the
#: elementwise path too. Off: XLA runs them as GEMMs well, and the elementwise form's transpose
#: is a reduction over the *wide* side (64) that took 0.42 ms per layer on an H200 at 547k edges,
#: 9% of NequIP-M's E+F (PERFORMANCE_LOG entry 15).
SMALL_CONTRACTION_UNBATCHED = False
#: Whether a contraction of 16-bit operands whose result the stage keeps in 16 bits stores it
#: from the dot (its FP32 accumulation named by :data:`ALGORITHMS`) rather than casting the FP32
#: result in a second pass. MACE's symmetric contraction wrote a ``[n, c, 16, 16]`` FP32 array,
#: 1.3 GB at 10k atoms, and cast it in a pass of its own, 0.40 ms each on an H200 (PERFORMANCE_LOG
#: entry 16).
STORE_16BIT = True
#: The dot algorithm (operand types and FP32 accumulator) of each 16-bit operand dtype.
ALGORITHMS = {
    jnp.dtype(jnp.bfloat16): jax.lax.DotAlgorithmPreset.BF16_BF16_F32,
    jnp.dtype(jnp.float16): jax.lax.DotAlgorithmPreset.F16_F16_F32,
}


def accum_einsum(
    subscripts: str, *operands: jax.Array, accum_dtype: Any, out_dtype: Any = None
) -> jax.Array:
    """``jnp.einsum`` of ``operands`` (kept in their dtype) accumulating in ``accum_dtype``.

    Args:
        subscripts: einsum subscripts.
        *operands: arrays, already in the stage's compute dtype.
        accum_dtype: accumulator dtype (e.g. float32).
        out_dtype: the dtype the caller keeps the result in (default ``accum_dtype``). Where the
            operands are 16-bit of this dtype, the accumulator FP32 and :data:`STORE_16BIT` on,
            the dot stores it directly (:data:`ALGORITHMS`); otherwise it is the caller's cast.

    Returns:
        The contraction, in ``accum_dtype``, or in ``out_dtype`` where the dot stored it.

    Example:
        >>> a, b = jnp.ones((2, 32), jnp.bfloat16), jnp.ones((32, 4), jnp.bfloat16)
        >>> accum_einsum("ij,jk->ik", a, b, accum_dtype=jnp.float32).dtype
        dtype('float32')
        >>> accum_einsum("ij,jk->ik", a, b, accum_dtype=jnp.float32, out_dtype=jnp.bfloat16).dtype
        dtype(bfloat16)
    """
    accum_dtype = jnp.dtype(accum_dtype)
    out_dtype = accum_dtype if out_dtype is None else jnp.dtype(out_dtype)
    same = all(jnp.dtype(o.dtype) == accum_dtype for o in operands)
    small = contracted_size(subscripts, *operands) <= SMALL_CONTRACTION and (
        SMALL_CONTRACTION_UNBATCHED or is_batched(subscripts, *operands)
    )

    def native(*ops):
        return jnp.einsum(subscripts, *ops, preferred_element_type=accum_dtype)

    def upcast(*ops):
        wide = [o.astype(accum_dtype) if jnp.dtype(o.dtype) != accum_dtype else o for o in ops]
        return jnp.einsum(subscripts, *wide, preferred_element_type=accum_dtype)

    def elementwise(*ops):
        return accum_contraction(subscripts, *ops, accum_dtype=accum_dtype)

    if same and not (small and SMALL_CONTRACTION_SAME_DTYPE):
        return native(*operands)
    if same:
        return elementwise(*operands)
    if not small and stores_16bit(accum_dtype, out_dtype, *operands):

        def stored(*ops):  # 16-bit operands, FP32 sums, 16 bits written
            algorithm = ALGORITHMS[out_dtype]
            return jnp.einsum(
                subscripts, *ops, precision=algorithm, preferred_element_type=out_dtype
            )

        return jax.lax.platform_dependent(
            *operands, cpu=lambda *ops: upcast(*ops).astype(out_dtype), default=stored
        )
    fast = elementwise if small else native
    return jax.lax.platform_dependent(*operands, cpu=upcast, default=fast)


def stores_16bit(accum_dtype: Any, out_dtype: Any, *operands: jax.Array) -> bool:
    """Whether :func:`accum_einsum` lets the dot store the result in ``out_dtype``: on
    (:data:`STORE_16BIT`), an FP32 accumulator, and every operand of the 16-bit ``out_dtype``."""
    out_dtype = jnp.dtype(out_dtype)
    return (
        STORE_16BIT
        and jnp.dtype(accum_dtype) == jnp.float32
        and out_dtype in ALGORITHMS
        and all(jnp.dtype(o.dtype) == out_dtype for o in operands)
    )


def accum_matmul(a: jax.Array, b: jax.Array, *, accum_dtype: Any) -> jax.Array:
    """``a @ b`` for ``a`` [..., k] and ``b`` [k, n], accumulating in ``accum_dtype``."""
    return accum_einsum("...k,kn->...n", a, b, accum_dtype=accum_dtype)


def _explicit(subscripts: str, *operands: jax.Array) -> tuple[list[str], str] | None:
    """Input and output letters of ``subscripts`` with ``...`` spelt out; ``None`` if the
    subscripts have no ``->``, repeat a letter within one operand, or do not fit the shapes."""
    if "->" not in subscripts:
        return None
    ins, out = subscripts.replace(" ", "").split("->")
    ins = ins.split(",")
    if len(ins) != len(operands):
        return None
    spare = [c for c in string.ascii_letters if c not in subscripts]
    n_ell = max(
        (o.ndim - len(s.replace("...", "")) for s, o in zip(ins, operands) if "..." in s),
        default=0,
    )
    ell = "".join(spare[:n_ell])
    expanded = []
    for s, o in zip(ins, operands):
        if "..." in s:
            s = s.replace("...", ell[n_ell - (o.ndim - len(s) + 3) :])
        if len(s) != o.ndim or len(set(s)) != len(s):
            return None
        expanded.append(s)
    out = out.replace("...", ell)
    if len(set(out)) != len(out) or not set(out) <= set("".join(expanded)):
        return None
    return expanded, out


def is_batched(subscripts: str, *operands: jax.Array) -> bool:
    """Whether an einsum is batched: some output dimension comes from two or more operands
    (``True`` where the subscripts cannot be parsed).

    Example:
        >>> a, b, m = jnp.ones((10, 4, 3)), jnp.ones((10, 3, 5)), jnp.ones((3, 5))
        >>> is_batched("eui,eik->euk", a, b), is_batched("...k,kn->...n", a, m)
        (True, False)
    """
    parsed = _explicit(subscripts, *operands)
    if parsed is None:
        return True
    ins, out = parsed
    return any(sum(c in s for s in ins) > 1 for c in out)


def contracted_size(subscripts: str, *operands: jax.Array) -> int:
    """Product of the sizes of the summed dimensions of an einsum (large if not parsable).

    Example:
        >>> a, b = jnp.ones((10, 4, 3)), jnp.ones((10, 3, 5))
        >>> contracted_size("eui,eik->euk", a, b)
        3
    """
    parsed = _explicit(subscripts, *operands)
    if parsed is None:
        return math.inf
    ins, out = parsed
    sizes = {c: n for s, o in zip(ins, operands) for c, n in zip(s, o.shape)}
    return math.prod(n for c, n in sizes.items() if c not in out)


@functools.partial(jax.jit, static_argnames=("subscripts", "accum_dtype"))
def accum_contraction(subscripts: str, *operands: jax.Array, accum_dtype: Any) -> jax.Array:
    """An einsum as a broadcast product of the operands upcast to ``accum_dtype``, summed in it.

    Numerically the mixed-precision dot (exact products, sums in ``accum_dtype``), but fused
    elementwise code for XLA rather than a GEMM: meant for tiny contracted dimensions. It is a
    named ``jit`` so that the audit can see it as one contraction.

    Args:
        subscripts: explicit einsum subscripts (``...`` allowed, no letter twice in an operand).
        *operands: arrays in their stage dtype.
        accum_dtype: dtype of the products, the sum and the result.

    Returns:
        The contraction in ``accum_dtype``.

    Example:
        >>> a, b = jnp.ones((2, 3), jnp.bfloat16), jnp.ones((3, 4), jnp.bfloat16)
        >>> accum_contraction("ij,jk->ik", a, b, accum_dtype=jnp.float32).dtype
        dtype('float32')
    """
    parsed = _explicit(subscripts, *operands)
    if parsed is None:
        raise ValueError(f"accum_contraction needs explicit subscripts, got {subscripts!r}")
    ins, out = parsed
    summed = "".join(dict.fromkeys(c for s in ins for c in s if c not in out))
    order = out + summed  # the product's axes: output first, then the summed ones
    prod = None
    for s, o in zip(ins, operands):
        o = o.astype(accum_dtype) if jnp.dtype(o.dtype) != jnp.dtype(accum_dtype) else o
        o = jnp.transpose(o, sorted(range(len(s)), key=lambda i: order.index(s[i])))
        present = sorted(s, key=order.index)
        shape = [o.shape[present.index(c)] if c in s else 1 for c in order]
        o = o.reshape(shape)
        prod = o if prod is None else prod * o
    if not summed:
        return prod
    return jnp.sum(prod, axis=tuple(range(len(out), len(order))), dtype=accum_dtype)
