"""The precision audit of whole models through the ``"pallas"`` backend: under bf16-mixed, the
energy + forces program and the parameter gradient of a force loss (a training step's second
derivatives) follow the policy, with every Pallas kernel read as one contraction (its operands,
its FP32 accumulator) and the convolution kernels' sums in the aggregation stage. Traced only
(jax.make_jaxpr): nothing is compiled."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax import testing
from mpnn_jax.potential import make_predictor
from mpnn_jax.precision import audit, get_policy

from .backend_checks import MODELS


@pytest.mark.parametrize("name", ["mace", "nequip"])
def test_pallas_models_follow_bf16_mixed(name):
    overrides = {"correlation": 3} if name == "mace" else {}
    model = testing.tiny_model(
        name, policy="bf16-mixed", backend="pallas", **{**MODELS[name], **overrides}
    )
    g = testing.molecule_graph(np.random.default_rng(2), n_atoms=6, n_species=2, cutoff=3.0)
    graph = testing.pad(
        g, n_node=int(g.n_node.sum()) + 2, n_edge=int(g.n_edge.sum()) + 8, n_graph=2
    )
    params = testing.random_params(model, graph)
    predict = make_predictor(model)

    def loss(p):
        out = predict(p, graph)
        return jnp.sum(out["energy"] ** 2) + jnp.sum(out["forces"] ** 2)

    policy = get_policy("bf16-mixed")
    for fn, args in ((predict, (params, graph)), (jax.grad(loss), (params,))):
        report = audit(fn, *args)
        assert report.check(policy) == []
        kernels = [r for r in report.records if r.primitive.startswith("mpnn_")]
        convs = [r for r in kernels if r.primitive == "mpnn_gather_sum"]
        assert convs and all(r.stage == "messages" and r.accum == "f32" for r in convs)
        assert all(set(r.in_dtypes) <= {"bf16", "f32"} for r in kernels)
        assert not report.low_precision_scatter_adds()
