"""Loss and metrics against a hand computation in float64 numpy; padding changes nothing."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax.data import batch_graphs, pad_graph
from mpnn_jax.training.loss import loss_terms, make_loss_fn
from mpnn_jax.training.metrics import MetricsAccumulator, batch_error_sums, mse_loss_from_sums

from .conftest import ethanol_graphs


def _with_stress_and_weights(graphs):
    """Graph 0 gets a stress target, graph 1 weight 2."""
    rng = np.random.default_rng(1)
    out = []
    for i, g in enumerate(graphs):
        glob = dict(g.globals)
        if i == 0:
            glob["stress"] = rng.normal(size=(1, 3, 3)).astype(np.float32) * 0.01
            glob["has_stress"] = np.ones(1, np.float32)
        if i == 1:
            glob["weight"] = np.full(1, 2.0, np.float32)
        out.append(g._replace(globals=glob))
    return out


def _fake_predictions(graph, n_real_nodes, n_real_graphs, seed=0, garbage=np.nan):
    """Targets + noise on real entries, garbage on padding entries."""
    rng = np.random.default_rng(seed)
    e = np.asarray(graph.globals["energy"], np.float64).copy()
    f = np.asarray(graph.nodes["forces"], np.float64).copy()
    s = np.asarray(graph.globals["stress"], np.float64).copy()
    e[:n_real_graphs] += rng.normal(size=n_real_graphs) * 0.05
    f[:n_real_nodes] += rng.normal(size=(n_real_nodes, 3)) * 0.1
    s[:n_real_graphs] += rng.normal(size=(n_real_graphs, 3, 3)) * 0.001
    e[n_real_graphs:] = garbage
    f[n_real_nodes:] = garbage
    s[n_real_graphs:] = garbage
    # round to float32 so that the float64 reference sees exactly what the float32 loss sees
    return {
        k: v.astype(np.float32).astype(np.float64)
        for k, v in dict(energy=e, forces=f, stress=s).items()
    }


def _hand(graphs, pred, kind="mse", delta=0.01):
    """Float64 reference of the loss terms and metrics from the unpadded graphs."""

    def rho(x):
        if kind == "mse":
            return x**2
        a = np.abs(x)
        return np.where(a <= delta, 0.5 * x**2, delta * (a - 0.5 * delta))

    n = [int(g.n_node[0]) for g in graphs]
    w = np.array([float(g.globals["weight"][0]) for g in graphs])
    e_true = np.array([float(g.globals["energy"][0]) for g in graphs])
    de = pred["energy"][: len(graphs)] - e_true
    off = np.concatenate([[0], np.cumsum(n)])
    energy = np.sum(w * rho(de / n)) / np.sum(w)
    f_num = f_den = 0.0
    f_abs, f_sq = [], []
    for i, g in enumerate(graphs):
        df = pred["forces"][off[i] : off[i + 1]] - np.asarray(g.nodes["forces"], np.float64)
        f_num += w[i] * np.sum(rho(df))
        f_den += w[i] * 3 * n[i]
        f_abs.append(np.abs(df).ravel())
        f_sq.append((df**2).ravel())
    has = np.array([float(g.globals["has_stress"][0]) for g in graphs])
    s_num = s_den = 0.0
    for i, g in enumerate(graphs):
        ds = pred["stress"][i] - np.asarray(g.globals["stress"][0], np.float64)
        s_num += w[i] * has[i] * np.sum(rho(ds))
        s_den += w[i] * has[i] * 9
    terms = {"energy": energy, "forces": f_num / f_den, "stress": s_num / s_den}
    f_abs, f_sq = np.concatenate(f_abs), np.concatenate(f_sq)
    ds0 = pred["stress"][0] - np.asarray(graphs[0].globals["stress"][0], np.float64)
    metrics = {
        "energy_mae_mev_per_atom": 1000 * np.mean(np.abs(de) / n),
        "energy_rmse_mev_per_atom": 1000 * np.sqrt(np.mean((de / n) ** 2)),
        "energy_mae_mev": 1000 * np.mean(np.abs(de)),
        "forces_mae_mev_per_A": 1000 * np.mean(f_abs),
        "forces_rmse_mev_per_A": 1000 * np.sqrt(np.mean(f_sq)),
        "stress_mae_mev_per_A3": 1000 * np.mean(np.abs(ds0)),
    }
    return terms, metrics


@pytest.mark.parametrize("kind", ["mse", "huber"])
def test_loss_terms_match_hand_computation_with_padding(kind):
    graphs = _with_stress_and_weights(ethanol_graphs(3))
    batch = batch_graphs(graphs)
    padded = pad_graph(batch, n_node=40, n_edge=256, n_graph=6)
    pred = _fake_predictions(padded, 27, 3)
    ref, _ = _hand(graphs, pred, kind=kind)
    jpred = {k: jnp.asarray(v, jnp.float32) for k, v in pred.items()}
    got = loss_terms(jpred, padded, kind=kind, huber_delta=0.01)
    for k in ("energy", "forces", "stress"):
        np.testing.assert_allclose(float(got[k]), ref[k], rtol=2e-5, err_msg=k)
    # same batch with a different padding budget and different garbage: identical loss
    padded2 = pad_graph(batch, n_node=64, n_edge=320, n_graph=4)
    pred2 = _fake_predictions(padded2, 27, 3, garbage=1e30)
    got2 = loss_terms(
        {k: jnp.asarray(v, jnp.float32) for k, v in pred2.items()}, padded2, kind=kind
    )
    for k in ("energy", "forces", "stress"):
        assert float(got2[k]) == pytest.approx(float(got[k]), rel=1e-6)
        assert np.isfinite(float(got2[k]))


def test_weighted_total_loss():
    graphs = _with_stress_and_weights(ethanol_graphs(2))
    padded = pad_graph(batch_graphs(graphs), n_node=24, n_edge=200, n_graph=3)
    pred = _fake_predictions(padded, 18, 2)
    ref, _ = _hand(graphs, pred)
    loss_fn = make_loss_fn(energy_weight=3.0, forces_weight=7.0, stress_weight=11.0)
    loss, _ = loss_fn({k: jnp.asarray(v, jnp.float32) for k, v in pred.items()}, padded)
    expected = 3.0 * ref["energy"] + 7.0 * ref["forces"] + 11.0 * ref["stress"]
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5)
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss_fn(kind="l1")


def test_metrics_hand_computation_and_batching_invariance():
    graphs = _with_stress_and_weights(ethanol_graphs(5))
    big = pad_graph(batch_graphs(graphs), n_node=48, n_edge=512, n_graph=7)
    pred = _fake_predictions(big, 45, 5, seed=3)
    _, ref = _hand(graphs, pred)
    acc = MetricsAccumulator()
    acc.add(batch_error_sums({k: jnp.asarray(v, jnp.float32) for k, v in pred.items()}, big))
    res = acc.result()
    assert res["n_configs"] == 5 and res["n_atoms"] == 45
    for k, v in ref.items():
        np.testing.assert_allclose(res[k], v, rtol=1e-4, err_msg=k)
    # accumulate over batches of 2, 2, 1 (other padding, NaN garbage): the same numbers
    acc2 = MetricsAccumulator()
    nodes = np.concatenate([[0], np.cumsum([9] * 5)])
    for lo, hi in ((0, 2), (2, 4), (4, 5)):
        sub = pad_graph(batch_graphs(graphs[lo:hi]), n_node=32, n_edge=256, n_graph=3)
        p = {
            "energy": np.concatenate([pred["energy"][lo:hi], np.full(3 - (hi - lo), np.nan)]),
            "forces": np.concatenate(
                [pred["forces"][nodes[lo] : nodes[hi]], np.full((32 - 9 * (hi - lo), 3), np.nan)]
            ),
            "stress": np.concatenate(
                [pred["stress"][lo:hi], np.full((3 - (hi - lo), 3, 3), np.nan)]
            ),
        }
        acc2.add(batch_error_sums({k: jnp.asarray(v, jnp.float32) for k, v in p.items()}, sub))
    res2 = acc2.result()
    for k, v in res.items():
        assert res2[k] == pytest.approx(v, rel=1e-5), k
    # whole-dataset MSE loss from the sums equals the (unweighted) per-batch formula
    loss = mse_loss_from_sums(acc.sums, energy_weight=1.0, forces_weight=1.0)
    assert loss == pytest.approx(
        (ref["energy_rmse_mev_per_atom"] / 1000) ** 2 + (ref["forces_rmse_mev_per_A"] / 1000) ** 2,
        rel=1e-4,
    )
