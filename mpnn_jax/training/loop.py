"""The training loop: ``train(config, workdir) -> summary``.

One run lives in one directory ``W``:

* ``W/config.yaml``: the resolved config (absolute paths, overrides applied);
* ``W/metrics.jsonl``: one JSON record per logged step (``step``, ``epoch``, ``loss`` and its
  terms, ``grad_norm``, ``loss_scale``, ``skipped`` (total skipped steps), ``lr``, ``time`` in s)
  and, on evaluation steps, ``val`` (metrics of the EMA weights on the validation set);
* ``W/checkpoints/latest.msgpack`` and ``best.msgpack`` (+ ``.json`` metadata), see
  :mod:`mpnn_jax.training.checkpoint`;
* ``W/learning_curve.png`` and ``W/summary.json`` at the end.

If ``W`` holds a checkpoint the run resumes from it: same data order (a pure function of seed
and epoch), RNG, step, loss scale, EMA and optimiser state, so a stopped-and-resumed run has the
same loss curve as an uninterrupted one. ``KeyboardInterrupt`` saves a checkpoint and returns;
``train.max_minutes`` stops cleanly after the step that exceeds it. With
``train.steps_per_call = k > 1`` (one device) each device call runs k optimiser steps (a
``lax.scan`` over k batches of one padded shape); the curve is the same as with k = 1.

Data parallelism (the ``parallel`` section, see :mod:`mpnn_jax.training.parallel`): with more
than one selected device each step takes ``n_devices`` consecutive host batches, one per device,
so the effective batch size is ``train.batch_size x n_devices`` and an epoch takes
``1/n_devices`` as many steps; the learning rate is not scaled automatically, and
``train.max_steps`` counts optimiser steps. The checkpointed data position counts host batches,
so a run may resume on a different number of devices (with a warning: the effective batch size
changes) and continue the same data order from the same batch.

Multi-process (``parallel.num_processes > 1``, one process per host): every process runs this
function with the same config and ``WORKDIR`` on a shared filesystem. All take part in every
step and evaluation, each building only its own devices' batches; only process 0 writes files
(``config.yaml``, ``metrics.jsonl``, checkpoints, plot, ``summary.json``) and shows progress;
every process reads the checkpoint on resume (and checks that all resumed the same step).

Command line (the ``mpnn-jax train`` subcommand calls :func:`train`)::

    python -m mpnn_jax.training.loop CONFIG.yaml WORKDIR [section.key=value ...]
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mpnn_jax import xla
from mpnn_jax.precision import get_policy, loss_scale_for
from mpnn_jax.training import checkpoint as ckpt
from mpnn_jax.training import parallel
from mpnn_jax.training.config import Config, apply_overrides, load_config, save_config
from mpnn_jax.training.data import PreparedData, make_loader, prepare_data
from mpnn_jax.training.loss import make_loss_fn
from mpnn_jax.training.metrics import batch_error_sums, evaluate_batches, mse_loss_from_sums
from mpnn_jax.training.optim import current_lr, make_optimizer
from mpnn_jax.training.state import (
    TrainState,
    init_train_state,
    make_multi_step,
    make_train_step,
)


def model_spec(cfg: Config, data: PreparedData) -> dict:
    """Everything ``build_model`` needs, JSON-able (stored in every checkpoint)."""
    return {
        "name": cfg.model.name,
        "sizes": dict(cfg.model.sizes),
        "backend": cfg.model.backend,
        "n_species": len(data.species),
        "cutoff": float(cfg.data.cutoff),
        "avg_num_neighbors": float(data.statistics["avg_num_neighbors"]),
        "atomic_energies": [float(e) for e in data.e0s],
        "scale": float(data.statistics["scale"]),
        "shift": float(data.statistics["shift"]),
    }


def build_model_from_spec(spec: dict, *, policy: Any, backend: str | None = None) -> Any:
    """``mpnn_jax.models.build_model`` from a :func:`model_spec` dict, with the spec's backend
    (``"e3nn"`` for specs written before backends were recorded) unless ``backend`` is given.

    Raises:
        ValueError: the backend is unknown or not installed here.
    """
    from mpnn_jax.models import build_model

    return build_model(
        spec["name"],
        policy=policy,
        backend=backend or spec.get("backend", "e3nn"),
        n_species=spec["n_species"],
        cutoff=spec["cutoff"],
        avg_num_neighbors=spec["avg_num_neighbors"],
        atomic_energies=np.asarray(spec["atomic_energies"]),
        scale=spec["scale"],
        shift=spec["shift"],
        **spec["sizes"],
    )


def _truncate_metrics(path: Path, step: int) -> None:
    """Drops records after ``step`` (written after the checkpoint we resume from)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError):
            continue
    path.write_text("".join(line + "\n" for line in keep))


