"""Variants of the tiny contractions and the species-indexed linear, on whole models, in one run.

    source experiments/gpu_env.sh && python3 experiments/perf/contractions.py --out $OUT/perf.json

Variants (module constants toggled before each trace):
  old        every contraction a ``dot_general`` (``SMALL_CONTRACTION = 0``), gathered weights;
  mul        contractions of contracted size <= 16 as upcast x multiply + sum;
  mul+dense  and species-indexed linears as one dense GEMM over all weight sets + a selection.
For each case: the timing of :func:`mpnn_jax.benchmark.measure` and counts of GEMM kernels in the
compiled HLO (cuBLAS custom calls, Triton GEMM fusions, dots). Prints a short table last.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from mpnn_jax import benchmark as bm
from mpnn_jax.nn import linear
from mpnn_jax.precision import ops

VARIANTS = {"old": (0, 0), "mul": (16, 0), "mul+dense": (16, 8)}


def hlo_counts(text: str) -> dict[str, int]:
    """GEMM-like kernels and fusions of a compiled HLO module's text."""
    return {
        "cublas": len(re.findall(r'custom_call_target="__cublas', text)),
        "triton_gemm": len(re.findall(r"__triton_gemm", text)),
        "dot": len(re.findall(r"\bdot\(", text)),
        "fusion_calls": len(re.findall(r"=\s*\S+\s+fusion\(", text)),
        "custom_call": len(re.findall(r"custom-call\(", text)),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument(
        "--cases",
        nargs="+",
        default=[
            "mace-mp-s:water:3000:fp32:old,mul,mul+dense",
            "mace-mp-s:water:3000:bf16-mixed:old,mul,mul+dense",
            "nequip-M:water:10000:fp32:old,mul",
            "nequip-M:water:10000:bf16-mixed:old,mul",
        ],
    )
    p.add_argument("--modes", nargs="+", default=["ef", "train"])
    p.add_argument("--no-ceilings", action="store_true", help="skip the ceilings (CPU smoke run)")
    args = p.parse_args(argv)
    print(json.dumps(bm.device_info()))
    ceilings = None if args.no_ceilings else bm.device_ceilings()
    print(json.dumps(ceilings))

    texts: list[str] = []
    orig = bm.compiled_bytes

    def capture(compiled):
        texts.append(compiled.as_text())
        return orig(compiled)

    bm.compiled_bytes = capture
    from mpnn_jax.data import SpeciesTable

    table = SpeciesTable((1, 6, 8, 29))
    systems, params_cache, rows = {}, {}, []
    for case in args.cases:
        size, kind, n, preset, variants = case.split(":")
        key = (kind, int(n))
        if key not in systems:
            systems[key] = bm.build_system(kind, int(n), cutoff=5.0, species_table=table)
        system = systems[key]
        if (size, key) not in params_cache:
            params_cache[(size, key)] = bm.init_for(size, system, cutoff=5.0)
        params = params_cache[(size, key)]
        for mode in args.modes:
            for v in variants.split(","):
                ops.SMALL_CONTRACTION, linear.DENSE_INDEX_MAX = VARIANTS[v]
                t0 = time.time()
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
                row["variant"] = v
                row["hlo"] = hlo_counts(texts[-1]) if texts else {}
                row["wall_s"] = time.time() - t0
                rows.append(row)
                print(json.dumps(row), flush=True)
                Path(args.out).write_text(
                    json.dumps({"ceilings": ceilings, "rows": rows}, indent=1)
                )
    print(json.dumps(ceilings))
    head = f"{'model':10} {'mode':5} {'preset':11} {'variant':10} {'ms':>8} {'GB':>6}  hlo"
    print(head)
    for r in rows:
        print(
            f"{r['model']:10} {r['mode']:5} {r['preset']:11} {r['variant']:10} "
            f"{r.get('median_ms', float('nan')):8.2f} {(r.get('compiled_bytes') or 0) / 1e9:6.2f}"
            f"  {r['hlo']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
