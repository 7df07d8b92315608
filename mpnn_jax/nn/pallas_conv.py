"""Fused convolution kernel (``"pallas"`` backend): gather, channel-wise tensor product and
neighbour sum in one Pallas kernel per direction, with no scatter-add and no edge-sized message
array.

The reference (:func:`mpnn_jax.nn.convolution.e3nn_convolution`) writes an
``[n_edges, channels, dim]`` message array and sums it at the receivers with a scatter-add. Here
each program of the kernel owns a block of ``block_nodes`` receivers, walks their incoming edges
(edges in receiver order through a permutation and CSR offsets), gathers the sender features, the
radial weights and the spherical harmonics of each edge in their stage dtype, and accumulates
every output component in FP32 registers (``policy.accum("messages")``): one write per node, no
atomics. In 16 bits the kernel reads half the bytes of FP32 and does the same arithmetic.
Masked (padded) edges are left out of the CSR: no program walks them (they all point at one
padding node, and walking its hundreds of edges one by one made one program the whole kernel's
time: 2.75 ms against 1.03 without it at 10k atoms, log entry 14).

The derivative with respect to the node features is the same kernel on the reversed graph (over
the senders, with the Clebsch-Gordan blocks transposed), so it is fused too and the operation is
differentiable to any order (:func:`jax.custom_vjp` whose backward pass is differentiable). The
derivatives with respect to the per-edge inputs (radial weights, harmonics) are per-edge
contractions with no sum over edges (plain JAX, :func:`_edge_cotangents`).

Layout inside the kernel: node arrays "component-major", ``[n_nodes, n_components, channels]``
(one contiguous row of ``channels`` values per irrep component), edge weights
``[n_edges, n_paths, channels]``, harmonics ``[n_edges, dim_sh]``. The wrapper
:func:`pallas_convolution` converts from and to e3nn-jax's "mul_ir" arrays on node arrays only.

Multiplicities: the kernel works on blocks of ``C`` channels, the greatest common divisor of the
input multiplicities (NequIP's and MACE's convolutions have one multiplicity: one block per
irrep). On CPU the kernels run in Pallas's interpreter (slow, for tests); on GPUs they compile
through Triton.

Example:
    >>> import jax, jax.numpy as jnp, e3nn_jax as e3nn
    >>> from mpnn_jax.precision import get_policy
    >>> x = e3nn.normal("4x0e+4x1o", jax.random.PRNGKey(0), (3,))  # [n_nodes, irreps_in]
    >>> sh = e3nn.normal("0e+1o", jax.random.PRNGKey(1), (5,))  # [n_edges, irreps_sh]
    >>> w = jnp.ones((5, 16))  # [n_edges, num_path_weights]: 4 paths x 4 channels
    >>> s, r = jnp.array([0, 1, 2, 0, 1]), jnp.array([1, 2, 0, 2, 0])
    >>> out = pallas_convolution(x, sh, w, s, r, jnp.ones(5, bool), irreps_out="0e+1o",
    ...     avg_num_neighbors=2.0, policy=get_policy("fp32"))
    >>> out.irreps, out.shape
    (8x0e+8x1o, (3, 32))
"""

from __future__ import annotations

import dataclasses
import functools
import math

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from mpnn_jax.nn import ops
from mpnn_jax.nn.convolution import tp_paths
from mpnn_jax.nn.pairs import EdgePairs
from mpnn_jax.precision import Policy

