"""mpnn_jax.xla: per-model XLA options (NequIP on the e3nn backend on GPUs only, as measured)
reach the compiler and change no numbers."""

import doctest

import jax
import numpy as np
import pytest

from mpnn_jax import xla
from mpnn_jax.benchmark import measure
from mpnn_jax.testing import molecule_graph, random_params, tiny_model

NEQUIP = dict(
    n_layers=2, hidden_irreps="4x0e+3x1o+2x2e", max_ell=2, n_basis=6, radial_features=(8,)
)


def test_options_by_model_platform_and_environment(monkeypatch):
    monkeypatch.delenv("MPNN_JAX_XLA_OPTIONS", raising=False)
    nequip, mace = tiny_model("nequip"), tiny_model("mace")
    assert xla.options_for(nequip, "gpu") == xla.GPU_OPTIONS
    assert xla.options_for(nequip, "cuda") == xla.GPU_OPTIONS
    assert xla.options_for(nequip, "cpu") == {}
    assert xla.options_for(nequip.clone(backend="cueq"), "gpu") == {}  # measured 1% slower
    assert xla.options_for(mace, "gpu") == {}  # measured 7-11% slower
    assert xla.options_for(nequip.clone(backend="pallas"), "gpu") == {}
    assert xla.options_for(nequip.clone(backend="auto"), "cpu") == {}
    assert xla.options_for(None, "gpu") == {}
    on_gpu = jax.default_backend() == "gpu"
    assert xla.options_for(nequip) == (xla.GPU_OPTIONS if on_gpu else {})
    monkeypatch.setenv("MPNN_JAX_XLA_OPTIONS", "none")
    assert xla.options_for(nequip, "gpu") == {}
    monkeypatch.setenv("MPNN_JAX_XLA_OPTIONS", "gpu")
    assert xla.options_for(mace, "cpu") == xla.GPU_OPTIONS
    assert xla.options_for(None) == xla.GPU_OPTIONS
    monkeypatch.setenv("MPNN_JAX_XLA_OPTIONS", "fast")
    with pytest.raises(ValueError, match="MPNN_JAX_XLA_OPTIONS"):
        xla.options_for(nequip)


def test_options_reach_the_compiler():
    # an option XLA does not know is refused at compile time: the dict is really passed on
    f = xla.jit(lambda x: x + 1.0, compiler_options={"xla_no_such_option": "1"})
    with pytest.raises(Exception, match="xla_no_such_option"):
        f(1.0)


def test_gpu_options_change_no_numbers(monkeypatch):
    """The NequIP predictor (energy and forces) compiled without multi-output fusion equals the
    default program to rounding (the pass exists on the CPU too, so this is a second program)."""
    from mpnn_jax.potential import make_predictor

    graph = molecule_graph(np.random.default_rng(0), n_atoms=8)
    model = tiny_model("nequip", **NEQUIP)
    # init's distribution drawn in NumPy (compiling init costs a third here)
    params = random_params(model, graph, 1, padded=False)
    predict = make_predictor(model, padded=False)  # one real graph, no padding graph
    monkeypatch.setenv("MPNN_JAX_XLA_OPTIONS", "none")
    ref = xla.jit(predict, model=model)(params, graph)
    monkeypatch.setenv("MPNN_JAX_XLA_OPTIONS", "gpu")
    out = xla.jit(predict, model=model)(params, graph)
    for key in ("energy", "forces"):
        np.testing.assert_allclose(out[key], ref[key], rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(ref["forces"])).max() > 1e-3


def test_benchmark_rows_record_the_options(monkeypatch):
    from mpnn_jax import benchmark as bm
    from mpnn_jax.data import SpeciesTable

    monkeypatch.setenv("MPNN_JAX_XLA_OPTIONS", "gpu")
    system = bm.build_system("water", 24, cutoff=5.0, species_table=SpeciesTable((1, 8)))
    params = bm.init_for("nequip-S", system, cutoff=5.0)
    row = measure(
        size="nequip-S", system=system, preset="fp32", mode="ef", params=params,
        avg_num_neighbors=bm.avg_neighbours(system), cutoff=5.0, repeats=1, n_inputs=1, warmup=1,
    )  # fmt: skip
    assert row["xla_options"] == xla.GPU_OPTIONS
    assert row["median_ms"] > 0
    assert bm.device_info()["xla_options"] == "gpu"


def test_doctests():
    assert doctest.testmod(xla).failed == 0
