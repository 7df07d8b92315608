"""Benchmark energy+forces and training steps per precision preset; prints a table, writes JSON.

    python experiments/benchmark.py --quick                       # CPU smoke run (no timing claims)
    python experiments/benchmark.py --sizes mace-M nequip-M --systems cu:4000 water:12000 \
        --presets fp32 bf16-mixed fp16-mixed fp32-highest --out h100.json
    python experiments/benchmark.py --ceilings --sizes mace-mp-s --systems water:3000 \
        --presets fp32 bf16-mixed --variants onehot/none take/none --out take_rows.json
    python experiments/benchmark.py --only-largest --sizes nequip-S --systems water:2000 \
        --modes ef --presets fp32 bf16-mixed --out largest.json
    python experiments/benchmark.py --replot h100.json --plot h100.png   # plot earlier runs
    python experiments/benchmark.py --backends e3nn,cueq --sizes mace-mp-s --systems water:3000 \
        --presets fp32 bf16-mixed --out backends.json
    python experiments/benchmark.py --sizes mace-mp-s --systems water:10000 --backends pallas \
        --interleaved --out rounds.json   # each case's presets timed in interleaved rounds
    python experiments/benchmark.py --goals experiments/results/benchmarks/*.json \
        experiments/results/benchmarks/*/*.json          # where the issue's goals stand

Each row carries the roofline columns (XLA's FLOPs and bytes, the lower-bound time against the
ceilings measured with ``--ceilings``, else the H100 defaults). ``--variants`` are
``take_rows/sorted_edges`` implementation variants (:func:`mpnn_jax.nn.ops.implementation`).
``--backends`` (comma- or space-separated) runs every case once per backend of the convolution and
symmetric contraction (:func:`mpnn_jax.nn.backends.available_backends`); each row records its
``backend``. ``--interleaved`` compiles every preset of a case first and times them in rounds
(each round calls each preset once): the speed-ups are then the median of the rounds' ratios,
which the drift of one program between rows of a process does not move (PERFORMANCE_LOG 27-28).
The JSON file is rewritten after every row, so a run cut short keeps what it measured. A GPU run
ends with the goals table of its own rows (:mod:`mpnn_jax.benchmark.goals`); ``--goals`` prints
that table for earlier result files (this script's or ``experiments/perf/pallas_conv.py``'s).
The logic lives in :mod:`mpnn_jax.benchmark`; this file only parses arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mpnn_jax import benchmark as bm
from mpnn_jax.data.order import ATOM_ORDERS


def _plot_title(info: dict) -> str:
    """The figure's heading: device and JAX version of the run (from its JSON ``info``)."""
    return f"{info.get('device', '?')}, JAX {info.get('jax', '?')}"


