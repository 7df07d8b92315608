"""Dataset statistics for model construction: isolated-atom energies E0, neighbour counts, scales.

* `e0s_from_file`: E0 per species from single-atom configurations computed at the same level.
* `e0s_least_squares`: E0 fitted so that E ~ sum_i E0[species_i] over a training set.
* `dataset_statistics`: average number of neighbours (edges / nodes), mean / RMS / std of the
  per-atom interaction energy (E - sum E0) / n_atoms in eV, RMS force component in eV/Å.

Host-side numpy in float64; nothing here is jitted.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence

import jraph
import numpy as np

from mpnn_jax.data.species import SpeciesTable
from mpnn_jax.data.xyz import Configuration, read_xyz


def e0s_from_file(
    path: str | os.PathLike, species_table: SpeciesTable, *, energy_key: str = "energy"
) -> np.ndarray:
    """Isolated-atom energies read from a file of single-atom configurations.

    Args:
        path: extended XYZ file with one-atom configurations (extra elements are ignored).
        species_table: the species the model uses.
        energy_key: label of the energy in eV.

    Returns:
        float64 [n_species] E0 in eV, ordered like the species table.

    Raises:
        ValueError: if an element of the table has no single-atom configuration.
    """
    found: dict[int, float] = {}
    for config in read_xyz(path, energy_key=energy_key, forces_key=None):
        if config.n_atoms == 1:
            found[int(config.numbers[0])] = float(config.energy)
    missing = [s for z, s in zip(species_table.numbers, species_table.symbols) if z not in found]
    if missing:
        raise ValueError(f"{path}: no isolated-atom energy for element(s) {', '.join(missing)}")
    return np.array([found[z] for z in species_table.numbers], dtype=np.float64)


def species_counts(configs: Sequence[Configuration], species_table: SpeciesTable) -> np.ndarray:
    """int64 [n_configs, n_species]: how many atoms of each species each configuration holds."""
    counts = np.zeros((len(configs), len(species_table)), dtype=np.int64)
    for row, config in enumerate(configs):
        np.add.at(counts[row], species_table.index(config.numbers), 1)
    return counts


def e0s_least_squares(configs: Sequence[Configuration], species_table: SpeciesTable) -> np.ndarray:
    """Least-squares E0: minimises sum_c (E_c - sum_s counts[c, s] E0[s])^2.

    When the composition does not determine every E0 (e.g. all configurations share one
    stoichiometry), the minimum-norm solution is returned with a warning.

    Args:
        configs: configurations with energies (eV).
        species_table: the species the model uses.

    Returns:
        float64 [n_species] E0 in eV, ordered like the species table.
    """
    if not configs:
        raise ValueError("e0s_least_squares needs at least one configuration")
    if any(c.energy is None for c in configs):
        raise ValueError("e0s_least_squares: every configuration needs an energy")
    counts = species_counts(configs, species_table).astype(np.float64)  # [n_configs, n_species]
    energies = np.array([c.energy for c in configs], dtype=np.float64)  # [n_configs]
    e0s, _, rank, _ = np.linalg.lstsq(counts, energies, rcond=None)
    if rank < len(species_table):
        warnings.warn(
            f"compositions determine only {rank} of {len(species_table)} E0 values; "
            "returning the minimum-norm least-squares solution (prefer e0s_from_file)",
            stacklevel=2,
        )
    return e0s


@dataclasses.dataclass(frozen=True)
class DatasetStatistics:
    """Summary statistics of a set of graphs (eV, Å, eV/Å).

    Attributes:
        n_graphs: number of configurations.
        n_nodes: total atoms.
        avg_num_neighbors: edges per node.
        mean_interaction_energy: mean over configurations of (E - sum E0) / n_atoms (eV/atom).
        rms_interaction_energy: RMS of the same (eV/atom).
        std_interaction_energy: standard deviation of the same (eV/atom).
        rms_forces: RMS of force components (eV/Å).
    """

    n_graphs: int
    n_nodes: int
    avg_num_neighbors: float
    mean_interaction_energy: float
    rms_interaction_energy: float
    std_interaction_energy: float
    rms_forces: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def dataset_statistics(
    graphs: Sequence[jraph.GraphsTuple] | jraph.GraphsTuple, e0s: np.ndarray
) -> DatasetStatistics:
    """Statistics of unpadded graphs (a list, or one batched GraphsTuple without padding).

    Args:
        graphs: graphs following the schema of `mpnn_jax.data.graphs`.
        e0s: float [n_species] isolated-atom energies in eV.

    Returns:
        A `DatasetStatistics` (float64 arithmetic).
    """
    if isinstance(graphs, jraph.GraphsTuple):
        graphs = [graphs]
    if len(graphs) == 0:
        raise ValueError("dataset_statistics needs at least one graph")
    e0s = np.asarray(e0s, dtype=np.float64)
    per_atom, sq_forces = [], []
    n_nodes = n_edges = 0
    for g in graphs:
        n_node = np.asarray(g.n_node)
        species = np.asarray(g.nodes["species"])
        graph_of_node = np.repeat(np.arange(n_node.shape[0]), n_node)  # [n_nodes]
        e0_sum = np.bincount(graph_of_node, e0s[species], minlength=n_node.shape[0])  # [n_graphs]
        energy = np.asarray(g.globals["energy"], dtype=np.float64)  # [n_graphs]
        per_atom.append((energy - e0_sum) / n_node)
        sq_forces.append(np.asarray(g.nodes["forces"], dtype=np.float64).reshape(-1) ** 2)
        n_nodes += int(n_node.sum())
        n_edges += int(np.sum(g.n_edge))
    per_atom = np.concatenate(per_atom)
    return DatasetStatistics(
        n_graphs=int(per_atom.size),
        n_nodes=n_nodes,
        avg_num_neighbors=n_edges / n_nodes,
        mean_interaction_energy=float(per_atom.mean()),
        rms_interaction_energy=float(np.sqrt(np.mean(per_atom**2))),
        std_interaction_energy=float(per_atom.std()),
        rms_forces=float(np.sqrt(np.mean(np.concatenate(sq_forces)))),
    )
