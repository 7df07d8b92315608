"""Atom orders (mpnn_jax.data.order): permutations, locality, and forces that come back to the
input's order unchanged (float64)."""

import json

import jax
import numpy as np
import pytest
from repo_scripts import load_script

from mpnn_jax.benchmark import water_box
from mpnn_jax.data import SpeciesTable, atoms_to_graph, neighbour_list, pad_graph
from mpnn_jax.data.order import ATOM_ORDERS, morton_order, order_of, reorder
from mpnn_jax.data.xyz import atoms_to_configuration
from mpnn_jax.potential import make_predictor
from mpnn_jax.testing import random_params, tiny_model


@pytest.mark.parametrize("how", ATOM_ORDERS)
def test_every_order_is_a_permutation(how):
    atoms = water_box(200)
    order = order_of(atoms, how)
    assert sorted(order.tolist()) == list(range(len(atoms)))
    copy, same = reorder(atoms, how)
    np.testing.assert_array_equal(order, same)
    np.testing.assert_array_equal(copy.positions, atoms.positions[order])
    np.testing.assert_array_equal(copy.numbers, atoms.numbers[order])


def test_species_order_groups_elements():
    numbers = water_box(60)[order_of(water_box(60), "species")].numbers
    assert (np.diff(numbers) >= 0).all()


def _locality_script():
    """``experiments/perf/atom_order_locality.py`` as a module."""
    return load_script("experiments/perf/atom_order_locality.py")


def _distinct_senders_per_window(atoms, window=96):
    """Mean number of distinct neighbours of ``window`` consecutive receivers: the rows a block of
    kernel programs gathers together (the quantity the order is meant to shrink)."""
    s, r, _ = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.0)
    return _locality_script().wave_rows(s, r, len(atoms), window)


def test_morton_order_gathers_from_fewer_rows_than_shuffled_atoms():
    atoms = water_box(3000)
    shuffled, _ = reorder(atoms, "random")
    restored, _ = reorder(shuffled, "morton")
    worst, best = _distinct_senders_per_window(shuffled), _distinct_senders_per_window(restored)
    assert best < 0.25 * worst, (best, worst)  # measured 3000 atoms: ~0.1


def test_periodic_wrap_and_open_boxes():
    cell = np.eye(3) * 10.0
    # the same point seen through the periodic boundary sorts with its wrapped image
    pos = np.array([[0.1, 0.1, 0.1], [5.0, 5.0, 5.0], [-0.1 + 10.0, 0.1, 0.1], [10.1, 0.2, 0.1]])
    order = morton_order(pos, cell, True)
    assert order.tolist().index(1) == 3  # the middle atom after the three near the origin
    assert morton_order(pos).tolist() == morton_order(pos + 100.0).tolist()  # open: translation
    assert morton_order(pos[:1]).tolist() == [0]


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.zeros((3, 2)),), r"\[n_atoms, 3\]"),
        ((np.array([[0.0, np.nan, 0.0]]),), "NaN"),
        ((np.zeros((2, 3)), np.zeros((3, 3)), True), "singular"),
    ],
)
def test_bad_input_is_named(args, match):
    with pytest.raises(ValueError, match=match):
        morton_order(*args)
    with pytest.raises(ValueError, match="bits"):
        morton_order(np.zeros((2, 3)), bits=22)
    with pytest.raises(ValueError, match="unknown atom order"):
        order_of(water_box(30), "hilbert")


def test_forces_come_back_to_the_input_order(x64):
    """Energy invariant, forces permuted: ``f_input[order] = f`` recovers the input's forces."""
    atoms = water_box(81)
    table = SpeciesTable((1, 8))
    model = tiny_model("nequip", policy="fp64", n_layers=1, hidden_irreps="4x0e+2x1o", max_ell=1)
    predict = jax.jit(make_predictor(model))

    def graph_of(a):
        graph = atoms_to_graph(atoms_to_configuration(a, energy_key=None, forces_key=None),
                               cutoff=3.0, species_table=table)  # fmt: skip
        graph = pad_graph(
            graph, n_node=graph.n_node.sum() + 1, n_edge=graph.n_edge.sum(), n_graph=2
        )
        return graph

    graph = graph_of(atoms)
    params = random_params(model, graph)
    out = predict(params, graph)
    for how in ("morton", "random"):
        moved, order = reorder(atoms, how, seed=3)
        got = predict(params, graph_of(moved))
        forces = np.empty_like(np.asarray(got["forces"][: len(atoms)]))
        forces[order] = got["forces"][: len(atoms)]
        np.testing.assert_allclose(got["energy"][0], out["energy"][0], rtol=1e-12)
        np.testing.assert_allclose(forces, out["forces"][: len(atoms)], rtol=1e-10, atol=1e-12)
        assert np.abs(forces).max() > 1e-3  # forces are not trivially zero


def test_locality_script_counts_rows_per_wave(tmp_path):
    """``experiments/perf/atom_order_locality.py``: a wave of one receiver gathers exactly its
    neighbours; shuffled atoms gather from more rows than the Morton order."""
    module = _locality_script()
    s, r = np.array([1, 2, 2, 0, 0]), np.array([0, 0, 0, 1, 2])  # node 0 has senders 1 and 2
    assert module.wave_rows(s, r, 3, wave=1) == np.mean([2, 1, 1])
    assert module.wave_rows(s, r, 3, wave=3) == 3
    out = tmp_path / "loc.json"
    assert module.main(["--atoms", "600", "--wave", "32", "--out", str(out)]) == 0
    rows = {row["atom_order"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["morton"]["rows_per_wave"] < rows["random"]["rows_per_wave"]
    assert rows["random"]["mb_per_wave_16bit"] * 2 == rows["random"]["mb_per_wave_fp32"]
