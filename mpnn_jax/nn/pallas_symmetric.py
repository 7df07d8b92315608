"""MACE's order-3 symmetric contraction as two sparse multilinear forms in Pallas kernels
(``"pallas"`` backend): no ``[n_nodes, channels, d, d]`` array.

The reference (:func:`mpnn_jax.nn.symmetric_contraction.symmetric_contraction`) evaluates the
order-3 term of MACE's product basis,

    B3[n, c, m] = sum_k W3[z_n, k, c] sum_{a,b,j} U[a, b, j, k, m] x[n, c, a] x[n, c, b] x[n, c, j],

as a dense GEMM into a ``[n, c, d, d, M]`` array (``d = 16`` at L = 3: 331M values at 10,125 atoms
and 128 channels, 1.3 GB in FP32) that the next power of ``x`` reads back, and its derivatives
write more such arrays. But ``U`` is sparse (353 of its 32,768 entries are non-zero for MACE
MP-S's ``0e`` output) and symmetric in its three input indices. Here, with ``q = (k, m)``,

    B3 = sum_k W3[z, k] H(x, x, x)[k, m],     H(x, y, z)_q = sum_{abj} U[a, b, j, q] x_a y_b z_j,

and the derivatives of ``H`` close under one more form,

    G(y, z, h)_a = sum_{b, j, q} U[a, b, j, q] y_b z_j h_q:

``H``'s cotangent ``h`` gives ``dx = G(y, z, h)``, ``dy = G(x, z, h)``, ``dz = G(x, y, h)``; ``G``'s
cotangent ``g`` gives ``dy = G(g, z, h)``, ``dz = G(g, y, h)``, ``dh = H(g, y, z)`` (the symmetry
of ``U`` puts every open index first). Both forms are :func:`jax.custom_vjp` functions whose
backward passes call the two forms, so the contraction is differentiable to any order in reverse
mode (forces, and the training step's derivative of the forces), each derivative a kernel of
``[n, d or Q, C]`` operands. Each kernel program owns a block of nodes (one by default) and of
up to 128 channels, loads the ``[block, C]`` tiles of the components it needs and sums the
non-zero terms of ``U`` (constants in the code) in the accumulator dtype: it reads and writes
only node-sized arrays. Bases of more than :data:`SPARSE_MAX_TERMS` terms keep the dense path.

Precision: the operands stay in their stage dtype in memory (bf16 in ``bf16-mixed``); products and
sums are in ``policy.accum("update")`` and the forms return that dtype (the caller casts to the
stage dtype, as :meth:`Policy.einsum` does); with :data:`SPARSE_STAGE_OUTPUT` a derivative's
kernel stores its operand's dtype, the cast that followed (the same rounding, with no FP32 array
and no conversion pass). ``U`` enters as FP32 constants (the reference rounds it to the stage
dtype). The audit reads each form as one contraction (``sparse_form``).

Layout: component-major, ``[n_nodes, n_components, channels]``. On CPU the kernels run in
Pallas's interpreter (tests; :data:`mpnn_jax.nn.pallas_conv.INTERPRET`); on GPUs they compile
through Triton. Channel counts that are not a
power of two (or a multiple of :data:`SPARSE_CHANNEL_BLOCK`) take the reference's dense path.

Example:
    >>> import jax, e3nn_jax as e3nn
    >>> x = jax.random.normal(jax.random.PRNGKey(0), (3, 9, 4))  # [n, d of 0e+1o+2e, C]
    >>> spec = FormSpec("0e+1o+2e", "0e")
    >>> form_h(x, x, x, spec).shape  # [n, Q = k * dim 0e, C]
    (3, 5, 4)
"""

from __future__ import annotations

import dataclasses
import functools

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from mpnn_jax.nn.pallas_conv import accumulator_of, compiler_kwargs
from mpnn_jax.nn.symmetric_contraction import contraction_basis

