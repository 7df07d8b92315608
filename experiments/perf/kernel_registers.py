"""Registers, spills and occupancy of the pallas convolution kernels, compiled for an H100
(sm_90a) on any machine: no GPU needed.

Each kernel is lowered by Pallas to Triton IR here (JAX's own lowering, as on a GPU), compiled
to PTX by the `triton` package and assembled by its ``ptxas``. ptxas reports the registers per
thread and any spills; from them follow the programs that fit on one multiprocessor (65,536
registers, 64 warps, 32 blocks on sm_90) and the share of its warp slots they fill. This is a
static measurement: it says whether a setting such as ``EDGE_STREAM`` frees registers, not how
fast the kernel runs (see ``pallas_conv.py --parts`` on a GPU for that).

Caveat: XLA's GPU compiler runs the Triton IR through the Triton bundled with jaxlib, which may
schedule registers differently from the `triton` package's release; the figures are that
release's (the JSON records its version).

Needs the `triton` package (``pip install triton``, Linux x86-64 wheels bundle ptxas), in this
Python or in another given by ``--triton-python`` (its own virtual environment: triton is not a
dependency of mpnn_jax).

    python experiments/perf/kernel_registers.py --out regs.json \\
        --shapes mace-mp-s nequip-M --variants pallas pallas:EDGE_STREAM=2

Prints a table and writes JSON (per shape, preset, variant and kernel: warps, registers per
thread, spill bytes, programs per multiprocessor, occupancy).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pallas_conv import PART_SHAPES, apply_variant  # noqa: E402

from mpnn_jax.nn import pallas_conv  # noqa: E402
from mpnn_jax.precision import get_policy  # noqa: E402

#: sm_90 (H100, H200) per multiprocessor: registers, warp slots, resident blocks; registers are
#: allocated per warp in units of 256 (8 per thread).
SM90 = {"registers": 65536, "warps": 64, "blocks": 32, "reg_unit": 8}

#: Compiles Triton IR files (JSON list of {"path", "num_warps", "num_stages"} on stdin) for
#: sm_90a and prints, per file, ptxas's registers and spills. Run by the Python with `triton`.
_COMPILE = r"""
import json, os, re, subprocess, sys, tempfile
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
import triton
from triton.backends.compiler import GPUTarget
bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
ptxas = next(p for p in (os.path.join(bindir, n) for n in ("ptxas-blackwell", "ptxas"))
             if os.path.exists(p))
