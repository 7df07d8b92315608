"""The radial MLP as fused Pallas kernels (``"pallas"`` backend, programs of energies and forces):
no ``[rows, 64]`` activation in memory, and the ``[rows, n_weights]`` output written once, in its
consumer's dtype.

MACE MP-S's radial MLP maps 8 Bessel functions of each pair of edges to 512 path weights through
three hidden layers of 64 (:func:`mpnn_jax.nn.radial.radial_mlp`). XLA runs it as one GEMM per
layer with the SiLUs between as separate passes: at 10,125 atoms (273,582 pairs) 0.46-0.51 ms per
layer of E+F and 0.49-0.56 ms for its derivative, and ~3 ms per layer of the training step (H100
profiles, PERFORMANCE_LOG entries 25-26). The radial stage is FP32 in every preset that keeps
forces accurate (``bf16-mixed`` included), so this time is the same in FP32 and in BF16 programs
and caps their ratio.

Forward kernel: a program takes ``RADIAL_BLOCK_ROWS`` rows, keeps the hidden activations in
registers (one tensor-core product per layer, FP32 accumulators, the stage dtype between layers),
and writes the output ``RADIAL_BLOCK_OUT`` columns at a time, cast to ``out_dtype`` (the messages
stage's dtype: BF16 in ``bf16-mixed``, so the FP32 output never exists in memory).

Derivative with respect to the input (the forces): the cotangent (in ``out_dtype``, converted up
exactly) times the last weights transposed, then a second kernel that recomputes the activations
of its rows and walks back through the SiLUs' derivatives and the hidden layers: ``[rows, n_in]``
out. The first product is one XLA GEMM by default (``RADIAL_DX_SPLIT``; in the kernel it was
slower on an H100 at every tile setting tried). SiLU and its derivative are evaluated in FP32
inside the kernels (Triton has no 16-bit division) and rounded to the stage dtype. With respect
to the weights (training only; dead code, removed by XLA, in energy+forces) and all second
derivatives: the reference's JAX expressions (:func:`reference`). So the function is
differentiable to any order: :func:`radial_mlp` is a :func:`jax.custom_vjp` whose input
derivative is itself a :func:`jax.custom_vjp` (kernel forward, reference derivative).

The function is :func:`mpnn_jax.nn.radial.radial_mlp` with ``FOLD_SCALES`` (the constant factors in
the weights, which the caller folds before this module sees them), to rounding: the same products
in the same dtypes, summed in another order.

Precision: operands in the stage dtype (FP32, or 16-bit under ``bf16-seed``), FP32 accumulation
(FP64 for FP64 operands), TF32 products for FP32 operands under JAX's default matmul precision (as
XLA's GEMMs on NVIDIA GPUs) and IEEE FP32 under ``highest`` (:func:`pallas_linear._precision`).
The audit reads each kernel as one contraction (``radial_kernel``, ``radial_dx_kernel``); the
second reads the cotangent in the narrower dtype it wrote and converts it up in the kernel
(``audit.UPCASTING_CALLS``).

Which programs use the kernels (``RADIAL_FUSED``): by default those that do not differentiate the
weights (energies, forces, stress: MD and inference). Measured (H100, MACE MP-S at 10,125 atoms,
PERFORMANCE_LOG entries 26-27): E+F 11.22 -> 10.65 ms in fp32 and 8.19 -> 7.61 in bf16-mixed,
but the training step 38.57 -> 40.70 ms in fp32 with the kernels in it (its second derivatives,
from the JAX expression, recompute what XLA's program shares). So the library's training step
(traced inside :func:`mpnn_jax.nn.backends.training_program`) keeps XLA's GEMMs, and elsewhere,
when a derivative perturbs the weights (``custom_vjp`` with ``symbolic_zeros`` tells the rules),
the rules compute the value and every derivative with the JAX expression.

Shapes (:func:`usable`): up to 16 inputs, hidden widths powers of two from 16 up, and an output
width that is a multiple of 16 (tiles of up to ``RADIAL_BLOCK_OUT`` columns). Others keep the
reference's path. On CPU the kernels run in Pallas's interpreter (tests); on GPUs through Triton.

Example:
    >>> ws = [jnp.ones((8, 16)) / 8, jnp.ones((16, 32)) / 16]  # [n_in, 16], [16, n_out]
    >>> radial_mlp(ws, jnp.ones((5, 8)), act_dtype=jnp.float32, out_dtype=jnp.float32).shape
    (5, 32)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero
from jax.experimental import pallas as pl

from mpnn_jax.nn.pallas_conv import accumulator_of, compiler_kwargs
from mpnn_jax.nn.pallas_linear import _precision

# Module settings, read when a function is traced. The defaults are the fastest of a sweep of
# each kernel alone on an H100 (MACE MP-S's sizes, 273,582 rows, fp32 and bf16-mixed summed;
# `experiments/perf/radial_kernels.py`, PERFORMANCE_LOG entry 26): forward 0.78 / 0.44 ms
# (fp32 / bf16-mixed) against XLA's 0.72 / 0.69 for the same function alone; derivative (XLA's
# GEMM, then the kernel) 0.67 / 0.64 ms against XLA's forward and derivative 1.44 / 1.44.
#: Rows (edges or pairs of edges) per program of the forward kernel and of its derivative (powers
#: of two from 16: the tile's M).
RADIAL_BLOCK_ROWS = 32
RADIAL_DX_BLOCK_ROWS = 128
#: Output columns per tile product and store (a power of two from 16; smaller where ``n_out``
#: needs it).
RADIAL_BLOCK_OUT = 128
#: Triton warps per program.
RADIAL_WARPS = 4
RADIAL_DX_WARPS = 8
#: Triton's software-pipelining stages of the loop over output tiles.
RADIAL_STAGES = 3
RADIAL_DX_STAGES = 1
#: 1: the derivative's kernel recomputes the activations from the input before each layer's
#: step back (6 products instead of 3 for three hidden layers) rather than holding all of them.
#: ptxas gives the kernel 242-255 registers per thread either way (sm_90a), so this is not what
#: holds it back; both forms are tested in FP64.
RADIAL_DX_RECOMPUTE = 1
#: 1: the derivative's largest product, the cotangent times the last weights transposed
#: (``[rows, n_out] x [n_out, 64]``), is one XLA GEMM and the kernel takes its ``[rows, 64]``
#: result through the hidden layers (faster alone on the H100 at 128 rows x 8 warps: 0.67 / 0.64
#: ms against 0.87 / 0.73 with the product in the kernel).
RADIAL_DX_SPLIT = 1
#: Where the kernels run (only where :func:`usable`). 0: nowhere (XLA's GEMMs). 1 (default): in
#: programs that do not differentiate the weights (energies, forces, stress: MD, inference). The
#: library's training step declares itself (:func:`mpnn_jax.nn.backends.training_program`) and
#: keeps XLA's GEMMs; in any other program where a derivative perturbs the weights (a training
#: loop of one's own), the rules see it (``symbolic_zeros``) and compute the value and every
#: derivative with the JAX expression (on an H100 3-4% slower than XLA's own program, entry 27).
#: 2: in every program, the second derivatives from the JAX expression. With the settings
#: above, on an H100 (MACE MP-S, 10,125 atoms), E+F gains (entry 27: fp32 11.22 -> 10.65 ms,
#: bf16-mixed 8.19 -> 7.61) and the training step loses under 2 (entry 26: fp32 38.57 ->
#: 40.70 ms): those second derivatives recompute what XLA's program shares.
RADIAL_FUSED = 1
SETTINGS = (
    "RADIAL_BLOCK_ROWS",
    "RADIAL_DX_BLOCK_ROWS",
    "RADIAL_BLOCK_OUT",
    "RADIAL_WARPS",
    "RADIAL_DX_WARPS",
    "RADIAL_STAGES",
    "RADIAL_DX_STAGES",
    "RADIAL_DX_RECOMPUTE",
    "RADIAL_DX_SPLIT",
    "RADIAL_FUSED",
)
_MIN_K = 16  # Triton's smallest tile dimension: the input is padded to it


def _pow2(n: int) -> bool:
    return n >= _MIN_K and n & (n - 1) == 0


def usable(sizes: Sequence[int]) -> bool:
    """Whether the kernels take an MLP of layer widths ``sizes = (n_in, *hidden, n_out)``.

    Example:
        >>> usable((8, 64, 64, 64, 512)), usable((8, 64, 352)), usable((8, 64, 100))
        (True, True, False)
    """
    n_in, *hidden, n_out = sizes
    return (
        len(hidden) >= 1
        and 1 <= n_in <= _MIN_K
        and all(_pow2(h) for h in hidden)
        and bool(_bo(n_out))
    )


def _bo(n_out: int) -> int:
    """Output columns per tile: the largest power of two from 16 to ``RADIAL_BLOCK_OUT`` that
    divides ``n_out`` (0 if none)."""
    bo = RADIAL_BLOCK_OUT
    while bo >= _MIN_K and n_out % bo:
        bo //= 2
    return bo if bo >= _MIN_K else 0


def _silu(a):
    """SiLU evaluated in FP32 or wider (Triton divides no 16-bit floats), in ``a``'s dtype."""
    return jax.nn.silu(a.astype(jnp.promote_types(a.dtype, jnp.float32))).astype(a.dtype)