# Module settings, read when a function is traced. The defaults are the fastest measured (H100,
# MACE MP-S E+F at 10,125 atoms, log entry 18): with 4 values of a tile per thread (2 nodes x
# 128 channels on 2 warps) the G kernel held ~40 tiles and spilled, 3.26 ms per call in fp32;
# with one value per thread 14.7 ms for the whole E+F step against 21.2.
#: Nodes per kernel program.
SPARSE_BLOCK_NODES = 1
#: Channels per kernel program (at most; fewer channels are one block).
SPARSE_CHANNEL_BLOCK = 128
#: Triton warps per program; ``0`` = one value of a ``[block, C]`` tile per thread (1 to 8 warps).
SPARSE_WARPS = 0
#: Whether the ``"pallas"`` backend's symmetric contraction uses these forms for order 3 (off:
#: the reference's dense path).
SPARSE_ORDER3 = True
#: Bases with more non-zero terms than this take the dense path: each term is code in the
#: kernels. Timed on an H100 (log entry 18): ``0e`` at L = 3 (353 terms, MACE MP-S) and ``1o``
#: (1,686, MACE-M: E+F 7.60 -> 5.11 ms fp32 with it, compiles no slower); ``2e`` (3,764, MACE-L)
#: and ``3o`` are not.
SPARSE_MAX_TERMS = 2000
#: Whether a form's derivative writes each cotangent in its operand's dtype (the cast that
#: follows it) rather than the accumulator's: the same rounding, in the kernel, so neither the
#: FP32 array nor XLA's conversion pass exists. In bf16-mixed training it removes four
#: ``[n, 16, C]`` FP32->BF16 conversions per step (0.16 ms at 10k atoms in session 23's profile;
#: log entry 28). The forward value stays in the accumulator dtype: stored in BF16, its cotangent
#: would be BF16 too, and the second derivative would sum three contributions in BF16 that now
#: sum in FP32. Bit-identical; timed with DX_STAGE_OUTPUT on an H100 (log entry 29): training
#: +0.9% (noise), E+F 8% slower (why is not known): off.
SPARSE_STAGE_OUTPUT = False
#: Names of the settings above (for experiments that vary them).
SETTINGS = (
    "SPARSE_BLOCK_NODES", "SPARSE_CHANNEL_BLOCK", "SPARSE_WARPS", "SPARSE_ORDER3",
    "SPARSE_MAX_TERMS", "SPARSE_STAGE_OUTPUT",
)  # fmt: skip
#: Entries of ``U`` below this are structural zeros (the basis is exact to ~1e-15).
_ZERO = 1e-12


@dataclasses.dataclass(frozen=True)
class FormSpec:
    """Which order-3 basis the forms contract: one channel's input irreps and one output irrep
    (hashable, a static argument)."""

    irreps_in: str  # e.g. "0e+1o+2e+3o"
    ir_out: str  # e.g. "0e"

    @property
    def d(self) -> int:
        return e3nn.Irreps(self.irreps_in).dim

    @property
    def n_q(self) -> int:
        """``Q = k * dim L``: the basis multiplicity times the output irrep's dimension."""
        return basis3(self).shape[-1]


@functools.lru_cache(maxsize=64)
def basis3(spec: FormSpec) -> np.ndarray:
    """The order-3 basis ``U [d, d, d, Q]`` (float64), checked symmetric in its first three
    indices; ``ValueError`` if ``spec`` has no order-3 path."""
    ir = e3nn.Irrep(spec.ir_out)
    basis = contraction_basis(e3nn.Irreps(spec.irreps_in), 3, e3nn.Irreps([(1, ir)]))
    if (3, ir) not in basis:
        raise ValueError(f"no order-3 symmetric path from {spec.irreps_in} to {spec.ir_out}")
    u = basis[(3, ir)]
    d = u.shape[0]
    u = u.reshape(d, d, d, -1)  # [a, b, j, q = (k, m)]
    for perm in ((1, 0, 2, 3), (2, 1, 0, 3)):
        if not np.allclose(u, u.transpose(perm), atol=1e-12):
            raise ValueError("the order-3 basis is not symmetric in its input indices")
    return u


@functools.lru_cache(maxsize=128)
def terms(spec: FormSpec, form: str) -> tuple[tuple[tuple[int, int, int, float], ...], ...]:
    """Non-zero terms of a form, per output component: ``H``: for each ``q``, ``(a, b, j, U)``;
    ``G``: for each ``a``, ``(b, j, q, U)`` (operand components in call order)."""
    u = basis3(spec)
    if form == "H":
        u = u.transpose(3, 0, 1, 2)  # [q, a, b, j]
    elif form != "G":
        raise ValueError(f"unknown form {form!r}")
    out = []
    for o in range(u.shape[0]):
        idx = np.argwhere(np.abs(u[o]) > _ZERO)
        out.append(tuple((int(i), int(j), int(k), float(u[o][i, j, k])) for i, j, k in idx))
    return tuple(out)


