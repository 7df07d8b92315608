"""Jittable MD integrators in ASE units: velocity Verlet (NVE) and Langevin BAOAB (NVT).

Factories in the style of jax-md: ``nve(force_fn, *, dt, masses) -> (init_fn, step_fn)``.

* ``force_fn(positions, *aux) -> dict(energy=[] eV, forces=[n_atoms, 3] eV/Å, ...)``; a tuple
  ``(energy, forces)`` works too, and so does an energy function returning a scalar (eV), whose
  forces are ``-jax.grad`` (:func:`energy_to_force_fn` does the same explicitly).
  ``aux`` (e.g. a neighbour list) is passed through ``init_fn`` and ``step_fn`` unchanged.
* Units are ASE's: positions Å, masses amu, energies eV, time ``ase.units.fs``; momenta are in
  ASE's units (amu Å / ASE time), so ``MDState.momenta`` can be handed to ``Atoms.set_momenta``.
* The state is an immutable `MDState` pytree; ``step_fn`` returns a new one. Both functions are
  pure and can be jitted and scanned (``jax.lax.scan``).
* Langevin noise at step ``n`` is drawn from ``fold_in(key, n)``: re-running a step from the same
  state draws the same noise, so a rerun after a neighbour-list rebuild is bit-for-bit the same
  physics.

Example:
    >>> import jax.numpy as jnp
    >>> energy_fn = lambda x: 0.5 * jnp.sum(x**2)  # harmonic well, eV
    >>> init_fn, step_fn = nve(energy_fn, dt=1.0, masses=jnp.ones(2))
    >>> state = step_fn(init_fn(jnp.ones((2, 3))))
    >>> int(state.step)
    1
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from ase import units

from mpnn_jax.precision import Policy


class MDState(NamedTuple):
    """The state of an MD trajectory (a pytree; every field an array).

    Attributes:
        positions: float [n_atoms, 3] Å.
        momenta: float [n_atoms, 3] amu Å / (ASE time unit).
        forces: float [n_atoms, 3] eV/Å at ``positions``.
        potential_energy: float [] eV at ``positions``.
        step: int32 [] number of steps taken.
    """

    positions: jax.Array
    momenta: jax.Array
    forces: jax.Array
    potential_energy: jax.Array
    step: jax.Array


def energy_to_force_fn(energy_fn: Callable[..., jax.Array]) -> Callable[..., dict]:
    """Turns ``energy_fn(positions, *aux) -> [] eV`` into a force function (forces = -dE/dx)."""

    def force_fn(positions, *aux):
        energy, grad = jax.value_and_grad(energy_fn)(positions, *aux)
        return {"energy": energy, "forces": -grad}

    return force_fn


def _energy_forces(fn, positions, aux):
    """``(energy, forces)`` from a force function (dict or tuple) or an energy function."""
    out = fn(positions, *aux)
    if isinstance(out, dict):
        return out["energy"], out["forces"]
    if isinstance(out, tuple):
        return out
    energy, grad = jax.value_and_grad(fn)(positions, *aux)  # a scalar: an energy function
    return energy, -grad


def kinetic_energy(momenta: jax.Array, masses: jax.Array) -> jax.Array:
    """[] eV: sum p^2 / 2m (momenta [n_atoms, 3] in ASE units, masses [n_atoms] amu)."""
    return 0.5 * jnp.sum(momenta * momenta / masses[:, None])


def temperature(momenta: jax.Array, masses: jax.Array) -> jax.Array:
    """[] K: instantaneous temperature 2 KE / (3 N k_B)."""
    return 2.0 * kinetic_energy(momenta, masses) / (3 * masses.shape[0] * units.kB)


def _init(force_fn, masses_arr):
    def init_fn(positions: jax.Array, momenta: jax.Array | None = None, *aux) -> MDState:
        """Initial state at ``positions`` (momenta default to zero)."""
        positions = jnp.asarray(positions)
        momenta = jnp.zeros_like(positions) if momenta is None else jnp.asarray(momenta)
        energy, forces = _energy_forces(force_fn, positions, aux)
        return MDState(positions, momenta, forces, energy, jnp.zeros((), jnp.int32))

    return init_fn


def nve(
    force_fn: Callable[..., dict], *, dt: float, masses
) -> tuple[Callable[..., MDState], Callable[..., MDState]]:
    """Velocity Verlet (microcanonical).

    Args:
        force_fn: see the module docstring.
        dt: time step in fs.
        masses: float [n_atoms] amu.

    Returns:
        ``(init_fn(positions, momenta=None, *aux), step_fn(state, *aux))``.
    """
    dt = float(dt) * units.fs
    masses = jnp.asarray(masses)

    def step_fn(state: MDState, *aux) -> MDState:
        m = Policy.cast_to(state.positions.dtype, masses)[:, None]  # [n_atoms, 1]
        p = state.momenta + 0.5 * dt * state.forces
        x = state.positions + dt * p / m
        energy, forces = _energy_forces(force_fn, x, aux)
        p = p + 0.5 * dt * forces
        return MDState(x, p, forces, energy, state.step + 1)

    return _init(force_fn, masses), step_fn


def langevin(
    force_fn: Callable[..., dict],
    *,
    dt: float,
    masses,
    temperature_K: float,
    friction: float = 0.01,
    seed: int = 0,
) -> tuple[Callable[..., MDState], Callable[..., MDState]]:
    """Langevin dynamics with the BAOAB splitting (Leimkuhler and Matthews 2013).

    Args:
        force_fn: see the module docstring.
        dt: time step in fs.
        masses: float [n_atoms] amu.
        temperature_K: bath temperature in K.
        friction: friction coefficient gamma in 1/fs.
        seed: PRNG seed; step ``n`` uses ``fold_in(PRNGKey(seed), n)``.

    Returns:
        ``(init_fn(positions, momenta=None, *aux), step_fn(state, *aux))``.
    """
    dt = float(dt) * units.fs
    gamma = float(friction) / units.fs
    kT = units.kB * float(temperature_K)
    c1 = float(jnp.exp(-gamma * dt))
    c2 = float(jnp.sqrt(1.0 - c1 * c1))
    masses = jnp.asarray(masses)
    key = jax.random.PRNGKey(seed)

    def step_fn(state: MDState, *aux) -> MDState:
        dtype = state.positions.dtype
        m = Policy.cast_to(dtype, masses)[:, None]  # [n_atoms, 1]
        p = state.momenta + 0.5 * dt * state.forces  # B
        x = state.positions + 0.5 * dt * p / m  # A
        noise = jax.random.normal(jax.random.fold_in(key, state.step), p.shape, dtype)
        p = c1 * p + c2 * jnp.sqrt(m * kT) * noise  # O
        x = x + 0.5 * dt * p / m  # A
        energy, forces = _energy_forces(force_fn, x, aux)
        p = p + 0.5 * dt * forces  # B
        return MDState(x, p, forces, energy, state.step + 1)

    return _init(force_fn, masses), step_fn
