"""Bundled data and the `summarize` / `format_summary` report."""

import json

import pytest

from mpnn_jax.data import bundled_path, format_summary, read_xyz, summarize


@pytest.mark.parametrize("split, n", [("train", 1000), ("test", 1000), ("isolated_atoms", 4)])
def test_bundled_data_readable(split, n):
    path = bundled_path("rmd17_ethanol", split)
    configs = read_xyz(path, forces_key=None if split == "isolated_atoms" else "forces")
    assert len(configs) == n
    assert (path.parent / "README.md").read_text().count("29e6d467") == 1


def test_bundled_path_errors():
    with pytest.raises(ValueError, match="unknown bundled dataset"):
        bundled_path("qm9")
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        bundled_path("rmd17_ethanol", "valid")


def test_summary_of_ethanol():
    summary = summarize(bundled_path("rmd17_ethanol", "test"), cutoff=5.0, batch_size=10)
    json.dumps(summary)  # JSON-able
    assert summary["n_configs"] == 1000 and summary["elements"] == ["H", "C", "O"]
    assert summary["atom_counts"] == {"H": 6000, "C": 2000, "O": 1000}
    assert summary["atoms_per_config"] == {"min": 9, "max": 9}
    assert summary["periodic"] == "none"
    assert summary["neighbours_per_atom"]["mean"] == 8.0
    assert -4211 < summary["energy"]["min"] < summary["energy"]["max"] < -4208
    assert summary["padding_plan"]["buckets"] == [{"n_node": 96, "n_edge": 768, "n_graph": 11}]
    text = format_summary(summary)
    for needle in ("configurations", "1000", "H (6000 atoms)", "neighbours / atom", "eV/Å", "768"):
        assert needle in text


def test_summary_without_forces():
    summary = summarize(bundled_path("rmd17_ethanol", "isolated_atoms"), forces_key=None)
    assert summary["forces"] is None and summary["n_configs"] == 4
    assert "forces" in format_summary(summary)
