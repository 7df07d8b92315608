"""From a :class:`~mpnn_jax.training.config.DataConfig` to graphs, E0s and statistics.

Host-side glue between the config and :mod:`mpnn_jax.data`: reads the splits (a validation
fraction is a seeded random hold-out of the training file), builds the species table from the
training set, computes the E0s (isolated-atom file or least squares) and the statistics the
model is normalised with (average neighbours, per-atom energy shift, force RMS scale).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jraph
import numpy as np

from mpnn_jax.data import (
    GraphLoader,
    SpeciesTable,
    atoms_to_graph,
    dataset_statistics,
    e0s_from_file,
    e0s_least_squares,
    plan_buckets,
    read_xyz,
)
from mpnn_jax.training.config import DataConfig, resolve_data_path


@dataclasses.dataclass
class PreparedData:
    """The graphs of each split plus what the model is built from.

    Attributes:
        train, valid, test: unpadded single-config graphs (``test`` may be empty).
        species: the species table (from the training configs).
        e0s: float64 [n_species] isolated-atom energies, eV.
        statistics: ``dataset_statistics(train).to_dict()`` plus ``scale`` (eV/Å, the force RMS)
            and ``shift`` (eV/atom, mean interaction energy per atom).
    """

    train: list[jraph.GraphsTuple]
    valid: list[jraph.GraphsTuple]
    test: list[jraph.GraphsTuple]
    species: SpeciesTable
    e0s: np.ndarray
    statistics: dict


def read_configs(path: str, data: DataConfig) -> list:
    """Reads the configurations of one file with the keys of ``data``."""
    return read_xyz(
        resolve_data_path(path),
        energy_key=data.energy_key,
        forces_key=data.forces_key,
        stress_key=data.stress_key,
    )


def configs_to_graphs(
    configs: list, *, cutoff: float, species: SpeciesTable, dtype=np.float32
) -> list[jraph.GraphsTuple]:
    """One unpadded graph per configuration."""
    return [atoms_to_graph(c, cutoff=cutoff, species_table=species, dtype=dtype) for c in configs]


def prepare_data(
    data: DataConfig,
    *,
    seed: int = 0,
    dtype=np.float32,
    species: SpeciesTable | None = None,
    e0s: np.ndarray | None = None,
    with_test: bool = False,
) -> PreparedData:
    """Reads the splits and computes species, E0s and statistics.

    Args:
        data: the data section of the config.
        seed: seed of the validation hold-out when ``data.valid`` is a fraction.
        dtype: float dtype of the graphs (float64 for FP64 policies).
        species, e0s: reuse these (e.g. from a checkpoint) instead of computing them.
        with_test: also read ``data.test``.
    """
    train_configs = read_configs(data.train, data)
    if isinstance(data.valid, float):
        perm = np.random.default_rng(seed).permutation(len(train_configs))
        n_valid = max(1, int(round(data.valid * len(train_configs))))
        valid_configs = [train_configs[i] for i in perm[:n_valid]]
        train_configs = [train_configs[i] for i in np.sort(perm[n_valid:])]
    else:
        valid_configs = read_configs(data.valid, data)
    if data.n_train is not None:
        train_configs = train_configs[: data.n_train]
    if data.n_valid is not None:
        valid_configs = valid_configs[: data.n_valid]
    if species is None:
        species = SpeciesTable.from_configs(train_configs)
    if e0s is None:
        if data.e0s == "least_squares":
            e0s = e0s_least_squares(train_configs, species)
        else:
            e0s = e0s_from_file(resolve_data_path(data.e0s), species, energy_key=data.energy_key)
    e0s = np.asarray(e0s, dtype=np.float64)

    def graphs(configs):
        return configs_to_graphs(configs, cutoff=data.cutoff, species=species, dtype=dtype)

    train = graphs(train_configs)
    stats = dataset_statistics(train, e0s).to_dict()
    stats["scale"] = float(stats["rms_forces"]) if stats["rms_forces"] > 0 else 1.0
    stats["shift"] = float(stats["mean_interaction_energy"])
    test = graphs(read_configs(data.test, data)) if (with_test and data.test) else []
    return PreparedData(
        train=train,
        valid=graphs(valid_configs),
        test=test,
        species=species,
        e0s=e0s,
        statistics=stats,
    )


def make_loader(
    graphs: list[jraph.GraphsTuple],
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    max_buckets: int = 4,
) -> GraphLoader:
    """A :class:`~mpnn_jax.data.GraphLoader` (no batches dropped) padding to at most
    ``max_buckets`` shapes."""
    plan = plan_buckets(graphs, batch_size, max_buckets=max_buckets)
    return GraphLoader(graphs, batch_size=batch_size, shuffle=shuffle, seed=seed, plan=plan)


def species_from_list(numbers: list[int]) -> SpeciesTable:
    """The inverse of ``SpeciesTable.to_list`` (for checkpoints)."""
    return SpeciesTable.from_list(numbers)


def file_exists(path: str | None) -> bool:
    """True for an existing file or a bundled path."""
    if path is None:
        return False
    try:
        return Path(resolve_data_path(path)).is_file()
    except (ValueError, FileNotFoundError):
        return False
