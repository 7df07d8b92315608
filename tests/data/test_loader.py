"""Padding-bucket plans and the seeded, resumable GraphLoader."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax.data import (
    GraphLoader,
    SpeciesTable,
    atoms_to_graph,
    graph_mask,
    node_mask,
    plan_buckets,
)
from mpnn_jax.data.buckets import Bucket, BucketPlan

from .conftest import make_config

TABLE = SpeciesTable((1, 29))


def cluster_graphs(n_graphs=60, seed=0, max_atoms=30):
    """Random clusters of very different sizes (a Zuo-like spread of nodes and edges)."""
    rng = np.random.default_rng(seed)
    graphs = []
    for _ in range(n_graphs):
        n = int(rng.integers(1, max_atoms + 1))
        positions = rng.random((n, 3)) * 1.6 * n ** (1 / 3)
        config = make_config(rng.choice([1, 29], size=n), positions, energy=float(n))
        graphs.append(atoms_to_graph(config, cutoff=2.5, species_table=TABLE))
    return graphs


def test_edge_budget_multiples_grow_with_the_budget():
    """Budgets are multiples of a power of two between 64 and MAX_EDGE_MULTIPLE, at most 1/64 of
    the edges; never less than the edges, never a whole multiple above them; monotone, so buckets
    stay sorted; the benchmark water box's pairs are a multiple of 4096 (PERFORMANCE_LOG 28)."""
    from mpnn_jax.data.buckets import MAX_EDGE_MULTIPLE, edge_budget, edge_multiple

    for n in (1, 64, 65, 5_000, 8_191, 8_192, 65_535, 65_536, 547_164, 2_000_000):
        m = edge_multiple(n)
        assert m & (m - 1) == 0 and 64 <= m <= MAX_EDGE_MULTIPLE
        assert m == 64 or m <= n / 64, (n, m)
        assert 2 * m > n / 64 or m == MAX_EDGE_MULTIPLE, (n, m)  # the largest such power
        assert edge_budget(n) % m == 0 and n <= edge_budget(n) < n + m
    assert edge_multiple(5_000) == 64 and edge_multiple(65_536) == 1024  # as before entry 28
    assert edge_budget(547_164) == 548_864 and (548_864 // 2) % 4096 == 0  # the water box
    for boundary in (8_192, 65_536, 524_288, 1_048_576):
        ns = np.arange(boundary - 3000, boundary + 3000)
        assert np.all(np.diff([edge_budget(int(n)) for n in ns]) >= 0)


def test_plan_is_rounded_and_bounded():
    graphs = cluster_graphs()
    plan = plan_buckets(graphs, batch_size=7, max_buckets=3)
    assert 1 <= len(plan.buckets) <= 3
    for b in plan.buckets:
        assert b.n_node % 8 == 0 and b.n_edge % 64 == 0 and b.n_graph == 8
    largest = plan.buckets[-1]
    nodes = sorted(int(g.n_node[0]) for g in graphs)
    edges = sorted(int(g.n_edge[0]) for g in graphs)
    assert largest.n_node > sum(nodes[-7:]) and largest.n_edge >= sum(edges[-7:])
    text = str(plan)
    assert "n_node" in text and "n_edge" in text and len(text.splitlines()) == 2 + len(plan.buckets)


def test_plan_of_identical_molecules_has_one_bucket():
    plan = plan_buckets([(9, 72)] * 100, batch_size=10)
    assert plan.buckets == (Bucket(n_node=96, n_edge=768, n_graph=11),)


@pytest.mark.parametrize("batch_size", [1, 5, 16])
def test_every_batch_of_shuffled_epochs_fits(batch_size):
    graphs = cluster_graphs()
    loader = GraphLoader(graphs, batch_size=batch_size, shuffle=True, seed=3)
    plan = loader.plan
    shapes = set()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a new bucket would warn
        for epoch in range(4):
            seen = []
            for batch in loader.iterate(epoch):
                shape = (
                    batch.nodes["positions"].shape[0],
                    batch.senders.shape[0],
                    batch.n_node.shape[0],
                )
                assert Bucket(*shape) in plan.buckets
                shapes.add(shape)
                real = np.asarray(graph_mask(batch))
                assert int(np.asarray(node_mask(batch)).sum()) == int(batch.n_node[real].sum())
                seen.extend(batch.globals["energy"][real].tolist())
            # Every graph exactly once per epoch (energy = n_atoms identifies the size multiset).
            assert sorted(seen) == sorted(float(g.globals["energy"][0]) for g in graphs)
    assert loader.plan is plan and len(shapes) <= len(plan.buckets)


def test_seeded_shuffle_is_reproducible_and_resumable():
    graphs = cluster_graphs(n_graphs=23)
    a = GraphLoader(graphs, batch_size=4, seed=7)
    b = GraphLoader(graphs, batch_size=4, seed=7)
    c = GraphLoader(graphs, batch_size=4, seed=8)
    assert len(a) == 6
    np.testing.assert_array_equal(a.order(2), b.order(2))
    assert not np.array_equal(a.order(0), a.order(1))
    assert not np.array_equal(a.order(0), c.order(0))
    full = list(a.iterate(5))
    resumed = list(b.iterate(5, start_step=2))
    assert len(resumed) == len(full) - 2
    for x, y in zip(full[2:], resumed):
        np.testing.assert_array_equal(x.nodes["positions"], y.nodes["positions"])
        np.testing.assert_array_equal(x.senders, y.senders)
    unshuffled = GraphLoader(graphs, batch_size=4, shuffle=False)
    np.testing.assert_array_equal(unshuffled.order(3), np.arange(23))
    assert len(GraphLoader(graphs, batch_size=4, drop_last=True)) == 5


def test_oversize_batch_gets_a_new_bucket_with_a_warning():
    small = cluster_graphs(n_graphs=20, max_atoms=3)
    big = cluster_graphs(n_graphs=6, seed=1, max_atoms=40)
    plan = plan_buckets(small, batch_size=3, max_buckets=2)
    loader = GraphLoader(big, batch_size=3, plan=plan, shuffle=False)
    with pytest.warns(UserWarning, match="fits no padding bucket"):
        batches = list(loader.iterate(0))
    assert len(loader.plan.buckets) > len(plan.buckets)
    total_real = sum(int(b.n_node[np.asarray(graph_mask(b))].sum()) for b in batches)
    assert total_real == sum(int(g.n_node[0]) for g in big)  # nothing truncated


def test_plan_validation():
    with pytest.raises(ValueError, match="batch_size"):
        plan_buckets([(3, 6)], batch_size=0)
    plan = BucketPlan(batch_size=2, buckets=(Bucket(8, 64, 3),))
    with pytest.raises(ValueError, match="plan was made for batch_size=2"):
        GraphLoader(cluster_graphs(4), batch_size=4, plan=plan)


def test_one_compilation_per_bucket():
    traces = []

    @jax.jit
    def step(batch):
        traces.append(batch.senders.shape)  # runs once per compilation
        return jnp.sum(jnp.where(node_mask(batch), batch.nodes["positions"][:, 0], 0.0))

    loader = GraphLoader(cluster_graphs(), batch_size=6, seed=0)
    for epoch in range(3):
        for batch in loader.iterate(epoch):
            step(batch)
    assert 1 <= len(traces) <= len(loader.plan.buckets)
