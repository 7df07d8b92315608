"""Accuracy of the cuEquivariance backend on the device it runs on, against the e3nn reference.

Issue #8 asks that every optimisation keep the models' accuracy and that the custom kernels get
equivariance and force-conservation checks of their own (custom kernels have produced
non-conservative forces elsewhere). The CPU tests (``tests/nn/test_cueq_backend.py``) run
cuequivariance_jax's pure-JAX "naive" method; this script checks the CUDA kernels themselves, on
the periodic water box and model size that the benchmark times (MACE MP-S, 3,000 atoms, random
FP32 weights shared by every case). For each (backend, preset) it reports:

* the energy and force error against the e3nn model under ``fp64`` (same weights);
* the equivariance error: forces of the box rotated by a random O(3) element (positions and
  lattice vectors) against the rotated forces, relative to the RMS force;
* the conservation error: the central difference of the energy along a random unit direction
  of all coordinates (step ``--fd-step`` Å) against ``-F . d``, in meV/Å, with the same figure
  for the e3nn ``fp64`` model as the floor set by the step itself.

Usage (on the GPU, with the wheels of ``.whl`` and ``.whl_cueq``, see cueq_vs_xla.py)::

    python3 experiments/perf/cueq_accuracy.py --out "$OUT/cueq_accuracy.json"
    python experiments/perf/cueq_accuracy.py --quick --out /tmp/acc.json   # CPU check (naive)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from mpnn_jax import benchmark as bm
from mpnn_jax import study
from mpnn_jax.data import SpeciesTable, atoms_to_graph
from mpnn_jax.data.xyz import atoms_to_configuration
from mpnn_jax.testing import random_o3, transform_graph

MEV = 1000.0


def _moved(graph, direction: np.ndarray, step: float):
    """``graph`` with its positions moved by ``step * direction`` (Å)."""
    pos = np.asarray(graph.nodes["positions"], np.float64)
    return graph._replace(nodes={**graph.nodes, "positions": pos + step * direction})


def check_case(model, params, graph, *, policy: str, ref: dict, rotation, direction, step):
    """Errors of ``model`` under ``policy`` on ``graph`` (see the module docstring). The graph,
    its rotated copy and the two displaced copies go through one batch: one compile per case."""
    graphs = [graph, transform_graph(graph, rotation=rotation)]
    graphs += [_moved(graph, s * direction, step) for s in (1.0, -1.0)]
    out = study.predict_all(model, params, graphs, policy=policy)
    n = int(out["n_atoms"][0])
    forces = [out["forces"][k * n : (k + 1) * n] for k in range(2)]
    pred = {k: (v[:1] if k not in ("forces", "forces_label") else v[:n]) for k, v in out.items()}
    rms = float(np.sqrt(np.mean(forces[0] ** 2))) or 1.0
    equivariance = float(np.sqrt(np.mean((forces[1] - forces[0] @ rotation.T) ** 2)))
    fd = (out["energy"][2] - out["energy"][3]) / (2 * step)  # dE/ds, eV/Å
    analytic = -float(np.sum(forces[0] * direction))
    err = study.compare(pred, ref)
    return {
        "energy_err_mev_per_atom": err["energy_mae_mev_per_atom"],
        "forces_rmse_mev_per_A": err["forces_rmse_mev_per_A"],
        "forces_max_mev_per_A": err["forces_max_mev_per_A"],
        "forces_rel_rmse": err["forces_rel_rmse"],
        "rms_force_eV_per_A": rms,
        "equivariance_rel_rmse": equivariance / rms,
        "fd_dE_ds_eV_per_A": float(fd),
        "minus_F_dot_d_eV_per_A": analytic,
        "conservation_err_mev_per_A": MEV * abs(float(fd) - analytic),
        "finite": err["finite"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", default="mace-mp-s", choices=list(bm.MODEL_SIZES))
    p.add_argument("--atoms", type=int, default=3000, help="water box size (atoms)")
    p.add_argument("--cutoff", type=float, default=5.0, help="Å")
    p.add_argument("--presets", nargs="+", default=["fp32", "bf16-mixed", "fp32-highest"])
    p.add_argument("--backends", nargs="+", default=["e3nn", "cueq"])
    p.add_argument("--fd-step", type=float, default=1e-2, help="finite-difference step (Å)")
    p.add_argument("--quick", action="store_true", help="mace-S on 24 atoms (a CPU check)")
    p.add_argument("--out", default=None, help="JSON output path")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.atoms = "mace-S", 24
    try:
        bm.backend_names(args.backends)
        bm.policy_names(args.presets)
    except ValueError as err:
        p.error(str(err))
    t0 = time.time()
    table = SpeciesTable((1, 6, 8, 29))  # the benchmark's table, so the weights are the same
    system = bm.build_system("water", args.atoms, cutoff=args.cutoff, species_table=table)
    params = bm.init_for(args.size, system, cutoff=args.cutoff)
    atoms = bm.water_box(args.atoms)  # build_system's box (seed 0), as one unpadded graph
    conf = atoms_to_configuration(atoms, energy_key=None, forces_key=None)
    graph = atoms_to_graph(conf, cutoff=args.cutoff, species_table=table)
    rng = np.random.default_rng(1)
    rotation = random_o3(rng)
    direction = rng.standard_normal(np.asarray(graph.nodes["positions"]).shape)
    direction /= np.linalg.norm(direction)  # a unit vector in 3N dimensions

    def model(backend):
        return bm.make_model(
            args.size,
            policy="fp32",
            n_species=system.n_species,
            cutoff=args.cutoff,
            avg_num_neighbors=bm.avg_neighbours(system),
            backend=backend,
        )

    reference = model("e3nn")
    ref = study.predict_all(reference, params, [graph], policy="fp64")  # the 1-graph reference
    kw = dict(ref=ref, rotation=rotation, direction=direction, step=args.fd_step)
    rows = [dict(backend="e3nn", preset="fp64", **check_case(reference, params, graph,
                                                               policy="fp64", **kw))]  # fmt: skip
    result = {
        "info": bm.device_info(),
        "command": " ".join(sys.argv),
        "args": vars(args),
        "system": {"name": system.name, "n_atoms": system.n_atoms, "n_edges": system.n_edges},
        "rows": rows,
    }
    for preset in args.presets:
        for backend in args.backends:
            m = reference if backend == "e3nn" else model(backend)
            rows.append(
                dict(backend=backend, preset=preset, **check_case(m, params, graph,
                                                                  policy=preset, **kw))
            )  # fmt: skip
            r = rows[-1]
            print(
                f"{backend:6s} {preset:13s} force rmse {r['forces_rmse_mev_per_A']:9.4f} meV/Å "
                f"(rel {r['forces_rel_rmse']:.2e})  equivariance {r['equivariance_rel_rmse']:.2e}"
                f"  conservation {r['conservation_err_mev_per_A']:8.4f} meV/Å",
                flush=True,
            )
            result["wall_s"] = time.time() - t0
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"fp64 floor: conservation {rows[0]['conservation_err_mev_per_A']:.4f} meV/Å")
    return 0


if __name__ == "__main__":
    sys.exit(main())
