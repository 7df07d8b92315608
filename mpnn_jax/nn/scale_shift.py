"""Per-atom energy ``E_i = scale * x_i + shift + E0[species_i]`` in the ``energy`` dtype.

A per-atom energy of -3.7 eV held in BF16 is resolved only to ~15 meV, so the readout output is
cast to the energy dtype (FP32 or FP64) *before* the scale, shift and E0 are applied. The scale,
shift and E0 are constants (module attributes), not trained parameters. Jittable.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mpnn_jax.precision import Policy


def scale_shift(
    x: jax.Array,
    species: jax.Array,
    *,
    scale: float,
    shift: float,
    atomic_energies: Sequence[float] | None,
    policy: Policy,
) -> jax.Array:
    """Pure scale/shift/E0.

    Args:
        x: [n_nodes] readout output (any float dtype).
        species: int [n_nodes].
        scale: energy scale in eV.
        shift: energy shift per atom in eV.
        atomic_energies: E0 per species in eV (``None``: zeros).
        policy: precision policy.

    Returns:
        [n_nodes] per-atom energies in eV, in the ``energy`` dtype.
    """
    with Policy.scope("energy"):
        dtype = policy.dtype("energy")
        x = policy.cast("energy", x)
        e = scale * x + shift
        if atomic_energies is not None:
            e0 = jnp.asarray(np.asarray(atomic_energies, dtype=np.float64), dtype=dtype)
            e = e + e0[species]
        return e  # [n_nodes]


class ScaleShift(nn.Module):
    """Flax shell of :func:`scale_shift` (no parameters).

    Attributes:
        scale: energy scale (eV).
        shift: per-atom shift (eV).
        atomic_energies: E0 per species (eV), a tuple (hashable), or ``None``.
        policy: precision policy.

    Example:
        >>> from mpnn_jax.precision import get_policy
        >>> m = ScaleShift(2.0, 0.5, (-1.0, -3.0), get_policy("fp32"))
        >>> m.apply({}, jnp.array([1.0, 1.0]), jnp.array([0, 1])).tolist()
        [1.5, -0.5]
    """

    scale: float
    shift: float
    atomic_energies: tuple[float, ...] | None
    policy: Policy

    @nn.compact
    def __call__(self, x: jax.Array, species: jax.Array) -> jax.Array:
        return scale_shift(
            x,
            species,
            scale=self.scale,
            shift=self.shift,
            atomic_energies=self.atomic_energies,
            policy=self.policy,
        )
