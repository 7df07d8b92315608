"""Edge geometry and edge basis: lengths (``geometry`` stage), spherical harmonics and radial basis
(``basis`` stage).

Padded edges (``edge_mask`` False) may carry zero vectors; every function here is NaN-safe there in
value and gradient (the "double ``where``" trick) and returns exact zeros for them.

Example:
    >>> import jax.numpy as jnp
    >>> from mpnn_jax.precision import get_policy
    >>> p = get_policy("fp32")
    >>> v = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    >>> m = jnp.array([True, False])
    >>> r = edge_lengths(v, m, policy=p)
    >>> sh, radial = edge_basis(v, r, m, max_ell=2, n_basis=8, cutoff=5.0, policy=p)
    >>> sh.irreps, radial.shape
    (1x0e+1x1o+1x2e, (2, 8))
"""

from __future__ import annotations

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp

from mpnn_jax.nn.pairs import EdgePairs
from mpnn_jax.nn.radial import bessel_basis, polynomial_envelope
from mpnn_jax.precision import Policy


def edge_lengths(vectors: jax.Array, edge_mask: jax.Array, *, policy: Policy) -> jax.Array:
    """Edge lengths ``|r_ij|`` in the geometry dtype, 0 on padded edges (NaN-free gradient).

    Args:
        vectors: [n_edges, 3] edge vectors in Å.
        edge_mask: [n_edges] bool, False on padded edges.
        policy: precision policy (``geometry`` stage).

    Returns:
        [n_edges] lengths in Å.
    """
    with Policy.scope("geometry"):
        vectors = policy.cast("geometry", vectors)  # [n_edges, 3]
        # explicit sum: jnp.sum would accumulate low-precision dtypes in FP32
        sq = vectors[:, 0] ** 2 + vectors[:, 1] ** 2 + vectors[:, 2] ** 2  # [n_edges]
        valid = edge_mask & (sq > 0)
        safe_sq = jnp.where(valid, sq, jnp.ones_like(sq))
        return jnp.where(valid, jnp.sqrt(safe_sq), jnp.zeros_like(sq))  # [n_edges]


def sh_irreps(max_ell: int) -> e3nn.Irreps:
    """Irreps of the spherical harmonics up to ``max_ell``: ``0e + 1o + 2e + ...``."""
    return e3nn.Irreps.spherical_harmonics(max_ell)


def edge_basis(
    vectors: jax.Array,
    lengths: jax.Array,
    edge_mask: jax.Array,
    *,
    max_ell: int,
    n_basis: int,
    cutoff: float,
    policy: Policy,
    envelope_p: int = 6,
    pairs: EdgePairs | None = None,
) -> tuple[e3nn.IrrepsArray, jax.Array]:
    """Spherical harmonics of the edge directions and the enveloped Bessel radial basis.

    Computed in the ``basis`` dtype; padded edges are exactly zero.

    Args:
        vectors: [n_edges, 3] edge vectors in Å.
        lengths: [n_edges] lengths in Å (from :func:`edge_lengths`).
        edge_mask: [n_edges] bool, False on padded edges.
        max_ell: highest degree of the spherical harmonics.
        n_basis: number of Bessel functions.
        cutoff: cutoff radius in Å.
        policy: precision policy.
        envelope_p: exponent of the polynomial envelope.
        pairs: reverse-edge pairs (:mod:`mpnn_jax.nn.pairs`): the radial basis is computed once
            per pair (from the lengths of ``pairs.first``).

    Returns:
        ``(sh, radial)``: sh an ``e3nn.IrrepsArray`` [n_edges, sh_irreps(max_ell)] with
        "component" normalisation (``|Y_l|^2 = 2l + 1``); radial [n_edges, n_basis] (or
        [n_pairs, n_basis] with ``pairs``) = Bessel x envelope (1/Å).
    """
    with Policy.scope("basis"):
        vectors = policy.cast("basis", vectors)  # [n_edges, 3]
        lengths = policy.cast("basis", lengths)  # [n_edges]
        valid = edge_mask & (lengths > 0)
        safe_len = jnp.where(valid, lengths, jnp.ones_like(lengths))
        unit = jnp.where(valid[:, None], vectors, jnp.ones_like(vectors)) / safe_len[:, None]
        sh = e3nn.spherical_harmonics(
            sh_irreps(max_ell), unit, normalize=False, normalization="component"
        )  # [n_edges, sh_irreps]
        sh = _mask(sh, valid)
        if pairs is not None:  # an edge and its reverse have one length: one basis per pair
            rows = dict(indices_are_sorted=True, unique_indices=True)  # first is ascending
            lengths = lengths.at[pairs.first].get(**rows)  # [n_pairs]
            edge_mask = edge_mask.at[pairs.first].get(**rows)
        radial = bessel_basis(lengths, n_basis=n_basis, cutoff=cutoff)  # [n_rows, n_basis]
        env = polynomial_envelope(lengths, cutoff=cutoff, p=envelope_p)  # [n_rows]
        radial = jnp.where(edge_mask[:, None], radial * env[:, None], jnp.zeros_like(radial))
        return sh, radial


def _mask(x: e3nn.IrrepsArray, mask: jax.Array) -> e3nn.IrrepsArray:
    """Zeros the rows of ``x`` where ``mask`` is False (exactly, without NaN propagation)."""
    return e3nn.IrrepsArray(x.irreps, jnp.where(mask[:, None], x.array, jnp.zeros_like(x.array)))
