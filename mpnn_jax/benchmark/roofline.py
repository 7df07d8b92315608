"""A roofline account of a compiled program: XLA's FLOPs and bytes against the device's ceilings.

:func:`cost_analysis` reads XLA's own count of FLOPs and bytes accessed; :func:`roofline` turns it
into the lower-bound time ``max(flops / matmul ceiling of the preset, bytes / bandwidth)`` and
measured / lower bound. The ceilings are measured on this device by :func:`device_ceilings` (run
once per session: it times large matmuls and a copy), else :data:`H100_CEILINGS`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mpnn_jax.benchmark.timing import time_compiled
from mpnn_jax.precision import get_policy

#: H100 SXM ceilings measured in this project (``experiments/results/benchmarks``, upper ends):
#: matmul TFLOP/s per dtype (``fp32`` = XLA's default precision, TF32) and copy GB/s (read +
#: write). Used when :func:`device_ceilings` was not measured in the same run.
H100_CEILINGS: dict[str, float] = {
    "matmul_tflops_bf16": 641.0,
    "matmul_tflops_fp16": 617.0,
    "matmul_tflops_fp32": 355.0,
    "matmul_tflops_fp32-highest": 50.0,
    "copy_GBps": 2700.0,
}


def cost_analysis(compiled: Any) -> dict[str, float | None]:
    """FLOPs and bytes accessed of a compiled XLA program (XLA's own count), None if not reported.

    ``compiled.cost_analysis()`` is a dict in recent JAX and a list with one dict per program in
    older ones (summed here); keys that a backend does not report come back as None.
    """
    try:
        raw = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - backends without a cost model raise various errors
        raw = None
    if isinstance(raw, dict):
        raw = [raw]
    out: dict[str, float | None] = {"flops": None, "bytes_accessed": None}
    for key, name in (("flops", "flops"), ("bytes_accessed", "bytes accessed")):
        values = [float(d[name]) for d in (raw or []) if isinstance(d, dict) and name in d]
        out[key] = sum(values) if values else None
    return out


def ceiling_key(preset: str) -> str | None:
    """The :func:`device_ceilings` matmul key of a preset: its compute dtype and matmul precision.

    Example:
        >>> ceiling_key("bf16-mixed"), ceiling_key("fp32"), ceiling_key("fp32-highest")
        ('matmul_tflops_bf16', 'matmul_tflops_fp32', 'matmul_tflops_fp32-highest')
    """
    policy = get_policy(preset)
    name = jnp.dtype(policy.compute_dtype).name
    if name == "float32":
        return (
            "matmul_tflops_fp32-highest"
            if policy.matmul_precision == "highest"
            else "matmul_tflops_fp32"
        )
    return {"bfloat16": "matmul_tflops_bf16", "float16": "matmul_tflops_fp16"}.get(name)


def roofline(
    cost: dict[str, float | None],
    *,
    preset: str,
    median_ms: float | None,
    ceilings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Lower-bound time of a compiled program from its FLOPs and bytes against device ceilings.

    ``flops_ms`` = FLOPs at the preset's matmul ceiling (every FLOP on tensor cores: optimistic,
    most FLOPs of these models are elementwise), ``bytes_ms`` = bytes accessed at the copy
    bandwidth (XLA counts each fusion's operands and results once: caches can beat it only for
    arrays that fit in L2), ``lower_bound_ms`` = the larger, ``bound`` = which one, and
    ``measured_over_bound`` = ``median_ms / lower_bound_ms``.

    Args:
        cost: :func:`cost_analysis` of the program.
        preset: precision preset (selects the matmul ceiling, :func:`ceiling_key`).
        median_ms: measured time, or None.
        ceilings: :func:`device_ceilings` of this device; None: :data:`H100_CEILINGS`.

    Returns:
        A JSON-able dict; entries that cannot be computed are None.

    Example:
        >>> r = roofline({"flops": 6.41e11, "bytes_accessed": 2.7e9}, preset="bf16-mixed",
        ...              median_ms=4.0)
        >>> round(r["flops_ms"], 3), round(r["bytes_ms"], 3), r["bound"], r["measured_over_bound"]
        (1.0, 1.0, 'flops', 4.0)
    """
    source = "measured" if ceilings else "h100-default"
    ceilings = ceilings or H100_CEILINGS
    flops, nbytes = cost.get("flops"), cost.get("bytes_accessed")
    key = ceiling_key(preset)
    tflops = ceilings.get(key) if key else None
    bandwidth = ceilings.get("copy_GBps")
    flops_ms = flops / (tflops * 1e12) * 1e3 if flops and tflops else None
    bytes_ms = nbytes / (bandwidth * 1e9) * 1e3 if nbytes and bandwidth else None
    bounds = {k: v for k, v in (("flops", flops_ms), ("bytes", bytes_ms)) if v is not None}
    lower = max(bounds.values()) if bounds else None
    return {
        "flops": flops,
        "bytes_accessed": nbytes,
        "intensity_flop_per_byte": flops / nbytes if flops and nbytes else None,
        "ceiling_tflops": tflops,
        "ceiling_GBps": bandwidth,
        "ceilings_source": source,
        "flops_ms": flops_ms,
        "bytes_ms": bytes_ms,
        "lower_bound_ms": lower,
        "bound": max(bounds, key=bounds.get) if bounds else None,
        "measured_over_bound": median_ms / lower if lower and median_ms else None,
    }


def device_ceilings(*, n: int = 8192, copy_mib: int = 2048, repeats: int = 10) -> dict[str, float]:
    """Measured ceilings of this device: matmul TFLOP/s per dtype and copy bandwidth (GB/s).

    ``fp32`` runs at XLA's default precision (TF32 on NVIDIA GPUs), ``fp32-highest`` at full
    FP32; the copy counts bytes read plus bytes written.
    """
    out: dict[str, float] = {}
    key = jax.random.PRNGKey(0)
    for label, dtype, precision in (
        ("bf16", jnp.bfloat16, None),
        ("fp16", jnp.float16, None),
        ("fp32", jnp.float32, None),
        ("fp32-highest", jnp.float32, "highest"),
    ):
        a = jax.random.normal(key, (n, n), dtype)
        b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype)
        f = jax.jit(lambda x, y, p=precision: jnp.matmul(x, y, precision=p))
        t = time_compiled(f, [(a, b)], warmup=2, repeats=repeats)["median_ms"]
        out[f"matmul_tflops_{label}"] = 2 * n**3 / (t * 1e-3) / 1e12
    x = jnp.ones((copy_mib * 2**20 // 4,), jnp.float32)
    f = jax.jit(lambda v: v * 2.0)
    t = time_compiled(f, [(x,)], warmup=2, repeats=repeats)["median_ms"]
    out["copy_GBps"] = 2 * x.size * 4 / (t * 1e-3) / 1e9
    return out
