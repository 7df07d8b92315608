"""NequIP: O(3) equivariance, translation and permutation invariance, precision presets and a
training step (energy + force loss, so second derivatives) under every preset."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mpnn_jax import testing
from mpnn_jax.models import NequIP, build_model, hidden_irreps_from
from mpnn_jax.potential import init_params, make_predictor
from mpnn_jax.precision import audit, get_policy

from . import preset_params

SIZES = dict(n_layers=2, hidden_irreps="4x0e+3x1o+2x2e", max_ell=2, n_basis=6, radial_features=(8,))
TINY = dict(n_layers=2, hidden_irreps="2x0e+2x1o", max_ell=1, n_basis=4, radial_features=(4,))


def _model(policy="fp32", sizes=SIZES):
    return testing.tiny_model("nequip", policy=policy, **sizes)


def _init_shapes(model, graph):
    """``init``'s parameter shapes and dtypes, traced (nothing compiled)."""
    return jax.eval_shape(lambda g: init_params(model, jax.random.PRNGKey(0), g), graph)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    real = testing.batch(
        [testing.molecule_graph(rng, n_atoms=5), testing.periodic_graph(rng, n_atoms=4)]
    )
    g = testing.pad(real, n_node=12, n_edge=int(real.n_edge.sum()) + 8, n_graph=3)
    model = _model()
    params = testing.random_params(model, g)
    return model, params, g, rng


def _errors(out, out_rot, rot):
    """Relative errors of energy invariance, force and stress equivariance (real entries)."""
    e = np.asarray(out["energy"], np.float64)[:2]
    e_err = np.max(np.abs(np.asarray(out_rot["energy"], np.float64)[:2] - e)) / np.max(np.abs(e))
    f = np.asarray(out["forces"], np.float64) @ rot.T
    f_err = np.max(np.abs(np.asarray(out_rot["forces"], np.float64) - f)) / np.max(np.abs(f))
    s = rot @ np.asarray(out["stress"], np.float64)[1] @ rot.T
    s_err = np.max(np.abs(np.asarray(out_rot["stress"], np.float64)[1] - s)) / np.max(np.abs(s))
    return e_err, f_err, s_err


def test_hidden_irreps_from():
    assert str(hidden_irreps_from(8, 2)) == "8x0e+8x1o+8x2e"
    assert str(hidden_irreps_from(4, 1, parity=False)) == "4x0e+4x0o+4x1e+4x1o"


def test_build_model_names():
    assert isinstance(_model(), NequIP)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("schnet", policy="fp32", n_species=1, cutoff=3.0)


def test_energy_invariant_forces_stress_equivariant_under_o3(setup, record_property):
    model, params, g, rng = setup
    rot = testing.random_o3(rng, improper=True)
    assert np.linalg.det(rot) < 0
    g_rot = testing.transform_graph(g, rotation=rot)
    for spec, tol in [("fp32", 2e-5), ("bf16-mixed", 5e-2)]:
        predict = jax.jit(make_predictor(model.clone(policy=get_policy(spec))))
        errs = _errors(predict(params, g), predict(params, g_rot), rot)
        print(
            f"{spec}: O(3) relative errors energy {errs[0]:.1e} forces {errs[1]:.1e} "
            f"stress {errs[2]:.1e}"
        )
        record_property(f"o3_errors_{spec}", [float(e) for e in errs])
        assert max(errs) < tol, (spec, errs)
    # the check can fail: a model that sees the raw x coordinate is not invariant
    out = predict(params, g)
    assert (
        np.max(np.abs(np.asarray(g_rot.nodes["positions"])[:, 0] - g.nodes["positions"][:, 0]))
        > 0.1
    )
    assert np.all(np.isfinite(np.asarray(out["energy"])))


def test_translation_and_permutation_invariance(setup):
    model, params, _, rng = setup
    predict = jax.jit(make_predictor(model))
    mol = testing.molecule_graph(rng, n_atoms=5)
    pad = lambda x: testing.pad(x, n_node=8, n_edge=int(x.n_edge[0]) + 4, n_graph=2)
    ref = predict(params, pad(mol))
    moved = predict(params, pad(testing.transform_graph(mol, translation=[3.0, -7.0, 11.0])))
    np.testing.assert_allclose(moved["energy"][0], ref["energy"][0], rtol=1e-5)
    np.testing.assert_allclose(moved["forces"][:5], ref["forces"][:5], atol=2e-5)
    perm = np.array([3, 0, 4, 1, 2])
    permuted = predict(params, pad(testing.permute_graph(mol, perm)))
    np.testing.assert_allclose(permuted["energy"][0], ref["energy"][0], rtol=1e-5)
    np.testing.assert_allclose(permuted["forces"][:5], np.asarray(ref["forces"])[perm], atol=2e-5)
    np.testing.assert_allclose(
        permuted["node_energies"][:5], np.asarray(ref["node_energies"])[perm], rtol=1e-5
    )


