"""Loss scaling for FP16 training: immutable pytree states with jmp's interface.

A loss scale multiplies the loss before ``jax.grad`` (so small FP16 gradients do not flush to
zero) and divides the gradients after. :class:`DynamicLossScale` finds the largest scale that keeps
the gradients finite: on a step with a non-finite gradient it divides the scale by ``factor`` (not
below ``min_loss_scale``) and resets its counter; after ``period`` finite steps in a row it
multiplies the scale by ``factor`` (unless that overflows).

Why our own class and not ``jmp.DynamicLossScale`` (jmp 0.0.4): jmp flattens the state to
``(loss_scale, counter)`` with aux data ``(period, factor)`` only, so ``min_loss_scale`` silently
resets to 1 whenever the state passes through ``jit``; and its ``__post_init__`` inspects the
leaves with ``jax.eval_shape``, which makes ``jax.jit(f).lower(loss_scale, ...)`` raise (see
``mpnn_jax.compat`` and ``tests/test_compat.py``). Here ``loss_scale`` and ``counter`` are the
leaves and ``period``, ``factor`` and ``min_loss_scale`` are static aux data (Python numbers), and
the constructor never touches the leaves. ``jmp.Policy`` and the rest of jmp are used unchanged.

Everything here is pure and jittable; a state is updated by returning a new one.

A training step (``params``, ``opt_state`` and ``loss_scale`` are all pytrees)::

    def step(params, opt_state, loss_scale, batch):
        grads = jax.grad(lambda p: loss_scale.scale(loss_fn(p, batch)))(params)
        grads = loss_scale.unscale(grads)
        finite = all_finite(grads)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        params, opt_state = apply_if_finite(finite, (new_params, new_opt_state),
                                            (params, opt_state))
        return params, opt_state, loss_scale.adjust(finite)

Example:
    >>> import jax.numpy as jnp
    >>> ls = DynamicLossScale(jnp.float32(8.0), period=2, min_loss_scale=4.0)
    >>> float(ls.adjust(jnp.array(False)).loss_scale)   # overflow: 8 / 2
    4.0
    >>> float(ls.adjust(jnp.array(False)).adjust(jnp.array(False)).loss_scale)  # floor
    4.0
    >>> float(ls.adjust(jnp.array(True)).adjust(jnp.array(True)).loss_scale)  # 2 good steps
    16.0
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from mpnn_jax.precision.policy import Policy

T = TypeVar("T")


def _scale_tree(tree: T, factor: Any) -> T:
    # ordinary promotion, as in jmp: an FP16 loss times the FP32 scale is FP32, so the scaled loss
    # itself cannot overflow; only the FP16 backward pass can, which is what the scale probes
    return jax.tree_util.tree_map(lambda x: x * factor, tree)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class NoOpLossScale:
    """No loss scaling: ``scale`` and ``unscale`` return their input; a pytree with no leaves."""

    @property
    def loss_scale(self) -> jax.Array:
        """Always 1 (float32 scalar)."""
        return jnp.ones([], jnp.float32)

    def scale(self, tree: T) -> T:
        """Returns ``tree`` unchanged."""
        return tree

    def unscale(self, tree: T) -> T:
        """Returns ``tree`` unchanged."""
        return tree

    def adjust(self, grads_finite: jax.Array) -> NoOpLossScale:
        """Returns ``self``."""
        del grads_finite
        return self

    def tree_flatten(self) -> tuple[tuple[()], None]:
        return (), None

    @classmethod
    def tree_unflatten(cls, aux: None, children: tuple[()]) -> NoOpLossScale:
        del aux, children
        return cls()


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class StaticLossScale:
    """Scales by a fixed ``loss_scale`` (a leaf: changing it does not recompile)."""

    loss_scale: jax.Array

    def scale(self, tree: T) -> T:
        """Multiplies every leaf of ``tree`` by the loss scale (FP32: 16-bit leaves promote)."""
        return _scale_tree(tree, self.loss_scale)

    def unscale(self, tree: T) -> T:
        """Divides every leaf of ``tree`` by the loss scale (multiplies by its inverse)."""
        return _scale_tree(tree, 1.0 / jnp.asarray(self.loss_scale))

    def adjust(self, grads_finite: jax.Array) -> StaticLossScale:
        """Returns ``self``."""
        del grads_finite
        return self

    def tree_flatten(self) -> tuple[tuple[Any], None]:
        return (self.loss_scale,), None

    @classmethod
    def tree_unflatten(cls, aux: None, children: tuple[Any]) -> StaticLossScale:
        del aux
        return cls(*children)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class DynamicLossScale:
    """Dynamic loss scale (jmp's interface; static ``min_loss_scale`` that survives ``jit``).

    Attributes:
        loss_scale: float32 scalar array, the current scale (leaf).
        counter: int32 scalar array, finite steps since the last change (leaf).
        period: finite steps in a row after which the scale grows by ``factor`` (static).
        factor: growth / shrink factor (static).
        min_loss_scale: the scale never drops below this (static Python float).
    """

    loss_scale: jax.Array
    counter: jax.Array = dataclasses.field(default_factory=lambda: np.zeros([], np.int32))
    period: int = 2000
    factor: float = 2.0
    min_loss_scale: float = 1.0

    def __post_init__(self) -> None:
        # static fields only: the leaves may be tracers, ``object()`` or ``ArgInfo`` here
        object.__setattr__(self, "period", int(self.period))
        object.__setattr__(self, "factor", float(self.factor))
        object.__setattr__(self, "min_loss_scale", float(self.min_loss_scale))
        if self.period < 1 or self.factor <= 1.0 or self.min_loss_scale <= 0.0:
            raise ValueError(
                f"need period >= 1, factor > 1, min_loss_scale > 0; got period={self.period}, "
                f"factor={self.factor}, min_loss_scale={self.min_loss_scale}"
            )

    def scale(self, tree: T) -> T:
        """Multiplies every leaf of ``tree`` by the loss scale (FP32: 16-bit leaves promote)."""
        return _scale_tree(tree, self.loss_scale)

    def unscale(self, tree: T) -> T:
        """Divides every leaf of ``tree`` by the loss scale (multiplies by its inverse)."""
        return _scale_tree(tree, 1.0 / jnp.asarray(self.loss_scale))

    def adjust(self, grads_finite: jax.Array) -> DynamicLossScale:
        """The next state, given whether this step's (unscaled) gradients were all finite.

        Args:
            grads_finite: bool scalar, e.g. ``all_finite(grads)``.

        Returns:
            A new :class:`DynamicLossScale`: if finite, the counter advances and every
            ``period``-th finite step multiplies the scale by ``factor`` (kept if that is not
            finite); if not finite, the scale is divided by ``factor`` (floored at
            ``min_loss_scale``) and the counter resets to 0.
        """
        grads_finite = jnp.asarray(grads_finite)
        if grads_finite.ndim != 0:
            raise ValueError(f"grads_finite must be a scalar, got shape {grads_finite.shape}")
        scale = jnp.asarray(self.loss_scale)
        counter = jnp.asarray(self.counter)
        grown = scale * self.factor
        grown = jnp.where(jnp.isfinite(grown), grown, scale)
        if_finite = jnp.where(counter == self.period - 1, grown, scale)
        if_overflow = jnp.maximum(
            jnp.asarray(self.min_loss_scale, scale.dtype), scale / self.factor
        )
        new_scale = jnp.where(grads_finite, if_finite, if_overflow)
        new_counter = jnp.where(grads_finite, (counter + 1) % self.period, jnp.zeros_like(counter))
        return dataclasses.replace(self, loss_scale=new_scale, counter=new_counter)

    def tree_flatten(self) -> tuple[tuple[Any, Any], tuple[int, float, float]]:
        return (self.loss_scale, self.counter), (self.period, self.factor, self.min_loss_scale)

    @classmethod
    def tree_unflatten(
        cls, aux: tuple[int, float, float], children: tuple[Any, Any]
    ) -> DynamicLossScale:
        period, factor, min_loss_scale = aux
        loss_scale, counter = children
        return cls(loss_scale, counter, period, factor, min_loss_scale)


LossScale = NoOpLossScale | StaticLossScale | DynamicLossScale


def all_finite(tree: Any) -> jax.Array:
    """bool scalar: True iff every element of every leaf of ``tree`` is finite (True if empty)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return jnp.array(True)
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]).all()


