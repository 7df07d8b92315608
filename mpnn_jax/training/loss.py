"""The training loss on padded batches: weighted energy (per atom), forces and stress terms.

``loss = w_E * mean_g ρ(ΔE_g / N_g) + w_F * mean_{i,α} ρ(ΔF_iα) + w_S * mean_{g,αβ} ρ(ΔS_gαβ)``

with ρ the squared error (``mse``) or the Huber function (``huber``). The means run over real
configurations (and their atoms / stress components), weighted by the per-config ``weight`` of
the graph schema; padding graphs and nodes have zero mask and contribute exactly zero, and
configurations without a stress target (``has_stress == 0``) drop out of the stress term. The
loss is computed in FP32 (or FP64 when the predictions are FP64), whatever the policy.

Everything here is a pure, jittable function of ``(predictions, graph)``.

Example:
    >>> loss_fn = make_loss_fn(energy_weight=1.0, forces_weight=100.0)
    >>> # loss, terms = loss_fn(predict(params, graph), graph)
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import jraph

from mpnn_jax.data import graphs as schema
from mpnn_jax.precision import Policy

_cast = Policy.cast_to  # the policy owns every dtype change

LossFn = Callable[[dict, jraph.GraphsTuple], tuple[jax.Array, dict]]


def masks(graph: jraph.GraphsTuple) -> tuple[jax.Array, jax.Array]:
    """Per-graph and per-node weights: ``weight * real`` (zero on padding).

    Returns:
        ``(graph_w [n_graphs], node_w [n_nodes])`` as float arrays.
    """
    real_graph = schema.graph_mask(graph)  # [n_graphs]
    weight = graph.globals.get("weight", jnp.ones(real_graph.shape))
    graph_w = jnp.where(real_graph, weight, 0.0)  # [n_graphs]
    node_graph = schema.graph_index(graph, of="node")  # [n_nodes]
    node_w = jnp.where(schema.node_mask(graph), graph_w[node_graph], 0.0)  # [n_nodes]
    return graph_w, node_w


def _rho(x: jax.Array, kind: str, delta: float) -> jax.Array:
    if kind == "mse":
        return x * x
    if kind == "huber":
        a = jnp.abs(x)
        return jnp.where(a <= delta, 0.5 * x * x, delta * (a - 0.5 * delta))
    raise ValueError(f"unknown loss {kind!r}; expected 'mse' or 'huber'")


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    return num / jnp.maximum(den, 1e-30)


def loss_terms(
    pred: dict, graph: jraph.GraphsTuple, *, kind: str = "mse", huber_delta: float = 0.01
) -> dict[str, jax.Array]:
    """The unweighted energy, forces and stress terms.

    Args:
        pred: ``energy [n_graphs]`` eV, ``forces [n_nodes, 3]`` eV/Å, optional
            ``stress [n_graphs, 3, 3]`` eV/Å^3.
        graph: the padded batch holding the targets.
        kind: ``"mse"`` or ``"huber"``.
        huber_delta: Huber threshold (eV/atom, eV/Å, eV/Å^3).

    Returns:
        ``{"energy", "forces", "stress"}`` scalars (``stress`` is 0 without stress targets).
    """
    dtype = jnp.promote_types(pred["energy"].dtype, jnp.float32)
    graph_w, node_w = masks(graph)
    graph_w, node_w = _cast(dtype, graph_w), _cast(dtype, node_w)
    n_atoms = jnp.maximum(graph.n_node, 1) + jnp.zeros((), dtype)  # [n_graphs] float

    # energies per atom; padded graphs are replaced by zeros before the arithmetic
    e_pred = jnp.where(graph_w > 0, _cast(dtype, pred["energy"]), 0.0)  # [n_graphs]
    e_true = jnp.where(graph_w > 0, _cast(dtype, graph.globals["energy"]), 0.0)
    de = (e_pred - e_true) / n_atoms  # [n_graphs] eV/atom
    energy = _safe_div(jnp.sum(graph_w * _rho(de, kind, huber_delta)), jnp.sum(graph_w))

    f_mask = (node_w > 0)[:, None]
    df = jnp.where(
        f_mask, _cast(dtype, pred["forces"]) - _cast(dtype, graph.nodes["forces"]), 0.0
    )  # [n_nodes, 3] eV/Å
    forces = _safe_div(
        jnp.sum(node_w[:, None] * _rho(df, kind, huber_delta)), 3.0 * jnp.sum(node_w)
    )

    if "stress" in pred and "stress" in graph.globals:
        has = _cast(dtype, graph.globals.get("has_stress", jnp.zeros_like(graph_w)))
        sw = graph_w * has  # [n_graphs]
        ds = jnp.where(
            (sw > 0)[:, None, None],
            _cast(dtype, pred["stress"]) - _cast(dtype, graph.globals["stress"]),
            0.0,
        )  # [n_graphs, 3, 3] eV/Å^3
        stress = _safe_div(
            jnp.sum(sw[:, None, None] * _rho(ds, kind, huber_delta)), 9.0 * jnp.sum(sw)
        )
    else:
        stress = jnp.zeros((), dtype)
    return {"energy": energy, "forces": forces, "stress": stress}


def make_loss_fn(
    *,
    energy_weight: float = 1.0,
    forces_weight: float = 100.0,
    stress_weight: float = 0.0,
    kind: str = "mse",
    huber_delta: float = 0.01,
) -> LossFn:
    """Returns ``loss_fn(pred, graph) -> (loss [], terms dict)``.

    Args:
        energy_weight: weight of the per-atom energy term ((eV/atom)^-2 for mse).
        forces_weight: weight of the force term ((eV/Å)^-2 for mse).
        stress_weight: weight of the stress term ((eV/Å^3)^-2 for mse).
        kind: ``"mse"`` or ``"huber"``.
        huber_delta: Huber threshold.
    """
    _rho(jnp.zeros(()), kind, huber_delta)  # validates kind early

    def loss_fn(pred: dict, graph: jraph.GraphsTuple) -> tuple[jax.Array, dict]:
        terms = loss_terms(pred, graph, kind=kind, huber_delta=huber_delta)
        loss = energy_weight * terms["energy"] + forces_weight * terms["forces"]
        if stress_weight:
            loss = loss + stress_weight * terms["stress"]
        return loss, terms

    return loss_fn