out = []
for job in json.load(sys.stdin):
    k = triton.compile(job["path"], target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": job["num_warps"], "num_stages": job["num_stages"]})
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(k.asm["ptx"])
    r = subprocess.run([ptxas, "-arch=sm_90a", "-v", f.name, "-o", os.devnull],
                       capture_output=True, text=True)
    os.unlink(f.name)
    info = r.stdout + r.stderr
    m = re.search(r"Used (\d+) registers", info)
    if r.returncode or not m:
        raise SystemExit(f"ptxas failed on {job['path']}:\n{info}")
    num = lambda pat: int(re.search(pat, info).group(1)) if re.search(pat, info) else 0
    out.append({"registers": int(m.group(1)), "spill_store_B": num(r"(\d+) bytes spill stores"),
                "spill_load_B": num(r"(\d+) bytes spill loads"),
                "stack_B": num(r"(\d+) bytes stack frame"), "shared_B": k.metadata.shared})
print(json.dumps({"triton": triton.__version__, "ptxas": os.path.basename(ptxas), "kernels": out}))
"""


@contextlib.contextmanager
def capture_triton_modules():
    """Collects ``{"name", "num_warps", "num_stages", "ir"}`` (the Triton IR as text) of every
    ``pallas_call`` lowered for a GPU inside the block.

    Hooks JAX's Pallas-to-Triton lowering (``jax._src.pallas.triton``; verified with JAX 0.10.2,
    whose lowering emits the IR into a custom call; a JAX that compiles the IR during lowering
    needs its GPU plugin there): a private interface, so a JAX that moved it fails here loudly
    rather than measuring nothing.
    """
    from jax._src.pallas.triton import pallas_call_registration as reg

    found: list[dict] = []
    lower, custom_call = reg.lowering.lower_jaxpr_to_triton_module, reg.mlir.custom_call

    def lower_hook(*a, **k):
        res = lower(*a, **k)
        found.append({"ir": res.module.operation.get_asm()})
        return res

    def call_hook(*a, **k):
        bc = k.get("backend_config") or {}
        if found and "num_warps" in bc and "name" not in found[-1]:
            found[-1].update(
                name=str(bc["name"]).strip('"'),
                num_warps=int(str(bc["num_warps"]).split(":")[0]),
                num_stages=int(str(bc["num_stages"]).split(":")[0]),
            )
        return custom_call(*a, **k)

    reg.lowering.lower_jaxpr_to_triton_module, reg.mlir.custom_call = lower_hook, call_hook
    try:
        yield found
    finally:
        reg.lowering.lower_jaxpr_to_triton_module, reg.mlir.custom_call = lower, custom_call
    if any("name" not in f for f in found):
        raise RuntimeError("a Triton module was lowered without its pallas_call's settings")


@contextlib.contextmanager
def settings_for_gpu(variant: str):
    """``variant``'s settings (``"pallas[:KEY=V,...]"``, :func:`pallas_conv.apply_variant`) with
    the kernels built for Triton rather than the CPU interpreter; the defaults again after."""
    apply_variant(variant)
    interpret, pallas_conv.INTERPRET = pallas_conv.INTERPRET, False
    try:
        yield
    finally:
        pallas_conv.INTERPRET = interpret
        apply_variant("pallas")


def kernel_calls(shape: str, preset: str, n_nodes: int = 64, n_edges: int = 512) -> dict:
    """``{kernel: (function, args)}`` for the node kernel, its transpose and the edge kernel
    (and, for MACE, the order-3 product basis's forms ``sym_H``, ``sym_G`` and the
    species-indexed linear ``indexed``, :mod:`mpnn_jax.nn.pallas_linear`) at
    :data:`pallas_conv.PART_SHAPES`'s ``shape`` (with the weights per pair of reverse edges
    where the shape has them), on a small ring-like graph: the kernels' code does not depend on
    the graph's size."""
    from mpnn_jax.nn.pairs import edge_pairs
    from mpnn_jax.nn.pallas_conv import _csr_of, _edge_contract, _gather_sum, conv_plan

    policy = get_policy(preset)
    dt, acc = policy.dtype("messages"), policy.accum("messages")
    irin, irsh, irout, per_pair = PART_SHAPES[shape]
    plan, _ = conv_plan(irin, irsh, irout)
    c = plan.channels
    pairs = edge_pairs(jnp.arange(n_edges, dtype=jnp.int32) ^ 1) if per_pair else None
    wrow = None if pairs is None else pairs.of_edge
    n_w = n_edges // 2 if per_pair else n_edges
    x = jnp.zeros((n_nodes, plan.n_in, c), dt)  # [n, n_in, C]
    g = jnp.zeros((n_nodes, plan.n_out, c), dt)  # [n, n_out, C]
    w = jnp.zeros((n_w, plan.n_paths, c), dt)  # [n_w, n_paths, C]
    sh = jnp.zeros((n_edges, plan.d_sh), dt)  # [e, d_sh]
    s = jnp.arange(n_edges, dtype=jnp.int32) % n_nodes  # mates: e and e ^ 1 (reversed)
    r = jnp.where(jnp.arange(n_edges) % 2 == 0, (s + 1) % n_nodes, (s - 1) % n_nodes)
    live = jnp.ones(n_edges, bool)
    start_r, perm_r = _csr_of(r, n_nodes, False, live)
    start_s, perm_s = _csr_of(s, n_nodes, False, live)
    tp = plan.transposed()
    kw = dict(scale=1.0, acc=acc, out_dtype=jnp.float32)
    edge_kw = dict(plan=plan, scale=1.0, acc=acc, want=("dw", "dsh"), pairs=pairs)
    calls = {
        "node": (
            lambda x, w, sh: _gather_sum(x, w, sh, start_r, perm_r, s, wrow, plan=plan, **kw),
            (x, w, sh),
        ),
        "transposed": (
            lambda g, w, sh: _gather_sum(g, w, sh, start_s, perm_s, r, wrow, plan=tp, **kw),
            (g, w, sh),
        ),
        "edge": (
            lambda x, w, sh, g: _edge_contract(x, w, sh, g, s, r, live, **edge_kw),
            (x, w, sh, g),
        ),
    }
    if shape.startswith("mace"):  # the order-3 product basis's forms (pallas_symmetric)
        from mpnn_jax.nn.pallas_symmetric import FormSpec, form_g, form_h

        spec = FormSpec(irsh, "0e")  # MACE MP-S: l <= 3 features per channel, hidden 0e
        u = jnp.zeros((n_nodes, spec.d, c), policy.dtype("update"))  # [n, d, C]
        h = jnp.zeros((n_nodes, spec.n_q, c), jnp.float32)  # [n, Q, C]
        calls["sym_H"] = (lambda a, b, z: form_h(a, b, z, spec), (u, u, u))
        calls["sym_G"] = (lambda a, b, q: form_g(a, b, q, spec), (u, u, h))
        # layer 0's species-indexed linear on the l = 3 chunk (pallas_linear), 4 species
        from mpnn_jax.nn.pallas_linear import indexed_matmul

        xa = jnp.zeros((n_nodes, c, 7), policy.dtype("update"))  # [n, C, 2l+1]
        wa = jnp.zeros((4, c, c), policy.dtype("update"))  # [n_sets, C, C]
        z = jnp.arange(n_nodes, dtype=jnp.int32) % 4
        calls["indexed"] = (lambda a, b: indexed_matmul(a, b, z), (xa, wa))
    # the radial MLP's forward kernel and input derivative (pallas_radial), MACE's sizes:
    # 8 -> 64 -> 64 -> 64 -> n_paths x C, FP32 operands (the radial stage) and the output and its
    # cotangent in the messages dtype
    from mpnn_jax.nn.pallas_radial import radial_mlp

    sizes = (8, 64, 64, 64, plan.n_paths * c)
    ws = tuple(jnp.zeros((a, b), jnp.float32) for a, b in zip(sizes[:-1], sizes[1:]))
    xr = jnp.zeros((n_w, 8), policy.dtype("radial"))  # [rows, n_basis]
    gr = jnp.zeros((n_w, sizes[-1]), dt)  # [rows, n_out]: the output's cotangent
    act = policy.dtype("radial")

    def radial_dx(x, g):
        _, vjp = jax.vjp(lambda x: radial_mlp(ws, x, act_dtype=act, out_dtype=dt), x)
        return vjp(g)[0]

    calls["radial"] = (lambda x: radial_mlp(ws, x, act_dtype=act, out_dtype=dt), (xr,))
    calls["radial_dx"] = (radial_dx, (xr, gr))
    return calls


