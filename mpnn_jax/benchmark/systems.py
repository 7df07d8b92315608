"""Benchmark inputs: batches of real molecules, periodic fcc Cu and a water-density O/H box.

:func:`build_system` turns a kind and an atom count into one padded numpy graph (:class:`System`);
:func:`sort_edges` re-sorts its edges for the sorted-edges implementation variants, and
:func:`perturbed_inputs` makes jittered copies so that timed calls do not see the same input
twice. Nothing here is jitted: these are numpy graphs, moved to the device by :func:`to_device`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class System:
    """A benchmark input: one padded graph (numpy) and what it is."""

    name: str
    n_atoms: int
    n_edges: int
    graph: Any  # jraph.GraphsTuple of numpy arrays, padded
    n_species: int
    atom_order: str = "input"  # mpnn_jax.data.order.ATOM_ORDERS


def cu_fcc(n_atoms: int, *, seed: int = 0, a: float = 3.61):
    """A periodic fcc Cu supercell (cubic, 4 atoms a cell) of about ``n_atoms`` atoms, rattled."""
    from ase.build import bulk

    reps = max(1, round((n_atoms / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((reps, reps, reps))
    atoms.rattle(0.05, seed=seed)
    return atoms


def water_box(n_atoms: int, *, seed: int = 0, density: float = 0.0334):
    """A periodic box of H2O at liquid density (``density`` molecules/Å^3), random orientations."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    n_side = max(1, round((n_atoms / 3) ** (1 / 3)))
    n_mol = n_side**3
    length = (n_mol / density) ** (1 / 3)
    spacing = length / n_side
    oh, angle = 0.9572, np.deg2rad(104.52)
    local = np.array(
        [[0, 0, 0], [oh, 0, 0], [oh * np.cos(angle), oh * np.sin(angle), 0]], dtype=float
    )
    positions, numbers = [], []
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    for g in grid:
        q = rng.standard_normal(4)
        q /= np.linalg.norm(q)
        w, x, y, z = q
        rot = np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
            ]
        )
        positions.append((g + 0.5) * spacing + local @ rot.T)
        numbers += [8, 1, 1]
    return Atoms(numbers=numbers, positions=np.concatenate(positions), cell=[length] * 3, pbc=True)


def molecule_batch(n_atoms: int, *, path: str | None = None, seed: int = 0) -> list:
    """Distinct real molecules (rMD17 ethanol by default) totalling about ``n_atoms`` atoms."""
    from mpnn_jax.data import bundled_path, read_xyz

    configs = read_xyz(path or bundled_path("rmd17_ethanol", "train"))
    rng = np.random.default_rng(seed)
    n_mol = max(1, round(n_atoms / configs[0].n_atoms))
    idx = rng.choice(len(configs), size=n_mol, replace=n_mol > len(configs))
    return [configs[i] for i in idx]


