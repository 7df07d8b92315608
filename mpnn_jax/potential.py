"""Energies, forces and stress of a model on a graph, by one ``jax.grad`` over positions and strain.

Factories returning pure functions (jax-md style):

* :func:`make_predictor` ``(model) -> predict(params, graph)`` -> dict with ``energy``
  [n_graphs] eV, ``forces`` [n_nodes, 3] eV/Å, ``stress`` [n_graphs, 3, 3] eV/Å^3 and
  ``node_energies`` [n_nodes] eV. Pure and jittable (``graph`` is a pytree of arrays).
* :func:`make_potential` ``(model, params) -> fn(graph)``: the same, jit-compiled, params closed
  over.
* :func:`make_energy_fn` ``(model) -> energy(params, graph)``: total energy (scalar, eV) of all
  real graphs, for MD code and custom losses.

How (mace-jax style): positions ``r`` and cell rows ``a`` are deformed by a symmetric strain,
``r' = r (I + eps)``, ``a' = a (I + eps)``, at ``eps = 0``; edge vectors
``r_ij = r'[receivers] - r'[senders] + shifts @ a'[graph]`` are computed in the ``geometry``
dtype; ``forces = -dE/dr`` and ``stress = (1/V) dE/deps`` (ASE sign convention) come from one
``jax.grad`` over ``(r, eps)``. Stress is zero for non-periodic graphs (``pbc == 0``) and graphs
with zero volume. Per-graph energies are ``segment_sum``s of node energies masked by the node
padding mask, in the ``energy`` dtype; derivatives are cast to the ``forces`` dtype. The model
is traced inside ``policy.matmul_context()``.

Padding follows jraph: with ``padded=True`` (the default, as produced by the data pipeline) the
last graph is the padding graph, and padded nodes, edges and graphs give exactly zero. Pass
``padded=False`` for a batch without a padding graph. For the fp64 policy the graph must hold
float64 positions/cell and ``jax_enable_x64`` must be on.

Example:
    >>> import numpy as np, jax
    >>> from mpnn_jax import testing
    >>> from mpnn_jax.models import build_model
    >>> model = build_model("nequip", policy="fp32", n_species=2, cutoff=3.0, n_layers=1,
    ...                     hidden_irreps="4x0e+2x1o", radial_features=(8,))
    >>> g = testing.pad(testing.molecule_graph(np.random.default_rng(0)),
    ...                 n_node=8, n_edge=32, n_graph=2)
    >>> params = init_params(model, jax.random.PRNGKey(0), g)
    >>> out = make_potential(model, params)(g)
    >>> out["forces"].shape, out["stress"].shape
    ((8, 3), (2, 3, 3))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from mpnn_jax import xla
from mpnn_jax.data import graphs as schema
from mpnn_jax.nn import ops
from mpnn_jax.precision import Policy

Predictor = Callable[[Any, jraph.GraphsTuple], dict[str, jax.Array]]


def graph_masks(
    graph: jraph.GraphsTuple, *, padded: bool = True
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(node_mask [n_nodes], edge_mask [n_edges], graph_mask [n_graphs])``, bool, jittable.

    With ``padded``, jraph's rule (:mod:`mpnn_jax.data.graphs`): the trailing graphs without
    nodes and the graph before them are padding; without it every node, edge and graph is real.
    """
    if padded:
        return schema.node_mask(graph), schema.edge_mask(graph), schema.graph_mask(graph)
    return (
        jnp.ones(graph.nodes["species"].shape[0], bool),
        jnp.ones(graph.senders.shape[0], bool),
        jnp.ones(jnp.asarray(graph.n_node).shape[0], bool),
    )


def edge_vectors(
    positions: jax.Array,
    cell: jax.Array,
    shifts: jax.Array,
    senders: jax.Array,
    receivers: jax.Array,
    edge_graph: jax.Array,
    *,
    policy: Policy,
) -> jax.Array:
    """``positions[receivers] - positions[senders] + shifts @ cell[edge_graph]`` [n_edges, 3] (Å),
    in the geometry dtype.

    The two selections are :func:`mpnn_jax.nn.ops.gather_rows`
    (:data:`~mpnn_jax.nn.ops.EDGE_GATHER`): their gradients, the forces' sums over each atom's
    edges, run in sorted order whichever way the edges are sorted
    (:data:`~mpnn_jax.nn.ops.SORTED_EDGES` skips the sort for the side promised sorted).
    """
    with Policy.scope("geometry"):
        positions, cell, shifts = policy.cast("geometry", (positions, cell, shifts))
        offsets = jnp.einsum("ei,eij->ej", shifts, cell_of_edges(cell, edge_graph))  # [n_edges, 3]
        how, promise = ops.EDGE_GATHER, ops.SORTED_EDGES
        x_r = ops.gather_rows(positions, receivers, how=how, promised_sorted=promise == "receivers")
        x_s = ops.gather_rows(positions, senders, how=how, promised_sorted=promise == "senders")
        return x_r - x_s + offsets  # [n_edges, 3]


