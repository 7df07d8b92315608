"""The radial MLP's fused kernels alone (:mod:`mpnn_jax.nn.pallas_radial`) against XLA's GEMMs, at
MACE MP-S's sizes (8 -> 64 -> 64 -> 64 -> 512) on one GPU, for a sweep of tile settings.

Rows: 273,582 by default (the pairs of reverse edges of the 10,125-atom water box). For each
preset (``fp32``: FP32 output; ``bf16-mixed``: FP32 MLP, BF16 output, the messages dtype) it
times, median of ``--repeats`` after a warm-up, synchronised on the device:

* ``xla fwd``: the JAX MLP (:func:`pallas_radial.reference`, the output cast included);
* ``xla fwd+dx``: its value and input derivative (XLA keeps the activations in between);
* ``fwd RxWsSoO`` and ``dx RxWsSoO``: each kernel alone with R rows per program, W warps, S
  pipelining stages and O output columns per tile; ``dx RxWsSoO-split``: XLA's GEMM for the
  cotangent times the last weights, then the kernel (``RADIAL_DX_SPLIT``).

It prints a table, writes JSON, and writes the fastest settings of each kernel (summed over the
presets) as a variant string (``--best``) for ``pallas_conv.py --variants``. No claim from a CPU:
there the kernels run interpreted (``--rows`` small, for a smoke test).

    python experiments/perf/radial_kernels.py --out radial.json --best best.txt
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mpnn_jax import benchmark as bm  # noqa: E402
from mpnn_jax.nn import pallas_radial as pr  # noqa: E402

PRESETS = {"fp32": ("float32", "float32"), "bf16-mixed": ("float32", "bfloat16")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file")
    p.add_argument("--best", help="file for the fastest settings as a variant string")
    p.add_argument("--rows", type=int, default=273_582)
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 64, 64, 64, 512])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--block-rows", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    p.add_argument("--stages", type=int, nargs="+", default=[1, 3])
    p.add_argument("--block-out", type=int, nargs="+", default=[64, 128])
    args = p.parse_args(argv)

    sizes = args.sizes
    keys = jax.random.split(jax.random.PRNGKey(0), len(sizes) + 1)
    ws = tuple(
        jax.random.normal(k, (a, b)) / a**0.5 for k, a, b in zip(keys, sizes[:-1], sizes[1:])
    )  # fmt: skip
    x = jax.random.uniform(keys[-1], (args.rows, sizes[0]))
    rows, table = [], []
    device = jax.devices()[0]
    meta = {"device": getattr(device, "device_kind", str(device)), "jax": jax.__version__}
    meta |= {"rows": args.rows, "sizes": sizes, "command": sys.argv}
    for preset, (act, out) in PRESETS.items():
        g = jnp.ones((args.rows, sizes[-1]), out) * 0.01  # the cotangent, in the output's dtype

        def ref_fwd(x, ws, act=act, out=out):
            return pr.reference(ws, x, act, out)

        def ref_both(x, ws, g, act=act, out=out):
            y, vjp = jax.vjp(lambda x: pr.reference(ws, x, act, out), x)
            return y, vjp(g)[0]

        cases = [
            ("xla fwd", jax.jit(ref_fwd), (x, ws)),
            ("xla fwd+dx", jax.jit(ref_both), (x, ws, g)),
        ]
        grid = itertools.product(args.block_rows, args.warps, args.stages, args.block_out)
        for r, w, s, bo in grid:
            if sizes[-1] % bo:
                continue
            kw = dict(act=act, block=r, warps=w, bo=bo, stages=s)
            fkw = dict(kw, out_dtype=out)
            fwd = jax.jit(lambda x, ws, fkw=fkw: pr.radial_kernel(x, ws, **fkw))
            dx = jax.jit(lambda x, ws, g, kw=kw: pr.radial_dx_kernel(x, ws, g, **kw))
            tag = f"{r}x{w}s{s}o{bo}"
            cases += [(f"fwd {tag}", fwd, (x, ws)), (f"dx {tag}", dx, (x, ws, g))]
            if s == args.stages[0] and bo == args.block_out[0]:  # XLA's GEMM, then the kernel
                skw = dict(kw, split=True)
                dxs = jax.jit(lambda x, ws, g, skw=skw: pr.radial_dx_kernel(x, ws, g, **skw))
                cases.append((f"dx {tag}-split", dxs, (x, ws, g)))
        for name, fn, a in cases:
            try:
                ms = bm.time_compiled(fn, [a], warmup=1, repeats=args.repeats)["median_ms"]
            except Exception as err:  # noqa: BLE001 - a setting Triton rejects: recorded, skipped
                print(f"{preset:10} {name:18} failed: {type(err).__name__}: {err}"[:300])
                rows.append({"preset": preset, "case": name, "error": repr(err)[:500]})
                continue
            print(f"{preset:10} {name:18} {ms:8.3f} ms", flush=True)
            rows.append({"preset": preset, "case": name, "median_ms": ms})
            table.append((preset, name, ms))
            Path(args.out).write_text(json.dumps({**meta, "results": rows}, indent=1))

    # per kernel and setting, the time summed over the presets; then the fastest pair of
    # settings that share the output tile width (one module setting for both kernels)
    totals: dict[tuple[str, str], dict[str, float]] = {}
    for preset, name, ms in table:
        kind, _, tag = name.partition(" ")
        if kind in ("fwd", "dx"):
            totals.setdefault((kind, tag), {})[preset] = ms
    full = {k: sum(v.values()) for k, v in totals.items() if len(v) == len(PRESETS)}

    def parse(tag):  # "32x4s1o64[-split]" -> {"r": 32, "w": 4, "s": 1, "o": 64, "split": 0|1}
        base, _, split = tag.partition("-")
        return dict(zip("rwso", map(int, re.split("[xso]", base)))) | {"split": int(bool(split))}

    pairs = [
        (full[("fwd", f)] + full[("dx", d)], f, d)
        for (kf, f), (kd, d) in itertools.product(full, full)
        if kf == "fwd" and kd == "dx" and (parse(f)["o"] == parse(d)["o"] or parse(d)["split"])
    ]
    best, variant = {}, ""
    if pairs:
        _, ft, dt = min(pairs)
        best = {"fwd": ft, "dx": dt}
        f, d = parse(ft), parse(dt)
        variant = (
            f"pallas:RADIAL_FUSED=1,RADIAL_BLOCK_ROWS={f['r']},RADIAL_WARPS={f['w']},RADIAL_STAGES={f['s']},"
            f"RADIAL_DX_BLOCK_ROWS={d['r']},RADIAL_DX_WARPS={d['w']},RADIAL_DX_STAGES={d['s']},"
            f"RADIAL_BLOCK_OUT={f['o']},RADIAL_DX_SPLIT={d['split']}"
        )
    print("fastest:", best, variant)
    result = {**meta, "results": rows, "best": best, "variant": variant}
    Path(args.out).write_text(json.dumps(result, indent=1))
    if args.best:
        Path(args.best).write_text(variant + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
