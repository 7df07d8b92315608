"""Timing and memory harness for energy+forces inference and training steps.

Used by ``experiments/benchmark.py``. The harness builds realistic systems (batches of real
molecules, periodic fcc Cu, a water-density O/H box), a model at a named size, and times the
jitted predictor (energy + forces) and a full training step (energy + force loss, so second
derivatives) under each precision preset:

* compile time (lower + compile, seconds),
* the median of ``repeats`` timed calls after warm-up, each synchronised with
  ``block_until_ready``, rotating among ``n_inputs`` perturbed copies of the input so caches do
  not flatter,
* the compiled program's memory (arguments + outputs + temporaries, from XLA's memory analysis)
  and, on a GPU, the device's peak bytes in use.

No timing claim comes from the CPU: ``--quick`` exists to keep the harness working in the test
suite. Everything here runs on whatever ``jax.devices()[0]`` is.
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mpnn_jax.precision import get_policy

#: Model sizes. NequIP: channels per irrep and lmax; MACE: channels, hidden irreps, max_ell,
#: correlation, interactions. ``mace-mp-s`` is cuEquivariance's MP-S benchmark size.
MODEL_SIZES: dict[str, dict[str, Any]] = {
    "nequip-S": dict(name="nequip", num_channels=16, max_ell=1, num_layers=3),
    "nequip-M": dict(name="nequip", num_channels=32, max_ell=2, num_layers=4),
    "nequip-L": dict(name="nequip", num_channels=64, max_ell=2, num_layers=5),
    "mace-S": dict(
        name="mace", num_channels=32, hidden_irreps="0e+1o", max_ell=2, correlation=2,
        num_interactions=2,
    ),
    "mace-M": dict(
        name="mace", num_channels=64, hidden_irreps="0e+1o", max_ell=3, correlation=3,
        num_interactions=2,
    ),
    "mace-L": dict(
        name="mace", num_channels=128, hidden_irreps="0e+1o+2e", max_ell=3, correlation=3,
        num_interactions=2,
    ),
    "mace-mp-s": dict(
        name="mace", num_channels=128, hidden_irreps="0e", max_ell=3, correlation=3,
        num_interactions=2,
    ),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class System:
    """A benchmark input: one padded graph (numpy) and what it is."""

    name: str
    n_atoms: int
    n_edges: int
    graph: Any  # jraph.GraphsTuple of numpy arrays, padded
    n_species: int


def device_info() -> dict[str, Any]:
    """Device kind, platform, JAX/jaxlib versions, commit and host, for every result file."""
    dev = jax.devices()[0]
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


def time_compiled(
    fn: Callable[..., Any], inputs: Sequence[tuple], *, warmup: int = 3, repeats: int = 20
) -> dict[str, float]:
    """Median/min/max wall time (ms) of ``fn(*inputs[i % len(inputs)])``, synchronised each call."""
    for i in range(warmup):
        jax.block_until_ready(fn(*inputs[i % len(inputs)]))
    times = []
    for i in range(repeats):
        args = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "repeats": repeats,
    }


def perturbed_inputs(graph: Any, n: int, *, seed: int = 0, sigma: float = 0.01) -> list[Any]:
    """``n`` copies of ``graph`` with positions jittered by ``sigma`` Å (same topology)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        pos = graph.nodes["positions"]
        nodes = dict(graph.nodes)
        nodes["positions"] = pos + sigma * rng.standard_normal(pos.shape).astype(pos.dtype)
        out.append(graph._replace(nodes=nodes))
    return out


def is_oom(err: BaseException) -> bool:
    """True if ``err`` is XLA's out-of-memory error."""
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def policy_names(presets: Sequence[str]) -> list[str]:
    """Validates preset names early (a typo fails before any compile)."""
    return [get_policy(p).name for p in presets]


def bytes_per_atom(points: Sequence[tuple[int, int]]) -> float:
    """Slope of (atoms, bytes) by least squares: the marginal memory cost of one atom."""
    a = np.array(points, dtype=float)
    if len(a) < 2:
        return float(a[0, 1] / max(a[0, 0], 1))
    slope, _ = np.polyfit(a[:, 0], a[:, 1], 1)
    return float(slope)


def to_device(graph: Any) -> Any:
    """Moves a numpy graph to the default device."""
    return jax.tree_util.tree_map(jnp.asarray, graph)
