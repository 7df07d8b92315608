"""The fastest kernel settings of a ``pallas_conv.py --parts-only`` sweep, per preset: prints a
table of every variant's time and its ratio to the defaults (``pallas``) for each kernel, and one
line per preset, ``PRESET VARIANT``, where ``VARIANT`` joins the fastest settings of each kernel
into one ``pallas:KEY=V,...`` (or ``pallas`` where the defaults won) for ``interleaved.py``.

    python3 experiments/perf/pick_parts.py node.json trans.json [--min-gain 0.03]

A kernel's setting is taken only where it beats the defaults by ``--min-gain`` (a fraction), and
settings of different kernels are joined only where their keys differ (a key that both kernels'
winners set, e.g. ``PREFETCH``, keeps the first kernel's). The pick is a candidate, not a result:
the kernels alone on random operands, confirmed or not by whole-model interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys


def parts_of(paths: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """``{preset: {part: {variant: ms}}}`` from the ``"<system> <preset> parts"`` entries."""
    res: dict = {}
    for path in paths:
        kernels = json.load(open(path)).get("kernels", {})
        for key, row in kernels.items():
            if not key.endswith(" parts"):
                continue
            preset = key.split()[1]
            for name, ms in row.items():
                variant, _, part = name.rpartition(" ")
                if not variant.startswith("pallas") or not isinstance(ms, float):
                    continue
                res.setdefault(preset, {}).setdefault(part, {})[variant] = ms
    return res


def pick(times: dict[str, float], min_gain: float) -> str:
    """The fastest variant where it beats ``pallas`` by ``min_gain``, else ``pallas``."""
    base = times.get("pallas", math.nan)
    ok = {v: t for v, t in times.items() if math.isfinite(t)}
    if not ok or not math.isfinite(base):
        return "pallas"
    best = min(ok, key=ok.get)
    return best if ok[best] < (1.0 - min_gain) * base else "pallas"


def join(variants: list[str]) -> str:
    """``["pallas:A=1", "pallas:B=2,A=3", "pallas"]`` -> ``"pallas:A=1,B=2"``."""
    settings: dict[str, str] = {}
    for v in variants:
        for item in filter(None, v.partition(":")[2].split(",")):
            key, _, value = item.partition("=")
            settings.setdefault(key, value)
    return "pallas" + (":" + ",".join(f"{k}={v}" for k, v in settings.items()) if settings else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="pallas_conv.py --out JSON files")
    p.add_argument("--min-gain", type=float, default=0.03)
    args = p.parse_args(argv)
    res = parts_of(args.files)
    if not res:
        print("no kernel parts in " + " ".join(args.files), file=sys.stderr)
        return 1
    for preset, parts in res.items():
        for part, times in parts.items():
            base = times.get("pallas", math.nan)
            print(f"# {preset} {part}")
            for v, t in sorted(times.items(), key=lambda kv: kv[1]):
                print(f"#   {t:8.3f} ms  {base / t:5.3f}x  {v}")
    for preset, parts in res.items():
        print(preset, join([pick(times, args.min_gain) for times in parts.values()]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
