"""From a predictor to an MD force function over a padded neighbour list.

``make_force_fn`` closes over the parameters, species and cell of one structure and returns a
pure, jittable ``force_fn(positions, neighbours) -> dict(energy, forces, stress, node_energies)``
that the integrators call. It builds the padded one-structure ``jraph.GraphsTuple`` of the graph
schema on device (one real graph, one padding graph holding the padding nodes and edges) and hands
it to ``predict(params, graph)`` of :mod:`mpnn_jax.potential`, so energies, forces and stress come
from the one place that differentiates the model.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from mpnn_jax.data.buckets import NODE_MULTIPLE
from mpnn_jax.md.neighbours import Neighbours, bucket_size

Predictor = Callable[..., dict]


def node_budget(n_atoms: int) -> int:
    """Padded node count for ``n_atoms`` real atoms (at least one padding node)."""
    return bucket_size(n_atoms + 1, multiple=NODE_MULTIPLE)


def padded_graph(
    positions: jax.Array,
    neighbours: Neighbours,
    *,
    species: jax.Array,
    cell: jax.Array,
    periodic: bool,
    n_node: int,
) -> jraph.GraphsTuple:
    """The padded GraphsTuple of one structure (jittable; shapes set by ``n_node`` and capacity).

    Args:
        positions: float [n_atoms, 3] Å.
        neighbours: padded list whose padding entries point at node ``n_atoms``.
        species: int32 [n_atoms] species indices.
        cell: float [3, 3] Å (zeros for molecules).
        periodic: whether any direction is periodic (static).
        n_node: total nodes after padding, > n_atoms (static).

    Returns:
        A GraphsTuple with 2 graphs (the structure, then the padding graph).
    """
    n_atoms = positions.shape[0]
    dtype = positions.dtype
    n_pad = n_node - n_atoms
    capacity = neighbours.senders.shape[0]
    zeros_nodes = jnp.zeros((n_pad, 3), dtype)
    n_edges = jnp.asarray(neighbours.n_edges, jnp.int32)
    edges = {"shifts": neighbours.shifts}  # [capacity, 3]
    if neighbours.reverse is not None:
        edges["reverse"] = neighbours.reverse  # [capacity]: radial MLPs per pair of edges
    return jraph.GraphsTuple(
        nodes={
            "positions": jnp.concatenate([positions, zeros_nodes]),  # [n_node, 3]
            "species": jnp.concatenate([species, jnp.zeros((n_pad,), jnp.int32)]),  # [n_node]
            "forces": jnp.zeros((n_node, 3), dtype),  # [n_node, 3]
        },
        edges=edges,
        globals={
            "cell": jnp.stack([cell, jnp.zeros_like(cell)]),  # [2, 3, 3]
            "energy": jnp.zeros((2,), dtype),
            "stress": jnp.zeros((2, 3, 3), dtype),
            "weight": jnp.asarray([1.0, 0.0], dtype),
            "has_stress": jnp.zeros((2,), dtype),
            "pbc": jnp.asarray([float(periodic), 0.0], dtype),
        },
        senders=neighbours.senders,
        receivers=neighbours.receivers,
        n_node=jnp.asarray([n_atoms, n_pad], jnp.int32),
        n_edge=jnp.stack([n_edges, capacity - n_edges]),
    )


def make_force_fn(
    predict: Predictor,
    params,
    *,
    species: np.ndarray,
    cell: np.ndarray,
    pbc,
    n_node: int | None = None,
    dtype=None,
) -> Callable[[jax.Array, Neighbours], dict]:
    """``force_fn(positions, neighbours) -> dict`` for one structure.

    Args:
        predict: ``predict(params, graph) -> dict(energy [n_graphs], forces [n_nodes, 3],
            stress [n_graphs, 3, 3], node_energies [n_nodes])`` (see :mod:`mpnn_jax.potential`).
        params: the model parameters.
        species: int [n_atoms] species indices (not atomic numbers).
        cell: float [3, 3] Å.
        pbc: bool or bool [3].
        n_node: padded node count; default :func:`node_budget`.
        dtype: float dtype of the cell handed to the model; default that of the positions.

    Returns:
        A pure function returning ``energy`` [] eV, ``forces`` [n_atoms, 3] eV/Å,
        ``stress`` [3, 3] eV/Å^3 (zeros for molecules) and ``node_energies`` [n_atoms] eV.
    """
    species = np.asarray(species, np.int32)
    n_atoms = species.shape[0]
    n_node = node_budget(n_atoms) if n_node is None else n_node
    periodic = bool(np.any(pbc))
    cell = np.asarray(cell, np.float64) if periodic else np.zeros((3, 3))

    def force_fn(positions: jax.Array, neighbours: Neighbours) -> dict:
        graph = padded_graph(
            positions,
            neighbours,
            species=jnp.asarray(species),
            cell=jnp.asarray(cell, dtype or positions.dtype),
            periodic=periodic,
            n_node=n_node,
        )
        out = predict(params, graph)
        return {
            "energy": out["energy"][0],  # []
            "forces": out["forces"][:n_atoms],  # [n_atoms, 3]
            "stress": out["stress"][0],  # [3, 3]
            "node_energies": out["node_energies"][:n_atoms],  # [n_atoms]
        }

    return force_fn
