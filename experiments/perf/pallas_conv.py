"""The fused Pallas convolution (``"pallas"`` backend) on a GPU: agreement with the reference,
then whole models timed against the XLA reference side by side in one process.

    source experiments/gpu_env.sh && python3 experiments/perf/pallas_conv.py --out $OUT/pallas.json

1. Agreement: a NequIP-M-shaped convolution (32x0e+32x1o+32x2e, harmonics to l=2, 2,000 nodes,
   60,000 random edges) against the reference in float32 on the device: relative error of the
   output and of the gradients with respect to the node features, weights and harmonics.
2. The convolution alone on each ``--kernels`` system's graph, forward and forward + gradient,
   e3nn vs pallas, fp32 and bf16-mixed; then each pallas kernel alone for each
   ``--kernel-variants`` entry, with its byte floor (``--parts-shape mace-mp-s``: MACE MP-S's
   convolution, weights per pair of reverse edges, instead of NequIP-M's).
3. Timing: for each case ``size:system:n:preset:mode`` and each variant (``e3nn``, or
   ``pallas:KEY=V,...`` with the module settings of :mod:`mpnn_jax.nn.pallas_conv`, e.g.
   ``pallas:BLOCK_NODES=16,NUM_WARPS=8``, and ``sorted=receivers``: the graph re-sorted by
   receiver and the promise made), :func:`mpnn_jax.benchmark.measure`.
Prints a table last; ``--check-only`` stops after 1 (with ``--small`` it runs on a CPU in
Pallas's interpreter: ``tests/test_pallas_conv_script.py``), ``--no-agreement`` skips 1 (sweeps
after a first call that ran it), ``--parts-only`` times only the kernels alone in 2
(``experiments/perf/pallas_tune.sh`` sweeps their settings that way), ``--cases`` with no case
skips 3.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np

from mpnn_jax import benchmark as bm
from mpnn_jax import potential
from mpnn_jax.data.graphs import edge_mask
from mpnn_jax.nn import (
    linear,
    ops,
    pallas_conv,
    pallas_linear,
    pallas_radial,
    pallas_symmetric,
    radial,
)
from mpnn_jax.nn.convolution import e3nn_convolution, num_path_weights
from mpnn_jax.precision import get_policy
from mpnn_jax.precision import ops as precision_ops


def agreement(n_nodes: int, n_edges: int, preset: str = "fp32") -> dict[str, float]:
    """Relative max errors of the pallas convolution and its gradients against the reference."""
    irin, irsh, irout = "32x0e+32x1o+32x2e", "0e+1o+2e", "96x0e+32x1o+32x2e"
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    x = e3nn.normal(irin, k[0], (n_nodes,)).array
    sh = e3nn.normal(irsh, k[1], (n_edges,)).array
    w = jax.random.normal(k[2], (n_edges, num_path_weights(irin, irsh, irout)))
    s = jax.random.randint(k[3], (n_edges,), 0, n_nodes)
    r = jax.random.randint(k[4], (n_edges,), 0, n_nodes)
    m = jnp.arange(n_edges) < n_edges - 7
    kw = dict(irreps_out=e3nn.Irreps(irout), avg_num_neighbors=30.0, policy=get_policy(preset))

    def loss(conv, x, sh, w):
        out = conv(e3nn.IrrepsArray(irin, x), e3nn.IrrepsArray(irsh, sh), w, s, r, m, **kw)
        return jnp.sum(jnp.sin(out.array.astype(jnp.float32))), out.array

    res = {}
    outs = {}
    for name, conv in (("e3nn", e3nn_convolution), ("pallas", pallas_conv.pallas_convolution)):
        f = jax.jit(
            jax.value_and_grad(lambda *a, c=conv: loss(c, *a), argnums=(0, 1, 2), has_aux=True)
        )
        outs[name] = f(x, sh, w)
    (_, a), ga = outs["e3nn"]
    (_, b), gb = outs["pallas"]

    def rel(u, v):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        return float(np.abs(u - v).max() / np.abs(u).max())

    res["out"] = rel(a, b)
    for name, u, v in zip(("d_node_feats", "d_sh", "d_weights"), ga, gb, strict=True):
        res[name] = rel(u, v)
    return res


DEFAULTS = {k: getattr(pallas_conv, k) for k in pallas_conv.SETTINGS}
#: settings of other modules a variant may set too (same ``KEY=V`` form)
OTHER = {
    "SMALL_CONTRACTION_UNBATCHED": precision_ops,
    "STORE_16BIT": precision_ops,
    **dict.fromkeys(pallas_symmetric.SETTINGS, pallas_symmetric),
    **dict.fromkeys(pallas_linear.SETTINGS, pallas_linear),
    **dict.fromkeys(pallas_radial.SETTINGS, pallas_radial),
    "COMPOSE_INDEXED": linear,  # 0: MACE layer 0's linear and species-indexed linear as two maps
    "STORE_SINGLE_PATH": linear,  # 1: a linear's single-path outputs stored 16-bit by the GEMM
    "EDGE_GATHER": ops,  # "direct" | "sorted"
    "FOLD_SCALES": radial,
    "TAKE_ROWS": ops,  # "take" | "onehot"
    "PAIR_EDGES": potential,  # 1: radial MLPs per pair of reverse edges, 0: per edge
}
OTHER_DEFAULTS = {k: getattr(m, k) for k, m in OTHER.items()}


def apply_variant(variant: str) -> tuple[str, str]:
    """``"BACKEND[:KEY=V,...]"`` (keys of :data:`pallas_conv.SETTINGS` and of :data:`OTHER`,
    integers or, for string settings such as ``EDGE_GATHER=direct``, words; plus
    ``sorted=receivers|senders``): sets the module settings, returns (backend, sorted_edges)."""
    backend, _, spec = variant.partition(":")
    for k, v in DEFAULTS.items():
        setattr(pallas_conv, k, v)
    for k, v in OTHER_DEFAULTS.items():
        setattr(OTHER[k], k, v)
    sorted_edges = "none"
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key == "sorted":
            sorted_edges = value
        elif key in DEFAULTS:
            setattr(pallas_conv, key, type(DEFAULTS[key])(int(value)))
        elif key in OTHER:
            default = OTHER_DEFAULTS[key]
            setattr(
                OTHER[key], key, value if isinstance(default, str) else type(default)(int(value))
            )
        else:
            known = [*DEFAULTS, *OTHER]
            raise ValueError(f"unknown setting {key!r}; expected sorted or one of {known}")
    return backend, sorted_edges


def kernel_times(system, preset: str, repeats: int, variants) -> dict[str, float]:
    """One NequIP-M-shaped convolution on ``system``'s graph alone: forward, and forward plus
    the gradient with respect to node features, weights and harmonics (ms, median), for the
    reference and each pallas variant."""
    irin, irsh, irout = "32x0e+32x1o+32x2e", "0e+1o+2e", "96x0e+32x1o+32x2e"
    g = system.graph
    s, r = jnp.asarray(g.senders), jnp.asarray(g.receivers)
    n_nodes, n_edges = int(g.nodes["positions"].shape[0]), int(s.shape[0])
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    x = e3nn.normal(irin, k[0], (n_nodes,)).array
    sh = e3nn.normal(irsh, k[1], (n_edges,)).array
    w = jax.random.normal(k[2], (n_edges, num_path_weights(irin, irsh, irout)))
    m = edge_mask(g)  # the padded edges masked, as in the models
    kw = dict(irreps_out=e3nn.Irreps(irout), avg_num_neighbors=50.0, policy=get_policy(preset))
    res = {}
    for name in variants:
        backend, _ = apply_variant(name)
        conv = e3nn_convolution if backend == "e3nn" else pallas_conv.pallas_convolution

        def fwd(x, sh, w, conv=conv):
            out = conv(e3nn.IrrepsArray(irin, x), e3nn.IrrepsArray(irsh, sh), w, s, r, m, **kw)
            return jnp.sum(out.array.astype(jnp.float32) ** 2)

        for mode, f in (("fwd", jax.jit(fwd)), ("fwd+bwd", jax.jit(jax.grad(fwd, (0, 1, 2))))):
            jax.block_until_ready(f(x, sh, w))
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(f(x, sh, w))
                ts.append(1e3 * (time.perf_counter() - t0))
            res[f"{name} {mode}"] = float(np.median(ts))
    return res


def _median_ms(f, *args, repeats: int) -> float:
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(1e3 * (time.perf_counter() - t0))
    return float(np.median(ts))


#: Convolution shapes of the kernels timed alone (``--parts-shape``): irreps of the node input,
#: harmonics and output, and whether the weights are per pair of reverse edges (as the models run
#: them where the graph has ``edges["reverse"]``).
PART_SHAPES = {
    "nequip-M": ("32x0e+32x1o+32x2e", "0e+1o+2e", "96x0e+32x1o+32x2e", False),
    "mace-mp-s": ("128x0e", "0e+1o+2e+3o", "128x0e+128x1o+128x2e+128x3o", True),
    # MACE-L's second layer (hidden 0e+1o+2e): 9 input and 71 output components of 128 channels
    "mace-L": ("128x0e+128x1o+128x2e", "0e+1o+2e+3o", "128x0e+128x1o+128x2e+128x3o", True),
}


def part_times(
    system, preset: str, repeats: int, variants, shape: str = "nequip-M",
    parts=("node", "transposed", "edge"),
) -> dict[str, float]:  # fmt: skip
    """The kernels alone on ``system``'s graph (CSR built once, outside the timing), one
    convolution of :data:`PART_SHAPES` (NequIP-M's by default; MACE MP-S's with its weights per
    pair of reverse edges), ms: the node kernel over receivers, its transpose over senders, the
    edge kernel; and the bytes each must move at least (every input read once, outputs written
    once), MB."""
    from mpnn_jax.nn.pairs import edge_pairs
    from mpnn_jax.nn.pallas_conv import _csr_of, _edge_contract, _gather_sum, conv_plan

    policy = get_policy(preset)
    dt, acc = policy.dtype("messages"), policy.accum("messages")
    irin, irsh, irout, per_pair = PART_SHAPES[shape]
    plan, _ = conv_plan(irin, irsh, irout)
    g = system.graph
    s, r = jnp.asarray(g.senders, jnp.int32), jnp.asarray(g.receivers, jnp.int32)
    n, e, c = int(g.nodes["positions"].shape[0]), int(s.shape[0]), plan.channels
    pairs = edge_pairs(jnp.asarray(g.edges["reverse"])) if per_pair else None
    wrow = None if pairs is None else pairs.of_edge
    n_w = e if pairs is None else e // 2  # weight rows
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(k[0], (n, plan.n_in, c), dt)
    gout = jax.random.normal(k[1], (n, plan.n_out, c), dt)
    w = jax.random.normal(k[2], (n_w, plan.n_paths, c), dt)
    sh = jax.random.normal(k[3], (e, plan.d_sh), dt)
    live = edge_mask(g)  # padded edges are in no CSR, as in the models
    start_r, perm_r = jax.jit(_csr_of, static_argnums=(1, 2))(r, n, False, live)
    start_s, perm_s = jax.jit(_csr_of, static_argnums=(1, 2))(s, n, False, live)
    item = jnp.dtype(dt).itemsize
    edge_bytes = (n_w * plan.n_paths * c + e * plan.d_sh) * item + 3 * e * 4
    res = {
        "floor_MB node": (edge_bytes + n * plan.n_in * c * item + n * plan.n_out * c * 4) / 1e6,
        "floor_MB transposed": (edge_bytes + n * plan.n_out * c * item + n * plan.n_in * c * 4)
        / 1e6,
        "floor_MB edge": (2 * edge_bytes + n * (plan.n_in + plan.n_out) * c * item) / 1e6,
    }
    for name in variants:
        if not name.startswith("pallas"):
            continue
        apply_variant(name)
        node = jax.jit(
            lambda x, w, sh, st, pm, nb, plan=plan: _gather_sum(
                x, w, sh, st, pm, nb, wrow, plan=plan, scale=1.0, acc=acc, out_dtype=jnp.float32
            )
        )
        tp = plan.transposed()
        trans = jax.jit(
            lambda g_, w, sh, st, pm, nb, tp=tp: _gather_sum(
                g_, w, sh, st, pm, nb, wrow, plan=tp, scale=1.0, acc=acc, out_dtype=jnp.float32
            )
        )
        order = perm_r if pallas_conv.EDGE_IN_TARGET_ORDER and pairs is None else None
        kw = dict(plan=plan, scale=1.0, acc=acc, want=("dw", "dsh"), order=order, pairs=pairs)
        edge = jax.jit(lambda x, w, sh, g_, kw=kw: _edge_contract(x, w, sh, g_, s, r, live, **kw))
        calls = {
            "node": (node, (x, w, sh, start_r, perm_r, s)),
            "transposed": (trans, (gout, w, sh, start_s, perm_s, r)),
            "edge": (edge, (x, w, sh, gout)),
        }
        for part, (f, args) in calls.items():
            if part not in parts:
                continue
            try:  # a setting that does not compile (registers, shared memory) is a result too
                res[f"{name} {part}"] = _median_ms(f, *args, repeats=repeats)
            except Exception as err:  # noqa: BLE001
                res[f"{name} {part}"] = float("nan")
                res[f"{name} {part} error"] = repr(err)[:300]
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument(
        "--cases",
        nargs="*",
        default=[
            "nequip-M:water:10000:fp32:ef",
            "nequip-M:water:10000:bf16-mixed:ef",
        ],
    )
    p.add_argument("--variants", nargs="+", default=["e3nn", "pallas"])
    p.add_argument(
        "--kernel-variants", nargs="+", default=["pallas"], help="for the kernels timed alone"
    )
    p.add_argument("--check-only", action="store_true")
    p.add_argument("--kernel-presets", nargs="+", default=["fp32", "bf16-mixed"])
    p.add_argument(
        "--parts-only", action="store_true", help="kernels alone only (no whole-convolution times)"
    )
    p.add_argument(
        "--kernels", nargs="*", default=["water:10000"], help="systems for the kernel-only times"
    )
    p.add_argument(
        "--parts-shape", default="nequip-M", choices=sorted(PART_SHAPES),
        help="convolution shape of the kernels timed alone",
    )  # fmt: skip
    p.add_argument(
        "--parts", nargs="+", default=["node", "transposed", "edge"],
        choices=["node", "transposed", "edge"], help="the kernels timed alone",
    )  # fmt: skip
    p.add_argument("--small", action="store_true", help="a small agreement check (CPU)")
    p.add_argument("--no-ceilings", action="store_true")
    p.add_argument(
        "--no-agreement", action="store_true",
        help="skip the agreement check (~20 s of compiles on a GPU; sweeps after one that ran it)",
    )  # fmt: skip
    args = p.parse_args(argv)
    print(json.dumps(bm.device_info()))
    out: dict = {"device": bm.device_info(), "command": sys.argv}
    t0 = time.time()
    n, e = (40, 600) if args.small else (2000, 60000)
    if not args.no_agreement:
        out["agreement_fp32"] = agreement(n, e, "fp32")
        print("agreement fp32", json.dumps(out["agreement_fp32"]), f"{time.time() - t0:.1f}s")
    Path(args.out).write_text(json.dumps(out, indent=1))
    if args.check_only:
        return 0
    from mpnn_jax.data import SpeciesTable

    table = SpeciesTable((1, 6, 8, 29))
    systems, params_cache = {}, {}
    out["kernels"] = {}
    for spec in args.kernels:
        kind, n_atoms = spec.split(":")
        systems[(kind, int(n_atoms))] = bm.build_system(
            kind, int(n_atoms), cutoff=5.0, species_table=table
        )
        for preset in args.kernel_presets:
            if not args.parts_only:
                times = kernel_times(
                    systems[(kind, int(n_atoms))], preset, args.repeats, ["e3nn", "pallas"]
                )
                out["kernels"][f"{spec} {preset}"] = times
                print("kernels", spec, preset, json.dumps(times), flush=True)
            parts = part_times(
                systems[(kind, int(n_atoms))], preset, args.repeats, args.kernel_variants,
                args.parts_shape, args.parts,
            )  # fmt: skip
            out["kernels"][f"{spec} {preset} parts"] = parts
            print("parts", spec, preset, json.dumps(parts), flush=True)
            Path(args.out).write_text(json.dumps(out, indent=1))
    ceilings = None if args.no_ceilings else bm.device_ceilings()
    out["ceilings"], out["rows"] = ceilings, []
    for case in args.cases:
        size, kind, n_atoms, preset, mode = case.split(":")
        key = (kind, int(n_atoms))
        if key not in systems:
            systems[key] = bm.build_system(kind, int(n_atoms), cutoff=5.0, species_table=table)
        system = systems[key]
        if (size, key) not in params_cache:
            params_cache[(size, key)] = bm.init_for(size, system, cutoff=5.0)
        for v in args.variants:
            backend, sorted_edges = apply_variant(v)
            t1 = time.time()
            try:
                row = bm.measure(
                    size=size, system=system, preset=preset, mode=mode,
                    params=params_cache[(size, key)], avg_num_neighbors=bm.avg_neighbours(system),
                    cutoff=5.0, repeats=args.repeats, backend=backend, ceilings=ceilings,
                    sorted_edges=sorted_edges, take_rows=ops.TAKE_ROWS,
                )  # fmt: skip
            except Exception as err:  # noqa: BLE001 - a failing variant is a result too
                row = {"model": size, "preset": preset, "mode": mode, "error": repr(err)[:2000]}
            row["variant"], row["wall_s"] = v, time.time() - t1
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
            Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"{'model':10} {'mode':5} {'preset':11} {'variant':40} {'ms':>8} {'GB':>6}")
    for r in out["rows"]:
        print(
            f"{r['model']:10} {r['mode']:5} {r['preset']:11} {r['variant']:40} "
            f"{r.get('median_ms', float('nan')):8.2f} {(r.get('compiled_bytes') or 0) / 1e9:6.2f}"
            f"  {r.get('error', '')[:200]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
