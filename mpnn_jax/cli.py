"""The ``mpnn-jax`` command: thin, it parses arguments and calls the library.

Subcommands::

    mpnn-jax info FILE.xyz [--cutoff 5.0] [--json]
    mpnn-jax train --config C --workdir W [--set k=v ...]
    mpnn-jax evaluate --workdir W --data F.xyz [--policy P] [--backend B] [--json OUT]
    mpnn-jax audit --workdir W [--policy P] [--json OUT]
    mpnn-jax md --workdir W --structure S.xyz --steps N [--dt 0.5] [--ensemble nve|nvt]
                [--temperature T] [--policy P] [--backend B] [--out DIR]

`audit` also warns of 16-bit scatter-adds (allowed by a policy, but slow 16-bit atomics on GPUs).
Exit codes: 0 success, 1 the audit found violations of the policy, 2 bad arguments or input
(a one-line error on stderr), 130 interrupted (training saves a checkpoint first).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _cmd_info(args: argparse.Namespace) -> int:
    from mpnn_jax.data.info import format_summary, summarize

    summary = summarize(
        args.file,
        cutoff=args.cutoff,
        energy_key=args.energy_key,
        forces_key=args.forces_key,
        batch_size=args.batch_size,
    )
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_summary(summary))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from mpnn_jax.training.config import load_config
    from mpnn_jax.training.loop import train

    config = load_config(args.config, overrides=args.set)
    summary = train(config, args.workdir)
    print(json.dumps(summary, indent=2, default=str))
    return 130 if summary.get("status") == "interrupted" else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mpnn_jax.training.evaluate import evaluate, format_metrics

    result = evaluate(args.workdir, args.data, policy=args.policy, backend=args.backend)
    print(format_metrics(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from mpnn_jax.training.evaluate import audit_run, run_policy

    policy = run_policy(args.workdir, policy=args.policy)
    report = audit_run(args.workdir, policy=policy)
    print(f"policy {policy.name}: {policy.spec()}\n")
    print(report.table(policy))
    problems = report.check(policy)
    print("\nno violations" if not problems else "\nviolations:\n  " + "\n  ".join(problems))
    sums = report.low_precision_scatter_adds()
    slow = collections.Counter(f"{r.stage}{' (backward)' if r.backward else ''}" for r in sums)
    if slow:  # allowed by the policy, but 16-bit atomics on GPUs (performance log, entry 12)
        where = ", ".join(f"{k} x{n}" for k, n in sorted(slow.items()))
        print(f"warning: 16-bit scatter-adds, slow on GPUs (16-bit atomics): {where}")
    else:
        print("no 16-bit scatter-adds")
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(policy), indent=2, default=str))
    return 0 if not problems else 1


def _cmd_md(args: argparse.Namespace) -> int:
    from mpnn_jax.md.run import run_md

    summary = run_md(
        args.workdir,
        args.structure,
        steps=args.steps,
        dt=args.dt,
        ensemble=args.ensemble,
        temperature=args.temperature,
        policy=args.policy,
        backend=args.backend,
        log_every=args.log_every,
        out=args.out,
        skin=args.skin,
        seed=args.seed,
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


_BACKEND_HELP = (
    "convolution backend: e3nn (pure XLA), cueq (cuEquivariance kernels, the cueq extra), "
    "pallas (our fused Pallas convolution, Triton on GPUs) or auto (pallas on NVIDIA GPUs, "
    "e3nn elsewhere); default: the run's"
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mpnn-jax`` (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="mpnn-jax",
        description="Equivariant MPNN interatomic potentials in JAX with audited mixed precision.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="summarise an extended-XYZ dataset and its padding buckets")
    p.add_argument("file", help="extended XYZ file")
    p.add_argument("--cutoff", type=float, default=5.0, help="neighbour cutoff in Å (default 5)")
    p.add_argument("--energy-key", default="energy")
    p.add_argument("--forces-key", default="forces")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("train", help="train a potential from a YAML config")
    p.add_argument("--config", required=True, help="YAML config (see experiments/configs)")
    p.add_argument("--workdir", required=True, help="run directory (resumed if it holds one)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a trained run on a dataset")
    p.add_argument("--workdir", required=True)
    p.add_argument("--data", required=True, help="extended XYZ file")
    p.add_argument("--policy", default=None, help="precision policy (default: the trained one)")
    p.add_argument("--backend", default=None, help=_BACKEND_HELP)
    p.add_argument("--json", default=None, help="write the metrics as JSON to this path")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("audit", help="per-stage dtype audit of a trained model")
    p.add_argument("--workdir", required=True)
    p.add_argument("--policy", default=None, help="precision policy (default: the trained one)")
    p.add_argument("--json", default=None, help="write the audit as JSON to this path")
    p.set_defaults(func=_cmd_audit)

    p = sub.add_parser("md", help="molecular dynamics with a trained run (on-device loop)")
    p.add_argument("--workdir", required=True, help="trained run directory")
    p.add_argument("--structure", required=True, help="structure file (first frame is used)")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--dt", type=float, default=0.5, help="time step in fs (default 0.5)")
    p.add_argument("--ensemble", choices=["nve", "nvt"], default="nve")
    p.add_argument("--temperature", type=float, default=300.0, help="K (initial / bath)")
    p.add_argument("--policy", default=None, help="precision policy (default: the trained one)")
    p.add_argument("--backend", default=None, help=_BACKEND_HELP)
    p.add_argument("--log-every", type=int, default=None, help="steps between logged frames")
    p.add_argument("--skin", type=float, default=0.5, help="neighbour-list skin in Å")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output directory (default: WORKDIR/md)")
    p.set_defaults(func=_cmd_md)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mpnn-jax`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"mpnn-jax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
