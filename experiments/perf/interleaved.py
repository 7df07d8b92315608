"""Whole-model programs timed in interleaved rounds on one device: each round calls every program
once, so the drift that moves one program's median by up to 5% between rows of one process
(PERFORMANCE_LOG entry 27) falls on all of them alike, and a speed-up is the median over rounds
of the first program's time over each other's (:func:`mpnn_jax.benchmark.time_interleaved`).

    source experiments/gpu_env.sh && python3 experiments/perf/interleaved.py --out F.json \\
        --case mace-mp-s:water:10000:train --programs pallas@fp32 pallas@bf16-mixed

A program is ``VARIANT@PRESET`` or ``VARIANT@PRESET@PADDING``: ``VARIANT`` as in
``pallas_conv.py`` (``e3nn``, ``pallas``, ``pallas:KEY=V,...`` with the kernels' module
settings), applied before that program is traced and compiled; ``PADDING`` (``edges=1024``,
``nodes=8`` or both, comma-separated) pads the edges or nodes of its system to that multiple
instead of the training buckets' (:mod:`mpnn_jax.data.buckets`): the same atoms and edges,
another padded shape. The same weights for all. Prints a table, each program's pad
copies (XLA's ``pad`` fusions in the compiled program, by shape) and the speed-ups between every
two programs; writes JSON (device, command, rows with every round's time). No timing claim comes
from a CPU: there the run only checks that the tool works.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

from mpnn_jax import benchmark as bm
from mpnn_jax.data import SpeciesTable
from mpnn_jax.nn import ops

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pallas_conv import apply_variant  # noqa: E402 - the variants' grammar and settings


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument(
        "--case", required=True, help="SIZE:SYSTEM:ATOMS:MODE, e.g. mace-mp-s:water:10000:ef"
    )
    p.add_argument(
        "--programs", nargs="+", required=True, help="VARIANT@PRESET, the first the reference"
    )
    p.add_argument("--repeats", type=int, default=20, help="rounds")
    p.add_argument("--inputs", type=int, default=3, help="perturbed input sets, used in turn")
    p.add_argument(
        "--consecutive",
        type=int,
        default=0,
        help="then time each program this many times in a row too (time_compiled), to compare",
    )
    args = p.parse_args(argv)
    try:
        size, kind, n_atoms, mode = args.case.split(":")
        programs = [spec.split("@") for spec in args.programs]
        if any(len(prog) not in (2, 3) for prog in programs):
            raise ValueError("each program must be VARIANT@PRESET or VARIANT@PRESET@PADDING")
        multiples = [padding(prog[2] if len(prog) == 3 else "") for prog in programs]
    except ValueError as err:
        p.error(f"{err} (case {args.case!r}, programs {args.programs})")

    table = SpeciesTable((1, 6, 8, 29))
    systems = {
        m: bm.build_system(
            kind,
            int(n_atoms),
            cutoff=5.0,
            species_table=table,
            edge_multiple=m[0],
            node_multiple=m[1],
        )  # fmt: skip
        for m in dict.fromkeys(multiples)
    }
    first = systems[multiples[0]]
    params = bm.init_for(size, first, cutoff=5.0)
    out = {"device": bm.device_info(), "command": sys.argv, "case": args.case, "rows": []}
    compiled = {}
    for (variant, preset, *_), multiple, spec in zip(
        programs, multiples, args.programs, strict=True
    ):
        backend, sorted_edges = apply_variant(variant)
        if sorted_edges != "none":
            p.error(f"{spec}: sorted edges are not supported here (pallas_conv.py times them)")
        system = systems[multiple]
        graphs = [bm.to_device(g) for g in bm.perturbed_inputs(system.graph, args.inputs)]
        model = bm.make_model(
            size, policy=preset, n_species=system.n_species, cutoff=5.0,
            avg_num_neighbors=bm.avg_neighbours(first), backend=backend,
        )  # fmt: skip
        fn, inputs, compile_s = bm.compile_program(
            model,
            params,
            graphs,
            mode=mode,
            implementation=ops.implementation(take_rows=ops.TAKE_ROWS, sorted_edges="none"),
        )
        row = bm.case_row(size, system, preset, mode, model, take_rows=ops.TAKE_ROWS)
        row.update(
            variant=variant, compile_s=compile_s, compiled_bytes=bm.compiled_bytes(fn),
            padded_edges=int(system.graph.senders.shape[0]), pad_copies=pad_copies(fn),
            padded_nodes=int(system.graph.nodes["species"].shape[0]),
        )  # fmt: skip
        out["rows"].append(row)
        print(f"compiled {spec} in {compile_s:.1f} s", flush=True)
        if bm.fits_at_run_time(fn, inputs):
            compiled[spec] = (fn, inputs)
        else:  # out of device memory beside the programs before it: no times, the rest go on
            row["oom"] = True
            print(f"{spec} ran out of device memory: left out of the rounds", flush=True)
    if not compiled:
        p.error("no program fits in device memory")
    times = bm.time_interleaved(compiled, repeats=args.repeats)
    for row, spec in zip(out["rows"], args.programs, strict=True):
        if spec in times:
            row.update(times[spec], interleaved=True)
    if args.consecutive:  # the same programs one after the other, as pallas_conv.py's rows
        for row, spec in zip(out["rows"], args.programs, strict=True):
            if spec not in compiled:
                continue
            alone = bm.time_compiled(*compiled[spec], repeats=args.consecutive)
            row["consecutive"] = {k: alone[k] for k in ("median_ms", "p10_ms", "p90_ms")}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"{'program':45} {'ms':>8} {'p10-p90':>15} {'speed-up vs first (p10-p90)':>30}")
    for row, spec in zip(out["rows"], args.programs, strict=True):
        if row.get("oom"):
            print(f"{spec:45} {'out of memory':>8}")
            continue
        ratio = (
            f"{row['ratio_to_first']:.3f}x ({row['ratio_p10']:.3f}-{row['ratio_p90']:.3f})"
            if "ratio_to_first" in row
            else ""
        )
        spread = f"{row['p10_ms']:.2f}-{row['p90_ms']:.2f}"
        alone = row.get("consecutive")
        alone = f"  consecutive {alone['median_ms']:.2f} ms" if alone else ""
        print(f"{spec:45} {row['median_ms']:8.2f} {spread:>15} {ratio:>30}{alone}")
    for row, spec in zip(out["rows"], args.programs, strict=True):
        copies = ", ".join(f"{n} x {shape}" for shape, n in row["pad_copies"].items()) or "none"
        padded = f"{row['padded_nodes']} nodes, {row['padded_edges']} edges"
        print(f"pad copies of {spec} ({padded} padded): {copies}")
    timed = [(row, spec) for row, spec in zip(out["rows"], args.programs) if not row.get("oom")]
    if len(timed) > 2:
        print("speed-up of the column's program over the row's (median over rounds):")
        print(" " * 4 + "".join(f"{j:>9}" for j in range(len(timed))))
        for i, (a, spec) in enumerate(timed):
            cells = [bm.speed_up(a, b) for b, _ in timed]
            print(f"{i:>4}" + "".join(f"{c:9.3f}" for c in cells) + f"  {spec}")
    return 0


def padding(text: str) -> tuple[int | None, int | None]:
    """``"edges=1024,nodes=8"`` -> ``(1024, 8)``; a missing key (or ``""``) is ``None``: the
    training buckets' multiple."""
    values = {"edges": None, "nodes": None}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in values or not value.isdigit() or int(value) < 1:
            raise ValueError(f"padding must be edges=N and/or nodes=N, got {text!r}")
        values[key] = int(value)
    return values["edges"], values["nodes"]


def pad_copies(compiled) -> dict[str, int]:
    """XLA's pad fusions in a compiled program by output shape (e.g. the copies that pad a
    dot's reduction dimension before XLA splits it): ``{"f32[274432,64]": 20, ...}``."""
    text = compiled.as_text()
    shapes = re.findall(r"^\s*%\S*pad\S*fusion\S* = (\w+\[[\d,]*\])", text, re.M)
    return dict(collections.Counter(shapes).most_common())


if __name__ == "__main__":
    sys.exit(main())
