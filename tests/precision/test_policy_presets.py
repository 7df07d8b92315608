"""Presets, the policy grammar (round trip, errors), hashability and single-stage ablations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax.precision import PRESETS, STAGES, Policy, ablations, audit_jaxpr, get_policy

F32, BF16, F16, F64 = (np.dtype(d) for d in (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64))


def _settings(p: Policy) -> dict:
    """Everything but the name."""
    d = dataclasses.asdict(p)
    d.pop("name")
    return d


@pytest.mark.parametrize("spec", list(PRESETS) + ablations())
def test_spec_round_trip(spec):
    p = get_policy(spec)
    q = get_policy(p.spec())
    assert _settings(q) == _settings(p)
    assert dataclasses.replace(q, name=p.name) == p
    assert hash(dataclasses.replace(q, name=p.name)) == hash(p)


def test_preset_dtypes():
    low = ("embedding", "messages", "update", "readout")
    for name, low_dtype in (("bf16-mixed", BF16), ("fp16-mixed", F16)):
        p = get_policy(name)
        for s in STAGES:
            assert p.dtype(s) == (low_dtype if s in low else F32), (name, s)
        assert p.param_dtype == F32 and p.output_dtype == F32 and p.accum_dtype == F32
        assert p.accum("messages") == F32
    assert get_policy("fp16-mixed").loss_scaling == "dynamic"
    assert get_policy("bf16-mixed").loss_scaling == "none"
    assert all(get_policy("fp32").dtype(s) == F32 for s in STAGES)
    assert get_policy("fp32").matmul_precision == "default"
    assert get_policy("fp32-highest").matmul_precision == "highest"
    pure = get_policy("bf16-pure")
    assert all(pure.dtype(s) == BF16 for s in STAGES) and pure.accum("messages") == BF16
    f64 = get_policy("fp64")
    assert f64.uses_x64 and all(f64.dtype(s) == F64 for s in STAGES) and f64.accum("basis") == F64
    assert not get_policy("bf16-mixed").uses_x64


@pytest.mark.parametrize("spec", ablations())
def test_single_stage_ablation_changes_exactly_one_stage(spec):
    stage, dtype = spec.removeprefix("fp32+").split("=")
    base, p = get_policy("fp32"), get_policy(spec)
    changed = [s for s in STAGES if p.dtype(s) != base.dtype(s)]
    assert changed == [stage]
    assert p.dtype(stage).name == {"bf16": "bfloat16", "f16": "float16"}[dtype]
    assert (p.param_dtype, p.compute_dtype, p.output_dtype, p.accum_dtype) == (
        base.param_dtype,
        base.compute_dtype,
        base.output_dtype,
        base.accum_dtype,
    )
    assert p.loss_scaling == ("dynamic" if dtype == "f16" else "none")


def test_ablations_cover_every_stage():
    assert len(ablations()) == 2 * len(STAGES)
    assert ablations(("bf16",)) == [f"fp32+{s}=bf16" for s in STAGES]


def test_grammar_without_preset_and_overrides():
    p = get_policy("params=f32,compute=bf16,geometry=f32, energy = f32")
    assert p.dtype("messages") == BF16 and p.dtype("geometry") == F32 and p.dtype("energy") == F32
    assert p.output_dtype == F32
    assert get_policy("fp16-mixed+messages=f32").loss_scaling == "dynamic"
    assert get_policy("fp32+messages=f16,loss_scale=none").loss_scaling == "none"
    assert get_policy("bf16-mixed+aggregation=bf16").dtype("aggregation") == BF16
    assert get_policy("fp32+matmul=HIGHEST").matmul_precision == "highest"


@pytest.mark.parametrize(
    "spec, match",
    [
        ("fp32+message=bf16", r"unknown policy key 'message'.*embedding"),
        ("fp32+messages=bf8", r"unknown dtype 'bf8'.*bf16"),
        ("fp8", r"unknown policy 'fp8'.*fp32"),
        ("fp8+messages=bf16", r"unknown policy preset 'fp8'.*bf16-mixed"),
        ("compute=bf16,messages", r"'messages' is not of the form key=value"),
        ("fp32+messages", r"'messages' is not of the form key=value"),
        ("compute=bf16,compute=f32", r"policy key 'compute' given twice"),
        ("fp32+messages=bf16,messages=f16", r"policy key 'messages' given twice"),
        ("", r"empty policy spec"),
        ("compute=f32,matmul=fast", r"unknown matmul precision 'fast'"),
        ("compute=f32,loss_scale=static", r"unknown loss_scale 'static'"),
    ],
)
def test_bad_specs_fail_clearly(spec, match):
    with pytest.raises(ValueError, match=match):
        get_policy(spec)


def test_unknown_stage_in_methods():
    p = get_policy("fp32")
    with pytest.raises(ValueError, match="unknown stage 'message'"):
        p.dtype("message")
    with pytest.raises(ValueError, match="unknown stage 'nodes'"):
        Policy.scope("nodes")


def test_hashable_and_usable_as_static_jit_argument():
    a, b = get_policy("bf16-mixed"), get_policy("bf16-mixed")
    assert a == b and hash(a) == hash(b) and len({a, b, get_policy("fp32")}) == 2
    traces = []

    def f(x, policy):
        traces.append(policy.name)
        return policy.cast("messages", x) * 2

    g = jax.jit(f, static_argnums=1)
    assert g(jnp.ones(3), a).dtype == BF16
    g(jnp.ones(3), b)
    assert g(jnp.ones(3), get_policy("fp32")).dtype == F32
    assert traces == ["bf16-mixed", "fp32"]  # equal policies hit the cache


def test_cast_touches_only_floats_and_einsum_accumulates_in_fp32():
    p = get_policy("bf16-mixed")
    tree = {"x": jnp.ones(3, jnp.float32), "i": jnp.arange(3), "h": jnp.ones(2, jnp.float16)}
    out = p.cast("messages", tree)
    assert out["x"].dtype == BF16 and out["h"].dtype == BF16 and out["i"].dtype == jnp.int32
    assert p.cast("geometry", out)["x"].dtype == F32
    a, b = jnp.linspace(-1, 1, 6).reshape(2, 3), jnp.linspace(0, 2, 12).reshape(3, 4)
    y = p.einsum("messages", "ij,jk->ik", a, b)  # runs here (CPU) through the upcast branch
    assert y.dtype == BF16
    a16, b16 = (np.asarray(p.cast("messages", t), np.float64) for t in (a, b))
    np.testing.assert_allclose(np.asarray(y, np.float64), a16 @ b16, rtol=2**-8, atol=1e-6)
    jaxpr = jax.make_jaxpr(lambda a, b: p.einsum("messages", "ij,jk->ik", a, b))(
        jnp.ones((2, 3)), jnp.ones((3, 4))
    )
    # on accelerators: a BF16 x BF16 dot accumulating in FP32; CPU: upcast first (same products)
    (gpu,) = [r for r in audit_jaxpr(jaxpr).records if r.kind == "matmul"]
    assert (gpu.in_dtypes, gpu.accum) == (("bf16", "bf16"), "f32")
    (cpu,) = [r for r in audit_jaxpr(jaxpr, platform="cpu").records if r.kind == "matmul"]
    assert (cpu.in_dtypes, cpu.accum) == (("f32", "f32"), "f32")
