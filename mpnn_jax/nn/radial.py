"""Radial basis of an edge: Bessel functions, a polynomial cutoff envelope and the radial MLP.

* :func:`bessel_basis` and :func:`polynomial_envelope` are pure functions of the edge lengths
  (Å); they belong to the ``basis`` stage and are NaN-safe at ``r = 0`` (padded edges).
* :class:`RadialMLP` maps the radial basis to per-edge weights (``radial`` stage): dense layers
  with FP32 parameters cast to the stage dtype at use and FP32 accumulation
  (``preferred_element_type``).

Everything here is jittable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mpnn_jax.nn.ops import matmul_accum
from mpnn_jax.precision import Policy


def bessel_basis(lengths: jax.Array, *, n_basis: int, cutoff: float) -> jax.Array:
    r"""Radial Bessel basis :math:`\sqrt{2/c}\,\sin(n\pi r/c)/r`, ``n = 1..n_basis`` (DimeNet).

    Args:
        lengths: [n_edges] edge lengths in Å, any float dtype (the result has the same dtype).
        n_basis: number of Bessel functions.
        cutoff: cutoff radius ``c`` in Å.

    Returns:
        [n_edges, n_basis] basis values (1/Å). At ``r = 0`` the limit ``sqrt(2/c) n pi / c`` is
        returned, with a finite gradient.

    Example:
        >>> bessel_basis(jnp.array([1.0, 2.0]), n_basis=4, cutoff=5.0).shape
        (2, 4)
    """
    dtype = lengths.dtype
    n = jnp.arange(1, n_basis + 1, dtype=dtype)  # [n_basis]
    small = lengths < 1e-6 * cutoff
    safe_r = jnp.where(small, jnp.ones_like(lengths), lengths)[:, None]  # [n_edges, 1]
    prefactor = math.sqrt(2.0 / cutoff)
    values = prefactor * jnp.sin(n * math.pi / cutoff * safe_r) / safe_r  # [n_edges, n_basis]
    limit = prefactor * n * math.pi / cutoff  # [n_basis]
    return jnp.where(small[:, None], limit, values)


def polynomial_envelope(lengths: jax.Array, *, cutoff: float, p: int = 6) -> jax.Array:
    r"""Smooth polynomial cutoff envelope of DimeNet with exponent ``p``.

    :math:`u(d) = 1 - \tfrac{(p+1)(p+2)}{2} d^p + p(p+2) d^{p+1} - \tfrac{p(p+1)}{2} d^{p+2}`,
    ``d = r / c``, and ``u = 0`` for ``r >= c``; ``u`` and its first two derivatives vanish at
    ``r = c``.

    Args:
        lengths: [n_edges] edge lengths in Å.
        cutoff: cutoff radius ``c`` in Å.
        p: exponent (6 as in NequIP and MACE).

    Returns:
        [n_edges] envelope values in [0, 1], in the dtype of ``lengths``.

    Example:
        >>> polynomial_envelope(jnp.array([0.0, 5.0, 6.0]), cutoff=5.0).tolist()
        [1.0, 0.0, 0.0]
    """
    d = lengths / cutoff
    u = (
        1.0
        - (p + 1.0) * (p + 2.0) / 2.0 * d**p
        + p * (p + 2.0) * d ** (p + 1)
        - p * (p + 1.0) / 2.0 * d ** (p + 2)
    )
    return jnp.where(d < 1.0, u, jnp.zeros_like(u))


def radial_mlp(
    weights: Sequence[jax.Array],
    x: jax.Array,
    *,
    policy: Policy,
    stage: str = "radial",
    out_dtype: Any = None,
    fused: Callable[..., jax.Array | None] | None = None,
) -> jax.Array:
    """Pure MLP ``x -> silu(x W1 / sqrt(fan_in)) ... W_last / sqrt(fan_in)`` without biases.

    Args:
        weights: FP32 matrices ``[fan_in, fan_out]``, one per layer.
        x: [n_edges, n_in] input features.
        policy: precision policy; the computation runs in the dtype of ``stage``, matmuls
            accumulate in :meth:`Policy.accum`.
        stage: stage whose dtype is used.
        out_dtype: the dtype of the result (default: the stage's), e.g. the messages stage's
            when that stage casts it anyway: a fused kernel then writes it in that dtype.
        fused: a backend's fused MLP, ``fused(scaled_weights, x, act_dtype=, out_dtype=)``
            (e.g. :func:`mpnn_jax.nn.pallas_radial.radial_mlp` through the ``"pallas"``
            backend); used with :data:`FOLD_SCALES` where the policy accumulates the stage in 32
            bits or more and it returns an array, else the JAX expression below runs.

    Returns:
        [n_edges, weights[-1].shape[1]] in ``out_dtype`` (the dtype of ``stage`` by default).
    """
    out_dtype = policy.dtype(stage) if out_dtype is None else jnp.dtype(out_dtype)
    if FOLD_SCALES:
        # the constant factors scale the small FP32 weight matrices (a parameter transform, in
        # the parameters' dtype, before the stage casts them) instead of the [n_edges, *]
        # activations: the same function (to rounding) with fewer elementwise passes
        weights = [
            w * ((_SILU_NORM if i > 0 else 1.0) / math.sqrt(w.shape[0]))
            for i, w in enumerate(weights)
        ]
    with Policy.scope(stage):
        wide = jnp.finfo(policy.accum(stage)).bits >= 32
        if FOLD_SCALES and fused is not None and wide:
            out = fused(weights, x, act_dtype=policy.dtype(stage), out_dtype=out_dtype)
            if out is not None:
                return out
        h = policy.cast(stage, x)
        for i, w in enumerate(weights):
            if FOLD_SCALES:
                h = policy.cast(stage, matmul_accum(policy, stage, h, w))
            else:
                h = matmul_accum(policy, stage, h, w)
                h = policy.cast(stage, h) * (1.0 / math.sqrt(w.shape[0]))
            if i < len(weights) - 1:
                h = jax.nn.silu(h) if FOLD_SCALES else jax.nn.silu(h) * _SILU_NORM
        return h.astype(out_dtype)


#: :func:`radial_mlp` multiplies the weights by its constant factors (``True``) rather than the
#: activations (``False``): PERFORMANCE_LOG entry 19.
FOLD_SCALES = True


# makes silu(x), x ~ N(0, 1), have a unit second moment (e3nn's normalize_function)
_SILU_NORM = 1.6790


class RadialMLP(nn.Module):
    """Flax shell of :func:`radial_mlp`: ``[n_edges, n_basis] -> [n_edges, n_out]`` (radial).

    Attributes:
        features: hidden layer widths, e.g. ``(64, 64)``.
        n_out: number of outputs (e.g. the number of tensor-product path weights).
        policy: precision policy.
        backend: name in :mod:`mpnn_jax.nn.backends`; one with ``radial_mlp`` (``"pallas"``)
            runs the MLP as its fused kernels where they take the shapes.
        out_stage: the stage whose dtype the output is returned in (the consumer's; default the
            ``radial`` stage's).

    Example:
        >>> from mpnn_jax.precision import get_policy
        >>> mlp = RadialMLP((8,), 3, get_policy("fp32"))
        >>> x = jnp.ones((5, 4))
        >>> mlp.apply(mlp.init(jax.random.PRNGKey(0), x), x).shape
        (5, 3)
    """

    features: tuple[int, ...]
    n_out: int
    policy: Policy
    backend: str = "e3nn"
    out_stage: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        from mpnn_jax.nn.backends import get_backend

        sizes = (x.shape[-1], *self.features, self.n_out)
        weights = [
            self.param(f"w{i}", nn.initializers.normal(1.0), (a, b), jnp.float32)
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
        ]
        out = None if self.out_stage is None else self.policy.dtype(self.out_stage)
        fused = getattr(get_backend(self.backend), "radial_mlp", None)
        return radial_mlp(weights, x, policy=self.policy, out_dtype=out, fused=fused)
