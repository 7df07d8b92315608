"""Optimiser, learning-rate schedules and the EMA of the parameters.

:func:`make_optimizer` builds one optax chain::

    clip_by_global_norm -> scale_by_adam / scale_by_amsgrad -> add_decayed_weights (decoupled)
      -> scale_by_learning_rate(schedule) [-> reduce_on_plateau]

Schedules: ``constant``, ``warmup_cosine`` (linear warm-up to ``lr`` over ``warmup_steps``, then
cosine decay to ``min_lr_ratio * lr`` at ``max_steps``) and ``plateau`` (constant with optional
warm-up, multiplied by ``optax.contrib.reduce_on_plateau``'s scale; the chain's ``update`` then
takes ``value=`` the training loss, averaged over ``accumulation_size`` steps).

The EMA (:func:`ema_update`) is what gets evaluated and saved as the best model. Everything is
pure and jittable.

Example:
    >>> opt, schedule = make_optimizer(lr=1e-2, schedule="warmup_cosine", warmup_steps=10,
    ...                                max_steps=100)
    >>> round(float(schedule(5)), 4)
    0.005
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
import optax.contrib

Schedule = Callable[[Any], jax.Array]


def make_schedule(
    *,
    lr: float,
    schedule: str = "constant",
    warmup_steps: int = 0,
    max_steps: int = 1000,
    min_lr_ratio: float = 0.01,
) -> Schedule:
    """The learning rate as a function of the step (before any plateau scaling)."""
    if schedule in ("constant", "plateau"):
        if warmup_steps > 0:
            return optax.join_schedules(
                [optax.linear_schedule(0.0, lr, warmup_steps), optax.constant_schedule(lr)],
                [warmup_steps],
            )
        return optax.constant_schedule(lr)
    if schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=lr,
            warmup_steps=max(warmup_steps, 0),
            decay_steps=max(max_steps, warmup_steps + 1),
            end_value=lr * min_lr_ratio,
        )
    raise ValueError(f"unknown schedule {schedule!r}")


def make_optimizer(
    *,
    lr: float,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    clip_norm: float | None = None,
    schedule: str = "constant",
    warmup_steps: int = 0,
    max_steps: int = 1000,
    min_lr_ratio: float = 0.01,
    plateau_patience: int = 5,
    plateau_factor: float = 0.8,
    plateau_accumulation: int = 100,
) -> tuple[optax.GradientTransformationExtraArgs, Schedule]:
    """Builds the optimiser chain and its schedule.

    Args:
        lr: peak learning rate.
        optimizer: ``"adam"`` or ``"amsgrad"``.
        weight_decay: decoupled (AdamW-style) weight decay, applied to matrices (ndim >= 2).
        clip_norm: clip the global gradient norm to this value (None: no clipping).
        schedule: ``"constant"``, ``"warmup_cosine"`` or ``"plateau"``.
        warmup_steps: linear warm-up steps.
        max_steps: end of the cosine decay.
        min_lr_ratio: final learning rate of the cosine, as a fraction of ``lr``.
        plateau_patience: accumulated windows without improvement before the lr is reduced.
        plateau_factor: multiplier of the lr on a plateau.
        plateau_accumulation: steps whose losses are averaged into one plateau observation.

    Returns:
        ``(optimizer, schedule)``; with ``schedule="plateau"`` call
        ``optimizer.update(grads, state, params, value=loss)``.
    """
    parts = []
    if clip_norm is not None and clip_norm > 0:
        parts.append(optax.clip_by_global_norm(clip_norm))
    if optimizer == "adam":
        parts.append(optax.scale_by_adam())
    elif optimizer == "amsgrad":
        parts.append(optax.scale_by_amsgrad())
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected 'adam' or 'amsgrad'")
    if weight_decay:
        parts.append(
            optax.add_decayed_weights(
                weight_decay, mask=lambda p: jax.tree_util.tree_map(lambda x: x.ndim >= 2, p)
            )
        )
    sched = make_schedule(
        lr=lr,
        schedule=schedule,
        warmup_steps=warmup_steps,
        max_steps=max_steps,
        min_lr_ratio=min_lr_ratio,
    )
    parts.append(optax.scale_by_learning_rate(sched))
    if schedule == "plateau":
        parts.append(
            optax.contrib.reduce_on_plateau(
                factor=plateau_factor,
                patience=plateau_patience,
                accumulation_size=plateau_accumulation,
            )
        )
    return optax.chain(*parts), sched


def plateau_scale(opt_state: Any) -> jax.Array:
    """The current reduce-on-plateau multiplier of the lr (1 when there is no plateau stage)."""
    for s in jax.tree_util.tree_leaves(
        opt_state, is_leaf=lambda x: isinstance(x, optax.contrib.ReduceLROnPlateauState)
    ):
        if isinstance(s, optax.contrib.ReduceLROnPlateauState):
            return jnp.asarray(s.scale)
    return jnp.ones(())


def current_lr(schedule: Schedule, opt_state: Any, step: Any) -> float:
    """The effective learning rate at ``step`` (schedule times plateau scale)."""
    return float(schedule(step)) * float(plateau_scale(opt_state))


def ema_update(ema: Any, params: Any, step: jax.Array, *, decay: float) -> Any:
    """One EMA step with the usual warm-up ``d = min(decay, (1 + step) / (10 + step))``.

    Args:
        ema: the current average (same pytree as ``params``).
        params: the new parameters.
        step: the number of updates done before this one (int scalar).
        decay: the asymptotic decay.

    Returns:
        ``d * ema + (1 - d) * params``.
    """
    step = jnp.asarray(step, jnp.float32)
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
