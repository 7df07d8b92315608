"""What the data-parallel (sharded) path costs on ONE device, against the plain single-device path.

    python3 experiments/perf/parallel_overhead.py --out $OUT/parallel_overhead.json
    python3 experiments/perf/parallel_overhead.py --model nequip --batch-sizes 5 64 --out r.json
    python3 experiments/perf/parallel_overhead.py --quick --out /tmp/r.json      # CPU smoke run

Same model, same weights, same padded batches (``--n-inputs`` different batches of ``--data``
molecules, padded to one common bucket and cycled so caches do not flatter) through

* ``plain``: ``jax.jit(make_train_step(...))`` on a batch (what ``train`` runs on one device) and
  ``jax.jit(make_predictor(model))`` (energy + forces);
* ``sharded``: :func:`mpnn_jax.training.parallel.make_parallel_train_step` and
  :func:`~mpnn_jax.training.parallel.make_sharded_predictor` over a 1-device mesh, on the same
  batch stacked to ``[1, ...]`` (what ``train`` runs on several devices, minus communication).

Each case: compile time, then the median / p10 / p90 of ``--repeats`` timed calls after warm-up,
each synchronised with ``jax.block_until_ready`` (:func:`mpnn_jax.benchmark.time_compiled`);
``ratio`` is sharded / plain of the medians. The programs are traced one after another and
compiled in ``--compile-workers`` threads (XLA compiles outside the GIL, so tracing the next
program overlaps compiling the last), so the default GPU run
(MACE of ``experiments/configs/ethanol_mace.yaml``, batches of 5 and 64 ethanol molecules) stays
within about two minutes. ``--quick``: a tiny model, small batches and few repeats, to keep the
script working on a CPU (no timing claim).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml

from mpnn_jax import benchmark as bm
from mpnn_jax.training import parallel

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FULL = {"mace": "ethanol_mace.yaml", "nequip": "ethanol_nequip.yaml"}
QUICK_SIZES = {
    "mace": yaml.safe_load((CONFIGS / "tiny.yaml").read_text())["model"]["sizes"],
    "nequip": dict(channels=8, max_ell=1, n_layers=1, n_basis=4, radial_features=[8]),
}


def model_sizes(name: str, *, quick: bool) -> tuple[dict, float]:
    """``(sizes, cutoff Å)``: the ethanol config's model, or a tiny one with ``quick``."""
    cfg = yaml.safe_load((CONFIGS / FULL[name]).read_text())
    return (QUICK_SIZES[name] if quick else cfg["model"]["sizes"]), float(cfg["data"]["cutoff"])


def padded_batches(graphs: list, *, batch_size: int, n_inputs: int, seed: int = 0) -> list:
    """``n_inputs`` different shuffled batches of ``batch_size`` graphs, padded to one common
    bucket (:func:`mpnn_jax.training.parallel.group_bucket`): one compile per program."""
    from mpnn_jax.data import GraphLoader

    loader = GraphLoader(graphs, batch_size=batch_size, shuffle=True, seed=seed)
    stream = parallel.host_batch_stream(loader, epoch=0, position=0)
    indices: list[np.ndarray] = []
    while len(indices) < n_inputs:  # full batches only (an epoch's last one may be short)
        idx = next(stream)
        if len(idx) == batch_size:
            indices.append(idx)
    bucket = parallel.group_bucket(loader, indices)
    return [loader.make_batch(idx, bucket=bucket) for idx in indices]