def usable(channels: int) -> bool:
    """Whether the kernels take ``channels`` (a power of two, or a multiple of
    :data:`SPARSE_CHANNEL_BLOCK`, itself a power of two)."""
    cb = min(channels, SPARSE_CHANNEL_BLOCK)
    return cb & (cb - 1) == 0 and channels % cb == 0


# --- the kernel --------------------------------------------------------------------------------
def _kernel(a_ref, b_ref, c_ref, out_ref, *, spec, form, block, n_nodes, n_comp, channels, cb,
            acc_dtype):  # fmt: skip
    """One program: ``block`` nodes x ``cb`` channels; every output component of the form."""
    rows = pl.program_id(0) * block + jnp.arange(block)  # [block]
    src = jnp.minimum(rows, n_nodes - 1)  # the padded tail reads the last node
    cols = pl.program_id(1) * cb + jnp.arange(cb)[None, :]  # [1, cb]
    loaded: dict = {}

    def tile(ref, k, i):  # component i of operand k, [block, cb] in the accumulator dtype
        if (k, i) not in loaded:
            idx = (src * n_comp[k] + i)[:, None] * channels + cols
            loaded[(k, i)] = ref[idx].astype(acc_dtype)
        return loaded[(k, i)]

    refs = (a_ref, b_ref, c_ref)
    n_out = len(terms(spec, form))
    for o, lst in enumerate(terms(spec, form)):
        pairs: dict = {}  # (i, j) -> [(k, coef)]: sum the third operand first
        for i, j, k, coef in lst:
            pairs.setdefault((i, j), []).append((k, coef))
        acc = jnp.zeros((block, cb), acc_dtype)
        for (i, j), lst3 in pairs.items():
            third = sum(coef * tile(refs[2], 2, k) for k, coef in lst3)
            acc = acc + tile(refs[0], 0, i) * tile(refs[1], 1, j) * third
        out_ref[(rows * n_out + o)[:, None] * channels + cols] = acc.astype(out_ref.dtype)


