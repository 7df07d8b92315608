"""Equivariant graph convolution: node features x edge spherical harmonics, weighted per path and
channel by a radial MLP, summed over the senders of each receiver.

Stages: the tensor product and the radial weights run in the ``messages`` dtype (contractions
accumulate in :meth:`Policy.accum`), the sum over neighbours in the ``aggregation`` dtype
(``jax.ops.segment_sum`` on messages cast up first), divided by ``avg_num_neighbors``. The
gather of sender features runs in the ``aggregation`` dtype too: its gradient is the sum over each
node's outgoing edges (a scatter-add; 16-bit atomics on GPUs are slow and lossy). Where the caller
promises sorted senders or receivers (:data:`mpnn_jax.nn.ops.SORTED_EDGES`), the gather or the
``segment_sum`` is told ``indices_are_sorted``.

* :func:`tp_paths` / :func:`conv_irreps`: the static path list and output irreps.
* :func:`e3nn_convolution`: the pure reference implementation (the ``"e3nn"`` backend of
  :mod:`mpnn_jax.nn.backends`): for each path ``(l1 of x) x (l2 of Y) -> l3`` with Clebsch-Gordan
  coefficients in e3nn's "component" normalisation, a "uvu" tensor product (channel-wise, one
  weight per edge, path and channel).
* :class:`Convolution`: the Flax shell; it owns the :class:`~mpnn_jax.nn.radial.RadialMLP`.

Padded edges (``edge_mask`` False) send exactly zero. Jittable.
"""

from __future__ import annotations

import math

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mpnn_jax.nn import ops
from mpnn_jax.nn.ops import einsum_accum
from mpnn_jax.nn.pairs import EdgePairs, per_edge
from mpnn_jax.nn.radial import RadialMLP
from mpnn_jax.precision import Policy


def tp_paths(
    irreps_in: e3nn.Irreps, irreps_sh: e3nn.Irreps, irreps_filter: e3nn.Irreps
) -> list[tuple[int, int, e3nn.Irrep]]:
    """Paths ``(i_in, i_sh, ir_out)`` of the tensor product whose ``ir_out`` is in the filter."""
    keep = {ir for _, ir in e3nn.Irreps(irreps_filter)}
    return [
        (i, j, ir_out)
        for i, (_, ir_in) in enumerate(e3nn.Irreps(irreps_in))
        for j, (_, ir_sh) in enumerate(e3nn.Irreps(irreps_sh))
        for ir_out in ir_in * ir_sh
        if ir_out in keep
    ]


def path_irreps(irreps_in, irreps_sh, irreps_filter) -> e3nn.Irreps:
    irreps_in = e3nn.Irreps(irreps_in)
    return e3nn.Irreps(
        [(irreps_in[i].mul, ir) for i, _, ir in tp_paths(irreps_in, irreps_sh, irreps_filter)]
    )


def conv_irreps(irreps_in, irreps_sh, irreps_filter) -> e3nn.Irreps:
    """Output irreps of the convolution (path outputs, sorted and merged)."""
    return path_irreps(irreps_in, irreps_sh, irreps_filter).regroup()


def num_path_weights(irreps_in, irreps_sh, irreps_filter) -> int:
    """Number of radial weights per edge: one per path and input channel."""
    return path_irreps(irreps_in, irreps_sh, irreps_filter).num_irreps


