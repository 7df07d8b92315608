"""Stage-wise mixed precision: the frozen :class:`Policy`, presets and grammar, loss scaling, audit."""

from mpnn_jax.precision.policy import SEED_CLAIMS, STAGES, Policy, dtype_short, parse_dtype
from mpnn_jax.precision.presets import PRESETS, ablations, get_policy

__all__ = [
    "PRESETS",
    "SEED_CLAIMS",
    "STAGES",
    "Policy",
    "ablations",
    "dtype_short",
    "get_policy",
    "parse_dtype",
]
