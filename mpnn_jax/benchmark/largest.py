"""The largest system that fits the device: predicted from XLA's memory analysis, then verified.

XLA's memory analysis of a compiled program (arguments + outputs + temporaries) is linear in the
number of atoms at fixed density: :func:`bytes_per_atom` fits the slope through probe sizes and
:func:`largest_system` extrapolates to the device's budget and compiles and runs that size.

Example:
    >>> round(bytes_per_atom([(100, 1000 + 100 * 64), (200, 1000 + 200 * 64)]), 6)
    64.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mpnn_jax.benchmark.harness import measure
from mpnn_jax.benchmark.models import init_for
from mpnn_jax.benchmark.systems import System, avg_neighbours, build_system
from mpnn_jax.benchmark.timing import device_memory_budget


def bytes_per_atom(points: Sequence[tuple[int, int]]) -> float:
    """Slope of (atoms, bytes) by least squares: the marginal memory cost of one atom."""
    a = np.array(points, dtype=float)
    if len(a) < 2:
        return float(a[0, 1] / max(a[0, 0], 1))
    slope, _ = np.polyfit(a[:, 0], a[:, 1], 1)
    return float(slope)


def largest_system(
    *,
    size: str,
    kind: str,
    preset: str,
    mode: str,
    cutoff: float = 5.0,
    probe_atoms: tuple[int, int] = (500, 2000),
    budget_bytes: int | None = None,
    tries: int = 3,
    backend: str = "e3nn",
) -> dict[str, Any]:
    """The largest ``kind`` system whose ``mode`` program fits the device, predicted and verified.

    XLA's memory analysis of the compiled program (arguments + outputs + temporaries) is linear in
    the number of atoms at fixed density; two probe sizes give the slope, the budget gives the
    predicted maximum, and one compiled run at that size (shrunk by 15% after an out-of-memory
    error, ``tries`` times) verifies it. ``backend`` names the convolution and symmetric
    contraction backend (:mod:`mpnn_jax.nn.backends`).

    Returns:
        ``bytes_per_atom``, ``predicted_atoms``, ``verified_atoms`` (None if no try fitted),
        ``budget_bytes``, the probe points and the case (``model``, ``kind``, ``preset``,
        ``mode``, ``backend``).
    """
    from mpnn_jax.data import SpeciesTable

    budget = budget_bytes or device_memory_budget()
    if budget is None:
        raise ValueError("the device does not report its memory: pass budget_bytes")
    table = SpeciesTable((1, 6, 8, 29))
    params: list[Any] = []  # initialised once, on the first (small) probe: shapes do not change

    def one(n_atoms: int) -> tuple[System, dict[str, Any]]:
        system = build_system(kind, n_atoms, cutoff=cutoff, species_table=table)
        if not params:
            params.append(init_for(size, system, cutoff=cutoff))
        row = measure(
            size=size,
            system=system,
            preset=preset,
            mode=mode,
            params=params[0],
            avg_num_neighbors=avg_neighbours(system),
            cutoff=cutoff,
            repeats=1,
            n_inputs=1,
            warmup=1,
            backend=backend,
        )
        return system, row

    points = []
    for n in probe_atoms:
        system, row = one(n)
        points.append((system.n_atoms, row.get("compiled_bytes") or 0))
    slope = bytes_per_atom(points)
    n0, b0 = points[-1]
    predicted = int(n0 + (budget - b0) / max(slope, 1.0))
    result: dict[str, Any] = dict(
        model=size,
        kind=kind,
        preset=preset,
        mode=mode,
        backend=backend,
        bytes_per_atom=slope,
        predicted_atoms=predicted,
        budget_bytes=budget,
        probes=points,
        verified_atoms=None,
    )
    target = predicted
    for _ in range(tries):
        system, row = one(target)
        if not row.get("oom") and (budget_bytes is None or row["compiled_bytes"] <= budget):
            result["verified_atoms"] = system.n_atoms
            result["verified_ms"] = row["median_ms"]
            result["verified_compiled_bytes"] = row["compiled_bytes"]
            break
        result.setdefault("failed_atoms", []).append(system.n_atoms)
        target = int(0.85 * target)
    return result