def e3nn_convolution(
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
    """Pure convolution ``h_i = 1/avg_num_neighbors sum_{j->i} w_ij * (h_j x Y(r_ij))``.

    Args:
        node_feats: [n_nodes, irreps_in] features (sender side).
        sh: [n_edges, irreps_sh] spherical harmonics of the edge vectors.
        weights: [n_edges, num_path_weights] per-edge path/channel weights (radial MLP output),
            or [n_pairs, num_path_weights] with ``pairs`` (edge ``e`` uses row
            ``pairs.of_edge[e]``: :func:`mpnn_jax.nn.pairs.per_edge`).
        senders: int [n_edges].
        receivers: int [n_edges].
        edge_mask: bool [n_edges], False on padded edges.
        irreps_out: irreps filter: path outputs whose irrep is not in it are skipped.
        avg_num_neighbors: normalisation of the neighbour sum.
        policy: precision policy.
        pairs: reverse-edge pairs (:mod:`mpnn_jax.nn.pairs`) where ``weights`` are per pair.

    Returns:
        [n_nodes, conv_irreps(irreps_in, irreps_sh, irreps_out)] in the ``aggregation`` dtype.
    """
    if pairs is not None:
        weights = per_edge(weights, pairs)  # [n_edges, num_path_weights]
    n_nodes = node_feats.shape[0]
    paths = tp_paths(node_feats.irreps, sh.irreps, irreps_out)
    with Policy.scope("aggregation"):
        # the gradient of this gather is a sum over each node's outgoing edges: in the
        # aggregation dtype (FP32 atomics on GPUs, not 16-bit ones)
        x_nodes = policy.cast("aggregation", node_feats.array)  # [n_nodes, irreps_in]
        x_edges = x_nodes.at[senders].get(  # [n_edges, irreps_in]
            indices_are_sorted=ops.SORTED_EDGES == "senders", mode="promise_in_bounds"
        )
    with Policy.scope("messages"):
        dtype = policy.dtype("messages")
        x = policy.cast("messages", e3nn.IrrepsArray(node_feats.irreps, x_edges))
        y = policy.cast("messages", sh)
        weights = policy.cast("messages", weights)
        chunks, irreps, offset = [], [], 0
        for i, j, ir_out in paths:
            mul, ir_in = x.irreps[i]
            ir_sh = y.irreps[j].ir
            cg = e3nn.clebsch_gordan(ir_in.l, ir_sh.l, ir_out.l) * math.sqrt(ir_out.dim)
            cg = jnp.asarray(np.asarray(cg), dtype=dtype)  # [d_in, d_sh, d_out]
            w = weights[:, offset : offset + mul]  # [n_edges, mul]
            offset += mul
            x_s = x.chunks[i] * w[:, :, None]  # [n_edges, mul, d_in]
            # pairwise contractions, each with stage-dtype operands and a wide accumulator
            t = einsum_accum(policy, "messages", "ej,ijk->eik", y.chunks[j][:, 0, :], cg)
            t = policy.cast("messages", t)  # [n_edges, d_in, d_out]
            m = einsum_accum(policy, "messages", "eui,eik->euk", x_s, t)  # [n_edges, mul, d_out]
            chunks.append(policy.cast("messages", m))
            irreps.append((mul, ir_out))
        if offset != weights.shape[-1]:
            raise ValueError(f"expected {offset} path weights, got {weights.shape[-1]}")
        msg = e3nn.from_chunks(irreps, chunks, (senders.shape[0],), dtype)  # [n_edges, irreps]
        msg_arr = jnp.where(edge_mask[:, None], msg.array, jnp.zeros_like(msg.array))
    with Policy.scope("aggregation"):
        msg_arr = policy.cast("aggregation", msg_arr)
        agg = jax.ops.segment_sum(  # [n_nodes, dim]
            msg_arr,
            receivers,
            num_segments=n_nodes,
            indices_are_sorted=ops.SORTED_EDGES == "receivers",
        )
        agg = agg * (1.0 / avg_num_neighbors)
        return e3nn.IrrepsArray(msg.irreps, agg).regroup()


class Convolution(nn.Module):
    """Flax shell: radial MLP -> path weights -> :func:`e3nn_convolution` (or another backend).

    Attributes:
        irreps_out: irreps filter of the tensor product outputs (e.g. the hidden irreps).
        avg_num_neighbors: normalisation of the neighbour sum.
        radial_features: hidden widths of the radial MLP, e.g. ``(64, 64)``.
        policy: precision policy.
        backend: name in :mod:`mpnn_jax.nn.backends` (``"e3nn"`` is the reference).

    Call: ``conv(node_feats, sh, radial, senders, receivers, edge_mask, pairs=None)`` with
    ``node_feats`` [n_nodes, irreps_in], ``sh`` [n_edges, irreps_sh], ``radial`` [n_edges,
    n_basis] (or [n_pairs, n_basis] with ``pairs``: the radial MLP runs once per pair of reverse
    edges, :mod:`mpnn_jax.nn.pairs`); returns [n_nodes, conv_irreps(irreps_in, irreps_sh,
    irreps_out)] in the aggregation dtype.
    """

    irreps_out: str | e3nn.Irreps
    avg_num_neighbors: float
    radial_features: tuple[int, ...]
    policy: Policy
    backend: str = "e3nn"

    @nn.compact
    def __call__(
        self,
        node_feats: e3nn.IrrepsArray,
        sh: e3nn.IrrepsArray,
        radial: jax.Array,
        senders: jax.Array,
        receivers: jax.Array,
        edge_mask: jax.Array,
        pairs: EdgePairs | None = None,
    ) -> e3nn.IrrepsArray:
        from mpnn_jax.nn.backends import get_backend, takes_pairs

        node_feats = node_feats.regroup()
        n_weights = num_path_weights(node_feats.irreps, sh.irreps, self.irreps_out)
        # the radial MLP runs in its own stage: a function of the distance alone whose
        # derivative enters every force (measured: the largest BF16 error of the messages)
        backend = get_backend(self.backend)
        # a backend with a fused radial MLP writes its output in the messages dtype (the cast
        # its convolution makes anyway), so the FP32 output never exists in memory
        fused = hasattr(backend, "radial_mlp")
        weights = RadialMLP(
            self.radial_features, n_weights, self.policy, self.backend,
            out_stage="messages" if fused else None,
        )(radial)  # [rows, n_w]  # fmt: skip
        extra = {}
        if pairs is not None and takes_pairs(backend):
            extra = {"pairs": pairs}  # the backend reads each edge's row through its pair
        elif pairs is not None:
            weights = per_edge(weights, pairs)  # [n_edges, n_w] for a per-edge backend
        return backend.convolution(
            node_feats,
            sh,
            weights,
            senders,
            receivers,
            edge_mask,
            irreps_out=e3nn.Irreps(self.irreps_out),
            avg_num_neighbors=self.avg_num_neighbors,
            policy=self.policy,
            **extra,
        )
