"""What a 16-bit ``energy`` stage does to forces: it scales every force by the 16-bit rounding of
the model's energy scale, ``round(scale) / scale``, and nothing else.

The per-atom energy is ``scale * x + shift + E0`` in the energy stage; the cotangent reaching the
readout is ``scale`` rounded to the stage dtype, the same factor for every atom. This is the
precision study's "energy" row (``experiments/results/precision_study``): its force errors equal
``|round(scale) / scale - 1|`` times the mean force (relative RMS error = that factor exactly).

The other stages run in FP64 (``fp64+energy=<dtype>`` against ``fp64``), so "nothing else" is
checked to FP64 rounding, not FP32's: any other 16-bit rounding (2^-8 or 2^-11 relative) would
show 10^7 times above the tolerance. Both programs are jitted and the parameters drawn in NumPy
on ``init``'s shapes (eager MACE and compiling ``init`` took 60 s on 2 cores).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax import testing
from mpnn_jax.potential import make_predictor
from mpnn_jax.precision import get_policy

SIZES = {
    "mace": dict(num_channels=8, hidden_irreps="0e+1o", max_ell=2, correlation=2),
    "nequip": dict(channels=4, max_ell=1, n_layers=2),
}
ROUND = {"bf16": jnp.bfloat16, "fp16": jnp.float16}


def _graph():
    rng = np.random.default_rng(0)
    real = testing.batch([testing.molecule_graph(rng, n_atoms=8, dtype="float64")])
    return testing.pad(real, n_node=16, n_edge=int(real.n_edge.sum()) + 8, n_graph=2)


@pytest.mark.parametrize(
    ("name", "dtype"),
    [  # MACE in BF16: the same code path as the two below
        pytest.param("mace", "bf16", marks=pytest.mark.slow),
        ("mace", "fp16"),
        ("nequip", "bf16"),
    ],
)
def test_16_bit_energy_stage_scales_forces_by_the_rounded_scale(name, dtype, x64):
    graph = _graph()
    model = testing.tiny_model(name, policy="fp64", **SIZES[name])
    low_model = model.clone(policy=get_policy(f"fp64+energy={dtype}"))
    params = testing.random_params(model, graph)
    ref, low = (
        np.asarray(jax.jit(make_predictor(m))(params, graph)["forces"])[:8]
        for m in (model, low_model)
    )
    assert ref.dtype == low.dtype == np.float64 and np.abs(ref).max() > 1e-2
    factor = float(np.asarray(model.scale, ROUND[dtype])) / model.scale  # tiny_model: 1.3 eV
    assert abs(factor - 1) > 1e-4  # the rounding is visible: the check can fail
    np.testing.assert_allclose(low, factor * ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
    assert np.max(np.abs(low - ref)) > 1e6 * np.max(np.abs(low - factor * ref))
    rel_rmse = np.sqrt(np.mean((low - ref) ** 2) / np.mean(ref**2))
    assert rel_rmse == pytest.approx(abs(factor - 1), rel=1e-8)