def build_cases(model: Any, params: Any, batches: list, mesh: Any) -> dict[str, tuple]:
    """``{case: (jitted fn, [args, ...])}`` for train / ef x plain / sharded on the same batches.

    The train steps share one optimiser, loss and initial state (that of
    :func:`mpnn_jax.benchmark.make_train_state_and_step`); the state is not threaded through
    the timed calls, so every call does the same work.
    """
    from mpnn_jax.potential import make_predictor
    from mpnn_jax.training.loss import make_loss_fn
    from mpnn_jax.training.optim import make_optimizer

    predict = make_predictor(model)
    state, step = bm.make_train_state_and_step(model, params)
    optimizer, _ = make_optimizer(lr=1e-3, optimizer="adam")  # as make_train_state_and_step
    sharded_step = parallel.make_parallel_train_step(
        predict,
        mesh=mesh,
        loss_fn=make_loss_fn(energy_weight=1.0, forces_weight=100.0),
        optimizer=optimizer,
        ema_decay=0.99,
    )
    plain = [bm.to_device(b) for b in batches]
    stacked = [
        parallel.shard_batch(jax.tree_util.tree_map(lambda x: x[None], b), mesh) for b in batches
    ]  # [1, ...] each
    rep_state, rep_params = parallel.replicate(state, mesh), parallel.replicate(params, mesh)
    return {
        "train/plain": (jax.jit(step), [(state, g) for g in plain]),
        "train/sharded": (sharded_step, [(rep_state, g) for g in stacked]),
        "ef/plain": (jax.jit(predict), [(params, g) for g in plain]),
        "ef/sharded": (
            parallel.make_sharded_predictor(predict, mesh),
            [(rep_params, g) for g in stacked],
        ),
    }


def compile_cases(cases: dict[Any, tuple], workers: int) -> dict[Any, tuple[Any, float, float]]:
    """``{case: (compiled, trace s, compile s)}``: each program is traced (lowered) in this thread
    and handed to a pool of ``workers`` threads for XLA's compile (outside the GIL), so tracing
    the next program overlaps compiling the last ones."""

    def compile_one(lowered: Any) -> tuple[Any, float]:
        t0 = time.perf_counter()
        return lowered.compile(), time.perf_counter() - t0

    futures, trace_s = {}, {}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for key, (fn, args) in cases.items():
            t0 = time.perf_counter()
            lowered = fn.lower(*args[0])
            trace_s[key] = time.perf_counter() - t0
            futures[key] = pool.submit(compile_one, lowered)
        return {k: (*f.result(), trace_s[k]) for k, f in futures.items()}


def run(
    *,
    model_name: str,
    data: str | None,
    batch_sizes: list[int],
    quick: bool,
    repeats: int,
    warmup: int,
    n_inputs: int,
    compile_workers: int,
    progress=print,
) -> dict[str, Any]:
    """Every (mode, batch size) case, plain and sharded; the JSON-able result."""
    from mpnn_jax.data import SpeciesTable, atoms_to_graph, bundled_path, read_xyz
    from mpnn_jax.models import build_model
    from mpnn_jax.potential import init_params

    t_start = time.perf_counter()
    sizes, cutoff = model_sizes(model_name, quick=quick)
    path = data or str(bundled_path("rmd17_ethanol", "train"))
    n_read = max(batch_sizes) * n_inputs
    configs = read_xyz(path, index=f":{n_read}")
    species = SpeciesTable.from_configs(configs)
    graphs = [atoms_to_graph(c, cutoff=cutoff, species_table=species) for c in configs]
    avg_nn = float(np.mean([int(np.sum(g.n_edge)) / int(np.sum(g.n_node)) for g in graphs]))
    model = build_model(
        model_name, policy="fp32", n_species=len(species), cutoff=cutoff,
        avg_num_neighbors=avg_nn, **sizes,
    )  # fmt: skip
    mesh = parallel.make_mesh(jax.devices()[:1])
    phases = {"data_s": time.perf_counter() - t_start}
    batches = {bs: padded_batches(graphs, batch_size=bs, n_inputs=n_inputs) for bs in batch_sizes}
    t0 = time.perf_counter()  # one set of weights for every case, made on the CPU (a quicker
    with jax.default_device(jax.devices("cpu")[0]):  # compile than the GPU's; eager is slow)
        init = jax.jit(lambda k, g: init_params(model, k, g))
        params = init(jax.random.PRNGKey(0), batches[batch_sizes[0]][0])
    params = jax.block_until_ready(jax.device_put(params, jax.devices()[0]))
    phases["init_s"] = time.perf_counter() - t0
    cases = {
        (bs, k): v
        for bs in batch_sizes
        for k, v in build_cases(model, params, batches[bs], mesh).items()
    }
    t0 = time.perf_counter()
    compiled = compile_cases(cases, compile_workers)
    phases["trace_and_compile_s"] = time.perf_counter() - t0
    progress(f"traced and compiled {len(cases)} programs in {phases['trace_and_compile_s']:.1f} s")
    t0 = time.perf_counter()
    rows = []
    for bs in batch_sizes:
        first = batches[bs][0]
        for mode in ("train", "ef"):
            row: dict[str, Any] = {
                "mode": mode,
                "batch_size": bs,
                "n_atoms": int(np.sum(first.n_node[:-1])),
                "padded_nodes": int(first.n_node.sum()),
                "padded_edges": int(first.senders.shape[0]),
            }
            for path_name in ("plain", "sharded"):
                fn, compile_s, trace_s = compiled[(bs, f"{mode}/{path_name}")]
                _, args = cases[(bs, f"{mode}/{path_name}")]
                t = bm.time_compiled(fn, args, warmup=warmup, repeats=repeats)
                row[path_name] = {"trace_s": trace_s, "compile_s": compile_s, **t}
            row["ratio"] = row["sharded"]["median_ms"] / row["plain"]["median_ms"]
            rows.append(row)
            progress(format_row(row))
    phases["timing_s"] = time.perf_counter() - t0
    return {
        "model": model_name,
        "sizes": sizes,
        "cutoff": cutoff,
        "data": path,
        "rows": rows,
        "phases": phases,
    }


