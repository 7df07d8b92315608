"""Models mapping ``(vectors, species, senders, receivers, edge_mask)`` to per-atom energies (eV).

``MACE`` is imported lazily (it lives in :mod:`mpnn_jax.models.mace`).
"""

from mpnn_jax.models.factory import MODELS, build_model
from mpnn_jax.models.nequip import NequIP, hidden_irreps_from

__all__ = ["MACE", "MODELS", "NequIP", "build_model", "hidden_irreps_from"]


def __getattr__(name: str):
    if name == "MACE":
        from mpnn_jax.models.mace import MACE

        return MACE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
