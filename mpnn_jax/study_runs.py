"""Drivers of the precision study: the per-stage study of a run, NVE drift and training per policy.

* :func:`load_study_model`: a trained run's model and weights, or the same architecture (or one
  built from a config) at random init.
* :func:`read_study_graphs`: ``n`` evenly spaced test configurations as float64 graphs.
* :func:`run_stage_study`: :func:`mpnn_jax.study.stage_errors` plus ``stage_table.md``,
  ``stage_errors.json`` (with the command, versions, hardware and seeds) and ``stage_errors.png``.
* :func:`nve_drift`: NVE runs of one structure under several policies: drift (meV/atom/ps) and
  fluctuation (meV/atom) per policy; :func:`plot_nve` draws total energy against time.
* :func:`train_policies`: trains one config under each policy (same seed) and compares them.

Host-side drivers (not jittable); ``experiments/precision_study.py`` is their command line.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mpnn_jax import study, xla
from mpnn_jax.precision import get_policy


def environment_info() -> dict:
    """Versions (python, jax, jaxlib, e3nn-jax, flax), backend and hardware, for result files."""
    import e3nn_jax
    import flax
    import jaxlib

    dev = jax.devices()[0]
    return {
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "e3nn_jax": e3nn_jax.__version__,
        "flax": flax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "machine": f"{platform.machine()} {platform.platform()}",
        "cpu": _cpu_model(),
        "n_cpus": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "strict_rounding": study.strict_rounding(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def load_study_model(
    workdir: str | Path | None = None,
    *,
    config: str | Path | None = None,
    random_init: bool = False,
    seed: int = 0,
    overrides: Sequence[str] = (),
) -> tuple[Any, Any, dict]:
    """``(model, params, info)`` for the study.

    Args:
        workdir: a trained run (best EMA weights; with ``random_init`` only its architecture,
            normalisation and E0s are used).
        config: without ``workdir``: a YAML config whose model is built at random init (species,
            E0s and statistics from its training data).
        random_init: fresh parameters from ``jax.random.PRNGKey(seed)``.
        seed: the init seed.
        overrides: ``section.key=value`` overrides of ``config``.

    Returns:
        ``info`` holds ``species`` (atomic numbers), ``cutoff``, ``data`` (the DataConfig as a
        dict), ``test`` (the config's test file), ``model`` (the build spec), ``source``.
    """
    from mpnn_jax.training.config import load_config
    from mpnn_jax.training.loop import build_model_from_spec, model_spec

    if workdir is not None:
        from mpnn_jax.training.evaluate import load_run

        model, params, meta = load_run(workdir)
        data = meta["config"]["data"]
        info = {
            "species": meta["species"],
            "cutoff": meta["cutoff"],
            "model": meta["model"],
            "data": data,
            "test": data.get("test"),
            "source": str(workdir),
            "step": meta.get("step"),
            "train_seed": meta["config"]["train"]["seed"],
        }
    elif config is not None:
        from mpnn_jax.training.data import prepare_data

        cfg = load_config(config, overrides=overrides)
        prepared = prepare_data(cfg.data, seed=cfg.train.seed)
        spec = model_spec(cfg, prepared)
        model = build_model_from_spec(spec, policy="fp32")
        params = None
        info = {
            "species": prepared.species.to_list(),
            "cutoff": cfg.data.cutoff,
            "model": spec,
            "data": study_dict(cfg.data),
            "test": cfg.data.test,
            "source": str(config),
        }
        random_init = True
    else:
        raise ValueError("give a workdir or a config")
    if random_init:
        params = _init(model, info, seed)
        info["source"] += f" (random init, seed {seed})"
    info["random_init"] = random_init
    info["init_seed"] = seed if random_init else None
    return model, params, info


def study_dict(dc: Any) -> dict:
    import dataclasses

    return dataclasses.asdict(dc)


def _init(model: Any, info: dict, seed: int) -> Any:
    from mpnn_jax.data import GraphLoader
    from mpnn_jax.potential import init_params

    graphs = read_study_graphs(info["test"] or info["data"]["train"], info, n_configs=2)
    batch = next(
        GraphLoader(study.cast_graphs(graphs, np.float32), batch_size=2, shuffle=False).iterate(0)
    )
    return init_params(model.clone(policy=get_policy("fp32")), jax.random.PRNGKey(seed), batch)


def read_study_graphs(path: str, info: dict, *, n_configs: int | None = 100) -> list:
    """``n_configs`` evenly spaced configurations of ``path`` (all if None) as float64 graphs
    (``path`` may be ``bundled:<name>/<split>``)."""
    from mpnn_jax.data import SpeciesTable
    from mpnn_jax.training.config import DataConfig
    from mpnn_jax.training.data import configs_to_graphs, read_configs

    keys = {k: info["data"][k] for k in ("energy_key", "forces_key", "stress_key")}
    configs = read_configs(str(path), DataConfig(train=str(path), **keys))
    if n_configs is not None and n_configs < len(configs):
        idx = np.linspace(0, len(configs) - 1, n_configs).round().astype(int)
        configs = [configs[i] for i in idx]
    species = SpeciesTable.from_list(info["species"])
    return configs_to_graphs(configs, cutoff=info["cutoff"], species=species, dtype=np.float64)


def run_stage_study(
    model: Any,
    params: Any,
    graphs: Sequence,
    out: str | Path,
    *,
    info: dict,
    policies: Sequence[str] | None = None,
    command: str = "",
    note: str = "",
) -> list[dict]:
    """Runs :func:`mpnn_jax.study.stage_errors` and writes ``stage_table.md``,
    ``stage_errors.json`` and ``stage_errors.png`` under ``out``.

    With a trained model (``info["random_init"]`` false) errors are also scaled by the model's
    own fp64 test error on ``graphs``.
    """
    trained = not info.get("random_init", False)
    ref = study.predict_all(model, params, graphs, policy="fp64")
    model_error = study.model_test_error(ref) if trained else None
    rows = study.stage_errors(
        model,
        params,
        graphs,
        policies=policies,
        model_error=model_error,
        reference_predictions=ref,
    )
    meta = {
        "command": command,
        "note": note,
        "environment": environment_info(),
        "model_error": model_error,
        "source": info,
        "n_configs": len(graphs),
    }
    write_stage_outputs(rows, out, meta=meta)
    return rows


def write_stage_outputs(rows: Sequence[dict], out: str | Path, *, meta: dict) -> None:
    """Writes ``stage_table.md``, ``stage_errors.json`` (rows + ``meta``) and
    ``stage_errors.png``; ``meta`` as written by :func:`run_stage_study` (``note``,
    ``model_error``, ``source``, ``n_configs``, ...). Re-renders from a saved JSON too."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_error = meta.get("model_error")
    rows = [{**r, "verdict": study.verdict(r)} for r in rows]  # the current rule
    kind = "trained" if model_error else "random init"
    title = f"{meta['source']['model']['name']} ({kind}), {meta['n_configs']} configs"
    rule = (
        "safe: force and energy error < 10% of the model's own test error"
        if model_error
        else "at random init, safe: force error < 1 meV/Å and energy error < 1 meV/atom"
    )
    head = f"# Per-stage precision errors: {title}\n\n"
    if meta.get("note"):
        head += meta["note"].strip() + "\n\n"
    head += f"Errors against the same weights in fp64; `mpnn_jax.study.verdict` ({rule}).\n\n"
    (out / "stage_table.md").write_text(head + study.stage_table(rows, model_error=model_error))
    study.save_json(out / "stage_errors.json", rows, **meta)
    study.plot_stage_errors(rows, out / "stage_errors.png", title=title)


# --- NVE energy conservation -------------------------------------------------------------------
#: :func:`plot_nve` gives a policy its own panel when its fluctuation exceeds this many times the
#: median fluctuation of all policies
NVE_OUTLIER = 30.0


def nve_drift(
    workdir_or_model: str | Path | tuple,
    structure: Any,
    *,
    policies: Sequence[str],
    steps: int,
    dt: float = 0.5,
    temperature: float = 300.0,
    seed: int = 0,
    log_every: int | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """NVE (velocity Verlet) runs of ``structure`` under each policy, same initial velocities.

    Args:
        workdir_or_model: a trained run or ``(model, params, species_table, cutoff)``.
        structure: an ``ase.Atoms`` or a structure file (first frame).
        policies: policy specs; an x64 policy (``fp64``) also integrates in float64, the others
            in float32.
        steps: MD steps per policy.
        dt: time step, fs.
        temperature: initial Maxwell-Boltzmann temperature, K.
        seed: velocity seed.
        log_every: steps between logged energies (default ``max(steps // 200, 1)``).
        out: if given, writes ``nve_drift.json`` and ``nve_energy.png`` there (after each policy).
        progress: a tqdm progress bar per policy.

    Returns:
        ``{policy: {"drift_meV_per_atom_per_ps", "fluctuation_meV_per_atom", "times_ps",
        "total_eV"}}``.
    """
    from tqdm.auto import tqdm

    from mpnn_jax.md import energy_drift, make_force_fn, simulate
    from mpnn_jax.md.calculator import validate_atoms
    from mpnn_jax.md.run import maxwell_boltzmann, read_structure
    from mpnn_jax.potential import make_predictor

    if isinstance(workdir_or_model, tuple):
        model, params, table, cutoff = workdir_or_model
    else:
        from mpnn_jax.md import load_trained

        model, params, table, cutoff = load_trained(workdir_or_model)
    atoms = read_structure(structure)
    species = validate_atoms(atoms, table)
    atoms.set_momenta(maxwell_boltzmann(atoms, temperature, seed=seed))
    log_every = log_every or max(steps // 200, 1)
    results = {}
    if out is not None:  # the same for every policy's write below
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "steps": steps,
            "dt_fs": dt,
            "temperature_K": temperature,
            "seed": seed,
            "n_atoms": len(atoms),
            "environment": environment_info(),
        }
    for spec in policies:
        pol = get_policy(spec)
        with jax.enable_x64(pol.uses_x64):
            predict = make_predictor(model.clone(policy=pol))
            force_fn = make_force_fn(
                predict, params, species=species, cell=atoms.cell[:], pbc=atoms.pbc
            )
            bar = tqdm(total=steps, unit="step", desc=f"NVE {spec}", disable=not progress)
            try:
                r = simulate(
                    atoms,
                    force_fn,
                    steps=steps,
                    dt=dt,
                    cutoff=cutoff,
                    log_every=log_every,
                    progress=lambda done, bar=bar: bar.update(done - bar.n),
                    compiler_options=xla.options_for(model),
                )
                times, total = r.times_fs * 1e-3, r.total
            except FloatingPointError:
                times, total = np.array([0.0, dt * 1e-3]), np.array([0.0, np.nan])
            finally:
                bar.close()
        drift, fluct = energy_drift(times, total, len(atoms))
        results[spec] = {
            "drift_meV_per_atom_per_ps": drift,
            "fluctuation_meV_per_atom": fluct,
            "times_ps": times.tolist(),
            "total_eV": total.tolist(),
        }
        if out is not None:  # after every policy: a run stopped later keeps what it finished
            tmp = out / "nve_drift.json.tmp"
            tmp.write_text(json.dumps({**meta, "runs": results}, indent=1))
            tmp.replace(out / "nve_drift.json")
            plot_nve(results, out / "nve_energy.png", n_atoms=len(atoms))
    return results


def plot_nve(results: dict[str, dict], path: str | Path, *, n_atoms: int) -> Path:
    """Total energy (meV/atom, relative to its own mean) against time, one line per policy.

    A policy whose fluctuation is more than :data:`NVE_OUTLIER` times the median of the others
    (or not finite: ``bf16-pure``, whose E0-shifted totals are quantised in eV) would flatten every
    other line, so it gets the left panel alone and the others share the right one.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fluct = {s: r["fluctuation_meV_per_atom"] for s, r in results.items()}
    median = float(np.median([v for v in fluct.values() if np.isfinite(v)] or [0.0]))
    wild = {s for s, v in fluct.items() if not np.isfinite(v) or v > NVE_OUTLIER * median > 0}
    if len(wild) == len(results):
        wild = set()
    groups = [sorted(wild, key=list(results).index), [s for s in results if s not in wild]]
    groups = [g for g in groups if g]
    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4), squeeze=False)
    for ax, specs in zip(axes[0], groups):
        for spec in specs:
            r = results[spec]
            e = 1000.0 * np.asarray(r["total_eV"], np.float64) / n_atoms  # meV/atom
            ax.plot(
                r["times_ps"],
                e - np.nanmean(e),
                lw=0.8,
                label=f"{spec}: {r['drift_meV_per_atom_per_ps']:.3g} meV/atom/ps",
            )
        ax.set_xlabel("time (ps)")
        ax.set_ylabel("total energy - its mean (meV/atom)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


# --- training under each policy ---------------------------------------------------------------
def default_test_files(test: str | None) -> list[str]:
    """The config's test file, plus the 600 K set next to an acac ``test_MD_300K.xyz``."""
    if not test:
        return []
    files = [test]
    if "test_MD_300K" in test:
        hot = test.replace("test_MD_300K", "test_MD_600K")
        if Path(hot).exists():
            files.append(hot)
    return files


def loss_scale_history(metrics_path: str | Path) -> dict[str, list]:
    """``steps``, ``loss_scale`` and cumulative ``skipped`` from a run's ``metrics.jsonl``."""
    from mpnn_jax.training.plots import read_metrics

    recs = [r for r in read_metrics(metrics_path) if "loss_scale" in r]
    return {
        "steps": [r["step"] for r in recs],
        "loss_scale": [r["loss_scale"] for r in recs],
        "skipped": [r.get("skipped", 0) for r in recs],
    }


def train_policies(
    config: str | Path,
    workdir: str | Path,
    *,
    policies: Sequence[str] = study.PRESET_POLICIES,
    overrides: Sequence[str] = (),
    test_files: Sequence[str] | None = None,
    vs_fp64_configs: int = 0,
) -> dict[str, dict]:
    """Trains ``config`` under each policy (same seed) into ``workdir/<policy>`` and compares.

    Writes ``comparison.md``, ``comparison.json`` (test metrics per test file, steps, skipped
    steps, loss-scale trajectory, minutes), ``learning_curves.png`` and ``loss_scale.png``.
    A policy directory holding a checkpoint resumes (see :func:`mpnn_jax.training.train`).
    With ``vs_fp64_configs`` > 0, each trained model is also evaluated
    under its own policy against its fp64 self on the first test file (:func:`policy_vs_fp64`:
    the stress error on periodic data comes from here, as the data sets hold no stress labels).
    """
    from mpnn_jax.training.config import load_config
    from mpnn_jax.training.evaluate import evaluate
    from mpnn_jax.training.loop import train

    root = Path(workdir)
    results: dict[str, dict] = {}
    for spec in policies:
        cfg = load_config(config, overrides=[*overrides, f"precision.policy={spec}"])
        files = list(test_files) if test_files is not None else default_test_files(cfg.data.test)
        summary = train(cfg, root / spec)
        results[spec] = {
            "status": summary["status"],
            "steps": summary["step"],
            "skipped": summary["skipped"],
            "minutes": summary["minutes"],
            "test": {Path(f).name: evaluate(root / spec, f) for f in files},
            "loss_scale": loss_scale_history(root / spec / "metrics.jsonl"),
        }
        if files and vs_fp64_configs:
            results[spec]["vs_fp64"] = policy_vs_fp64(root / spec, files[0], vs_fp64_configs)
    meta = {"config": str(config), "overrides": list(overrides), "environment": environment_info()}
    write_comparison(root, results, meta, {p: root / p / "metrics.jsonl" for p in policies})
    return results


def policy_vs_fp64(workdir: str | Path, test_file: str, n_configs: int | None = 100) -> dict:
    """Energy, force and stress (periodic data) error of a trained run evaluated under its own
    policy against the same weights in fp64, on ``n_configs`` configurations of ``test_file``
    (:func:`mpnn_jax.study.compare`; meV units)."""
    from mpnn_jax.training.evaluate import run_policy

    model, params, info = load_study_model(workdir)
    graphs = read_study_graphs(test_file, info, n_configs=n_configs)
    own = run_policy(workdir).name
    ref = study.predict_all(model, params, graphs, policy="fp64")
    return study.compare(study.predict_all(model, params, graphs, policy=own), ref)


def write_comparison(
    root: str | Path, results: dict[str, dict], meta: dict, metrics: dict[str, str | Path]
) -> None:
    """``comparison.json``/``.md``, ``learning_curves.png`` and ``loss_scale.png`` under
    ``root`` for ``{policy: result}`` (as :func:`train_policies` returns)."""
    from mpnn_jax.training.plots import plot_comparison

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "comparison.json").write_text(
        json.dumps({**meta, "policies": results}, indent=1, default=str)
    )
    (root / "comparison.md").write_text(comparison_table(results))
    plot_comparison(metrics, root / "learning_curves.png")
    plot_loss_scales(results, root / "loss_scale.png")


def merge_comparisons(roots: Sequence[str | Path], out: str | Path) -> dict[str, dict]:
    """Merges the ``comparison.json`` of several :func:`train_policies` roots (e.g. one process
    per policy, run side by side) into one comparison under ``out``."""
    results, metrics, meta = {}, {}, {}
    for r in map(Path, roots):
        d = json.loads((r / "comparison.json").read_text())
        for spec, res in d.pop("policies").items():
            results[spec] = res
            metrics[spec] = r / spec / "metrics.jsonl"
        meta = meta or d
    meta["merged_from"] = [str(r) for r in roots]
    write_comparison(out, results, meta, metrics)
    return results


def merge_nve(dirs: Sequence[str | Path], out: str | Path) -> dict[str, dict]:
    """Merges the ``nve_drift.json`` of several :func:`nve_drift` outputs (same structure and
    settings, different policies or models) into ``out/nve_drift.json`` and ``nve_energy.png``."""
    runs, meta = {}, {}
    for d in map(Path, dirs):
        data = json.loads((Path(d) / "nve_drift.json").read_text())
        runs.update(data.pop("runs"))
        meta = meta or data
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "nve_drift.json").write_text(json.dumps({**meta, "runs": runs}, indent=1))
    plot_nve(runs, out / "nve_energy.png", n_atoms=meta["n_atoms"])
    return runs