# Module settings, read when a function is traced. The defaults are the fastest measured on an
# H200 (NequIP-M shapes, 10,125 water atoms, each kernel alone, fp32 and bf16-mixed; log entry 14,
# `experiments/perf/pallas_tune.sh`): per layer node + transposed + edge kernel 2.57 ms fp32 and
# 1.80 ms bf16-mixed, against 3.17 and 2.26 with session 11's settings.
#: Receivers per program of the node kernel, edges per program of the edge kernel (powers of
#: two); ``BLOCK_EDGES = 0``: :func:`edge_tile`'s rule (8 edges, or one warp's block at 128
#: channels and more).
BLOCK_NODES = 8
BLOCK_EDGES = 0
#: Receivers per program of the node kernel's transpose (the node-feature gradient: few
#: accumulators, many inputs); ``0`` = as :data:`BLOCK_NODES`.
BLOCK_NODES_T = 4
#: Triton warps per program of the node kernel, its transpose and the edge kernel; ``0`` = from
#: :data:`ELEMENTS_PER_THREAD` (:func:`warps_for`).
NUM_WARPS = 0
NUM_WARPS_T = 0
EDGE_WARPS = 0
#: Node and transposed kernels on 2-byte operands (BF16) whose automatic warps are at their cap
#: (:data:`MAX_WARPS`: C = 128 at the default blocks, MACE) take this many times their block
#: (:func:`node_tile`): at the same warps each thread then holds as many bytes of a ``[block, C]``
#: tile as in FP32, and its loads of the gathered rows are as wide (at MACE MP-S's C = 128: node
#: kernel 4 -> 8 BF16 values per thread, transpose 2 -> 4). Measured on an H100 (log entry 30,
#: 10,125 water atoms, each kernel alone): node kernel 0.465 -> 0.446 ms, transpose 0.639 -> 0.545
#: ms; MACE MP-S bf16-mixed training 29.65 -> 29.00 ms (1.277x -> 1.301x over fp32 in the same
#: interleaved rounds), E+F 8.24 -> 8.15 ms. The FP32 blocks measured alone favour 4 receivers for
#: the node kernel (0.756 -> 0.623 ms) but gain nothing in the model (training 0.998x): unchanged.
#: ``1``: off. NequIP's C = 32 (2 warps) is not affected, nor are kernels whose accumulators would
#: then exceed :data:`MAX_ACC_VALUES` per thread.
BF16_BLOCK_SCALE = 2
#: The most accumulator values per thread (output components x values of a ``[block, C]`` tile)
#: that :data:`BF16_BLOCK_SCALE` may give a node kernel: MACE MP-S's doubled node kernel holds 16
#: x 8 = 128 (ptxas for sm_90a: 247 registers, no spill, against 128 registers at block 8; log
#: entry 30). MACE-L's second layer (71 output components) is left at its block.
MAX_ACC_VALUES = 128
#: The most Triton warps :func:`warps_for` gives a program.
MAX_WARPS = 8
#: Values of a ``[block, C]`` tile per thread in the edge kernel's one-warp programs
#: (:func:`edge_tile`): where the channels fill a warp's row (C >= 32 x
#: ``ELEMENTS_PER_THREAD["edge"]`` = 128, MACE), each program is one warp over ``[32 * 8 / C, C]``
#: tiles (MACE MP-S: 2 edges, or 2 pairs) instead of 8 warps over ``[8, C]``. Measured on an H100
#: (log entry 31; MACE MP-S's shapes, 10,125 water atoms, the kernel alone): fp32 1.685 -> 1.132
#: ms, bf16-mixed 1.024 -> 0.942 ms; two warps over the same 2 edges (1.386 / 1.097) or one
#: block of 4 over 2 warps (1.391 / 0.991) gain less. MACE MP-S interleaved rounds: fp32 E+F
#: 11.57 -> 10.76 ms, training 37.95 -> 36.28 ms; bf16-mixed 8.17 -> 7.96 and 29.11 -> 28.50.
#: ptxas for sm_90a: 138 / 145 registers (fp32 / bf16), no spill, 13-14 programs per
#: multiprocessor. Only C = 128 was timed (wider channels get one warp over fewer edges, 256: one
#: edge). ``0``: off (8 edges, warps from :func:`warps_for`). Not where the edge's
#: output or harmonic components would then hold more than :data:`MAX_ACC_VALUES` values per
#: thread (MACE-L's 71), nor where :data:`BLOCK_EDGES` or :data:`EDGE_WARPS` is set.
EDGE_WARP_VALUES = 8
#: Values of a ``[block, C]`` tile per thread where the warps are not set: the measured optimum
#: at C = 32 (2 warps for each kernel's default block), so that wider channel blocks (MACE's 128)
#: get more warps instead of more registers per thread.
ELEMENTS_PER_THREAD = {"node": 4, "transposed": 2, "edge": 4}
#: Triton's software-pipelining stages of the loops.
NUM_STAGES = 1
#: Kernel calls the node kernel's output components are split into (:func:`_output_groups`;
#: 2 and 3 measured slower).
NODE_GROUPS = 1
#: The edge kernel's two outputs (radial-weight and harmonic cotangents) in separate calls.
EDGE_SPLIT = False
#: Kernel calls the edge kernel's paths are split into (:func:`_path_groups`: contiguous runs of
#: weight rows with about equal output components). Each call loads only its paths' input and
#: cotangent rows and holds only their accumulators; the radial-weight cotangents of the calls
#: are joined, their harmonic cotangents summed (FP32). For plans whose per-edge rows outgrow
#: the registers: MACE-L's second layer (9 input, 71 output components) spills 1.2-3.2 kB per
#: thread at every tile in one call (ptxas, log entry 31). ptxas for sm_90a (log entry 32),
#: bytes spilled per thread at most, fp32 / bf16-mixed: 1 call 3,156 / 1,472; 3 calls 208 /
#: 148; 5 calls 0 / 76 (at most 17 outputs: 8 warps); 9 calls (at most 10 outputs: one-warp
#: programs, :func:`edge_tile`) 24 / 468. Not timed: ``1``, one call.
EDGE_GROUPS = 1
#: Permute the neighbour indices to target order before the node kernel (one index gather), so
#: that no load in the loop waits on another.
NBR_IN_ORDER = True
#: Software pipelining of the node kernels' loop by hand: ``0`` none, ``1`` the next step's
#: indices loaded during this step, ``k >= 2`` the operands of the next ``k - 1`` steps too (their
#: loads overlap the arithmetic: latency, not bandwidth, bounds these kernels; node kernel
#: 1.04 -> 0.64 ms fp32 with 2). ``3`` and ``4`` hold more steps' operands than the registers
#: do: node kernel 9.7 / 10.9 ms fp32 against 0.53 with 2 (H200, log entry 16).
PREFETCH = 2
#: Visit the edges in target order in the edge kernel, so that neighbouring programs read the same
#: ``[n_out, C]`` cotangent rows (35 per edge for NequIP: its largest load) instead of random ones.
#: Measured slower on an H200 (NequIP-M E+F 13.74 -> 13.82 ms fp32, 12.26 -> 12.54 bf16-mixed;
#: log entry 15): the extra index gather costs more than the cotangent rows' locality saves.
EDGE_IN_TARGET_ORDER = False
#: Multiply the radial weights by the edge mask before the kernels. Redundant: masked edges are in
#: no CSR and their weight and harmonic gradients are zeroed. Off: one elementwise pass over the
#: ``[n_edges, n_paths * C]`` weights and one over their gradient fewer per layer (H200,
#: NequIP-M E+F 15.11 -> 13.74 ms fp32, 13.41 -> 12.26 bf16-mixed; log entry 15).
MASK_WEIGHTS = False
#: The edge kernel reads each edge's harmonics and writes its harmonic cotangents as one
#: ``[block, d_sh]`` tile (one contiguous 32-64 B row per edge) instead of ``d_sh`` strided
#: scalar accesses per edge; with pairs, half of them land on the mates' scattered rows. Session
#: 20's profile (H100, MACE MP-S E+F): the bf16-mixed edge kernel took 1.49 ms at 10k atoms and
#: 10.64 ms at 53k (7.1x for 5.2x the atoms; fp32 2.50 -> 9.99). Only where ``d_sh`` is a power
#: of two (Triton's tiles; harmonics to l = 1 or 3, e.g. MACE's 16; NequIP's l <= 2 keeps 9
#: scalar accesses). Off: ptxas gives it 156-159 registers per thread for MACE MP-S against
#: 99-105 (one 8-warp program per multiprocessor instead of two; log entry 24), so not timed.
EDGE_SH_TILES = False
#: The edge kernel's order of work. ``0``: every cotangent row ``g[o]`` of an edge loaded at once,
#: one ``[block, C]`` accumulator per harmonic component, summed over channels at the end
#: (MACE MP-S: 99-105 registers per thread by ptxas, two 8-warp programs per multiprocessor).
#: ``k >= 1``: the terms visited output component by output component, ``g[o]`` loaded ``k - 1``
#: components ahead of its use and dropped after it, each harmonic component's accumulator
#: summed over channels at its last term (77-78 registers, three programs). Same sums up to
#: rounding order. Timed on an H100 (log entry 24): the kernel 22-27% faster in fp32, 25% slower
#: in bf16-mixed at 10k atoms; MACE MP-S E+F at 52,728 atoms 5.8% faster in fp32 and 0.9% in
#: bf16-mixed, at 10k atoms -4% to +4% by case. Off: it does not pay across sizes and presets.
EDGE_STREAM = 0
#: The node-feature cotangent of the convolution (the transposed kernel's sum over each node's
#: outgoing edges, FP32 by the aggregation stage) is stored by the kernel in the features' own
#: dtype, the cast that followed it: the same rounding, with no FP32 ``[n, n_in, C]`` array and
#: no conversion pass (in bf16-mixed MACE MP-S training, four ``[n, 16, 128]`` conversions per
#: step, 0.17 ms at 10k atoms in session 23's profile; log entry 28). Where two such sums are
#: added (the convolution's second derivative) they stay FP32. Bit-identical; timed with
#: pallas_symmetric.SPARSE_STAGE_OUTPUT on an H100 (log entry 29): training +0.9% (noise), E+F
#: 8% slower (why is not known): off.
DX_STAGE_OUTPUT = False
#: Names of the settings above (for experiments that vary them).
SETTINGS = (
    "BLOCK_NODES", "BLOCK_EDGES", "NUM_WARPS", "NUM_STAGES", "NODE_GROUPS", "EDGE_SPLIT",
    "NBR_IN_ORDER", "BLOCK_NODES_T", "NUM_WARPS_T", "EDGE_WARPS", "PREFETCH", "MASK_WEIGHTS",
    "EDGE_IN_TARGET_ORDER", "EDGE_SH_TILES", "EDGE_STREAM", "DX_STAGE_OUTPUT", "BF16_BLOCK_SCALE",
    "MAX_ACC_VALUES", "EDGE_WARP_VALUES", "EDGE_GROUPS",
)  # fmt: skip


