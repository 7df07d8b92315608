"""The on-device MD driver: blocks of jit-compiled steps, host neighbour rebuilds, logging.

``simulate(atoms, force_fn, ...)`` runs ``steps`` MD steps of an ``ase.Atoms`` under
``force_fn(positions, neighbours) -> dict(energy, forces, ...)`` (see :mod:`mpnn_jax.md.forces`):

* Steps run on device in blocks of ``log_every`` steps: one ``jax.lax.scan`` inside one ``jax.jit``.
  After each step, positions are wrapped into the cell (shifts follow, :func:`neighbours.wrap`)
  and checked against the skin (:func:`neighbours.needs_rebuild`).
* The first step that moves an atom more than ``skin / 2`` since the last build is not accepted:
  the block freezes at the last valid state and returns an overflow flag; the host rebuilds the
  list (vesin) at that state and runs the rest of the block from it. The rejected step is redone
  from the same state with a complete list, so a rebuild changes nothing physical.
* The edge capacity only grows, to the next geometric bucket, when a rebuild needs more slots:
  one compilation per bucket (``MDResult.n_compilations``). Lists are built on the host and always
  fit, so the capacity cannot overflow on device; the skin check is the only on-device flag.
* A non-finite potential energy stops the run with ``FloatingPointError``; a skin too small for
  a single step (overflow right after a rebuild) with ``RuntimeError``.
* Every ``log_every`` steps the host records kinetic, potential and total energy and, if asked,
  appends a frame (positions, momenta, energy, forces) to an extended-XYZ trajectory.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import ase
import ase.io
import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from mpnn_jax.md import integrators
from mpnn_jax.md.neighbours import Neighbours, build_neighbours, needs_rebuild, wrap


@dataclasses.dataclass
class MDResult:
    """What `simulate` returns (numpy, host side).

    Attributes:
        times_fs: [n_logged] time of each logged step in fs (step 0 included).
        steps: [n_logged] step numbers.
        kinetic: [n_logged] kinetic energy, eV.
        potential: [n_logged] potential energy, eV.
        total: [n_logged] kinetic + potential, eV.
        temperature: [n_logged] instantaneous temperature, K.
        final_state: the last `integrators.MDState`.
        n_atoms: number of atoms.
        n_rebuilds: neighbour-list builds after the first one.
        n_compilations: times the block function was traced (one per edge-capacity bucket).
        wall_s: wall time of the stepping (compilation included), s.
        timed_steps: steps after the first block (the first one includes compilation).
        timed_wall_s: wall time of those steps, s (for throughput).
    """

    times_fs: np.ndarray
    steps: np.ndarray
    kinetic: np.ndarray
    potential: np.ndarray
    total: np.ndarray
    temperature: np.ndarray
    final_state: integrators.MDState
    n_atoms: int
    n_rebuilds: int = 0
    n_compilations: int = 0
    wall_s: float = 0.0
    timed_steps: int = 0
    timed_wall_s: float = 0.0


def default_dtype():
    """float64 when ``jax_enable_x64`` is on (globally or by ``enable_x64()``), else float32."""
    return jax.dtypes.canonicalize_dtype(np.float64)


def simulate(
    atoms: ase.Atoms,
    force_fn: Callable[..., dict],
    *,
    steps: int,
    dt: float,
    cutoff: float,
    skin: float = 0.5,
    ensemble: str = "nve",
    temperature_K: float = 300.0,
    friction: float = 0.01,
    seed: int = 0,
    log_every: int = 10,
    trajectory: str | Path | None = None,
    capacity: int | None = None,
    dtype=None,
    progress: Callable[[int], None] | None = None,
    compiler_options: Mapping[str, str] | None = None,
) -> MDResult:
    """Runs MD on device (see the module docstring).

    Args:
        atoms: structure; its momenta (``atoms.get_momenta()``), masses, cell and pbc are used.
        force_fn: ``force_fn(positions [n_atoms, 3], neighbours) -> dict(energy, forces)``.
        steps: number of MD steps.
        dt: time step, fs.
        cutoff: model cutoff, Å.
        skin: neighbour-list skin, Å.
        ensemble: ``"nve"`` (velocity Verlet) or ``"nvt"`` (Langevin BAOAB).
        temperature_K: bath temperature for ``"nvt"``, K.
        friction: Langevin friction, 1/fs.
        seed: Langevin PRNG seed.
        log_every: steps per block, and between logged energies and trajectory frames.
        trajectory: extended-XYZ path to write frames to (overwritten), or None.
        capacity: initial edge capacity (grown as needed); None picks the bucket of the first
            list.
        dtype: float dtype of the state; default float64 under x64, else float32.
        progress: called with the number of steps done after each block.
        compiler_options: XLA options for the compiled MD block (e.g.
            ``mpnn_jax.xla.options_for(model)``); None keeps XLA's defaults.

    Returns:
        An `MDResult`.
    """
    if ensemble not in ("nve", "nvt"):
        raise ValueError(f"unknown ensemble {ensemble!r}; expected 'nve' or 'nvt'")
    if steps < 0 or log_every < 1:
        raise ValueError(f"need steps >= 0 and log_every >= 1, got {steps}, {log_every}")
    dtype = default_dtype() if dtype is None else jnp.dtype(dtype)
    pbc = tuple(bool(p) for p in atoms.pbc)
    cell_np = np.asarray(atoms.cell[:], np.float64) if any(pbc) else np.zeros((3, 3))
    cell = jnp.asarray(cell_np, dtype)
    masses = np.asarray(atoms.get_masses(), np.float64)
    if ensemble == "nve":
        init_fn, step_fn = integrators.nve(force_fn, dt=dt, masses=masses)
    else:
        init_fn, step_fn = integrators.langevin(
            force_fn,
            dt=dt,
            masses=masses,
            temperature_K=temperature_K,
            friction=friction,
            seed=seed,
        )
    masses_dev = jnp.asarray(masses, dtype)
    n_compilations = 0

    def rebuild(positions, capacity) -> Neighbours:
        nbrs = build_neighbours(
            np.asarray(positions), cell_np, pbc, cutoff=cutoff, skin=skin, capacity=capacity
        )
        return jax.tree_util.tree_map(
            lambda x: jnp.asarray(x, dtype) if x.dtype.kind == "f" else jnp.asarray(x), nbrs
        )

    def run_block(state, nbrs, n_target):
        nonlocal n_compilations
        n_compilations += 1  # runs once per trace

        def advance(carry):
            state, nbrs, done, _ = carry
            new = step_fn(state, nbrs)
            positions, new_nbrs = wrap(new.positions, nbrs, cell=cell, pbc=pbc)
            new = new._replace(positions=positions)
            bad = needs_rebuild(new_nbrs, positions, skin=skin)
            pick = lambda a, b: jax.tree_util.tree_map(lambda u, v: jnp.where(bad, v, u), a, b)
            return pick(new, state), pick(new_nbrs, nbrs), done + jnp.where(bad, 0, 1), bad

        def body(carry, _):
            _, _, done, overflow = carry
            active = (done < n_target) & ~overflow
            # inactive steps (block done, or waiting for a rebuild) cost nothing
            return jax.lax.cond(active, advance, lambda c: c, carry), None

        carry = (state, nbrs, jnp.zeros((), jnp.int32), jnp.zeros((), bool))
        (state, nbrs, done, overflow), _ = jax.lax.scan(body, carry, None, length=log_every)
        return state, nbrs, done, overflow

    run_block = jax.jit(run_block, compiler_options=compiler_options or None)
    init_fn = jax.jit(init_fn)

    positions0, momenta0 = atoms.get_positions(), atoms.get_momenta()
    nbrs = rebuild(positions0, capacity)
    nbrs0 = jax.device_put(nbrs)
    positions, nbrs = wrap(jnp.asarray(positions0, dtype), nbrs0, cell=cell, pbc=pbc)
    state = init_fn(positions, jnp.asarray(momenta0, dtype), nbrs)

    log: dict[str, list] = {"steps": [], "kinetic": [], "potential": []}
    writer = _TrajectoryWriter(atoms, trajectory) if trajectory is not None else None

    def record(state):
        ke = float(integrators.kinetic_energy(state.momenta, masses_dev))
        log["steps"].append(int(state.step))
        log["kinetic"].append(ke)
        log["potential"].append(float(state.potential_energy))
        if writer is not None:
            writer.write(state)

    record(state)
    n_rebuilds = 0
    start = time.perf_counter()
    done_total = 0
    first_block_end, first_block_steps = None, 0
    while done_total < steps:
        target = min(log_every, steps - done_total)
        block_done = 0
        just_rebuilt = False
        while block_done < target:
            state, nbrs, done, overflow = run_block(
                state, nbrs, jnp.asarray(target - block_done, jnp.int32)
            )
            block_done += int(done)
            if bool(overflow):
                if int(done) == 0 and just_rebuilt:
                    raise RuntimeError(
                        f"step {int(state.step)}: an atom moved more than skin/2 = {skin / 2} Å "
                        "in one step; increase the skin or reduce dt"
                    )
                nbrs = rebuild(state.positions, nbrs.capacity)
                n_rebuilds += 1
                just_rebuilt = True
            else:
                just_rebuilt = False
        done_total += block_done
        record(state)
        if first_block_end is None:
            jax.block_until_ready(state)
            first_block_end, first_block_steps = time.perf_counter(), done_total
        if progress is not None:
            progress(done_total)
        if not np.isfinite(log["potential"][-1]):
            raise FloatingPointError(f"non-finite potential energy at step {int(state.step)}")
    jax.block_until_ready(state)
    wall = time.perf_counter() - start

    steps_arr = np.asarray(log["steps"])
    kinetic = np.asarray(log["kinetic"])
    potential = np.asarray(log["potential"])
    return MDResult(
        times_fs=steps_arr * float(dt),
        steps=steps_arr,
        kinetic=kinetic,
        potential=potential,
        total=kinetic + potential,
        temperature=2.0 * kinetic / (3 * len(atoms) * ase.units.kB),
        final_state=state,
        n_atoms=len(atoms),
        n_rebuilds=n_rebuilds,
        n_compilations=n_compilations,
        wall_s=wall,
        timed_steps=done_total - first_block_steps,
        timed_wall_s=(start + wall - first_block_end) if first_block_end is not None else 0.0,
    )


class _TrajectoryWriter:
    """Writes `MDState` frames of one structure to an extended-XYZ file."""

    def __init__(self, atoms: ase.Atoms, path: str | Path):
        self.atoms = atoms.copy()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")

    def write(self, state: integrators.MDState) -> None:
        frame = self.atoms.copy()
        frame.positions = np.asarray(state.positions, np.float64)
        frame.set_momenta(np.asarray(state.momenta, np.float64))
        frame.calc = SinglePointCalculator(
            frame,
            energy=float(state.potential_energy),
            forces=np.asarray(state.forces, np.float64),
        )
        frame.info["step"] = int(state.step)
        ase.io.write(self.path, frame, format="extxyz", append=True)
