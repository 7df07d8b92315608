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
3. **XLA:CPU's experimental YNNPACK fusions (jaxlib 0.10.x) compute wrong FP32 forces** for MACE
   with >= 64 channels and correlation 3: the force of a 64-channel model differs from its own
   fp64 force (which matches finite differences) by 3-80% of the largest force, and the error
   changes from run to run (a race); 48 channels and below, NequIP, FP64 and the BF16/FP16 update
   stages are right. :func:`disable_cpu_ynn_fusion` adds
   ``--xla_cpu_experimental_ynn_fusion_type=`` (no YNNPACK fusion) to ``XLA_FLAGS`` before JAX
   starts its CPU backend, on the jaxlib versions where we saw the bug and the flag (0.10.x); an
   ``XLA_FLAGS`` that already names the flag, or ``MPNN_JAX_NO_XLA_WORKAROUNDS=1``, is left alone.
   GPU programs are not affected (the flag is CPU-only).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import MutableMapping

import jax
import jax.tree_util as jtu
import jaxlib

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


#: What :func:`disable_cpu_ynn_fusion` adds to ``XLA_FLAGS``.
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def disable_cpu_ynn_fusion(
    environ: MutableMapping[str, str] = os.environ, version: str = jaxlib.__version__
) -> bool:
    """Turns off XLA:CPU's YNNPACK fusions (bug 3 above) on jaxlib 0.10.x.

    Returns:
        True if ``XLA_FLAGS`` was changed. Warns when JAX's backends had already started (then
        the flag cannot take effect in this process).

    Example:
        >>> env = {}
        >>> disable_cpu_ynn_fusion(env, version="0.10.2"), env
        (True, {'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type='})
        >>> disable_cpu_ynn_fusion(env, version="0.10.2")  # already there
        False
        >>> disable_cpu_ynn_fusion({}, version="0.9.2")  # flag not known to exist there
        False
    """
    major_minor = tuple(int(x) for x in version.split(".")[:2])
    flags = environ.get("XLA_FLAGS", "")
    if (
        major_minor != (0, 10)
        or "xla_cpu_experimental_ynn_fusion_type" in flags
        or environ.get("MPNN_JAX_NO_XLA_WORKAROUNDS") == "1"
    ):
        return False
    environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
    if environ is os.environ and _backends_started():
        warnings.warn(
            "mpnn_jax was imported after JAX started its backends, so XLA:CPU's YNNPACK fusions "
            "stay on: FP32 forces of MACE models with >= 64 channels may be wrong on the CPU "
            "(see mpnn_jax.compat). Import mpnn_jax first, or set XLA_FLAGS="
            f"{YNN_FLAG} yourself.",
            stacklevel=2,
        )
    return True


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(getattr(xla_bridge, "_backends", {}))
    except Exception:  # noqa: BLE001 - a private API: assume not started if it moved
        return False


disable_cpu_ynn_fusion()
