"""cuEquivariance kernels vs pure XLA: MACE at cuEquivariance's MP-S size, E+F and a training step.

MACE with 128 channels, hidden ``0e``, max_ell 3, correlation 3, 2 interactions on a periodic water
box of ~3000 atoms (~160k edges at a 5 Å cutoff), backend ``e3nn`` (pure XLA) vs ``cueq``
(:mod:`mpnn_jax.nn.cueq`: fused convolution and symmetric contraction), presets ``fp32`` and
``bf16-mixed``. Each case: compile, then the median of ``--repeats`` synchronised calls after
warm-up (:func:`mpnn_jax.benchmark.time_compiled`) rotating among 3 perturbed inputs; ``ef`` is
the jitted predictor (energy + forces), ``train`` the library's training step (energy + force
loss gradient with respect to the parameters, Adam, EMA). The same FP32 parameters feed every
case. The JSON (``--out``) is rewritten after every case; a case that fails records its error and
the run goes on. ``--quick``: a tiny model on a 24-atom box, on CPU, for the test suite (no timing
claims; there the cueq backend runs cuequivariance_jax's pure-JAX "naive" method).

GPU run, from the repository root on the GPU machine (JAX 0.11.2, CUDA 13, Python 3.12, no
internet), with the wheels of ``.whl`` (experiments/gpu_env.sh) and ``.whl_cueq`` (cuequivariance,
cuequivariance-jax, cuequivariance-ops(-jax)-cu13 0.13.0, einops, packaging, and tqdm,
platformdirs, nvidia-ml-py for the ops package) carried; about 4-6 minutes on an H100 (8 cases,
compiles of 10-30 s each; ``--budget-s`` stops starting new cases)::

    source experiments/gpu_env.sh && python3 -m pip install -q --no-index --no-deps \\
        --no-compile --no-cache-dir --upgrade --target /tmp/site .whl_cueq/*.whl && \\
    python3 experiments/perf/cueq_vs_xla.py --out "$OUT/cueq_vs_xla.json"

On a GPU the script stops at once if the CUDA kernels do not load (rather than timing the slow
naive fallback); ``libcue_ops.so`` needs ``libcublas(Lt).so.13`` and ``libnvrtc.so.13``, which
:mod:`mpnn_jax.nn.cueq` loads from the ``nvidia`` pip packages of JAX's CUDA plugin if needed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax

from mpnn_jax import benchmark as bm
from mpnn_jax import xla

#: cuEquivariance's MP-S MACE (the harness's ``mace-mp-s``) and a tiny one for ``--quick``.
MP_S = dict(bm.MODEL_SIZES["mace-mp-s"])
QUICK = dict(
    name="mace", num_channels=4, hidden_irreps="0e", max_ell=1, correlation=2,
    num_interactions=1, n_basis=4, radial_features=(8,),
)  # fmt: skip


def build_case_model(spec: dict[str, Any], system: Any, *, preset: str, backend: str, cutoff):
    """The MACE of ``spec`` for ``system`` under ``preset`` with ``backend``."""
    from mpnn_jax.models import build_model

    spec = dict(spec)
    return build_model(
        spec.pop("name"),
        policy=preset,
        n_species=system.n_species,
        cutoff=cutoff,
        avg_num_neighbors=bm.avg_neighbours(system),
        backend=backend,
        **spec,
    )


def random_params(model, graph: Any, *, seed: int = 0) -> Any:
    """FP32 parameters with the distribution of ``model.init`` (N(0, 1); N(0, 1)/multiplicity for
    the symmetric contraction), drawn in NumPy on the traced shapes: no ``init`` to compile."""
    import re

    import jax.numpy as jnp
    import numpy as np

    from mpnn_jax.potential import init_params

    shapes = jax.eval_shape(lambda g: init_params(model, jax.random.PRNGKey(0), g), graph)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        x = rng.standard_normal(leaf.shape)
        if re.fullmatch(r"w\d+_\w+", str(path[-1].key)):  # [n_species, k, channels]
            x = x / leaf.shape[1]
        return jnp.asarray(x, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def run_case(
    model, params: Any, graphs: list, *, mode: str, warmup: int, repeats: int
) -> dict[str, Any]:
    """Compiles and times one case; ``mode`` is ``"ef"`` or ``"train"``. A JSON-able row."""
    from mpnn_jax.potential import make_predictor

    row: dict[str, Any] = {}
    with model.policy.matmul_context():
        if mode == "ef":
            fn = xla.jit(make_predictor(model), model=model)
            args = [(params, g) for g in graphs]
        else:
            state, step = bm.make_train_state_and_step(model, params)
            fn = xla.jit(step, model=model)
            args = [(state, g) for g in graphs]
        t0 = time.perf_counter()
        compiled = fn.lower(*args[0]).compile()
        row["compile_s"] = time.perf_counter() - t0
        row.update(bm.time_compiled(compiled, args, warmup=warmup, repeats=repeats))
        if mode == "ef":
            row["energy"] = float(compiled(*args[0])["energy"][0])
    row["peak_bytes"] = bm.peak_device_bytes()
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """preset | mode | backend | median ms | p10-p90 | compile s | e3nn / this."""
    base = {
        (r["preset"], r["mode"]): r["median_ms"]
        for r in rows
        if r["backend"] == "e3nn" and "median_ms" in r
    }
    lines = [
        f"{'preset':<11} {'mode':<5} {'backend':<7} {'median ms':>10} {'p10-p90 ms':>15} "
        f"{'compile s':>9} {'speed-up':>8}"
    ]
    for r in rows:
        head = f"{r['preset']:<11} {r['mode']:<5} {r['backend']:<7}"
        if "median_ms" not in r:
            lines.append(f"{head} {'failed: ' + r.get('error', 'oom')[:60]}")
            continue
        ref = base.get((r["preset"], r["mode"]))
        speed = f"{ref / r['median_ms']:.2f}x" if ref else "-"
        spread = f"{r['p10_ms']:.2f}-{r['p90_ms']:.2f}"
        lines.append(
            f"{head} {r['median_ms']:>10.2f} {spread:>15} {r['compile_s']:>9.1f} {speed:>8}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--atoms", type=int, default=3000, help="water box size (atoms)")
    p.add_argument("--cutoff", type=float, default=5.0)
    p.add_argument("--presets", nargs="+", default=["fp32", "bf16-mixed"])
    p.add_argument("--modes", nargs="+", default=["ef", "train"], choices=["ef", "train"])
    p.add_argument("--backends", nargs="+", default=["e3nn", "cueq"])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--budget-s", type=float, default=540.0, help="start no new case after this many seconds"
    )
    p.add_argument("--quick", action="store_true", help="tiny CPU run (used by the tests)")
    p.add_argument("--out", default=None, help="JSON file, rewritten after every case")
    args = p.parse_args(argv)

    from mpnn_jax.data import SpeciesTable
    from mpnn_jax.nn.backends import available_backends

    spec = QUICK if args.quick else MP_S
    if args.quick:
        args.atoms, args.cutoff = 24, 3.0
        args.repeats, args.warmup = 2, 1
    bm.policy_names(args.presets)
    if "cueq" in args.backends:
        import mpnn_jax.nn.cueq  # noqa: F401 - fails loudly where the backend cannot load
    missing = [b for b in args.backends if b not in available_backends()]
    if missing:
        print(f"unavailable backends {missing}; available: {available_backends()}", file=sys.stderr)
        return 2
    if "cueq" in args.backends:
        from mpnn_jax.nn.cueq import default_method, gpu_kernels_available

        method = default_method()
        if jax.default_backend() == "gpu" and not args.quick and method != "uniform_1d":
            print(f"cueq: CUDA kernels do not load: {gpu_kernels_available()}", file=sys.stderr)
            return 3

    system = bm.build_system(
        "water", args.atoms, cutoff=args.cutoff, species_table=SpeciesTable((1, 8))
    )
    graphs = [bm.to_device(g) for g in bm.perturbed_inputs(system.graph, 3)]
    ref_model = build_case_model(spec, system, preset="fp32", backend="e3nn", cutoff=args.cutoff)
    params = random_params(ref_model, graphs[0])
    print(f"{system.name}: {system.n_atoms} atoms, {system.n_edges} edges; model {spec}")

    result: dict[str, Any] = dict(
        args=vars(args), spec=spec, system=system.name, n_atoms=system.n_atoms,
        n_edges=system.n_edges, device=bm.device_info(), rows=[],
    )  # fmt: skip
    t_start = time.perf_counter()
    for mode in args.modes:
        for preset in args.presets:
            for backend in args.backends:
                row: dict[str, Any] = dict(preset=preset, mode=mode, backend=backend)
                if time.perf_counter() - t_start > args.budget_s:
                    row["error"] = f"skipped: past the {args.budget_s:.0f} s budget"
                    result["rows"].append(row)
                    continue
                if backend == "cueq":
                    row["method"] = default_method()
                model = build_case_model(
                    spec, system, preset=preset, backend=backend, cutoff=args.cutoff
                )
                try:
                    row.update(
                        run_case(
                            model, params, graphs, mode=mode, warmup=args.warmup,
                            repeats=args.repeats,
                        )
                    )  # fmt: skip
                    row["atom_steps_per_s"] = system.n_atoms / (row["median_ms"] * 1e-3)
                except Exception as err:  # noqa: BLE001 - record and go on to the next case
                    row["oom" if bm.is_oom(err) else "error"] = repr(err)[:2000]
                result["rows"].append(row)
                print(format_table(result["rows"]).splitlines()[-1], flush=True)
                if args.out:
                    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    print()
    print(format_table(result["rows"]))
    ok = [r for r in result["rows"] if "median_ms" in r]
    return 0 if len(ok) == len(result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
