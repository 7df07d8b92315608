"""NVIDIA cuEquivariance backend (``"cueq"``): the convolution and the symmetric contraction as
segmented polynomials of ``cuequivariance_jax``, each one fused kernel on GPUs.

Optional: needs ``cuequivariance`` and ``cuequivariance-jax`` (``pip install mpnn_jax[cueq]``),
plus ``cuequivariance-ops-jax-cu13`` (or ``-cu12``) for the CUDA kernels. Registered by
:mod:`mpnn_jax.nn.backends` only where ``cuequivariance_jax`` imports.

Both functions have the signature, the weight layout and the results of the reference
(:func:`mpnn_jax.nn.convolution.e3nn_convolution`,
:func:`mpnn_jax.nn.symmetric_contraction.symmetric_contraction`): the polynomials are built from
the reference's own coefficients (e3nn's Clebsch-Gordan coefficients in "component"
normalisation, e3nn's reduced symmetric bases), so parameters are interchangeable between
backends and results agree to rounding.

* :func:`conv_polynomial` / :func:`cueq_convolution`: gather of sender features, channel-wise
  ("uvu") tensor product with the per-edge radial weights, scatter-add at the receivers and the
  ``1/avg_num_neighbors`` factor, in one kernel. Node features enter in the ``aggregation`` dtype
  (values rounded to the ``messages`` dtype, gradient untouched), so the gradient of the gather is
  an aggregation-dtype scatter-add as in the reference; the radial weights and spherical
  harmonics enter in the ``messages`` dtype; the kernel computes in ``policy.accum("messages")``
  and sums in the ``aggregation`` dtype. Unlike the reference it does not round each message to
  the ``messages`` dtype before the sum (more accurate, same dtypes at the boundaries). Padded
  edges get zero weights and zero harmonics, so they send exactly zero.
* :func:`contraction_polynomial` / :func:`cueq_symmetric_contraction`: all orders summed in one
  kernel, species-dependent weights gathered inside it (their gradient: an aggregation-dtype
  scatter-add, as the reference's ``take_rows``), in the ``update`` dtype accumulating in
  ``policy.accum("update")``.

``method``: ``"uniform_1d"`` (the CUDA kernel) or ``"naive"`` (pure JAX, any platform);
:func:`default_method` picks the kernel on GPUs where ``cuequivariance_ops_jax`` loads, else the
naive method. Layout: cuEquivariance's kernels want each channel block contiguous ("ir_mul"),
e3nn-jax arrays are "mul_ir"; the transposes happen on node arrays (cheap), never on edge arrays
(edge arrays are scalars per path or per harmonic component, the same in both layouts).

Everything is jittable and differentiable to any order (cuequivariance_jax's primitives have JVP
and transpose rules). Indices must be in bounds (as ``promise_in_bounds`` in the reference).

Example:
    >>> import jax, jax.numpy as jnp, e3nn_jax as e3nn
    >>> from mpnn_jax.precision import get_policy
    >>> x = e3nn.normal("4x0e+4x1o", jax.random.PRNGKey(0), (3,))  # [n_nodes, irreps_in]
    >>> sh = e3nn.normal("0e+1o", jax.random.PRNGKey(1), (5,))  # [n_edges, irreps_sh]
    >>> w = jnp.ones((5, 16))  # [n_edges, num_path_weights]: 4 paths x 4 channels
    >>> s, r = jnp.array([0, 1, 2, 0, 1]), jnp.array([1, 2, 0, 2, 0])
    >>> out = cueq_convolution(x, sh, w, s, r, jnp.ones(5, bool), irreps_out="0e+1o",
    ...     avg_num_neighbors=2.0, policy=get_policy("fp32"), method="naive")
    >>> out.irreps, out.shape
    (8x0e+8x1o, (3, 32))
"""

from __future__ import annotations

import ctypes
import functools
import glob
import math
import os
import sys
import warnings
from collections.abc import Mapping

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np

from mpnn_jax.nn.convolution import path_irreps, tp_paths
from mpnn_jax.nn.pairs import EdgePairs
from mpnn_jax.nn.symmetric_contraction import contraction_basis, irreps_out_of, weight_name
from mpnn_jax.precision import Policy

METHODS = ("auto", "uniform_1d", "naive")


