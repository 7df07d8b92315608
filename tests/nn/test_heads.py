"""Species embedding, gate, readouts and scale/shift: equivariance, invariance, dtypes."""

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax.nn import (
    LinearReadout,
    MLPReadout,
    ScaleShift,
    SpeciesEmbedding,
    gate,
    gate_irreps,
    scale_shift,
)
from mpnn_jax.precision import get_policy
from mpnn_jax.testing import equivariance_error, random_o3


def test_species_embedding_lookup_and_dtype():
    for spec, dtype in [("fp32", jnp.float32), ("bf16-mixed", jnp.bfloat16)]:
        emb = SpeciesEmbedding(3, "4x0e", get_policy(spec))
        s = jnp.array([2, 0, 2, 1])
        params = emb.init(jax.random.PRNGKey(0), s)
        table = np.asarray(params["params"]["embedding"])
        assert table.dtype == np.float32
        out = emb.apply(params, s)
        assert out.irreps == e3nn.Irreps("4x0e") and out.dtype == dtype
        np.testing.assert_allclose(
            np.asarray(out.array, np.float32), table[[2, 0, 2, 1]], rtol=1e-2
        )
    with pytest.raises(ValueError, match="0e"):
        SpeciesEmbedding(3, "4x1o", get_policy("fp32")).init(jax.random.PRNGKey(0), s)


def test_gate_equivariant_and_irreps(rng):
    irreps = gate_irreps("3x0e+2x1o+1x2e")
    assert irreps == e3nn.Irreps("3x0e+3x0e+2x1o+1x2e")
    x = e3nn.normal(irreps, jax.random.PRNGKey(0), (5,))
    fn = lambda x: gate(x, policy=get_policy("fp32"))
    assert fn(x).irreps == e3nn.Irreps("3x0e+2x1o+1x2e")
    assert equivariance_error(fn, random_o3(rng, improper=True), x) < 1e-5
    # an ungated vector would break the test: check that it can fail
    bad = lambda x: e3nn.IrrepsArray(x.irreps, jax.nn.silu(x.array))
    assert equivariance_error(bad, random_o3(rng, improper=True), x) > 1e-2


def test_gate_matches_e3nn_gate():
    x = e3nn.normal(gate_irreps("3x0e+2x1o+1x2e"), jax.random.PRNGKey(3), (7,))
    ours = gate(x, policy=get_policy("fp32"))
    ref = e3nn.gate(
        x, even_act=jax.nn.silu, odd_act=jnp.tanh, even_gate_act=jax.nn.sigmoid, normalize_act=True
    )
    assert ours.irreps == ref.irreps
    np.testing.assert_allclose(np.asarray(ours.array), np.asarray(ref.array), rtol=2e-3, atol=1e-4)


def test_gate_runs_in_update_dtype():
    x = e3nn.normal(gate_irreps("2x0e+1x1o"), jax.random.PRNGKey(0), (3,))
    assert gate(x, policy=get_policy("bf16-mixed")).dtype == jnp.bfloat16
    assert gate(x, policy=get_policy("fp32")).dtype == jnp.float32


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_readouts_invariant(rng, head):
    policy = get_policy("fp32")
    x = e3nn.normal("4x0e+2x1o+1x2e", jax.random.PRNGKey(0), (5,))
    mod = LinearReadout(policy) if head == "linear" else MLPReadout("4x0e+2x1o", policy)
    params = mod.init(jax.random.PRNGKey(1), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
    fn = lambda x: e3nn.IrrepsArray("0e", mod.apply(params, x)[:, None])
    assert mod.apply(params, x).shape == (5,)
    assert equivariance_error(fn, random_o3(rng, improper=True), x) < 1e-5
    dtype = mod.clone(policy=get_policy("bf16-mixed")).apply(params, x).dtype
    assert dtype == jnp.bfloat16


def test_scale_shift_values_and_energy_dtype():
    out = ScaleShift(2.0, 0.5, (-1.0, -3.0), get_policy("bf16-mixed")).apply(
        {}, jnp.array([1.0, 1.0], jnp.bfloat16), jnp.array([0, 1])
    )
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), [1.5, -0.5])


def test_scale_shift_resolves_meV_where_bf16_cannot():
    """-3.7 eV per atom: E0 added in the energy dtype keeps 1 meV; in BF16 it would not."""
    x = jnp.array([0.001], jnp.bfloat16)  # a 1 meV readout, representable in BF16
    e = scale_shift(
        x,
        jnp.array([0]),
        scale=1.0,
        shift=0.0,
        atomic_energies=(-3.7,),
        policy=get_policy("bf16-mixed"),
    )
    assert abs(float(e[0]) - (-3.699)) < 1e-5
    # the same sum in BF16 loses the meV (spacing of BF16 near 3.7 is 2^-6 = 15.6 meV)
    e_bf16 = scale_shift(
        x,
        jnp.array([0]),
        scale=1.0,
        shift=0.0,
        atomic_energies=(-3.7,),
        policy=get_policy("bf16-pure"),
    )
    assert e_bf16.dtype == jnp.bfloat16
    print(f"E0 + 1 meV: fp32 energy stage {float(e[0]):.6f}, bf16 {float(e_bf16[0]):.6f} eV")
    assert float(e_bf16[0]) == float(jnp.asarray(-3.7, jnp.bfloat16))  # the meV is lost