#: Up to this many graphs per batch, :func:`cell_of_edges` selects by a one-hot contraction.
CELL_ONEHOT_MAX_GRAPHS = 64


def cell_of_edges(cell: jax.Array, edge_graph: jax.Array) -> jax.Array:
    """``cell[edge_graph]`` [n_edges, 3, 3]: each edge's cell, exactly.

    Its transpose (the cell's share of the stress) sums every edge's outer product into its
    graph's 3x3 cell. As the transpose of a gather that is a scatter-add of [n_edges, 9] onto
    [n_graphs, 9]: on GPUs all of a graph's edges add atomically into the same 9 words (H200,
    NequIP-M on 10,125 water atoms, 547k edges: 1.08 ms of a 44-ms E+F). With at most
    :data:`CELL_ONEHOT_MAX_GRAPHS` graphs the selection is a contraction with a one-hot
    [n_edges, n_graphs] matrix at full precision (exact: products with 0 and 1), whose transpose
    is a reduction over the edges; with more graphs, a gather.

    Args:
        cell: [n_graphs, 3, 3] lattice vectors (rows, Å).
        edge_graph: int32 [n_edges], the graph of each edge.

    Returns:
        [n_edges, 3, 3] in ``cell.dtype``.
    """
    n_graphs = cell.shape[0]
    if n_graphs > CELL_ONEHOT_MAX_GRAPHS:
        return cell[edge_graph]
    onehot = jax.nn.one_hot(edge_graph, n_graphs, dtype=cell.dtype)  # [n_edges, n_graphs]
    return jnp.einsum("eg,gij->eij", onehot, cell, precision=jax.lax.Precision.HIGHEST)


#: Pass ``graph.edges["reverse"]`` (each edge's reverse, where the graph has it) to the model, whose
#: radial MLPs then run once per pair of edges (:mod:`mpnn_jax.nn.pairs`; the same function).
#: Read when a predictor is traced.
PAIR_EDGES = True


def _reverse_arg(model: nn.Module, graph: jraph.GraphsTuple) -> tuple:
    """``(reverse,)`` where the graph has ``edges["reverse"]``, the model's ``__call__`` takes a
    ``reverse`` argument and :data:`PAIR_EDGES` is on; else ``()`` (models of other signatures
    keep working on every graph)."""
    edges = graph.edges if isinstance(graph.edges, dict) else {}
    if not (PAIR_EDGES and "reverse" in edges):
        return ()
    if "reverse" not in inspect.signature(type(model).__call__).parameters:
        return ()
    return (edges["reverse"],)


def _energy_and_aux(model: nn.Module, padded: bool):
    policy: Policy = model.policy

    def energy(positions, strain, params, graph):
        node_mask, edge_mask, _ = graph_masks(graph, padded=padded)
        n_graphs = graph.n_node.shape[0]
        node_graph = schema.graph_index(graph, of="node")  # [n_nodes]
        edge_graph = schema.graph_index(graph, of="edge")  # [n_edges]
        with Policy.scope("geometry"):
            cell = policy.cast("geometry", graph.globals["cell"])  # [n_graphs, 3, 3]
            sym = 0.5 * (strain + jnp.swapaxes(strain, -1, -2))  # [n_graphs, 3, 3]
            positions = positions + jnp.einsum("ni,nij->nj", positions, sym[node_graph])
            cell = cell + jnp.einsum("gki,gij->gkj", cell, sym)
        vectors = edge_vectors(
            positions,
            cell,
            graph.edges["shifts"],
            graph.senders,
            graph.receivers,
            edge_graph,
            policy=policy,
        )
        node_e = model.apply(
            params,
            vectors,
            graph.nodes["species"],
            graph.senders,
            graph.receivers,
            edge_mask,
            *_reverse_arg(model, graph),
        )  # [n_nodes]
        with Policy.scope("energy"):
            node_e = policy.cast("energy", node_e)
            node_e = jnp.where(node_mask, node_e, jnp.zeros_like(node_e))
            graph_e = jax.ops.segment_sum(node_e, node_graph, num_segments=n_graphs)
            total = jnp.sum(graph_e, dtype=graph_e.dtype)
            return total, (graph_e, node_e)

    return energy