# --- where the kernels run ---------------------------------------------------------------------
def _preload_cuda_libraries() -> None:
    """Loads cuBLAS(Lt) and NVRTC of the CUDA major version of the installed ops package from the
    ``nvidia`` pip packages (as JAX's CUDA plugin installs them), before ``libcue_ops.so`` needs
    them: it has no RUNPATH, and JAX's plugin may not have loaded NVRTC."""
    from importlib import metadata

    major = None
    for cuda in ("13", "12"):
        try:
            metadata.version(f"cuequivariance-ops-cu{cuda}")
        except metadata.PackageNotFoundError:
            continue
        major = cuda
        break
    if major is None:
        return
    for root in sys.path:
        for name in ("libnvrtc.so.", "libcublasLt.so.", "libcublas.so."):
            pattern = os.path.join(root, "nvidia", "**", name + major)
            for path in sorted(glob.glob(pattern, recursive=True)):
                try:
                    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                except OSError:
                    continue


# ``import cuequivariance_jax`` imports the CUDA kernels' package when it is installed, which
# raises OSError where their libraries do not load: load them first, from JAX's nvidia packages
_preload_cuda_libraries()
import cuequivariance as cue  # noqa: E402
import cuequivariance_jax as cuex  # noqa: E402


@functools.lru_cache(maxsize=1)
def gpu_kernels_available() -> str:
    """``""`` if ``cuequivariance_ops_jax`` (the CUDA kernels) loads, else why it does not."""
    try:
        import cuequivariance_ops_jax  # noqa: F401
    except ImportError as err:
        if "No module named" in str(err):
            return str(err)
        first = str(err)
    except OSError as err:  # libcue_ops.so did not find its CUDA libraries
        first = str(err)
    else:
        return ""
    _preload_cuda_libraries()
    try:
        import cuequivariance_ops

        cuequivariance_ops.load_library()
        import cuequivariance_ops_jax  # noqa: F401, F811
    except (ImportError, OSError) as err:
        return f"{first}; after loading the nvidia pip libraries: {err}"
    return ""


def default_method() -> str:
    """``"uniform_1d"`` where JAX's default backend is a GPU and the CUDA kernels load, else
    ``"naive"`` (with a warning on a GPU, where the naive method is slow)."""
    if jax.default_backend() != "gpu":
        return "naive"
    why = gpu_kernels_available()
    if why:
        warnings.warn(
            f"cueq backend: CUDA kernels unavailable ({why}); using the naive method", stacklevel=3
        )
        return "naive"
    return "uniform_1d"


