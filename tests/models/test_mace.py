"""Physics tests of the MACE model: symmetries, finite differences, padding, precision, training.

Tiny sizes (4 channels, two layers) keep each compile short on a 2-core CPU; the module-scoped
fixtures compile every function once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mpnn_jax import testing
from mpnn_jax.models import build_model
from mpnn_jax.models.mace import MACE, channel_irreps
from mpnn_jax.potential import init_params, make_predictor
from mpnn_jax.precision import get_policy, loss_scale_for

from . import preset_params

CUTOFF = 3.0
SIZES = dict(
    num_channels=4,
    hidden_irreps="0e+1o",
    max_ell=2,
    correlation=3,
    num_interactions=2,
    n_basis=4,
    radial_features=(8,),
)
E0 = (-1.5, -3.0)  # eV per species


def _model(policy: str = "fp32", **overrides) -> MACE:
    kw = dict(
        n_species=2,
        policy=get_policy(policy),
        cutoff=CUTOFF,
        avg_num_neighbors=4.0,
        atomic_energies=E0,
        scale=1.3,
        shift=0.2,
        **SIZES,
    )
    kw.update(overrides)
    return MACE(**kw)


def _graph(dtype: str = "float32", seed: int = 0, n_atoms: int = 6):
    g = testing.molecule_graph(
        np.random.default_rng(seed), n_atoms=n_atoms, n_species=2, cutoff=CUTOFF, dtype=dtype
    )
    return g


def _pad(g):
    return testing.pad(g, n_node=int(g.n_node.sum()) + 2, n_edge=int(g.n_edge.sum()) + 8, n_graph=2)


@pytest.fixture(scope="module")
def setup():
    model = _model()
    graph = _pad(_graph())
    params = testing.random_params(model, graph)
    predict = jax.jit(make_predictor(model))
    return model, params, graph, predict


def test_params_are_float32_and_factory_builds_the_same_model(setup):
    model, _, graph, _ = setup
    for name in ("fp32", "bf16-mixed", "bf16-pure"):
        m = model.clone(policy=get_policy(name))
        shapes = jax.eval_shape(lambda g, m=m: init_params(m, jax.random.PRNGKey(0), g), graph)
        assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(shapes))
    built = build_model(
        "mace",
        policy="fp32",
        n_species=2,
        cutoff=CUTOFF,
        avg_num_neighbors=4.0,
        atomic_energies=list(E0),
        scale=1.3,
        shift=0.2,
        **SIZES,
    )
    assert built == model
    assert channel_irreps("0e+1o", 4) == channel_irreps("4x0e+4x1o", 4)
    with pytest.raises(ValueError):
        channel_irreps("3x0e+4x1o", 4)


def test_random_params_follow_init_shapes_and_scaling(setup):
    """``testing.random_params``: init's tree, shapes and dtypes; the symmetric contraction's
    ``[n_species, k, channels]`` weights drawn N(0, 1) / k, every other weight N(0, 1)."""
    model, params, graph, _ = setup
    shapes = jax.eval_shape(lambda g: init_params(model, jax.random.PRNGKey(0), g), graph)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(shapes)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for (_, x), s in zip(leaves, jax.tree_util.tree_leaves(shapes), strict=True):
        assert x.shape == s.shape and x.dtype == s.dtype
    is_sym = lambda p: str(p[-1].key).startswith(("w1_", "w2_", "w3_"))  # noqa: E731
    sym = [np.ravel(np.asarray(x) * x.shape[1]) for p, x in leaves if is_sym(p)]
    assert sym, "no symmetric contraction weights found"
    scaled = np.concatenate(sym)
    other = np.concatenate([np.ravel(np.asarray(x)) for p, x in leaves if not is_sym(p)])
    assert abs(np.std(scaled) - 1.0) < 0.2 and abs(np.std(other) - 1.0) < 0.1


def test_rotation_inversion_invariance_and_force_equivariance(setup):
    _, params, graph, predict = setup
    out = predict(params, graph)
    rng = np.random.default_rng(1)
    for improper in (False, True):
        rot = testing.random_o3(rng, improper=improper)
        out_r = predict(params, testing.transform_graph(graph, rotation=rot))
        np.testing.assert_allclose(out_r["energy"], out["energy"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            out_r["forces"], np.asarray(out["forces"]) @ rot.T, rtol=1e-4, atol=1e-5
        )
    assert float(jnp.abs(out["forces"]).max()) > 1e-3  # forces are not trivially zero


def test_translation_and_permutation_invariance(setup):
    _, params, graph, predict = setup
    out = predict(params, graph)
    shifted = testing.transform_graph(graph, translation=np.array([0.3, -1.7, 2.2]))
    out_t = predict(params, shifted)
    np.testing.assert_allclose(out_t["energy"], out["energy"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out_t["forces"], out["forces"], rtol=1e-4, atol=1e-5)

    g = _graph()
    perm = np.random.default_rng(2).permutation(int(g.n_node[0]))
    out_p = predict(params, _pad(testing.permute_graph(g, perm)))
    n = int(g.n_node[0])
    np.testing.assert_allclose(out_p["energy"], out["energy"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out_p["forces"][:n], out["forces"][:n][perm], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        out_p["node_energies"][:n], out["node_energies"][:n][perm], rtol=1e-5, atol=1e-6
    )


def test_padding_invariance_and_nan_safety(setup):
    model, params, big, predict = setup
    g = _graph()
    n = int(g.n_node[0])
    out = jax.jit(make_predictor(model, padded=False))(params, g)  # no padding at all
    # the padded graph of the fixture: padding nodes, zero-length padded edges, a padding graph
    assert np.all(np.asarray(big.nodes["positions"])[big.senders[-1]] == 0.0)
    out_big = predict(params, big)
    np.testing.assert_allclose(out_big["energy"][0], out["energy"][0], rtol=1e-6)
    f_scale = float(jnp.abs(out["forces"]).max())
    np.testing.assert_allclose(out_big["forces"][:n], out["forces"], rtol=0, atol=1e-6 * f_scale)
    assert np.all(np.asarray(out_big["forces"][n:]) == 0.0)
    assert np.all(np.asarray(out_big["energy"][1:]) == 0.0)
    # (parameter gradients through zero-length padded edges: test_one_training_step_without_nan)
    # a model applied to all-zero vectors with the mask off: value and gradient finite, zero edges
    e_fn = lambda v: jnp.sum(
        model.apply(
            params,
            v,
            big.nodes["species"],
            big.senders,
            big.receivers,
            jnp.zeros(big.senders.shape, bool),
        )
    )
    zeros = jnp.zeros((big.senders.shape[0], 3))
    value, grad = jax.jit(jax.value_and_grad(e_fn))(zeros)
    assert bool(jnp.isfinite(value)) and bool(jnp.all(jnp.isfinite(grad)))
    assert float(jnp.abs(grad).max()) == 0.0  # masked edges do not move the energy


@pytest.mark.slow  # every other test runs jitted; NequIP's twin stays in the default suite
def test_jit_matches_no_jit(setup):
    model, params, graph, _ = setup
    vec = (
        np.asarray(graph.nodes["positions"])[graph.receivers]
        - np.asarray(graph.nodes["positions"])[graph.senders]
    )
    mask = np.asarray(jax.numpy.arange(graph.senders.shape[0]) < int(graph.n_edge[0]))
    args = (vec, graph.nodes["species"], graph.senders, graph.receivers, mask)
    eager = model.apply(params, *args)
    jitted = jax.jit(model.apply)(params, *args)
    np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-6)
    assert eager.shape == (graph.nodes["species"].shape[0],)


def test_forces_match_fp64_finite_differences(setup, x64):
    model, params, _, _ = setup
    model64 = model.clone(policy=get_policy("fp64"))
    g = _graph("float64")
    predict = jax.jit(make_predictor(model64, padded=False))
    energy = lambda gg: float(predict(params, gg)["energy"][0])
    forces = np.asarray(predict(params, g)["forces"])
    assert forces.dtype == np.float64
    fd = testing.finite_difference_forces(energy, g, eps=1e-4)
    rel = np.abs(forces - fd).max() / np.abs(fd).max()
    print(f"MACE forces vs FP64 finite differences: relative error {rel:.2e}")
    assert rel < 1e-6


def test_stress_matches_fp64_finite_strain(setup, x64):
    model, params, _, _ = setup
    model64 = model.clone(policy=get_policy("fp64"))
    g = testing.periodic_graph(
        np.random.default_rng(3), n_atoms=3, n_species=2, cutoff=CUTOFF, dtype="float64"
    )
    cell = np.asarray(g.globals["cell"][0])
    assert abs(cell[0] @ cell[1]) > 1e-3 and abs(cell[1] @ cell[2]) > 1e-3  # triclinic
    predict = jax.jit(make_predictor(model64, padded=False))
    stress = np.asarray(predict(params, g)["stress"][0])
    fd = testing.finite_difference_stress(
        lambda gg: float(predict(params, gg)["energy"][0]), g, eps=1e-5
    )
    rel = np.abs(stress - fd).max() / np.abs(fd).max()
    print(f"MACE stress vs FP64 finite strain: relative error {rel:.2e}")
    assert np.abs(fd).max() > 1e-4
    assert rel < 1e-6
    np.testing.assert_allclose(stress, stress.T, atol=1e-10)


@pytest.mark.slow  # NequIP's twin and the energy-stage tests keep this in the default suite
def test_bf16_mixed_close_to_fp64_and_bf16_pure_worse(setup, x64):
    model, params, _, _ = setup
    g64 = _pad(_graph("float64", seed=4, n_atoms=8))
    g32 = _pad(_graph("float32", seed=4, n_atoms=8))
    ref = jax.jit(make_predictor(model.clone(policy=get_policy("fp64"))))(params, g64)
    n = int(g64.n_node[0])
    errors = {}
    for name in ("fp32", "bf16-mixed", "bf16-seed", "bf16-pure"):
        out = jax.jit(make_predictor(model.clone(policy=get_policy(name))))(params, g32)
        e_err = abs(float(out["energy"][0]) - float(ref["energy"][0])) / n  # eV/atom
        f_err = float(
            np.abs(np.asarray(out["forces"][:n], np.float64) - np.asarray(ref["forces"][:n])).max()
            / np.abs(np.asarray(ref["forces"][:n])).max()
        )
        errors[name] = (e_err, f_err)
    print("MACE error vs fp64 at random init (energy eV/atom, force max rel):", errors)
    assert errors["fp32"][0] < 1e-5 and errors["fp32"][1] < 1e-4
    # stated tolerance of the mixed recipe at random init
    assert errors["bf16-mixed"][0] < 2e-2 and errors["bf16-mixed"][1] < 5e-2
    # the all-BF16 negative control is measurably worse (its energy stage cannot hold E0)
    assert errors["bf16-pure"][0] > 2 * errors["bf16-mixed"][0]
    assert errors["bf16-pure"][1] > errors["bf16-mixed"][1]
    # The seed's table verbatim (radial MLP in BF16) is no ordered check here: at random init on
    # 8-atom molecules its force error and bf16-mixed's are alike (session 23, seeds 4-9: each
    # the larger in three; 0.86e-2 against 1.02e-2 for seed 4, the one this test used, where an
    # assertion that the seed table is worse had failed since before session 23). The radial
    # stage's BF16 error is tested where it lives (tests/nn/test_radial_edges.py) and measured
    # on trained models in the precision study (experiments/results/precision_study).
    assert errors["bf16-seed"][1] < 5e-2


# the tiny-config training tests (tests/training/test_train_presets.py) train this model under
# fp32, bf16-mixed, fp16-mixed and bf16-pure; here one preset runs by default, the rest are slow
@pytest.mark.parametrize("preset", preset_params(default=("bf16-mixed",)))
def test_one_training_step_without_nan(preset, request):
    policy = get_policy(preset)
    if policy.uses_x64:
        request.getfixturevalue("x64")
    dtype = "float64" if policy.uses_x64 else "float32"
    model = _model(preset, max_ell=1, correlation=2, hidden_irreps="0e+1o")
    graph = _pad(_graph(dtype, seed=5))
    params = testing.random_params(model, graph, seed=1)
    predict = make_predictor(model)
    n = int(graph.n_node[0])
    target_e = jnp.asarray([-10.0, 0.0], policy.dtype("energy"))
    target_f = jnp.zeros_like(graph.nodes["positions"])
    node_mask = jnp.arange(graph.nodes["positions"].shape[0]) < n

    def loss_fn(p, graph):
        out = predict(p, graph)
        e = (out["energy"] - target_e)[:1] / n
        f = jnp.where(node_mask[:, None], out["forces"] - target_f, 0.0)
        return jnp.mean(e**2) + jnp.sum(f**2) / (3 * n)

    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)
    scale = loss_scale_for(policy)

    @jax.jit
    def step(p, opt_state, scale, graph):
        loss, grads = jax.value_and_grad(lambda q: scale.scale(loss_fn(q, graph)))(p)
        grads = scale.unscale(grads)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, scale.unscale(loss), grads

    new_params, _, loss, grads = step(params, opt_state, scale, graph)
    print(f"{preset}: loss {float(loss):.4f}")
    assert bool(jnp.isfinite(loss))
    for tree in (grads, new_params):
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(new_params))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads))
    node_e = jax.eval_shape(predict, params, graph)["node_energies"]
    assert node_e.dtype == policy.dtype("energy")


@pytest.mark.parametrize(
    "hidden, num_interactions, correlation, max_ell",
    [("0e", 1, 1, 1), ("0e+1o+2e", 3, 2, 3), ("0e+1o", 2, 3, 3)],
)
def test_hyperparameters_trace(hidden, num_interactions, correlation, max_ell, setup):
    """Other sizes build and trace (shapes only, nothing is compiled)."""
    _, _, graph, _ = setup
    model = _model(
        hidden_irreps=hidden,
        num_interactions=num_interactions,
        correlation=correlation,
        max_ell=max_ell,
    )
    params = jax.eval_shape(lambda g: init_params(model, jax.random.PRNGKey(0), g), graph)
    out = jax.eval_shape(make_predictor(model), params, graph)
    assert out["forces"].shape == graph.nodes["positions"].shape
    n_products = sum("Product" in k for k in params["params"])
    assert n_products == num_interactions
