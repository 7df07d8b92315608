"""Neighbour lists against a brute-force float64 reference over all periodic images."""

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mpnn_jax.data import neighbour_list, read_xyz

from .conftest import shared_data_dir

TIE = 1e-6  # pairs this close to the cutoff are ambiguous (< vs <=) and left out of comparisons


def brute_force(positions, cell, pbc, cutoff):
    """Sorted list of (sender, receiver, shift) with |x_r - x_s + S @ cell| < cutoff, and ties."""
    pbc = np.broadcast_to(np.asarray(pbc, bool), (3,))
    ranges = []
    if pbc.any():
        frac = positions @ np.linalg.inv(cell)
        spread = frac.max(0) - frac.min(0) if len(positions) else np.zeros(3)
        spacing = 1.0 / np.linalg.norm(np.linalg.inv(cell).T, axis=1)  # distance between planes
    for k in range(3):
        if pbc[k]:
            n = int(np.ceil(cutoff / spacing[k] + spread[k])) + 1
            ranges.append(range(-n, n + 1))
        else:
            ranges.append(range(0, 1))
    shifts = np.array(list(itertools.product(*ranges)), dtype=np.float64)  # [n_shifts, 3]
    offsets = shifts @ cell if pbc.any() else np.zeros_like(shifts)
    pairs, ties = set(), set()
    n = len(positions)
    for s in range(n):
        for r in range(n):
            d = np.linalg.norm(positions[r] - positions[s] + offsets, axis=1)
            for idx in np.nonzero(d < cutoff + TIE)[0]:
                key = (s, r, tuple(int(x) for x in shifts[idx]))
                if s == r and not any(key[2]):
                    continue
                (ties if abs(d[idx] - cutoff) < TIE else pairs).add(key)
    return pairs, ties


def as_set(senders, receivers, shifts):
    return {
        (int(s), int(r), tuple(int(x) for x in S)) for s, r, S in zip(senders, receivers, shifts)
    }


def check_against_brute_force(positions, cell, pbc, cutoff):
    senders, receivers, shifts = neighbour_list(positions, cell, pbc, cutoff)
    assert senders.dtype == np.int32 and receivers.dtype == np.int32 and shifts.dtype == np.int32
    got = as_set(senders, receivers, shifts)
    assert len(got) == len(senders), "duplicate edges"
    expected, ties = brute_force(positions, cell, pbc, cutoff)
    assert got - ties == expected
    # Convention: vector = positions[receivers] - positions[senders] + shifts @ cell.
    if len(senders):
        used_cell = cell if np.any(pbc) else np.zeros((3, 3))
        vectors = positions[receivers] - positions[senders] + shifts @ used_cell
        assert np.all(np.linalg.norm(vectors, axis=1) < cutoff + TIE)
    return got


@st.composite
def periodic_systems(draw):
    lengths = draw(st.lists(st.floats(1.0, 6.0), min_size=3, max_size=3))
    tilt = draw(st.lists(st.floats(-0.6, 0.6), min_size=3, max_size=3))
    cell = np.diag(lengths)
    cell[1, 0] = tilt[0] * lengths[0]
    cell[2, 0] = tilt[1] * lengths[0]
    cell[2, 1] = tilt[2] * lengths[1]
    rotation = draw(st.sampled_from([np.eye(3), np.array([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]])]))
    cell = cell @ rotation
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(cell).T, axis=1)
    assume(spacing.min() > 0.7)
    n_atoms = draw(st.integers(1, 5))
    frac = np.array(
        draw(st.lists(st.floats(-0.3, 1.3), min_size=3 * n_atoms, max_size=3 * n_atoms))
    ).reshape(n_atoms, 3)
    pbc = draw(st.sampled_from([True, (True, True, False), (True, False, True), (False,) * 3]))
    cutoff = draw(st.floats(0.5, 3.0)) * float(spacing.min()) * draw(st.sampled_from([0.5, 1, 2]))
    return frac @ cell, cell, pbc, cutoff


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(periodic_systems())
def test_random_triclinic_cells_match_brute_force(system):
    positions, cell, pbc, cutoff = system
    check_against_brute_force(positions, cell, pbc, cutoff)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 8),
    st.floats(0.3, 6.0),
    st.integers(0, 2**31 - 1),
)
def test_molecules_match_brute_force(n_atoms, cutoff, seed):
    positions = np.random.default_rng(seed).normal(scale=2.0, size=(n_atoms, 3))
    dummy_cell = 50.0 * np.eye(3)  # ignored: pbc is False
    got = check_against_brute_force(positions, dummy_cell, False, cutoff)
    assert all(shift == (0, 0, 0) for _, _, shift in got)


def test_cutoff_larger_than_cell_includes_own_images():
    # One atom in a 1 Å cube, cutoff 1.5 Å: 6 images at 1 Å and 12 at sqrt(2) Å, none at sqrt(3).
    senders, receivers, shifts = neighbour_list(np.zeros((1, 3)), np.eye(3), True, 1.5)
    assert len(senders) == 18
    assert np.all(senders == 0) and np.all(receivers == 0)
    assert not np.any(np.all(shifts == 0, axis=1))
    assert sorted(np.abs(shifts).sum(1).tolist()) == [1] * 6 + [2] * 12


def test_several_images_of_one_neighbour():
    # Two atoms in a 2 Å cube, 1 Å apart along x, cutoff 2.5 Å: the partner is seen at -1 and +1 Å.
    positions = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    senders, receivers, shifts = neighbour_list(positions, 2 * np.eye(3), True, 1.1)
    pairs = as_set(senders, receivers, shifts)
    assert pairs == {(0, 1, (0, 0, 0)), (0, 1, (-1, 0, 0)), (1, 0, (0, 0, 0)), (1, 0, (1, 0, 0))}


def test_sign_convention_single_pair():
    # Atom 1 just across the boundary: the short vector from 0 to 1 needs shift -1 along x.
    cell = 10 * np.eye(3)
    positions = np.array([[0.5, 0.0, 0.0], [9.5, 0.0, 0.0]])
    senders, receivers, shifts = neighbour_list(positions, cell, True, 2.0)
    for s, r, S in zip(senders, receivers, shifts):
        vector = positions[r] - positions[s] + S @ cell
        np.testing.assert_allclose(np.linalg.norm(vector), 1.0)
    assert as_set(senders, receivers, shifts) == {(0, 1, (-1, 0, 0)), (1, 0, (1, 0, 0))}


@pytest.mark.parametrize("cutoff", [0.0, -1.0, float("nan")])
def test_nonpositive_cutoff_is_an_error(cutoff):
    with pytest.raises(ValueError, match="cutoff must be a positive"):
        neighbour_list(np.zeros((2, 3)), np.eye(3), True, cutoff)


def test_singular_cell_with_pbc_is_an_error():
    cell = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="singular"):
        neighbour_list(np.zeros((2, 3)), cell, True, 1.0)


@pytest.mark.skipif(shared_data_dir() is None, reason="../shared/data not present")
def test_small_real_cells_match_brute_force():
    root = shared_data_dir()
    checked = 0
    for element in ("Si", "Mo", "Li"):
        path = root / "zuo2020" / f"{element}_test.xyz"
        if not path.exists():
            continue
        for config in read_xyz(path, forces_key="force"):
            if config.n_atoms <= 8:
                check_against_brute_force(config.positions, config.cell, config.pbc, 5.0)
                checked += 1
    if checked == 0:
        pytest.skip("no small cells in the Zuo test sets")