def test_bf16_mixed_close_to_fp64_and_bf16_pure_worse(setup, record_property):
    _, params, g32, _ = setup
    with jax.enable_x64(True):
        g64 = jax.tree_util.tree_map(
            lambda x: np.asarray(x, np.float64) if np.asarray(x).dtype == np.float32 else x, g32
        )
        ref = jax.jit(make_predictor(_model("fp64")))(params, g64)
        ref = {k: np.asarray(v) for k, v in ref.items()}
    errs = {}
    for spec in ("fp32", "bf16-mixed", "bf16-pure"):
        out = jax.jit(make_predictor(_model(spec)))(params, g32)
        e = np.abs(np.asarray(out["energy"], np.float64) - ref["energy"])[:2]
        f = np.abs(np.asarray(out["forces"], np.float64) - ref["forces"])
        errs[spec] = (
            float(np.max(e / np.abs(ref["energy"][:2]))),
            float(np.max(f) / np.max(np.abs(ref["forces"]))),
        )
        print(
            f"{spec} vs fp64: relative energy error {errs[spec][0]:.2e}, "
            f"force error {errs[spec][1]:.2e}"
        )
        record_property(f"err_vs_fp64_{spec}", errs[spec])
    assert errs["fp32"][0] < 1e-5 and errs["fp32"][1] < 1e-4
    # stated tolerance for BF16 with FP32 geometry, basis, aggregation and energy
    assert errs["bf16-mixed"][0] < 1e-3 and errs["bf16-mixed"][1] < 5e-2
    assert errs["bf16-mixed"][0] > errs["fp32"][0]  # BF16 really happened
    # the negative control is measurably worse in energy
    assert errs["bf16-pure"][0] > 2 * errs["bf16-mixed"][0]


@pytest.mark.parametrize("spec", ["fp32", "bf16-mixed", "fp16-mixed", "bf16-pure"])
def test_audit_every_stage_in_its_dtype(spec):
    """The traced program of predict (forward and backward) computes each stage in its dtype."""
    policy = get_policy(spec)
    rng = np.random.default_rng(8)
    g = testing.pad(testing.molecule_graph(rng, n_atoms=4), n_node=8, n_edge=64, n_graph=2)
    model = _model(spec, TINY)
    report = audit(make_predictor(model), _init_shapes(model, g), g)  # traced: shapes suffice
    assert report.check(policy) == []
    low = {"bf16-mixed": "bf16", "fp16-mixed": "f16", "bf16-pure": "bf16"}.get(spec)
    if low is not None:  # the low-precision stages really run in low precision
        for stage in ("messages", "update", "readout"):
            assert report.op_dtypes(stage).get(low, 0) > 0, (stage, report.op_dtypes(stage))


@pytest.mark.parametrize("spec", preset_params())
def test_training_step_every_preset(spec):
    policy = get_policy(spec)
    dtype = "float64" if policy.uses_x64 else "float32"
    with jax.enable_x64(policy.uses_x64):
        rng = np.random.default_rng(7)
        real = testing.batch(
            [
                testing.molecule_graph(rng, n_atoms=4, dtype=dtype),
                testing.periodic_graph(rng, n_atoms=3, dtype=dtype),
            ]
        )
        g = testing.pad(real, n_node=8, n_edge=int(real.n_edge.sum()) + 4, n_graph=3)
        model = _model(spec, TINY)
        params = init_params(model, jax.random.PRNGKey(0), g)
        assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
        predict = make_predictor(model)
        target_e = np.asarray([-8.0, -7.0, 0.0])
        target_f = rng.normal(size=(8, 3)) * 0.1

        def loss_fn(params):
            out = predict(params, g)
            e = jnp.sum((out["energy"] - target_e) ** 2)
            f = jnp.sum((out["forces"] - target_f) ** 2)
            return policy.cast_to(jnp.float32, e + f)

        opt = optax.adam(1e-2)

        @jax.jit
        def step(params, opt_state):
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss, grads

        new_params, _, loss, grads = step(params, opt.init(params))
        out = jax.jit(predict)(new_params, g)
        print(f"{spec}: loss {float(loss):.4f}, energies {np.asarray(out['energy'], np.float64)}")
        assert np.isfinite(float(loss))
        for tree in (grads, new_params, out):
            assert all(
                np.all(np.isfinite(np.asarray(x, np.float64)))
                for x in jax.tree_util.tree_leaves(tree)
            )
        assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(new_params))
        # force loss reaches the radial MLP weights (second derivatives flow)
        assert testing.tree_max_abs_diff(new_params, params) > 0
