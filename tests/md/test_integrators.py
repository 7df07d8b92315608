"""Integrators on analytic systems, neighbour-list wrapping, drift helper."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import units

from mpnn_jax.md import (
    build_neighbours,
    energy_drift,
    energy_to_force_fn,
    langevin,
    needs_rebuild,
    nve,
    temperature,
    wrap,
)


def _harmonic(k=1.0):
    return energy_to_force_fn(lambda x, *aux: 0.5 * k * jnp.sum(x * x))


def _run(step_fn, state, n):
    def body(s, _):
        s = step_fn(s)
        return s, (s.positions, s.momenta)

    return jax.lax.scan(body, state, None, length=n)


def test_velocity_verlet_harmonic_oscillator(x64):
    """x(t) = cos(w t) for m = 1 amu, k = 1 eV/Å^2; the error shrinks as dt^2."""
    errors = []
    for dt in (1.0, 0.5):
        init_fn, step_fn = nve(_harmonic(), dt=dt, masses=jnp.ones(1))
        state = init_fn(jnp.array([[1.0, 0.0, 0.0]]))
        n = int(round(50.0 / dt))
        final, _ = _run(step_fn, state, n)
        t = n * dt * units.fs  # ASE time; w = sqrt(k/m) = 1
        errors.append(abs(float(final.positions[0, 0]) - np.cos(t)))
        assert int(final.step) == n
        energy = 0.5 * float(jnp.sum(final.momenta**2) + jnp.sum(final.positions**2))
        assert abs(energy - 0.5) < 1e-2 * dt**2
    assert errors[0] < 1e-2
    # an energy function and a (energy, forces) tuple give the same dynamics
    energy_fn = lambda x: 0.5 * jnp.sum(x * x)
    tuple_fn = lambda x: (energy_fn(x), -x)
    finals = []
    for fn in (energy_fn, tuple_fn, _harmonic()):
        init_fn, step_fn = nve(fn, dt=1.0, masses=jnp.ones(1))
        finals.append(_run(step_fn, init_fn(jnp.array([[1.0, 0.5, 0.0]])), 10)[0].positions)
    np.testing.assert_allclose(finals[0], finals[1], rtol=1e-12)
    np.testing.assert_allclose(finals[0], finals[2], rtol=1e-12)
    assert 3.0 < errors[0] / errors[1] < 5.0  # second order


def test_langevin_reaches_bath_temperature(x64):
    """64 harmonic atoms at 300 K: mean kinetic temperature of the second half within 5%."""
    n = 64
    masses = jnp.full(n, 12.0)
    init_fn, step_fn = langevin(
        _harmonic(k=2.0), dt=2.0, masses=masses, temperature_K=300.0, friction=0.05, seed=3
    )
    state = init_fn(jnp.zeros((n, 3)))

    def body(s, _):
        s = step_fn(s)
        return s, temperature(s.momenta, masses)

    _, temps = jax.lax.scan(body, state, None, length=3000)
    assert abs(float(jnp.mean(temps[1500:])) - 300.0) < 15.0


def test_langevin_noise_depends_on_step_only(x64):
    """Re-running a step from the same state draws the same noise (overflow reruns are exact)."""
    init_fn, step_fn = langevin(_harmonic(), dt=1.0, masses=jnp.ones(4), temperature_K=300.0)
    state = init_fn(jnp.zeros((4, 3)))
    a, b = step_fn(step_fn(state)), step_fn(step_fn(state))
    np.testing.assert_array_equal(a.momenta, b.momenta)
    c = step_fn(a)
    assert not np.allclose(c.momenta - a.momenta, a.momenta - state.momenta)


def test_wrap_keeps_edge_vectors_and_displacements(x64, crystal):
    """Atoms far outside the cell: wrapping changes positions, never an edge vector."""
    cell = jnp.asarray(crystal.cell[:])
    rng = np.random.default_rng(0)
    jump = rng.integers(-2, 3, size=(8, 3)) @ crystal.cell[:]  # whole lattice vectors
    unwrapped = crystal.positions + jump
    nbrs = build_neighbours(unwrapped, crystal.cell[:], True, cutoff=3.0, skin=0.5)
    nbrs = jax.tree_util.tree_map(jnp.asarray, nbrs)
    moved = jnp.asarray(unwrapped + 0.01 * rng.normal(size=(8, 3)))

    def vectors(x, nb):
        xp = jnp.concatenate([x, jnp.zeros((1, 3))])
        return xp[nb.receivers] - xp[nb.senders] + nb.shifts @ cell

    x2, n2 = wrap(moved, nbrs, cell=cell, pbc=(True,) * 3)
    assert np.abs(np.asarray(x2 - moved)).max() > 1.0  # something was wrapped
    frac = np.linalg.solve(crystal.cell[:].T, np.asarray(x2).T).T
    assert frac.min() >= 0.0 and frac.max() < 1.0
    np.testing.assert_allclose(vectors(x2, n2), vectors(moved, nbrs), atol=1e-12)
    np.testing.assert_allclose(x2 - n2.reference, moved - nbrs.reference, atol=1e-12)
    assert not bool(needs_rebuild(n2, x2, skin=0.5))
    assert bool(needs_rebuild(n2, x2.at[3].add(0.3), skin=0.5))
    x3, n3 = wrap(moved, nbrs, cell=cell, pbc=(False,) * 3)
    assert x3 is moved and n3 is nbrs


def test_neighbours_padding(crystal):
    nbrs = build_neighbours(crystal.positions, crystal.cell[:], True, cutoff=3.0, skin=0.5)
    n = int(nbrs.n_edges)
    assert nbrs.capacity % 64 == 0 and nbrs.capacity >= n
    assert np.all(nbrs.senders[n:] == 8) and np.all(nbrs.receivers[n:] == 8)
    assert np.all(nbrs.shifts[n:] == 0)
    small = build_neighbours(
        crystal.positions, crystal.cell[:], True, cutoff=3.0, skin=0.5, capacity=64
    )
    assert small.capacity >= n  # grown, never truncated


def test_energy_drift_of_a_line_with_noise():
    rng = np.random.default_rng(0)
    t = np.linspace(0.0, 2.0, 201)  # ps
    e = -10.0 + 0.004 * t + 1e-4 * rng.normal(size=t.size)  # eV, 4 atoms -> 1 meV/atom/ps
    drift, fluct = energy_drift(t, e, 4)
    assert abs(drift - 1.0) < 0.05
    assert abs(fluct - 0.025) < 0.005
    assert energy_drift(t[:1], e[:1], 4) == (0.0, 0.0)
    assert np.isnan(energy_drift(t, np.where(t > 1, np.nan, e), 4)[0])
    with pytest.raises(ValueError):
        energy_drift(t, e[:-1], 4)
