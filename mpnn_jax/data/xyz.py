"""Extended-XYZ reader producing validated, immutable `Configuration` records.

Contract:
    * Units are those of the file: Å for positions and cells, eV for energies, eV/Å for forces,
      eV/Å^3 for stress (ASE sign convention, stress = (1/V) dE/d(strain)).
    * Labels are looked up in ``atoms.info`` / ``atoms.arrays`` and in the results of the
      ``SinglePointCalculator`` that ASE's extxyz reader attaches (it moves ``energy``, ``forces``,
      ``stress`` there).
    * Forces stored as ``force`` (Zuo et al. 2020) are accepted when ``forces`` is absent, and
      vice versa.
    * Molecules (``pbc="F F F"``) get a zero cell: the dummy lattice of such files is ignored.
    * Invalid input raises ``ValueError`` naming the file and the configuration index.

Nothing here is jitted: it is plain numpy (float64).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import ase
import ase.io
import numpy as np

_FORCE_ALIASES = {"forces": "force", "force": "forces"}


@dataclasses.dataclass(frozen=True, eq=False)
class Configuration:
    """One labelled atomic configuration (numpy, float64).

    Attributes:
        numbers: int64 [n_atoms] atomic numbers.
        positions: float64 [n_atoms, 3] Å.
        cell: float64 [3, 3] Å, rows are lattice vectors; zeros when no direction is periodic.
        pbc: bool [3] periodicity per lattice direction.
        energy: total energy in eV, or None when the file has no energy label.
        forces: float64 [n_atoms, 3] eV/Å, or None.
        stress: float64 [3, 3] eV/Å^3 (ASE sign convention), or None.
        weight: per-configuration weight in the loss (1.0 by default).
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    weight: float = 1.0

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def periodic(self) -> bool:
        """True if any lattice direction is periodic."""
        return bool(np.any(self.pbc))


def _available_keys(atoms: ase.Atoms) -> list[str]:
    keys = set(atoms.info) | (set(atoms.arrays) - {"numbers", "positions"})
    if atoms.calc is not None:
        keys |= set(getattr(atoms.calc, "results", {}))
    return sorted(keys)


def _lookup(atoms: ase.Atoms, key: str, *, per_atom: bool):
    """Finds a label in calc results, arrays (per-atom) or info (per-config); None if absent."""
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    if key in results:
        return results[key]
    if per_atom and key in atoms.arrays:
        return atoms.arrays[key]
    if not per_atom and key in atoms.info:
        return atoms.info[key]
    return None


def _stress_matrix(value, where: str) -> np.ndarray:
    """Converts a stress given as 3x3, 9 values or 6 Voigt values (xx yy zz yz xz xy) to 3x3."""
    s = np.asarray(value, dtype=np.float64).reshape(-1)
    if s.size == 9:
        return s.reshape(3, 3)
    if s.size == 6:
        xx, yy, zz, yz, xz, xy = s
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise ValueError(f"{where}: stress must have 6 (Voigt) or 9 components, got {s.size}")


