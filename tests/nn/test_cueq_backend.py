"""The cuEquivariance backend (``"cueq"``) against the e3nn reference: the convolution and the
symmetric contraction on random inputs with padding (values and gradients, FP32 and FP64), the
stage dtypes, and whole MACE / NequIP models with the same parameters: energies, forces, a
parameter gradient of an energy + force loss (second derivatives through the kernels), rotation
equivariance and forces = -dE/dr by FP64 finite differences.

On CPU the backend runs cuequivariance_jax's pure-JAX "naive" method, whose JVP and transpose
rules are the ones the CUDA kernels use on GPUs. Skipped where ``cuequivariance_jax`` is missing.
"""

from __future__ import annotations

import json
from functools import partial

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("cuequivariance_jax")

from repo_scripts import load_script  # noqa: E402

from mpnn_jax.nn import available_backends, get_backend  # noqa: E402
from mpnn_jax.nn import symmetric_contraction as sc  # noqa: E402
from mpnn_jax.nn.convolution import e3nn_convolution  # noqa: E402
from mpnn_jax.nn.cueq import (  # noqa: E402
    CueqBackend,
    cueq_convolution,
    cueq_symmetric_contraction,
    default_method,
)
from mpnn_jax.precision import get_policy  # noqa: E402

from .backend_checks import (  # noqa: E402
    FILTER,
    MODELS,
    N_NODES,
    check_equivariance,
    check_fp64_finite_differences,
    check_model_matches_reference,
    conv_inputs,
    model_case,
    rel,
)

_rel, _conv_inputs = rel, conv_inputs


def _conv(backend: str, policy):
    """``(x, sh, w, senders, receivers, mask) -> [n_nodes, irreps]`` of ``backend`` (not jitted)."""
    fn = e3nn_convolution if backend == "e3nn" else partial(cueq_convolution, method="naive")
    return partial(fn, irreps_out=FILTER, avg_num_neighbors=3.0, policy=policy)


def _both_convs(policy, *args):
    """The reference and the cueq convolution of ``args``, each jitted."""
    return tuple(jax.jit(_conv(b, policy))(*args) for b in ("e3nn", "cueq"))


# --- registry -----------------------------------------------------------------------------------
def test_docstring_example():
    import doctest

    import mpnn_jax.nn.cueq as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_registered_after_the_reference_with_naive_method_on_cpu():
    assert available_backends()[:2] == ["e3nn", "cueq"]
    backend = get_backend("cueq")
    assert isinstance(backend, CueqBackend) and backend.name == "cueq"
    if jax.default_backend() == "cpu":
        assert default_method() == "naive"
    with pytest.raises(ValueError, match="unknown cueq method"):
        CueqBackend("fused_tp")


# --- the convolution ----------------------------------------------------------------------------
def test_convolution_matches_reference_fp32_and_bf16_mixed():
    """FP32: equal to rounding, with unequal multiplicities (channel blocks split to their gcd).
    bf16-mixed: the stage dtypes at the kernel's boundary, and an error no worse than the
    reference's own rounding."""
    x, sh, w, s, r, m = _conv_inputs("2x0e+1x1o+1x1e")
    ref, out = _both_convs(get_policy("fp32"), x, sh, w, s, r, m)
    assert out.irreps == ref.irreps and out.dtype == jnp.float32
    err = _rel(out.array, ref.array)
    print(f"cueq convolution fp32: relative error {err:.1e}")
    assert err < 1e-5
    # nodes that receive only padded edges get exactly zero
    lonely = np.setdiff1d(np.arange(N_NODES), np.asarray(r)[np.asarray(m)])
    assert lonely.size > 0 and np.all(np.asarray(out.array)[lonely] == 0.0)

    policy = get_policy("bf16-mixed")
    low_ref, low_out = _both_convs(policy, x, sh, w, s, r, m)
    assert low_out.dtype == low_ref.dtype == policy.dtype("aggregation")
    err_out, err_ref = _rel(low_out.array, ref.array), _rel(low_ref.array, ref.array)
    print(f"bf16-mixed convolution error vs fp32: cueq {err_out:.1e}, e3nn {err_ref:.1e}")
    assert err_out <= 2 * err_ref + 1e-6
    jaxpr = jax.make_jaxpr(_conv("cueq", policy))(x, sh, w, s, r, m)
    [eqn] = [e for e in jaxpr.eqns if e.primitive.name == "segmented_polynomial"]
    w_in, x_in, y_in = (v.aval.dtype for v in eqn.invars[:3])
    assert x_in == policy.dtype("aggregation")  # gathered (and its gradient summed) wide
    assert w_in == y_in == policy.dtype("messages")
    assert eqn.outvars[0].aval.dtype == policy.dtype("aggregation")


