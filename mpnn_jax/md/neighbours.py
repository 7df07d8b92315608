"""Neighbour lists for molecular dynamics: padding buckets, a skin, on-device checks and wrapping.

Contract:
    * Lists are built on the host with vesin (:func:`mpnn_jax.data.neighbours.neighbour_list`) with
      radius ``cutoff + skin`` and padded to a fixed ``capacity`` of edges. Padded edges join
      the first padding node (index ``n_atoms``) to itself with a zero shift, as in
      ``jraph.pad_with_graphs``.
    * Edge vectors follow the graph schema: ``r = x[receivers] - x[senders] + shifts @ cell``.
    * Edges between ``cutoff`` and ``cutoff + skin`` are kept: the models' envelopes vanish beyond
      the cutoff, so they add exactly zero.
    * The list stays valid while no atom has moved more than ``skin / 2`` since the build
      (:func:`needs_rebuild`, jittable).
    * :func:`wrap` maps positions back into the periodic cell and updates the shifts so that every
      edge vector is unchanged (jittable), so wrapping never invalidates a list.
    * Bucket sizes grow geometrically (:func:`bucket_size`), so a long simulation whose atom or
      edge counts drift compiles a logarithmic number of shapes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mpnn_jax.data.buckets import EDGE_MULTIPLE, edge_budget
from mpnn_jax.data.neighbours import neighbour_list, pad_reverse, reverse_edges

#: Geometric growth factor of padding buckets (node and edge budgets are multiples of
#: NODE_MULTIPLE and EDGE_MULTIPLE, the training buckets' own, from mpnn_jax.data.buckets).
GROWTH = 1.25


def bucket_size(n: int, *, multiple: int, growth: float = GROWTH, minimum: int = 0) -> int:
    """The smallest size of the geometric sequence ``s_0 = multiple, s_{k+1} >= growth * s_k``
    (each rounded up to ``multiple``) that is at least ``max(n, minimum)``.

    Every count maps into one fixed sequence, so counts that drift up and down within a factor
    ``F`` touch at most ``log(F) / log(growth) + 1`` sizes.

    Example:
        >>> [bucket_size(n, multiple=8) for n in (1, 8, 9, 11, 100)]
        [8, 8, 16, 16, 120]
    """
    n = max(int(n), int(minimum), 1)
    size = multiple
    while size < n:
        size = max(size + multiple, multiple * math.ceil(size * growth / multiple))
    return size


def edge_capacity(n_edges: int, *, minimum: int = 0) -> int:
    """Padded edge budget of an MD neighbour list: :func:`bucket_size` in multiples of
    :data:`EDGE_MULTIPLE`, rounded up by :func:`mpnn_jax.data.buckets.edge_budget` (to a power
    of two of at most 1/64 of the budget, which XLA's split weight-gradient dots like better).

    Example:
        >>> edge_capacity(100), edge_capacity(70_000)
        (128, 71680)
    """
    return edge_budget(bucket_size(n_edges, multiple=EDGE_MULTIPLE, minimum=minimum))


class Neighbours(NamedTuple):
    """A padded neighbour list with a skin (a pytree of device or numpy arrays).

    Attributes:
        senders: int32 [capacity]; padded entries point at the padding node ``n_atoms``.
        receivers: int32 [capacity].
        shifts: float [capacity, 3] integer cell shifts (stored as float), zero when padded.
        reference: float [n_atoms, 3] Å, the positions the list was built at (kept in the same
            frame as the positions: :func:`wrap` moves both).
        n_edges: int32 [] number of real edges (within ``cutoff + skin``).
        reverse: int32 [capacity], each edge's reverse (real edges: the edge with senders and
            receivers swapped and the shift negated; padded edges paired among themselves), or
            ``None``: the models then run their radial MLPs per edge instead of per pair
            (:mod:`mpnn_jax.nn.pairs`). :func:`wrap` keeps the pairing (it negates both shifts'
            changes alike).
    """

    senders: jax.Array
    receivers: jax.Array
    shifts: jax.Array
    reference: jax.Array
    n_edges: jax.Array
    reverse: jax.Array | None = None

    @property
    def capacity(self) -> int:
        return int(self.senders.shape[0])


def count_edges(positions, cell, pbc, *, radius: float) -> int:
    """Number of directed pairs closer than ``radius`` (host, vesin)."""
    senders, _, _ = neighbour_list(np.asarray(positions, np.float64), cell, pbc, radius)
    return int(senders.shape[0])


def build_neighbours(
    positions,
    cell,
    pbc,
    *,
    cutoff: float,
    skin: float,
    capacity: int | None = None,
    dtype=np.float64,
) -> Neighbours:
    """Builds a padded neighbour list of radius ``cutoff + skin`` on the host.

    Args:
        positions: float [n_atoms, 3] Å.
        cell: float [3, 3] Å, rows are lattice vectors (ignored if nothing is periodic).
        pbc: bool or bool [3].
        cutoff: model cutoff in Å.
        skin: extra radius in Å; the list is valid until an atom moves ``skin / 2``.
        capacity: number of edge slots; None picks :func:`bucket_size` of the edge count.
            A capacity smaller than the edge count is grown to the bucket that fits.
        dtype: float dtype of ``shifts`` and ``reference``.

    Returns:
        A numpy `Neighbours` (convert with ``jax.device_put``).
    """
    positions = np.asarray(positions, dtype=np.float64)  # [n_atoms, 3]
    n_atoms = positions.shape[0]
    senders, receivers, shifts = neighbour_list(positions, cell, pbc, cutoff + skin)
    n_edges = senders.shape[0]
    if capacity is None or capacity < n_edges:
        capacity = edge_capacity(n_edges, minimum=capacity or 0)
    pad = capacity - n_edges
    pad_index = np.full(pad, n_atoms, dtype=np.int32)
    reverse = pad_reverse(reverse_edges(senders, receivers, shifts), pad)  # [capacity] or None
    return Neighbours(
        senders=np.asarray(np.concatenate([senders, pad_index]), np.int32),  # [capacity]
        receivers=np.asarray(np.concatenate([receivers, pad_index]), np.int32),  # [capacity]
        shifts=np.asarray(np.concatenate([shifts, np.zeros((pad, 3))]), dtype),  # [capacity, 3]
        reference=np.asarray(positions, dtype),  # [n_atoms, 3]
        n_edges=np.asarray(n_edges, dtype=np.int32),
        reverse=reverse,  # [capacity] or None
    )


def max_displacement(neighbours: Neighbours, positions: jax.Array) -> jax.Array:
    """Largest distance (Å) any atom moved since the list was built. Jittable."""
    d = positions - neighbours.reference  # [n_atoms, 3]
    return jnp.sqrt(jnp.max(jnp.sum(d * d, axis=-1)))


def needs_rebuild(neighbours: Neighbours, positions: jax.Array, *, skin: float) -> jax.Array:
    """bool []: True once some atom moved more than ``skin / 2`` since the build. Jittable.

    Two atoms that each moved less than ``skin / 2`` got closer by less than ``skin``, so every
    pair now inside ``cutoff`` was inside ``cutoff + skin`` at the build.
    """
    return max_displacement(neighbours, positions) > 0.5 * skin


def wrap(
    positions: jax.Array, neighbours: Neighbours, *, cell: jax.Array, pbc: tuple[bool, bool, bool]
) -> tuple[jax.Array, Neighbours]:
    """Wraps positions into the cell along periodic directions, keeping every edge vector.

    An atom moved by ``-n_i @ cell`` changes edge ``(s, r, S)`` into ``(s, r, S + n_r - n_s)``;
    the reference positions move with their atoms. Jittable; a no-op when nothing is periodic.

    Args:
        positions: float [n_atoms, 3] Å.
        neighbours: the list in use.
        cell: float [3, 3] Å.
        pbc: static tuple of 3 bools.

    Returns:
        ``(positions, neighbours)`` with fractional coordinates in [0, 1) along periodic axes.
    """
    if not any(pbc):
        return positions, neighbours
    periodic = jnp.asarray(pbc)  # [3]
    frac = jnp.linalg.solve(cell.T, positions.T).T  # [n_atoms, 3]
    n = jnp.where(periodic, jnp.floor(frac), jnp.zeros_like(frac))  # [n_atoms, 3]
    n_pad = jnp.concatenate([n, jnp.zeros((1, 3), n.dtype)])  # [n_atoms + 1, 3]
    shifts = neighbours.shifts + n_pad[neighbours.receivers] - n_pad[neighbours.senders]
    offset = n @ cell  # [n_atoms, 3]
    return positions - offset, neighbours._replace(
        shifts=shifts, reference=neighbours.reference - offset
    )
