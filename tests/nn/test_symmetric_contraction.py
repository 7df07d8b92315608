"""Tests of MACE's symmetric contraction against direct computations (all CPU-fast)."""

from __future__ import annotations

import itertools

import chex
import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax.nn.symmetric_contraction import (
    SymmetricContraction,
    contraction_basis,
    irreps_out_of,
    symmetric_contraction,
    weight_name,
    weight_shapes,
)
from mpnn_jax.precision import get_policy

IRREPS_IN = "0e+1o+2e"
N_NODES, N_CHANNELS, N_SPECIES = 7, 3, 2


def _x64():
    """Scoped float64 (``jax.experimental.enable_x64`` in older JAX, ``jax.enable_x64`` now)."""
    legacy = getattr(jax.experimental, "enable_x64", None)
    return legacy() if legacy is not None else jax.enable_x64(True)


def _inputs(seed: int = 0, irreps: str = IRREPS_IN, n: int = N_NODES, dtype=jnp.float32):
    x = e3nn.normal(irreps, jax.random.PRNGKey(seed), (n, N_CHANNELS), dtype=dtype)
    species = jnp.arange(n, dtype=jnp.int32) % N_SPECIES
    return x, species


def _weights(seed, *, correlation, keep, irreps=IRREPS_IN, dtype=jnp.float32, only_order=None):
    shapes = weight_shapes(
        irreps,
        correlation=correlation,
        keep_irrep_out=keep,
        n_channels=N_CHANNELS,
        n_species=N_SPECIES,
    )
    keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
    out = {}
    for key, (name, shape) in zip(keys, sorted(shapes.items())):
        w = jax.random.normal(key, shape, dtype)
        if only_order is not None and not name.startswith(f"w{only_order}_"):
            w = jnp.zeros_like(w)
        out[name] = w
    return out


@pytest.mark.parametrize("correlation", [1, 2, 3])
def test_equivariant_under_rotation_and_inversion(correlation):
    policy = get_policy("fp32")
    keep = "0e+1o+1e+2e"
    layer = SymmetricContraction(
        keep_irrep_out=keep, correlation=correlation, n_species=N_SPECIES, policy=policy
    )
    x, species = _inputs(1)
    params = layer.init(jax.random.PRNGKey(2), x, species)
    y = layer.apply(params, x, species)
    chex.assert_shape(y.array, (N_NODES, N_CHANNELS, irreps_out_of(keep).dim))
    assert y.irreps == e3nn.Irreps("0e+1o+1e+2e")
    assert float(jnp.abs(y.array).max()) > 1e-2  # not trivially zero
    for seed in range(3):
        rot = e3nn.rand_matrix(jax.random.PRNGKey(10 + seed))
        for q in (rot, -rot):  # det +1 and det -1
            assert np.isclose(np.linalg.det(np.asarray(q)), np.sign(np.linalg.det(q)))
            y_rot = layer.apply(params, x.transform_by_matrix(q), species)
            expected = y.transform_by_matrix(q)
            err = float(jnp.abs(y_rot.array - expected.array).max())
            assert err < 1e-4 * float(jnp.abs(y.array).max()), (correlation, err)


def test_parity_is_enforced():
    """A 1e output needs an odd power of 1o and 2e features: zero in the 0e+1o cube's span."""
    policy = get_policy("fp32")
    x, species = _inputs(3, irreps="0e+1o")
    w = _weights(4, correlation=2, keep="1e", irreps="0e+1o")
    assert not w  # no symmetric path reaches 1e from (0e+1o)^{<=2}: nothing to learn
    y = symmetric_contraction(x, species, w, correlation=2, keep_irrep_out="1e", policy=policy)
    chex.assert_shape(y.array, (N_NODES, N_CHANNELS, 3))
    assert float(jnp.abs(y.array).max()) == 0.0


