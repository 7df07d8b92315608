"""Wall time and memory of compiled programs, and the facts about the device they ran on.

* :func:`time_compiled`: the median (and spread) of ``repeats`` calls after warm-up, each
  synchronised with ``block_until_ready``, rotating among several inputs so caches do not flatter.
* :func:`compiled_bytes`: arguments + outputs + temporaries of a compiled program (XLA's memory
  analysis); :func:`peak_device_bytes` and :func:`device_memory_budget`: what a GPU/TPU reports
  (None on the CPU); :func:`is_oom`: recognises XLA's out-of-memory error.
* :func:`device_info`: device kind, versions, commit and host, for every result file.

Compile time is measured where the program is lowered (:func:`mpnn_jax.benchmark.measure`).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np


def device_info() -> dict[str, Any]:
    """Device kind, platform, JAX/jaxlib versions, commit, host and ``XLA_FLAGS``, for every
    result file."""
    dev = jax.devices()[0]
    # MPNN_JAX_COMMIT wins: a copied working tree (the GPU machine's) may carry a stale .git
    commit = os.environ.get("MPNN_JAX_COMMIT", "")
    if not commit:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
            ).stdout.strip()
        except OSError:
            commit = ""
    info = {
        "device": getattr(dev, "device_kind", str(dev)),
        "platform": dev.platform,
        "n_devices": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else "",
        "python": platform.python_version(),
        "host": platform.node(),
        "commit": commit,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),  # compiler options change the programs
        # MPNN_JAX_XLA_OPTIONS (mpnn_jax.xla); each row records its program's own options
        "xla_options": os.environ.get("MPNN_JAX_XLA_OPTIONS", "default"),
    }
    try:
        import jaxlib

        info["jaxlib"] = jaxlib.__version__
    except (ImportError, AttributeError):
        pass
    return info


def peak_device_bytes() -> int | None:
    """The device's peak bytes in use so far (GPU/TPU), None where the backend does not say."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats raise various errors
        return None
    return None if not stats else int(stats.get("peak_bytes_in_use", 0))


def device_memory_budget(fraction: float = 0.9) -> int | None:
    """``fraction`` of the device's allocatable bytes (GPU/TPU), None where not reported."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    if not stats or "bytes_limit" not in stats:
        return None
    return int(fraction * stats["bytes_limit"])


def compiled_bytes(compiled: Any) -> int | None:
    """Arguments + outputs + temporaries of a compiled XLA program (bytes), if reported."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if m is None:
        return None
    total = 0
    for key in (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "temp_size_in_bytes",
        "generated_code_size_in_bytes",
    ):
        total += int(getattr(m, key, 0) or 0)
    return total


def fits_at_run_time(fn: Callable[..., Any], inputs: Sequence[tuple]) -> bool:
    """One call of a compiled program on its first inputs: False where the device runs out of
    memory (a program can compile within XLA's estimate and still not fit beside the buffers
    of others held in the same process); any other error is raised."""
    try:
        jax.block_until_ready(fn(*inputs[0]))
    except Exception as err:  # noqa: BLE001 - OOM surfaces as several exception types
        if is_oom(err):
            return False
        raise
    return True


def is_oom(err: BaseException) -> bool:
    """True if ``err`` is XLA's out-of-memory error."""
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def time_compiled(
    fn: Callable[..., Any], inputs: Sequence[tuple], *, warmup: int = 3, repeats: int = 20
) -> dict[str, float]:
    """Median/min/max and 10th/90th percentile wall time (ms) of ``fn(*inputs[i % len(inputs)])``,
    synchronised each call."""
    for i in range(warmup):
        jax.block_until_ready(fn(*inputs[i % len(inputs)]))
    times = []
    for i in range(repeats):
        args = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return _stats(times)


def _stats(times: Sequence[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "p10_ms": float(np.percentile(times, 10)),
        "p90_ms": float(np.percentile(times, 90)),
        "repeats": len(times),
    }


def time_interleaved(
    programs: Mapping[str, tuple[Callable[..., Any], Sequence[tuple]]],
    *,
    warmup: int = 3,
    repeats: int = 20,
) -> dict[str, dict[str, float]]:
    """:func:`time_compiled` of several programs in rounds: each round calls every program once
    (synchronised; the order rotates from round to round), so slow drift of the device (clocks,
    neighbours) falls on all of them alike. The rows of one process can move by 5% for the same
    program when timed one after the other (PERFORMANCE_LOG entry 27).

    Args:
        programs: name -> ``(fn, inputs)``; round ``i`` calls ``fn(*inputs[i % len(inputs)])``.

    Returns:
        name -> ``{median_ms, min_ms, max_ms, p10_ms, p90_ms, repeats, round_ms}`` (``round_ms``:
        the time of each round, for :func:`round_ratio`), plus, for each program after the first,
        ``ratio_to_first`` (the median over rounds of the first program's time over this one's,
        a speed-up) with ``ratio_p10`` and ``ratio_p90``.
    """
    names = list(programs)
    if not names:
        raise ValueError("time_interleaved needs at least one program")
    for i in range(warmup):
        for fn, inputs in programs.values():
            jax.block_until_ready(fn(*inputs[i % len(inputs)]))
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(repeats):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            fn, inputs = programs[name]
            args = inputs[i % len(inputs)]
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for name in names:
        out[name] = {**_stats(times[name]), "round_ms": times[name]}
        if name != names[0]:
            ratio = round_ratio(times[names[0]], times[name])
            out[name].update(
                ratio_to_first=ratio["median"], ratio_p10=ratio["p10"], ratio_p90=ratio["p90"]
            )
    return out


def round_ratio(reference: Sequence[float], other: Sequence[float]) -> dict[str, float]:
    """The speed-up of ``other`` over ``reference`` from paired rounds of
    :func:`time_interleaved` (their ``round_ms``): median, p10 and p90 over rounds of
    ``reference[i] / other[i]``.

    Example:
        >>> round_ratio([2.0, 4.0, 3.0], [1.0, 2.0, 3.0])["median"]
        2.0
    """
    ratios = [a / b for a, b in zip(reference, other, strict=True)]
    return {
        "median": statistics.median(ratios),
        "p10": float(np.percentile(ratios, 10)),
        "p90": float(np.percentile(ratios, 90)),
    }


def timed_in_rounds(row: dict[str, Any]) -> bool:
    """Whether a result row was timed in interleaved rounds (and carries every round's time)."""
    return bool(row.get("interleaved") and row.get("round_ms"))


def speed_up(reference: dict[str, Any], row: dict[str, Any]) -> float:
    """``row``'s speed-up over ``reference`` (two result rows): the median of the rounds' ratios
    (:func:`round_ratio`) where both were timed in interleaved rounds, else the ratio of their
    medians.

    Example:
        >>> speed_up({"median_ms": 4.0}, {"median_ms": 2.0})
        2.0
        >>> rounds = {"interleaved": True}
        >>> speed_up({**rounds, "median_ms": 20.0, "round_ms": [10.0, 20.0, 30.0]},
        ...          {**rounds, "median_ms": 10.0, "round_ms": [8.0, 10.0, 24.0]})
        1.25
    """
    if timed_in_rounds(reference) and timed_in_rounds(row):
        return round_ratio(reference["round_ms"], row["round_ms"])["median"]
    return reference["median_ms"] / row["median_ms"]
