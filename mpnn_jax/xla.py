"""XLA compiler options per model, and the ``jit`` that applies them.

Measured (one H200, JAX 0.11.2, water, `experiments/perf/fusion_flags.sh`; PERFORMANCE_LOG.md
entry 8): XLA:GPU's multi-output fusion pass merged NequIP's weight gradients of three interaction
layers into one loop fusion of 37 operands that re-gathers every receiver's cotangent inside the
kernel (14.3 of the 52 ms of NequIP-M's bf16-mixed E+F program at 10,125 atoms). Without that
pass, NequIP-M (e3nn backend) ran E+F 1.21x (fp32) and 1.18x (bf16-mixed) faster and training
1.21x / 1.19x, with 28% less memory in fp32 E+F; but MACE MP-S (e3nn, 3,000 atoms) ran 7-11%
*slower*, and NequIP-M with the ``cueq`` kernels 1% slower. So the option is a property of the
model: :func:`options_for` gives :data:`GPU_OPTIONS` to NequIP with the ``e3nn`` backend on GPUs,
and nothing (XLA's defaults) to every other model, backend and platform.

``MPNN_JAX_XLA_OPTIONS`` overrides the choice for a process: ``"default"`` (the rule above),
``"none"`` (XLA's own defaults for every program, e.g. to compare side by side), or ``"gpu"``
(:data:`GPU_OPTIONS` for every program, on any platform). Options given here are per program;
they set the same DebugOptions field as ``--xla_disable_hlo_passes`` in ``XLA_FLAGS``, so for these
programs expect them to take its place (not tested).

Example:
    >>> import jax.numpy as jnp
    >>> f = jit(lambda x: 2.0 * x)
    >>> float(f(jnp.float32(1.5)))
    3.0
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax

#: the per-program XLA options of :func:`wants_gpu_options` models on GPUs (DebugOptions fields)
GPU_OPTIONS: dict[str, str] = {"xla_disable_hlo_passes": "multi_output_fusion"}

_CHOICES = ("default", "none", "gpu")


def _choice() -> str:
    choice = os.environ.get("MPNN_JAX_XLA_OPTIONS", "default").strip().lower() or "default"
    if choice not in _CHOICES:
        raise ValueError(f"MPNN_JAX_XLA_OPTIONS={choice!r}; expected one of {list(_CHOICES)}")
    return choice


def wants_gpu_options(model: Any, platform: str | None = None) -> bool:
    """Whether ``model`` was measured faster without multi-output fusion: NequIP (any size) on
    the ``e3nn`` backend (``"auto"`` resolved for ``platform``, default this process's)."""
    from mpnn_jax.nn.backends import resolve

    backend = resolve(getattr(model, "backend", "e3nn"), platform)
    return type(model).__name__ == "NequIP" and backend == "e3nn"


def options_for(model: Any = None, platform: str | None = None) -> dict[str, str]:
    """The XLA compiler options mpnn_jax compiles ``model``'s programs with on ``platform``.

    Args:
        model: the Flax module whose predictor, training step or MD block is compiled;
            ``None`` for other programs (XLA's defaults unless ``MPNN_JAX_XLA_OPTIONS=gpu``).
        platform: ``"gpu"``, ``"cpu"``, ``"tpu"``, ...; default ``jax.default_backend()``.

    Returns:
        A new dict, ``{}`` where XLA's defaults are kept.

    Raises:
        ValueError: ``MPNN_JAX_XLA_OPTIONS`` is set to something other than default/none/gpu.
    """
    choice = _choice()
    if choice == "none":
        return {}
    if choice == "gpu":
        return dict(GPU_OPTIONS)
    platform = platform or jax.default_backend()
    on_gpu = platform in ("gpu", "cuda", "rocm")
    return (
        dict(GPU_OPTIONS)
        if on_gpu and model is not None and wants_gpu_options(model, platform)
        else {}
    )


def jit(fn: Callable, *, model: Any = None, **kwargs: Any) -> Callable:
    """``jax.jit(fn, **kwargs)`` with :func:`options_for` ``(model)`` (explicit
    ``compiler_options`` in ``kwargs`` are merged over them)."""
    options = {**options_for(model), **(kwargs.pop("compiler_options", None) or {})}
    return jax.jit(fn, compiler_options=options or None, **kwargs)
