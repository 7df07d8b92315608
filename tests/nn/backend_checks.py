"""Shared inputs and checks of the backend tests (``test_cueq_backend``, ``test_pallas_backend``):
random convolution inputs with padding, tiny models with random parameters, and the jitted
energy + force loss whose parameter gradient goes through second derivatives of the kernels."""

from __future__ import annotations

import e3nn_jax as e3nn
import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np

from mpnn_jax import testing
from mpnn_jax.nn.convolution import num_path_weights
from mpnn_jax.potential import make_predictor

N_NODES, N_EDGES, N_PAD = 7, 24, 4
FILTER = e3nn.Irreps("0e+1o+2e+1e")
MODELS = {
    "mace": dict(
        num_channels=4, hidden_irreps="0e", max_ell=1, correlation=2, num_interactions=2,
        n_basis=4, radial_features=(8,),
    ),
    "nequip": dict(hidden_irreps="4x0e+2x1o", max_ell=1, n_layers=2, radial_features=(8,)),
}  # fmt: skip


def rel(a, b) -> float:
    """Max absolute difference relative to the max of ``b`` (the reference)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def conv_inputs(irreps_in: str, dtype=jnp.float32, seed: int = 0, irreps_sh: str = "0e+1o+2e"):
    """Random node features, harmonics and weights; the last edges are padding whose weights are
    garbage (they must send nothing)."""
    rng = np.random.default_rng(seed)
    n_real = N_NODES - 1  # the last node is padding, as in jraph: padded edges loop on it
    s = rng.integers(0, n_real, N_EDGES)
    r = (s + rng.integers(1, n_real, N_EDGES)) % n_real
    mask = np.arange(N_EDGES) < N_EDGES - N_PAD
    s[~mask] = r[~mask] = N_NODES - 1
    x = e3nn.normal(irreps_in, jax.random.PRNGKey(seed), (N_NODES,), dtype=dtype)
    sh = e3nn.normal(irreps_sh, jax.random.PRNGKey(seed + 1), (N_EDGES,), dtype=dtype)
    n_w = num_path_weights(x.irreps, sh.irreps, FILTER)
    w = jax.random.normal(jax.random.PRNGKey(seed + 2), (N_EDGES, n_w), dtype)
    w = w.at[~mask].set(1e3)  # padded edges: large weights that must not leak
    idx = jnp.asarray(s, jnp.int32), jnp.asarray(r, jnp.int32)
    return x, sh, w, *idx, jnp.asarray(mask)


def conv_derivatives(conv, x, sh, w, *, second_order: bool):
    """Jitted derivatives of ``sum(sin(conv(x, sh, w)))``, where ``conv`` maps the arrays of the
    node features, harmonics and weights to the output (an array or an ``IrrepsArray``).

    Returns:
        ``(((value, output), (dx, dsh, dw)), second)``: ``second`` holds, with ``second_order``,
        the gradients with respect to (x, sh, w) of the gradient norm ``sum(dx^2) + sum(cos(dsh))
        + sum(dw^3)`` (the kernels' own derivatives, in one program with the first-order terms),
        and is ``()`` without.
    """

    def loss(xa, y, w):
        out = conv(xa, y, w)
        return jnp.sum(jnp.sin(getattr(out, "array", out))), out

    def grad_norm(xa, y, w):
        first = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(xa, y, w)
        gx, gy, gw = first[1]
        return jnp.sum(gx**2) + jnp.sum(jnp.cos(gy)) + jnp.sum(gw**3), first

    if not second_order:
        return jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(x, sh, w), ()
    second, first = jax.jit(jax.grad(grad_norm, (0, 1, 2), has_aux=True))(x, sh, w)
    return first, second


def loss_and_grad(model, *, second_order: bool):
    """Jitted ``params, graph -> ((loss, predictions), d loss / d params or None)`` for an
    energy + force loss: what a training step differentiates (second derivatives through the
    kernels); without ``second_order`` only the predictions (a shorter compile)."""
    predict = make_predictor(model)

    def loss(params, graph):
        out = predict(params, graph)
        return jnp.sum(out["energy"] ** 2) + jnp.sum(out["forces"] ** 2), out

    if not second_order:
        return jax.jit(lambda params, graph: (loss(params, graph), None))
    return jax.jit(jax.value_and_grad(loss, has_aux=True))


def register_reference_plus(name: str, **methods) -> str:
    """Registers the reference backend plus ``methods`` (e.g. one kernel of ``"pallas"``) as
    ``name``: a model whose only Pallas code is that kernel. Returns ``name``."""
    from mpnn_jax.nn import backends

    cls = type(
        "ReferencePlus", (backends.E3nnBackend,),
        {"name": name, **{k: staticmethod(v) for k, v in methods.items()}},
    )  # fmt: skip
    backends.register_backend(name, cls())
    return name


def kernel_stores(jaxpr, kernel: str) -> list[str]:
    """The dtypes the Pallas kernels whose name contains ``kernel`` store, in ``jaxpr`` and its
    sub-jaxprs (custom derivative rules, jits), one per call."""
    stores = []
    for e in jaxpr.eqns:
        if e.primitive.name == "pallas_call" and kernel in str(e.params.get("name", "")):
            stores.append(str(e.outvars[0].aval.dtype))
        for v in e.params.values():
            for sub in v if isinstance(v, tuple | list) else (v,):
                if isinstance(sub, jex.core.ClosedJaxpr):
                    stores += kernel_stores(sub.jaxpr, kernel)
                elif isinstance(sub, jex.core.Jaxpr):
                    stores += kernel_stores(sub, kernel)
    return stores


def tiny_graph():
    """A 6-atom molecule of 2 species (cutoff 3 Å), padded by 2 nodes, 8 edges and a graph."""
    g = testing.molecule_graph(np.random.default_rng(2), n_atoms=6, n_species=2, cutoff=3.0)
    return testing.pad(g, n_node=int(g.n_node.sum()) + 2, n_edge=int(g.n_edge.sum()) + 8, n_graph=2)


def model_case(name: str, backend: str, *, second_order: bool, **overrides):
    """``(params, graph, {backend: model}, {backend: jitted loss-and-grad})`` of a tiny model of
    ``name`` (:data:`MODELS`, with ``overrides``) with the reference ``"e3nn"`` and ``backend``,
    on :func:`tiny_graph`."""
    ref = testing.tiny_model(name, **{**MODELS[name], **overrides})
    graph = tiny_graph()
    params = testing.random_params(ref, graph)
    mods = {"e3nn": ref, backend: ref.clone(backend=backend)}
    fns = {k: loss_and_grad(m, second_order=second_order) for k, m in mods.items()}
    return params, graph, mods, fns


def check_model_matches_reference(fns, params, graph, backend: str, label: str) -> None:
    """Same parameters: same energies, forces and (if computed) parameter gradient."""
    (_, o_ref), g_ref = fns["e3nn"](params, graph)
    (_, o_out), g_out = fns[backend](params, graph)
    e_err = rel(o_out["energy"][0], o_ref["energy"][0])
    f_err = rel(o_out["forces"], o_ref["forces"])
    leaves = zip(jax.tree_util.tree_leaves(g_out), jax.tree_util.tree_leaves(g_ref))
    g_err = max((rel(a, b) for a, b in leaves), default=0.0)
    print(f"{label} {backend} vs e3nn fp32: energy {e_err:.1e}, forces {f_err:.1e}", end="")
    print(f", loss gradient {g_err:.1e}")
    assert np.abs(np.asarray(o_ref["forces"])).max() > 1e-3
    assert e_err < 1e-5 and f_err < 1e-4 and g_err < 1e-4


def check_equivariance(fn, params, graph) -> None:
    """Energies invariant and forces rotating under a random rotation-inversion."""
    (_, out), _ = fn(params, graph)
    rot = testing.random_o3(np.random.default_rng(5), improper=True)
    (_, out_r), _ = fn(params, testing.transform_graph(graph, rotation=rot))
    np.testing.assert_allclose(out_r["energy"], out["energy"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        out_r["forces"], np.asarray(out["forces"]) @ rot.T, rtol=1e-4, atol=1e-5
    )


def check_fp64_finite_differences(model, params, label: str) -> None:
    """Forces = -dE/dr against FP64 central differences (``model`` in the fp64 policy)."""
    g = testing.molecule_graph(
        np.random.default_rng(3), n_atoms=4, n_species=2, cutoff=3.0, dtype="float64"
    )
    predict = jax.jit(make_predictor(model, padded=False))
    forces = np.asarray(predict(params, g)["forces"])
    assert forces.dtype == np.float64 and np.abs(forces).max() > 1e-3
    fd = testing.finite_difference_forces(
        lambda gg: float(predict(params, gg)["energy"][0]), g, eps=1e-4
    )
    err = rel(forces, fd)
    print(f"{label} forces vs FP64 finite differences: relative error {err:.1e}")
    assert err < 1e-6
