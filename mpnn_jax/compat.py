"""Workarounds for upstream bugs, all in one place (imported by ``import mpnn_jax``).

Each workaround names the bug it covers, and ``tests/test_compat.py`` has two tests for it: one that
fails if the workaround stops working, and one (``xfail(strict=True)``) that starts failing the day
upstream fixes the bug, telling us the workaround can go.

1. **jraph 0.0.6.dev0 and e3nn-jax 0.21 call ``jax.tree_map`` / ``jax.tree_leaves``**, which JAX
   removed in 0.6. This breaks ``jraph.zero_out_padding``, ``jraph.get_fully_connected_graph``
   (with node or global features) and ``e3nn.scatter_mean(..., nel=..., map_back=True)`` with
   ``AttributeError``. :func:`patch_jax_tree_aliases` puts the old names back as aliases of the
   ``jax.tree_util`` functions, only where they are missing (a no-op on an older JAX, or once JAX
   or the callers change).
2. **jmp 0.0.4's ``DynamicLossScale``** flattens to ``(loss_scale, counter)`` with aux data
   ``(period, factor)``: ``min_loss_scale`` is dropped (reset to 1) whenever the loss scale passes
   through ``jit``, and its ``__post_init__`` calls ``jax.eval_shape`` on the leaves, so
   ``jax.jit(f).lower(loss_scale, ...)`` fails with ``TypeError`` (the leaves are ``ArgInfo``
   there). The fix is our own :class:`mpnn_jax.precision.loss_scale.DynamicLossScale`; nothing is
   patched in jmp.
"""

from __future__ import annotations

import jax
import jax.tree_util as jtu

#: ``jax.<old name>`` -> the ``jax.tree_util`` function it used to alias.
TREE_ALIASES: dict[str, str] = {
    "tree_map": "tree_map",
    "tree_leaves": "tree_leaves",
    "tree_flatten": "tree_flatten",
    "tree_unflatten": "tree_unflatten",
    "tree_structure": "tree_structure",
    "tree_reduce": "tree_reduce",
    "tree_transpose": "tree_transpose",
    "tree_all": "tree_all",
}


def patch_jax_tree_aliases() -> list[str]:
    """Restores the removed ``jax.tree_*`` aliases that jraph and e3nn-jax still call.

    Idempotent: a name that ``jax`` already has is left alone.

    Returns:
        The names added by this call (empty if nothing was missing).

    Example:
        >>> import jax
        >>> from mpnn_jax.compat import patch_jax_tree_aliases
        >>> _ = patch_jax_tree_aliases()
        >>> jax.tree_map is jax.tree_util.tree_map
        True
        >>> patch_jax_tree_aliases()
        []
    """
    added = []
    for old, new in TREE_ALIASES.items():
        if not hasattr(jax, old) and hasattr(jtu, new):
            setattr(jax, old, getattr(jtu, new))
            added.append(old)
    return added


patch_jax_tree_aliases()