def _host(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: np.asarray(x).item(), jax.device_get(tree))


def train(config: Config | str | Path, workdir: str | Path, *, overrides=()) -> dict:
    """Trains a model as configured, resuming from ``workdir`` if it holds a checkpoint.

    Args:
        config: a :class:`Config` or the path of a YAML config.
        workdir: the run directory (created).
        overrides: ``section.key=value`` strings applied to the config.

    Returns:
        A summary dict: ``status`` (``done``, ``time_limit`` or ``interrupted``), ``step``,
        ``skipped``, ``best_val_loss``, ``val`` (last validation metrics), ``test`` (metrics of
        the best EMA weights on ``data.test`` if given), ``workdir``, ``minutes``.
    """
    cfg = load_config(config) if isinstance(config, str | Path) else config
    cfg = apply_overrides(cfg, overrides) if overrides else cfg
    pc = cfg.parallel
    parallel.initialize_distributed(
        coordinator_address=pc.coordinator_address,
        num_processes=pc.num_processes,
        process_id=pc.process_id,
    )
    primary = parallel.is_primary()  # the one process that writes files
    policy = get_policy(cfg.precision.policy)
    if policy.uses_x64:
        jax.config.update("jax_enable_x64", True)
    workdir = Path(workdir)
    ckpt_dir = workdir / "checkpoints"
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, workdir / "config.yaml")
    tc = cfg.train

    devices = parallel.select_devices(pc.devices)
    n_dev = len(devices)
    mesh = parallel.make_mesh(devices) if n_dev > 1 else None
    resume_path = ckpt.latest_checkpoint(ckpt_dir)  # read by every process
    resume_meta = ckpt.read_checkpoint(resume_path)["metadata"] if resume_path else None
    dtype = np.float64 if policy.uses_x64 else np.float32
    if resume_meta:
        from mpnn_jax.data import SpeciesTable

        _check_resume_compatible(resume_meta.get("config", {}), _config_dict(cfg))
        _check_device_count(resume_meta.get("n_devices", 1), n_dev)

        data = prepare_data(
            cfg.data,
            seed=tc.seed,
            dtype=dtype,
            species=SpeciesTable.from_list(resume_meta["species"]),
            e0s=np.asarray(resume_meta["e0s"]),
            with_test=True,
        )
        data.statistics = resume_meta["statistics"]
    else:
        data = prepare_data(cfg.data, seed=tc.seed, dtype=dtype, with_test=True)
    spec = model_spec(cfg, data)
    model = build_model_from_spec(spec, policy=policy)
    from mpnn_jax.potential import init_params, make_predictor

    predict = make_predictor(model)

    nb = cfg.data.max_buckets
    train_loader = make_loader(
        data.train, batch_size=tc.batch_size, shuffle=True, seed=tc.seed, max_buckets=nb
    )
    vbs = tc.valid_batch_size or tc.batch_size
    valid_loader = make_loader(data.valid, batch_size=vbs, shuffle=False, max_buckets=nb)
    n_batches = len(train_loader)

    plateau = tc.schedule == "plateau"
    optimizer, schedule = make_optimizer(
        lr=tc.lr,
        optimizer=tc.optimizer,
        weight_decay=tc.weight_decay,
        clip_norm=tc.clip_norm,
        schedule=tc.schedule,
        warmup_steps=tc.warmup_steps,
        max_steps=tc.max_steps,
        min_lr_ratio=tc.min_lr_ratio,
        plateau_patience=tc.plateau_patience,
        plateau_factor=tc.plateau_factor,
        plateau_accumulation=tc.eval_every,
    )
    weights = dict(
        energy_weight=tc.energy_weight,
        forces_weight=tc.forces_weight,
        stress_weight=tc.stress_weight,
    )
    loss_fn = make_loss_fn(**weights, kind=tc.loss, huber_delta=tc.huber_delta)
    key = jax.random.PRNGKey(tc.seed)
    init_key, rng = jax.random.split(key)
    first = next(train_loader.iterate(0))
    params = jax.jit(lambda k, g: init_params(model, k, g))(init_key, first)  # one compile
    loss_scale = loss_scale_for(
        policy, initial=cfg.precision.loss_scale_initial, period=cfg.precision.loss_scale_period
    )
    state = init_train_state(params=params, optimizer=optimizer, loss_scale=loss_scale, rng=rng)
    best_val = float("inf")
    elapsed_before = 0.0
    if resume_path:
        state, meta = ckpt.restore_state(resume_path, state)
        best_val = float(meta.get("best_val_loss", float("inf")))
        elapsed_before = float(meta.get("elapsed_s", 0.0))
        if primary:
            _truncate_metrics(workdir / "metrics.jsonl", int(meta["step"]))
    parallel.assert_same_on_all_processes(int(state.step), "the step resumed from")

    step_kwargs = dict(
        loss_fn=loss_fn,
        optimizer=optimizer,
        ema_decay=tc.ema_decay,
        batches_per_epoch=n_batches,
        plateau=plateau,
    )
    xla_options = xla.options_for(model)  # per model (mpnn_jax.xla)

    def error_sums(p: Any, g: Any) -> dict:
        return batch_error_sums(predict(p, g), g)

    k = tc.steps_per_call
    if mesh is None:
        sums_fn = xla.jit(error_sums, compiler_options=xla_options)
        one_step = make_train_step(predict, **step_kwargs)
        step_fn = xla.jit(one_step, compiler_options=xla_options)
        multi_fn = (
            xla.jit(make_multi_step(one_step), compiler_options=xla_options) if k > 1 else None
        )

        def evaluate_on(params: Any, loader: Any) -> Any:
            return evaluate_batches(sums_fn, params, loader.iterate(0))

    else:
        if k > 1:
            warnings.warn(
                f"train.steps_per_call={k} runs on one device only; with {n_dev} devices each "
                "call runs one step",
                stacklevel=2,
            )
            k = 1
        step_fn = parallel.make_parallel_train_step(
            predict, mesh=mesh, compiler_options=xla_options, **step_kwargs
        )
        multi_fn = None
        sharded_sums = parallel.make_sharded_sums_fn(error_sums, mesh, compiler_options=xla_options)
        state = parallel.replicate(state, mesh)

        def evaluate_on(params: Any, loader: Any) -> Any:
            return parallel.evaluate_sharded(sharded_sums, params, loader, mesh)

    def metadata(state: TrainState, elapsed: float) -> dict:
        h = _host({"step": state.step, "epoch": state.epoch, "position": state.position})
        return {
            **h,
            "best_val_loss": best_val,
            "elapsed_s": elapsed,
            "species": data.species.to_list(),
            "e0s": [float(e) for e in data.e0s],
            "cutoff": float(cfg.data.cutoff),
            "model": spec,
            "policy": policy.name,
            "policy_spec": policy.spec(),
            "statistics": data.statistics,
            "n_devices": n_dev,
            "config": json.loads(json.dumps(_config_dict(cfg), default=str)),
        }

    def save(name: str, elapsed: float) -> None:
        """Process 0 writes; every process waits for it (the others may read the file next)."""
        if primary:
            ckpt.save_checkpoint(
                ckpt_dir,
                state=state,
                ema_params=state.ema_params,
                metadata=metadata(state, elapsed),
                name=name,
            )
        parallel.sync_processes(f"checkpoint {name} {int(state.step)}")

    step = int(state.step)
    epoch, position = int(state.epoch), int(state.position)
    t_start = time.time()
    status, last_val = "done", None
    metrics_file = open(workdir / "metrics.jsonl", "a") if primary else None  # noqa: SIM115
    bar = _progress(tc.max_steps, step)
    ckpt_every = tc.checkpoint_every or tc.eval_every
    if mesh is None:
        batches = _host_batches(train_loader, epoch, position)
    else:
        # each process builds only the batches of its own devices
        batches = parallel.iterate_sharded_groups(
            train_loader, mesh, epoch=epoch, position=position
        )
    try:
        while step < tc.max_steps and status == "done":
            # one device call: up to the next multiple of k steps (so that logging, evaluation
            # and checkpoints fall between calls, also after a resume), each on n_dev batches
            n = min(k - step % k, tc.max_steps - step)
            state, m = _advance(state, batches, step_fn, multi_fn if n == k else None, n)
            batch_epoch = epoch + (position + (n - 1) * n_dev) // n_batches
            epoch += (position + n * n_dev) // n_batches
            position = (position + n * n_dev) % n_batches
            step += n
            elapsed = elapsed_before + time.time() - t_start
            is_eval = step % tc.eval_every == 0 or step == tc.max_steps
            record = None
            if step % tc.log_every == 0 or is_eval:
                mh = _host(m)
                record = {
                    "step": step,
                    "epoch": batch_epoch,
                    **{k: mh[k] for k in ("loss", "energy", "forces", "stress")},
                    "grad_norm": mh["grad_norm"],
                    "loss_scale": mh["loss_scale"],
                    "skipped": int(state.n_skipped),
                    "lr": current_lr(schedule, state.opt_state, step - 1),
                    "time": elapsed,
                }
            if is_eval:
                acc = evaluate_on(state.ema_params, valid_loader)
                last_val = acc.result()
                last_val["loss"] = mse_loss_from_sums(acc.sums, **weights)
                record["val"] = last_val
                if last_val["loss"] < best_val:
                    best_val = last_val["loss"]
                    save(ckpt.BEST, elapsed)
            if record is not None and metrics_file is not None:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                bar.set_postfix(_postfix(record, last_val), refresh=False)
            if is_eval or step % ckpt_every == 0:
                save(ckpt.LATEST, elapsed)
            bar.update(n)
            # process 0's clock decides, so that all processes stop after the same step; with
            # several processes that is a collective, so it is asked at logged steps only
            check = parallel.single_process() or record is not None
            if tc.max_minutes is not None and check:
                if parallel.agree(elapsed > 60.0 * tc.max_minutes):
                    status = "time_limit"
        save(ckpt.LATEST, elapsed_before + time.time() - t_start)
    except KeyboardInterrupt:
        status = "interrupted"
        save(ckpt.LATEST, elapsed_before + time.time() - t_start)
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
    return _finish(workdir, status, state, best_val, last_val, data, evaluate_on, vbs, nb, t_start)