def select_tree(pred: jax.Array, a: T, b: T) -> T:
    """Leafwise ``a if pred else b`` for two pytrees of the same structure, shapes and dtypes.

    Args:
        pred: bool scalar.
        a: the tree returned where ``pred`` is True.
        b: the tree returned where ``pred`` is False.
    """
    pred = jnp.asarray(pred)
    if pred.ndim != 0 or pred.dtype != jnp.bool_:
        raise ValueError(f"pred must be a bool scalar, got {pred.dtype}{list(pred.shape)}")
    return jax.tree_util.tree_map(
        lambda x, y: jax.lax.select(pred, jnp.asarray(x), jnp.asarray(y)), a, b
    )


def apply_if_finite(grads_finite: jax.Array, new: T, old: T) -> T:
    """``new`` if the step's gradients were finite, else ``old`` (skips a non-finite step).

    Use it on ``(params, opt_state)`` so that an overflowing FP16 step leaves both untouched
    (the optimizer's moments and step count included) while the loss scale shrinks.

    Args:
        grads_finite: bool scalar, ``all_finite(grads)``.
        new: the updated tree (e.g. ``(new_params, new_opt_state)``).
        old: the tree before the step, same structure.
    """
    return select_tree(grads_finite, new, old)


def loss_scale_for(
    policy: Policy,
    *,
    initial: float = 2.0**15,
    period: int = 2000,
    factor: float = 2.0,
    min_loss_scale: float = 1.0,
) -> NoOpLossScale | DynamicLossScale:
    """The loss scale a policy asks for.

    Args:
        policy: a :class:`Policy`; ``policy.loss_scaling == "dynamic"`` gives a dynamic scale.
        initial: the initial scale.
        period: finite steps between increases.
        factor: growth / shrink factor.
        min_loss_scale: floor of the scale.

    Returns:
        ``DynamicLossScale(initial, ...)`` for ``"dynamic"``, else ``NoOpLossScale()``.
    """
    if policy.loss_scaling == "dynamic":
        return DynamicLossScale(
            loss_scale=jnp.asarray(initial, jnp.float32),
            counter=jnp.zeros([], jnp.int32),
            period=period,
            factor=factor,
            min_loss_scale=min_loss_scale,
        )
    return NoOpLossScale()