def _print_goals(p: argparse.ArgumentParser, paths: list[str]) -> int:
    """The goals table of earlier result files (files without model rows or largest are
    skipped)."""
    results, names = [], []
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            p.error(f"--goals {path}: not a readable JSON ({err})")
        rows = result.get("rows") if isinstance(result, dict) else None
        model_rows = isinstance(rows, list) and any(
            isinstance(r, dict) and "model" in r and "preset" in r for r in rows
        )  # not the perf scripts' other tables (kernels alone, registers)
        if model_rows or (isinstance(result, dict) and result.get("largest")):
            results.append(result)
            names.append(path)
    if not results:
        p.error("--goals: none of these files holds benchmark rows")
    print(bm.format_goals(bm.goal_figures(results, names)))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--sizes", nargs="+", default=["mace-M", "nequip-M"], choices=list(bm.MODEL_SIZES)
    )
    p.add_argument(
        "--systems",
        nargs="+",
        default=["ethanol:1000", "cu:4000", "water:12000"],
        help="kind:atoms[:order] with kind in cu, water, ethanol, aspirin and order (periodic "
        "kinds) in input, morton, species, random (mpnn_jax.data.order)",
    )
    p.add_argument(
        "--presets", nargs="+", default=["fp32", "bf16-mixed", "fp16-mixed", "fp32-highest"]
    )
    p.add_argument("--modes", nargs="+", default=["ef", "train"], choices=["ef", "train"])
    p.add_argument(
        "--variants",
        nargs="+",
        default=["take/none"],
        help="take_rows/sorted_edges, take_rows in onehot, take; sorted_edges in none, senders, "
        "receivers",
    )
    p.add_argument(
        "--backends",
        nargs="+",
        default=["e3nn"],
        help="backends of the convolution and symmetric contraction, e.g. e3nn,cueq "
        "(see mpnn_jax.nn.backends.available_backends)",
    )
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--cutoff", type=float, default=5.0)
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke run of the harness")
    p.add_argument(
        "--interleaved",
        action="store_true",
        help="compile all presets of a case, then time them in rounds (each round calls each "
        "preset once): speed-ups as the median of the rounds' ratios, robust to drift",
    )
    p.add_argument("--ceilings", action="store_true", help="also measure matmul/copy ceilings")
    p.add_argument(
        "--ceilings-n",
        type=int,
        default=8192,
        help="matrix size of the matmul ceilings (the copy moves 2048 MiB x n / 8192)",
    )
    p.add_argument(
        "--ceilings-from",
        default=None,
        help="take the ceilings of an earlier result JSON of this device (its 'ceilings')",
    )
    p.add_argument(
        "--largest",
        action="store_true",
        help="also find the largest system of the first kind that fits, per preset/mode",
    )
    p.add_argument("--only-largest", action="store_true", help="--largest without the table")
    p.add_argument(
        "--largest-probes",
        nargs="+",
        type=int,
        default=[500, 2000],
        help="probe sizes; one probe takes bytes/atom as the slope (conservative)",
    )
    p.add_argument("--largest-tries", type=int, default=3)
    p.add_argument(
        "--largest-budget-mib",
        type=float,
        default=None,
        help="memory budget (default: 90%% of what the device reports; needed on CPU)",
    )
    p.add_argument("--out", default=None, help="JSON output path")
    p.add_argument("--plot", default=None, help="throughput plot (PNG) path")
    p.add_argument(
        "--replot",
        nargs="+",
        default=None,
        metavar="JSON",
        help="draw --plot from the rows of earlier runs' JSON files of one device and exit (no "
        "benchmark runs; a case in several files: the last file's row)",
    )
    p.add_argument(
        "--goals",
        nargs="+",
        default=None,
        metavar="JSON",
        help="print where the performance goals stand in these result files and exit",
    )
    args = p.parse_args(argv)
    if args.goals:
        return _print_goals(p, args.goals)
    if args.replot:
        if not args.plot:
            p.error("--replot needs --plot PNG")
        cases: dict[tuple, dict] = {}  # one row per case, the last file's
        infos = []
        for path in args.replot:
            try:
                earlier = json.loads(Path(path).read_text())
                rows = earlier["rows"]
            except (OSError, ValueError, KeyError) as err:
                p.error(f"--replot {path}: not a benchmark JSON with rows ({err})")
            infos.append(earlier.get("info", {}))
            for r in rows:
                key = tuple(r.get(k) for k in ("model", "system", "preset", "mode", "backend"))
                cases[key + (r.get("take_rows"), r.get("sorted_edges"))] = r
        devices = {i.get("device") for i in infos}
        if len(devices) > 1:
            p.error(f"--replot: files of different devices {sorted(map(str, devices))}")
        bm.plot_throughput(list(cases.values()), args.plot, title=_plot_title(infos[0]))
        print(f"wrote {args.plot}")
        return 0
    if args.quick:
        args.sizes, args.systems, args.repeats = ["nequip-S"], ["ethanol:18", "cu:32"], 2
        args.presets = ["fp32", "bf16-mixed"]
    systems = []
    for s in args.systems:
        kind, n, *order = s.split(":")
        if len(order) > 1 or (order and order[0] not in ATOM_ORDERS):
            p.error(f"--systems {s!r}: expected kind:atoms[:order], order in {list(ATOM_ORDERS)}")
        systems.append((kind, int(n or 100), *order))
    variants = [tuple(v.split("/")) for v in args.variants]
    if any(len(v) != 2 for v in variants):
        p.error(f"--variants must be take_rows/sorted_edges, got {args.variants}")
    backends = [b for arg in args.backends for b in arg.split(",") if b]
    try:
        args.backends = bm.backend_names(backends)  # the resolved list goes into the JSON
    except ValueError as err:
        p.error(f"--backends: {err}")
    print(json.dumps(bm.device_info()))
    t0 = time.time()
    result = {"info": bm.device_info(), "command": " ".join(sys.argv), "args": vars(args)}

    def save(**updates) -> None:
        result.update(updates, wall_s=time.time() - t0)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2))

    ceilings = None
    if args.ceilings:
        n = args.ceilings_n
        ceilings = bm.device_ceilings(n=n, copy_mib=max(1, 2048 * n // 8192))
    if ceilings is None and args.ceilings_from:
        ceilings = json.loads(Path(args.ceilings_from).read_text()).get("ceilings")
    if ceilings:
        print(json.dumps(ceilings))
    rows: list[dict] = []
    save(ceilings=ceilings, rows=rows)

    def progress(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        save(rows=rows)

    if not args.only_largest:
        bm.run_benchmark(
            sizes=args.sizes,
            systems=systems,
            presets=args.presets,
            modes=args.modes,
            cutoff=args.cutoff,
            repeats=args.repeats,
            variants=variants,
            backends=args.backends,
            ceilings=ceilings,
            progress=progress,
            interleaved=args.interleaved,
        )
        print(bm.format_table(rows))
    largest: list[dict] = []
    if args.largest or args.only_largest:
        budget = None if args.largest_budget_mib is None else int(args.largest_budget_mib * 2**20)
        for size in args.sizes:
            for mode in args.modes:
                for preset in args.presets:
                    for backend in args.backends:
                        r = bm.largest_system(
                            size=size,
                            kind=systems[0][0],
                            preset=preset,
                            mode=mode,
                            cutoff=args.cutoff,
                            probe_atoms=tuple(args.largest_probes),
                            budget_bytes=budget,
                            tries=args.largest_tries,
                            backend=backend,
                        )
                        largest.append(r)
                        print(json.dumps(r), flush=True)
                        save(largest=largest)
    save()
    if args.out:
        print(f"wrote {args.out}")
    if args.plot and rows:
        bm.plot_throughput(rows, args.plot, title=_plot_title(result["info"]))
        print(f"wrote {args.plot}")
    figures = bm.goal_figures([result], [args.out or "this run"])
    if figures:
        print(bm.format_goals(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