def build_system(
    kind: str,
    n_atoms: int,
    *,
    cutoff: float,
    species_table,
    seed: int = 0,
    edge_multiple: int | None = None,
    node_multiple: int | None = None,
    atom_order: str = "input",
):
    """One padded benchmark graph of ``kind`` in {"cu", "water", "ethanol", "aspirin"}.

    ``atom_order`` (:data:`mpnn_jax.data.order.ATOM_ORDERS`) reorders a periodic cell's atoms
    before the neighbour list (``"input"``: as built, molecule by molecule on a grid); molecule
    batches keep the input order. Nodes are padded to a multiple of ``node_multiple`` (default:
    the training buckets' 8), with at least one padding node; edges to a multiple of
    ``edge_multiple`` (default: the training buckets' :func:`mpnn_jax.data.buckets.edge_budget`).
    """
    from mpnn_jax.data import atoms_to_graph, batch_graphs, pad_graph
    from mpnn_jax.data.buckets import NODE_MULTIPLE, edge_budget, round_up
    from mpnn_jax.data.order import ATOM_ORDERS, reorder
    from mpnn_jax.data.xyz import atoms_to_configuration

    for name, multiple in (("edge_multiple", edge_multiple), ("node_multiple", node_multiple)):
        if multiple is not None and multiple < 1:
            raise ValueError(f"{name} must be >= 1, got {multiple}")
    if atom_order not in ATOM_ORDERS:
        raise ValueError(f"unknown atom order {atom_order!r}; expected one of {list(ATOM_ORDERS)}")
    if kind in ("cu", "water"):
        atoms = cu_fcc(n_atoms, seed=seed) if kind == "cu" else water_box(n_atoms, seed=seed)
        atoms, _ = reorder(atoms, atom_order, seed=seed)
        configs = [atoms_to_configuration(atoms, energy_key=None, forces_key=None)]
    elif kind in ("ethanol", "aspirin"):
        if atom_order != "input":
            raise ValueError(
                f"atom_order={atom_order!r} applies to periodic cells (cu, water) only"
            )
        path = None
        if kind == "aspirin":
            from pathlib import Path

            # mpnn_jax/benchmark/systems.py -> the folder that holds the checkout and shared/
            path = str(Path(__file__).resolve().parents[3] / "shared/data/rmd17_aspirin/train.xyz")
        configs = molecule_batch(n_atoms, path=path, seed=seed)
    else:
        raise ValueError(f"unknown system kind {kind!r}; expected cu, water, ethanol or aspirin")
    graphs = [atoms_to_graph(c, cutoff=cutoff, species_table=species_table) for c in configs]
    graph = batch_graphs(graphs)
    n_node = int(graph.n_node.sum())
    n_edge = int(graph.n_edge.sum())
    padded = pad_graph(
        graph,
        n_node=round_up(n_node + 1, node_multiple or NODE_MULTIPLE),
        n_edge=round_up(n_edge, edge_multiple) if edge_multiple else edge_budget(n_edge),
        n_graph=len(graphs) + 1,
    )
    return System(
        name=f"{kind}-{n_node}" + ("" if atom_order == "input" else f"-{atom_order}"),
        n_atoms=n_node,
        n_edges=n_edge,
        graph=padded,
        n_species=len(species_table.numbers),
        atom_order=atom_order,
    )


def sort_edges(graph: Any, *, by: str) -> Any:
    """The padded numpy ``graph`` with its edges stably sorted by ``by`` ("senders"/"receivers").

    Padded edges point at the first padding node, past every real node, so they stay last and the
    edge masks and per-graph edge counts stay valid (a graph's edges index its own, contiguous,
    nodes). Used to keep the promise of ``mpnn_jax.nn.ops.SORTED_EDGES``. ``edges["reverse"]``,
    if present, is renumbered into the new edge order (new edge i is old edge ``order[i]``).

    Example:
        >>> import jraph
        >>> g = jraph.GraphsTuple(nodes=None, edges={"shifts": np.arange(3.0)[:, None]},
        ...     globals=None, senders=np.array([0, 1, 2]), receivers=np.array([2, 0, 1]),
        ...     n_node=np.array([3]), n_edge=np.array([3]))
        >>> s = sort_edges(g, by="receivers")
        >>> s.receivers.tolist(), s.senders.tolist(), s.edges["shifts"][:, 0].tolist()
        ([0, 1, 2], [1, 2, 0], [1.0, 2.0, 0.0])
    """
    if by not in ("senders", "receivers"):
        raise ValueError(f"cannot sort edges by {by!r}; expected 'senders' or 'receivers'")
    key = np.asarray(graph.senders if by == "senders" else graph.receivers)
    order = np.argsort(key, kind="stable")  # [n_edges] new edge -> old edge
    edges = {k: np.asarray(v)[order] for k, v in graph.edges.items()}
    if "reverse" in edges:
        new_of_old = np.argsort(order)  # [n_edges] old edge -> new edge
        edges["reverse"] = new_of_old[edges["reverse"]].astype(np.int32)
    return graph._replace(
        edges=edges,
        senders=np.asarray(graph.senders)[order],
        receivers=np.asarray(graph.receivers)[order],
    )


def perturbed_inputs(graph: Any, n: int, *, seed: int = 0, sigma: float = 0.01) -> list[Any]:
    """``n`` copies of ``graph`` with positions jittered by ``sigma`` Å (same topology)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        pos = graph.nodes["positions"]
        nodes = dict(graph.nodes)
        nodes["positions"] = pos + sigma * rng.standard_normal(pos.shape).astype(pos.dtype)
        out.append(graph._replace(nodes=nodes))
    return out


def to_device(graph: Any) -> Any:
    """Moves a numpy graph to the default device."""
    return jax.tree_util.tree_map(jnp.asarray, graph)


def avg_neighbours(system: System) -> float:
    """Mean number of neighbours per real atom of a benchmark system."""
    return system.n_edges / max(system.n_atoms, 1)
