"""One factory for every model: ``build_model(name, *, policy, n_species, cutoff, ...)``.

Configs live at the edge (experiments, CLI) and build models through this function. Array-valued
arguments (``atomic_energies``) are turned into tuples so that the Flax module stays hashable.

Example:
    >>> from mpnn_jax.precision import get_policy
    >>> m = build_model("nequip", policy=get_policy("fp32"), n_species=2, cutoff=4.0,
    ...                 avg_num_neighbors=8.0, atomic_energies=[-1.0, -2.0], n_layers=2)
    >>> type(m).__name__, m.atomic_energies
    ('NequIP', (-1.0, -2.0))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import numpy as np

from mpnn_jax.precision import Policy, get_policy

MODELS = ("nequip", "mace")


def build_model(
    name: str,
    *,
    policy: Policy | str,
    n_species: int,
    cutoff: float,
    avg_num_neighbors: float = 1.0,
    atomic_energies: Sequence[float] | np.ndarray | None = None,
    scale: float = 1.0,
    shift: float = 0.0,
    backend: str = "e3nn",
    **sizes: Any,
) -> nn.Module:
    """Builds ``"nequip"`` or ``"mace"``.

    Args:
        name: model name (case-insensitive), one of ``MODELS``.
        policy: a :class:`Policy` or a spec string for :func:`get_policy`.
        n_species: number of species.
        cutoff: cutoff radius (Å).
        avg_num_neighbors: normalisation of neighbour sums.
        atomic_energies: E0 per species (eV) or ``None``.
        scale: energy scale (eV).
        shift: per-atom energy shift (eV).
        backend: convolution and symmetric-contraction backend (:mod:`mpnn_jax.nn.backends`;
            ``"auto"``: the fused Pallas kernels on NVIDIA GPUs, the reference elsewhere),
            checked here so that an unknown or uninstalled one fails before any tracing.
        **sizes: model-specific hyperparameters (e.g. ``n_layers``, ``hidden_irreps``,
            ``max_ell``, ``n_basis``, ``radial_features``); lists become tuples.

    Returns:
        The (unbound) Flax module.

    Raises:
        ValueError: unknown model name, or unknown or unavailable backend.
    """
    from mpnn_jax.nn.backends import get_backend

    policy = get_policy(policy)
    get_backend(backend)
    common = dict(
        policy=policy,
        n_species=int(n_species),
        cutoff=float(cutoff),
        avg_num_neighbors=float(avg_num_neighbors),
        atomic_energies=None
        if atomic_energies is None
        else tuple(float(e) for e in np.asarray(atomic_energies).ravel()),
        scale=float(scale),
        shift=float(shift),
        backend=backend,
    )
    sizes = {k: (tuple(v) if isinstance(v, list) else v) for k, v in sizes.items()}
    key = name.lower()
    if key == "nequip":
        from mpnn_jax.models.nequip import NequIP

        return NequIP(**common, **sizes)
    if key == "mace":
        from mpnn_jax.models.mace import MACE

        return MACE(**common, **sizes)
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
