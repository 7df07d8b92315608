"""Equivariant linear layer with FP32 parameters, run in a stage dtype with FP32 accumulation.

``e3nn.flax.Linear`` creates its parameters in the input dtype and rejects BF16 external weights,
so this is a small re-implementation of ``e3nn.FunctionalLinear`` on top of the policy:

* :func:`linear_paths` lists the paths ``(i_in, i_out)`` between equal irreps;
* :func:`equivariant_linear` is the pure core: per path ``y_w = sum_u x_u W_uw / sqrt(fan_in)``
  with the operands in the stage dtype and ``preferred_element_type=policy.accum(stage)``;
  optionally the weights are indexed per row (``indices``, e.g. species-dependent weights);
* :class:`Linear` is the Flax shell that creates the FP32 parameters (``N(0, 1)``, the
  normalisation is in the forward pass as in e3nn's "path" gradient normalisation).

Indexed weights (few sets) are applied densely, every set on every row and then each row's own,
unless a backend supplies ``indexed_matmul`` (the ``"pallas"`` backend's one-kernel map,
:mod:`mpnn_jax.nn.pallas_linear`, where the shapes suit it).

Output irreps that no input irrep reaches are zero. Jittable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp

from mpnn_jax.nn.backends import get_backend
from mpnn_jax.nn.ops import einsum_accum, select_sets, take_rows
from mpnn_jax.precision import Policy

#: Indexed weights with at most this many sets are applied densely (all sets, then a selection).
#: (Rejected alternative, PERFORMANCE_LOG entry 19: each row's input placed in its set's slot of
#: ``[n, n_sets, mul_in, ir_dim]`` and one GEMM over ``(set, mul_in)``; H100 MACE training fp32
#: 47.9 -> 51.1 ms, bf16-mixed 40.4 -> 40.0.)
DENSE_INDEX_MAX = 8
#: A GEMM whose FP32 result is rounded to the stage dtype before any other use stores the stage
#: dtype itself (:meth:`~mpnn_jax.precision.Policy.einsum`, by
#: :data:`~mpnn_jax.precision.ops.STORE_16BIT`: one rounding of the FP32 sums, as the cast it
#: replaces) instead of writing FP32 for a cast: an output irrep
#: that one path reaches (no sum over paths), and the dense indexed GEMM (``select_sets``
#: rounds its rows first). Same values; in a 16-bit stage the backward pass's GEMMs then take
#: 16-bit cotangents (with FP32 results they took the FP32 cotangent of that cast: mixed FP32 x
#: BF16 dots, which XLA runs in FP32).
STORE_SINGLE_PATH = False


def linear_paths(irreps_in: e3nn.Irreps, irreps_out: e3nn.Irreps) -> list[tuple[int, int]]:
    """All ``(i_in, i_out)`` pairs of equal irreps (Schur's lemma)."""
    return [
        (i, j)
        for i, (_, ir_in) in enumerate(irreps_in)
        for j, (_, ir_out) in enumerate(irreps_out)
        if ir_in == ir_out
    ]


def equivariant_linear(
    weights: Sequence[jax.Array],
    x: e3nn.IrrepsArray,
    *,
    irreps_out: e3nn.Irreps,
    policy: Policy,
    stage: str,
    indices: jax.Array | None = None,
    indexed_matmul: Callable[..., jax.Array | None] | None = None,
) -> e3nn.IrrepsArray:
    """Pure equivariant linear map.

    Args:
        weights: one FP32 array per path of :func:`linear_paths` (``x.irreps`` -> ``irreps_out``),
            ``[mul_in, mul_out]``, or ``[n_index, mul_in, mul_out]`` when ``indices`` is given.
        x: [n, irreps_in] input.
        irreps_out: output irreps.
        policy: precision policy.
        stage: stage whose dtype is used (e.g. ``"update"``).
        indices: optional int [n] selecting a weight set per row (species-indexed weights).
        indexed_matmul: optional ``(x [n, mul_in, ir_dim], w [n_sets, mul_in, mul_out] in the
            stage dtype, indices) -> [n, ir_dim, mul_out]`` in the accumulator dtype, or ``None``
            where it does not take the shapes (a backend's; used for up to
            :data:`DENSE_INDEX_MAX` sets when the policy accumulates in FP32 or wider).

    Returns:
        [n, irreps_out] in the dtype of ``stage``.
    """
    irreps_out = e3nn.Irreps(irreps_out)
    dtype = policy.dtype(stage)
    x = policy.cast(stage, x)
    paths = linear_paths(x.irreps, irreps_out)
    if len(weights) != len(paths):
        raise ValueError(f"expected {len(paths)} weight arrays, got {len(weights)}")
    chunks: list[jax.Array | None] = []
    for j in range(len(irreps_out)):
        fan_in = sum(x.irreps[i].mul for i, jj in paths if jj == j)
        alone = STORE_SINGLE_PATH and sum(jj == j for _, jj in paths) == 1
        out = None
        for (i, jj), w in zip(paths, weights):
            if jj != j or x.chunks[i] is None:
                continue
            # subscripts in dot_general's natural output order: no transpose in the wide dtype
            if indices is None and alone:
                y = policy.einsum(stage, "nui,uw->niw", x.chunks[i], w)
            elif indices is None:
                y = einsum_accum(policy, stage, "nui,uw->niw", x.chunks[i], w)
            elif w.shape[0] <= DENSE_INDEX_MAX:
                y = None
                if indexed_matmul is not None and jnp.finfo(policy.accum(stage)).bits >= 32:
                    y = indexed_matmul(x.chunks[i], policy.cast(stage, w), indices)
                if y is None:
                    # every weight set on every row (one dense GEMM), then each row's own:
                    # cheaper than gathering a [mul_in, mul_out] matrix per row (few sets)
                    # (select_sets rounds y to the stage dtype first: the GEMM may store it)
                    if STORE_SINGLE_PATH:
                        y = policy.einsum(stage, "nui,suw->nisw", x.chunks[i], w)
                    else:
                        y = einsum_accum(policy, stage, "nui,suw->nisw", x.chunks[i], w)
                    y = select_sets(policy, stage, y, indices)  # [n, ir_dim, mul_out]
            else:
                w = take_rows(policy, stage, w, indices)  # [n, mul_in, mul_out]
                y = einsum_accum(policy, stage, "nui,nuw->niw", x.chunks[i], w)
            # y: [n, ir_dim, mul_out] in the accumulator dtype (or the stage's, stored alone)
            out = y if out is None else out + y
        if out is not None:
            out = policy.cast(stage, out) * (1.0 / math.sqrt(fan_in))
            out = jnp.swapaxes(out, -1, -2)  # [n, mul_out, ir_dim]
        chunks.append(out)
    return e3nn.from_chunks(irreps_out, chunks, x.shape[:-1], dtype)


class Linear(nn.Module):
    """Flax shell of :func:`equivariant_linear` with FP32 parameters created by ``self.param``.

    Attributes:
        irreps_out: output irreps (kept as given: not simplified or sorted).
        policy: precision policy.
        stage: stage whose dtype is used.
        num_indexed_weights: if set, one weight set per index (call with ``indices``).
        backend: backend name (:mod:`mpnn_jax.nn.backends`) whose ``indexed_matmul``, if it has
            one, applies the indexed weights (``"pallas"``: one kernel); the values are the same.

    Example:
        >>> from mpnn_jax.precision import get_policy
        >>> lin = Linear("4x0e+2x1o", get_policy("bf16-mixed"), "update")
        >>> x = e3nn.normal("3x0e+1x1o+1x2e", jax.random.PRNGKey(0), (5,))
        >>> y = lin.apply(lin.init(jax.random.PRNGKey(1), x), x)
        >>> y.irreps, y.dtype
        (4x0e+2x1o, dtype(bfloat16))
    """

    irreps_out: str | e3nn.Irreps
    policy: Policy
    stage: str = "update"
    num_indexed_weights: int | None = None
    backend: str = "e3nn"

    @nn.compact
    def __call__(
        self, x: e3nn.IrrepsArray, indices: jax.Array | None = None, *, weights_only: bool = False
    ) -> e3nn.IrrepsArray | list[jax.Array]:
        """``[n, irreps_in] -> [n, irreps_out]``; with ``weights_only``, the FP32 weights (one per
        path of :func:`linear_paths` from ``x``'s regrouped irreps) and no computation (``x``
        may have no rows: only its irreps count)."""
        irreps_out = e3nn.Irreps(self.irreps_out)
        with Policy.scope(self.stage):
            x = self.policy.cast(self.stage, x).regroup()
        if (indices is None) != (self.num_indexed_weights is None):
            raise ValueError("pass indices if and only if num_indexed_weights is set")
        lead = () if self.num_indexed_weights is None else (self.num_indexed_weights,)
        weights = [
            self.param(
                f"w[{i},{j}] {x.irreps[i]},{irreps_out[j]}",
                nn.initializers.normal(1.0),
                (*lead, x.irreps[i].mul, irreps_out[j].mul),
                jnp.float32,
            )
            for i, j in linear_paths(x.irreps, irreps_out)
        ]
        if weights_only:
            return weights
        indexed = None
        if indices is not None:
            indexed = getattr(get_backend(self.backend), "indexed_matmul", None)
        with Policy.scope(self.stage):
            return equivariant_linear(
                weights,
                x,
                irreps_out=irreps_out,
                policy=self.policy,
                stage=self.stage,
                indices=indices,
                indexed_matmul=indexed,
            )


#: :func:`linear_then_indexed` composes a linear map and the species-indexed map after it into
#: one indexed map where the backend has ``indexed_matmul`` (``False``: two maps, as written).
COMPOSE_INDEXED = True


def composed_weights(
    w_first: Sequence[jax.Array],
    w_indexed: Sequence[jax.Array],
    irreps_in: e3nn.Irreps,
    irreps_mid: e3nn.Irreps,
    irreps_out: e3nn.Irreps,
) -> list[jax.Array]:
    """Weights of one indexed map equal to ``indexed(first(x))`` (:func:`equivariant_linear`).

    Per path ``(i, k)`` of ``irreps_in -> irreps_out``, ``sum_j W1[i, j] W2[s][j, k] / sqrt(f1_j)``
    over the middle irreps ``j`` of the same irrep, times ``sqrt(fan_in_k / f2_k)`` so that the
    composed map's own ``1 / sqrt(fan_in_k)`` gives the second map's ``1 / sqrt(f2_k)``. In the
    parameters' dtype (FP32): the middle result is never rounded to the stage dtype.

    Args:
        w_first: ``[mul_i, mul_j]`` per path of ``irreps_in -> irreps_mid``.
        w_indexed: ``[n_sets, mul_j, mul_k]`` per path of ``irreps_mid -> irreps_out``.
        irreps_in, irreps_mid, irreps_out: regrouped input, middle (the first map's output,
            regrouped) and output irreps.

    Returns:
        ``[n_sets, mul_i, mul_k]`` per path of ``irreps_in -> irreps_out``.
    """
    first = dict(zip(linear_paths(irreps_in, irreps_mid), w_first, strict=True))
    second = dict(zip(linear_paths(irreps_mid, irreps_out), w_indexed, strict=True))

    def fan_in(irreps_a, irreps_b, k):
        return sum(irreps_a[i].mul for i, kk in linear_paths(irreps_a, irreps_b) if kk == k)

    out = []
    for i, k in linear_paths(irreps_in, irreps_out):
        terms = [
            jnp.einsum("uv,svw->suw", first[(i, j)], second[(j, k)])
            / math.sqrt(fan_in(irreps_in, irreps_mid, j))
            for j in range(len(irreps_mid))
            if (i, j) in first and (j, k) in second
        ]
        scale = math.sqrt(fan_in(irreps_in, irreps_out, k) / fan_in(irreps_mid, irreps_out, k))
        out.append(sum(terms) * scale)
    return out


def linear_then_indexed(
    first: Linear, indexed: Linear, x: e3nn.IrrepsArray, indices: jax.Array
) -> e3nn.IrrepsArray:
    """``indexed(first(x), indices)`` (two bound :class:`Linear` submodules of the caller; the
    parameters are theirs either way). Where ``indexed``'s backend has ``indexed_matmul`` and
    :data:`COMPOSE_INDEXED` is set, as one indexed map with :func:`composed_weights` (MACE's
    layer 0: the linear after the convolution and the species-dependent one, PERFORMANCE_LOG
    entry 25): one pass over the nodes instead of two, in the forward and every derivative. The
    same function; in 16-bit stages the middle result is not rounded."""
    backend = get_backend(indexed.backend)
    if not (COMPOSE_INDEXED and getattr(backend, "indexed_matmul", None)):
        return indexed(first(x), indices)
    policy, stage = indexed.policy, indexed.stage
    mid = e3nn.Irreps(first.irreps_out)
    w1 = first(x, weights_only=True)
    w2 = indexed(e3nn.zeros(mid, (0,), jnp.float32), indices, weights_only=True)
    irreps_in, mid, out = x.irreps.regroup(), mid.regroup(), e3nn.Irreps(indexed.irreps_out)
    weights = composed_weights(w1, w2, irreps_in, mid, out)
    with Policy.scope(stage):
        x = policy.cast(stage, x).regroup()
        return equivariant_linear(
            weights, x, irreps_out=out, policy=policy, stage=stage, indices=indices,
            indexed_matmul=backend.indexed_matmul,
        )  # fmt: skip
