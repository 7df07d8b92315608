"""Pure helpers to judge an MD run: energy drift and fluctuation, throughput.

Plain numpy; nothing here is jitted.
"""

from __future__ import annotations

import numpy as np


def energy_drift(times_ps, total_energy_eV, n_atoms: int) -> tuple[float, float]:
    """Drift and fluctuation of the total energy of an NVE run.

    Args:
        times_ps: [n_logged] times in ps.
        total_energy_eV: [n_logged] total (kinetic + potential) energy in eV.
        n_atoms: number of atoms.

    Returns:
        ``(drift, fluctuation)``: the slope of a least-squares line through the total energy in
        meV/atom/ps, and the standard deviation of the residuals around that line in meV/atom.
        With fewer than two points both are 0; a non-finite energy gives NaN.

    Example:
        >>> t = np.linspace(0.0, 1.0, 11)
        >>> drift, fluct = energy_drift(t, 0.002 * t, n_atoms=2)
        >>> round(drift, 6), round(fluct, 6)
        (1.0, 0.0)
    """
    t = np.asarray(times_ps, np.float64).reshape(-1)
    e = np.asarray(total_energy_eV, np.float64).reshape(-1)
    if t.shape != e.shape:
        raise ValueError(f"times and energies differ in length: {t.shape} vs {e.shape}")
    if n_atoms < 1:
        raise ValueError(f"n_atoms must be positive, got {n_atoms}")
    if t.size < 2:
        return 0.0, 0.0
    if not np.all(np.isfinite(e)):
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(t, e, 1)
    residual = e - (slope * t + intercept)
    scale = 1000.0 / n_atoms  # eV -> meV/atom
    return float(slope * scale), float(np.std(residual) * scale)


def throughput(*, n_atoms: int, steps: int, dt_fs: float, wall_s: float) -> dict[str, float]:
    """Speed of a run: ``ns_per_day``, ``atom_steps_per_s``, ``steps_per_s``."""
    wall_s = max(float(wall_s), 1e-12)
    steps_per_s = steps / wall_s
    return {
        "ns_per_day": steps_per_s * dt_fs * 1e-6 * 86400.0,
        "atom_steps_per_s": steps_per_s * n_atoms,
        "steps_per_s": steps_per_s,
    }
