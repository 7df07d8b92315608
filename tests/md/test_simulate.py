"""The on-device loop against ASE, neighbour-list overflow reruns, energy conservation."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase import units
from ase.md.verlet import VelocityVerlet

from mpnn_jax.md import Calculator, energy_drift, make_force_fn, simulate
from mpnn_jax.md.run import maxwell_boltzmann
from mpnn_jax.potential import make_predictor

from .conftest import CUTOFF, TABLE


def _thermalise(atoms, temperature_K, seed=0):
    atoms.set_momenta(maxwell_boltzmann(atoms, temperature_K, seed=seed))
    return atoms


def _force_fn(model, params, atoms):
    return make_force_fn(
        make_predictor(model),
        params,
        species=TABLE.index(atoms.numbers),
        cell=atoms.cell[:],
        pbc=atoms.pbc,
    )


def _ase_run(atoms, calc, *, steps, dt, every):
    """Total energies and positions every ``every`` steps of ASE's velocity Verlet."""
    atoms = atoms.copy()
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, timestep=dt * units.fs)
    energies, positions = [atoms.get_total_energy()], [atoms.get_positions()]
    for _ in range(steps // every):
        dyn.run(every)
        energies.append(atoms.get_total_energy())
        positions.append(atoms.get_positions())
    return np.array(energies), np.array(positions)


def test_ase_velocity_verlet_conserves_energy(x64, make_pair_model, molecule):
    """1000 steps of 0.5 fs at 300 K: total energy within 2 meV/atom of the start, no drift."""
    model, params = make_pair_model("fp64")
    atoms = _thermalise(molecule, 300.0)
    energies, _ = _ase_run(
        atoms, Calculator(model, params, TABLE, CUTOFF), steps=1000, dt=0.5, every=10
    )
    n = len(atoms)
    kinetic0 = atoms.get_kinetic_energy()
    assert kinetic0 > 0.1
    assert np.abs(energies - energies[0]).max() / n < 2e-3
    drift, _ = energy_drift(np.arange(energies.size) * 5e-3, energies, n)
    assert abs(drift) < 0.5  # meV/atom/ps


@pytest.mark.parametrize("structure", ["molecule", "crystal"])
def test_jax_loop_matches_ase_loop(x64, make_pair_model, structure, request):
    """Same velocity Verlet trajectory over 40 steps in FP64 (positions modulo the lattice)."""
    atoms = _thermalise(request.getfixturevalue(structure), 600.0, seed=1)
    model, params = make_pair_model("fp64")
    ase_e, ase_x = _ase_run(
        atoms, Calculator(model, params, TABLE, CUTOFF), steps=40, dt=1.0, every=20
    )
    result = simulate(
        atoms,
        _force_fn(model, params, atoms),
        steps=40,
        dt=1.0,
        cutoff=CUTOFF,
        skin=0.3,
        log_every=20,
    )
    np.testing.assert_allclose(result.total, ase_e, rtol=0, atol=1e-10)
    diff = np.asarray(result.final_state.positions) - ase_x[-1]
    if atoms.pbc.any():
        frac = np.linalg.solve(atoms.cell[:].T, diff.T).T
        diff = (frac - np.round(frac)) @ atoms.cell[:]
    assert np.abs(diff).max() < 1e-10
    assert np.abs(ase_x[-1] - ase_x[0]).max() > 0.05  # atoms moved
    np.testing.assert_array_equal(result.steps, [0, 20, 40])


@pytest.mark.parametrize("ensemble", ["nve", "nvt"])
def test_neighbour_overflow_reruns_change_nothing(x64, make_pair_model, crystal, ensemble):
    """A tiny skin forces many rebuilds mid-block; the trajectory is that of a large skin."""
    atoms = _thermalise(crystal, 1500.0, seed=2)
    model, params = make_pair_model("fp64")
    force_fn = _force_fn(model, params, atoms)
    kwargs = dict(
        steps=60, dt=1.0, cutoff=CUTOFF, log_every=20, ensemble=ensemble, temperature_K=500.0
    )
    ref = simulate(atoms, force_fn, skin=2.0, **kwargs)
    tiny = simulate(atoms, force_fn, skin=0.25, capacity=64, **kwargs)
    assert tiny.n_rebuilds >= 5 and tiny.n_rebuilds > 3 * ref.n_rebuilds  # overflows handled
    assert tiny.n_compilations <= 2  # capacity grows to a bucket, not per rebuild
    np.testing.assert_allclose(tiny.total, ref.total, rtol=0, atol=1e-10)
    np.testing.assert_allclose(tiny.final_state.positions, ref.final_state.positions, atol=1e-10)
    np.testing.assert_allclose(tiny.final_state.momenta, ref.final_state.momenta, atol=1e-10)


def test_trajectory_file_and_logs(tmp_path, make_pair_model, crystal):
    atoms = _thermalise(crystal, 300.0)
    model, params = make_pair_model("fp32")
    path = tmp_path / "traj.xyz"
    result = simulate(
        atoms,
        _force_fn(model, params, atoms),
        steps=25,
        dt=0.5,
        cutoff=CUTOFF,
        log_every=10,
        trajectory=path,
    )
    frames = ase.io.read(path, index=":")
    np.testing.assert_array_equal(result.steps, [0, 10, 20, 25])
    assert len(frames) == 4 and [f.info["step"] for f in frames] == [0, 10, 20, 25]
    np.testing.assert_allclose(
        [f.get_potential_energy() for f in frames], result.potential, rtol=1e-6
    )
    np.testing.assert_allclose(frames[-1].get_kinetic_energy(), result.kinetic[-1], rtol=1e-5)
    assert result.n_compilations == 1
    assert np.allclose(result.total, result.kinetic + result.potential)
    assert result.final_state.positions.dtype == np.float32


def test_bad_arguments(make_pair_model, molecule):
    model, params = make_pair_model("fp32")
    force_fn = _force_fn(model, params, molecule)
    with pytest.raises(ValueError, match="ensemble"):
        simulate(molecule, force_fn, steps=2, dt=0.5, cutoff=CUTOFF, ensemble="npt")
    _thermalise(molecule, 300.0)
    with pytest.raises(RuntimeError, match="skin"):
        simulate(molecule, force_fn, steps=2, dt=5.0, cutoff=CUTOFF, skin=1e-4)


def test_compiler_options_reach_the_md_block(make_pair_model, molecule):
    """``simulate(..., compiler_options=)`` compiles the MD block with them: an option XLA does
    not know is refused (so ``mpnn_jax.xla.options_for(model)`` from ``run_md`` is applied)."""
    model, params = make_pair_model("fp32")
    atoms = _thermalise(molecule, 300.0)
    force_fn = _force_fn(model, params, atoms)
    with pytest.raises(Exception, match="xla_no_such_option"):
        simulate(atoms, force_fn, steps=2, dt=0.5, cutoff=CUTOFF, log_every=1,
                 compiler_options={"xla_no_such_option": "1"})  # fmt: skip
    result = simulate(atoms, force_fn, steps=2, dt=0.5, cutoff=CUTOFF, log_every=1)
    assert np.isfinite(result.total).all()
