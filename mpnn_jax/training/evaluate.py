"""Loading a trained run and evaluating it on a dataset, under its own or another policy.

* :func:`load_run` rebuilds the model from a run directory's checkpoint metadata and returns the
  best EMA weights; ``policy=`` swaps the precision policy (``model.clone(policy=...)``: same
  parameters).
* :func:`evaluate` computes energy / force (/ stress) errors on an extended-XYZ file.
* :func:`format_metrics` prints the result as a Markdown table.

Example:
    >>> # model, params, meta = load_run("runs/ethanol", policy="fp64")
    >>> # print(format_metrics(evaluate("runs/ethanol", "test.xyz", policy="bf16-mixed")))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from mpnn_jax import xla
from mpnn_jax.precision import Policy, get_policy
from mpnn_jax.training import checkpoint as ckpt
from mpnn_jax.training import parallel
from mpnn_jax.training.config import config_from_dict
from mpnn_jax.training.data import configs_to_graphs, make_loader, read_configs
from mpnn_jax.training.metrics import batch_error_sums, evaluate_batches, format_metrics_table


def _checkpoint_file(workdir: str | Path, which: str) -> Path:
    d = Path(workdir) / "checkpoints"
    path = ckpt.checkpoint_path(d, which)
    if not path.exists() and which == ckpt.BEST:
        path = ckpt.checkpoint_path(d, ckpt.LATEST)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint in {d} (expected {which}.msgpack)")
    return path


def load_run(
    workdir: str | Path,
    *,
    policy: str | Policy | None = None,
    which: str = ckpt.BEST,
    backend: str | None = None,
) -> tuple[Any, Any, dict]:
    """The model, its evaluated (EMA) weights and the run metadata.

    Args:
        workdir: a run directory written by :func:`mpnn_jax.training.loop.train`.
        policy: evaluate under this policy instead of the trained one.
        which: ``"best"`` (default; falls back to ``"latest"``) or ``"latest"``.
        backend: build the model with this convolution backend (e.g. ``"cueq"``) instead of the
            run's; the weights are the same for every backend.

    Returns:
        ``(model, params, metadata)``; ``metadata`` holds ``step``, ``species``, ``e0s``,
        ``cutoff``, ``model`` (the build spec), ``policy``, ``statistics`` and ``config``.
    """
    from mpnn_jax.training.loop import build_model_from_spec

    params, meta = ckpt.load_weights(_checkpoint_file(workdir, which))
    trained = get_policy(meta["policy"])
    if trained.uses_x64:
        jax.config.update("jax_enable_x64", True)
    model = build_model_from_spec(meta["model"], policy=trained, backend=backend)
    if policy is not None:
        new = get_policy(policy)
        if new.uses_x64:
            jax.config.update("jax_enable_x64", True)
        model = model.clone(policy=new)
    return model, params, meta


def evaluate(
    workdir: str | Path,
    data_path: str | Path,
    *,
    policy: str | Policy | None = None,
    batch_size: int | None = None,
    n_configs: int | None = None,
    devices: str | int = "all",
    backend: str | None = None,
) -> dict:
    """Errors of a trained run's best EMA weights on an extended-XYZ file.

    Args:
        workdir: the run directory.
        data_path: an extended-XYZ file (or ``bundled:<name>/<split>``), read with the run's
            energy / forces / stress keys.
        policy: evaluate under this policy (default: the trained one).
        batch_size: evaluation batch size (default: the run's validation batch size).
        n_configs: evaluate only the first ``n_configs`` configurations.
        devices: ``"all"`` or a device count; with more than one, each step evaluates one
            batch per device (``mpnn_jax.training.parallel.evaluate_sharded``; same metrics).
        backend: evaluate with this convolution backend (default: the run's).

    Returns:
        ``n_configs``, ``energy_mae_mev_per_atom``, ``energy_rmse_mev_per_atom``,
        ``energy_mae_mev``, ``energy_rmse_mev``, ``forces_mae_mev_per_A``,
        ``forces_rmse_mev_per_A``, stress metrics where present, ``policy``, ``backend``,
        ``data``, ``step``.
    """
    from mpnn_jax.data import SpeciesTable
    from mpnn_jax.potential import make_predictor

    model, params, meta = load_run(workdir, policy=policy, backend=backend)
    cfg = config_from_dict(meta["config"])
    pol = get_policy(policy) if policy is not None else get_policy(meta["policy"])
    dtype = np.float64 if pol.uses_x64 else np.float32
    configs = read_configs(str(data_path), cfg.data)
    if n_configs is not None:
        configs = configs[:n_configs]
    species = SpeciesTable.from_list(meta["species"])
    graphs = configs_to_graphs(configs, cutoff=meta["cutoff"], species=species, dtype=dtype)
    bs = batch_size or cfg.train.valid_batch_size or cfg.train.batch_size
    loader = make_loader(graphs, batch_size=bs, shuffle=False, max_buckets=cfg.data.max_buckets)
    predict = make_predictor(model)

    def sums_fn(p, g):
        return batch_error_sums(predict(p, g), g)

    selected = parallel.select_devices(devices)
    if len(selected) > 1:
        mesh = parallel.make_mesh(selected)
        sharded = parallel.make_sharded_sums_fn(
            sums_fn, mesh, compiler_options=xla.options_for(model)
        )
        result = parallel.evaluate_sharded(sharded, params, loader, mesh).result()
    else:
        result = evaluate_batches(xla.jit(sums_fn, model=model), params, loader.iterate(0)).result()
    result.update(
        policy=pol.name, backend=model.backend, data=str(data_path), step=int(meta["step"])
    )
    return result


def format_metrics(result: dict | dict[str, dict]) -> str:
    """A Markdown table of one :func:`evaluate` result or of ``{name: result}``."""
    if "n_configs" in result:
        result = {result.get("policy", "model"): result}
    return format_metrics_table(result)


def run_policy(workdir: str | Path, *, policy: str | Policy | None = None) -> Policy:
    """``policy`` parsed, or the policy the run in ``workdir`` was trained with."""
    if policy is not None:
        return get_policy(policy)
    _, meta = ckpt.load_weights(_checkpoint_file(workdir, ckpt.BEST))
    return get_policy(meta["policy"])


def audit_run(workdir: str | Path, *, policy: str | Policy | None = None) -> Any:
    """Runs the precision audit (``mpnn_jax.precision.audit``) on a trained run's model.

    Args:
        workdir: the run directory.
        policy: audit under this policy (default: the trained one).

    Returns:
        The ``AuditReport`` of the predictor (energies, forces, stress) on one training batch;
        ``report.check(policy)`` lists violations, ``report.table()`` prints it.
    """
    from mpnn_jax.data import SpeciesTable
    from mpnn_jax.potential import make_predictor
    from mpnn_jax.precision.audit import audit

    model, params, meta = load_run(workdir, policy=policy)
    cfg = config_from_dict(meta["config"])
    pol = get_policy(policy) if policy is not None else get_policy(meta["policy"])
    dtype = np.float64 if pol.uses_x64 else np.float32
    configs = read_configs(cfg.data.train, cfg.data)[: cfg.train.batch_size]
    species = SpeciesTable.from_list(meta["species"])
    graphs = configs_to_graphs(configs, cutoff=meta["cutoff"], species=species, dtype=dtype)
    batch = next(make_loader(graphs, batch_size=len(graphs), shuffle=False).iterate(0))
    return audit(make_predictor(model), params, batch)