def _warps(block: int, cb: int) -> int:
    """Warps for one value of a ``[block, cb]`` tile per thread (a power of two, 1 to 8): the
    G kernel keeps ~40 tiles live, and more values per thread spill (log entry 18)."""
    return min(8, max(1, 1 << max(0, (block * cb // 32).bit_length() - 1)))


@functools.partial(
    jax.jit,
    static_argnames=("spec", "form", "acc_dtype", "block", "channel_block", "warps", "out_dtype"),
)
def sparse_form(
    a, b, c, *, spec: FormSpec, form: str, acc_dtype, block: int, channel_block: int, warps: int,
    out_dtype=None,
) -> jax.Array:  # fmt: skip
    """One form, ``H(a, b, c)`` or ``G(a, b, c)``, as a kernel (the audit's one contraction).

    Args:
        a, b, c: ``[n, n_components, C]`` operands (``H``: three ``[n, d, C]``; ``G``: two
            ``[n, d, C]`` and ``h [n, Q, C]``), each in its own dtype.
        spec, form: the basis and ``"H"`` or ``"G"``.
        acc_dtype: the accumulator dtype (and, by default, the output's).
        block, channel_block, warps: nodes and channels per program, Triton warps (0: from the
            tile size).
        out_dtype: the dtype the kernel stores its sums in (rounded once; default ``acc_dtype``).

    Returns:
        ``[n, Q or d, C]`` in ``out_dtype``.
    """
    out_dtype = jnp.dtype(acc_dtype if out_dtype is None else out_dtype)
    n, _, channels = a.shape
    n_out = spec.n_q if form == "H" else spec.d
    cb = min(channels, channel_block)
    n_pad = -(-n // block) * block
    kernel = functools.partial(
        _kernel, spec=spec, form=form, block=block, n_nodes=n,
        n_comp=(a.shape[1], b.shape[1], c.shape[1]), channels=channels, cb=cb,
        acc_dtype=jnp.dtype(acc_dtype),
    )  # fmt: skip
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((n_pad * n_out * channels,), out_dtype),
        grid=(n_pad // block, channels // cb),
        name=f"mpnn_sparse_{form}",
        **compiler_kwargs(warps or _warps(block, cb)),
    )(a.reshape(-1), b.reshape(-1), c.reshape(-1))
    return out.reshape(n_pad, n_out, channels)[:n]


def _form(a, b, c, spec: FormSpec, form: str, out_dtype=None) -> jax.Array:
    """:func:`sparse_form` with the module settings as they are when traced."""
    return sparse_form(
        a, b, c, spec=spec, form=form, acc_dtype=accumulator_of(a, b, c), block=SPARSE_BLOCK_NODES,
        channel_block=SPARSE_CHANNEL_BLOCK, warps=SPARSE_WARPS, out_dtype=out_dtype,
    )  # fmt: skip


def _stored(dtype):
    """The dtype a derivative's kernel stores: its operand's under :data:`SPARSE_STAGE_OUTPUT`
    (the cast that follows is then a no-op), else the accumulator's (``None``)."""
    return jnp.dtype(dtype) if SPARSE_STAGE_OUTPUT else None


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def form_h(x, y, z, spec: FormSpec, out_dtype=None) -> jax.Array:
    """``H(x, y, z)_q = sum_{abj} U[a, b, j, q] x_a y_b z_j``.

    Args:
        x, y, z: ``[n, d, C]`` (component-major node features, any float dtype).
        spec: the basis.
        out_dtype: the dtype the sums are stored in (default: the accumulator's).

    Returns:
        ``[n, Q, C]`` in ``out_dtype``, by default the accumulator dtype (FP32; FP64 for FP64
        operands).
    """
    return _form(x, y, z, spec, "H", out_dtype)


def _keeping_operands(form):
    """The forward rule of a form: its value, and its three operands as the residuals (every
    cotangent is a form of two of them and the incoming cotangent)."""

    def fwd(a, b, c, spec, out_dtype):
        return form(a, b, c, spec, out_dtype), (a, b, c)

    return fwd


def _h_bwd(spec, out_dtype, res, h):
    x, y, z = res
    return (
        form_g(y, z, h, spec, _stored(x.dtype)).astype(x.dtype),
        form_g(x, z, h, spec, _stored(y.dtype)).astype(y.dtype),
        form_g(x, y, h, spec, _stored(z.dtype)).astype(z.dtype),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def form_g(y, z, h, spec: FormSpec, out_dtype=None) -> jax.Array:
    """``G(y, z, h)_a = sum_{b, j, q} U[a, b, j, q] y_b z_j h_q``.

    Args:
        y, z: ``[n, d, C]``; h: ``[n, Q, C]``.
        spec: the basis.
        out_dtype: the dtype the sums are stored in (default: the accumulator's).

    Returns:
        ``[n, d, C]`` in ``out_dtype``, by default the accumulator dtype.
    """
    return _form(y, z, h, spec, "G", out_dtype)


def _g_bwd(spec, out_dtype, res, g):
    y, z, h = res
    return (
        form_g(g, z, h, spec, _stored(y.dtype)).astype(y.dtype),
        form_g(g, y, h, spec, _stored(z.dtype)).astype(z.dtype),
        form_h(g, y, z, spec, _stored(h.dtype)).astype(h.dtype),
    )


form_h.defvjp(_keeping_operands(form_h), _h_bwd)
form_g.defvjp(_keeping_operands(form_g), _g_bwd)


def order3_term(
    xs: jax.Array, w3: jax.Array, species: jax.Array, ir: e3nn.Irrep, *, irreps_in, policy, stage
) -> jax.Array:
    """The order-3 term ``B3 [n, c, dim ir]`` of the symmetric contraction through the forms.

    Args:
        xs: ``[n, c, d]`` node features in the stage dtype (one copy of ``irreps_in`` per channel).
        w3: ``[n_species, k, c]`` float32 order-3 weights of output irrep ``ir``.
        species: int ``[n]``.
        irreps_in: one channel's irreps; policy, stage: the precision policy and its stage.

    Returns:
        ``[n, c, dim ir]`` in the stage dtype (the products of ``H`` cast to it, then contracted
        with the weights accumulating in ``policy.accum(stage)``); ``None`` where the basis has
        more than :data:`SPARSE_MAX_TERMS` non-zero terms (the caller's dense path).
    """
    from mpnn_jax.nn.ops import take_rows

    n, c, _ = xs.shape
    spec = FormSpec(str(e3nn.Irreps(irreps_in)), str(ir))
    if sum(map(len, terms(spec, "H"))) > SPARSE_MAX_TERMS:
        return None
    xt = jnp.swapaxes(xs, 1, 2)  # [n, d, c]
    h = policy.cast(stage, form_h(xt, xt, xt, spec))  # [n, Q, c]
    h = h.reshape(n, w3.shape[1], ir.dim, c)  # [n, k, m, c]
    w = take_rows(policy, stage, w3, species)  # [n, k, c]
    return policy.einsum(stage, "nkmc,nkc->ncm", h, w)
