"""An ASE calculator for mpnn_jax models.

Contract:
    * ``Calculator(model, params, species_table, cutoff, policy=None)``; ``Calculator.from_run``
      loads a trained run (:func:`mpnn_jax.training.load_run`).
    * Properties: ``energy`` and ``free_energy`` (eV), ``forces`` (eV/Å), ``energies`` (per atom,
      eV) and, for periodic cells, ``stress`` (eV/Å^3, ASE's Voigt order xx yy zz yz xz xy and sign
      convention stress = (1/V) dE/d(strain)).
    * Each call rebuilds the neighbour list (vesin, through :mod:`mpnn_jax.data`) and pads the
      graph to node and edge buckets that grow geometrically (x1.25, multiples of 8 nodes and 64
      edges), so a long simulation compiles a logarithmic number of shapes
      (``Calculator.n_compilations``).
    * Float dtype of the graph: float64 when ``jax_enable_x64`` is on, else float32; the model
      casts to its stage dtypes. A policy that uses float64 needs x64.
    * Errors: an element the model does not know (named), two atoms closer than
      ``min_distance`` (0.1 Å, the pair named), NaN or infinite positions.

Example:
    >>> calc = Calculator.from_run("runs/ethanol")          # doctest: +SKIP
    >>> atoms.calc = calc; atoms.get_potential_energy()     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import ase
import ase.data
import jax
import numpy as np
from ase.calculators.calculator import Calculator as ASECalculator
from ase.calculators.calculator import all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mpnn_jax import xla
from mpnn_jax.data.graphs import atoms_to_graph, pad_graph
from mpnn_jax.data.species import SpeciesTable
from mpnn_jax.data.xyz import Configuration
from mpnn_jax.md.forces import node_budget
from mpnn_jax.md.neighbours import edge_capacity
from mpnn_jax.md.simulate import default_dtype
from mpnn_jax.precision import Policy, get_policy


def _resolve_policy(policy: Policy | str | None) -> Policy | None:
    if policy is None or isinstance(policy, Policy):
        return policy
    return get_policy(policy)


def validate_atoms(atoms: ase.Atoms, species_table: SpeciesTable) -> np.ndarray:
    """Checks elements and positions; returns the species indices int32 [n_atoms].

    Raises:
        ValueError: an element not in ``species_table`` (named), NaN or infinite positions (the
            atoms named). Close atoms are checked on the neighbour list (:func:`check_distances`).
    """
    numbers = np.asarray(atoms.numbers)
    missing = sorted({int(z) for z in numbers if int(z) not in species_table})
    if missing:
        names = ", ".join(ase.data.chemical_symbols[z] for z in missing)
        raise ValueError(
            f"element(s) {names} not in the model, which knows {list(species_table.symbols)}"
        )
    positions = np.asarray(atoms.positions)
    bad = np.flatnonzero(~np.all(np.isfinite(positions), axis=1))
    if bad.size:
        raise ValueError(f"positions of atom(s) {bad[:10].tolist()} are NaN or infinite")
    return species_table.index(numbers)


def check_distances(graph, *, min_distance: float = 0.1) -> None:
    """Raises ValueError naming the closest pair if two atoms are closer than ``min_distance`` Å.

    Args:
        graph: an unpadded numpy GraphsTuple of one structure.
    """
    if graph.senders.shape[0] == 0:
        return
    pos = np.asarray(graph.nodes["positions"], np.float64)
    cell = np.asarray(graph.globals["cell"][0], np.float64)
    s, r = graph.senders, graph.receivers
    vectors = pos[r] - pos[s] + np.asarray(graph.edges["shifts"], np.float64) @ cell
    lengths = np.linalg.norm(vectors, axis=-1)  # [n_edges]
    k = int(np.argmin(lengths))
    if lengths[k] < min_distance:
        image = "" if not np.any(graph.edges["shifts"][k]) else " (periodic image)"
        raise ValueError(
            f"atoms {int(s[k])} and {int(r[k])}{image} are {lengths[k]:.3g} Å apart, closer "
            f"than {min_distance} Å: atoms on top of each other"
        )


def load_trained(
    workdir: str | Path, *, policy: Policy | str | None = None, backend: str | None = None
) -> tuple[object, object, SpeciesTable, float]:
    """``(model, params, species_table, cutoff)`` of a trained run, via
    :func:`mpnn_jax.training.load_run` (the model cloned with ``policy`` if given, built with
    the convolution ``backend`` if given, else the run's)."""
    from mpnn_jax.training import load_run

    model, params, metadata = load_run(workdir, policy=_resolve_policy(policy), backend=backend)
    table = metadata.get("species_table", metadata.get("species"))
    if not isinstance(table, SpeciesTable):
        table = SpeciesTable.from_list(table)
    return model, params, table, float(metadata["cutoff"])


class Calculator(ASECalculator):
    """ASE calculator running an mpnn_jax model (see the module docstring).

    Args:
        model: a Flax model following the model interface of :mod:`mpnn_jax.models`.
        params: its parameters.
        species_table: the `SpeciesTable` the model was trained with.
        cutoff: model cutoff in Å.
        policy: precision policy (object or name) to evaluate with; None keeps the model's.
        min_distance: pairs closer than this (Å) raise an error.
        predict: ``predict(params, graph) -> dict``; default
            ``mpnn_jax.potential.make_predictor(model)``.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(
        self,
        model,
        params,
        species_table: SpeciesTable,
        cutoff: float,
        policy: Policy | str | None = None,
        *,
        min_distance: float = 0.1,
        predict: Callable | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        policy = _resolve_policy(policy)
        if policy is not None:
            model = model.clone(policy=policy)
        policy = policy if policy is not None else getattr(model, "policy", None)
        if policy is not None and policy.uses_x64 and default_dtype() != np.float64:
            raise ValueError(
                f"policy {policy.name!r} uses float64: enable jax_enable_x64 "
                "(jax.config.update('jax_enable_x64', True)) before building the calculator"
            )
        if predict is None:
            from mpnn_jax.potential import make_predictor

            predict = make_predictor(model)
        self.model = model
        self.params = params
        self.policy = policy
        self.species_table = species_table
        self.cutoff = float(cutoff)
        self.min_distance = float(min_distance)
        self.n_compilations = 0
        self.shapes: set[tuple[int, int]] = set()

        def traced(params, graph):
            self.n_compilations += 1  # runs once per trace
            return predict(params, graph)

        self._predict = xla.jit(traced, model=model)

    @classmethod
    def from_run(
        cls,
        workdir: str | Path,
        policy: Policy | str | None = None,
        backend: str | None = None,
        **kwargs,
    ) -> Calculator:
        """Loads a trained run (:func:`load_trained`) and evaluates it under ``policy`` with the
        convolution ``backend`` (default: the run's)."""
        model, params, table, cutoff = load_trained(workdir, policy=policy, backend=backend)
        return cls(model, params, table, cutoff, policy=None, **kwargs)

    def graph(self, atoms: ase.Atoms):
        """The padded numpy graph of ``atoms`` (validated) and the number of real atoms."""
        validate_atoms(atoms, self.species_table)
        pbc = np.asarray(atoms.pbc, bool)
        config = Configuration(
            numbers=np.asarray(atoms.numbers),
            positions=np.asarray(atoms.positions, np.float64),
            cell=np.asarray(atoms.cell[:], np.float64) if pbc.any() else np.zeros((3, 3)),
            pbc=pbc,
        )
        graph = atoms_to_graph(
            config, cutoff=self.cutoff, species_table=self.species_table, dtype=default_dtype()
        )
        check_distances(graph, min_distance=self.min_distance)
        n_atoms, n_edges = len(atoms), int(graph.n_edge[0])
        n_node = node_budget(n_atoms)
        n_edge = edge_capacity(n_edges)
        self.shapes.add((n_node, n_edge))
        return pad_graph(graph, n_node=n_node, n_edge=n_edge, n_graph=2), n_atoms

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        graph, n = self.graph(self.atoms)
        out = jax.device_get(self._predict(self.params, graph))
        energy = float(out["energy"][0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": np.asarray(out["forces"][:n], np.float64),
            "energies": np.asarray(out["node_energies"][:n], np.float64),
        }
        if np.any(self.atoms.pbc):
            stress = np.asarray(out["stress"][0], np.float64)
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
