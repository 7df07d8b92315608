"""Per-kernel GPU time of whole models (jax.profiler), to find where a preset spends its time.

    source experiments/gpu_env.sh && XLA_FLAGS=--xla_gpu_enable_command_buffer= \
        python3 experiments/perf/profile.py --out $OUT

(without that flag XLA runs the program as one CUDA graph and the trace shows one event).

For each case ``size:kind:atoms:preset:mode[:backend[:KEY=V,...]]`` (backend ``e3nn`` unless
named; settings as in ``pallas_conv.py``'s variants, the others at their defaults) the
program is compiled and warmed up, three calls are traced, and the GPU kernels are summed by HLO
op (``<out>/profile.json``, with each op's ``op_name`` metadata from the compiled HLO) and by
module and precision stage (``by_stage``, from ``op_name``: see :func:`stage_of`); the HLO
text of every case goes into ``<out>/hlo.tgz`` (the device tool brings back at most 8 files).
Prints the top kernels and stages of each case last.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import io
import json
import re
import sys
import tarfile
import tempfile
from pathlib import Path

import jax

from mpnn_jax import benchmark as bm
from mpnn_jax import xla
from mpnn_jax.data import SpeciesTable
from mpnn_jax.potential import make_predictor
from mpnn_jax.precision import get_policy
from mpnn_jax.precision.policy import STAGES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pallas_conv import apply_variant  # noqa: E402 - the variants' grammar and settings


def compile_case(size, system, preset, mode, params, backend="e3nn"):
    model = bm.make_model(
        size, policy=preset, n_species=system.n_species, cutoff=5.0,
        avg_num_neighbors=bm.avg_neighbours(system), backend=backend,
    )  # fmt: skip
    graph = bm.to_device(system.graph)
    policy = get_policy(preset)
    with policy.matmul_context():
        if mode == "ef":
            fn = xla.jit(make_predictor(model), model=model)
            args = (params, graph)
        else:
            state, step = bm.make_train_state_and_step(model, params)
            fn = xla.jit(step, model=model)
            args = (state, graph)
        return fn.lower(*args).compile(), args


def parse_case(case: str) -> tuple[str, str, str, str, str, str]:
    """``"size:kind:atoms:preset:mode[:backend[:KEY=V,...]]"`` -> its six fields, the backend's
    module settings (``pallas_conv.py``'s variant grammar) set, every other one at its default:
    ``"mace-mp-s:water:10000:bf16-mixed:ef:pallas:DX_STAGE_OUTPUT=1"``. Call it just before
    tracing that case."""
    size, kind, n, preset, mode, *rest = case.split(":")
    backend, _ = apply_variant(":".join(rest) if rest else "e3nn")
    return size, kind, n, preset, mode, backend


def kernel_times(trace_dir: str) -> dict[str, float]:
    """``{hlo_op: total µs}`` of the GPU events in a perfetto trace."""
    (path,) = glob.glob(f"{trace_dir}/plugins/profile/*/perfetto_trace.json.gz")
    data = json.load(gzip.open(path))
    events = data["traceEvents"] if isinstance(data, dict) else data
    gpu_pids = {
        e["pid"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
        and "GPU" in str(e.get("args", {}).get("name", ""))
    }  # fmt: skip
    out: dict[str, float] = collections.defaultdict(float)
    for e in events:
        on_device = e.get("pid") in gpu_pids if gpu_pids else "hlo_op" in e.get("args", {})
        if e.get("ph") == "X" and on_device:
            args = e.get("args", {})
            out[str(args.get("hlo_op", e.get("name")))] += float(e.get("dur", 0.0))
    return dict(out)


def op_names(hlo: str) -> dict[str, str]:
    """``{instruction name: op_name metadata}`` of a compiled HLO module's text.

    A fusion without an ``op_name`` of its own (XLA's pads and copies, e.g. the edge padding of
    a split-K dot) takes the first ``op_name`` inside the computation it calls, so that it is
    attributed to a module and stage rather than to "(other)".
    """
    names = {}
    for m in re.finditer(r"%?([\w.\-]+) = [^\n]*?metadata=\{[^}]*op_name=\"([^\"]*)\"", hlo):
        names[m.group(1)] = m.group(2)
    inner = {}  # computation name -> first op_name in its body
    for m in re.finditer(r"^(%[\w.\-]+) [^\n]*\{\n(.*?)^\}", hlo, flags=re.M | re.S):
        found = re.search(r"op_name=\"([^\"]*)\"", m.group(2))
        if found:
            inner[m.group(1)] = found.group(1)
    for m in re.finditer(r"%?([\w.\-]+) = [^\n]*? fusion\([^\n]*?calls=(%[\w.\-]+)", hlo):
        if m.group(1) not in names and m.group(2) in inner:
            names[m.group(1)] = inner[m.group(2)]
    return names


def stage_of(op_name: str) -> str:
    """``"<module>:<stage>"`` of an op: the first Flax module instance under the model (e.g.
    ``Convolution_1``, ``NequIPLayer_0``) and the innermost precision stage (``STAGES``: the
    policy's scope names) in its ``op_name``, with ``bwd`` appended for ops of a transpose (the
    backward pass); ``"(other)"`` where neither appears (parameter copies, the optimiser)."""
    parts = op_name.split("/")
    # a stage named inside a transformation counts too: "transpose(jvp(geometry))"
    stages = [t for q in parts for t in re.findall(r"[A-Za-z_]\w*", q) if t in STAGES]
    modules = [q for q in parts if re.fullmatch(r"[A-Z]\w*_\d+", q)]
    if not stages and not modules:
        return "(other)"
    key = f"{modules[0] if modules else '-'}:{stages[-1] if stages else '-'}"
    return key + (" bwd" if "transpose(" in op_name else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument(
        "--cases",
        nargs="+",
        default=[
            "nequip-M:water:10000:fp32:ef",
            "nequip-M:water:10000:bf16-mixed:ef",
            "mace-mp-s:water:3000:fp32:train",
            "mace-mp-s:water:3000:bf16-mixed:train",
        ],
    )
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = SpeciesTable((1, 6, 8, 29))
    systems, params_cache, results, hlo_texts = {}, {}, [], {}
    for i, case in enumerate(args.cases):
        size, kind, n, preset, mode, backend = parse_case(case)
        key = (kind, int(n))
        if key not in systems:
            systems[key] = bm.build_system(kind, int(n), cutoff=5.0, species_table=table)
        system = systems[key]
        if (size, key) not in params_cache:
            params_cache[(size, key)] = bm.init_for(size, system, cutoff=5.0)
        compiled, cargs = compile_case(
            size, system, preset, mode, params_cache[(size, key)], backend
        )
        hlo = compiled.as_text()
        hlo_texts[f"hlo_{i}.txt"] = hlo
        for _ in range(3):
            jax.block_until_ready(compiled(*cargs))
        with tempfile.TemporaryDirectory() as d:
            with jax.profiler.trace(d, create_perfetto_trace=True):
                for _ in range(3):
                    jax.block_until_ready(compiled(*cargs))
            times = kernel_times(d)
        names = op_names(hlo)
        total = sum(times.values()) / 3
        top = sorted(times.items(), key=lambda kv: -kv[1])
        by_stage: dict[str, float] = collections.defaultdict(float)
        for k, v in times.items():
            by_stage[stage_of(names.get(k, ""))] += v / 3e3
        results.append(
            {
                "case": case,
                "total_ms": total / 1e3,
                "by_stage": dict(sorted(by_stage.items(), key=lambda kv: -kv[1])),
                "kernels": [{"op": k, "ms": v / 3e3, "op_name": names.get(k, "")} for k, v in top],
            }
        )
        (out / "profile.json").write_text(json.dumps(results, indent=1))
        with tarfile.open(out / "hlo.tgz", "w:gz") as tar:
            for name, text in hlo_texts.items():
                data = text.encode()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    for r in results:
        print(f"== {r['case']}: {r['total_ms']:.2f} ms of kernels per call")
        for k in r["kernels"][: args.top]:
            print(f"  {k['ms']:7.3f} ms  {k['op'][:40]:40} {k['op_name'][-90:]}")
        print("  by module:stage:")
        for m, ms in list(r["by_stage"].items())[: args.top]:
            print(f"  {ms:7.3f} ms  {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