def lower_kernels(shape: str, preset: str, variant: str, kernels) -> list[dict]:
    """The Triton modules of ``kernels`` under ``variant`` (``"pallas[:KEY=V,...]"``, the
    settings of :mod:`mpnn_jax.nn.pallas_conv`), lowered for CUDA without a GPU."""
    with settings_for_gpu(variant):
        calls = kernel_calls(shape, preset)
        out = []
        for kernel in kernels:
            fn, args = calls[kernel]
            with capture_triton_modules() as found:
                # a new function object per variant: JAX caches traces per function
                jax.jit(lambda *a, fn=fn: fn(*a)).trace(*args).lower(lowering_platforms=("cuda",))
            if not found:
                raise RuntimeError(f"{kernel}: no pallas_call was lowered")
            out += [dict(m, kernel=kernel) for m in found]
        return out


def lower_program(size: str, preset: str, mode: str, variant: str, n_atoms: int = 300) -> list:
    """The Triton modules of a whole program, as the models run them: ``size``'s (e.g.
    ``"mace-mp-s"``) E+F predictor (``mode="ef"``) or training step (``"train"``) with
    ``backend="pallas"`` on a small water box, lowered for CUDA without a GPU. One entry per
    distinct module (the same kernel in two layers counts once), ``kernel`` = its name."""
    from mpnn_jax import benchmark as bm
    from mpnn_jax.data import SpeciesTable
    from mpnn_jax.potential import make_predictor

    with settings_for_gpu(variant):
        table = SpeciesTable((1, 6, 8, 29))
        system = bm.build_system("water", n_atoms, cutoff=5.0, species_table=table)
        params = bm.init_for(size, system, cutoff=5.0)
        model = bm.make_model(
            size, policy=preset, n_species=system.n_species, cutoff=5.0,
            avg_num_neighbors=bm.avg_neighbours(system), backend="pallas",
        )  # fmt: skip
        if mode == "ef":
            fn, args = make_predictor(model), (params, system.graph)
        else:
            state, fn = bm.make_train_state_and_step(model, params)
            args = (state, system.graph)
        with get_policy(preset).matmul_context(), capture_triton_modules() as found:
            jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))
        seen, out = set(), []
        for m in found:
            key = (m["ir"], m["num_warps"])
            if key not in seen:
                seen.add(key)
                out.append(dict(m, kernel=m["name"]))
        return out


