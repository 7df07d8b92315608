"""Learning-curve plot of a run (matplotlib, Agg backend: no display needed).

Reads ``metrics.jsonl`` (one JSON record per logged step; validation metrics under ``"val"``)
and draws the training loss (log scale), the validation force and energy MAE and the learning
rate / loss scale against the step.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (a damaged last line is ignored)."""
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def plot_learning_curve(metrics_path: str | Path, out_path: str | Path) -> Path:
    """Writes a 3-panel PNG learning curve.

    Args:
        metrics_path: the run's ``metrics.jsonl``.
        out_path: where to write the PNG.

    Returns:
        ``out_path`` as a Path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val" in r]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax = axes[1]
    if val:
        steps = [r["step"] for r in val]
        ax.plot(steps, [r["val"]["forces_mae_mev_per_A"] for r in val], "o-", label="forces meV/Å")
        ax.plot(
            steps,
            [r["val"]["energy_mae_mev_per_atom"] for r in val],
            "s-",
            label="energy meV/atom",
        )
        ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("validation MAE (EMA weights)")
    ax = axes[2]
    lrs = [r.get("lr", float("nan")) for r in train]
    ax.plot([r["step"] for r in train], lrs, label="lr")
    if any(lr > 0 for lr in lrs):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    if any(r.get("loss_scale", 1.0) != 1.0 for r in train):
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in train], [r["loss_scale"] for r in train], "r", lw=0.8)
        ax2.set_yscale("log", base=2)
        ax2.set_ylabel("loss scale", color="r")
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def plot_comparison(runs: dict[str, str | Path], out_path: str | Path) -> Path:
    """Overlays the learning curves of several runs (e.g. one per precision policy).

    Args:
        runs: ``{label: metrics.jsonl path}``.
        out_path: where to write the PNG (training loss and validation force MAE vs step).

    Returns:
        ``out_path`` as a Path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, path in runs.items():
        records = read_metrics(path)
        train = [r for r in records if "loss" in r]
        val = [r for r in records if "val" in r]
        axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8, label=label)
        if val:
            axes[1].plot(
                [r["step"] for r in val],
                [r["val"]["forces_mae_mev_per_A"] for r in val],
                "o-",
                label=label,
            )
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("training loss")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("validation force MAE (meV/Å, EMA)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:  # a run without validation draws nothing there
            ax.legend()
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