def test_path_counts_match_analytic_invariants():
    """Invariants of a scalar s and a vector v: degree 1: s; 2: s^2, v.v; 3: s^3, s v.v."""
    shapes = weight_shapes("0e+1o", correlation=3, keep_irrep_out="0e", n_channels=1, n_species=1)
    assert {k: v[1] for k, v in shapes.items()} == {"w1_0e": 1, "w2_0e": 2, "w3_0e": 2}
    # vectors from (s, v): degree 1: v; 2: s v; 3: s^2 v, (v.v) v
    shapes = weight_shapes("0e+1o", correlation=3, keep_irrep_out="1o", n_channels=1, n_species=1)
    assert {k: v[1] for k, v in shapes.items()} == {"w1_1o": 1, "w2_1o": 1, "w3_1o": 2}


def test_correlation_one_is_linear():
    policy = get_policy("fp32")
    w = _weights(5, correlation=1, keep="0e+1o")
    x, species = _inputs(6)
    y, _ = _inputs(7)
    f = lambda v: (
        symmetric_contraction(
            v, species, w, correlation=1, keep_irrep_out="0e+1o", policy=policy
        ).array
    )
    a, b = 1.7, -0.3
    lhs = f(a * x + b * y)
    rhs = a * f(x) + b * f(y)
    np.testing.assert_allclose(lhs, rhs, atol=1e-5)
    assert float(jnp.abs(f(x)).max()) > 1e-2


@pytest.mark.parametrize("order", [1, 2, 3])
def test_each_order_is_homogeneous(order):
    """With only the order-nu weights nonzero, f(t x) = t^nu f(x)."""
    with _x64():
        policy = get_policy("fp64")
        w = _weights(8, correlation=3, keep="0e+1o", dtype=jnp.float64, only_order=order)
        x, species = _inputs(9, dtype=jnp.float64)
        f = lambda v: (
            symmetric_contraction(
                v, species, w, correlation=3, keep_irrep_out="0e+1o", policy=policy
            ).array
        )
        t = 1.9
        np.testing.assert_allclose(f(t * x), t**order * f(x), rtol=1e-10, atol=1e-12)
        assert float(jnp.abs(f(x)).max()) > 1e-3


def test_horner_matches_explicit_polynomial():
    """The nested evaluation equals sum_nu sum_k W U x^nu written out with one einsum per order."""
    with _x64():
        policy = get_policy("fp64")
        keep = "0e+1o+2e"
        w = _weights(11, correlation=3, keep=keep, dtype=jnp.float64)
        x, species = _inputs(12, dtype=jnp.float64)
        y = symmetric_contraction(x, species, w, correlation=3, keep_irrep_out=keep, policy=policy)
        basis = contraction_basis(e3nn.Irreps(IRREPS_IN), 3, e3nn.Irreps(keep))
        xa = np.asarray(x.array)  # [n, c, d]
        sp = np.asarray(species)
        letters = "abe"
        for (_, ir), y_ir in zip(y.irreps, y.chunks):
            ref = np.zeros((N_NODES, N_CHANNELS, ir.dim))
            for nu in (1, 2, 3):
                if (nu, ir) not in basis:
                    continue
                u = basis[(nu, ir)]
                wn = np.asarray(w[weight_name(nu, ir)])[sp]  # [n, k, c]
                idx = letters[:nu]
                subs = f"{idx}km,nkc," + ",".join(f"nc{i}" for i in idx) + "->ncm"
                ref += np.einsum(subs, u, wn, *([xa] * nu))
            np.testing.assert_allclose(np.asarray(y_ir[:, :, 0, :]), ref, rtol=1e-10, atol=1e-12)


def test_basis_is_symmetric_under_index_permutations():
    basis = contraction_basis(e3nn.Irreps(IRREPS_IN), 3, e3nn.Irreps("0e+1o"))
    for (nu, _), u in basis.items():
        for perm in itertools.permutations(range(nu)):
            np.testing.assert_allclose(u, np.transpose(u, perm + (nu, nu + 1)), atol=1e-12)