def _silu_grad(a):
    """The derivative of SiLU at ``a``, evaluated in FP32 or wider, in ``a``'s dtype."""
    a32 = a.astype(jnp.promote_types(a.dtype, jnp.float32))
    s = jax.nn.sigmoid(a32)
    return (s * (1 + a32 * (1 - s))).astype(a.dtype)


def _load_input(x_ref, src, n_in: int, dtype):
    """``[block, 16]`` input rows ``src``, the columns past ``n_in`` zero."""
    ck = jnp.arange(_MIN_K)[None, :]
    x = x_ref[src[:, None] * n_in + jnp.minimum(ck, n_in - 1)]
    return jnp.where(ck < n_in, x, jnp.zeros((), x.dtype)).astype(dtype)


def _load_weight(w_ref, rows: int, cols: int, n_rows: int, n_cols: int, row0=0, col0=0):
    """A ``[rows, cols]`` tile of the row-major ``[n_rows, n_cols]`` weights at ``(row0, col0)``;
    rows past ``n_rows`` and columns past ``n_cols`` (the input's padding) are zero."""
    r, c = jnp.arange(rows)[:, None], jnp.arange(cols)[None, :]
    rr = r if rows <= n_rows else jnp.minimum(r, n_rows - 1)
    cc = c if cols <= n_cols else jnp.minimum(c, n_cols - 1)
    w = w_ref[(row0 + rr) * n_cols + col0 + cc]
    if rows > n_rows:
        w = jnp.where(r < n_rows, w, jnp.zeros((), w.dtype))
    if cols > n_cols:
        w = jnp.where(c < n_cols, w, jnp.zeros((), w.dtype))
    return w


