"""The most a mixed preset can speed up a profiled program (``mpnn_jax.benchmark.stage_bound``).

    python experiments/perf/stage_bound.py \
        experiments/results/benchmarks/h100_s17/profile_s17/profile.json --out bound.json

Reads ``profile.json`` files of ``experiments/perf/profile.py`` (GPU kernel time per module and
precision stage), pairs each ``fp32`` case with the cases of the same model, system, mode and
backend under another preset in the same file (one process, one device), and prints for each
pair: the FP32 time, the share of it in stages the preset keeps in FP32, the measured ratio, the
speed-up of the 16-bit stages, the bound with every 16-bit stage 2x faster (against the FP32
stages' FP32 time, and as they ran), and the 16-bit speed-up a target ratio would need. Kernel
sums, not wall times: launch gaps are left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mpnn_jax.benchmark.stage_bound import precision_bound


def pairs(cases: list[dict]) -> list[tuple[dict, dict]]:
    """``(fp32 case, other-preset case)`` of the same ``size:kind:atoms:*:mode[:backend]`` (the
    last fp32 case of a key where a file has several)."""

    def key(case):
        size, kind, n, preset, mode, *rest = case["case"].split(":")
        return (size, kind, n, mode, *rest), preset

    fp32 = {key(c)[0]: c for c in cases if key(c)[1] == "fp32"}
    return [(fp32[k], c) for c in cases for k, p in [key(c)] if p != "fp32" and k in fp32]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("profiles", nargs="+", help="profile.json files")
    p.add_argument("--k", type=float, default=2.0, help="speed-up of each 16-bit stage")
    p.add_argument("--target-ef", type=float, default=1.5)
    p.add_argument("--target-train", type=float, default=1.3)
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args(argv)
    found = [(f, pair) for f in args.profiles for pair in pairs(json.loads(Path(f).read_text()))]
    rows = []
    for f, (a, b) in found:
        preset, mode = b["case"].split(":")[3], b["case"].split(":")[4]
        target = args.target_train if mode == "train" else args.target_ef
        r = precision_bound(
            a["by_stage"], preset, low_by_stage=b["by_stage"], k=args.k, target=target
        )
        rows.append({"case": b["case"], "profile": f, **r})
    if not rows:
        print("no fp32 / mixed pairs in these profiles", file=sys.stderr)
        return 1
    head = (
        f"{'case':44s} {'fp32 ms':>8s} {'fixed':>6s} {'meas.':>6s} {'S x':>5s} "
        f"{'bound':>6s} {'bound*':>6s} {'target':>6s} {'k need':>6s}"
    )
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(
            f"{r['case']:44s} {r['fp32_ms']:8.2f} {r['fixed_share']:6.0%} {r['measured']:6.3f} "
            f"{r['scalable_speedup']:5.2f} {r['bound']:6.3f} {r['bound_low_fixed']:6.3f} "
            f"{r['target']:6.2f} {r['k_needed']:6.2f}"
        )
    print(
        f"fixed: share of the FP32 time in stages the preset keeps FP32; S x: measured speed-up of "
        f"its 16-bit stages; bound: T / (F + S / {args.k:g}); bound*: the FP32 stages as they ran "
        "under the preset; k need: the 16-bit speed-up the target needs"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
