"""Radial basis, envelope, radial MLP, edge lengths and edge basis."""

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax.nn import RadialMLP, bessel_basis, edge_basis, edge_lengths, polynomial_envelope
from mpnn_jax.precision import get_policy
from mpnn_jax.testing import equivariance_error, random_o3


def test_bessel_basis_matches_formula():
    r = np.array([0.3, 1.0, 2.5, 4.9])
    got = np.asarray(bessel_basis(jnp.asarray(r, jnp.float32), n_basis=8, cutoff=5.0))
    n = np.arange(1, 9)
    ref = np.sqrt(2 / 5.0) * np.sin(n * np.pi * r[:, None] / 5.0) / r[:, None]
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-6)


def test_bessel_basis_nan_safe_at_zero():
    f = lambda r: jnp.sum(bessel_basis(r, n_basis=4, cutoff=5.0))
    r = jnp.array([0.0, 1.0])
    assert np.all(np.isfinite(np.asarray(jax.grad(f)(r))))
    n = np.arange(1, 5)
    np.testing.assert_allclose(
        np.asarray(bessel_basis(r, n_basis=4, cutoff=5.0))[0], np.sqrt(0.4) * n * np.pi / 5, 1e-6
    )


def test_polynomial_envelope_smooth_at_cutoff(x64):
    c = 5.0
    env = lambda r: polynomial_envelope(r, cutoff=c)
    r = jnp.array([c - 1e-6, c, c + 0.5], jnp.float64)
    np.testing.assert_allclose(np.asarray(env(r)), 0.0, atol=1e-12)
    d1 = jax.jit(jax.vmap(jax.grad(env)))(r)
    d2 = jax.jit(jax.vmap(jax.grad(jax.grad(env))))(r)
    np.testing.assert_allclose(np.asarray(d1), 0.0, atol=1e-8)
    np.testing.assert_allclose(np.asarray(d2), 0.0, atol=1e-4)
    assert float(env(jnp.array(0.0, jnp.float64))) == 1.0
    # monotonically decreasing on (0, c)
    vals = np.asarray(env(jnp.linspace(0, c, 50, dtype=jnp.float64)))
    assert np.all(np.diff(vals) <= 0)


@pytest.mark.parametrize(
    "spec, dtype",
    [
        ("fp32", "float32"),
        ("bf16-mixed", "float32"),
        ("bf16-seed", "bfloat16"),
        ("fp32+radial=f16", "float16"),
    ],
)
def test_radial_mlp_dtype_and_fp32_params(spec, dtype):
    mlp = RadialMLP((8, 8), 5, get_policy(spec))
    x = jnp.ones((3, 4), jnp.float32)
    params = mlp.init(jax.random.PRNGKey(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
    y = mlp.apply(params, x)
    assert y.shape == (3, 5) and y.dtype == jnp.dtype(dtype)


def test_radial_mlp_bf16_close_to_fp32():
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 8))
    mlp32 = RadialMLP((16,), 4, get_policy("fp32"))
    params = mlp32.init(jax.random.PRNGKey(0), x)
    y32 = np.asarray(mlp32.apply(params, x))
    y16 = np.asarray(mlp32.clone(policy=get_policy("bf16-seed")).apply(params, x), np.float32)
    err = np.max(np.abs(y16 - y32)) / np.max(np.abs(y32))
    print(f"radial MLP bf16-seed relative error {err:.2e}")
    assert 1e-5 < err < 3e-2  # BF16 really happened, and is sane


