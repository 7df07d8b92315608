"""XLA compiler options for mpnn_jax's programs, and the ``jit`` that applies them.

Measured (one H200, JAX 0.11.2, NequIP-M on 10,125 atoms of water, 547k edges, e3nn backend,
``experiments/perf/fusion_flags.sh``; `experiments/results/benchmarks/PERFORMANCE_LOG.md` entry 8):
XLA:GPU's multi-output fusion pass merged the weight gradients of three interaction layers into
one loop fusion of 37 operands that re-gathers every receiver's cotangent inside the kernel (14.3
of the 52 ms of the bf16-mixed E+F program). Without that pass, E+F runs 1.21x (fp32) and 1.18x
(bf16-mixed) faster and training 1.21x / 1.19x, with 28% less memory in fp32 E+F. So on GPUs the
default options disable it (:data:`GPU_OPTIONS`); on other platforms nothing changes (on the CPU it
was not faster).

``MPNN_JAX_XLA_OPTIONS`` overrides the choice for a process: ``"default"`` (this module's choice
for the platform), ``"none"`` (XLA's own defaults, e.g. to compare side by side), or
``"gpu"`` (:data:`GPU_OPTIONS` on any platform). Options given here are per program and replace an
``--xla_disable_hlo_passes`` given in ``XLA_FLAGS`` for these programs.

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

#: per-program XLA options on GPUs (fields of XLA's DebugOptions)
GPU_OPTIONS: dict[str, str] = {"xla_disable_hlo_passes": "multi_output_fusion"}

_CHOICES = ("default", "none", "gpu")


def compiler_options(platform: str | None = None) -> dict[str, str]:
    """The XLA compiler options mpnn_jax compiles its programs with on ``platform``.

    Args:
        platform: ``"gpu"``, ``"cpu"``, ``"tpu"``, ...; default ``jax.default_backend()``.

    Returns:
        A new dict, ``{}`` where XLA's defaults are kept.

    Raises:
        ValueError: ``MPNN_JAX_XLA_OPTIONS`` is set to something other than default/none/gpu.
    """
    choice = os.environ.get("MPNN_JAX_XLA_OPTIONS", "default").strip().lower() or "default"
    if choice not in _CHOICES:
        raise ValueError(f"MPNN_JAX_XLA_OPTIONS={choice!r}; expected one of {list(_CHOICES)}")
    if choice == "none":
        return {}
    if choice == "gpu":
        return dict(GPU_OPTIONS)
    platform = platform or jax.default_backend()
    return dict(GPU_OPTIONS) if platform in ("gpu", "cuda", "rocm") else {}


def jit(fn: Callable, **kwargs: Any) -> Callable:
    """``jax.jit(fn, **kwargs)`` with :func:`compiler_options` (explicit ``compiler_options`` in
    ``kwargs`` are merged over them)."""
    options = {**compiler_options(), **(kwargs.pop("compiler_options", None) or {})}
    return jax.jit(fn, compiler_options=options or None, **kwargs)