def test_convolution_matches_reference_fp64_values_and_gradients(x64):
    x, sh, w, s, r, m = _conv_inputs("2x0e+2x1o", dtype=jnp.float64)
    policy = get_policy("fp64")
    results = {}
    for backend in ("e3nn", "cueq"):
        conv = _conv(backend, policy)

        def loss(x, y, w, conv=conv):
            out = conv(x, y, w, s, r, m)
            return jnp.sum(jnp.sin(out.array)), out

        results[backend] = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(x, sh, w)
    (_, ref), g_ref = results["e3nn"]
    (_, out), g_out = results["cueq"]
    assert out.dtype == jnp.float64 and out.irreps == ref.irreps
    err = _rel(out.array, ref.array)
    g_err = max(_rel(getattr(a, "array", a), getattr(b, "array", b)) for a, b in zip(g_out, g_ref))
    print(f"cueq convolution fp64: relative error {err:.1e}, gradients {g_err:.1e}")
    assert err < 1e-12 and g_err < 1e-12
    assert np.all(np.asarray(g_out[2])[~np.asarray(m)] == 0.0)  # no gradient into padding


# --- the symmetric contraction ------------------------------------------------------------------
# MP-S's contraction, and output irreps that no order or only some orders reach (2e, 1e); the
# FP64 test below has a third case
SC_CASES = [("0e+1o+2e+3o", "0e", 3), ("0e+1o", "0e+1o+2e+1e", 2)]


def _sc_inputs(irreps_in, keep, corr, dtype=jnp.float32, n_channels=4, n_species=3):
    rng = np.random.default_rng(1)
    x = e3nn.normal(irreps_in, jax.random.PRNGKey(3), (N_NODES, n_channels), dtype=dtype)
    species = jnp.asarray(rng.integers(0, n_species, N_NODES), jnp.int32)
    shapes = sc.weight_shapes(
        x.irreps, correlation=corr, keep_irrep_out=keep, n_channels=n_channels,
        n_species=n_species,
    )  # fmt: skip
    weights = {
        k: jnp.asarray(rng.normal(size=v) / v[1], jnp.float32) for k, v in shapes.items()
    }  # float32 parameters, whatever the policy
    return x, species, weights


def _contraction(backend: str, **kw):
    """Jitted ``(x, species, weights) -> [n_nodes, channels, irreps_out]`` of ``backend``."""
    if backend == "e3nn":
        return jax.jit(partial(sc.symmetric_contraction, **kw))
    return jax.jit(partial(cueq_symmetric_contraction, method="naive", **kw))


@pytest.mark.parametrize("irreps_in, keep, corr", SC_CASES)
def test_symmetric_contraction_matches_reference_fp32(irreps_in, keep, corr):
    x, species, weights = _sc_inputs(irreps_in, keep, corr)
    kw = dict(correlation=corr, keep_irrep_out=keep, policy=get_policy("fp32"))
    ref, out = (_contraction(b, **kw)(x, species, weights) for b in ("e3nn", "cueq"))
    assert out.irreps == ref.irreps and out.shape == ref.shape and out.dtype == jnp.float32
    err = _rel(out.array, ref.array)
    print(f"cueq symmetric contraction fp32 {irreps_in} -> {keep}: relative error {err:.1e}")
    assert err < 1e-5


def test_symmetric_contraction_fp64_values_and_gradients(x64):
    x, species, weights = _sc_inputs("0e+1o", "0e+1o", 3, dtype=jnp.float64)
    weights = {k: v.astype(jnp.float64) for k, v in weights.items()}
    kw = dict(correlation=3, keep_irrep_out="0e+1o", policy=get_policy("fp64"))
    results = {}
    for backend in ("e3nn", "cueq"):
        fn = _contraction(backend, **kw)

        def loss(xa, w, fn=fn):
            return jnp.sum(jnp.sin(fn(e3nn.IrrepsArray(x.irreps, xa), species, w).array))

        results[backend] = jax.jit(jax.value_and_grad(loss, (0, 1)))(x.array, weights)
    (v_ref, g_ref), (v_out, g_out) = results["e3nn"], results["cueq"]
    assert abs(v_out / v_ref - 1) < 1e-12
    assert jax.tree_util.tree_structure(g_ref) == jax.tree_util.tree_structure(g_out)
    leaves = zip(jax.tree_util.tree_leaves(g_out), jax.tree_util.tree_leaves(g_ref))
    g_err = max(_rel(a, b) for a, b in leaves)
    print(f"cueq symmetric contraction fp64 gradients: relative error {g_err:.1e}")
    assert g_err < 1e-12


