"""Error metrics accumulated exactly over a dataset of padded batches.

:func:`batch_error_sums` (pure, jittable) returns the sums of absolute and squared errors and the
counts of one padded batch; padding contributes zero. :class:`MetricsAccumulator` adds them up
on the host in float64 and :meth:`MetricsAccumulator.result` turns them into

* ``energy_mae_mev_per_atom``, ``energy_rmse_mev_per_atom``: |E_pred - E| / N per config, meV/atom
* ``energy_mae_mev``, ``energy_rmse_mev``: per configuration, meV
* ``forces_mae_mev_per_A``, ``forces_rmse_mev_per_A``: over force components, meV/Å
* ``stress_mae_mev_per_A3``, ``stress_rmse_mev_per_A3``: over stress components, meV/Å^3
  (only where stress targets exist)
* ``n_configs``, ``n_atoms``.

The result is the same for any batching of the same configurations (up to rounding).

Example:
    >>> acc = MetricsAccumulator()
    >>> # for graph in batches: acc.add(batch_error_sums(predict(params, graph), graph))
    >>> # acc.result()["forces_mae_mev_per_A"]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from mpnn_jax.precision import Policy
from mpnn_jax.training.loss import masks

_cast = Policy.cast_to
MEV = 1000.0

SUM_KEYS = (
    "n_configs",
    "n_atoms",
    "e_abs_per_atom",
    "e_sq_per_atom",
    "e_abs",
    "e_sq",
    "f_abs",
    "f_sq",
    "f_count",
    "s_abs",
    "s_sq",
    "s_count",
)


def batch_error_sums(pred: dict, graph: jraph.GraphsTuple) -> dict[str, jax.Array]:
    """Sums of errors of one padded batch (real configurations only, unweighted).

    Args:
        pred: ``energy [n_graphs]`` eV, ``forces [n_nodes, 3]`` eV/Å, optional ``stress``.
        graph: the padded batch with targets.

    Returns:
        A dict with the keys of ``SUM_KEYS``: scalar sums in eV units and counts.
    """
    dtype = jnp.promote_types(pred["energy"].dtype, jnp.float32)
    graph_w, node_w = masks(graph)
    real_g = graph_w > 0  # [n_graphs]
    real_n = node_w > 0  # [n_nodes]
    g = jnp.where(real_g, 1.0, 0.0) + jnp.zeros((), dtype)
    n = jnp.where(real_n, 1.0, 0.0) + jnp.zeros((), dtype)
    n_atoms = jnp.maximum(graph.n_node, 1) + jnp.zeros((), dtype)  # [n_graphs]
    de = jnp.where(
        real_g, _cast(dtype, pred["energy"]) - _cast(dtype, graph.globals["energy"]), 0.0
    )  # [n_graphs] eV
    df = jnp.where(
        real_n[:, None], _cast(dtype, pred["forces"]) - _cast(dtype, graph.nodes["forces"]), 0.0
    )  # [n_nodes, 3] eV/Å
    out = {
        "n_configs": jnp.sum(g),
        "n_atoms": jnp.sum(n),
        "e_abs_per_atom": jnp.sum(jnp.abs(de) / n_atoms),
        "e_sq_per_atom": jnp.sum((de / n_atoms) ** 2),
        "e_abs": jnp.sum(jnp.abs(de)),
        "e_sq": jnp.sum(de**2),
        "f_abs": jnp.sum(jnp.abs(df)),
        "f_sq": jnp.sum(df**2),
        "f_count": 3.0 * jnp.sum(n),
    }
    if "stress" in pred and "stress" in graph.globals:
        has = _cast(dtype, graph.globals.get("has_stress", jnp.zeros_like(g))) * g  # [n_graphs]
        ds = jnp.where(
            (has > 0)[:, None, None],
            _cast(dtype, pred["stress"]) - _cast(dtype, graph.globals["stress"]),
            0.0,
        )  # [n_graphs, 3, 3] eV/Å^3
        out.update(s_abs=jnp.sum(jnp.abs(ds)), s_sq=jnp.sum(ds**2), s_count=9.0 * jnp.sum(has))
    else:
        z = jnp.zeros((), dtype)
        out.update(s_abs=z, s_sq=z, s_count=z)
    return out


class MetricsAccumulator:
    """Adds per-batch error sums in float64 on the host."""

    def __init__(self) -> None:
        self.sums = dict.fromkeys(SUM_KEYS, 0.0)

    def add(self, sums: dict) -> None:
        """Adds the output of :func:`batch_error_sums` for one batch."""
        host = jax.device_get(sums)
        for k in SUM_KEYS:
            self.sums[k] += float(np.asarray(host[k], dtype=np.float64))

    def result(self) -> dict[str, float]:
        """MAE / RMSE in meV units (see the module docstring)."""
        s = self.sums
        nc, nf, ns = s["n_configs"], s["f_count"], s["s_count"]

        def mean(x: float, n: float) -> float:
            return x / n if n > 0 else float("nan")

        out = {
            "n_configs": int(round(nc)),
            "n_atoms": int(round(s["n_atoms"])),
            "energy_mae_mev_per_atom": MEV * mean(s["e_abs_per_atom"], nc),
            "energy_rmse_mev_per_atom": MEV * mean(s["e_sq_per_atom"], nc) ** 0.5,
            "energy_mae_mev": MEV * mean(s["e_abs"], nc),
            "energy_rmse_mev": MEV * mean(s["e_sq"], nc) ** 0.5,
            "forces_mae_mev_per_A": MEV * mean(s["f_abs"], nf),
            "forces_rmse_mev_per_A": MEV * mean(s["f_sq"], nf) ** 0.5,
        }
        if ns > 0:
            out["stress_mae_mev_per_A3"] = MEV * mean(s["s_abs"], ns)
            out["stress_rmse_mev_per_A3"] = MEV * mean(s["s_sq"], ns) ** 0.5
        return out


def format_metrics_table(rows: dict[str, dict], *, keys: tuple[str, ...] | None = None) -> str:
    """A Markdown table: one row per name (e.g. policy), one column per metric."""
    keys = keys or (
        "n_configs",
        "energy_mae_mev_per_atom",
        "energy_mae_mev",
        "forces_mae_mev_per_A",
        "forces_rmse_mev_per_A",
        "stress_mae_mev_per_A3",
    )
    keys = tuple(k for k in keys if any(k in r for r in rows.values()))
    header = "| name | " + " | ".join(keys) + " |"
    lines = [header, "|---" * (len(keys) + 1) + "|"]
    for name, r in rows.items():
        cells = []
        for k in keys:
            v = r.get(k, "")
            cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate_batches(sums_fn, params, batches) -> MetricsAccumulator:
    """Runs ``sums_fn(params, graph)`` (e.g. jitted ``batch_error_sums`` of a predictor) over
    padded batches; ``.result()`` of the returned accumulator gives the metrics."""
    acc = MetricsAccumulator()
    for graph in batches:
        acc.add(sums_fn(params, graph))
    return acc


def mse_loss_from_sums(
    sums: dict[str, float],
    *,
    energy_weight: float,
    forces_weight: float,
    stress_weight: float = 0.0,
) -> float:
    """The (unweighted-by-config) MSE training loss of a whole dataset, from accumulated sums."""

    def mean(x: str, n: str) -> float:
        return sums[x] / sums[n] if sums[n] > 0 else 0.0

    loss = energy_weight * mean("e_sq_per_atom", "n_configs")
    loss += forces_weight * mean("f_sq", "f_count")
    if stress_weight:
        loss += stress_weight * mean("s_sq", "s_count")
    return loss
