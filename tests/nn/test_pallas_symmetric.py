"""The order-3 symmetric contraction as sparse Pallas forms (the ``"pallas"`` backend's product
basis) against dense FP64 references: the forms' values, their first and second derivatives
(each derivative is a kernel call of its own), the whole contraction, its bf16-mixed error, the
audit's reading, and a correlation-3 MACE through the backend (energies, forces, the loss
gradient with the forces' derivative, equivariance, FP64 finite differences).

On CPU the kernels run in Pallas's interpreter (the code the GPU compiles through Triton).
"""

from __future__ import annotations

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mpnn_jax.nn import pallas_symmetric as ps
from mpnn_jax.nn import symmetric_contraction as sc
from mpnn_jax.precision import audit, get_policy

from .backend_checks import (
    check_equivariance,
    check_fp64_finite_differences,
    check_model_matches_reference,
    kernel_stores,
    model_case,
)

SPEC = ps.FormSpec("0e+1o+2e", "1o")  # d = 9, Q = 5 x 3: an output with m > 1


def _operands(spec, n=5, channels=4, dtype=jnp.float64):
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    d, q = spec.d, spec.n_q
    x, y, z = (jax.random.normal(kk, (n, d, channels), dtype) for kk in k[:3])
    return x, y, z, jax.random.normal(k[3], (n, q, channels), dtype)


