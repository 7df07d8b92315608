"""The precision study (logic in ``mpnn_jax/study.py`` and ``mpnn_jax/study_runs.py``).

Per-stage errors against fp64 (writes stage_table.md, stage_errors.json, stage_errors.png)::

    python experiments/precision_study.py --workdir RUN --out DIR [--data FILE] [--n-configs 100]
    python experiments/precision_study.py --workdir RUN --random-init --out DIR  # same model
    python experiments/precision_study.py --random-init --model mace|nequip --out DIR

Training under fp32, bf16-mixed, fp16-mixed, bf16-pure (same seed) and comparing::

    python experiments/precision_study.py train --config C --workdir W [--set k=v ...]

Re-render stage_table.md and stage_errors.png from a stage_errors.json::

    python experiments/precision_study.py table DIR/stage_errors.json

Several per-stage studies side by side (force error vs fp64, BF16 / FP16 per stage)::

    python experiments/precision_study.py summary "MACE=DIR1/stage_errors.json" \
        "NequIP=DIR2/stage_errors.json" [--out SUMMARY.md]

Side by side, one process per policy (e.g. on one GPU), then merged::

    python experiments/precision_study.py train --config C --workdir W/fp32 --policies fp32 &
    python experiments/precision_study.py train --config C --workdir W/bf16-mixed \
        --policies bf16-mixed &
    wait; python experiments/precision_study.py merge W/fp32 W/bf16-mixed --out W
    python experiments/precision_study.py merge-nve W/fp32/nve W/bf16-mixed/nve --out W/nve

NVE energy drift per policy::

    python experiments/precision_study.py nve --workdir RUN --structure FILE --steps N --out DIR
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIGS = {
    "mace": HERE / "configs" / "demo.yaml",
    "nequip": HERE / "configs" / "study_demo_nequip.yaml",
}
CPU_NOTE = (
    "CPU run: BF16/FP16 are emulated on this CPU; the errors (not timings) are "
    "hardware-independent up to the order of floating-point sums."
)

STRICT_NOTE = (
    "Run with XLA_FLAGS=--xla_allow_excess_precision=false: every 16-bit cast rounds (XLA's "
    "default may drop some round trips, so compiled programs can be slightly more accurate)."
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = "python experiments/precision_study.py " + shlex.join(argv)
    from mpnn_jax import study_runs

    if argv[:1] == ["train"]:
        p = argparse.ArgumentParser(prog="precision_study.py train")
        p.add_argument("--config", required=True)
        p.add_argument("--workdir", required=True)
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument("--policies", default=",".join(study_runs.study.PRESET_POLICIES))
        p.add_argument(
            "--vs-fp64",
            type=int,
            default=100,
            metavar="N",
            help="test configs for each model's error against its fp64 self (0: off)",
        )
        a = p.parse_args(argv[1:])
        res = study_runs.train_policies(
            a.config,
            a.workdir,
            policies=a.policies.split(","),
            overrides=a.set,
            vs_fp64_configs=a.vs_fp64,
        )
        print(study_runs.comparison_table(res))
        return 0
    if argv[:1] in (["merge"], ["merge-nve"]):  # runs made side by side, one process per policy
        p = argparse.ArgumentParser(prog=f"precision_study.py {argv[0]}")
        p.add_argument("dirs", nargs="+", help="train workdirs (merge) or nve --out dirs")
        p.add_argument("--out", required=True)
        a = p.parse_args(argv[1:])
        if argv[0] == "merge":
            print(study_runs.comparison_table(study_runs.merge_comparisons(a.dirs, a.out)))
        else:
            for spec, r in study_runs.merge_nve(a.dirs, a.out).items():
                print(f"{spec}: drift {r['drift_meV_per_atom_per_ps']:.4g} meV/atom/ps")
        return 0
    if argv[:1] == ["table"]:  # re-render stage_table.md and stage_errors.png from the JSON
        p = argparse.ArgumentParser(prog="precision_study.py table")
        p.add_argument("json", help="a stage_errors.json")
        a = p.parse_args(argv[1:])
        rows, meta = study_runs.study.load_json(a.json)
        study_runs.write_stage_outputs(rows, Path(a.json).parent, meta=meta)
        print((Path(a.json).parent / "stage_table.md").read_text())
        return 0
    if argv[:1] == ["summary"]:
        p = argparse.ArgumentParser(prog="precision_study.py summary")
        p.add_argument("runs", nargs="+", metavar="LABEL=JSON", help="stage_errors.json files")
        p.add_argument("--out", help="also write the table here")
        a = p.parse_args(argv[1:])
        runs = {}
        for item in a.runs:
            label, sep, path = item.partition("=")
            if not sep:
                p.error(f"expected LABEL=JSON, got {item!r}")
            runs[label] = study_runs.study.load_json(path)[0]
        table = study_runs.study.summary_table(runs)
        if a.out:
            Path(a.out).write_text(table)
        print(table)
        return 0
    if argv[:1] == ["nve"]:
        p = argparse.ArgumentParser(prog="precision_study.py nve")
        p.add_argument("--workdir", required=True)
        p.add_argument("--structure", required=True)
        p.add_argument("--policies", default="fp64,fp32,bf16-mixed,fp16-mixed,bf16-pure")
        p.add_argument("--steps", type=int, default=2000)
        p.add_argument("--dt", type=float, default=0.5)
        p.add_argument("--temperature", type=float, default=300.0)
        p.add_argument("--out", required=True)
        a = p.parse_args(argv[1:])
        res = study_runs.nve_drift(
            a.workdir,
            a.structure,
            policies=a.policies.split(","),
            steps=a.steps,
            dt=a.dt,
            temperature=a.temperature,
            out=a.out,
        )
        for spec, r in res.items():
            print(
                f"{spec}: drift {r['drift_meV_per_atom_per_ps']:.4g} meV/atom/ps, "
                f"fluctuation {r['fluctuation_meV_per_atom']:.4g} meV/atom"
            )
        return 0

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", help="a trained run")
    p.add_argument("--random-init", action="store_true")
    p.add_argument("--model", choices=sorted(DEFAULT_CONFIGS), help="with --random-init, no run")
    p.add_argument("--config", help="config of the random-init model (default: per --model)")
    p.add_argument("--seed", type=int, default=0, help="random-init seed")
    p.add_argument("--data", help="test file (default: the run's/config's test set)")
    p.add_argument("--n-configs", type=int, default=100)
    p.add_argument(
        "--policies", help="comma-separated (default: the 20 single-stage ablations + 6 presets)"
    )
    p.add_argument("--note", help="text put above the table (default: the backend it ran on)")
    p.add_argument(
        "--allow-excess-precision",
        action="store_true",
        help="let XLA drop 16-bit round trips (its default; the study forbids it so that every "
        "ablation rounds where its dtype says)",
    )
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if not a.allow_excess_precision:
        study_runs.study.forbid_excess_precision()
    if a.workdir is None and a.model is None and a.config is None:
        p.error("give --workdir RUN, or --random-init with --model or --config")
    config = a.config or (DEFAULT_CONFIGS[a.model] if a.workdir is None else None)
    model, params, info = study_runs.load_study_model(
        a.workdir, config=config, random_init=a.random_init, seed=a.seed
    )
    env = study_runs.environment_info()
    note = a.note or (CPU_NOTE if env["backend"] == "cpu" else f"{env['device']} run.")
    if env["strict_rounding"] and not a.note:
        note += " " + STRICT_NOTE
    data = a.data or info["test"]
    graphs = study_runs.read_study_graphs(data, info, n_configs=a.n_configs)
    info.update(data_file=data, n_configs_selection="evenly spaced")
    rows = study_runs.run_stage_study(
        model,
        params,
        graphs,
        a.out,
        info=info,
        command=command,
        note=note,
        policies=a.policies.split(",") if a.policies else None,
    )
    print((Path(a.out) / "stage_table.md").read_text())
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
