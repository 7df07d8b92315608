"""``mpnn_jax.benchmark.stage_bound``: the Amdahl bound of a mixed preset, on hand-made profiles
whose answers are worked out by hand."""

import math

import pytest
from repo_scripts import load_script

from mpnn_jax.benchmark.stage_bound import precision_bound, split_by_precision, stage_name

FP32 = {
    "Convolution_0:messages bwd": 6.0,  # 16-bit in bf16-mixed
    "Convolution_0:radial bwd": 3.0,  # FP32 in bf16-mixed, 16-bit in bf16-seed
    "Product_0:update": 1.0,  # 16-bit
    "-:geometry bwd": 1.5,  # FP32
    "(other)": 0.5,  # unattributed: fixed
}


def test_stage_names():
    assert stage_name("Convolution_1:radial bwd") == "radial"
    assert stage_name("-:geometry") == "geometry"
    assert stage_name("(other)") is None
    assert stage_name("Linear_2:-") is None


def test_split_follows_the_preset():
    assert split_by_precision(FP32, "bf16-mixed") == (5.0, 7.0)
    assert split_by_precision(FP32, "bf16-seed") == (2.0, 10.0)  # the radial MLP in BF16 too
    assert split_by_precision(FP32, "fp32") == (12.0, 0.0)


def test_bound_by_hand():
    b = precision_bound(FP32, "bf16-mixed")
    assert b["fp32_ms"] == 12.0 and b["fixed_share"] == pytest.approx(5 / 12)
    assert b["bound"] == pytest.approx(12.0 / (5.0 + 3.5))
    assert b["bound_k_inf"] == pytest.approx(12.0 / 5.0)
    assert precision_bound(FP32, "bf16-mixed", k=1.0)["bound"] == pytest.approx(1.0)
    assert precision_bound(FP32, "fp32")["bound"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="positive"):
        precision_bound(FP32, "bf16-mixed", k=0.0)
    with pytest.raises(ValueError, match="no time"):
        precision_bound({}, "bf16-mixed")


def test_with_the_low_precision_profile():
    low = {
        "Convolution_0:messages bwd": 4.0,
        "Convolution_0:radial bwd": 2.5,
        "Product_0:update": 0.6,
        "-:geometry bwd": 1.5,
        "(other)": 0.5,
    }
    b = precision_bound(FP32, "bf16-mixed", low_by_stage=low, target=1.5)
    assert b["low_ms"] == pytest.approx(9.1) and b["measured"] == pytest.approx(12.0 / 9.1)
    assert b["scalable_speedup"] == pytest.approx(7.0 / 4.6)
    assert b["fixed_speedup"] == pytest.approx(5.0 / 4.5)
    assert b["bound_low_fixed"] == pytest.approx(12.0 / (4.5 + 3.5))
    # 1.5x needs the 16-bit stages in 12 / 1.5 - 4.5 = 3.5 ms: k = 7 / 3.5
    assert b["k_needed"] == pytest.approx(2.0)
    # a target the FP32 stages alone miss: 12 / 3 = 4 ms < 4.5
    assert math.isinf(precision_bound(FP32, "bf16-mixed", low_by_stage=low, target=3.0)["k_needed"])


def test_script_pairs_cases_of_one_file(tmp_path, capsys):
    """``experiments/perf/stage_bound.py`` pairs each fp32 case with the same program under
    another preset, in one file, and writes the bound of each pair."""
    import json

    module = load_script("experiments/perf/stage_bound.py")
    low = {k: v / 2 for k, v in FP32.items()}
    cases = [
        {"case": "mace-mp-s:water:100:fp32:ef:pallas", "by_stage": FP32},
        {"case": "mace-mp-s:water:100:bf16-mixed:ef:pallas", "by_stage": low},
        {"case": "mace-mp-s:water:100:bf16-mixed:train:pallas", "by_stage": low},  # no fp32 twin
    ]
    f = tmp_path / "profile.json"
    f.write_text(json.dumps(cases))
    out = tmp_path / "bound.json"
    assert module.main([str(f), "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["case"] == "mace-mp-s:water:100:bf16-mixed:ef:pallas"
    assert row["measured"] == pytest.approx(2.0) and row["bound"] == pytest.approx(12.0 / 8.5)
    assert "bf16-mixed:ef" in capsys.readouterr().out
    f.write_text(json.dumps(cases[1:]))
    assert module.main([str(f)]) == 1  # nothing to pair
