"""`SpeciesTable`: the map from atomic numbers to contiguous species indices 0..n_species-1.

The table is frozen and hashable; atomic numbers are kept sorted, so the index of an element does
not depend on the order in which it was first seen. It serialises to a JSON-able list of ints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
from ase.data import atomic_numbers, chemical_symbols


def _symbol(z: int) -> str:
    return chemical_symbols[z] if 0 <= z < len(chemical_symbols) else f"Z={z}"


@dataclasses.dataclass(frozen=True)
class SpeciesTable:
    """Sorted tuple of atomic numbers; position in the tuple is the species index.

    Example:
        >>> table = SpeciesTable.from_numbers([8, 1, 6, 1])
        >>> table.numbers, table.symbols
        ((1, 6, 8), ('H', 'C', 'O'))
        >>> table.index([6, 1, 8]).tolist()
        [1, 0, 2]
    """

    numbers: tuple[int, ...]

    def __post_init__(self):
        numbers = tuple(sorted({int(z) for z in self.numbers}))
        if not numbers:
            raise ValueError("SpeciesTable needs at least one element")
        for z in numbers:
            if not 0 < z < len(chemical_symbols):
                raise ValueError(f"SpeciesTable: invalid atomic number {z}")
        object.__setattr__(self, "numbers", numbers)

    @classmethod
    def from_numbers(cls, numbers: Iterable[int]) -> SpeciesTable:
        """Builds a table from any iterable of atomic numbers (duplicates allowed)."""
        return cls(tuple(int(z) for z in np.asarray(list(numbers)).reshape(-1)))

    @classmethod
    def from_configs(cls, configs: Iterable) -> SpeciesTable:
        """Builds a table holding every element of objects with a ``numbers`` attribute."""
        zs: set[int] = set()
        for config in configs:
            zs.update(int(z) for z in np.unique(config.numbers))
        return cls(tuple(zs))

    @classmethod
    def from_list(cls, items: Iterable[int | str]) -> SpeciesTable:
        """Inverse of `to_list`; also accepts element symbols (``["H", "C", "O"]``)."""
        zs = []
        for item in items:
            if isinstance(item, str):
                if item not in atomic_numbers:
                    raise ValueError(f"SpeciesTable: unknown element symbol {item!r}")
                zs.append(atomic_numbers[item])
            else:
                zs.append(int(item))
        return cls(tuple(zs))

    def to_list(self) -> list[int]:
        """JSON-able list of atomic numbers, sorted."""
        return list(self.numbers)

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(_symbol(z) for z in self.numbers)

    def __len__(self) -> int:
        return len(self.numbers)

    def __contains__(self, z) -> bool:
        return int(z) in self.numbers

    def index(self, numbers) -> np.ndarray:
        """Species indices of atomic numbers.

        Args:
            numbers: int array-like [n_atoms] of atomic numbers.

        Returns:
            int32 [n_atoms] indices into the table.

        Raises:
            ValueError: naming every element symbol that is not in the table.
        """
        numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
        table = np.asarray(self.numbers, dtype=np.int64)
        idx = np.searchsorted(table, numbers)
        idx = np.clip(idx, 0, len(table) - 1)
        bad = table[idx] != numbers
        if np.any(bad):
            missing = sorted({int(z) for z in numbers[bad]})
            raise ValueError(
                f"element(s) {', '.join(_symbol(z) for z in missing)} not in the species table "
                f"{list(self.symbols)}"
            )
        return idx.astype(np.int32)
