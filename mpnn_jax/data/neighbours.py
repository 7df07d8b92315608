"""Full (symmetric) neighbour lists through vesin's compiled cell list.

Convention (shared with the model's geometry stage):

    vector = positions[receivers] - positions[senders] + shifts @ cell      # [n_edges, 3] Å

vesin returns pairs (i, j, S) with D = positions[j] - positions[i] + S @ box, so senders = i,
receivers = j, shifts = S. Every pair within the cutoff appears in both directions; when the
cutoff exceeds the cell, one neighbour appears through several images and an atom can neighbour
its own periodic images; the self-pair with zero shift is never included.

Plain numpy, not jittable (neighbour lists are built on the host).
"""

from __future__ import annotations

import numpy as np
import vesin


def _normalise_pbc(pbc) -> np.ndarray:
    pbc = np.asarray(pbc, dtype=bool)
    if pbc.ndim == 0:
        pbc = np.repeat(pbc, 3)
    if pbc.shape != (3,):
        raise ValueError(f"pbc must be a bool or 3 bools, got shape {pbc.shape}")
    return pbc


def neighbour_list(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc,
    cutoff: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All ordered pairs closer than ``cutoff``, over periodic images.

    Args:
        positions: float [n_atoms, 3] Å (need not be wrapped into the cell).
        cell: float [3, 3] Å, rows are lattice vectors (ignored when no direction is periodic).
        pbc: bool or bool [3], periodicity per lattice direction.
        cutoff: radius in Å, > 0. Pairs with distance < cutoff are kept.

    Returns:
        ``(senders, receivers, shifts)``: int32 [n_edges], int32 [n_edges], int32 [n_edges, 3],
        sorted lexicographically by (sender, receiver, shift).

    Example:
        >>> pos = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
        >>> s, r, S = neighbour_list(pos, np.zeros((3, 3)), False, 1.5)
        >>> s.tolist(), r.tolist()
        ([0, 1], [1, 0])
    """
    cutoff = float(cutoff)
    if not np.isfinite(cutoff) or cutoff <= 0.0:
        raise ValueError(f"cutoff must be a positive number of Å, got {cutoff}")
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape [n_atoms, 3], got {positions.shape}")
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions contain NaN or inf")
    pbc = _normalise_pbc(pbc)
    if pbc.any():
        cell = np.ascontiguousarray(cell, dtype=np.float64).reshape(3, 3)
        if abs(np.linalg.det(cell)) < 1e-9 * max(1.0, np.abs(cell).max() ** 3):
            raise ValueError(f"cell is singular but pbc={pbc.tolist()}")
    else:
        cell = np.zeros((3, 3))
    n = positions.shape[0]
    if n == 0:
        empty = np.zeros((0,), np.int32)
        return empty, empty, np.zeros((0, 3), np.int32)

    calculator = vesin.NeighborList(cutoff=cutoff, full_list=True)
    i, j, shifts = calculator.compute(positions, cell, pbc.tolist(), "ijS")
    senders = np.asarray(i, dtype=np.int32)  # [n_edges]
    receivers = np.asarray(j, dtype=np.int32)  # [n_edges]
    shifts = np.asarray(shifts, dtype=np.int32).reshape(-1, 3)  # [n_edges, 3]

    # Exclude the self pair with zero shift (vesin never reports it, but be safe).
    keep = ~((senders == receivers) & np.all(shifts == 0, axis=1))
    senders, receivers, shifts = senders[keep], receivers[keep], shifts[keep]
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], receivers, senders))
    return senders[order], receivers[order], shifts[order]
