"""mpnn_jax: equivariant message-passing interatomic potentials in JAX with audited mixed precision."""

__version__ = "0.1.0"
