"""The ASE calculator: derivatives, per-atom energies, bad input, compilation count."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

from mpnn_jax.data.buckets import EDGE_MULTIPLE, NODE_MULTIPLE
from mpnn_jax.data.species import SpeciesTable
from mpnn_jax.md import Calculator, bucket_size

from .conftest import CUTOFF, TABLE


def _calc(make_pair_model, policy="fp64", **kwargs):
    model, params = make_pair_model(policy)
    return Calculator(model, params, TABLE, CUTOFF, **kwargs)


def test_forces_are_minus_gradient_of_energy(x64, make_pair_model, molecule):
    atoms = molecule
    atoms.calc = _calc(make_pair_model)
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 0.1  # not a trivial minimum
    numeric = calculate_numerical_forces(atoms, eps=1e-4)
    np.testing.assert_allclose(forces, numeric, atol=1e-7, rtol=1e-6)
    np.testing.assert_allclose(np.sum(forces, axis=0), 0.0, atol=1e-10)


def test_per_atom_energies_sum_to_energy(x64, make_pair_model, crystal):
    crystal.calc = _calc(make_pair_model)
    energies = crystal.get_potential_energies()
    assert energies.shape == (8,)
    np.testing.assert_allclose(energies.sum(), crystal.get_potential_energy(), rtol=1e-12)
    assert crystal.calc.results["free_energy"] == crystal.get_potential_energy()


def test_stress_is_finite_strain_derivative(x64, make_pair_model, crystal):
    crystal.calc = _calc(make_pair_model)
    stress = crystal.get_stress()  # Voigt, eV/Å^3
    assert stress.shape == (6,)
    assert np.abs(stress).max() > 1e-3
    numeric = calculate_numerical_stress(crystal, eps=1e-5)
    np.testing.assert_allclose(stress, numeric, atol=1e-8, rtol=1e-5)
    forces = crystal.get_forces()
    numeric_f = calculate_numerical_forces(crystal, eps=1e-4)
    np.testing.assert_allclose(forces, numeric_f, atol=1e-7, rtol=1e-6)


def test_molecule_has_no_stress(make_pair_model, molecule):
    from ase.calculators.calculator import PropertyNotImplementedError

    molecule.calc = _calc(make_pair_model, policy="fp32")
    with pytest.raises(PropertyNotImplementedError):
        molecule.get_stress()


def test_float32_close_to_float64(make_pair_model, molecule):
    calc32 = _calc(make_pair_model, policy="fp32")
    e32 = calc32.get_potential_energy(molecule)
    f32 = calc32.get_forces(molecule)
    import jax

    with jax.enable_x64(True):
        calc64 = _calc(make_pair_model)
        e64 = calc64.get_potential_energy(molecule)
        f64 = calc64.get_forces(molecule)
    assert abs(e32 - e64) < 1e-5
    np.testing.assert_allclose(f32, f64, atol=1e-5)


def test_unknown_element_is_named(make_pair_model, molecule):
    molecule.symbols[2] = "Fe"
    molecule.calc = _calc(make_pair_model, policy="fp32")
    with pytest.raises(ValueError, match=r"Fe not in the model.*\['H', 'C', 'O'\]"):
        molecule.get_potential_energy()


def test_atoms_on_top_of_each_other_are_named(make_pair_model, molecule):
    molecule.positions[4] = molecule.positions[1] + [0.02, 0.0, 0.0]
    molecule.calc = _calc(make_pair_model, policy="fp32")
    with pytest.raises(ValueError, match=r"atoms [14] and [14] are 0.02 Å apart"):
        molecule.get_potential_energy()


def test_atom_on_top_of_its_periodic_image(make_pair_model, crystal):
    crystal.positions[3] = crystal.positions[0] + crystal.cell[1] + [0.0, 0.0, 0.05]
    crystal.calc = _calc(make_pair_model, policy="fp32")
    with pytest.raises(ValueError, match=r"atoms [03] and [03] \(periodic image\) are 0.05 Å"):
        crystal.get_potential_energy()


def test_nan_positions_are_named(make_pair_model, molecule):
    molecule.positions[5, 1] = np.nan
    molecule.calc = _calc(make_pair_model, policy="fp32")
    with pytest.raises(ValueError, match=r"atom\(s\) \[5\] are NaN"):
        molecule.get_forces()


def test_fp64_policy_needs_x64(make_pair_model):
    model, params = make_pair_model("fp32")
    with pytest.raises(ValueError, match="jax_enable_x64"):
        Calculator(model, params, TABLE, CUTOFF, policy="fp64")


def test_bucket_sizes_are_geometric():
    sizes = sorted({bucket_size(n, multiple=64) for n in range(1, 100_000)})
    assert all(s % 64 == 0 for s in sizes)
    ratios = np.array(sizes[1:]) / np.array(sizes[:-1])
    assert ratios[-5:].max() < 1.26 and len(sizes) < 40
    assert bucket_size(9, multiple=8) == 16 and bucket_size(8, multiple=8) == 8


def test_compilations_stay_logarithmic(make_pair_model):
    """A crystal compressed step by step (edge count x3) and grown along a supercell (x4 atoms)."""
    calc = _calc(make_pair_model, policy="fp32")
    base = bulk("C", "diamond", a=3.6, cubic=True)  # 8 atoms
    n_calls, edges, nodes = 0, [], []
    for scale in np.linspace(1.3, 0.9, 40):  # edge count grows as the cell shrinks
        atoms = base.copy()
        atoms.set_cell(base.cell * scale, scale_atoms=True)
        atoms.rattle(0.02, seed=n_calls)
        atoms.calc = calc
        atoms.get_forces()
        n_calls += 1
        edges.append(calc.graph(atoms)[0].n_edge[0])
    for n_rep in range(1, 5):  # 8 .. 32 atoms along a growing supercell
        for _ in range(3):
            atoms = base.repeat((n_rep, 1, 1))
            atoms.rattle(0.02, seed=n_calls)
            atoms.calc = calc
            atoms.get_potential_energy()
            n_calls += 1
            nodes.append(len(atoms))
    edge_ratio = max(edges) / min(edges)
    assert edge_ratio > 2.0
    bound_edges = math.log(edge_ratio) / math.log(1.25) + 2
    bound_nodes = math.log(32 / 8) / math.log(1.25) + 2
    assert calc.n_compilations == len(calc.shapes)
    assert calc.n_compilations <= bound_edges + bound_nodes + 4, (calc.n_compilations, n_calls)
    assert calc.n_compilations < n_calls / 4
    for n_node, n_edge in calc.shapes:
        assert n_node % NODE_MULTIPLE == 0 and n_edge % EDGE_MULTIPLE == 0


def test_species_table_order_does_not_matter(make_pair_model, molecule):
    model, params = make_pair_model("fp32")
    a = Calculator(model, params, SpeciesTable((8, 1, 6)), CUTOFF)
    b = Calculator(model, params, TABLE, CUTOFF)
    assert a.get_potential_energy(molecule) == b.get_potential_energy(molecule)
