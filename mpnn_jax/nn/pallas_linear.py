"""Species-indexed equivariant linear maps as one Pallas kernel (``"pallas"`` backend): no
``[n, ir_dim, n_sets, mul_out]`` array.

MACE's species-dependent linears (layer 0's ``a -> W_{z_i} a`` on ``128 x (0e+1o+2e+3o)`` and
the residual ``sc = W_{z_i} h``) apply one of a few weight sets per node. The reference
(:func:`mpnn_jax.nn.linear.equivariant_linear`) multiplies every row by every set in one GEMM,
writes the ``[n, ir_dim, n_sets, mul_out]`` result and selects each row's set; its derivative
scatters the cotangent back into an array of that size. On MACE MP-S at 10,125 atoms that one
layer took 0.95 ms of fp32 E+F and 2.8 ms of the training step (H100 profile, log entry 20),
for a map whose operands are 40 MB.

Here the nodes are taken in set order (an ``argsort`` of the indices) and one kernel program
takes ``INDEXED_BLOCK_ROWS`` rows ``(node, component)``; for each set present in its block (most
blocks hold one) it multiplies the rows of that set (the others zeroed) by the set's
``[mul_in, mul_out]`` matrix on the tensor cores, ``INDEXED_BLOCK_K`` inputs at a time, into one
FP32 accumulator. It reads the input once and writes ``[n, ir_dim, mul_out]`` once (PERFORMANCE_LOG
entry 25; blocks in node order, every block times every set, read 4x the weights and were 2x
slower):

    y[n, m, w] = sum_u x[n, u, m] W[s_n, u, w].

Derivatives: ``dx[n, u, m] = sum_w W[s_n, u, w] g[n, m, w]`` is the same kernel with each set
transposed (reading the cotangent row-major and writing ``x``'s layout), and
``dW[s] = sum_{n: s_n = s} x_n^T g_n`` is a GEMM per set on masked rows (XLA). The function is a
:func:`jax.custom_vjp` whose backward pass calls itself, so it is differentiable to any order in
reverse mode (forces, and the training step's derivative of the forces).

Precision: the operands are in their stage dtype (the caller casts the FP32 weights); products
accumulate in FP32 (FP64 for FP64 operands) and the result is in that dtype, as
:meth:`Policy.einsum` with ``preferred_element_type`` returns it. FP32 operands multiply as TF32
under JAX's default matmul precision (as XLA's FP32 GEMMs on NVIDIA GPUs) and in full FP32 under
``jax.default_matmul_precision("highest")`` (the ``fp32-highest`` preset). The audit reads the
kernel as one contraction (``indexed_kernel``).

Shapes the kernel takes (:func:`usable`): ``mul_in`` and ``mul_out`` powers of two from 16 up
(tensor-core tiles); other shapes keep the reference's path. On CPU the kernel runs in Pallas's
interpreter (tests; :data:`mpnn_jax.nn.pallas_conv.INTERPRET`); on GPUs it compiles through Triton.

Example:
    >>> x = jnp.ones((3, 16, 5))  # [n, mul_in, ir_dim]: one 16x2e chunk per node
    >>> w = jnp.ones((2, 16, 16))  # [n_sets, mul_in, mul_out]
    >>> indexed_matmul(x, w, jnp.array([0, 1, 1])).shape  # [n, ir_dim, mul_out]
    (3, 5, 16)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mpnn_jax.nn.pallas_conv import accumulator_of, compiler_kwargs

# Module settings, read when a function is traced. Registers per thread (ptxas for sm_90a, MACE
# MP-S's l = 3 chunk, `make registers ARGS="--shapes mace-mp-s --kernels indexed ..."`): 32 rows
# x 32 inputs on 4 warps 167 (fp32) / 128 (bf16-mixed), no spill, 3-4 programs per SM; 64 rows
# 255 and spilling; loops unrolled rather than rolled, 255 and spilling.
#: Rows ``(node, component)`` per kernel program (a power of two, at least 16: the tile's M).
INDEXED_BLOCK_ROWS = 32
#: Inputs per product (the K of each tile product: a power of two, at least 16).
INDEXED_BLOCK_K = 32
#: Triton warps per program.
INDEXED_WARPS = 4
#: Use the kernel where :func:`usable` (0: the reference's dense path everywhere).
INDEXED_LINEAR = 1
#: 1: the derivative's kernel writes row-major ``[n, d, u]`` and XLA transposes it to e3nn's
#: ``[n, u, d]`` with the cast that follows (one more pass over the result, against the strided
#: stores of the default: 255 registers and a 32-B spill in fp32 instead of 164, 168 instead of
#: 125 in bf16-mixed, ptxas for sm_90a). Built and tested, not timed: off (PERFORMANCE_LOG 25).
INDEXED_DX_ROWS = 0
SETTINGS = (
    "INDEXED_BLOCK_ROWS",
    "INDEXED_BLOCK_K",
    "INDEXED_WARPS",
    "INDEXED_LINEAR",
    "INDEXED_DX_ROWS",
)


def usable(mul_in: int, mul_out: int) -> bool:
    """Whether the kernel takes ``[mul_in, mul_out]`` weight sets (powers of two, >= 16)."""
    return all(m >= 16 and m & (m - 1) == 0 for m in (mul_in, mul_out))


def _kernel(x_ref, w_ref, idx_ref, order_ref, out_ref, *, n_rows, d, u, v, n_sets, block, kb,
            x_rows, out_rows, acc_dtype, precision):  # fmt: skip
    """One program: ``block`` rows ``r = p * d + m`` of node ``order[p]`` (the nodes sorted by
    set, so a block's rows mostly share one set); for each set present in the block, its rows
    (the others zeroed) times the set's matrix, ``kb`` inputs at a time, into one accumulator.

    ``x_rows``: the input is ``[n, d, u]`` (row-major, e.g. a cotangent), else ``[n, u, d]``
    (e3nn's chunk layout); ``out_rows`` likewise for the output (``[n, d, v]`` or ``[n, v, d]``).
    """
    rows = pl.program_id(0) * block + jnp.arange(block)  # [block]
    src = jnp.minimum(rows, n_rows - 1)  # the padded tail reads the last row
    m = src % d
    node = order_ref[src // d]  # [block]
    species = idx_ref[node][:, None]  # [block, 1]
    ck = jnp.arange(kb)[None, :]  # [1, kb]
    rk, cv = jnp.arange(kb)[:, None], jnp.arange(v)[None, :]

    def product(s, acc):  # the rows of set s times W[s], kb inputs at a time: a rolled loop
        def step(k, acc):
            k0 = k * kb
            if x_rows:
                x = x_ref[(node[:, None] * d + m[:, None]) * u + k0 + ck]  # [block, kb]
            else:
                x = x_ref[(node[:, None] * u + k0 + ck) * d + m[:, None]]  # [block, kb]
            w = w_ref[(s * u + k0 + rk) * v + cv]  # [kb, v]
            xs = jnp.where(species == s, x, jnp.zeros((), x.dtype))
            return acc + jnp.dot(xs, w, preferred_element_type=acc_dtype, precision=precision)

        return lax.fori_loop(0, u // kb, step, acc)

    acc = jnp.zeros((block, v), acc_dtype)  # [block, v]
    for s in range(n_sets):  # only the sets present in the block
        present = jnp.max(jnp.where(species == s, 1, 0)) > 0
        acc = lax.cond(present, functools.partial(product, s), lambda a: a, acc)
    if out_rows:
        dst = (node[:, None] * d + m[:, None]) * v + cv
    else:
        dst = (node[:, None] * v + cv) * d + m[:, None]
    pad = (n_rows + rows - src)[:, None] * v + cv  # the padded tail: past the real output
    out_ref[jnp.where((rows < n_rows)[:, None], dst, pad)] = acc.astype(out_ref.dtype)


def _precision(dtype) -> lax.Precision:
    """HIGHEST (IEEE FP32 products) under ``jax.default_matmul_precision("highest")`` or for
    FP64; DEFAULT (TF32 for FP32 operands in Triton, as XLA's default GEMMs) otherwise."""
    setting = str(jax.config.jax_default_matmul_precision or "").lower()
    if jnp.dtype(dtype) == jnp.float64 or setting in ("highest", "float32", "fp32"):
        return lax.Precision.HIGHEST
    return lax.Precision.DEFAULT


@functools.partial(
    jax.jit,
    static_argnames=("x_rows", "out_rows", "acc_dtype", "block", "block_k", "warps", "precision"),
)
def indexed_kernel(
    x, w, idx, order, *, x_rows: bool, out_rows: bool, acc_dtype, block: int, block_k: int,
    warps: int, precision,
) -> jax.Array:  # fmt: skip
    """The kernel call (no derivative rule of its own: see :func:`indexed_matmul`).

    Args:
        x: ``[n, u, d]`` (``x_rows=False``) or ``[n, d, u]`` (``x_rows=True``).
        w: ``[n_sets, u, v]`` in ``x``'s dtype.
        idx: int ``[n]`` set per node, in ``[0, n_sets)`` (rows of other values get zeros).
        order: int ``[n]``, a permutation of the nodes: the order in which rows are blocked
            (:func:`indexed_matmul` sorts them by set; any permutation gives the same values).
        x_rows, out_rows: the layouts of the input and output.
        acc_dtype: accumulator and output dtype.
        block, block_k, warps: rows per program, inputs per tile product (at most ``u``),
            Triton warps.
        precision: of the products (:func:`_precision`).

    Returns:
        ``[n, d, v]`` (``out_rows=True``) or ``[n, v, d]`` in ``acc_dtype``.
    """
    n_sets, u, v = w.shape
    n = x.shape[0]
    d = x.shape[1] if x_rows else x.shape[2]
    n_rows = n * d
    grid = -(-n_rows // block)
    n_out = (grid * block + 1) * v  # the rows, then the padded tail's
    kernel = functools.partial(
        _kernel, n_rows=n_rows, d=d, u=u, v=v, n_sets=n_sets, block=block,
        kb=min(block_k, u), x_rows=x_rows,
        out_rows=out_rows, acc_dtype=jnp.dtype(acc_dtype), precision=precision,
    )  # fmt: skip
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((n_out,), acc_dtype),
        grid=(grid,),
        name="mpnn_indexed_linear",
        **compiler_kwargs(warps),
    )(x.reshape(-1), w.reshape(-1), idx.astype(jnp.int32), order.astype(jnp.int32))
    shape = (n, d, v) if out_rows else (n, v, d)
    return out[: n_rows * v].reshape(shape)


def _call(x, w, idx, order, x_rows: bool, out_rows: bool) -> jax.Array:
    return indexed_kernel(
        x, w.astype(x.dtype), idx, order, x_rows=x_rows, out_rows=out_rows,
        acc_dtype=accumulator_of(x), block=INDEXED_BLOCK_ROWS, block_k=INDEXED_BLOCK_K,
        warps=INDEXED_WARPS, precision=_precision(x.dtype),
    )  # fmt: skip


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _indexed(x, w, idx, order, x_rows: bool, out_rows: bool) -> jax.Array:
    return _call(x, w, idx, order, x_rows, out_rows)


def _indexed_fwd(x, w, idx, order, x_rows, out_rows):
    # the value through the custom_vjp function itself, so that an outer derivative (of a
    # derivative taken inside) meets this rule again rather than the kernel
    return _indexed(x, w, idx, order, x_rows, out_rows), (x, w, idx, order)


def _indexed_bwd(x_rows, out_rows, res, g):
    x, w, idx, order = res
    g = g.astype(x.dtype)  # [n, d, v] or [n, v, d]: the cotangent in the operands' dtype
    # dx: the same map with each set transposed, from g's layout back to x's (or written
    # row-major and transposed by XLA with the cast below: INDEXED_DX_ROWS)
    wt = jnp.swapaxes(w, 1, 2)
    if INDEXED_DX_ROWS and not x_rows:
        dx = jnp.swapaxes(_indexed(g, wt, idx, order, out_rows, True), 1, 2)
    else:
        dx = _indexed(g, wt, idx, order, out_rows, x_rows)
    # dW[s] = sum over the rows of set s of x^T g: one GEMM per set on masked rows
    xs = "ndu" if x_rows else "nud"
    gs = "ndv" if out_rows else "nvd"
    acc = accumulator_of(x)
    dw = jnp.stack(
        [
            jnp.einsum(
                f"{xs},{gs}->uv",
                jnp.where((idx == s)[:, None, None], x, jnp.zeros((), x.dtype)),
                g,
                preferred_element_type=acc,
            )
            for s in range(w.shape[0])
        ]
    )  # [n_sets, u, v]
    return dx.astype(x.dtype), dw.astype(w.dtype), None, None


_indexed.defvjp(_indexed_fwd, _indexed_bwd)


def indexed_matmul(x: jax.Array, w: jax.Array, idx: jax.Array) -> jax.Array:
    """``y[n, m, w] = sum_u x[n, u, m] W[idx[n], u, w]``: one chunk of an indexed linear map (the
    rows blocked in the order of a stable ``argsort`` of ``idx``).

    Args:
        x: ``[n, mul_in, ir_dim]`` (e3nn's chunk layout), any float dtype.
        w: ``[n_sets, mul_in, mul_out]`` weights, in ``x``'s dtype (cast by the caller).
        idx: int ``[n]`` weight set per row, in ``[0, n_sets)``.

    Returns:
        ``[n, ir_dim, mul_out]`` in the accumulator dtype (FP32; FP64 for FP64 operands), like
        ``einsum("nui,suw->nisw")`` followed by the row's set. Differentiable to any order.
    """
    order = jnp.argsort(idx, stable=True)  # [n]: the nodes of each set together
    return _indexed(x, w, idx, order, False, True)