def occupancy(registers: int, num_warps: int, sm: dict = SM90) -> tuple[int, float]:
    """(programs resident on one multiprocessor, share of its warp slots) for a kernel of
    ``registers`` per thread and ``num_warps`` warps (shared memory ignored: these kernels use
    a few bytes).

    Example:
        >>> occupancy(99, 8)  # 104 registers x 256 threads: 2 programs, 16 of 64 warps
        (2, 0.25)
    """
    unit = sm["reg_unit"]
    per_program = -(-registers // unit) * unit * 32 * num_warps
    programs = min(sm["registers"] // per_program, sm["warps"] // num_warps, sm["blocks"])
    return programs, programs * num_warps / sm["warps"]


def compile_modules(modules: list[dict], triton_python: str) -> dict:
    """Compiles ``modules`` (Triton IR text) for sm_90a with ``triton_python``'s triton;
    returns its JSON (``{"triton", "ptxas", "kernels": [...]}``)."""
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for i, m in enumerate(modules):
            path = os.path.join(tmp, f"k{i}.ttir")
            Path(path).write_text(m["ir"])
            jobs.append({"path": path, "num_warps": m["num_warps"], "num_stages": m["num_stages"]})
        r = subprocess.run(
            [triton_python, "-c", _COMPILE], input=json.dumps(jobs), capture_output=True, text=True
        )
    if r.returncode:
        if "No module named 'triton'" in r.stderr:
            raise SystemExit(
                f"{triton_python} has no `triton`: pip install triton there, or pass "
                "--triton-python PYTHON of an environment that has it"
            )
        raise SystemExit(f"compiling failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file")
    p.add_argument("--shapes", nargs="+", default=sorted(PART_SHAPES), choices=sorted(PART_SHAPES))
    p.add_argument("--presets", nargs="+", default=["fp32", "bf16-mixed"])
    p.add_argument("--variants", nargs="+", default=["pallas"], help="pallas[:KEY=V,...]")
    p.add_argument(
        "--kernels", nargs="+", default=["node", "transposed", "edge"],
        choices=["node", "transposed", "edge", "sym_H", "sym_G", "indexed", "radial", "radial_dx"],
        help="sym_H, sym_G: MACE's order-3 forms; indexed: its species-indexed linear (mace "
        "shapes only); radial, radial_dx: the radial MLP (MACE's widths) and its derivative",
    )  # fmt: skip
    p.add_argument("--triton-python", default=sys.executable, help="a Python with `triton`")
    p.add_argument(
        "--program", nargs=2, metavar=("SIZE", "MODE"),
        help="every kernel of a model's whole program instead (e.g. mace-mp-s ef, nequip-M "
        "train): --presets and --variants apply, --shapes and --kernels do not",
    )  # fmt: skip
    args = p.parse_args(argv)

    rows, modules = [], []
    for target in [args.program] if args.program else args.shapes:
        for preset in args.presets:
            for variant in args.variants:
                if args.program:
                    label = ":".join(target)
                    found = lower_program(target[0], preset, target[1], variant)
                else:
                    label, found = target, lower_kernels(target, preset, variant, args.kernels)
                for m in found:
                    keys = ("kernel", "name", "num_warps", "num_stages")
                    rows.append(
                        {"shape": label, "preset": preset, "variant": variant}
                        | {k: m[k] for k in keys}
                    )
                    modules.append(m)
    print(f"lowered {len(modules)} kernels; compiling for sm_90a ...", flush=True)
    compiled = compile_modules(modules, args.triton_python)
    head = f"{'shape':10} {'preset':10} {'variant':36} {'kernel':18} warps regs spill_B programs/SM occupancy"  # noqa: E501
    print(head)
    for row, res in zip(rows, compiled["kernels"], strict=True):
        programs, occ = occupancy(res["registers"], row["num_warps"])
        row.update(res, programs_per_sm=programs, occupancy=occ)
        print(
            f"{row['shape']:10} {row['preset']:10} {row['variant']:36} {row['kernel']:18} "
            f"{row['num_warps']:5} {res['registers']:4} {res['spill_store_B']:7} "
            f"{programs:11} {occ:9.3f}"
        )
    meta = {
        "what": "registers per thread and spills reported by ptxas for sm_90a (static: no GPU)",
        "jax": jax.__version__, "triton": compiled["triton"], "assembler": compiled["ptxas"],
        "sm": SM90, "command": " ".join(["python", *sys.argv]),
    }  # fmt: skip
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
