"""The main job (``make demo``): fp32 vs bf16-mixed on the bundled rMD17 ethanol, side by side.

Trains the same small MACE with the same config and seed under ``fp32`` and ``bf16-mixed``,
evaluates both on the bundled test set (1000 configurations), prints a side-by-side table and the
dtype audit of the ``bf16-mixed`` model, and names the plots it saved. On a CPU, BF16 is emulated
and slower than FP32: the time per step is reported, not claimed as a speed-up.

    python experiments/demo.py [--workdir runs/demo] [--set train.max_steps=300 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
POLICIES = ("fp32", "bf16-mixed")


def main(argv=None) -> int:
    from mpnn_jax.data import bundled_path
    from mpnn_jax.precision import get_policy
    from mpnn_jax.training.config import load_config
    from mpnn_jax.training.evaluate import audit_run, evaluate
    from mpnn_jax.training.loop import train
    from mpnn_jax.training.plots import plot_comparison

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default=str(HERE / "configs" / "demo.yaml"))
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    root = Path(args.workdir)
    test = bundled_path("rmd17_ethanol", "test")
    results = {}
    for policy in POLICIES:
        print(f"\n=== training under {policy} ===", flush=True)
        cfg = load_config(args.config, overrides=[*args.set, f"precision.policy={policy}"])
        summary = train(cfg, root / policy)
        metrics = evaluate(root / policy, test)
        metrics.update(
            steps=summary["step"],
            skipped=summary.get("skipped", 0),
            ms_per_step=60e3 * summary["minutes"] / max(summary["step"], 1),
        )
        results[policy] = metrics
    rows = [
        ("energy MAE (meV/atom)", "energy_mae_mev_per_atom", "{:.3f}"),
        ("energy MAE (meV/molecule)", "energy_mae_mev", "{:.2f}"),
        ("force MAE (meV/Å)", "forces_mae_mev_per_A", "{:.2f}"),
        ("force RMSE (meV/Å)", "forces_rmse_mev_per_A", "{:.2f}"),
        ("training steps", "steps", "{:d}"),
        ("skipped steps (loss scaling)", "skipped", "{:d}"),
        ("wall time per step (ms, CPU, incl. compile/eval)", "ms_per_step", "{:.1f}"),
    ]
    print(f"\nrMD17 ethanol test set ({results['fp32']['n_configs']} configurations)\n")
    print(f"| metric | {' | '.join(POLICIES)} |\n|---|{'---|' * len(POLICIES)}")
    for label, key, fmt in rows:
        print(f"| {label} | " + " | ".join(fmt.format(results[p][key]) for p in POLICIES) + " |")
    print(
        "\nCPU times depend on load and include compilation and validation; BF16 is emulated on"
        " CPUs, so no speed claim comes from them (GPU figures: README)."
    )
    print("\nPer-stage dtype audit of the bf16-mixed model (what the compiled program runs):\n")
    policy = get_policy("bf16-mixed")
    report = audit_run(root / "bf16-mixed", policy=policy)
    print(report.table(policy))
    problems = report.check(policy)
    print("\nno violations of bf16-mixed" if not problems else "\n".join(problems))
    (root / "demo_results.json").write_text(json.dumps(results, indent=2, default=str))
    plot = root / "learning_curves.png"
    plot_comparison({p: root / p / "metrics.jsonl" for p in POLICIES}, plot)
    print("\nsaved:", root / "demo_results.json", plot)
    for policy in POLICIES:
        print("      ", root / policy / "learning_curve.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
