"""Benchmark energy+forces and training steps per precision preset; prints a table, writes JSON.

    python experiments/benchmark.py --quick                       # CPU smoke run (no timing claims)
    python experiments/benchmark.py --sizes mace-M nequip-M --systems cu:4000 water:12000 \
        --presets fp32 bf16-mixed fp16-mixed fp32-highest --out h100.json

The logic lives in :mod:`mpnn_jax.benchmark`; this file only parses arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mpnn_jax import benchmark as bm


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--sizes", nargs="+", default=["mace-M", "nequip-M"], choices=list(bm.MODEL_SIZES)
    )
    p.add_argument(
        "--systems",
        nargs="+",
        default=["ethanol:1000", "cu:4000", "water:12000"],
        help="kind:atoms with kind in cu, water, ethanol, aspirin",
    )
    p.add_argument(
        "--presets", nargs="+", default=["fp32", "bf16-mixed", "fp16-mixed", "fp32-highest"]
    )
    p.add_argument("--modes", nargs="+", default=["ef", "train"], choices=["ef", "train"])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--cutoff", type=float, default=5.0)
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke run of the harness")
    p.add_argument("--ceilings", action="store_true", help="also measure matmul/copy ceilings")
    p.add_argument(
        "--largest",
        action="store_true",
        help="also find the largest system of the first kind that fits, per preset/mode",
    )
    p.add_argument("--out", default=None, help="JSON output path")
    p.add_argument("--plot", default=None, help="throughput plot (PNG) path")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.systems, args.repeats = ["nequip-S"], ["ethanol:18", "cu:32"], 2
        args.presets = ["fp32", "bf16-mixed"]
    systems = []
    for s in args.systems:
        kind, _, n = s.partition(":")
        systems.append((kind, int(n or 100)))
    print(json.dumps(bm.device_info()))
    t0 = time.time()
    ceilings = bm.device_ceilings() if args.ceilings else None
    if ceilings:
        print(json.dumps(ceilings))
    rows = bm.run_benchmark(
        sizes=args.sizes,
        systems=systems,
        presets=args.presets,
        modes=args.modes,
        cutoff=args.cutoff,
        repeats=args.repeats,
        progress=lambda r: print(json.dumps(r), flush=True),
    )
    print(bm.format_table(rows))
    largest = []
    if args.largest:
        for size in args.sizes:
            for mode in args.modes:
                for preset in args.presets:
                    r = bm.largest_system(
                        size=size, kind=systems[0][0], preset=preset, mode=mode, cutoff=args.cutoff
                    )
                    largest.append(r)
                    print(json.dumps(r), flush=True)
    result = {
        "info": bm.device_info(),
        "command": " ".join(sys.argv),
        "rows": rows,
        "wall_s": time.time() - t0,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    if args.plot:
        bm.plot_throughput(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