def comparison_table(results: dict[str, dict]) -> str:
    """Markdown: policy | test set | energy MAE | force MAE | steps | skipped | minutes, plus
    the force and stress error against the model's own fp64 evaluation where measured."""
    vs = any("vs_fp64" in r for r in results.values())
    extra = " force vs fp64 (meV/Å) | stress vs fp64 (meV/Å³) |" if vs else ""
    lines = [
        "| policy | test set | energy MAE (meV/atom) | force MAE (meV/Å) | steps | skipped "
        "| minutes |" + extra,
        "|---|---|---|---|---|---|---|" + ("---|---|" if vs else ""),
    ]
    for spec, r in results.items():
        v = r.get("vs_fp64") or {}
        cells = ""
        if vs:
            st = v.get("stress_mae_mev_per_A3")
            fv = v.get("forces_mae_mev_per_A")
            cells = (
                f" {'-' if fv is None else f'{fv:.3g}'} | {'-' if st is None else f'{st:.3g}'} |"
            )
        for name, m in r["test"].items():
            lines.append(
                f"| {spec} | {name} | {m['energy_mae_mev_per_atom']:.3f} | "
                f"{m['forces_mae_mev_per_A']:.2f} | {r['steps']} | {r['skipped']} | "
                f"{r['minutes']:.1f} |" + cells
            )
    return "\n".join(lines) + "\n"


def plot_loss_scales(results: dict[str, dict], path: str | Path) -> Path:
    """Loss scale (log2) and cumulative skipped steps against the step, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for spec, r in results.items():
        h = r["loss_scale"]
        a.plot(h["steps"], h["loss_scale"], lw=0.8, label=spec)
        b.plot(h["steps"], h["skipped"], lw=0.8, label=spec)
    a.set_yscale("log", base=2)
    a.set_ylabel("loss scale")
    b.set_ylabel("skipped steps (cumulative)")
    for ax in (a, b):
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
