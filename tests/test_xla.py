"""mpnn_jax.xla: per-program XLA options (GPU only by default) reach the compiler and change no
numbers."""

import doctest

import jax
import numpy as np
import pytest

from mpnn_jax import xla
from mpnn_jax.benchmark.timing import device_info


def test_options_by_platform_and_environment(monkeypatch):
    monkeypatch.delenv("MPNN_JAX_XLA_OPTIONS", raising=False)
    assert xla.compiler_options("gpu") == xla.GPU_OPTIONS
    assert xla.compiler_options("cuda") == xla.GPU_OPTIONS
    assert xla.compiler_options("cpu") == {}
    assert xla.compiler_options() == ({} if jax.default_backend() == "cpu" else xla.GPU_OPTIONS)
    monkeypatch.setenv("MPNN_JAX_XLA_OPTIONS", "none")
    assert xla.compiler_options("gpu") == {}
    monkeypatch.setenv("MPNN_JAX_XLA_OPTIONS", "gpu")
    assert xla.compiler_options("cpu") == xla.GPU_OPTIONS
    assert device_info()["xla_options"] == xla.GPU_OPTIONS
    monkeypatch.setenv("MPNN_JAX_XLA_OPTIONS", "fast")
    with pytest.raises(ValueError, match="MPNN_JAX_XLA_OPTIONS"):
        xla.compiler_options()


def test_options_reach_the_compiler():
    # an option XLA does not know is refused at compile time: the dict is really passed on
    f = xla.jit(lambda x: x + 1.0, compiler_options={"xla_no_such_option": "1"})
    with pytest.raises(Exception, match="xla_no_such_option"):
        f(1.0)


def test_gpu_options_change_no_numbers(monkeypatch):
    """The NequIP predictor (energy and forces) compiled without multi-output fusion equals the
    default program to rounding (the pass exists on the CPU too, so this is a real second
    program)."""
    from mpnn_jax.potential import init_params, make_predictor
    from mpnn_jax.testing import molecule_graph, tiny_model

    graph = molecule_graph(np.random.default_rng(0), n_atoms=8)
    model = tiny_model(
        "nequip", n_layers=2, hidden_irreps="4x0e+3x1o+2x2e", max_ell=2, n_basis=6,
        radial_features=(8,),
    )  # fmt: skip
    params = init_params(model, jax.random.PRNGKey(0), graph, padded=False)
    predict = make_predictor(model, padded=False)  # one real graph, no padding graph
    monkeypatch.setenv("MPNN_JAX_XLA_OPTIONS", "none")
    ref = xla.jit(predict)(params, graph)
    monkeypatch.setenv("MPNN_JAX_XLA_OPTIONS", "gpu")
    out = xla.jit(predict)(params, graph)
    for key in ("energy", "forces"):
        np.testing.assert_allclose(out[key], ref[key], rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(ref["forces"])).max() > 0


def test_doctests():
    assert doctest.testmod(xla).failed == 0
