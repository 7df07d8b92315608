"""Species embedding: an FP32 table of scalar features per species (``embedding`` stage).

Equivalent to a linear layer on one-hot species vectors (as in NequIP and MACE). Jittable.
"""

from __future__ import annotations

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp

from mpnn_jax.nn.ops import take_rows
from mpnn_jax.precision import Policy


def embed_species(
    table: jax.Array, species: jax.Array, *, irreps_out: e3nn.Irreps, policy: Policy
) -> e3nn.IrrepsArray:
    """Looks up ``table[species]`` and returns it in the embedding dtype.

    Args:
        table: [n_species, irreps_out.dim] FP32 table.
        species: int [n_nodes] species indices.
        irreps_out: scalar irreps of the embedding, e.g. ``"32x0e"``.
        policy: precision policy.

    Returns:
        [n_nodes, irreps_out] IrrepsArray in the ``embedding`` dtype.
    """
    with Policy.scope("embedding"):
        feats = take_rows(policy, "embedding", table, species)  # [n_nodes, dim]
        return e3nn.IrrepsArray(irreps_out, feats)


class SpeciesEmbedding(nn.Module):
    """Flax shell of :func:`embed_species`.

    Attributes:
        n_species: number of species.
        irreps_out: scalar irreps (only ``0e`` irreps are allowed: an embedding is invariant).
        policy: precision policy.

    Example:
        >>> from mpnn_jax.precision import get_policy
        >>> emb = SpeciesEmbedding(3, "8x0e", get_policy("fp32"))
        >>> s = jnp.array([0, 2, 1])
        >>> emb.apply(emb.init(jax.random.PRNGKey(0), s), s).shape
        (3, 8)
    """

    n_species: int
    irreps_out: str | e3nn.Irreps
    policy: Policy

    @nn.compact
    def __call__(self, species: jax.Array) -> e3nn.IrrepsArray:
        irreps = e3nn.Irreps(self.irreps_out)
        if not all(ir == e3nn.Irrep("0e") for _, ir in irreps):
            raise ValueError(f"SpeciesEmbedding needs 0e irreps, got {irreps}")
        table = self.param(
            "embedding", nn.initializers.normal(1.0), (self.n_species, irreps.dim), jnp.float32
        )
        return embed_species(table, species, irreps_out=irreps, policy=self.policy)
