"""The precision audit of whole models through the ``"pallas"`` backend: under bf16-mixed, the
energy + forces program and the parameter gradient of a force loss (a training step's second
derivatives) follow the policy, with every Pallas kernel read as one contraction (its operands,
its FP32 accumulator) and the convolution kernels' sums in the aggregation stage. Traced only
(jax.make_jaxpr): nothing is compiled."""

from __future__ import annotations

import pytest

from mpnn_jax import testing
from mpnn_jax.potential import make_predictor
from mpnn_jax.precision import audit, get_policy

from .backend_checks import MODELS, loss_and_grad, tiny_graph


def _bf16_pallas_model(name):
    """``(model, params, graph)``: a tiny bf16-mixed model on the pallas backend (MACE at
    correlation 3, the order-3 product's kernels)."""
    overrides = {"correlation": 3} if name == "mace" else {}
    model = testing.tiny_model(
        name, policy="bf16-mixed", backend="pallas", **{**MODELS[name], **overrides}
    )
    graph = tiny_graph()
    return model, testing.random_params(model, graph), graph


@pytest.mark.parametrize("name", ["mace", "nequip"])
def test_pallas_models_follow_bf16_mixed(name):
    model, params, graph = _bf16_pallas_model(name)
    policy = get_policy("bf16-mixed")
    for fn in (make_predictor(model), loss_and_grad(model, second_order=True)):
        report = audit(fn, params, graph)
        assert report.check(policy) == []
        kernels = [r for r in report.records if r.primitive.startswith("mpnn_")]
        convs = [r for r in kernels if r.primitive == "mpnn_gather_sum"]
        assert convs and all(r.stage == "messages" and r.accum == "f32" for r in convs)
        assert all(set(r.in_dtypes) <= {"bf16", "f32"} for r in kernels)
        assert not report.low_precision_scatter_adds()


@pytest.mark.parametrize("name", ["mace", "nequip"])
def test_training_gradient_runs_no_fp32_x_bf16_gemm_with_single_path_stores(monkeypatch, name):
    """With ``linear.STORE_SINGLE_PATH`` the parameter gradient of a force loss runs no GEMM of
    an FP32 and a BF16 operand in a BF16 stage (the cotangents of the linears' stored outputs are
    BF16), where without it the linears' backward GEMMs do; the audit stays clean."""
    from mpnn_jax.nn import linear

    model, params, graph = _bf16_pallas_model(name)
    policy = get_policy("bf16-mixed")
    mixed = {}
    for store in (False, True):  # read when the step is traced
        monkeypatch.setattr(linear, "STORE_SINGLE_PATH", store)
        report = audit(loss_and_grad(model, second_order=True), params, graph)
        assert report.check(policy) == []
        mixed[store] = report.mixed_gemms(policy)
    assert mixed[False] and not mixed[True], [r.name_stack for r in mixed[True]]
