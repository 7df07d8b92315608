"""``run_md``: molecular dynamics of a trained run on one structure, with a summary.

The ``mpnn-jax md`` command calls :func:`run_md`. It loads the run, draws Maxwell-Boltzmann
velocities (unless the structure has momenta), runs the on-device loop of
:func:`mpnn_jax.md.simulate.simulate` with a tqdm progress bar and returns (and, with ``out``,
writes) a summary: throughput (ns/day, atom-steps/s, measured after the first block, which
includes compilation), total-energy drift (meV/atom/ps, from a linear fit) and fluctuation
(meV/atom), mean temperature, neighbour-list rebuilds and compilations.

Files written under ``out``: ``trajectory.xyz`` (every ``log_every`` steps), ``energies.csv``
(step, time_fs, kinetic_eV, potential_eV, total_eV, temperature_K) and ``summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import ase
import ase.io
import numpy as np
from ase import units

from mpnn_jax import xla
from mpnn_jax.md.analysis import energy_drift, throughput
from mpnn_jax.md.calculator import load_trained, validate_atoms
from mpnn_jax.md.forces import make_force_fn
from mpnn_jax.md.simulate import MDResult, simulate
from mpnn_jax.nn.backends import resolve
from mpnn_jax.precision import Policy


def read_structure(structure: str | Path | ase.Atoms) -> ase.Atoms:
    """An ``ase.Atoms`` from an Atoms (copied) or the first frame of a structure file."""
    if isinstance(structure, ase.Atoms):
        return structure.copy()
    path = Path(structure)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such structure file")
    atoms = ase.io.read(path, index=0)
    atoms.calc = None
    return atoms


def maxwell_boltzmann(atoms: ase.Atoms, temperature_K: float, *, seed: int = 0) -> np.ndarray:
    """Momenta [n_atoms, 3] (ASE units) drawn at ``temperature_K``, zero total momentum."""
    masses = atoms.get_masses()[:, None]  # [n_atoms, 1] amu
    rng = np.random.default_rng(seed)
    momenta = rng.normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * temperature_K)
    if len(atoms) > 1:
        momenta -= masses * (momenta.sum(axis=0) / masses.sum())  # remove centre-of-mass motion
    return momenta


def summarize(result: MDResult, *, dt: float, ensemble: str) -> dict:
    """The summary dict of an `MDResult` (see the module docstring)."""
    drift, fluct = energy_drift(result.times_fs * 1e-3, result.total, result.n_atoms)
    speed = throughput(
        n_atoms=result.n_atoms,
        steps=result.timed_steps,
        dt_fs=dt,
        wall_s=result.timed_wall_s,
    )
    if result.timed_steps == 0:  # a single block: fall back to the total, compilation included
        speed = throughput(
            n_atoms=result.n_atoms, steps=int(result.steps[-1]), dt_fs=dt, wall_s=result.wall_s
        )
    return {
        "n_atoms": result.n_atoms,
        "steps": int(result.steps[-1]),
        "dt_fs": float(dt),
        "simulated_ps": float(result.times_fs[-1]) * 1e-3,
        "ensemble": ensemble,
        "ns_per_day": speed["ns_per_day"],
        "atom_steps_per_s": speed["atom_steps_per_s"],
        "drift_meV_per_atom_per_ps": drift,
        "fluctuation_meV_per_atom": fluct,
        "mean_temperature_K": float(
            np.mean(result.temperature[1:] if len(result.steps) > 1 else result.temperature)
        ),
        "final_total_energy_eV": float(result.total[-1]),
        "n_rebuilds": result.n_rebuilds,
        "n_compilations": result.n_compilations,
        "wall_s": result.wall_s,
    }


def run_md(
    workdir: str | Path,
    structure: str | Path | ase.Atoms,
    *,
    steps: int,
    dt: float = 0.5,
    ensemble: str = "nve",
    temperature: float = 300.0,
    policy: Policy | str | None = None,
    backend: str | None = None,
    log_every: int | None = None,
    out: str | Path | None = None,
    skin: float = 0.5,
    friction: float = 0.01,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Runs MD of the model trained in ``workdir`` on ``structure``.

    Args:
        workdir: a training run directory (read with :func:`mpnn_jax.training.load_run`).
        structure: an ``ase.Atoms`` or a structure file (first frame is used).
        steps: number of MD steps.
        dt: time step, fs.
        ensemble: ``"nve"`` (velocity Verlet) or ``"nvt"`` (Langevin BAOAB).
        temperature: K; initial Maxwell-Boltzmann velocities (when the structure has none) and
            the Langevin bath.
        policy: precision policy to evaluate the model with (name or object); None keeps the
            run's.
        backend: the convolution backend to run the model with (e.g. ``"cueq"``; default: the
            run's).
        log_every: steps between logged energies and trajectory frames; default
            ``clip(steps // 100, 1, 100)``.
        out: directory for ``trajectory.xyz``, ``energies.csv``, ``summary.json``; None writes
            nothing.
        skin: neighbour-list skin, Å.
        friction: Langevin friction, 1/fs.
        seed: seed of the initial velocities and of the Langevin noise.
        progress: show a tqdm progress bar.

    Returns:
        The summary dict (see :func:`summarize`), plus ``policy`` and ``backend``.
    """
    model, params, table, cutoff = load_trained(workdir, policy=policy, backend=backend)
    from mpnn_jax.potential import make_predictor

    atoms = read_structure(structure)
    species = validate_atoms(atoms, table)
    if not np.any(atoms.get_momenta()):
        atoms.set_momenta(maxwell_boltzmann(atoms, temperature, seed=seed))
    force_fn = make_force_fn(
        make_predictor(model), params, species=species, cell=atoms.cell[:], pbc=atoms.pbc
    )
    log_every = int(np.clip(steps // 100, 1, 100)) if log_every is None else int(log_every)
    out = Path(out) if out is not None else None
    bar = _progress_bar(steps) if progress else None
    last = [0]

    def advance(done: int) -> None:
        if bar is not None:
            bar.update(done - last[0])
            last[0] = done

    try:
        result = simulate(
            atoms,
            force_fn,
            steps=steps,
            dt=dt,
            cutoff=cutoff,
            skin=skin,
            ensemble=ensemble,
            temperature_K=temperature,
            friction=friction,
            seed=seed,
            log_every=log_every,
            trajectory=out / "trajectory.xyz" if out is not None else None,
            progress=advance,
            compiler_options=xla.options_for(model),
        )
    finally:
        if bar is not None:
            bar.close()
    summary = summarize(result, dt=dt, ensemble=ensemble)
    model_policy = getattr(model, "policy", None)
    summary["policy"] = getattr(model_policy, "name", None)
    name = getattr(model, "backend", None)
    summary["backend"] = None if name is None else resolve(name)  # "auto": the one that ran
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _write_energies(out / "energies.csv", result)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", desc="md")


def _write_energies(path: Path, result: MDResult) -> None:
    table = np.column_stack(
        [
            result.steps,
            result.times_fs,
            result.kinetic,
            result.potential,
            result.total,
            result.temperature,
        ]
    )
    np.savetxt(
        path,
        table,
        delimiter=",",
        header="step,time_fs,kinetic_eV,potential_eV,total_eV,temperature_K",
        comments="",
        fmt=["%d", "%.6f", "%.10f", "%.10f", "%.10f", "%.4f"],
    )
