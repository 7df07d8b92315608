"""MD with a tiny random-init NequIP (a smooth potential): conservation, skin edges, precision."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import units
from ase.md.verlet import VelocityVerlet

from mpnn_jax import testing
from mpnn_jax.md import Calculator, build_neighbours, energy_drift, make_force_fn, simulate
from mpnn_jax.md.run import maxwell_boltzmann
from mpnn_jax.models import build_model
from mpnn_jax.potential import init_params, make_predictor

from .conftest import CUTOFF, TABLE


def _tiny_nequip(policy, scale=2.0):
    model = build_model(
        "nequip",
        policy=policy,
        n_species=3,
        cutoff=CUTOFF,
        avg_num_neighbors=20.0,
        atomic_energies=[-1.0, -3.0, -5.0],
        scale=scale,
        n_layers=1,
        hidden_irreps="4x0e+2x1o",
        radial_features=(8,),
    )
    graph = testing.pad(
        testing.molecule_graph(np.random.default_rng(0), n_species=3, cutoff=CUTOFF),
        n_node=16,
        n_edge=64,
        n_graph=2,
    )
    return model, init_params(model, jax.random.PRNGKey(0), graph)


def test_skin_edges_beyond_cutoff_add_nothing(x64, crystal):
    """The MD force function on a list with a 1.5 Å skin equals the calculator without skin."""
    model, params = _tiny_nequip("fp64")
    crystal.calc = Calculator(model, params, TABLE, CUTOFF)
    force_fn = jax.jit(
        make_force_fn(
            make_predictor(model),
            params,
            species=TABLE.index(crystal.numbers),
            cell=crystal.cell[:],
            pbc=True,
        )
    )
    nbrs = build_neighbours(crystal.positions, crystal.cell[:], True, cutoff=CUTOFF, skin=1.5)
    out = force_fn(jnp.asarray(crystal.positions), jax.tree_util.tree_map(jnp.asarray, nbrs))
    assert int(nbrs.n_edges) > crystal.calc.graph(crystal)[0].n_edge[0]  # skin edges present
    assert abs(float(out["energy"]) - crystal.get_potential_energy()) < 1e-10
    np.testing.assert_allclose(out["forces"], crystal.get_forces(), atol=1e-12)
    assert np.abs(crystal.get_forces()).max() > 0.05


def test_on_device_nve_one_picosecond(x64, crystal):
    """1 ps of NVE (2000 x 0.5 fs, FP64, ~600 K): |drift| < 0.05 meV/atom/ps, fluctuation < 0.05
    meV/atom (measured: 0.003 and 0.016)."""
    model, params = _tiny_nequip("fp64")
    atoms = crystal
    atoms.set_momenta(maxwell_boltzmann(atoms, 300.0, seed=0))
    force_fn = make_force_fn(
        make_predictor(model),
        params,
        species=TABLE.index(atoms.numbers),
        cell=atoms.cell[:],
        pbc=True,
    )
    result = simulate(atoms, force_fn, steps=2000, dt=0.5, cutoff=CUTOFF, skin=0.5, log_every=100)
    drift, fluct = energy_drift(result.times_fs * 1e-3, result.total, len(atoms))
    assert result.times_fs[-1] == 1000.0
    assert np.ptp(result.potential) > 20 * np.ptp(result.total)  # energy does flow
    assert abs(drift) < 0.05, drift
    assert fluct < 0.05, fluct
    assert result.n_rebuilds > 0 and result.n_compilations == 1


@pytest.mark.parametrize("policy, tol", [("fp64", 3e-5), ("fp32", 5e-5)])
def test_ase_velocity_verlet_tiny_nequip(policy, tol, molecule):
    """1000 ASE steps of 0.5 fs: max |E_tot - E_tot(0)| per atom below ``tol`` eV (measured:
    1.2e-5 eV/atom in both precisions: the Verlet error dominates)."""
    with jax.enable_x64(policy == "fp64"):
        model, params = _tiny_nequip(policy)
        atoms = molecule
        atoms.set_momenta(maxwell_boltzmann(atoms, 300.0, seed=1))
        atoms.calc = Calculator(model, params, TABLE, CUTOFF)
        dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
        energies = [atoms.get_total_energy()]
        for _ in range(20):
            dyn.run(50)
            energies.append(atoms.get_total_energy())
        energies = np.array(energies)
        assert atoms.calc.n_compilations <= 3
    assert np.abs(energies - energies[0]).max() / len(atoms) < tol


def test_neighbour_pairs_survive_wrapping_and_give_the_same_forces(x64, crystal):
    """``build_neighbours`` pairs every edge with its reverse (padding with padding), ``wrap``
    keeps the pairs, and the MD force function gives the same energy and forces with the pairs
    (radial MLPs per pair) as without them (per edge), in FP64."""
    from mpnn_jax.md import wrap

    model, params = _tiny_nequip("fp64")
    cell = np.asarray(crystal.cell[:])
    nbrs = build_neighbours(crystal.positions, cell, True, cutoff=CUTOFF, skin=0.5)
    rev, n = np.asarray(nbrs.reverse), int(nbrs.n_edges)
    assert rev is not None and rev.shape == (nbrs.capacity,) and nbrs.capacity > n
    np.testing.assert_array_equal(rev[rev], np.arange(nbrs.capacity))
    assert np.all(rev != np.arange(nbrs.capacity)) and np.all(rev[n:] >= n)
    moved = jnp.asarray(crystal.positions + 1.3 * cell[0])  # every atom one cell out
    dev = jax.tree_util.tree_map(jnp.asarray, nbrs)
    positions, wrapped = wrap(moved, dev, cell=jnp.asarray(cell), pbc=(True, True, True))
    s, r, shifts = (np.asarray(a) for a in (wrapped.senders, wrapped.receivers, wrapped.shifts))
    assert not np.array_equal(shifts, np.asarray(nbrs.shifts))  # the wrap changed shifts
    np.testing.assert_array_equal(s[rev[:n]], r[:n])
    np.testing.assert_array_equal(shifts[rev[:n]], -shifts[:n])
    kw = dict(species=TABLE.index(crystal.numbers), cell=cell, pbc=True)
    force_fn = jax.jit(make_force_fn(make_predictor(model), params, **kw))
    paired = force_fn(positions, wrapped)
    per_edge = force_fn(positions, wrapped._replace(reverse=None))
    assert abs(float(paired["energy"]) - float(per_edge["energy"])) < 1e-12
    np.testing.assert_allclose(paired["forces"], per_edge["forces"], atol=1e-12)
    assert np.abs(np.asarray(paired["forces"])).max() > 1e-3
