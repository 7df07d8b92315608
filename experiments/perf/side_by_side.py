"""Implementation settings of the library timed side by side in one process, same weights.

    source experiments/gpu_env.sh && python3 experiments/perf/side_by_side.py \
        --settings cell_select edge_multiple --out $OUT/side_by_side.json
    .venv/bin/python experiments/perf/side_by_side.py --quick --out /tmp/sbs.json   # CPU check

Settings (:data:`SETTINGS`), each a set of variants whose programs compute the same values:

* ``cell_select``: each edge's cell by a gather (``mpnn_jax.potential.CELL_ONEHOT_MAX_GRAPHS =
  0``; transpose: atomic scatter-adds onto a few 3x3 cells), by the library's default (the
  one-hot contraction for at most ``CELL_ONEHOT_MAX_GRAPHS`` graphs, transpose: a reduction) or
  by the one-hot contraction for any number of graphs. PERFORMANCE_LOG entries 10-11.
* ``edge_multiple``: the edge dimension padded to a multiple of 64, 128 or 1024 (XLA pads the
  edge dimension of the radial MLP's weight-gradient dots before splitting their reduction;
  PERFORMANCE_LOG entry 11, :func:`mpnn_jax.data.buckets.edge_multiple`).

Measured there and reverted (entry 11): the convolution's sender features rounded to 16 bits
before the gather rather than after it (``gather_cast``, at b7a520f).

For every case ``size:kind:atoms`` (default NequIP-M and MACE MP-S on 10,125 water atoms), mode,
preset and setting, each variant's program is compiled and timed by
:func:`mpnn_jax.benchmark.measure`, the variants one after the other. Rows carry ``setting`` and
``variant``; the table prints each variant's ms and its speed-up over the setting's first
variant. The JSON is rewritten after every row. No timing claims from the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mpnn_jax import benchmark as bm
from mpnn_jax import potential
from mpnn_jax.data import SpeciesTable


@contextlib.contextmanager
def _cell_limit(limit: int) -> Iterator[None]:
    saved = potential.CELL_ONEHOT_MAX_GRAPHS
    potential.CELL_ONEHOT_MAX_GRAPHS = limit  # read when the program is traced
    try:
        yield
    finally:
        potential.CELL_ONEHOT_MAX_GRAPHS = saved


#: setting -> variant -> (context manager factory around tracing, build_system keywords)
SETTINGS: dict[str, dict[str, tuple[Callable[[], contextlib.AbstractContextManager], dict]]] = {
    "cell_select": {
        "gather": (lambda: _cell_limit(0), {}),
        "onehot": (lambda: _cell_limit(potential.CELL_ONEHOT_MAX_GRAPHS), {}),
        "onehot-any": (lambda: _cell_limit(2**31), {}),  # whatever the number of graphs
    },
    "edge_multiple": {
        str(m): (contextlib.nullcontext, {"edge_multiple": m}) for m in (64, 128, 1024)
    },
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON output path")
    p.add_argument("--settings", nargs="+", default=["edge_multiple"], choices=sorted(SETTINGS))
    p.add_argument("--cases", nargs="+", default=["nequip-M:water:10000", "mace-mp-s:water:10000"])
    p.add_argument("--presets", nargs="+", default=["fp32", "bf16-mixed"])
    p.add_argument("--modes", nargs="+", default=["ef", "train"], choices=["ef", "train"])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.cases, args.repeats = ["nequip-S:water:24"], 2
    bm.policy_names(args.presets)  # a typo fails before any compile
    table = SpeciesTable((1, 6, 8, 29))
    result = {"info": bm.device_info(), "command": " ".join(sys.argv), "rows": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for case in args.cases:
        size, kind, n = case.split(":")
        systems: dict[str, bm.System] = {}  # one build per padding: json(kwargs) -> system

        def system_for(kwargs: dict, kind=kind, n=n, systems=systems) -> bm.System:
            key = json.dumps(kwargs, sort_keys=True)
            if key not in systems:
                systems[key] = bm.build_system(
                    kind, int(n), cutoff=5.0, species_table=table, **kwargs
                )
            return systems[key]

        base = system_for({})
        params = bm.init_for(size, base, cutoff=5.0)  # parameters do not depend on padding
        avg_num_neighbors = bm.avg_neighbours(base)  # real edges only: the same for every padding
        for mode in args.modes:
            for preset in args.presets:
                for setting in args.settings:
                    for variant, (context, kwargs) in SETTINGS[setting].items():
                        system = system_for(kwargs)
                        with context():
                            row = bm.measure(
                                size=size,
                                system=system,
                                preset=preset,
                                mode=mode,
                                params=params,
                                avg_num_neighbors=avg_num_neighbors,
                                cutoff=5.0,
                                repeats=args.repeats,
                            )
                        row.update(
                            setting=setting,
                            variant=variant,
                            n_edges_padded=int(system.graph.senders.shape[0]),
                        )
                        result["rows"].append(row)
                        result["wall_s"] = time.time() - t0
                        out.write_text(json.dumps(result, indent=1))
                        print(json.dumps(row), flush=True)
    print(format_table(result["rows"]))
    return 0


def format_table(rows: list[dict]) -> str:
    """One line per (model, mode, preset, setting, variant): ms and speed-up over the first."""
    first: dict[tuple, float] = {}
    lines = [
        f"{'model':10} {'mode':5} {'preset':11} {'setting':13} {'variant':8} {'ms':>9} speed-up"
    ]
    for r in rows:
        key = (r["model"], r["system"], r["mode"], r["preset"], r["setting"])
        if r.get("oom"):
            lines.append(f"{r['model']:10} {r['mode']:5} {r['preset']:11} {key[4]:13} "
                         f"{r['variant']:8} {'OOM':>9}")  # fmt: skip
            continue
        ms = r["median_ms"]
        ratio = f"{first[key] / ms:.3f}x" if key in first else "1 (reference)"
        first.setdefault(key, ms)
        lines.append(
            f"{r['model']:10} {r['mode']:5} {r['preset']:11} {key[4]:13} {r['variant']:8} "
            f"{ms:9.3f} {ratio}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
