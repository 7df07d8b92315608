"""E0 estimation and dataset statistics against direct float64 computations."""

import numpy as np
import pytest

from mpnn_jax.data import (
    SpeciesTable,
    atoms_to_graph,
    batch_graphs,
    bundled_path,
    dataset_statistics,
    e0s_from_file,
    e0s_least_squares,
    read_xyz,
)

from .conftest import make_config

TABLE = SpeciesTable((1, 6, 8))
TRUE_E0 = np.array([-13.6, -1025.3, -2035.6])


def synthetic_configs(n=40, noise=1e-3, seed=0):
    rng = np.random.default_rng(seed)
    configs = []
    for _ in range(n):
        numbers = rng.choice([1, 6, 8], size=int(rng.integers(2, 12)))
        energy = TRUE_E0[TABLE.index(numbers)].sum() + noise * rng.normal() * len(numbers)
        positions = rng.random((len(numbers), 3)) * 4.0
        configs.append(
            make_config(
                numbers, positions, energy=energy, forces=rng.normal(size=(len(numbers), 3))
            )
        )
    return configs


def test_least_squares_recovers_known_e0():
    e0s = e0s_least_squares(synthetic_configs(), TABLE)
    assert e0s.dtype == np.float64 and e0s.shape == (3,)
    np.testing.assert_allclose(e0s, TRUE_E0, atol=5e-3)
    np.testing.assert_allclose(
        e0s_least_squares(synthetic_configs(noise=0.0), TABLE), TRUE_E0, rtol=1e-12
    )


def test_least_squares_warns_when_underdetermined():
    configs = read_xyz(bundled_path("rmd17_ethanol", "train"), index="0:20")  # always C2H6O
    with pytest.warns(UserWarning, match="determine only 1 of 3"):
        e0s = e0s_least_squares(configs, TABLE)
    counts = np.array([6, 2, 1])
    np.testing.assert_allclose(counts @ e0s, np.mean([c.energy for c in configs]), rtol=1e-9)


def test_e0s_from_isolated_atoms_file():
    e0s = e0s_from_file(bundled_path("rmd17_ethanol", "isolated_atoms"), TABLE)
    np.testing.assert_array_equal(
        e0s, [-13.568422383046626, -1025.2770951782686, -2035.5709809589698]
    )
    with pytest.raises(ValueError, match="no isolated-atom energy for element.* Cu"):
        e0s_from_file(bundled_path("rmd17_ethanol", "isolated_atoms"), SpeciesTable((1, 29)))


def test_dataset_statistics_against_direct_computation():
    configs = synthetic_configs(n=12)
    graphs = [atoms_to_graph(c, cutoff=2.0, species_table=TABLE, dtype=np.float64) for c in configs]
    e0s = np.array([-13.0, -1020.0, -2030.0])
    stats = dataset_statistics(graphs, e0s)
    per_atom = np.array(
        [(c.energy - e0s[TABLE.index(c.numbers)].sum()) / c.n_atoms for c in configs]
    )
    forces = np.concatenate([c.forces for c in configs])
    assert stats.n_graphs == 12 and stats.n_nodes == sum(c.n_atoms for c in configs)
    assert stats.avg_num_neighbors == pytest.approx(
        sum(int(g.n_edge[0]) for g in graphs) / stats.n_nodes
    )
    assert stats.mean_interaction_energy == pytest.approx(per_atom.mean(), rel=1e-12)
    assert stats.rms_interaction_energy == pytest.approx(np.sqrt(np.mean(per_atom**2)), rel=1e-12)
    assert stats.std_interaction_energy == pytest.approx(per_atom.std(), rel=1e-9)
    assert stats.rms_forces == pytest.approx(np.sqrt(np.mean(forces**2)), rel=1e-12)
    # Same numbers from one batched graph.
    assert dataset_statistics(batch_graphs(graphs), e0s) == stats


def test_ethanol_neighbour_count():
    configs = read_xyz(bundled_path("rmd17_ethanol", "test"), index="0:5")
    graphs = [atoms_to_graph(c, cutoff=5.0, species_table=TABLE) for c in configs]
    e0s = e0s_from_file(bundled_path("rmd17_ethanol", "isolated_atoms"), TABLE)
    stats = dataset_statistics(graphs, e0s)
    assert stats.avg_num_neighbors == 8.0  # 9 atoms, all within 5 Å of each other
    assert -5.0 < stats.mean_interaction_energy < -1.0  # eV/atom of atomisation
