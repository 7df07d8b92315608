"""Each edge's cell by a gather (transpose: atomic scatter-adds onto a few 3x3 cells) or by a
one-hot contraction (transpose: a reduction), side by side in one process.

    source experiments/gpu_env.sh && python3 experiments/perf/cell_select.py --out $OUT/cell.json
    .venv/bin/python experiments/perf/cell_select.py --quick --out /tmp/cell.json   # CPU check

For every case ``size:kind:atoms`` (default NequIP-M and MACE MP-S on 10,125 water atoms) and
every preset and mode, the program is compiled and timed twice by
:func:`mpnn_jax.benchmark.measure`: with ``mpnn_jax.potential.CELL_ONEHOT_MAX_GRAPHS = 0``
(the gather) and with the library's default (the one-hot contraction). Rows carry
``cell_select`` ("gather" / "onehot"); the table prints each pair's speed-up. The JSON is
rewritten after every row. No timing claims from the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mpnn_jax import benchmark as bm
from mpnn_jax import potential
from mpnn_jax.data import SpeciesTable

SETTINGS = {"gather": 0, "onehot": potential.CELL_ONEHOT_MAX_GRAPHS}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON output path")
    p.add_argument("--cases", nargs="+", default=["nequip-M:water:10000", "mace-mp-s:water:10000"])
    p.add_argument("--presets", nargs="+", default=["fp32", "bf16-mixed"])
    p.add_argument("--modes", nargs="+", default=["ef", "train"], choices=["ef", "train"])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.cases, args.repeats = ["nequip-S:water:24"], 2
    table = SpeciesTable((1, 6, 8, 29))
    result = {"info": bm.device_info(), "command": " ".join(sys.argv), "rows": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for case in args.cases:
        size, kind, n = case.split(":")
        system = bm.build_system(kind, int(n), cutoff=5.0, species_table=table)
        params = bm.init_for(size, system, cutoff=5.0)
        for mode in args.modes:
            for preset in args.presets:
                for name, limit in SETTINGS.items():
                    saved = potential.CELL_ONEHOT_MAX_GRAPHS
                    potential.CELL_ONEHOT_MAX_GRAPHS = limit  # read when the program is traced
                    try:
                        row = bm.measure(
                            size=size,
                            system=system,
                            preset=preset,
                            mode=mode,
                            params=params,
                            avg_num_neighbors=bm.avg_neighbours(system),
                            cutoff=5.0,
                            repeats=args.repeats,
                        )
                    finally:
                        potential.CELL_ONEHOT_MAX_GRAPHS = saved
                    row["cell_select"] = name
                    result["rows"].append(row)
                    result["wall_s"] = time.time() - t0
                    out.write_text(json.dumps(result, indent=1))
                    print(json.dumps(row), flush=True)
    print(format_pairs(result["rows"]))
    return 0


def format_pairs(rows: list[dict]) -> str:
    """One line per (model, system, mode, preset): ms with the gather, with the one-hot, ratio."""
    pairs: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if not r.get("oom"):
            key = (r["model"], r["system"], r["mode"], r["preset"])
            pairs.setdefault(key, {})[r["cell_select"]] = r["median_ms"]
    lines = [
        f"{'model':10} {'system':12} {'mode':5} {'preset':11} {'gather':>9} {'onehot':>9} ratio"
    ]
    for (model, system, mode, preset), ms in pairs.items():
        g, o = ms.get("gather"), ms.get("onehot")
        ratio = f"{g / o:.3f}x" if g and o else "-"
        lines.append(
            f"{model:10} {system:12} {mode:5} {preset:11} {g or float('nan'):9.3f} "
            f"{o or float('nan'):9.3f} {ratio}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
