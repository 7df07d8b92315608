"""mpnn_jax: equivariant message-passing interatomic potentials in JAX, audited mixed precision."""

from mpnn_jax import compat  # noqa: F401  (restores jax.tree_* aliases that jraph/e3nn-jax call)

__version__ = "0.1.0"
