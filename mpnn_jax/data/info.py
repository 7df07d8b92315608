"""`summarize` a dataset file for ``mpnn-jax info FILE [--json]``.

`summarize` returns a JSON-able dict (counts, elements, sizes, periodicity, label ranges,
neighbours per atom at the cutoff, padding bucket plan); `format_summary` renders it as text.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mpnn_jax.data.buckets import plan_buckets
from mpnn_jax.data.neighbours import neighbour_list
from mpnn_jax.data.species import SpeciesTable
from mpnn_jax.data.xyz import read_xyz


def _range(values) -> dict | None:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return None
    return {
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "std": float(values.std()),
    }


def summarize(
    path: str | os.PathLike,
    *,
    cutoff: float = 5.0,
    energy_key: str | None = "energy",
    forces_key: str | None = "forces",
    stress_key: str | None = None,
    batch_size: int = 32,
    max_buckets: int = 4,
) -> dict:
    """Summary of an extended-XYZ dataset.

    Args:
        path: the file.
        cutoff: neighbour-list radius in Å.
        energy_key: energy label (eV), None if the file has none.
        forces_key: forces label (eV/Å; ``force`` is accepted too), None if the file has none.
        stress_key: stress label (eV/Å^3), optional.
        batch_size: graphs per batch for the padding plan.
        max_buckets: bucket budget of the padding plan.

    Returns:
        JSON-able dict; energies in eV, forces in eV/Å, lengths in Å.

    Example:
        >>> from mpnn_jax.data import bundled_path
        >>> s = summarize(bundled_path("rmd17_ethanol", "isolated_atoms"), forces_key=None)
        >>> s["n_configs"], s["elements"]
        (4, ['H', 'C', 'N', 'O'])
    """
    configs = read_xyz(path, energy_key=energy_key, forces_key=forces_key, stress_key=stress_key)
    table = SpeciesTable.from_configs(configs)
    n_atoms = np.array([c.n_atoms for c in configs])
    periodic = np.array([c.periodic for c in configs])
    n_edges = np.array(
        [neighbour_list(c.positions, c.cell, c.pbc, cutoff)[0].shape[0] for c in configs]
    )
    counts = {sym: 0 for sym in table.symbols}
    for c in configs:
        for z, k in zip(*np.unique(c.numbers, return_counts=True)):
            counts[table.symbols[table.numbers.index(int(z))]] += int(k)

    summary: dict = {
        "path": str(Path(path)),
        "n_configs": len(configs),
        "elements": list(table.symbols),
        "atomic_numbers": table.to_list(),
        "atom_counts": counts,
        "atoms_per_config": {"min": int(n_atoms.min()), "max": int(n_atoms.max())},
        "total_atoms": int(n_atoms.sum()),
        "periodic": "all" if periodic.all() else ("none" if not periodic.any() else "mixed"),
        "cutoff": float(cutoff),
        "neighbours_per_atom": {
            "mean": float(n_edges.sum() / n_atoms.sum()),
            "min_config": float((n_edges / n_atoms).min()),
            "max_config": float((n_edges / n_atoms).max()),
        },
        "energy": None,
        "energy_per_atom": None,
        "forces": None,
        "stress": None,
    }
    if energy_key is not None:
        energies = np.array([c.energy for c in configs])
        summary["energy"] = _range(energies)
        summary["energy_per_atom"] = _range(energies / n_atoms)
    if forces_key is not None:
        all_forces = np.concatenate([c.forces for c in configs])
        summary["forces"] = {
            "max_abs_component": float(np.abs(all_forces).max()),
            "max_norm": float(np.linalg.norm(all_forces, axis=1).max()),
            "rms_component": float(np.sqrt(np.mean(all_forces**2))),
        }
    stresses = [c.stress for c in configs if c.stress is not None]
    if stresses:
        summary["stress"] = {
            "n_configs_with_stress": len(stresses),
            "max_abs_component": float(np.abs(np.stack(stresses)).max()),
        }
    plan = plan_buckets(
        list(zip(n_atoms, n_edges)), min(batch_size, len(configs)), max_buckets=max_buckets
    )
    summary["padding_plan"] = plan.to_dict()
    return summary


def _fmt_range(r: dict | None, unit: str) -> str:
    if r is None:
        return "-"
    return f"{r['min']:.6g} .. {r['max']:.6g} {unit} (mean {r['mean']:.6g}, std {r['std']:.3g})"


def format_summary(summary: dict) -> str:
    """Human-readable table of a `summarize` result."""
    s = summary
    rows = [
        ("file", s["path"]),
        ("configurations", str(s["n_configs"])),
        ("elements", ", ".join(f"{k} ({v} atoms)" for k, v in s["atom_counts"].items())),
        ("atoms / config", f"{s['atoms_per_config']['min']} .. {s['atoms_per_config']['max']}"),
        ("periodic", s["periodic"]),
        (
            f"neighbours / atom (r < {s['cutoff']:g} Å)",
            f"{s['neighbours_per_atom']['mean']:.2f} (per config "
            f"{s['neighbours_per_atom']['min_config']:.2f} .. "
            f"{s['neighbours_per_atom']['max_config']:.2f})",
        ),
        ("energy", _fmt_range(s["energy"], "eV")),
        ("energy / atom", _fmt_range(s["energy_per_atom"], "eV")),
    ]
    if s["forces"] is not None:
        f = s["forces"]
        rows.append(
            (
                "forces",
                f"max |F_i| {f['max_norm']:.4g} eV/Å, max component {f['max_abs_component']:.4g}, "
                f"RMS component {f['rms_component']:.4g} eV/Å",
            )
        )
    else:
        rows.append(("forces", "-"))
    if s["stress"] is not None:
        rows.append(
            (
                "stress",
                f"{s['stress']['n_configs_with_stress']} configs, max |component| "
                f"{s['stress']['max_abs_component']:.4g} eV/Å^3",
            )
        )
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    plan = s["padding_plan"]
    lines.append("")
    lines.append(f"padding buckets (batch_size={plan['batch_size']}):")
    lines.append(f"  {'n_node':>8}  {'n_edge':>9}  {'n_graph':>7}")
    for b in plan["buckets"]:
        lines.append(f"  {b['n_node']:>8}  {b['n_edge']:>9}  {b['n_graph']:>7}")
    return "\n".join(lines)