def _resolve(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown cueq method {method!r}; expected one of {METHODS}")
    return default_method() if method == "auto" else method


# --- layouts and precision helpers --------------------------------------------------------------
def _to_ir_mul(x: e3nn.IrrepsArray) -> jax.Array:
    """[..., irreps] "mul_ir" (e3nn) -> [..., irreps] "ir_mul" (each block [dim, mul])."""
    blocks = []
    for (mul, ir), chunk in zip(x.irreps, x.chunks):
        if mul * ir.dim == 0:
            continue
        if chunk is None:
            chunk = jnp.zeros(x.shape[:-1] + (mul, ir.dim), x.dtype)
        blocks.append(jnp.swapaxes(chunk, -1, -2).reshape(x.shape[:-1] + (ir.dim * mul,)))
    return jnp.concatenate(blocks, axis=-1)  # [..., irreps.dim]


def _from_ir_mul(irreps: e3nn.Irreps, array: jax.Array) -> e3nn.IrrepsArray:
    """Inverse of :func:`_to_ir_mul`: [..., irreps] "ir_mul" -> ``IrrepsArray`` ("mul_ir")."""
    lead, chunks, offset = array.shape[:-1], [], 0
    for mul, ir in irreps:
        block = array[..., offset : offset + ir.dim * mul].reshape(lead + (ir.dim, mul))
        chunks.append(jnp.swapaxes(block, -1, -2))  # [..., mul, dim]
        offset += ir.dim * mul
    return e3nn.from_chunks(irreps, chunks, lead, array.dtype)


def _rounded(policy: Policy, stage: str, x: jax.Array) -> jax.Array:
    """``x`` with its values rounded to the ``stage`` dtype, kept in ``x.dtype``; the gradient
    passes unchanged (so it stays in ``x.dtype``). Exact: ``x + (r - x) == r``."""
    low = policy.dtype(stage)
    if jnp.finfo(low).bits >= jnp.finfo(x.dtype).bits:
        return x
    r = policy.cast_to(x.dtype, policy.cast(stage, x))
    return x + jax.lax.stop_gradient(r - x)


# --- the convolution ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def conv_polynomial(
    irreps_in: e3nn.Irreps, irreps_sh: e3nn.Irreps, irreps_filter: e3nn.Irreps, scale: float
) -> tuple[cue.SegmentedPolynomial, e3nn.Irreps]:
    """The convolution's tensor product as a polynomial ``(weights, x, sh) -> messages``.

    Operands (per edge; the caller adds the gather and the scatter):

    * weights ``[num_path_weights]``: one block of ``mul`` channels per path of :func:`tp_paths`
      (the reference layout);
    * x ``[irreps_in.dim]`` in "ir_mul" layout;
    * sh ``[irreps_sh.dim]`` (multiplicity 1);
    * messages ``[sum of path dims]``, one "ir_mul" block per path, in path order.

    Coefficients: ``scale * sqrt(dim l3) * CG(l1, l2, l3)`` (e3nn's "component" normalisation).
    Channel blocks are split into chunks of ``gcd`` of the multiplicities so that every segment
    has the same shape (a requirement of the ``uniform_1d`` kernel).

    Returns:
        ``(polynomial, path_irreps)``, ``path_irreps`` the messages' irreps in path order.
    """
    paths = tp_paths(irreps_in, irreps_sh, irreps_filter)
    if any(mul != 1 for mul, _ in irreps_sh):
        raise ValueError(f"spherical harmonics must have multiplicity 1, got {irreps_sh}")
    stp = cue.SegmentedTensorProduct.from_subscripts("u,iu,j,ku+ijk")
    x_seg = [stp.add_segment(1, (ir.dim, mul)) for mul, ir in irreps_in]  # [dim, mul] blocks
    y_seg = [stp.add_segment(2, (ir.dim,)) for _, ir in irreps_sh]
    for i, j, ir_out in paths:
        (mul, ir_in), ir_sh = irreps_in[i], irreps_sh[j].ir
        cg = np.asarray(e3nn.clebsch_gordan(ir_in.l, ir_sh.l, ir_out.l), np.float64)
        cg = cg * math.sqrt(ir_out.dim) * scale  # [d_in, d_sh, d_out]
        stp.add_path(None, x_seg[i], y_seg[j], None, c=cg, dims={"u": mul})
    poly = cue.SegmentedPolynomial.eval_last_operand(stp).flatten_coefficient_modes()
    chunk = math.gcd(*[mul for mul, _ in irreps_in])
    if any(mul != chunk for mul, _ in irreps_in):
        poly = poly.split_mode("u", chunk)
    return poly, path_irreps(irreps_in, irreps_sh, irreps_filter)


