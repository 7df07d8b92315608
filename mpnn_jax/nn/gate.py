"""Gate nonlinearity (``update`` stage).

Scalars go through SiLU (even) / tanh (odd); every non-scalar irrep is multiplied by a gate scalar
passed through a sigmoid (even) / tanh (odd), as in NequIP. :func:`gate_irreps` gives the irreps a
linear layer must produce for :func:`gate` to return a given ``irreps_out``. Jittable.

Example:
    >>> import e3nn_jax as e3nn
    >>> from mpnn_jax.precision import get_policy
    >>> gate_irreps("4x0e+2x1o+1x2e")
    4x0e+3x0e+2x1o+1x2e
    >>> x = e3nn.normal(gate_irreps("4x0e+2x1o"), jax.random.PRNGKey(0), (5,))
    >>> gate(x, policy=get_policy("fp32")).irreps
    4x0e+2x1o
"""

from __future__ import annotations

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np

from mpnn_jax.precision import Policy


def gate_irreps(irreps_out: str | e3nn.Irreps) -> e3nn.Irreps:
    """``irreps_out`` with one extra ``0e`` gate scalar per non-scalar irrep, after the scalars."""
    irreps_out = e3nn.Irreps(irreps_out)
    scalars = e3nn.Irreps([(m, ir) for m, ir in irreps_out if ir.l == 0])
    vectors = e3nn.Irreps([(m, ir) for m, ir in irreps_out if ir.l > 0])
    n_gates = vectors.num_irreps
    gates = e3nn.Irreps(f"{n_gates}x0e") if n_gates > 0 else e3nn.Irreps("")
    return scalars + gates + vectors


def gate(x: e3nn.IrrepsArray, *, policy: Policy) -> e3nn.IrrepsArray:
    """Applies the gate nonlinearity in the ``update`` dtype.

    Args:
        x: [n, gate_irreps(irreps_out)] input (scalars, then gates, then non-scalars).
        policy: precision policy.

    Returns:
        [n, irreps_out] gated features in the ``update`` dtype.
    """
    with Policy.scope("update"):
        return apply_gate(policy.cast("update", x))


def _second_moment_norm(f) -> float:
    """``1 / sqrt(E[f(z)^2])``, ``z ~ N(0, 1)``, by Gauss-Hermite quadrature (host side)."""
    z, w = np.polynomial.hermite_e.hermegauss(200)
    return float(1.0 / np.sqrt(np.sum(w * f(z) ** 2) / np.sqrt(2 * np.pi)))


_SILU = _second_moment_norm(lambda z: z / (1 + np.exp(-z)))
_TANH = _second_moment_norm(np.tanh)
_SIGMOID = _second_moment_norm(lambda z: 1 / (1 + np.exp(-z)))


def apply_gate(x: e3nn.IrrepsArray) -> e3nn.IrrepsArray:
    """Gate nonlinearity computed in the dtype of ``x`` (the logic of ``e3nn.gate``).

    The activations are normalised by Python-float constants, and the gates multiply the
    non-scalars directly: ``e3nn.gate`` would trace FP32 operations for its normalisation
    constants and its scalar x irrep products. Gates must be even (``0e``).
    """
    scalars = x.filter(keep=["0e", "0o"])
    vectors = x.filter(drop=["0e", "0o"])
    acts = dict(
        even_act=lambda v: _SILU * jax.nn.silu(v),
        odd_act=lambda v: _TANH * jnp.tanh(v),
        normalize_act=False,
    )
    if vectors.irreps.dim == 0:
        return e3nn.scalar_activation(scalars, **acts)
    n_gates = vectors.irreps.num_irreps
    if scalars.irreps.dim < n_gates:
        raise ValueError(f"{x.irreps}: fewer scalars than the {n_gates} gates needed")
    extra = scalars.slice_by_mul[: scalars.irreps.dim - n_gates]
    gates = scalars.slice_by_mul[scalars.irreps.dim - n_gates :]
    if any(ir.p != 1 for _, ir in gates.irreps):
        raise ValueError(f"gates must be 0e scalars, got {gates.irreps}")
    extra = e3nn.scalar_activation(extra, **acts)
    g = _SIGMOID * jax.nn.sigmoid(gates.array)  # [..., n_gates]
    chunks, k = [], 0
    for (mul, _), chunk in zip(vectors.irreps, vectors.chunks):
        chunks.append(None if chunk is None else chunk * g[..., k : k + mul, None])
        k += mul
    gated = e3nn.from_chunks(vectors.irreps, chunks, x.shape[:-1], x.dtype)
    return e3nn.concatenate([extra, gated], axis=-1)