def _advance(state: TrainState, batches: Any, step_fn: Any, multi_fn: Any, n: int) -> tuple:
    """Runs ``n`` optimiser steps on the next ``n`` batches: one ``multi_fn`` call when there
    is more than one and they share a padded shape, else ``step_fn`` per batch (the same
    updates). Returns ``(state, metrics of the last step)``."""
    group = [next(batches) for _ in range(n)]
    shapes = {tuple(np.shape(x) for x in jax.tree_util.tree_leaves(g)) for g in group}
    if n > 1 and multi_fn is not None and len(shapes) == 1:
        stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *group)
        state, ms = multi_fn(state, stacked)
        return state, jax.tree_util.tree_map(lambda x: x[-1], ms)
    for g in group:
        state, m = step_fn(state, g)
    return state, m


def _host_batches(loader: Any, epoch: int, position: int) -> Any:
    """The single-device stream of padded batches from ``(epoch, position)`` on, epoch after
    epoch (infinite)."""
    while True:
        yield from loader.iterate(epoch, start_step=position)
        epoch, position = epoch + 1, 0


def _finish(
    workdir, status, state, best_val, last_val, data, evaluate_on, vbs, max_buckets, t_start
) -> dict:
    """The test evaluation (every process: it is collective), then plot and summary (process 0)."""
    summary = {
        "status": status,
        "step": int(state.step),
        "skipped": int(state.n_skipped),
        "best_val_loss": best_val,
        "val": last_val,
        "workdir": str(workdir),
        "minutes": (time.time() - t_start) / 60.0,
    }
    best = ckpt.checkpoint_path(workdir / "checkpoints", ckpt.BEST)
    # best_val (not the file) decides: it is the same on every process
    if status == "done" and data.test and best_val < float("inf"):
        params, _ = ckpt.load_weights(best)
        loader = make_loader(data.test, batch_size=vbs, shuffle=False, max_buckets=max_buckets)
        summary["test"] = evaluate_on(params, loader).result()
    if not parallel.is_primary():
        return summary
    try:
        from mpnn_jax.training.plots import plot_learning_curve

        plot_learning_curve(workdir / "metrics.jsonl", workdir / "learning_curve.png")
    except Exception as e:  # noqa: BLE001 - a plot must never lose a finished run
        summary["plot_error"] = repr(e)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _check_resume_compatible(saved: dict, now: dict) -> None:
    """Warns when a setting that fixes the data order or the model differs from the checkpoint."""
    keys = [("train", "seed"), ("train", "batch_size"), ("model", "name"), ("model", "sizes")]
    keys += [("data", k) for k in ("train", "valid", "n_train", "cutoff")]
    changed = [
        f"{a}.{b}: {saved[a][b]!r} -> {now[a][b]!r}"
        for a, b in keys
        if a in saved and b in saved[a] and saved[a][b] != now[a][b]
    ]
    if changed:
        warnings.warn(
            "resuming with settings that differ from the checkpoint's (the run will not match an "
            "uninterrupted one): " + "; ".join(changed),
            stacklevel=3,
        )


