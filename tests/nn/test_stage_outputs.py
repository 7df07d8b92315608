"""Kernels that store their caller's dtype (``pallas_conv.DX_STAGE_OUTPUT``,
``pallas_symmetric.SPARSE_STAGE_OUTPUT``): a bf16-mixed MACE (correlation 3, so both kernels run)
through the ``"pallas"`` backend gives bit-identical energies, forces and loss gradient (the
training step's second derivatives) with each setting on and off, while the kernels it names
store BF16 where they stored FP32. On CPU the kernels run in Pallas's interpreter."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mpnn_jax import testing
from mpnn_jax.nn import pallas_conv, pallas_symmetric

from .backend_checks import MODELS, kernel_stores, loss_and_grad, tiny_graph


@pytest.fixture(scope="module")
def bf16_mace():
    model = testing.tiny_model(
        "mace", policy="bf16-mixed", backend="pallas", **{**MODELS["mace"], "correlation": 3}
    )
    graph = tiny_graph()
    return model, testing.random_params(model, graph), graph


@pytest.mark.parametrize(
    "module, setting, kernel",
    [
        (pallas_conv, "DX_STAGE_OUTPUT", "mpnn_gather_sum"),
        (pallas_symmetric, "SPARSE_STAGE_OUTPUT", "mpnn_sparse"),
    ],
)
def test_stage_output_is_bit_identical_and_stores_bf16(bf16_mace, monkeypatch, module, setting,
                                                        kernel):  # fmt: skip
    model, params, graph = bf16_mace
    results, stores = {}, {}
    for value in (False, True):
        monkeypatch.setattr(module, setting, value)
        step = loss_and_grad(model, second_order=True)  # traced anew under this setting
        results[value] = jax.tree_util.tree_leaves(step(params, graph))
        jaxpr = jax.make_jaxpr(step)(params, graph).jaxpr
        stores[value] = kernel_stores(jaxpr, kernel)
    assert len(stores[True]) == len(stores[False]) > 0
    assert stores[False].count("bfloat16") < stores[True].count("bfloat16")
    leaves = [np.asarray(v, np.float32) for v in results[False]]
    assert all(np.isfinite(v).all() for v in leaves) and max(np.abs(v).max() for v in leaves) > 0
    for on, off in zip(results[True], results[False], strict=True):
        assert on.dtype == off.dtype
        np.testing.assert_array_equal(np.asarray(on, np.float32), np.asarray(off, np.float32))