def cueq_convolution(
    node_feats: e3nn.IrrepsArray,
    sh: e3nn.IrrepsArray,
    weights: jax.Array,
    senders: jax.Array,
    receivers: jax.Array,
    edge_mask: jax.Array,
    *,
    irreps_out: e3nn.Irreps,
    avg_num_neighbors: float,
    policy: Policy,
    method: str = "auto",
    pairs: EdgePairs | None = None,
) -> e3nn.IrrepsArray:
    """:func:`~mpnn_jax.nn.convolution.e3nn_convolution` as one cuEquivariance polynomial.

    Args:
        node_feats: [n_nodes, irreps_in] features (sender side).
        sh: [n_edges, irreps_sh] spherical harmonics of the edge vectors (multiplicity 1).
        weights: [n_edges, num_path_weights] per-edge path/channel weights (radial MLP output).
        senders: int [n_edges], in ``[0, n_nodes)``.
        receivers: int [n_edges], in ``[0, n_nodes)``.
        edge_mask: bool [n_edges], False on padded edges.
        irreps_out: irreps filter: path outputs whose irrep is not in it are skipped.
        avg_num_neighbors: normalisation of the neighbour sum.
        policy: precision policy.
        method: ``"auto"`` (:func:`default_method`), ``"uniform_1d"`` or ``"naive"``.
        pairs: reverse-edge pairs where ``weights`` are per pair ([n_pairs, num_path_weights]):
            the polynomial reads each edge's row through ``pairs.of_edge`` (an operand index, as
            for the senders), so no [n_edges, num_path_weights] array is written.

    Returns:
        [n_nodes, conv_irreps(irreps_in, irreps_sh, irreps_out)] in the ``aggregation`` dtype.
    """
    n_nodes = node_feats.shape[0]
    poly, message_irreps = conv_polynomial(
        node_feats.irreps, sh.irreps, e3nn.Irreps(irreps_out), 1.0 / avg_num_neighbors
    )
    if weights.shape[-1] != poly.inputs[0].size:
        raise ValueError(f"expected {poly.inputs[0].size} path weights, got {weights.shape[-1]}")
    agg = policy.dtype("aggregation")
    with Policy.scope("aggregation"):
        # gathered inside the kernel; its gradient, a scatter-add over senders, in this dtype
        x = _to_ir_mul(policy.cast("aggregation", node_feats))  # [n_nodes, irreps_in] ir_mul
        x = _rounded(policy, "messages", x)
    with Policy.scope("messages"):
        mask = edge_mask[:, None]
        w_mask, w_index = mask, None  # [rows, 1]; the row of each edge, None: the edge's own
        if pairs is not None:  # a pair is padding when both edges are (pad_reverse pairs them)
            w_mask = (edge_mask[pairs.first] | edge_mask[pairs.second])[:, None]
            w_index = pairs.of_edge  # [n_edges] -> [0, n_pairs)
        w = policy.cast("messages", weights)  # [rows, num_path_weights]
        w = jnp.where(w_mask, w, jnp.zeros_like(w))
        y = policy.cast("messages", sh.array)  # [n_edges, irreps_sh]; zero on padded edges,
        y = jnp.where(mask, y, jnp.zeros_like(y))  # so they send nothing whatever their w
        [out] = cuex.segmented_polynomial(
            poly,
            [w, x, y],
            [jax.ShapeDtypeStruct((n_nodes, poly.outputs[0].size), agg)],
            indices=[w_index, senders, None, receivers],
            method=_resolve(method),
            options={"math_dtype": jnp.dtype(policy.accum("messages")).name},
            name="cueq_convolution",
        )  # [n_nodes, message_irreps] ir_mul, summed over each receiver's edges / avg
    with Policy.scope("aggregation"):
        return _from_ir_mul(message_irreps, out).regroup()  # [n_nodes, conv_irreps]


# --- the symmetric contraction ------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def contraction_polynomial(
    irreps_in: e3nn.Irreps, correlation: int, irreps_out: e3nn.Irreps, n_channels: int
) -> tuple[cue.SegmentedPolynomial, tuple[str, ...]] | None:
    """The symmetric contraction as a polynomial ``(weights, x) -> out``, channel-wise.

    Operands (per node):

    * weights ``[sum_k k * n_channels]``: the reference's weights ``[k, n_channels]`` of each
      name in the returned order (orders 1..correlation, output irreps in order), concatenated;
    * x ``[irreps_in.dim * n_channels]``: ``[d, n_channels]`` (component-major);
    * out ``[irreps_out.dim * n_channels]``: ``[dim out, n_channels]``.

    ``out[m, c] = sum_nu sum_{j, k} U_nu[j1..jnu, k, m] W_nu[k, c] x[j1, c] ... x[jnu, c]`` with
    the bases of :func:`~mpnn_jax.nn.symmetric_contraction.contraction_basis`.

    Args:
        irreps_in: irreps of one channel.
        correlation: highest order (1 to 3).
        irreps_out: output irreps per channel, multiplicity 1 (``irreps_out_of``).
        n_channels: number of channels.

    Returns:
        ``(polynomial, weight names)``, or None if no order reaches any output irrep.
    """
    basis = contraction_basis(irreps_in, correlation, irreps_out.simplify())
    polys, names = [], []
    for nu in range(1, correlation + 1):
        if not any((nu, ir) in basis for _, ir in irreps_out):
            continue
        abc = "abcdefgh"[:nu]
        stp = cue.SegmentedTensorProduct.from_subscripts(f"w_{'_'.join(abc)}_i+{abc}wi")
        for op in range(1, nu + 1):
            stp.add_segment(op, (irreps_in.dim,))
        for _, ir in irreps_out:
            if (nu, ir) in basis:
                stp.add_path(None, *(0,) * nu, None, c=basis[(nu, ir)])  # [d]*nu + [k, dim]
                names.append(weight_name(nu, ir))
            else:
                stp.add_segment(nu + 1, (ir.dim,))  # reached at other orders only
        stp = stp.flatten_coefficient_modes()
        stp = stp.append_modes_to_all_operands("u", {"u": n_channels})
        polys.append(
            cue.SegmentedPolynomial(
                [stp.operands[0], stp.operands[1]],
                [stp.operands[-1]],
                [(cue.Operation([0] + [1] * nu + [2]), stp)],
            )
        )
    if not polys:
        return None
    return cue.SegmentedPolynomial.stack(polys, [True, False, False]), tuple(names)