#: Run the kernels (these and :mod:`mpnn_jax.nn.pallas_symmetric`'s) in Pallas's interpreter:
#: ``None`` = where JAX's default backend is the CPU.
INTERPRET: bool | None = None


def warps_for(kernel: str, block: int, channels: int) -> int:
    """Triton warps for ``kernel`` ("node", "transposed", "edge") on ``[block, channels]`` tiles:
    the setting where given, else the power of two (1 to 8) nearest below ``block * channels /
    (32 * ELEMENTS_PER_THREAD[kernel])``.

    Example:
        >>> warps_for("node", 8, 32), warps_for("node", 8, 128), warps_for("transposed", 4, 32)
        (2, 8, 2)
    """
    explicit = _explicit_warps(kernel)
    if explicit:
        return explicit
    want = block * channels // (32 * ELEMENTS_PER_THREAD[kernel])
    return min(MAX_WARPS, 1 << max(0, want.bit_length() - 1))


def _explicit_warps(kernel: str) -> int:
    """The warps setting of ``kernel`` ("node", "transposed", "edge"); ``0``: not set."""
    return {"node": NUM_WARPS, "transposed": NUM_WARPS_T, "edge": EDGE_WARPS}[kernel]


def node_tile(kernel: str, channels: int, itemsize: int, accumulators: int = 1) -> tuple[int, int]:
    """``(block, warps)`` of the node kernel (``kernel="node"``) or its transpose
    (``"transposed"``) on ``[block, channels]`` tiles of ``itemsize``-byte operands with
    ``accumulators`` output components per program: the block of the settings
    (:data:`BLOCK_NODES`, :data:`BLOCK_NODES_T`) and the warps of :func:`warps_for`; the block
    times :data:`BF16_BLOCK_SCALE` where the operands are 2-byte, those warps are automatic and at
    :data:`MAX_WARPS` (so that each thread's bytes per tile stay as in FP32), and the
    accumulators then hold at most :data:`MAX_ACC_VALUES` values per thread.

    Example:
        >>> node_tile("node", 128, 4), node_tile("node", 128, 2), node_tile("transposed", 128, 2)
        ((8, 8), (16, 8), (8, 8))
        >>> node_tile("node", 32, 2)  # NequIP-M: 2 warps, the block unchanged
        (8, 2)
        >>> node_tile("node", 128, 2, 16), node_tile("node", 128, 2, 71)  # MACE MP-S, MACE-L
        ((16, 8), (8, 8))
    """
    block = (BLOCK_NODES_T or BLOCK_NODES) if kernel == "transposed" else BLOCK_NODES
    warps = warps_for(kernel, block, channels)
    wide = block * BF16_BLOCK_SCALE
    fits = accumulators * wide * channels <= MAX_ACC_VALUES * 32 * warps
    if itemsize == 2 and not _explicit_warps(kernel) and warps == MAX_WARPS and fits:
        block = wide
    return block, warps


def edge_tile(channels: int, components: int = 1) -> tuple[int, int]:
    """``(block, warps)`` of the edge kernel on ``[block, channels]`` tiles, ``components`` the
    larger of the edge's output and harmonic component counts (its ``[block, C]`` cotangent rows
    and accumulators): :data:`BLOCK_EDGES` and :func:`warps_for` where set; else one warp over
    ``32 * EDGE_WARP_VALUES / channels`` edges where the channels fill a warp's row (at least 32
    x ``ELEMENTS_PER_THREAD["edge"]``) and ``components x EDGE_WARP_VALUES`` stays within
    :data:`MAX_ACC_VALUES`; else 8 edges and :func:`warps_for`'s warps.

    Example:
        >>> edge_tile(128, 16), edge_tile(32, 35)  # MACE MP-S, NequIP-M
        ((2, 1), (8, 2))
        >>> edge_tile(128, 71), edge_tile(256, 16)  # MACE-L's second layer; 256 channels
        ((8, 8), (1, 1))
    """
    if BLOCK_EDGES:
        return BLOCK_EDGES, warps_for("edge", BLOCK_EDGES, channels)
    one_warp = 32 * EDGE_WARP_VALUES // channels if EDGE_WARP_VALUES else 0
    wide = channels >= 32 * ELEMENTS_PER_THREAD["edge"]
    if one_warp and wide and not EDGE_WARPS and components * EDGE_WARP_VALUES <= MAX_ACC_VALUES:
        return one_warp, 1
    return 8, warps_for("edge", 8, channels)


@dataclasses.dataclass(frozen=True)
class Path:
    """One tensor-product path ``x[in_off : in_off + d_in] (x) sh[sh_off : sh_off + d_sh] ->
    out[out_off : out_off + d_out]`` with weight row ``weight`` and coefficients ``cg``
    (a nested tuple ``[d_in][d_sh][d_out]``, hashable)."""

    in_off: int
    d_in: int
    sh_off: int
    d_sh: int
    out_off: int
    d_out: int
    weight: int
    cg: tuple

    def coefficients(self) -> np.ndarray:
        return np.asarray(self.cg, dtype=np.float64)  # [d_in, d_sh, d_out]

    def transposed(self) -> Path:
        cg = self.coefficients().transpose(2, 1, 0)
        return Path(
            self.out_off, self.d_out, self.sh_off, self.d_sh, self.in_off, self.d_in,
            self.weight, _freeze(cg),
        )  # fmt: skip


