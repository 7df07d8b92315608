"""Stage-wise mixed precision: the frozen :class:`Policy`, presets, grammar, loss scaling, audit."""

from mpnn_jax.precision.audit import AuditReport, OpRecord, audit, audit_jaxpr, stage_of
from mpnn_jax.precision.loss_scale import (
    DynamicLossScale,
    LossScale,
    NoOpLossScale,
    StaticLossScale,
    all_finite,
    apply_if_finite,
    loss_scale_for,
    select_tree,
)
from mpnn_jax.precision.policy import SEED_CLAIMS, STAGES, Policy, dtype_short, parse_dtype
from mpnn_jax.precision.presets import PRESETS, ablations, get_policy

__all__ = [
    "PRESETS",
    "SEED_CLAIMS",
    "STAGES",
    "AuditReport",
    "DynamicLossScale",
    "LossScale",
    "NoOpLossScale",
    "OpRecord",
    "Policy",
    "StaticLossScale",
    "ablations",
    "all_finite",
    "apply_if_finite",
    "audit",
    "audit_jaxpr",
    "dtype_short",
    "get_policy",
    "loss_scale_for",
    "parse_dtype",
    "select_tree",
    "stage_of",
]
