"""Benchmark rows for people: a fixed-width table and a throughput plot.

Rows are the dicts of :func:`mpnn_jax.benchmark.measure` (or read back from a result JSON; rows
written before a key existed fall back to its default: ``take_rows`` "onehot", ``sorted_edges``
"none", ``backend`` "e3nn").

Example:
    >>> variant_name({"take_rows": "take", "sorted_edges": "receivers"}), variant_name({})
    ('take/receivers', 'onehot/none')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mpnn_jax.benchmark.timing import speed_up


def variant_name(row: dict[str, Any]) -> str:
    """``"take_rows/sorted_edges"`` of a row, e.g. ``"onehot/none"`` (the default)."""
    return f"{row.get('take_rows', 'onehot')}/{row.get('sorted_edges', 'none')}"


def backend_name(row: dict[str, Any]) -> str:
    """The backend of a row (``"e3nn"`` for rows written before the backend was recorded)."""
    return row.get("backend", "e3nn")


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table of benchmark rows: each preset's speed-up over fp32 (same variant and
    backend; for rows timed in interleaved rounds the median of the rounds' ratios), the roofline
    lower bound (ms), the bound that sets it and measured / lower bound."""

    def key(r):
        return (r["model"], r["system"], r["mode"], variant_name(r), backend_name(r))

    base = {key(r): r for r in rows if r["preset"] == "fp32" and not r.get("oom")}

    head = (
        f"{'model':10} {'system':16} {'mode':5} {'preset':13} {'variant':16} {'backend':8} "
        f"{'atoms':>7} {'edges':>9} {'compile s':>9} {'ms':>9} {'atom-steps/s':>13} {'MiB':>8} "
        f"{'vs fp32':>7} {'GFLOP':>8} {'GB':>7} {'bound ms':>9} {'by':>5} {'x bound':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lead = (
            f"{r['model']:10} {r['system']:16} {r['mode']:5} {r['preset']:13} "
            f"{variant_name(r):16} {backend_name(r):8} {r['n_atoms']:7d} {r['n_edges']:9d}"
        )
        if r.get("oom"):
            lines.append(f"{lead}  out of memory")
            continue
        ref = base.get(key(r))
        speed = f"{speed_up(ref, r):.2f}x" if ref else "-"
        mib = (r.get("compiled_bytes") or 0) / 2**20
        gflop = (r.get("flops") or 0) / 1e9
        gb = (r.get("bytes_accessed") or 0) / 1e9
        bound = r.get("lower_bound_ms")
        ratio = r.get("measured_over_bound")
        lines.append(
            f"{lead} {r['compile_s']:9.1f} {r['median_ms']:9.3f} "
            f"{r['atom_steps_per_s']:13.3g} {mib:8.1f} {speed:>7} {gflop:8.1f} {gb:7.2f} "
            f"{bound if bound is not None else float('nan'):9.3f} {r.get('bound') or '-':>5} "
            f"{ratio if ratio is not None else float('nan'):7.1f}"
        )
    return "\n".join(lines)


_PRESET_COLOURS = {"fp32": "C0", "bf16-mixed": "C1", "fp16-mixed": "C2", "fp32-highest": "C7"}


def plot_throughput(rows: Sequence[dict[str, Any]], path: str, title: str | None = None) -> None:
    """Throughput (atom-steps/s) against atoms: one panel per (mode, model), rows ``ef`` then
    ``train`` as present, one line per (system kind, preset, backend); a colour per preset (the
    same in every panel), solid for the default ``"e3nn"`` backend, dashed for another (named in
    the legend). ``title`` (e.g. the device) heads the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if not r.get("oom") and r.get("atom_steps_per_s")]
    modes = [m for m in ("ef", "train") if any(r["mode"] == m for r in rows)] or ["ef"]
    models = sorted({r["model"] for r in rows}) or [""]
    presets = sorted({r["preset"] for r in rows})
    colours = dict(_PRESET_COLOURS)
    for i, preset in enumerate(p for p in presets if p not in colours):
        colours[preset] = f"C{3 + i}"
    fig, axes = plt.subplots(
        len(modes), len(models), figsize=(4.6 * len(models), 3.8 * len(modes)), squeeze=False
    )
    for ax_row, mode in zip(axes, modes):
        for ax, model in zip(ax_row, models):
            groups: dict[tuple, list] = {}
            for r in rows:
                if r["mode"] == mode and r["model"] == model:
                    key = (r["system"].split("-")[0], r["preset"], backend_name(r))
                    groups.setdefault(key, []).append((r["n_atoms"], r["atom_steps_per_s"]))
            for (kind, preset, backend), pts in sorted(groups.items()):
                pts.sort()
                label = f"{preset} ({kind})" + ("" if backend == "e3nn" else f" {backend}")
                style = "-" if backend == "e3nn" else "--"
                ax.plot(*zip(*pts), style, marker="o", color=colours[preset], label=label)
            ax.set_xscale("log")
            ax.set_xlabel("atoms")
            ax.set_ylabel("atom-steps / s")
            what = "energy + forces" if mode == "ef" else "training step"
            ax.set_title(f"{model}: {what}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            if groups:
                ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
