"""How far apart in memory the kernels' gathers land, per atom order (host-side, no timing).

    python experiments/perf/atom_order_locality.py --atoms 10000 50000 --out locality.json

The fused convolution kernels (``backend="pallas"``) give each program a block of receivers and
gather a row of ``[n_out, channels]`` per incoming edge (MACE MP-S: 16 x 128, 8 KB in FP32, 4 KB
in 16 bits). Programs run in waves of about one block per streaming multiprocessor, so a wave of
``--wave`` consecutive receivers (132 SMs x 8 receivers on an H100) touches every distinct
sender of those receivers. This script counts them for water boxes (``mpnn_jax.benchmark``) in
each order of :data:`mpnn_jax.data.order.ATOM_ORDERS` and converts the count into the bytes of
rows one wave gathers, to set against the L2 cache (50 MB on an H100 or H200). It is a
prediction of where ordering can matter, not a measurement of speed: the GPU step ``orders`` of
``experiments/perf/sweep_and_largest.sh`` times the same orders.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mpnn_jax.benchmark import water_box
from mpnn_jax.data import neighbour_list
from mpnn_jax.data.order import ATOM_ORDERS, reorder


def wave_rows(senders: np.ndarray, receivers: np.ndarray, n_atoms: int, wave: int) -> float:
    """Mean number of distinct senders of ``wave`` consecutive receivers."""
    order = np.argsort(receivers, kind="stable")
    s, r = senders[order], receivers[order]
    bounds = np.searchsorted(r, np.arange(0, n_atoms + wave, wave))
    counts = [len(np.unique(s[a:b])) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return float(np.mean(counts))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--atoms", type=int, nargs="+", default=[10000, 50000])
    p.add_argument("--cutoff", type=float, default=5.0)
    p.add_argument("--wave", type=int, default=132 * 8, help="receivers per wave of programs")
    p.add_argument("--row-bytes", type=int, default=16 * 128 * 4, help="bytes of one row (FP32)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rows = []
    header = ("atoms", "order", "mean |s-r|", "rows/wave", "MB fp32", "MB 16-bit")
    print(" ".join(f"{h:>10}" for h in header))
    for n in args.atoms:
        atoms = water_box(n)
        for how in ATOM_ORDERS:
            moved, _ = reorder(atoms, how)
            s, r, _ = neighbour_list(moved.positions, moved.cell.array, moved.pbc, args.cutoff)
            per_wave = wave_rows(s, r, len(moved), args.wave)
            row = dict(
                n_atoms=len(moved), atom_order=how, n_edges=len(s),
                mean_index_distance=float(np.mean(np.abs(s - r))), rows_per_wave=per_wave,
                mb_per_wave_fp32=per_wave * args.row_bytes / 1e6,
                mb_per_wave_16bit=per_wave * args.row_bytes / 2e6,
            )  # fmt: skip
            rows.append(row)
            cells = (f"{row['n_atoms']}", how, f"{row['mean_index_distance']:.0f}",
                     f"{per_wave:.0f}", f"{row['mb_per_wave_fp32']:.1f}",
                     f"{row['mb_per_wave_16bit']:.1f}")  # fmt: skip
            print(" ".join(f"{c:>10}" for c in cells))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