def _hidden(x, w_refs, sizes, act, acc, precision):
    """The pre-activations of the hidden layers (``[block, h_i]`` each, in ``act``)."""
    pre, h = [], x
    for i, w_ref in enumerate(w_refs[:-1]):
        w = _load_weight(w_ref, h.shape[1], sizes[i + 1], sizes[i], sizes[i + 1])
        a = jnp.dot(h, w, preferred_element_type=acc, precision=precision).astype(act)
        pre.append(a)
        h = _silu(a)
    return pre, h


def _fwd_kernel(x_ref, *refs, n_rows, sizes, block, bo, act, acc, precision):  # fmt: skip
    *w_refs, out_ref = refs
    rows = pl.program_id(0) * block + jnp.arange(block)
    src = jnp.minimum(rows, n_rows - 1)  # the tail recomputes and rewrites the last row
    _, h = _hidden(_load_input(x_ref, src, sizes[0], act), w_refs, sizes, act, acc, precision)
    k, n_out = sizes[-2], sizes[-1]
    c = jnp.arange(bo)[None, :]

    def tile(j, carry):  # output columns [j * bo, (j + 1) * bo): a rolled loop
        w = _load_weight(w_refs[-1], k, bo, k, n_out, col0=j * bo)  # [k, bo]
        y = jnp.dot(h, w, preferred_element_type=acc, precision=precision)
        out_ref[src[:, None] * n_out + j * bo + c] = y.astype(out_ref.dtype)
        return carry

    lax.fori_loop(0, n_out // bo, tile, 0)


def _dx_kernel(
    x_ref, g_ref, *refs, n_rows, sizes, block, bo, act, acc, precision, recompute, split
):  # fmt: skip
    n = len(sizes) - 1
    w_refs, wt_refs, dx_ref = refs[:n], refs[n : 2 * n], refs[2 * n]  # W_i, W_i^T (row-major)
    rows = pl.program_id(0) * block + jnp.arange(block)
    src = jnp.minimum(rows, n_rows - 1)
    k, n_out = sizes[-2], sizes[-1]
    if split:  # g is already d loss / d h_last [rows, k] (XLA's GEMM g W_last^T)
        d = g_ref[src[:, None] * k + jnp.arange(k)[None, :]]
    else:  # the cotangent's product first, the activations after: fewer arrays live at once
        c = jnp.arange(bo)[None, :]

        def tile(j, d):  # d loss / d h_last [block, k] from output columns [j*bo, (j+1)*bo)
            g = g_ref[src[:, None] * n_out + j * bo + c].astype(act)  # [block, bo]
            wt = _load_weight(wt_refs[-1], bo, k, n_out, k, row0=j * bo)  # [bo, k] of W^T
            return d + jnp.dot(g, wt, preferred_element_type=acc, precision=precision)

        d = lax.fori_loop(0, n_out // bo, tile, jnp.zeros((block, k), acc))
    x = _load_input(x_ref, src, sizes[0], act)
    if not recompute:
        pre, _ = _hidden(x, w_refs, sizes, act, acc, precision)
    for i in reversed(range(len(sizes) - 2)):  # back through silu(a_i) and the layer that made it
        if recompute:  # a_i from x again, so that one pre-activation is live at a time
            pre, _ = _hidden(x, w_refs[: i + 2], sizes[: i + 3], act, acc, precision)
        d = d.astype(act) * _silu_grad(pre[i])  # [block, h_i]
        n_prev = sizes[i] if i else _MIN_K
        # [h_i, n_prev] of W_i^T (its columns past n_in, the padding, zero)
        wt = _load_weight(wt_refs[i], sizes[i + 1], n_prev, sizes[i + 1], sizes[i])
        d = jnp.dot(d, wt, preferred_element_type=acc, precision=precision)  # [block, n_prev]
    dst = src[:, None] * _MIN_K + jnp.arange(_MIN_K)[None, :]  # [block, 16]: padded columns
    dx_ref[dst] = d.astype(dx_ref.dtype)


def _kernel_kwargs(ws, act):
    """The layer widths ``(n_in, *hidden, n_out)`` and the accumulator dtype."""
    return (ws[0].shape[0], *(w.shape[1] for w in ws)), accumulator_of(jnp.zeros((), act))


@functools.partial(jax.jit, static_argnames=("act", "out_dtype", "block", "warps", "bo", "stages"))
def radial_kernel(
    x, ws, *, act, out_dtype, block: int, warps: int, bo: int, stages: int = 1
) -> jax.Array:
    """The forward kernel: ``x`` [rows, n_in] -> [rows, n_out] in ``out_dtype`` (no derivative
    rule: see :func:`radial_mlp`). ``ws``: the weight matrices ``[fan_in, fan_out]``, scaled."""
    act = jnp.dtype(act)
    sizes, acc = _kernel_kwargs(ws, act)
    n = x.shape[0]
    kernel = functools.partial(
        _fwd_kernel, n_rows=n, sizes=sizes, block=block, bo=bo, act=act, acc=acc,
        precision=_precision(act),
    )  # fmt: skip
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((n * sizes[-1],), out_dtype),
        grid=(-(-n // block),),
        name="mpnn_radial_mlp",
        **compiler_kwargs(warps, stages),
    )(x.reshape(-1), *(w.astype(act).reshape(-1) for w in ws))
    return out.reshape(n, sizes[-1])


@functools.partial(
    jax.jit, static_argnames=("act", "block", "warps", "bo", "stages", "recompute", "split")
)
def radial_dx_kernel(
    x, ws, g, *, act, block: int, warps: int, bo: int, stages: int = 1, recompute: bool = True,
    split: bool = False,
) -> jax.Array:  # fmt: skip
    """The input derivative: ``g`` [rows, n_out] (any float dtype) -> ``dx`` [rows, n_in] in
    ``act``, the transpose of the MLP's Jacobian at ``x`` applied to ``g``. With ``split``, the
    product ``g W_last^T`` [rows, k] is one XLA GEMM (FP32 sums, the result in ``act``) and the
    kernel takes it from there."""
    act = jnp.dtype(act)
    sizes, acc = _kernel_kwargs(ws, act)
    if split:
        w_last = ws[-1].astype(act)
        g = jnp.matmul(g.astype(act), w_last.T, preferred_element_type=acc).astype(act)
    n = x.shape[0]
    kernel = functools.partial(
        _dx_kernel, n_rows=n, sizes=sizes, block=block, bo=bo, act=act, acc=acc,
        precision=_precision(act), recompute=recompute, split=split,
    )  # fmt: skip
    dx = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((n * _MIN_K,), act),
        grid=(-(-n // block),),
        name="mpnn_radial_mlp_dx",
        **compiler_kwargs(warps, stages),
    )(
        x.reshape(-1), g.reshape(-1), *(w.astype(act).reshape(-1) for w in ws),
        *(w.astype(act).T.reshape(-1) for w in ws),
    )  # fmt: skip
    return dx.reshape(n, _MIN_K)[:, : sizes[0]]  # [rows, n_in]


def reference(ws, x, act, out_dtype) -> jax.Array:
    """The kernels' function in JAX: ``silu(... silu(x W_1) ...) W_last``, products in ``act``
    accumulated in FP32 (FP64 for FP64), each layer's result in ``act``, the output in
    ``out_dtype``. ``ws``: the scaled weights ``[fan_in, fan_out]``."""
    acc = accumulator_of(jnp.zeros((), act))
    h = x.astype(act)
    for i, w in enumerate(ws):
        h = jnp.matmul(h, w.astype(act), preferred_element_type=acc).astype(act)
        if i < len(ws) - 1:
            h = jax.nn.silu(h)
    return h.astype(out_dtype)


def _values(args):
    """The values of ``fwd``'s :class:`jax.custom_derivatives.CustomVJPPrimal` leaves, and
    whether the kernels serve this derivative (``RADIAL_FUSED = 2``, or no weight perturbed)."""
    values = jax.tree.map(lambda a: a.value, args, is_leaf=lambda a: isinstance(a, CustomVJPPrimal))
    weights_perturbed = any(w.perturbed for w in args[1])  # args = (x, ws, ...)
    return values, RADIAL_FUSED == 2 or not weights_perturbed


def _dense_cotangent(g):
    return jnp.zeros(g.shape, g.dtype) if isinstance(g, SymbolicZero) else g


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _mlp(x, ws, act, out_dtype):
    return radial_kernel(
        x, ws, act=act, out_dtype=out_dtype, block=RADIAL_BLOCK_ROWS, warps=RADIAL_WARPS,
        bo=_bo(ws[-1].shape[1]), stages=RADIAL_STAGES,
    )  # fmt: skip


def _mlp_fwd(x, ws, act, out_dtype):
    (x, ws), kernels = _values((x, ws))
    if not kernels:  # weights differentiated (a training loop of one's own): the JAX expression
        y, vjp = jax.vjp(lambda x, ws: reference(ws, x, act, out_dtype), x, ws)
        return y, (vjp, None)
    # the value through the custom_vjp function itself, so that an outer derivative meets this
    # rule again rather than the kernel
    return _mlp(x, ws, act, out_dtype), (None, (x, ws))


def _mlp_bwd(act, out_dtype, res, g):
    vjp, res = res
    g = _dense_cotangent(g)
    if vjp is not None:
        return vjp(g)
    x, ws = res
    dx = _dx(x, ws, g, act)
    # the weights' cotangent from the reference (unused in energy+forces: XLA removes it)
    _, vjp = jax.vjp(lambda ws: reference(ws, x, act, out_dtype), ws)
    (dws,) = vjp(g)
    return dx.astype(x.dtype), dws


_mlp.defvjp(_mlp_fwd, _mlp_bwd, symbolic_zeros=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _dx(x, ws, g, act):
    return radial_dx_kernel(
        x, ws, g, act=act, block=RADIAL_DX_BLOCK_ROWS, warps=RADIAL_DX_WARPS,
        bo=_bo(ws[-1].shape[1]), stages=RADIAL_DX_STAGES, recompute=bool(RADIAL_DX_RECOMPUTE),
        split=bool(RADIAL_DX_SPLIT),
    )  # fmt: skip


def _reference_dx(x, ws, g, act):
    _, vjp = jax.vjp(lambda x: reference(ws, x, act, g.dtype), x)
    return vjp(g)[0].astype(act)


def _dx_fwd(x, ws, g, act):
    (x, ws, g), kernels = _values((x, ws, g))
    if not kernels:
        dx, vjp = jax.vjp(functools.partial(_reference_dx, act=act), x, ws, g)
        return dx, (vjp, None)
    return _dx(x, ws, g, act), (None, (x, ws, g))


def _dx_bwd(act, res, u):
    vjp, res = res
    if vjp is None:
        _, vjp = jax.vjp(functools.partial(_reference_dx, act=act), *res)
    return vjp(_dense_cotangent(u))


_dx.defvjp(_dx_fwd, _dx_bwd, symbolic_zeros=True)


def radial_mlp(ws: Sequence[jax.Array], x: jax.Array, *, act_dtype, out_dtype) -> jax.Array:
    """``silu(... silu(x W_1) ...) W_last`` by the kernels (the scaled weights: the caller folds
    the constant factors in).

    Args:
        ws: weight matrices ``[fan_in, fan_out]`` (any float dtype; cast to ``act_dtype``).
        x: [rows, n_in] input features (e.g. the radial basis of each edge, 1/Å).
        act_dtype: the dtype of the products' operands and of the activations (the stage's).
        out_dtype: the dtype the output is written in (e.g. the next stage's).

    Returns:
        [rows, ws[-1].shape[1]] in ``out_dtype``. Differentiable to any order.
    """
    ws = tuple(ws)
    return _mlp(x, ws, jnp.dtype(act_dtype).name, jnp.dtype(out_dtype).name)