def make_predictor(model: nn.Module, *, padded: bool = True) -> Predictor:
    """``predict(params, graph) -> dict(energy, forces, stress, node_energies)`` (pure, jittable).

    Args:
        model: a module with a ``policy`` attribute, called as
            ``model.apply(params, vectors, species, senders, receivers, edge_mask)``, and with
            ``graph.edges["reverse"]`` as a seventh argument where the graph has it and the
            model's ``__call__`` has a ``reverse`` parameter (:data:`PAIR_EDGES`).
        padded: True if the last graph of every batch is the jraph padding graph.

    Returns:
        ``predict``; the outputs are in the ``energy`` dtype (energies) and the ``forces`` dtype
        (forces, stress).
    """
    policy: Policy = model.policy
    energy = _energy_and_aux(model, padded)

    def predict(params: Any, graph: jraph.GraphsTuple) -> dict[str, jax.Array]:
        with policy.matmul_context():
            positions = policy.cast("geometry", graph.nodes["positions"])  # [n_nodes, 3]
            n_graphs = graph.n_node.shape[0]
            strain = jnp.zeros((n_graphs, 3, 3), positions.dtype)
            grad_fn = jax.grad(energy, argnums=(0, 1), has_aux=True)
            (d_pos, d_strain), (graph_e, node_e) = grad_fn(positions, strain, params, graph)
            node_mask, _, graph_mask = graph_masks(graph, padded=padded)
            with Policy.scope("forces"):
                d_pos, d_strain = policy.cast("forces", (d_pos, d_strain))
                forces = jnp.where(node_mask[:, None], -d_pos, jnp.zeros_like(d_pos))
                cell = policy.cast("forces", graph.globals["cell"])
                volume = jnp.abs(jnp.linalg.det(cell))  # [n_graphs]
                periodic = graph_mask & (graph.globals["pbc"] > 0) & (volume > 0)
                safe_v = jnp.where(periodic, volume, jnp.ones_like(volume))
                stress = jnp.where(
                    periodic[:, None, None], d_strain / safe_v[:, None, None], 0.0
                )  # [n_graphs, 3, 3]
            with Policy.scope("energy"):
                graph_e = jnp.where(graph_mask, graph_e, jnp.zeros_like(graph_e))
            return {
                "energy": graph_e,
                "forces": forces,
                "stress": policy.cast("forces", stress),
                "node_energies": node_e,
            }

    return predict


def make_potential(model: nn.Module, params: Any, *, padded: bool = True) -> Callable:
    """``fn(graph) -> dict(energy, forces, stress, node_energies)``, jitted, params closed over.

    One compilation per distinct set of array shapes (pad to a few buckets).
    """
    predict = make_predictor(model, padded=padded)
    return xla.jit(lambda graph: predict(params, graph), model=model)


def make_energy_fn(
    model: nn.Module, *, padded: bool = True
) -> Callable[[Any, jraph.GraphsTuple], jax.Array]:
    """``energy(params, graph) -> scalar`` total energy (eV) of the real graphs (energy dtype).

    Differentiable with respect to ``graph.nodes["positions"]`` (for MD: forces are
    ``-jax.grad`` of it). Runs in ``policy.matmul_context()``.
    """
    policy: Policy = model.policy
    energy = _energy_and_aux(model, padded)

    def energy_fn(params: Any, graph: jraph.GraphsTuple) -> jax.Array:
        with policy.matmul_context():
            positions = policy.cast("geometry", graph.nodes["positions"])
            strain = jnp.zeros((graph.n_node.shape[0], 3, 3), positions.dtype)
            return energy(positions, strain, params, graph)[0]

    return energy_fn


def init_params(
    model: nn.Module, key: jax.Array, graph: jraph.GraphsTuple, *, padded: bool = True
) -> Any:
    """Initialises ``model`` on a graph (computes the edge vectors as :func:`make_predictor` does).

    Returns:
        The FP32 parameter pytree.
    """
    policy: Policy = model.policy
    _, edge_mask, _ = graph_masks(graph, padded=padded)
    edge_graph = schema.graph_index(graph, of="edge")
    vectors = edge_vectors(
        graph.nodes["positions"],
        graph.globals["cell"],
        graph.edges["shifts"],
        graph.senders,
        graph.receivers,
        edge_graph,
        policy=policy,
    )
    init = jax.jit(model.init)
    args = (vectors, graph.nodes["species"], graph.senders, graph.receivers, edge_mask)
    return init(key, *args, *_reverse_arg(model, graph))