def atoms_to_configuration(
    atoms: ase.Atoms,
    *,
    energy_key: str | None = "energy",
    forces_key: str | None = "forces",
    stress_key: str | None = None,
    weight_key: str | None = None,
    where: str = "atoms",
) -> Configuration:
    """Converts and validates one ``ase.Atoms`` (see module docstring for the rules).

    Args:
        atoms: the structure, possibly with a SinglePointCalculator holding labels.
        energy_key: info/calc key of the total energy (eV); None to not read energies.
        forces_key: arrays/calc key of the forces (eV/Å); None to not read forces.
        stress_key: info/calc key of the stress (eV/Å^3); None to not read stress.
        weight_key: info key of a per-configuration weight; None for weight 1.
        where: description used in error messages, e.g. ``"train.xyz, config 3"``.

    Returns:
        A validated `Configuration`.
    """
    numbers = np.asarray(atoms.numbers, dtype=np.int64)
    positions = np.array(atoms.positions, dtype=np.float64)
    pbc = np.array(atoms.pbc, dtype=bool).reshape(3)
    n = numbers.shape[0]
    if n == 0:
        raise ValueError(f"{where}: configuration has no atoms")
    if not np.all(np.isfinite(positions)):
        raise ValueError(f"{where}: positions contain NaN or inf")
    if pbc.any():
        cell = np.array(atoms.cell[:], dtype=np.float64)
        if not np.all(np.isfinite(cell)):
            raise ValueError(f"{where}: cell contains NaN or inf")
        volume = abs(np.linalg.det(cell))
        if volume < 1e-9 * max(1.0, np.abs(cell).max() ** 3):
            raise ValueError(
                f"{where}: cell is singular (volume {volume:.3g} Å^3) but pbc={pbc.tolist()}; "
                "periodic structures need three independent lattice vectors"
            )
    else:
        cell = np.zeros((3, 3))  # molecules: ignore the dummy lattice

    energy = None
    if energy_key is not None:
        value = _lookup(atoms, energy_key, per_atom=False)
        if value is None:
            raise ValueError(
                f"{where}: energy key {energy_key!r} not found; "
                f"available keys: {_available_keys(atoms)}"
            )
        energy = float(np.asarray(value, dtype=np.float64).reshape(()))

    forces = None
    if forces_key is not None:
        value = _lookup(atoms, forces_key, per_atom=True)
        if value is None and forces_key in _FORCE_ALIASES:
            value = _lookup(atoms, _FORCE_ALIASES[forces_key], per_atom=True)
        if value is None:
            raise ValueError(
                f"{where}: forces key {forces_key!r} not found; "
                f"available keys: {_available_keys(atoms)}"
            )
        forces = np.array(value, dtype=np.float64)
        if forces.shape != (n, 3):
            raise ValueError(f"{where}: forces have shape {forces.shape}, expected {(n, 3)}")

    stress = None
    if stress_key is not None:
        value = _lookup(atoms, stress_key, per_atom=False)
        if value is not None:  # stress is optional per configuration
            stress = _stress_matrix(value, where)

    weight = 1.0
    if weight_key is not None and weight_key in atoms.info:
        weight = float(atoms.info[weight_key])

    return Configuration(
        numbers=numbers,
        positions=positions,
        cell=cell,
        pbc=pbc,
        energy=energy,
        forces=forces,
        stress=stress,
        weight=weight,
    )


def _is_blank(path: Path) -> bool:
    """True if the file holds nothing but whitespace (stops at the first other byte)."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True


def read_xyz(
    path: str | os.PathLike,
    *,
    energy_key: str | None = "energy",
    forces_key: str | None = "forces",
    stress_key: str | None = None,
    weight_key: str | None = None,
    index: str | int = ":",
) -> list[Configuration]:
    """Reads an extended-XYZ file into a list of validated `Configuration` records.

    Args:
        path: the .xyz file.
        energy_key: name of the energy label (eV); None to read no energies.
        forces_key: name of the forces label (eV/Å); ``forces`` and ``force`` are interchangeable;
            None to read no forces.
        stress_key: name of the stress label (eV/Å^3); configurations without it get None.
        weight_key: name of a per-configuration weight in the comment line.
        index: ASE index string (``":"``, ``"0:100"``, ``"-1"``) or an int.

    Returns:
        A list of `Configuration` (one element when ``index`` is an int).

    Raises:
        ValueError: empty file, missing label, non-finite positions, singular periodic cell;
            the message names the file and the configuration's position in the selection.

    Example:
        >>> from mpnn_jax.data import bundled_path, read_xyz
        >>> configs = read_xyz(bundled_path("rmd17_ethanol", "test"), index="0:2")
        >>> len(configs), configs[0].positions.shape
        (2, (9, 3))
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if _is_blank(path):
        raise ValueError(f"{path}: file is empty")
    try:
        frames = ase.io.read(path, index=index, format="extxyz")
    except (StopIteration, IndexError) as err:
        raise ValueError(f"{path}: no configuration at index {index!r}") from err
    if isinstance(frames, ase.Atoms):
        frames = [frames]
    if len(frames) == 0:
        raise ValueError(f"{path}: file contains no configurations (index {index!r})")
    return [
        atoms_to_configuration(
            atoms,
            energy_key=energy_key,
            forces_key=forces_key,
            stress_key=stress_key,
            weight_key=weight_key,
            where=f"{path}, config {i}",
        )
        for i, atoms in enumerate(frames)
    ]