def test_docstring_example():
    import doctest

    result = doctest.testmod(ps, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_basis_is_symmetric_and_the_terms_are_its_non_zeros():
    u = ps.basis3(SPEC)
    assert u.shape == (9, 9, 9, SPEC.n_q)
    nnz = int(np.sum(np.abs(u) > 1e-12))
    assert 0 < nnz < u.size // 4  # sparse: the point of the forms
    assert sum(map(len, ps.terms(SPEC, "H"))) == nnz == sum(map(len, ps.terms(SPEC, "G")))
    np.testing.assert_array_equal(u, u.transpose(1, 0, 2, 3))
    # MACE MP-S: 353 of 32,768 entries for its 0e output
    assert sum(map(len, ps.terms(ps.FormSpec("0e+1o+2e+3o", "0e"), "H"))) == 353
    with pytest.raises(ValueError, match="no order-3"):
        ps.basis3(ps.FormSpec("0e", "1o"))


def test_forms_match_dense_einsums_in_fp64(x64):
    x, y, z, h = _operands(SPEC)
    u = jnp.asarray(ps.basis3(SPEC))
    got_h = ps.form_h(x, y, z, SPEC)
    got_g = ps.form_g(y, z, h, SPEC)
    assert got_h.dtype == jnp.float64 and got_h.shape == (5, SPEC.n_q, 4)
    np.testing.assert_allclose(
        got_h, jnp.einsum("abjq,nac,nbc,njc->nqc", u, x, y, z), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(
        got_g, jnp.einsum("abjq,nbc,njc,nqc->nac", u, y, z, h), rtol=1e-12, atol=1e-12
    )


def test_forms_first_and_second_derivatives_in_fp64(x64):
    """Reverse over reverse: the backward passes are the forms again (custom VJPs)."""
    x, y, z, h = _operands(SPEC, n=3, channels=2)
    check_grads(lambda a, b, c: ps.form_h(a, b, c, SPEC), (x, y, z), order=2, modes=["rev"])
    check_grads(lambda a, b, c: ps.form_g(a, b, c, SPEC), (y, z, h), order=2, modes=["rev"])


KEEP = "0e+1o"


def _contraction_case(dtype=jnp.float32, n=7):
    x = e3nn.normal("0e+1o", jax.random.PRNGKey(0), (n, 4), dtype=dtype)
    species = jnp.arange(n) % 2
    shapes = sc.weight_shapes(
        x.irreps, correlation=3, keep_irrep_out=KEEP, n_channels=4, n_species=2
    )
    keys = jax.random.split(jax.random.PRNGKey(1), len(shapes))
    weights = {
        name: jax.random.normal(k, s, dtype) / s[1]
        for k, (name, s) in zip(keys, shapes.items(), strict=True)
    }
    return x, species, weights


def _contract(x, species, weights, policy, order3):
    return sc.symmetric_contraction(
        x, species, weights, correlation=3, keep_irrep_out=KEEP, policy=policy, order3=order3
    ).array


def test_contraction_and_its_derivatives_match_the_dense_path_in_fp64(x64):
    x, species, weights = _contraction_case(jnp.float64)
    p64 = get_policy("fp64")
    ref = _contract(x, species, weights, p64, None)
    out = _contract(x, species, weights, p64, ps.order3_term)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)

    def loss(order3):
        def f(xa, w):
            xs = e3nn.IrrepsArray(x.irreps, xa)
            return jnp.sum(jnp.sin(_contract(xs, species, w, p64, order3)))

        return jax.grad(f, argnums=(0, 1))

    g_ref = loss(None)(x.array, weights)
    g_out = loss(ps.order3_term)(x.array, weights)
    for a, b in zip(jax.tree_util.tree_leaves(g_out), jax.tree_util.tree_leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_bf16_mixed_error_no_larger_than_the_dense_path():
    """Same inputs: the forms' bf16-mixed RMS error against FP32 is within noise of the dense
    path's (both round their output to BF16; the dense path also rounds the basis and its
    ``[n, c, d, d]`` intermediate, the forms sum in FP32)."""
    x, species, weights = _contraction_case(n=64)
    p = get_policy("bf16-mixed")
    exact = np.asarray(_contract(x, species, weights, get_policy("fp32"), None), np.float64)
    err = {
        name: np.sqrt(np.mean((np.asarray(_contract(x, species, weights, p, o3), np.float64)
                               - exact) ** 2)) / np.sqrt(np.mean(exact**2))
        for name, o3 in (("dense", None), ("forms", ps.order3_term))
    }  # fmt: skip
    print(f"bf16-mixed contraction relative RMS error vs fp32: {err}")
    assert 0 < err["forms"] <= 1.1 * err["dense"] and err["forms"] < 1e-2


def _stage_output_programs(monkeypatch, setting):
    """bf16-mixed contraction: its value, the gradient of a loss and a second derivative (the
    gradient of the gradient's norm, as a force loss differentiates forces), traced with
    SPARSE_STAGE_OUTPUT set to ``setting``; and the dtypes the forms' kernels store."""
    monkeypatch.setattr(ps, "SPARSE_STAGE_OUTPUT", setting)
    x, species, weights = _contraction_case(n=16)
    p = get_policy("bf16-mixed")

    def energy(xa, w):
        xs = e3nn.IrrepsArray(x.irreps, xa)
        return jnp.sum(jnp.sin(_contract(xs, species, w, p, ps.order3_term).astype(jnp.float32)))

    def force_loss(xa, w):
        return jnp.sum(jax.grad(energy)(xa, w) ** 2)

    xa = x.array.astype(jnp.bfloat16)
    values = (energy(xa, weights), jax.grad(energy)(xa, weights))
    values += (jax.grad(force_loss, argnums=(0, 1))(xa, weights),)
    jaxpr = jax.make_jaxpr(jax.grad(force_loss, argnums=(0, 1)))(xa, weights)
    return jax.tree_util.tree_leaves(values), kernel_stores(jaxpr.jaxpr, "mpnn_sparse")


def test_stage_output_stores_bf16_with_bit_identical_values(monkeypatch):
    """SPARSE_STAGE_OUTPUT: a derivative's kernel rounds its FP32 sums to its operand's BF16 as
    it stores, the rounding the cast after it did: the value, the gradient and a second
    derivative are bit-identical; the derivatives of BF16 operands store BF16 (without the
    setting every form stores FP32), the forward value and the cotangents of its FP32 output
    still FP32."""
    off, stored_off = _stage_output_programs(monkeypatch, False)
    on, stored_on = _stage_output_programs(monkeypatch, True)
    assert len(stored_on) == len(stored_off) >= 10  # H, its G derivatives, theirs
    assert set(stored_off) == {"float32"} and set(stored_on) == {"bfloat16", "float32"}
    assert stored_on.count("bfloat16") >= len(stored_on) // 2
    assert len(on) == len(off) and all(np.isfinite(np.asarray(a, np.float32)).all() for a in on)
    for a, b in zip(on, off, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_audit_reads_each_form_as_one_bf16_contraction_with_fp32_sums():
    x, species, weights = _contraction_case()
    p = get_policy("bf16-mixed")

    def f(xa):
        xs = e3nn.IrrepsArray(x.irreps, xa)
        return jnp.sum(_contract(xs, species, weights, p, ps.order3_term).astype(jnp.float32))

    report = audit(jax.grad(f), x.array)
    forms = [r for r in report.records if r.primitive == "sparse_form"]
    assert {r.backward for r in forms} == {False, True}
    assert all(r.stage == "update" and r.accum == "f32" for r in forms)
    assert all(set(r.in_dtypes) <= {"bf16", "f32"} for r in forms)
    assert any(r.in_dtypes == ("bf16", "bf16", "bf16") for r in forms if not r.backward)
    assert report.check(p) == []
    # a form that reads and stores BF16 (SPARSE_STAGE_OUTPUT's derivatives): the audit reads the
    # FP32 sums inside the kernel, not the stored dtype
    xb = jnp.swapaxes(x.array, 1, 2).astype(jnp.bfloat16)  # [n, d, c]
    spec = ps.FormSpec("0e+1o", "0e")
    (rec,) = audit(lambda a: ps.form_h(a, a, a, spec, jnp.bfloat16), xb).records
    assert rec.in_dtypes == ("bf16",) * 3 and rec.out_dtypes == ("bf16",) and rec.accum == "f32"


# --- a correlation-3 MACE through the pallas backend ------------------------------------------
@pytest.fixture(scope="module")
def mace3():
    return model_case("mace", "pallas", second_order=True, correlation=3)


def test_mace_correlation3_matches_e3nn_with_the_loss_gradient(mace3):
    params, graph, _, fns = mace3
    check_model_matches_reference(fns, params, graph, "pallas", "mace correlation 3")
    program = str(jax.make_jaxpr(fns["pallas"])(params, graph))
    assert "mpnn_sparse_H" in program and "mpnn_sparse_G" in program  # the forms ran


def test_mace_correlation3_equivariance(mace3):
    params, graph, _, fns = mace3
    check_equivariance(fns["pallas"], params, graph)


def test_mace_correlation3_forces_match_fp64_finite_differences(mace3, x64):
    params, _, mods, _ = mace3
    model64 = mods["pallas"].clone(policy=get_policy("fp64"))
    check_fp64_finite_differences(model64, params, "mace correlation 3 pallas")


def test_off_switch_and_unusable_channels_take_the_dense_path(monkeypatch):
    assert ps.usable(4) and ps.usable(256) and not ps.usable(6)
    monkeypatch.setattr(ps, "SPARSE_CHANNEL_BLOCK", 64)
    assert ps.usable(192) and not ps.usable(96)


def test_bases_above_the_term_limit_take_the_dense_path(monkeypatch):
    """A basis with more non-zero terms than SPARSE_MAX_TERMS is declined per irrep: the same
    values as the dense path, and no form in the program for that irrep."""
    x, species, weights = _contraction_case()
    p32 = get_policy("fp32")
    n_1o = sum(map(len, ps.terms(ps.FormSpec("0e+1o", "1o"), "H")))
    n_0e = sum(map(len, ps.terms(ps.FormSpec("0e+1o", "0e"), "H")))
    assert n_0e < n_1o

    def forms(limit):  # the form calls in the program
        monkeypatch.setattr(ps, "SPARSE_MAX_TERMS", limit)
        jaxpr = jax.make_jaxpr(lambda a: _contract(a, species, weights, p32, ps.order3_term))(x)
        return str(jaxpr).count("name=sparse_form")

    assert forms(n_1o) == 2 and forms(0) == 0
    assert forms(n_0e) == 1  # 0e through the forms, 1o dense
    np.testing.assert_allclose(
        _contract(x, species, weights, p32, ps.order3_term),
        _contract(x, species, weights, p32, None),
        rtol=1e-5,
        atol=1e-5,
    )