def test_order_two_scalars_equal_pairwise_tensor_products():
    """For 0e output at correlation 2, each channel's output is a linear combination of the
    e3nn tensor-product invariants x0 x0, x1.x1, x2.x2 (plus the linear term x0), and every one
    of them is used: a least-squares fit over many nodes has zero residual and full rank."""
    with _x64():
        policy = get_policy("fp64")
        n = 64
        x, _ = _inputs(13, n=n, dtype=jnp.float64)
        species = jnp.zeros((n,), jnp.int32)
        w = _weights(14, correlation=2, keep="0e", dtype=jnp.float64)
        y = symmetric_contraction(x, species, w, correlation=2, keep_irrep_out="0e", policy=policy)
        tp = e3nn.tensor_product(x, x, filter_ir_out=["0e"])  # [n, c, 0e pairs]
        # keep the symmetric (diagonal-l) invariants; cross terms of different l have no 0e
        assert tp.irreps.num_irreps == 3
        for c in range(N_CHANNELS):
            design = np.concatenate(
                [np.asarray(tp.array[:, c, :]), np.asarray(x.array[:, c, :1])], axis=1
            )  # [n, 4]
            target = np.asarray(y.array[:, c, 0])
            coef, *_ = np.linalg.lstsq(design, target, rcond=None)
            np.testing.assert_allclose(design @ coef, target, rtol=1e-9, atol=1e-10)
            assert np.all(np.abs(coef) > 1e-6), coef  # every invariant contributes
        # and a wrong design (dropping the l=2 invariant) cannot fit
        design = np.asarray(tp.array[:, 0, :2])
        coef, *_ = np.linalg.lstsq(design, np.asarray(y.array[:, 0, 0]), rcond=None)
        assert np.abs(design @ coef - np.asarray(y.array[:, 0, 0])).max() > 1e-3


def test_species_select_their_weights():
    """Swapping the species rows of the weights equals swapping the species of the nodes."""
    policy = get_policy("fp32")
    w = _weights(15, correlation=3, keep="0e+1o")
    x, species = _inputs(16)
    f = lambda ws, sp: (
        symmetric_contraction(x, sp, ws, correlation=3, keep_irrep_out="0e+1o", policy=policy).array
    )
    w_swapped = {k: v[::-1] for k, v in w.items()}
    np.testing.assert_allclose(f(w_swapped, 1 - species), f(w, species), rtol=1e-6)
    assert float(jnp.abs(f(w, 1 - species) - f(w, species)).max()) > 1e-3


def test_update_stage_dtype_and_mixed_precision_error():
    x, species = _inputs(17)
    layer = SymmetricContraction(
        keep_irrep_out="0e+1o", correlation=3, n_species=N_SPECIES, policy=get_policy("fp32")
    )
    params = layer.init(jax.random.PRNGKey(18), x, species)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
    ref = layer.apply(params, x, species).array
    errors = {}
    for name in ("bf16-mixed", "fp16-mixed", "bf16-pure"):
        policy = get_policy(name)
        y = layer.clone(policy=policy).apply(params, x, species)
        assert y.dtype == policy.dtype("update"), (name, y.dtype)
        rel = float(jnp.linalg.norm(y.array.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
        errors[name] = rel
        assert rel < 5e-2, (name, rel)
    print("symmetric contraction relative error vs fp32:", errors)


def test_gradients_finite_and_jit_consistent():
    policy = get_policy("fp32")
    w = _weights(19, correlation=3, keep="0e+1o")
    x, species = _inputs(20)

    def loss(ws, xx):
        y = symmetric_contraction(
            xx, species, ws, correlation=3, keep_irrep_out="0e+1o", policy=policy
        )
        return jnp.sum(y.array**2)

    g_w, g_x = jax.grad(loss, argnums=(0, 1))(w, x)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves((g_w, g_x)))
    np.testing.assert_allclose(jax.jit(loss)(w, x), loss(w, x), rtol=1e-5)
