"""Extended-XYZ reading: real files, label lookup rules and clear errors on bad input."""

import re

import numpy as np
import pytest

from mpnn_jax.data import bundled_path, read_xyz

from .conftest import shared_data_dir

MOLECULE = (
    "3\n"
    'Lattice="50.0 0.0 0.0 0.0 50.0 0.0 0.0 0.0 50.0" '
    'Properties=species:S:1:pos:R:3:forces:R:3 energy=-10.5 pbc="F F F"\n'
    """O 0.0 0.0 0.0 0.1 0.2 0.3
H 0.96 0.0 0.0 -0.1 0.0 0.0
H -0.24 0.93 0.0 0.0 -0.2 -0.3
"""
)

PERIODIC_FORCE = (
    "2\n"
    'pbc=[T, T, T] energy=-7.25 Lattice="3.0 0.0 0.0 0.0 3.0 0.0 0.0 0.0 3.0" '
    "Properties=species:S:1:pos:R:3:force:R:3\n"
    """Cu 0.0 0.0 0.0 0.5 0.0 0.0
Cu 1.5 1.5 1.5 -0.5 0.0 0.0
"""
)

STRESS = (
    "1\n"
    'Lattice="2.0 0.0 0.0 0.0 2.0 0.0 0.0 0.0 2.0" Properties=species:S:1:pos:R:3:forces:R:3 '
    'energy=-1.0 stress="1 6 5 6 2 4 5 4 3" voigt="1 2 3 4 5 6" w=0.5 pbc="T T T"\n'
    """Cu 0.0 0.0 0.0 0.0 0.0 0.0
"""
)


def test_molecule_ignores_dummy_lattice(write_xyz):
    (config,) = read_xyz(write_xyz(MOLECULE))
    assert config.numbers.tolist() == [8, 1, 1]
    assert config.positions.dtype == np.float64 and config.positions.shape == (3, 3)
    assert not config.periodic and not np.any(config.cell)
    assert config.energy == -10.5
    np.testing.assert_array_equal(config.forces[0], [0.1, 0.2, 0.3])
    assert config.stress is None and config.weight == 1.0


@pytest.mark.parametrize("forces_key", ["forces", "force"])
def test_force_and_forces_are_interchangeable(write_xyz, forces_key):
    (config,) = read_xyz(write_xyz(PERIODIC_FORCE), forces_key=forces_key)
    assert config.periodic and config.energy == -7.25
    np.testing.assert_array_equal(config.cell, 3 * np.eye(3))
    np.testing.assert_array_equal(config.forces[:, 0], [0.5, -0.5])
    (config,) = read_xyz(write_xyz(MOLECULE), forces_key=forces_key)
    assert config.forces.shape == (3, 3)


def test_stress_in_voigt_order_and_weight(write_xyz):
    expected = [[1, 6, 5], [6, 2, 4], [5, 4, 3]]
    (config,) = read_xyz(write_xyz(STRESS), stress_key="stress", weight_key="w")
    np.testing.assert_array_equal(config.stress, expected)  # via ASE's calculator
    assert config.weight == 0.5
    # Six components are Voigt order (xx, yy, zz, yz, xz, xy).
    (config,) = read_xyz(write_xyz(STRESS), stress_key="voigt")
    np.testing.assert_array_equal(config.stress, expected)
    assert config.weight == 1.0


def test_no_labels_when_keys_are_none(write_xyz):
    (config,) = read_xyz(write_xyz(MOLECULE), energy_key=None, forces_key=None)
    assert config.energy is None and config.forces is None


def test_index_selection():
    assert len(read_xyz(bundled_path("rmd17_ethanol", "train"), index="10:15")) == 5
    assert len(read_xyz(bundled_path("rmd17_ethanol", "train"), index=3)) == 1


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nonfinite_positions(write_xyz, value):
    text = MOLECULE.replace("H 0.96 0.0 0.0", f"H {value} 0.0 0.0")
    path = write_xyz(text + text)
    with pytest.raises(ValueError, match=re.escape(f"{path}, config 0: positions contain NaN")):
        read_xyz(path)


def test_missing_energy_key_lists_available_keys(write_xyz):
    path = write_xyz(MOLECULE)
    with pytest.raises(ValueError, match=r"energy key 'REF_energy' not found.*'energy'.*'forces'"):
        read_xyz(path, energy_key="REF_energy")


def test_missing_forces_key(write_xyz):
    path = write_xyz(MOLECULE.replace(":forces:R:3", "").replace(" 0.1 0.2 0.3", ""))
    text = path.read_text().replace(" -0.1 0.0 0.0", "").replace(" 0.0 -0.2 -0.3", "")
    path.write_text(text)
    with pytest.raises(ValueError, match=r"config 0: forces key 'forces' not found.*'energy'"):
        read_xyz(path)
    with pytest.raises(ValueError, match="forces key 'dft_forces' not found"):
        read_xyz(path, forces_key="dft_forces")


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file(write_xyz, text):
    path = write_xyz(text)
    with pytest.raises(ValueError, match=re.escape(f"{path}: file is empty")):
        read_xyz(path)


def test_singular_cell_with_pbc(write_xyz):
    text = PERIODIC_FORCE.replace(
        'Lattice="3.0 0.0 0.0 0.0 3.0 0.0 0.0 0.0 3.0"',
        'Lattice="3.0 0.0 0.0 0.0 3.0 0.0 0.0 0.0 0.0"',
    )
    path = write_xyz(PERIODIC_FORCE + text)
    with pytest.raises(ValueError, match=re.escape(f"{path}, config 1: cell is singular")):
        read_xyz(path, forces_key="force")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_xyz(tmp_path / "nope.xyz")


def _count_configs(path):
    """Configurations = lines that hold a single integer (the atom-count header lines)."""
    with open(path) as f:
        return sum(1 for line in f if re.fullmatch(r"\s*\d+\s*", line))


def _shared_files():
    root = shared_data_dir()
    return sorted(root.glob("*/*.xyz")) if root is not None else []


@pytest.mark.skipif(shared_data_dir() is None, reason="../shared/data not present")
@pytest.mark.parametrize("path", _shared_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shared_file_reads(path):
    isolated = "isolated" in path.name
    configs = read_xyz(path, forces_key=None if isolated else "forces")
    assert len(configs) == _count_configs(path)
    assert all(np.isfinite(c.energy) for c in configs)
    if "zuo2020" in str(path):
        assert all(c.periodic and abs(np.linalg.det(c.cell)) > 1.0 for c in configs)
    else:
        assert not any(c.periodic or np.any(c.cell) for c in configs)


@pytest.mark.skipif(shared_data_dir() is None, reason="../shared/data not present")
def test_known_sizes_from_the_readme():
    root = shared_data_dir()
    known = {
        "rmd17_ethanol/train.xyz": 1000,
        "rmd17_ethanol/test_MD.xyz": 1000,
        "rmd17_aspirin/train.xyz": 1200,
        "rmd17_aspirin/test.xyz": 1800,
        "acac/train_300K.xyz": 500,
        "acac/test_MD_600K.xyz": 650,
    }
    for name, n in known.items():
        if (root / name).exists():
            assert _count_configs(root / name) == n