def _freeze(a: np.ndarray) -> tuple:
    return tuple(float(v) for v in a) if a.ndim == 1 else tuple(_freeze(x) for x in a)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static description of a convolution: paths, component counts, channels (hashable)."""

    paths: tuple[Path, ...]
    n_in: int  # components of the input node array
    n_out: int  # components of the output node array
    d_sh: int  # components of the harmonics
    channels: int
    transpose: bool = False  # the plan of a derivative over the senders (kernel settings only)

    @property
    def n_paths(self) -> int:
        return len(self.paths)

    def transposed(self) -> Plan:
        return Plan(
            tuple(p.transposed() for p in self.paths), self.n_out, self.n_in, self.d_sh,
            self.channels, not self.transpose,
        )  # fmt: skip

    def terms(self) -> dict[tuple[int, int], list[tuple[int, int, float]]]:
        """``{(in component, weight row): [(sh component, out component, coefficient)]}``."""
        out: dict[tuple[int, int], list[tuple[int, int, float]]] = {}
        for p in self.paths:
            cg = p.coefficients()
            for a, b, k in zip(*np.nonzero(np.abs(cg) > 1e-12), strict=True):
                key = (p.in_off + int(a), p.weight)
                out.setdefault(key, []).append(
                    (p.sh_off + int(b), p.out_off + int(k), float(cg[a, b, k]))
                )
        return out


def conv_plan(irreps_in, irreps_sh, irreps_out) -> tuple[Plan, e3nn.Irreps]:
    """The :class:`Plan` of the reference's paths and the (unmerged) irreps of its output.

    The kernel's channel block is the greatest common divisor of the input multiplicities: an
    irrep of multiplicity ``m`` is ``m / C`` blocks of ``C`` channels, each path ``m / C``
    sub-paths (one per block; with one multiplicity, as in NequIP and MACE, one each).
    """
    irreps_in, irreps_sh = e3nn.Irreps(irreps_in), e3nn.Irreps(irreps_sh)
    c = math.gcd(*(mul for mul, _ in irreps_in))
    in_offs = np.cumsum([0] + [mul // c * ir.dim for mul, ir in irreps_in]).tolist()
    sh_offs = np.cumsum([0] + [ir.dim for _, ir in irreps_sh]).tolist()
    paths, out_irreps, out_off, row = [], [], 0, 0
    for i, j, ir_out in tp_paths(irreps_in, irreps_sh, irreps_out):
        (mul, ir_in), ir_sh = irreps_in[i], irreps_sh[j].ir
        cg = np.asarray(e3nn.clebsch_gordan(ir_in.l, ir_sh.l, ir_out.l)) * math.sqrt(ir_out.dim)
        for blk in range(mul // c):  # block blk: channels [blk * C, (blk + 1) * C)
            paths.append(
                Path(
                    in_offs[i] + blk * ir_in.dim,
                    ir_in.dim,
                    sh_offs[j],
                    ir_sh.dim,
                    out_off + blk * ir_out.dim,
                    ir_out.dim,
                    row,
                    _freeze(cg),
                )  # fmt: skip
            )
            row += 1
        out_irreps.append((mul, ir_out))
        out_off += mul // c * ir_out.dim
    plan = Plan(tuple(paths), in_offs[-1], out_off, sh_offs[-1], c)
    return plan, e3nn.Irreps(out_irreps)


def _to_blocks(chunks: list[jax.Array], c: int) -> jax.Array:
    """e3nn "mul_ir" chunks ``[n, mul, dim]`` -> the kernel's ``[n, components, C]``."""
    n = chunks[0].shape[0]
    return jnp.concatenate(
        [
            x.reshape(n, x.shape[1] // c, c, x.shape[2]).transpose(0, 1, 3, 2).reshape(n, -1, c)
            for x in chunks
        ],
        axis=1,
    )


def _from_blocks(x: jax.Array, irreps: e3nn.Irreps, c: int) -> list[jax.Array]:
    """Inverse of :func:`_to_blocks`: ``[n, components, C]`` -> chunks ``[n, mul, dim]``."""
    n, chunks, off = x.shape[0], [], 0
    for mul, ir in irreps:
        k = mul // c * ir.dim
        y = x[:, off : off + k, :].reshape(n, mul // c, ir.dim, c)
        chunks.append(y.transpose(0, 1, 3, 2).reshape(n, mul, ir.dim))
        off += k
    return chunks


# --- the kernel --------------------------------------------------------------------------------
def _kernel(
    start_ref, perm_ref, nbr_ref, wrow_ref, x_ref, w_ref, sh_ref, out_ref, *, plan, block, scale,
    acc_dtype, has_perm, outputs, nbr_in_order, prefetch, has_wrow,
):  # fmt: skip
    """One program: ``block`` target nodes; loops over the largest in-degree of the block and
    accumulates each output component of ``outputs``, ``[block, C]``, in the ``acc_dtype``.

    With ``has_wrow`` edge ``e`` reads its weights from row ``wrow[e]`` of ``w`` (its pair's:
    :mod:`mpnn_jax.nn.pairs`; ``wrow`` in the order of ``nbr``), else from row ``e``."""
    c = plan.channels
    local = {o: k for k, o in enumerate(outputs)}
    terms = {}
    for key, lst in plan.terms().items():
        lst = [(j, local[o], coef) for j, o, coef in lst if o in local]
        if lst:
            terms[key] = lst
    perm_ref = perm_ref if has_perm else None
    rows = pl.program_id(0) * block + jnp.arange(block)  # [block]
    lo = start_ref[rows]  # [block]
    deg = start_ref[rows + 1] - lo
    cols = jnp.arange(c)[None, :]  # [1, C]
    used_in = sorted({i for i, _ in terms})
    used_w = sorted({p for _, p in terms})
    used_sh = sorted({j for v in terms.values() for j, _, _ in v})

    def indices(k):  # [block] each: live flag, edge ids, neighbour nodes, weight rows of step k
        live = k < deg
        pos = jnp.where(live, lo + k, 0)  # positions in target order
        e = pos if perm_ref is None else perm_ref[pos]
        at = pos if nbr_in_order else e
        return live, e, nbr_ref[at], wrow_ref[at] if has_wrow else e

    def loads(idx):  # the step's operands in their stored dtype (converted where used)
        live, e, n, wr = idx
        sh = tuple(sh_ref[e * plan.d_sh + j] for j in used_sh)  # [block] each
        x = tuple(x_ref[(n * plan.n_in + i)[:, None] * c + cols] for i in used_in)  # [block, C]
        w = tuple(w_ref[(wr * plan.n_paths + p)[:, None] * c + cols] for p in used_w)
        return live, sh, x, w

    def accumulate(acc, data):
        live, sh, x, w = data
        sh = {j: jnp.where(live, v.astype(acc_dtype), 0.0) for j, v in zip(used_sh, sh)}
        x = {i: v.astype(acc_dtype) for i, v in zip(used_in, x)}
        w = {p: v.astype(acc_dtype) for p, v in zip(used_w, w)}
        acc = list(acc)
        for (i, p), lst in terms.items():
            xw = x[i] * w[p]  # [block, C]
            for j, o, coef in lst:
                acc[o] = acc[o] + (coef * sh[j])[:, None] * xw
        return tuple(acc)

    zero = (jnp.zeros((block, c), acc_dtype),) * len(outputs)
    steps = jnp.max(deg)
    if prefetch == 0:
        acc = lax.fori_loop(0, steps, lambda k, a: accumulate(a, loads(indices(k))), zero)
    elif prefetch == 1:  # step k+1's indices load while step k's operands do

        def body(k, carry):
            acc, idx = carry
            return accumulate(acc, loads(idx)), indices(k + 1)

        acc = lax.fori_loop(0, steps, body, (zero, indices(0)))[0]
    else:  # and the operands of the next prefetch - 1 steps load while step k computes
        depth = prefetch - 1

        def body(k, carry):
            acc, queue, idx = carry  # queue: the loaded operands of steps k .. k + depth - 1
            nxt = loads(idx)
            return accumulate(acc, queue[0]), (*queue[1:], nxt), indices(k + depth + 1)

        queue = tuple(loads(indices(i)) for i in range(depth))
        acc = lax.fori_loop(0, steps, body, (zero, queue, indices(depth)))[0]
    for o in range(len(outputs)):
        out_ref[(rows * len(outputs) + o)[:, None] * c + cols] = (acc[o] * scale).astype(
            out_ref.dtype
        )


def _gather_sum(
    x, w, sh, start, perm, nbr, wrow=None, *, plan: Plan, scale: float, acc, out_dtype
):  # fmt: skip
    """``out[t] = scale * sum_{edges e into t} TP_plan(x[nbr[e]], w[wrow[e]], sh[e])``.

    Args:
        x: [n_src, n_in, C]; w: [n_edges, n_paths, C] (or [n_pairs, n_paths, C] with ``wrow``);
            sh: [n_edges, d_sh].
        start: int32 [n_tgt + 1] CSR offsets into ``perm``; perm: int32 [n_edges] edge ids in
            target order, or ``None`` where the edges are in target order already;
            nbr: int32 [n_edges] source node of each edge (edge order; the kernel reads it
            permuted to target order, one gather of indices outside the kernel).
        wrow: int32 [n_edges] the row of ``w`` of each edge (its pair, :mod:`mpnn_jax.nn.pairs`;
            permuted like ``nbr``), or ``None``: row ``e``.

    Returns:
        [n_tgt, n_out, C] in ``out_dtype``.
    """
    kind = "transposed" if plan.transpose else "node"
    n_acc = max(len(group) for group in _output_groups(plan, NODE_GROUPS))
    block, warps = node_tile(kind, plan.channels, jnp.dtype(x.dtype).itemsize, n_acc)
    n_tgt = start.shape[0] - 1
    n_pad = -(-n_tgt // block) * block
    start = jnp.concatenate([start, jnp.full((n_pad - n_tgt,), start[-1], start.dtype)])
    c = plan.channels
    nbr_in_order = perm is None or NBR_IN_ORDER
    if perm is not None and NBR_IN_ORDER:
        nbr = nbr[perm]  # [n_edges] in target order: no load that waits on another in the loop
        wrow = None if wrow is None else wrow[perm]
    outs = []
    for outputs in _output_groups(plan, NODE_GROUPS):
        out = pl.pallas_call(
            functools.partial(
                _kernel,
                plan=plan,
                block=block,
                scale=scale,
                acc_dtype=acc,
                has_perm=perm is not None,
                outputs=outputs,
                nbr_in_order=nbr_in_order,
                prefetch=PREFETCH,
                has_wrow=wrow is not None,
            ),  # fmt: skip
            out_shape=jax.ShapeDtypeStruct((n_pad * len(outputs) * c,), out_dtype),
            grid=(n_pad // block,),
            name="mpnn_gather_sum",
            **compiler_kwargs(warps),
        )(
            start, start if perm is None else perm, nbr, nbr if wrow is None else wrow,
            x.reshape(-1), w.reshape(-1), sh.reshape(-1),
        )  # fmt: skip
        outs.append(out)  # [n_pad * len(outputs) * C]
    with Policy.scope("aggregation"):  # the kernel's sums, in their stage's dtype
        outs = [out.reshape(n_pad, -1, c)[:n_tgt] for out in outs]  # [n_tgt, len(outputs), C]
        return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


def _output_groups(plan: Plan, n_groups: int) -> list[tuple[int, ...]]:
    """Output components split into at most ``n_groups`` contiguous runs of about equal size (one
    kernel call each: fewer accumulators per program, so more programs per multiprocessor)."""
    bounds = sorted({round(k * plan.n_out / n_groups) for k in range(n_groups + 1)})
    return [tuple(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _path_groups(plan: Plan, n_groups: int) -> list[tuple[int, ...]]:
    """The weight rows ``0 .. n_paths - 1`` split into at most ``n_groups`` contiguous runs of
    about equal output components (each path's own ``d_out``; one edge-kernel call each)."""
    d_out = [0] * plan.n_paths
    for path in plan.paths:
        d_out[path.weight] = path.d_out
    ends = np.cumsum(d_out)  # [n_paths]
    # each cut after the path whose running total lands nearest its share
    cut = [int(np.argmin(np.abs(ends - k * ends[-1] / n_groups))) + 1 for k in range(1, n_groups)]
    bounds = sorted({0, plan.n_paths, *(min(c, plan.n_paths) for c in cut)})
    return [tuple(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _edge_kernel(
    order_ref, mate_ref, nbr_ref, tgt_ref, live_ref, x_ref, w_ref, sh_ref, g_ref, *out_refs, plan,
    block, n_rows, n_edges, scale, acc_dtype, want, mode, rows_w,
):  # fmt: skip
    """One program: ``block`` rows; ``dw [block, len(rows_w), C]`` (the paths of weight rows
    ``rows_w``, in that order) and/or ``dsh`` of their edges (those paths' terms), zero on masked
    edges (``live == 0``; a select, so whatever they hold stays out).

    ``mode`` says what a row is: ``"edges"``, an edge (``nbr``, ``tgt``, ``live`` in edge
    order); ``"order"``, edge ``order[row]`` (``nbr``, ``tgt``, ``live`` given in that order),
    written back to its own row; ``"pairs"``, the pair of edges ``order[row]`` and
    ``mate[row]`` (:mod:`mpnn_jax.nn.pairs`; ``nbr``, ``tgt``, ``live`` in edge order), whose
    weight row is ``row``: ``dw`` sums both edges' terms, ``dsh`` is written per edge."""
    c = plan.channels
    terms = {key: lst for key, lst in plan.terms().items() if key[1] in rows_w}
    rows = pl.program_id(0) * block + jnp.arange(block)  # [block]
    pos = jnp.minimum(rows, n_rows - 1)  # loads of the padded tail read the last row
    cols = jnp.arange(c)[None, :]  # [1, C]
    sh_cols = jnp.arange(plan.d_sh)[None, :]  # [1, d_sh]
    tiles = EDGE_SH_TILES and plan.d_sh & (plan.d_sh - 1) == 0  # Triton: power-of-two tiles
    stream = EDGE_STREAM
    if mode == "pairs":  # each side: (edge ids, position of its nbr/tgt/live, dsh row)
        # the padded tail writes its dsh rows past the edges (sliced off)
        tail = n_edges + rows - n_rows
        sides = [(e, e, jnp.where(rows < n_rows, e, tail)) for e in (order_ref[pos], mate_ref[pos])]
    elif mode == "order":
        e = order_ref[pos]
        sides = [(e, pos, jnp.where(rows < n_rows, e, rows))]  # padded tail: its own rows
    else:
        sides = [(pos, pos, rows)]
    w_row = pos if mode == "pairs" else sides[0][0]  # [block] rows of w and of dw
    dw_dst = rows if mode == "pairs" else sides[0][2]
    used_w = sorted({p for _, p in terms})
    w = None
    if "dsh" in want:
        w = {
            p: w_ref[(w_row * plan.n_paths + p)[:, None] * c + cols].astype(acc_dtype)
            for p in used_w
        }  # [block, C] each
    dw = {p: jnp.zeros((block, c), acc_dtype) for p in rows_w}
    refs = list(out_refs)
    dw_ref = refs.pop(0) if "dw" in want else None
    dsh_ref = refs.pop(0) if "dsh" in want else None
    keep_dw = None
    for e, at, dsh_dst in sides:
        n, t = nbr_ref[at], tgt_ref[at]  # [block]
        keep = live_ref[at] != 0  # [block]
        keep_dw = keep if keep_dw is None else keep_dw  # a pair's edges are live together
        x = {
            i: x_ref[(n * plan.n_in + i)[:, None] * c + cols].astype(acc_dtype)
            for i in sorted({i for i, _ in terms})
        }  # [block, C] each

        def load_g(o, t=t):  # [block, C]: row o of each edge's target cotangent
            return g_ref[(t * plan.n_out + o)[:, None] * c + cols].astype(acc_dtype)

        if not stream:  # every row at once, before the harmonics (the measured default)
            g = {o: load_g(o) for o in sorted({o for v in terms.values() for _, o, _ in v})}
        sh = None
        if "dw" in want and tiles:  # one [block, d_sh] load, columns picked by one-hot sums
            tile = sh_ref[(e * plan.d_sh)[:, None] + sh_cols].astype(acc_dtype)
            sh = {j: jnp.sum(jnp.where(sh_cols == j, tile, 0.0), axis=1) for j in range(plan.d_sh)}
        elif "dw" in want:
            sh = {j: sh_ref[e * plan.d_sh + j].astype(acc_dtype) for j in range(plan.d_sh)}
        # dsh_sum[j]: [block], the channel sum of harmonic component j's terms
        if stream:
            dsh_sum = _stream_terms(
                plan, terms, want, x, load_g, sh, w, dw, stream, block, acc_dtype
            )
        else:
            dsh = [jnp.zeros((block, c), acc_dtype) for _ in range(plan.d_sh)]
            for (i, p), lst in terms.items():
                for j, o, coef in lst:
                    xg = x[i] * g[o]  # [block, C]
                    if "dw" in want:
                        dw[p] = dw[p] + (coef * sh[j])[:, None] * xg
                    if "dsh" in want:
                        dsh[j] = dsh[j] + coef * w[p] * xg
            dsh_sum = [jnp.sum(d, axis=1) for d in dsh]
        if "dsh" in want and tiles:  # one [block, d_sh] store: each edge's row at once
            tile = jnp.zeros((block, plan.d_sh), acc_dtype)
            for j in range(plan.d_sh):
                tile = jnp.where(sh_cols == j, dsh_sum[j][:, None], tile)
            tile = jnp.where(keep[:, None], tile * scale, 0.0)
            dsh_ref[(dsh_dst * plan.d_sh)[:, None] + sh_cols] = tile.astype(dsh_ref.dtype)
        elif "dsh" in want:
            for j in range(plan.d_sh):
                val = jnp.where(keep, dsh_sum[j] * scale, 0.0)
                dsh_ref[dsh_dst * plan.d_sh + j] = val.astype(dsh_ref.dtype)
    if "dw" in want:
        for k, p in enumerate(rows_w):
            val = jnp.where(keep_dw[:, None], dw[p] * scale, 0.0)
            dw_ref[(dw_dst * len(rows_w) + k)[:, None] * c + cols] = val.astype(dw_ref.dtype)


def _stream_terms(
    plan: Plan, terms, want, x, load_g, sh, w, dw, ahead: int, block: int, acc_dtype
):  # fmt: skip
    """The edge kernel's ``terms`` (of :meth:`Plan.terms`) output component by output
    component (:data:`EDGE_STREAM`): ``load_g(o)`` issued ``ahead - 1`` components before
    ``g[o]``'s first use and dropped after its last; ``dw[p]`` updated in place; returns the
    ``[block]`` channel sums of each harmonic component's ``dsh`` terms, each summed at its last
    term (zeros where it has none)."""
    flat = sorted(
        (o, i, p, j, coef) for (i, p), lst in terms.items() for j, o, coef in lst
    )  # fmt: skip
    outs = sorted({t[0] for t in flat})
    last_of_j = {t[3]: k for k, t in enumerate(flat)}
    g, acc, sums = {}, {}, [jnp.zeros((block,), acc_dtype) for _ in range(plan.d_sh)]
    for k, (o, i, p, j, coef) in enumerate(flat):
        at = outs.index(o)
        for nxt in outs[at : at + max(1, ahead)]:  # this component's load and those ahead
            if nxt not in g:
                g[nxt] = load_g(nxt)
        xg = x[i] * g[o]  # [block, C]
        if "dw" in want:
            dw[p] = dw[p] + (coef * sh[j])[:, None] * xg
        if "dsh" in want:
            term = coef * w[p] * xg
            acc[j] = term if j not in acc else acc[j] + term
            if k == last_of_j[j]:
                sums[j] = jnp.sum(acc.pop(j), axis=1)
        if k + 1 == len(flat) or flat[k + 1][0] != o:
            del g[o]
    return sums


def accumulator_of(*xs) -> jnp.dtype:
    """The accumulator of the kernels whose sums do not follow a policy stage (the sparse forms,
    the indexed linear): FP32, or FP64 where an operand is FP64 (tests)."""
    wide = any(jnp.dtype(x.dtype) == jnp.float64 for x in xs)
    return jnp.dtype(jnp.float64 if wide else jnp.float32)


def compiler_kwargs(num_warps: int, num_stages: int | None = None) -> dict:
    """``pallas_call``'s keywords: ``interpret`` on CPU (:data:`INTERPRET`), else the Triton
    compiler parameters (``num_stages``: :data:`NUM_STAGES` unless given)."""
    interpret = jax.default_backend() == "cpu" if INTERPRET is None else INTERPRET
    if interpret:
        return {"interpret": True}
    from jax.experimental.pallas import triton as plgpu

    stages = NUM_STAGES if num_stages is None else num_stages
    return {"compiler_params": plgpu.CompilerParams(num_warps=num_warps, num_stages=stages)}


def _edge_contract(
    x, w, sh, g, nbr, tgt, live, *, plan: Plan, scale: float, acc, want, order=None, pairs=None
):  # fmt: skip
    """Per-edge contractions (no sum over edges) of the convolution's derivative:
    ``dw[e, p, c] = scale sum coef x[nbr[e], i, c] sh[e, j] g[tgt[e], o, c]`` and
    ``dsh[e, j] = scale sum_c sum coef x[nbr[e], i, c] w[e, p, c] g[tgt[e], o, c]``, both zero
    on masked edges (in the kernel: no elementwise pass over the ``[n_edges, n_paths, C]`` array
    afterwards).

    Args:
        x: [n_src, n_in, C]; w: [n_edges, n_paths, C] (or [n_pairs, n_paths, C] with ``pairs``);
        sh: [n_edges, d_sh]; g: [n_tgt, n_out, C]; nbr, tgt: int32 [n_edges]; live: bool
        [n_edges].
        want: which of ``("dw", "dsh")`` to compute.
        order: int32 [n_edges], a permutation of the edges to visit them in (e.g. by target,
            so that neighbouring programs read the same rows of ``g``), or ``None``.
        pairs: :class:`mpnn_jax.nn.pairs.EdgePairs` where ``w`` is per pair: one program row
            per pair (both edges), ``dw[p]`` the sum of its two edges' terms (``order`` unused).

    Returns:
        ``{"dw": w's shape in w's dtype, "dsh": [n_edges, d_sh] in sh's dtype}`` (the keys of
        ``want``).
    """
    groups = _path_groups(plan, EDGE_GROUPS)
    d_out = {path.weight: path.d_out for path in plan.paths}
    widest = max(sum(d_out[p] for p in group) for group in groups)  # output rows of a call
    block, warps = edge_tile(plan.channels, max(widest, plan.d_sh))
    n_edges = nbr.shape[0]
    mode = "pairs" if pairs is not None else "edges" if order is None else "order"
    n_rows = w.shape[0]  # edges, or pairs
    r_pad = -(-n_rows // block) * block
    c = plan.channels
    dsh_rows = n_edges + block if mode == "pairs" else r_pad  # (pairs: the tail's rows last)
    # several calls' harmonic cotangents are partial sums: written in the accumulator's dtype
    dsh_dtype = sh.dtype if len(groups) == 1 else acc
    want = tuple(k for k in ("dw", "dsh") if k in want)
    if mode == "pairs":
        index = (pairs.first, pairs.second, nbr, tgt, live)
    elif mode == "order":
        index = (order, order, nbr[order], tgt[order], live[order])  # [n_edges] in visiting order
    else:
        index = (nbr, nbr, nbr, tgt, live)
    parts: dict[str, list[jax.Array]] = {k: [] for k in want}
    for group in groups:
        shapes = {
            "dw": jax.ShapeDtypeStruct((r_pad * len(group) * c,), w.dtype),
            "dsh": jax.ShapeDtypeStruct((dsh_rows * plan.d_sh,), dsh_dtype),
        }
        outs = pl.pallas_call(
            functools.partial(
                _edge_kernel,
                plan=plan,
                block=block,
                n_rows=n_rows,
                n_edges=n_edges,
                scale=scale,
                acc_dtype=acc,
                want=want,
                mode=mode,
                rows_w=group,
            ),  # fmt: skip
            out_shape=tuple(shapes[k] for k in want),
            grid=(r_pad // block,),
            name="mpnn_edge_contract",
            **compiler_kwargs(warps),
        )(
            *index[:4], index[4].astype(jnp.int32),
            x.reshape(-1), w.reshape(-1), sh.reshape(-1), g.reshape(-1),
        )  # fmt: skip
        for k, v in zip(want, outs, strict=True):
            if k == "dw":
                parts[k].append(v.reshape(r_pad, len(group), c)[:n_rows])  # [n_rows, paths, C]
            else:
                parts[k].append(v.reshape(-1, plan.d_sh)[:n_edges])  # [n_edges, d_sh]
    result = {}
    if "dw" in want:
        dw = parts["dw"][0] if len(groups) == 1 else jnp.concatenate(parts["dw"], axis=1)
        result["dw"] = dw.reshape(w.shape)
    if "dsh" in want:
        result["dsh"] = functools.reduce(jnp.add, parts["dsh"]).astype(sh.dtype)
    return result


def _edge_kw(graph) -> dict:
    """The edge kernel's visiting order and pairs: by target (the CSR's permutation) with
    :data:`EDGE_IN_TARGET_ORDER`, else the edges' own order (already by target where promised);
    with pairs (``graph[7]``), one row per pair instead."""
    pairs = graph[7]
    order = graph[1] if EDGE_IN_TARGET_ORDER and pairs is None else None
    return {"order": order, "pairs": pairs}


def _reverse(graph):
    start_t, perm_t, nbr, start_s, perm_s, tgt, live, pairs = graph
    return (start_s, perm_s, tgt, start_t, perm_t, nbr, live, pairs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _fused(plan: Plan, scale: float, policy: Policy, out_dtype, x, w, sh, graph):
    """The convolution ``[n_src, n_in, C] -> [n_tgt, n_out, C]``, stored in ``out_dtype``
    (``None``: the aggregation stage's dtype; the sums are in the messages stage's accumulator).

    ``graph = (start_t, perm_t, nbr, start_s, perm_s, tgt, live, pairs)``: CSR of the live edges
    over their targets (used here) and over their sources (used by the derivative), the bool mask
    ``live [n_edges]`` and the :class:`~mpnn_jax.nn.pairs.EdgePairs` where ``w`` is per pair
    (else ``None``). Masked edges are in neither CSR: they add nothing and are never walked
    (padding edges all point at one padding node, whose hundreds of edges would otherwise make
    one program of the grid walk them one by one while the rest of the GPU waits).
    """
    start_t, perm_t, nbr, pairs = *graph[:3], graph[7]
    wrow = None if pairs is None else pairs.of_edge
    return _gather_sum(
        x, w, sh, start_t, perm_t, nbr, wrow, plan=plan, scale=scale,
        acc=policy.accum("messages"), out_dtype=out_dtype or policy.dtype("aggregation"),
    )  # fmt: skip


def _fused_fwd(plan, scale, policy, out_dtype, x, w, sh, graph):
    return _fused(plan, scale, policy, out_dtype, x, w, sh, graph), (x, w, sh, graph)


def _fused_bwd(plan, scale, policy, out_dtype, res, g):
    x, w, sh, graph = res
    g = policy.cast("messages", g)
    stored = jnp.dtype(x.dtype) if DX_STAGE_OUTPUT else None  # else the aggregation dtype
    dx = _fused(plan.transposed(), scale, policy, stored, g, w, sh, _reverse(graph))
    dx = dx.astype(x.dtype)
    dw, dsh = _edges(plan, scale, policy, x, w, sh, g, graph)
    return dx, dw, dsh, (None,) * len(graph)


_fused.defvjp(_fused_fwd, _fused_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _edges(plan: Plan, scale: float, policy: Policy, x, w, sh, g, graph):
    """``(dw, dsh)`` of :func:`_edge_contract` (both; zero on masked edges, which
    :func:`_fused` leaves out), differentiable: its derivative is two :func:`_fused` calls per
    node input and one :func:`_edge_contract` per edge input."""
    nbr, tgt, live = graph[2], graph[5], graph[6]
    kw = dict(plan=plan, scale=scale, acc=policy.accum("messages"), **_edge_kw(graph))
    if EDGE_SPLIT:
        out = _edge_contract(x, w, sh, g, nbr, tgt, live, want=("dw",), **kw)
        out |= _edge_contract(x, w, sh, g, nbr, tgt, live, want=("dsh",), **kw)
    else:
        out = _edge_contract(x, w, sh, g, nbr, tgt, live, want=("dw", "dsh"), **kw)
    return out["dw"], out["dsh"]


def _edges_fwd(plan, scale, policy, x, w, sh, g, graph):
    return _edges(plan, scale, policy, x, w, sh, g, graph), (x, w, sh, g, graph)


def _edges_bwd(plan, scale, policy, res, cts):
    # L = scale sum_e sum_terms coef x_i g_o (a_p sh_j + w_p b_j) for cotangents a (of dw) and b
    # (of dsh): linear in each input, so every derivative is a kernel of this module again
    # the cotangents' masked rows are read by no kernel's sum: the node kernels walk live edges
    # only, and the edge kernel's outputs on masked edges are selected to zero
    x, w, sh, g, graph = res
    nbr, tgt, live = graph[2], graph[5], graph[6]
    a, b = (policy.cast("messages", ct) for ct in cts)
    acc = policy.accum("messages")
    rev, tp = _reverse(graph), plan.transposed()
    dx = _fused(tp, scale, policy, None, g, a, sh, rev) + _fused(
        tp, scale, policy, None, g, w, b, rev
    )
    dg = _fused(plan, scale, policy, None, x, a, sh, graph) + _fused(
        plan, scale, policy, None, x, w, b, graph
    )
    kw = dict(plan=plan, scale=scale, acc=acc, **_edge_kw(graph))
    dw = _edge_contract(x, w, b, g, nbr, tgt, live, want=("dw",), **kw)["dw"]
    dsh = _edge_contract(x, a, sh, g, nbr, tgt, live, want=("dsh",), **kw)["dsh"]
    return dx.astype(x.dtype), dw, dsh, dg.astype(g.dtype), (None,) * len(graph)


_edges.defvjp(_edges_fwd, _edges_bwd)


def csr(
    targets: jax.Array, n_nodes: int, live: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """``(start [n_nodes + 1], perm [n_edges])``: edges grouped by target node (stable order).

    Edges where ``live`` (bool [n_edges]) is false are sorted past every node
    (``start[n_nodes]`` counts the live edges): no node's range holds them.
    """
    targets = targets.astype(jnp.int32)
    if live is not None:
        targets = jnp.where(live, targets, n_nodes)
    perm = jnp.argsort(targets, stable=True).astype(jnp.int32)
    start = jnp.searchsorted(targets[perm], jnp.arange(n_nodes + 1, dtype=jnp.int32))
    return start.astype(jnp.int32), perm


def _csr_of(indices: jax.Array, n_nodes: int, promised_sorted: bool, live=None):
    indices = indices.astype(jnp.int32)
    if promised_sorted:  # (:data:`mpnn_jax.nn.ops.SORTED_EDGES`): no permutation
        # padded edges point at padding nodes past every real node, so they stay last when
        # moved past every node (as :func:`mpnn_jax.benchmark.sort_edges` leaves them)
        keys = indices if live is None else jnp.where(live, indices, n_nodes)
        start = jnp.searchsorted(keys, jnp.arange(n_nodes + 1, dtype=jnp.int32))
        return start.astype(jnp.int32), None
    return csr(indices, n_nodes, live)


def pallas_convolution(
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
    pairs: EdgePairs | None = None,
) -> e3nn.IrrepsArray:
    """Same contract and results (to rounding) as :func:`~mpnn_jax.nn.convolution.e3nn_convolution`.

    Args:
        node_feats: [n_nodes, irreps_in] (any multiplicities: blocks of their gcd).
        sh: [n_edges, irreps_sh]; weights: [n_edges, num_path_weights], or [n_pairs,
            num_path_weights] with ``pairs`` (:mod:`mpnn_jax.nn.pairs`: the kernels read each
            edge's weights from its pair's row, and the edge kernel sums a pair's two weight
            gradients: no [n_edges, num_path_weights] array is written);
        senders, receivers: int [n_edges], in bounds; edge_mask: bool [n_edges].

    Returns:
        [n_nodes, conv_irreps(irreps_in, irreps_sh, irreps_out)] in the ``aggregation`` dtype.
    """
    node_feats = node_feats.regroup()
    plan, irreps = conv_plan(node_feats.irreps, sh.irreps, irreps_out)
    n_nodes, c = node_feats.shape[0], plan.channels
    if weights.shape[-1] != plan.n_paths * c:
        raise ValueError(f"expected {plan.n_paths * c} path weights, got {weights.shape[-1]}")
    with Policy.scope("messages"):
        x = _to_blocks(policy.cast("messages", node_feats.chunks), c)  # [n_nodes, n_in, C]
        w = policy.cast("messages", weights)  # [n_edges, n_paths * C]
        if MASK_WEIGHTS:
            rows = edge_mask if pairs is None else edge_mask[pairs.first]
            w = w * rows[:, None].astype(w.dtype)
        w = w.reshape(w.shape[0], plan.n_paths, c)  # [n_edges, n_paths, C]
        y = policy.cast("messages", sh.array)  # [n_edges, d_sh]
        live = edge_mask.astype(bool)
        start_r, perm_r = _csr_of(receivers, n_nodes, ops.SORTED_EDGES == "receivers", live)
        start_s, perm_s = _csr_of(senders, n_nodes, ops.SORTED_EDGES == "senders", live)
        graph = (start_r, perm_r, senders.astype(jnp.int32), start_s, perm_s,
                 receivers.astype(jnp.int32), live, pairs)  # fmt: skip
        out = _fused(plan, 1.0 / avg_num_neighbors, policy, None, x, w, y, graph)  # [N, n_out, C]
    with Policy.scope("aggregation"):
        chunks = _from_blocks(out, irreps, c)  # [n_nodes, mul, d_out] each
        agg = e3nn.from_chunks(irreps, chunks, (n_nodes,), policy.dtype("aggregation"))
        return agg.regroup()