def test_symmetric_contraction_dtypes_bf16_mixed():
    policy = get_policy("bf16-mixed")
    x, species, weights = _sc_inputs("0e+1o", "0e+1o", 3)
    kw = dict(correlation=3, keep_irrep_out="0e+1o", policy=policy)
    ref, out = (_contraction(b, **kw)(x, species, weights) for b in ("e3nn", "cueq"))
    exact = _contraction("e3nn", **{**kw, "policy": get_policy("fp32")})(x, species, weights)
    assert out.dtype == ref.dtype == policy.dtype("update")
    err_out, err_ref = _rel(out.array, exact.array), _rel(ref.array, exact.array)
    print(f"bf16-mixed symmetric contraction error vs fp32: cueq {err_out:.1e}, e3nn {err_ref:.1e}")
    assert err_out <= 2 * err_ref + 1e-6


# --- whole models -------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=sorted(MODELS))
def models(request):
    """(name, params, graph, {backend: model}, {backend: jitted loss-and-grad}) of one model."""
    name = request.param
    # the parameter gradient for MACE only: NequIP runs the same convolution (compile time)
    return name, *model_case(name, "cueq", second_order=name == "mace")


def test_model_energy_forces_and_loss_gradient_match_e3nn(models):
    """Same parameters: same energies, forces and (MACE) parameter gradient of an energy + force
    loss."""
    name, params, graph, _, fns = models
    check_model_matches_reference(fns, params, graph, "cueq", name)


def test_model_rotation_inversion_equivariance(models):
    _, params, graph, _, fns = models
    check_equivariance(fns["cueq"], params, graph)


def test_mace_forces_match_fp64_finite_differences(models, x64):
    """Custom kernels have given non-conservative forces elsewhere: check -dE/dr in FP64."""
    name, params, _, mods, _ = models
    if name != "mace":
        pytest.skip("one model suffices: NequIP runs the same convolution")
    model64 = mods["cueq"].clone(policy=get_policy("fp64"))
    check_fp64_finite_differences(model64, params, "mace cueq")


# --- the benchmark entry point ------------------------------------------------------------------
@pytest.mark.slow
def test_quick_benchmark_writes_rows(tmp_path):
    bench = load_script("experiments/perf/cueq_vs_xla.py")
    out = tmp_path / "cueq.json"
    assert bench.main(["--quick", "--presets", "fp32", "--modes", "ef", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["backend"], r["mode"]) for r in rows] == [("e3nn", "ef"), ("cueq", "ef")]
    assert all(r["median_ms"] > 0 for r in rows)
    # the two backends give the same energy on the same input
    by_backend = {r["backend"]: r for r in rows if r["mode"] == "ef"}
    assert abs(by_backend["cueq"]["energy"] / by_backend["e3nn"]["energy"] - 1) < 1e-5


@pytest.mark.slow  # 20-30 s on 2 cores; the model tests above check the same physics
def test_quick_accuracy_check_agrees_with_e3nn(tmp_path):
    """experiments/perf/cueq_accuracy.py (run on the GPU for the CUDA kernels) keeps working: on
    CPU the cueq backend's fp32 forces equal e3nn's to FP32 rounding, both are equivariant, and the
    fp64 reference's finite difference matches its forces (the check's own floor)."""
    acc = load_script("experiments/perf/cueq_accuracy.py")
    out = tmp_path / "acc.json"
    assert acc.main(["--quick", "--presets", "fp32", "--out", str(out)]) == 0
    rows = {(r["backend"], r["preset"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {("e3nn", "fp64"), ("e3nn", "fp32"), ("cueq", "fp32")}
    assert rows[("e3nn", "fp64")]["conservation_err_mev_per_A"] < 0.01
    for backend in ("e3nn", "cueq"):
        r = rows[(backend, "fp32")]
        assert r["finite"] and r["forces_rel_rmse"] < 1e-5 and r["equivariance_rel_rmse"] < 1e-5