@pytest.mark.parametrize("fold", [True, False])
def test_radial_mlp_matches_numpy_fp64(fold, monkeypatch):
    """``silu(x W1 / sqrt(8)) * 1.679 ... W_last / sqrt(16)`` in float64 NumPy: the constant
    factors on the weights (``FOLD_SCALES``) or on the activations give the same function."""
    from mpnn_jax.nn import radial

    monkeypatch.setattr(radial, "FOLD_SCALES", fold)
    x = jax.random.normal(jax.random.PRNGKey(1), (32, 8))
    mlp = RadialMLP((16, 16), 4, get_policy("fp32"))
    params = mlp.init(jax.random.PRNGKey(0), x)
    with jax.default_matmul_precision("highest"):
        y = np.asarray(mlp.apply(params, x), np.float64)
    h = np.asarray(x, np.float64)
    ws = [np.asarray(params["params"][f"w{i}"], np.float64) for i in range(3)]
    for i, w in enumerate(ws):
        h = h @ w / np.sqrt(w.shape[0])
        if i < 2:
            h = h / (1.0 + np.exp(-h)) * 1.6790
    np.testing.assert_allclose(y, h, rtol=1e-5, atol=1e-5 * np.abs(h).max())


def _edges(rng, n=12):
    v = rng.normal(size=(n, 3))
    v[-2:] = 0.0  # padded edges
    mask = np.ones(n, bool)
    mask[-2:] = False
    return jnp.asarray(v, jnp.float32), jnp.asarray(mask)


def test_edge_lengths_values_and_padding(rng):
    p = get_policy("fp32")
    v, mask = _edges(rng)
    r = np.asarray(edge_lengths(v, mask, policy=p))
    np.testing.assert_allclose(r[:-2], np.linalg.norm(np.asarray(v)[:-2], axis=-1), rtol=1e-6)
    assert np.all(r[-2:] == 0.0)


def test_edge_basis_padding_zero_and_nan_free_gradient(rng):
    p = get_policy("fp32")
    v, mask = _edges(rng)

    def f(v):
        r = edge_lengths(v, mask, policy=p)
        sh, radial = edge_basis(v, r, mask, max_ell=3, n_basis=8, cutoff=5.0, policy=p)
        return jnp.sum(sh.array**2) + jnp.sum(radial), (sh, radial)

    g, (sh, radial) = jax.jit(jax.grad(f, has_aux=True))(v)
    assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(g)[-2:] == 0.0)
    assert np.all(np.asarray(sh.array)[-2:] == 0.0) and np.all(np.asarray(radial)[-2:] == 0.0)
    assert sh.irreps == e3nn.Irreps("0e+1o+2e+3o")
    # component normalisation: |Y_l|^2 = 2l + 1
    norms = np.asarray(e3nn.norm(sh, squared=True).array)[:-2]
    np.testing.assert_allclose(norms, np.broadcast_to([1, 3, 5, 7], norms.shape), rtol=1e-5)


@pytest.mark.parametrize("spec", ["fp32", "bf16-mixed"])
def test_edge_basis_dtype(spec):
    p = get_policy(spec)
    v = jnp.ones((4, 3), jnp.float32)
    m = jnp.ones(4, bool)
    sh, radial = edge_basis(
        v, edge_lengths(v, m, policy=p), m, max_ell=2, n_basis=4, cutoff=5.0, policy=p
    )
    assert sh.dtype == p.dtype("basis") and radial.dtype == p.dtype("basis")


def test_edge_basis_equivariant_under_o3(rng):
    p = get_policy("fp32")
    mask = jnp.ones(10, bool)

    def fn(v):
        r = edge_lengths(v.array, mask, policy=p)
        sh, radial = edge_basis(v.array, r, mask, max_ell=3, n_basis=6, cutoff=5.0, policy=p)
        return e3nn.concatenate([sh, e3nn.IrrepsArray(f"{radial.shape[1]}x0e", radial)])

    v = e3nn.IrrepsArray("1o", jnp.asarray(rng.normal(size=(10, 3)), jnp.float32))
    for improper in (False, True):
        err = equivariance_error(fn, random_o3(rng, improper=improper), v)
        assert err < 1e-5, err
    # the check can fail: treating 1o vectors as 1e breaks the inversion test for odd l
    v_wrong = e3nn.IrrepsArray("1e", v.array)
    assert equivariance_error(fn, random_o3(rng, improper=True), v_wrong) > 1e-2