HEAD = (
    f"{'mode':5} {'batch':>5} {'atoms':>6} {'plain ms':>9} {'p10-p90':>15} "
    f"{'sharded ms':>10} {'p10-p90':>15} {'ratio':>6}"
)


def format_row(r: dict) -> str:
    def cell(t: dict) -> str:
        return f"{t['median_ms']:9.3f} {t['p10_ms']:7.3f}-{t['p90_ms']:<7.3f}"

    p, s = r["plain"], r["sharded"]
    return (
        f"{r['mode']:5} {r['batch_size']:5d} {r['n_atoms']:6d} {cell(p)} "
        f"{s['median_ms']:10.3f} {s['p10_ms']:7.3f}-{s['p90_ms']:<7.3f} {r['ratio']:6.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(FULL), default="mace")
    p.add_argument("--data", help="extended-XYZ molecules (default: bundled rMD17 ethanol)")
    p.add_argument("--batch-sizes", type=int, nargs="+")
    p.add_argument("--repeats", type=int)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--n-inputs", type=int, default=4, help="different batches, cycled")
    p.add_argument("--compile-workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny model, few repeats (CPU)")
    p.add_argument("--out", help="write the JSON result here")
    a = p.parse_args(argv)
    batch_sizes = a.batch_sizes or ([2, 4] if a.quick else [5, 64])
    repeats = a.repeats or (3 if a.quick else 30)
    t0 = time.time()
    info = bm.device_info()
    print(f"{info['device']} ({info['platform']}), jax {info['jax']}, commit {info['commit']}")
    print(HEAD + "\n" + "-" * len(HEAD))
    result = run(
        model_name=a.model,
        data=a.data,
        batch_sizes=batch_sizes,
        quick=a.quick,
        repeats=repeats,
        warmup=1 if a.quick else a.warmup,
        n_inputs=2 if a.quick else a.n_inputs,
        compile_workers=a.compile_workers,
    )
    out = {
        "info": info,
        "command": " ".join([Path(sys.argv[0]).name, *argv]),
        "quick": a.quick,
        "repeats": repeats,
        **result,
        "wall_s": time.time() - t0,
    }
    print(f"wall {out['wall_s']:.1f} s; ratio = sharded / plain (median)")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
