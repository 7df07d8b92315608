"""The potential: forces and stress against finite differences (FP64), padding, jit, recompiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax import testing
from mpnn_jax.potential import init_params, make_energy_fn, make_potential, make_predictor
from mpnn_jax.precision import audit

SIZES = dict(n_layers=2, hidden_irreps="3x0e+2x1o+2x2e", max_ell=2, n_basis=6, radial_features=(8,))
TINY = dict(n_layers=1, hidden_irreps="2x0e+1x1o", max_ell=1, n_basis=4, radial_features=(4,))


def _model(policy="fp32", sizes=SIZES):
    return testing.tiny_model("nequip", policy=policy, **sizes)


def _single_energy(model, params):
    energy = jax.jit(make_energy_fn(model, padded=False))
    return lambda g: float(energy(params, g))


@pytest.mark.parametrize("kind", [pytest.param("molecule", marks=pytest.mark.slow), "periodic"])
def test_forces_match_finite_differences_fp64(x64, kind):
    rng = np.random.default_rng(1)
    make = testing.molecule_graph if kind == "molecule" else testing.periodic_graph
    g = make(rng, n_atoms=4, cutoff=3.0, dtype="float64")
    model = _model("fp64")
    params = testing.random_params(model, g, padded=False)
    out = jax.jit(make_predictor(model, padded=False))(params, g)
    assert out["forces"].dtype == jnp.float64
    fd = testing.finite_difference_forces(_single_energy(model, params), g, eps=1e-5)
    err = np.max(np.abs(np.asarray(out["forces"]) - fd)) / np.max(np.abs(fd))
    print(f"{kind}: forces vs central differences, relative error {err:.2e}")
    assert np.max(np.abs(fd)) > 1e-3  # a nontrivial check
    assert err < 1e-6


def test_stress_matches_finite_strain_fp64(x64):
    rng = np.random.default_rng(2)
    g = testing.periodic_graph(rng, n_atoms=4, cutoff=3.0, dtype="float64")
    model = _model("fp64")
    params = testing.random_params(model, g, padded=False)
    out = jax.jit(make_predictor(model, padded=False))(params, g)
    fd = testing.finite_difference_stress(_single_energy(model, params), g, eps=1e-5)
    stress = np.asarray(out["stress"][0])
    err = np.max(np.abs(stress - fd)) / np.max(np.abs(fd))
    print(f"stress vs finite strain, relative error {err:.2e}")
    assert np.max(np.abs(fd)) > 1e-5
    np.testing.assert_allclose(stress, stress.T, atol=1e-12)
    assert err < 1e-6


@pytest.fixture(scope="module")
def batch_and_params():
    rng = np.random.default_rng(3)
    graphs = [
        testing.molecule_graph(rng, n_atoms=5),
        testing.periodic_graph(rng, n_atoms=3),
        testing.molecule_graph(rng, n_atoms=3),
    ]
    real = testing.batch(graphs)
    model = _model()
    params = testing.random_params(model, real, padded=False)
    return model, params, real


def test_padding_invariance_and_exact_zeros(batch_and_params):
    model, params, real = batch_and_params
    n, e = int(real.n_node.sum()), int(real.n_edge.sum())
    predict = jax.jit(make_predictor(model))
    ref = jax.jit(make_predictor(model, padded=False))(params, real)
    for extra_nodes, extra_edges, n_graph in [(1, 0, 4), (7, 40, 6)]:
        out = predict(
            params,
            testing.pad(real, n_node=n + extra_nodes, n_edge=e + extra_edges, n_graph=n_graph),
        )
        for key in ("energy", "stress"):
            np.testing.assert_allclose(out[key][:3], ref[key], rtol=1e-5, atol=1e-6)
            assert np.all(np.asarray(out[key][3:]) == 0.0)
        for key in ("forces", "node_energies"):
            np.testing.assert_allclose(out[key][:n], ref[key], rtol=1e-5, atol=1e-6)
            assert np.all(np.asarray(out[key][n:]) == 0.0)
    # molecules have zero stress, the periodic graph does not
    assert np.all(np.asarray(ref["stress"])[[0, 2]] == 0.0)
    assert np.max(np.abs(np.asarray(ref["stress"][1]))) > 0


def test_energy_fn_consistent_with_predictor(batch_and_params):
    model, params, real = batch_and_params
    g = testing.pad(real, n_node=16, n_edge=int(real.n_edge.sum()) + 8, n_graph=4)
    out = jax.jit(make_predictor(model))(params, g)
    energy_fn = make_energy_fn(model)
    e = jax.jit(energy_fn)(params, g)
    np.testing.assert_allclose(float(e), float(np.sum(out["energy"])), rtol=1e-6)

    def e_of_pos(pos):
        return energy_fn(params, g._replace(nodes={**g.nodes, "positions": pos}))

    forces = -jax.jit(jax.grad(e_of_pos))(jnp.asarray(g.nodes["positions"]))
    np.testing.assert_allclose(np.asarray(forces), np.asarray(out["forces"]), atol=1e-5)


@pytest.mark.slow  # 17 s (eager E+F+stress); the jitted predictor is checked against fp64 elsewhere
def test_jit_equals_no_jit():
    rng = np.random.default_rng(4)
    g = testing.pad(
        testing.periodic_graph(rng, n_atoms=2, cell_length=3.0), n_node=3, n_edge=64, n_graph=2
    )
    model = _model(sizes=TINY)
    params = init_params(model, jax.random.PRNGKey(0), g)
    predict = make_predictor(model)
    out_jit = jax.jit(predict)(params, g)
    out = predict(params, g)
    for k in out:
        np.testing.assert_allclose(np.asarray(out[k]), np.asarray(out_jit[k]), rtol=1e-5, atol=1e-6)


def test_two_buckets_compile_twice(batch_and_params):
    model, params, _ = batch_and_params
    rng = np.random.default_rng(5)
    traces = []
    predict = make_predictor(model)

    @jax.jit
    def fn(params, graph):
        traces.append(1)  # runs once per trace
        return predict(params, graph)

    buckets = [(16, 256, 4), (40, 1024, 8)]
    n_eval = 0
    for n_mol in (1, 2, 3, 4, 5, 6):
        graphs = [
            testing.molecule_graph(rng, n_atoms=int(rng.integers(2, 5))) for _ in range(n_mol)
        ]
        b = testing.batch(graphs)
        n, e, ng = int(b.n_node.sum()), int(b.n_edge.sum()), len(graphs)
        bucket = next(bk for bk in buckets if n < bk[0] and e <= bk[1] and ng < bk[2])
        out = fn(params, testing.pad(b, n_node=bucket[0], n_edge=bucket[1], n_graph=bucket[2]))
        assert np.all(np.isfinite(np.asarray(out["energy"])))
        n_eval += 1
    print(f"{n_eval} batches, {len(traces)} traces")
    assert len(traces) <= 2


def test_make_potential_and_params_fp32(batch_and_params):
    model, params, real = batch_and_params
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
    g = testing.pad(real, n_node=16, n_edge=int(real.n_edge.sum()), n_graph=4)
    out = make_potential(model, params)(g)
    assert out["energy"].shape == (4,) and out["forces"].shape == (16, 3)
    assert out["stress"].shape == (4, 3, 3) and out["node_energies"].shape == (16,)


@pytest.mark.parametrize("limit", [64, 0])
def test_cell_of_edges_is_exact_and_its_transpose_does_not_scatter(limit, monkeypatch):
    """The one-hot cell selection equals the gather bit for bit, and its transpose (the cell's
    share of the stress) is a reduction: no edge-to-cell scatter-add (GPU atomics that all land
    on nine words per graph); above the graph limit it is the gather again."""
    from mpnn_jax import potential

    monkeypatch.setattr(potential, "CELL_ONEHOT_MAX_GRAPHS", limit)
    rng = np.random.default_rng(7)
    cell = jnp.asarray(rng.normal(size=(3, 3, 3)) * 4.0, jnp.float32)  # [n_graphs, 3, 3]
    edge_graph = jnp.asarray(rng.integers(0, 3, size=50), jnp.int32)  # [n_edges]
    got = jax.jit(potential.cell_of_edges)(cell, edge_graph)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(cell)[np.asarray(edge_graph)])
    w = jnp.asarray(rng.normal(size=(50, 3, 3)), jnp.float32)

    def f(c):
        return jnp.sum(potential.cell_of_edges(c, edge_graph) * w)

    expected = np.zeros((3, 3, 3))
    np.add.at(expected, np.asarray(edge_graph), np.asarray(w, np.float64))
    np.testing.assert_allclose(
        np.asarray(jax.jit(jax.grad(f))(cell)), expected, rtol=1e-5, atol=1e-5
    )
    # every equation of the gradient (the audit's walk of the jaxpr, sub-jaxprs included)
    records = audit(jax.grad(f), cell).records
    scatters = [r for r in records if r.primitive.startswith("scatter")]
    assert len(scatters) == (0 if limit else 1), scatters