def _check_device_count(saved: int, now: int) -> None:
    """Warns when resuming on another number of devices (the effective batch size changes)."""
    if saved != now:
        warnings.warn(
            f"resuming a checkpoint written with {saved} device(s) on {now}: the data order "
            f"continues from the same batch, but the effective batch size changes",
            stacklevel=3,
        )


def _config_dict(cfg: Config) -> dict:
    from mpnn_jax.training.config import config_to_dict

    return config_to_dict(cfg)


def _progress(total: int, initial: int):
    """The progress bar: on a terminal, and on process 0 only."""
    from tqdm.auto import tqdm

    disable = not (sys.stderr.isatty() and parallel.is_primary())
    return tqdm(total=total, initial=initial, disable=disable, unit="step")


def _postfix(record: dict, val: dict | None) -> dict:
    out = {"loss": f"{record['loss']:.4g}"}
    if val is not None:
        out["val_F_mae"] = f"{val['forces_mae_mev_per_A']:.2f}"
    if record["loss_scale"] != 1.0:
        out["scale"] = f"{record['loss_scale']:.0f}"
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m mpnn_jax.training.loop CONFIG WORKDIR [overrides...]``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    summary = train(argv[0], argv[1], overrides=argv[2:])
    print(json.dumps({k: v for k, v in summary.items() if k != "val"}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
