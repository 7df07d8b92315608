"""What a 16-bit ``energy`` stage does to forces: it scales every force by the 16-bit rounding of
the model's energy scale, ``round(scale) / scale``, and nothing else.

The per-atom energy is ``scale * x + shift + E0`` in the energy stage; the cotangent reaching the
readout is ``scale`` rounded to the stage dtype, the same factor for every atom. This is the
precision study's "energy" row (``experiments/results/precision_study``): its force errors equal
``|round(scale) / scale - 1|`` times the mean force (relative RMS error = that factor exactly).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax import testing
from mpnn_jax.potential import init_params, make_predictor

SIZES = {
    "mace": dict(num_channels=8, hidden_irreps="0e+1o", max_ell=2, correlation=2),
    "nequip": dict(channels=4, max_ell=1, n_layers=2),
}
ROUND = {"bf16": jnp.bfloat16, "fp16": jnp.float16}


@pytest.fixture(scope="module")
def graph():
    rng = np.random.default_rng(0)
    real = testing.batch([testing.molecule_graph(rng, n_atoms=8)])
    return testing.pad(real, n_node=16, n_edge=int(real.n_edge.sum()) + 8, n_graph=2)


def _forces(name, spec, graph):
    model = testing.tiny_model(name, policy=spec, **SIZES[name])
    params = init_params(model, jax.random.PRNGKey(0), graph)
    return model, np.asarray(make_predictor(model)(params, graph)["forces"], np.float64)[:8]


@pytest.mark.parametrize(
    ("name", "dtype"),
    [  # MACE in BF16: the same code path as the two below (84 s on 2 cores)
        pytest.param("mace", "bf16", marks=pytest.mark.slow),
        ("mace", "fp16"),
        ("nequip", "bf16"),
    ],
)
def test_16_bit_energy_stage_scales_forces_by_the_rounded_scale(name, dtype, graph):
    model, ref = _forces(name, "fp32", graph)
    _, low = _forces(name, f"fp32+energy={dtype}", graph)
    factor = float(np.asarray(model.scale, ROUND[dtype])) / model.scale  # tiny_model: 1.3 eV
    assert abs(factor - 1) > 1e-4  # the rounding is visible: the check can fail
    np.testing.assert_allclose(low, factor * ref, rtol=2e-6, atol=1e-6 * np.abs(ref).max())
    assert np.max(np.abs(low - ref)) > 10 * np.max(np.abs(low - factor * ref))
    rel_rmse = np.sqrt(np.mean((low - ref) ** 2) / np.mean(ref**2))
    assert rel_rmse == pytest.approx(abs(factor - 1), rel=1e-3)
