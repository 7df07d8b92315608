"""A minimal message-passing potential with every stage of ``STAGES``, for the precision audit.

Pure functions of arrays that change dtypes only through the policy (``Policy.scope``,
``policy.cast``, ``policy.einsum``, ``jax.ops.segment_sum`` in ``policy.dtype("aggregation")``),
the way the library's layers do. ``mistake`` plants a known precision bug:

* ``"messages_f32"``: the messages are computed in FP32 whatever the policy says;
* ``"aggregation_low"``: the neighbour sum runs in the messages dtype, then is cast up.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from mpnn_jax.precision import Policy

N_BASIS = 8
N_FEATURES = 16
CUTOFF = 3.0  # Å
N_SPECIES = 3


def init_params(seed: int = 0) -> dict[str, jax.Array]:
    """FP32 parameters: embedding [n_species, F], radial [n_basis, F], message [F, F],
    update [F, F], readout [F]."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return jnp.asarray(rng.normal(size=shape) / np.sqrt(shape[0]), jnp.float32)

    return {
        "embedding": w(N_SPECIES, N_FEATURES),
        "radial": w(N_BASIS, N_FEATURES),
        "message": w(N_FEATURES, N_FEATURES),
        "update": w(N_FEATURES, N_FEATURES),
        "readout": w(N_FEATURES),
    }


def toy_graph(n_nodes: int = 6, seed: int = 1) -> dict[str, jax.Array]:
    """A small molecule-like cluster with a full neighbour list inside ``CUTOFF``."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0.0, 2.5, size=(n_nodes, 3))
    i, j = np.nonzero(np.linalg.norm(pos[:, None] - pos[None], axis=-1) < CUTOFF)
    keep = i != j
    return {
        "positions": jnp.asarray(pos, jnp.float32),  # [n_nodes, 3] Å
        "species": jnp.asarray(rng.integers(0, N_SPECIES, n_nodes), jnp.int32),  # [n_nodes]
        "senders": jnp.asarray(i[keep], jnp.int32),  # [n_edges]
        "receivers": jnp.asarray(j[keep], jnp.int32),  # [n_edges]
        "graph_index": jnp.zeros(n_nodes, jnp.int32),  # [n_nodes]
    }


def toy_energy(
    params: dict[str, jax.Array],
    positions: jax.Array,
    species: jax.Array,
    senders: jax.Array,
    receivers: jax.Array,
    graph_index: jax.Array,
    *,
    policy: Policy,
    mistake: str | None = None,
) -> jax.Array:
    """Total energy (eV, scalar, in the energy dtype) of the toy potential."""
    n_nodes = species.shape[0]
    with Policy.scope("embedding"):
        h = policy.cast("embedding", params["embedding"])[species]  # [n_nodes, F]
    with Policy.scope("geometry"):
        pos = policy.cast("geometry", positions)  # [n_nodes, 3]
        vec = pos[receivers] - pos[senders]  # [n_edges, 3]
        r = jnp.sqrt(policy.einsum("geometry", "ei,ei->e", vec, vec))  # [n_edges]
    with Policy.scope("basis"):
        r = policy.cast("basis", r)
        n = jnp.arange(1, N_BASIS + 1, dtype=policy.dtype("basis"))  # [n_basis]
        x = r / CUTOFF  # [n_edges]
        envelope = 1.0 - 10.0 * x**3 + 15.0 * x**4 - 6.0 * x**5  # [n_edges]
        bessel = math.sqrt(2.0 / CUTOFF) * jnp.sin(jnp.pi * n * x[:, None]) / r[:, None]
        basis = bessel * envelope[:, None]  # [n_edges, n_basis]
    with Policy.scope("radial"):
        radial = policy.einsum("radial", "eb,bf->ef", basis, params["radial"])  # [n_edges, F]
    with Policy.scope("messages"):
        if mistake == "messages_f32":
            radial = Policy.cast_to(jnp.float32, radial)
            m = radial * Policy.cast_to(jnp.float32, h)[senders]
            w = Policy.cast_to(jnp.float32, params["message"])
            m = policy.cast("messages", jnp.einsum("ef,fg->eg", m, w))
        else:
            m = (
                policy.cast("messages", radial) * policy.cast("messages", h)[senders]
            )  # [n_edges, F]
            m = policy.einsum("messages", "ef,fg->eg", m, params["message"])  # [n_edges, F]
    with Policy.scope("aggregation"):
        if mistake == "aggregation_low":
            agg = jax.ops.segment_sum(m, receivers, num_segments=n_nodes)
            agg = policy.cast("aggregation", agg)
        else:
            agg = jax.ops.segment_sum(policy.cast("aggregation", m), receivers, n_nodes)
    with Policy.scope("update"):
        z = policy.einsum("update", "nf,fg->ng", agg, params["update"])  # [n_nodes, F]
        h = jax.nn.silu(z) + policy.cast("update", h)
    with Policy.scope("readout"):
        e_node = policy.einsum("readout", "nf,f->n", h, params["readout"])  # [n_nodes] eV
    with Policy.scope("energy"):
        e_node = policy.cast("energy", e_node)
        e_graph = jax.ops.segment_sum(e_node, graph_index, num_segments=1)  # [n_graphs] eV
        return jnp.sum(e_graph, dtype=policy.dtype("energy"))  # jnp.sum alone upcasts 16-bit


def toy_forces(
    params, positions, species, senders, receivers, graph_index, *, policy, mistake=None
):
    """Forces -dE/dr (eV/Å) [n_nodes, 3] in the forces dtype."""
    with Policy.scope("forces"):
        grad = jax.grad(toy_energy, argnums=1)(
            params,
            positions,
            species,
            senders,
            receivers,
            graph_index,
            policy=policy,
            mistake=mistake,
        )
        return -policy.cast("forces", grad)
