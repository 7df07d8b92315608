"""SpeciesTable: sorted indices, clear errors, JSON round trip."""

import json

import numpy as np
import pytest

from mpnn_jax.data import SpeciesTable


def test_sorted_and_deduplicated():
    table = SpeciesTable.from_numbers([8, 1, 6, 1, 8])
    assert table.numbers == (1, 6, 8) and len(table) == 3
    assert table.symbols == ("H", "C", "O")
    assert table.index([8, 8, 1, 6]).tolist() == [2, 2, 0, 1]
    assert table.index(np.array([6])).dtype == np.int32
    assert table == SpeciesTable((6, 8, 1)) and hash(table) == hash(SpeciesTable((8, 6, 1)))


def test_unknown_element_names_the_symbol():
    table = SpeciesTable((1, 6, 8))
    with pytest.raises(ValueError, match=r"element\(s\) Cu, Au not in the species table"):
        table.index([1, 29, 79, 6])
    with pytest.raises(ValueError, match="N not in"):
        table.index([7])


def test_json_round_trip():
    table = SpeciesTable((29, 1))
    assert SpeciesTable.from_list(json.loads(json.dumps(table.to_list()))) == table
    assert SpeciesTable.from_list(["Cu", "H"]) == table
    with pytest.raises(ValueError, match="unknown element symbol 'Xx'"):
        SpeciesTable.from_list(["Xx"])
    with pytest.raises(ValueError, match="at least one element"):
        SpeciesTable(())
