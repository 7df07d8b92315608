"""The immutable training state and the jitted train step with loss scaling.

:class:`TrainState` is a pytree: ``step``, ``params`` (FP32 master weights), ``opt_state``,
``ema_params``, ``loss_scale`` (from :func:`mpnn_jax.precision.loss_scale_for`), ``rng``,
``epoch`` and ``position`` (batches of the current epoch already consumed: the data order is a
pure function of (seed, epoch), so these two integers locate the next batch), and ``n_skipped``.

:func:`make_train_step` returns ``step(state, graph) -> (new_state, metrics)``:

1. ``loss`` and ``grads = d(loss_scale.scale(loss)) / d params``, then ``loss_scale.unscale``;
2. ``finite = all_finite(grads) & isfinite(loss)``;
3. the optimizer and EMA update, kept only if ``finite`` (``select_tree``: params, opt_state and
   EMA unchanged on a skipped step);
4. ``loss_scale.adjust(finite)`` (a dynamic scale halves on overflow and grows after ``period``
   finite steps); ``n_skipped`` counts skipped steps; ``step`` and ``position`` always advance.

Example:
    >>> # step = jax.jit(make_train_step(predict, loss_fn=loss_fn, optimizer=opt))
    >>> # state, m = step(state, batch)  # m: loss, grad_norm, loss_scale, skipped
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import jraph
import optax

from mpnn_jax.nn.backends import training_program
from mpnn_jax.precision import all_finite, select_tree
from mpnn_jax.training.loss import LossFn
from mpnn_jax.training.optim import ema_update

Predictor = Callable[[Any, jraph.GraphsTuple], dict]
BatchLoss = Callable[[Any, jraph.GraphsTuple], tuple[jax.Array, dict]]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree; update by returning a new one).

    Attributes:
        step: int32 [] optimisation steps attempted (skipped ones included).
        params: the FP32 master parameters.
        opt_state: the optax state.
        ema_params: exponential moving average of ``params`` (the evaluated weights).
        loss_scale: ``NoOpLossScale`` or ``DynamicLossScale``.
        rng: uint32 [2] PRNG key (split once per step).
        epoch: int32 [] current epoch of the data order.
        position: int32 [] batches of ``epoch`` already consumed.
        n_skipped: int32 [] steps skipped because of non-finite gradients.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    loss_scale: Any
    rng: jax.Array
    epoch: jax.Array
    position: jax.Array
    n_skipped: jax.Array


def init_train_state(
    *, params: Any, optimizer: optax.GradientTransformation, loss_scale: Any, rng: jax.Array
) -> TrainState:
    """A fresh state at step 0 (EMA starts at the initial parameters)."""
    zero = jnp.zeros((), jnp.int32)
    return TrainState(
        step=zero,
        params=params,
        opt_state=optimizer.init(params),
        ema_params=jax.tree_util.tree_map(jnp.array, params),
        loss_scale=loss_scale,
        rng=rng,
        epoch=zero,
        position=zero,
        n_skipped=zero,
    )


def make_train_step(
    predict: Predictor,
    *,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformationExtraArgs,
    ema_decay: float | None = 0.99,
    batches_per_epoch: int | None = None,
    plateau: bool = False,
    loss_over_devices: Callable[[BatchLoss], BatchLoss] | None = None,
    batches_per_step: int = 1,
) -> Callable[[TrainState, jraph.GraphsTuple], tuple[TrainState, dict]]:
    """Returns the (unjitted) train step ``step(state, graph) -> (state, metrics)``.

    Args:
        predict: ``predict(params, graph) -> {"energy", "forces", ...}`` (see
            ``mpnn_jax.potential.make_predictor``).
        loss_fn: ``loss_fn(pred, graph) -> (loss, terms)`` (see ``make_loss_fn``).
        optimizer: an optax transformation (from ``make_optimizer``).
        ema_decay: EMA decay; None keeps ``ema_params`` equal to ``params``.
        batches_per_epoch: when given, ``position`` wraps to 0 and ``epoch`` advances after this
            many batches.
        plateau: pass ``value=loss`` to ``optimizer.update`` (reduce-on-plateau schedule).
        loss_over_devices: turns the per-batch ``loss(params, graph) -> (loss, terms)`` into the
            loss of the step's input, e.g. ``mpnn_jax.training.parallel.mean_over_devices`` (the
            mean over a leading device axis of stacked batches); None: one batch per step.
        batches_per_step: host batches consumed per step (``position`` advances by this much).

    Returns:
        A pure function; ``metrics`` holds ``loss``, ``energy``, ``forces``, ``stress`` (terms),
        ``grad_norm``, ``loss_scale`` (the scale used in this step), ``skipped`` (bool).
    """

    def batch_loss(params, graph):
        return loss_fn(predict(params, graph), graph)

    total_loss = batch_loss if loss_over_devices is None else loss_over_devices(batch_loss)

    def scaled_loss(params, loss_scale, graph):
        loss, terms = total_loss(params, graph)
        return loss_scale.scale(loss), (loss, terms)

    def step(state: TrainState, graph: jraph.GraphsTuple) -> tuple[TrainState, dict]:
        rng, _ = jax.random.split(state.rng)
        with training_program():  # backends' kernel choices for weight gradients
            grads, (loss, terms) = jax.grad(scaled_loss, has_aux=True)(
                state.params, state.loss_scale, graph
            )
        grads = state.loss_scale.unscale(grads)
        finite = jnp.logical_and(all_finite(grads), jnp.isfinite(loss))
        extra = {"value": loss} if plateau else {}
        updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params, **extra)
        new_params = optax.apply_updates(state.params, updates)
        if ema_decay is None:
            new_ema = new_params
        else:
            new_ema = ema_update(state.ema_params, new_params, state.step, decay=ema_decay)
        params, opt_state, ema = select_tree(
            finite,
            (new_params, new_opt_state, new_ema),
            (state.params, state.opt_state, state.ema_params),
        )
        position = state.position + batches_per_step
        epoch = state.epoch
        if batches_per_epoch is not None:
            epoch = epoch + position // batches_per_epoch
            position = position % batches_per_epoch
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            ema_params=ema,
            loss_scale=state.loss_scale.adjust(finite),
            rng=rng,
            epoch=epoch,
            position=position,
            n_skipped=state.n_skipped + jnp.where(finite, 0, 1),
        )
        metrics = {
            "loss": loss,
            **terms,
            "grad_norm": optax.tree.norm(grads),
            "loss_scale": jnp.asarray(state.loss_scale.loss_scale),
            "skipped": jnp.logical_not(finite),
        }
        return new_state, metrics

    return step


def make_multi_step(
    step: Callable[[TrainState, jraph.GraphsTuple], tuple[TrainState, dict]],
) -> Callable[[TrainState, jraph.GraphsTuple], tuple[TrainState, dict]]:
    """``multi(state, graphs) -> (state, metrics)``: ``k`` optimiser steps in one device call.

    ``graphs`` holds ``k`` batches of one padded shape stacked on a leading axis (every leaf
    ``[k, ...]``); ``step`` (from :func:`make_train_step`) runs over them in a ``lax.scan``, so
    the host dispatches once per ``k`` steps. ``metrics`` leaves are ``[k]``, one per step. The
    result equals ``k`` calls of ``step`` up to the order XLA picks for floating-point sums.
    """

    def multi(state: TrainState, graphs: jraph.GraphsTuple) -> tuple[TrainState, dict]:
        return jax.lax.scan(step, state, graphs)

    return multi
