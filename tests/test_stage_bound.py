"""``mpnn_jax.benchmark.stage_bound``: the Amdahl bound of a mixed preset, on hand-made profiles
whose answers are worked out by hand."""

import math

import pytest

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