def cueq_symmetric_contraction(
    x: e3nn.IrrepsArray,
    species: jax.Array,
    weights: Mapping[str, jax.Array],
    *,
    correlation: int,
    keep_irrep_out: str | e3nn.Irreps,
    policy: Policy,
    method: str = "auto",
) -> e3nn.IrrepsArray:
    """:func:`~mpnn_jax.nn.symmetric_contraction.symmetric_contraction` as one polynomial.

    Args:
        x: ``[n_nodes, n_channels, irreps_in]`` node features.
        species: int ``[n_nodes]`` species indices, in ``[0, n_species)``.
        weights: ``{weight_name(nu, L): [n_species, k, n_channels]}`` (the reference's).
        correlation: highest order of the product (1, 2 or 3).
        keep_irrep_out: the output irreps ``L`` (multiplicities ignored).
        policy: precision policy; the contraction runs in stage ``"update"``.
        method: ``"auto"`` (:func:`default_method`), ``"uniform_1d"`` or ``"naive"``.

    Returns:
        ``[n_nodes, n_channels, irreps_out]`` in the update dtype.
    """
    stage = "update"
    irreps_out = irreps_out_of(keep_irrep_out)
    if x.ndim != 3:
        raise ValueError(f"x must be [n_nodes, n_channels, irreps], got shape {x.shape}")
    n_nodes, n_channels = x.shape[0], x.shape[1]
    dtype = policy.dtype(stage)
    built = contraction_polynomial(x.irreps, correlation, irreps_out, n_channels)
    if built is None:
        return e3nn.zeros(irreps_out, (n_nodes, n_channels), dtype)
    poly, names = built
    with Policy.scope("aggregation"):
        # gathered by species inside the kernel; its gradient, a scatter-add, in this dtype
        w = jnp.concatenate(
            [
                policy.cast("aggregation", weights[n]).reshape(weights[n].shape[0], -1)
                for n in names
            ],
            axis=-1,
        )  # [n_species, sum k * n_channels]
        w = _rounded(policy, stage, w)
    with Policy.scope(stage):
        xs = policy.cast(stage, x.array)  # [n, c, d]
        xs = jnp.swapaxes(xs, 1, 2).reshape(n_nodes, -1)  # [n, d * c]
        [out] = cuex.segmented_polynomial(
            poly,
            [w, xs],
            [jax.ShapeDtypeStruct((n_nodes, poly.outputs[0].size), dtype)],
            indices=[species, None, None],
            method=_resolve(method),
            options={"math_dtype": jnp.dtype(policy.accum(stage)).name},
            name="cueq_symmetric_contraction",
        )  # [n, dim out * c]
        out = jnp.swapaxes(out.reshape(n_nodes, irreps_out.dim, n_channels), 1, 2)
        return e3nn.IrrepsArray(irreps_out, out)  # [n, c, irreps_out]


# --- the backend object -------------------------------------------------------------------------
class CueqBackend:
    """The ``"cueq"`` backend of :mod:`mpnn_jax.nn.backends`.

    Attributes:
        name: ``"cueq"``.
        method: ``"auto"`` (the CUDA kernel on GPUs, the naive method elsewhere), ``"uniform_1d"``
            or ``"naive"``; resolved when a function is traced.
    """

    name = "cueq"
    takes_pairs = True

    def __init__(self, method: str = "auto"):
        if method not in METHODS:
            raise ValueError(f"unknown cueq method {method!r}; expected one of {METHODS}")
        self.method = method

    def convolution(self, *args, **kwargs) -> e3nn.IrrepsArray:
        """:func:`cueq_convolution` with this backend's method."""
        return cueq_convolution(*args, method=self.method, **kwargs)

    def symmetric_contraction(self, *args, **kwargs) -> e3nn.IrrepsArray:
        """:func:`cueq_symmetric_contraction` with this backend's method."""
        return cueq_symmetric_contraction(*args, method=self.method, **kwargs)
