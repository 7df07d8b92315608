"""Shared fixtures of the training tests: small ethanol graphs and a toy pair-potential predictor.

The toy predictor follows the ``make_predictor`` contract (energy [n_graphs], forces [n_nodes, 3])
and computes its pair terms in the policy's ``messages`` dtype, so FP16 overflow in the backward
pass happens for real; it lets the state / loss-scaling tests run without the models package.
"""

from __future__ import annotations

import fcntl
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax.data import GraphLoader, SpeciesTable, atoms_to_graph, bundled_path, read_xyz
from mpnn_jax.data import edge_mask as get_edge_mask
from mpnn_jax.precision import Policy

SPECIES = SpeciesTable((1, 6, 8))


@pytest.fixture(scope="session")
def tiny_run(shared_tmp_path):
    """The tiny-config run (experiments/configs/tiny.yaml, fp32, ``FAST``: 45 steps), trained once
    per session and read-only: the fp32 case of the preset test, the resume tests' uninterrupted
    reference and the evaluate, audit and CLI tests share it. Under pytest-xdist the first
    worker that needs it trains it while a second waits for it (a file lock)."""
    from mpnn_jax.training.config import load_config
    from mpnn_jax.training.loop import train

    from .test_train_presets import FAST, TINY

    workdir = shared_tmp_path / "tiny_fp32_run"
    done = shared_tmp_path / "tiny_fp32_run.done"
    with open(shared_tmp_path / "tiny_fp32_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(workdir, ignore_errors=True)  # a worker that failed half-way
            train(load_config(TINY, overrides=FAST), workdir)
            done.touch()
    return workdir


@pytest.fixture(scope="session")
def run_dir(tiny_run):
    """A trained tiny run for the evaluate, audit and CLI tests (read-only): :func:`tiny_run`."""
    return tiny_run


def ethanol_graphs(n: int, *, start: int = 0, dtype=np.float32) -> list:
    configs = read_xyz(bundled_path("rmd17_ethanol", "train"), index=f"{start}:{start + n}")
    return [atoms_to_graph(c, cutoff=4.0, species_table=SPECIES, dtype=dtype) for c in configs]


@pytest.fixture(scope="session")
def graphs8() -> list:
    return ethanol_graphs(8)


def padded_batches(graphs: list, batch_size: int) -> list:
    return list(GraphLoader(graphs, batch_size=batch_size, shuffle=False).iterate(0))


def make_toy_predictor(policy: Policy):
    """E = sum_edges a[s_i] a[s_j] exp(-b r) + sum_i e0[s_i] (pair terms in the messages dtype)."""

    def energy_fn(params, positions, graph):
        vec = positions[graph.receivers] - positions[graph.senders]  # [n_edges, 3]
        mask = get_edge_mask(graph)  # [n_edges]
        r2 = jnp.where(mask, jnp.sum(vec**2, -1), 1.0)
        r = jnp.sqrt(r2)  # [n_edges]
        with Policy.scope("messages"):
            a = policy.cast("messages", params["a"])[graph.nodes["species"]]  # [n_nodes]
            pair = (
                a[graph.senders]
                * a[graph.receivers]
                * jnp.exp(-policy.cast("messages", r) * policy.cast("messages", params["b"]))
            )
            pair = jnp.where(mask, pair, 0.0)  # [n_edges] messages dtype
        with Policy.scope("energy"):
            node_e = jax.ops.segment_sum(
                policy.cast("energy", pair), graph.receivers, positions.shape[0]
            )
            node_e = node_e + params["e0"][graph.nodes["species"]]
            node_e = jnp.where(
                jnp.arange(positions.shape[0]) < jnp.sum(graph.n_node[:-1]), node_e, 0.0
            )
            n_graphs = graph.n_node.shape[0]
            node_graph = jnp.repeat(
                jnp.arange(n_graphs), graph.n_node, total_repeat_length=positions.shape[0]
            )
            return jax.ops.segment_sum(node_e, node_graph, n_graphs)  # [n_graphs]

    def predict(params, graph):
        pos = graph.nodes["positions"]
        energy, vjp = jax.vjp(lambda p: energy_fn(params, p, graph), pos)
        (grad,) = vjp(jnp.ones_like(energy))
        return {"energy": energy, "forces": -grad}

    return predict


def toy_params(dtype=jnp.float32) -> dict:
    return {
        "a": jnp.array([0.5, 1.0, 1.2], dtype),
        "b": jnp.array(1.0, dtype),
        "e0": jnp.array([-13.6, -1025.3, -2035.6], dtype),
    }
