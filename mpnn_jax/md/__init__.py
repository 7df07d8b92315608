"""Molecular dynamics with mpnn_jax models: an ASE calculator and a jit-compiled on-device loop.

* :class:`Calculator`: ASE calculator (energy, forces, stress, per-atom energies).
* :func:`nve`, :func:`langevin`: integrator factories ``-> (init_fn, step_fn)`` over `MDState`.
* :func:`simulate`: the on-device driver (blocks of ``lax.scan``, host neighbour rebuilds with a
  skin, trajectory and energy logging).
* :func:`run_md`: MD of a trained run with a summary (used by ``mpnn-jax md``).
* :func:`energy_drift`: NVE drift (meV/atom/ps) and fluctuation (meV/atom).
"""

from mpnn_jax.md.analysis import energy_drift, throughput
from mpnn_jax.md.calculator import Calculator, load_trained
from mpnn_jax.md.forces import make_force_fn, padded_graph
from mpnn_jax.md.integrators import (
    MDState,
    energy_to_force_fn,
    kinetic_energy,
    langevin,
    nve,
    temperature,
)
from mpnn_jax.md.neighbours import Neighbours, bucket_size, build_neighbours, needs_rebuild, wrap
from mpnn_jax.md.run import run_md
from mpnn_jax.md.simulate import MDResult, simulate

__all__ = [
    "Calculator",
    "MDResult",
    "MDState",
    "Neighbours",
    "bucket_size",
    "build_neighbours",
    "energy_drift",
    "energy_to_force_fn",
    "kinetic_energy",
    "langevin",
    "load_trained",
    "make_force_fn",
    "needs_rebuild",
    "nve",
    "padded_graph",
    "run_md",
    "simulate",
    "temperature",
    "throughput",
    "wrap",
]
