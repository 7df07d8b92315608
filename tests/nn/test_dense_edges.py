"""The scatter-free gathers and sums of :mod:`mpnn_jax.nn.dense_edges` against dense matrices in
float64: values, transposes (both custom VJPs) and second derivatives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax import testing
from mpnn_jax.data.dense import to_receiver_dense
from mpnn_jax.nn import dense_edges as de


@pytest.fixture(scope="module")
def layout():
    """A receiver-dense graph and its sender matrix A [n_edges, n_nodes] (A[e, s(e)] = 1 on real
    edges)."""
    rng = np.random.default_rng(2)
    real = testing.batch([testing.molecule_graph(rng, n_atoms=7), testing.periodic_graph(rng)])
    g = to_receiver_dense(
        testing.pad(real, n_node=16, n_edge=int(real.n_edge.sum()) + 3, n_graph=3)
    )
    n, e = g.nodes["positions"].shape[0], g.senders.shape[0]
    a = np.zeros((e, n))
    m = g.edges["mask"]
    a[np.flatnonzero(m), g.senders[m]] = 1.0
    args = (jnp.asarray(g.senders), jnp.asarray(g.edges["reverse"]), jnp.asarray(m))
    return args, a, n


def test_gather_and_sum_equal_the_matrix_and_its_transpose(layout, x64):
    args, a, n = layout
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, 2, 3)))  # [n_nodes, 2, 3]
    g = jnp.asarray(rng.normal(size=(a.shape[0], 2, 3)))  # [n_edges, 2, 3]
    np.testing.assert_allclose(de.gather_senders(x, *args), np.einsum("en,nij->eij", a, x))
    np.testing.assert_allclose(
        de.sum_senders(g, *args, n), np.einsum("en,eij->nij", a, g), atol=1e-12
    )
    # custom VJPs: each the other's transpose
    _, vjp = jax.vjp(lambda x: de.gather_senders(x, *args), x)
    np.testing.assert_allclose(vjp(g)[0], np.einsum("en,eij->nij", a, g), atol=1e-12)
    _, vjp = jax.vjp(lambda g: de.sum_senders(g, *args, n), g)
    np.testing.assert_allclose(vjp(x)[0], np.einsum("en,nij->eij", a, x), atol=1e-12)
    # receivers: a reshape-sum and a broadcast, transposes of each other
    k = a.shape[0] // n
    r = np.kron(np.eye(n), np.ones((k, 1)))  # [n_edges, n_nodes]
    np.testing.assert_allclose(de.sum_receivers(g, n), np.einsum("en,eij->nij", r, g), atol=1e-12)
    np.testing.assert_allclose(
        de.broadcast_receivers(x, a.shape[0]), np.einsum("en,nij->eij", r, x)
    )
    assert de.sum_receivers(g.astype(jnp.bfloat16), n, dtype=jnp.float32).dtype == jnp.float32


def test_second_derivatives_equal_the_matrix_version(layout, x64):
    """grad of a function of grad (what a force loss's parameter gradient does), jitted."""
    args, a, n = layout
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(n, 3)))
    w = jnp.asarray(rng.normal(size=(a.shape[0], 3)))

    def energy(gather):
        def e(x):
            y = gather(x)  # [n_edges, 3]
            return jnp.sum(jnp.sin(y) ** 2 * w) + jnp.sum(de.sum_senders(y * w, *args, n) ** 3)

        return e

    def second(e):
        return jax.jit(jax.grad(lambda x: jnp.sum(jax.grad(e)(x) ** 2)))(x)

    custom = energy(lambda x: de.gather_senders(x, *args))

    def reference(x):
        y = a @ x
        return jnp.sum(jnp.sin(y) ** 2 * w) + jnp.sum((a.T @ (y * w)) ** 3)

    np.testing.assert_allclose(jax.grad(custom)(x), jax.grad(reference)(x), atol=1e-10)
    np.testing.assert_allclose(second(custom), second(reference), atol=1e-9)


def test_no_scatter_in_any_derivative(layout):
    args, a, n = layout
    x = jnp.ones((n, 4), jnp.float32)

    def e(x):
        return jnp.sum(de.gather_senders(x, *args) ** 3)

    hlo = jax.jit(jax.grad(lambda x: jnp.sum(jax.grad(e)(x) ** 2))).lower(x).as_text()
    assert "scatter" not in hlo
    assert "gather" in hlo


def test_slot_count_is_checked():
    with pytest.raises(ValueError, match="n_edges = K"):
        de.sum_receivers(jnp.ones((10, 2)), 3)
