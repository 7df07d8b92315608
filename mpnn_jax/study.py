"""The per-stage precision study: how much error each stage's dtype adds, against FP64.

For one model and one set of weights, :func:`stage_errors` evaluates a list of graphs under
many policies (the single-stage ablations ``fp32+<stage>=bf16|f16`` of
:func:`mpnn_jax.precision.ablations` and the presets) and compares every prediction with the same
weights evaluated under the ``fp64`` reference policy. Errors are differences between two
evaluations of the *same* model, not errors against the data:

* ``energy_mae_mev_per_atom``: mean over configurations of ``|E - E_ref| / n_atoms``, meV/atom;
* ``forces_mae_mev_per_A``, ``forces_rmse_mev_per_A``, ``forces_max_mev_per_A``: over force
  components, meV/Å;
* ``stress_mae_mev_per_A3``: over the stress components of periodic configurations, meV/Å^3
  (``None`` when no configuration is periodic).

With ``model_error`` (the model's own fp64 test error against the reference data, from
:func:`model_test_error`) every row also gets ``forces_frac`` and ``energy_frac``: the precision
error as a fraction of that test error.

Verdict rule (:func:`verdict`), on the force and energy errors:

* a non-finite prediction: ``"fails"``;
* trained model (``model_error`` given): ``"safe"`` if the force MAE is < 10% of the model's own
  force MAE *and* the energy MAE < 10% of its energy MAE; ``"caution"`` below 100%; else
  ``"unsafe"``;
* random init (no ``model_error``): ``"safe"`` if the force MAE is below 1 meV/Å and the energy
  MAE below 1 meV/atom, ``"caution"`` below 10 (meV/Å and meV/atom), else ``"unsafe"``.

Outputs: :func:`stage_table` (Markdown, one row per stage like the seed's table, then the
presets; its last column sets the verdicts against the seed: for a stage the seed puts in low
precision, "seed confirmed" if BF16 and FP16 are safe, "seed holds for FP16 only", or "seed
refuted"; for a stage the seed keeps in FP32, "seed confirmed" if neither is safe, "seed confirmed
for BF16; FP16 safe", or "seed over-cautious" if both are safe), :func:`save_json` /
:func:`load_json`, :func:`plot_stage_errors` (log-scale bars).
Host-side driver code; the predictors it builds are jitted, one compilation per policy.

**Every stage rounds where its dtype says** (:func:`forbid_excess_precision`, on by default in
``experiments/precision_study.py``): XLA may drop a round trip ``f32 -> bf16 -> f32`` ("excess
precision", on by default on CPU and GPU), which made some single-stage ablations measure less
rounding than their dtype names (a species lookup gathered in FP32 and cast to BF16 and back came
out exact). With ``--xla_allow_excess_precision=false`` each ablation measures its dtype; real
programs compiled with XLA's default may be slightly *more* accurate than the table.

Example:
    >>> verdict({"forces_mae_mev_per_A": 0.3, "energy_mae_mev_per_atom": 0.01})
    'safe'
    >>> verdict({"forces_mae_mev_per_A": 2.0, "energy_mae_mev_per_atom": 0.01,
    ...          "forces_frac": 0.05, "energy_frac": 0.01})
    'safe'
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jraph
import numpy as np

from mpnn_jax import xla
from mpnn_jax.precision import SEED_CLAIMS, STAGES, ablations, get_policy

#: the presets of the study, after the single-stage ablations
PRESET_POLICIES: tuple[str, ...] = ("fp32", "bf16-mixed", "fp16-mixed", "bf16-pure")
#: the presets of the per-stage study: also the seed's table verbatim (radial MLP low too)
STUDY_PRESETS: tuple[str, ...] = (*PRESET_POLICIES, "bf16-seed", "fp16-seed")
#: stages the seed says may run in low precision (the others: keep FP32)
SEED_LOW_OK: tuple[str, ...] = ("embedding", "radial", "messages", "update", "readout")
SAFE_FRACTION, CAUTION_FRACTION = 0.1, 1.0  # of the model's own test error
SAFE_ABS, CAUTION_ABS = 1.0, 10.0  # meV/Å and meV/atom, random init
MEV = 1000.0


#: the XLA flag that makes every low-precision cast round (see the module docstring)
STRICT_ROUNDING_FLAG = "--xla_allow_excess_precision=false"


def forbid_excess_precision(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Adds :data:`STRICT_ROUNDING_FLAG` to ``XLA_FLAGS`` (before JAX starts its backends).

    Returns:
        True if ``XLA_FLAGS`` was changed (False if it already names
        ``xla_allow_excess_precision``). Warns if JAX's backends have already started: then the
        flag cannot take effect in this process.

    Example:
        >>> env = {"XLA_FLAGS": "--foo"}
        >>> forbid_excess_precision(env), env["XLA_FLAGS"]
        (True, '--foo --xla_allow_excess_precision=false')
        >>> forbid_excess_precision(env)
        False
    """
    from mpnn_jax.compat import _backends_started

    flags = environ.get("XLA_FLAGS", "")
    if "xla_allow_excess_precision" in flags:
        return False
    environ["XLA_FLAGS"] = f"{flags} {STRICT_ROUNDING_FLAG}".strip()
    if environ is os.environ and _backends_started():
        warnings.warn(
            "JAX's backends already started: XLA may still drop 16-bit round trips in this "
            f"process (set XLA_FLAGS={STRICT_ROUNDING_FLAG} before starting Python)",
            stacklevel=2,
        )
    return True


def strict_rounding() -> bool:
    """Whether this process's ``XLA_FLAGS`` forbid excess precision (recorded in results)."""
    return STRICT_ROUNDING_FLAG in os.environ.get("XLA_FLAGS", "")


def study_policies() -> list[str]:
    """The single-stage ablations (BF16 then FP16) followed by :data:`STUDY_PRESETS`."""
    return [*ablations(("bf16", "f16")), *STUDY_PRESETS]


def cast_graphs(graphs: Sequence[jraph.GraphsTuple], dtype: Any) -> list[jraph.GraphsTuple]:
    """The same graphs with every floating numpy leaf cast to ``dtype`` (ints untouched)."""

    def f(x):
        x = np.asarray(x)
        return x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x

    return [jax.tree_util.tree_map(f, g) for g in graphs]


def predict_all(
    model: Any,
    params: Any,
    graphs: Sequence[jraph.GraphsTuple],
    *,
    policy: str,
    batch_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Energies, forces and stress of every graph under ``policy``, as float64 numpy.

    Args:
        model: a model (its ``policy`` is replaced by ``policy``; weights are shared).
        params: its parameters.
        graphs: unpadded single-configuration graphs (any float dtype; cast to float64 for an
            x64 policy, else float32).
        policy: the policy spec.
        batch_size: configurations per padded batch (default: all in one batch, one compile).

    Returns:
        ``energy`` [n_configs] eV, ``forces`` [n_atoms_total, 3] eV/Å, ``stress``
        [n_configs, 3, 3] eV/Å^3, ``n_atoms`` [n_configs], ``pbc`` [n_configs] bool,
        ``energy_label`` [n_configs], ``forces_label`` [n_atoms_total, 3].
    """
    from mpnn_jax.data import GraphLoader
    from mpnn_jax.potential import graph_masks, make_predictor

    pol = get_policy(policy)
    x64 = pol.uses_x64
    with jax.enable_x64(x64):
        dtype = np.float64 if x64 else np.float32
        loader = GraphLoader(
            cast_graphs(graphs, dtype), batch_size=batch_size or len(graphs), shuffle=False
        )
        predict = xla.jit(make_predictor(model.clone(policy=pol)), model=model)
        out: dict[str, list] = {
            k: []
            for k in (
                "energy",
                "forces",
                "stress",
                "n_atoms",
                "pbc",
                "energy_label",
                "forces_label",
            )
        }
        for batch in loader.iterate(0):
            pred = jax.device_get(predict(params, batch))
            node_mask, _, graph_mask = (np.asarray(m) for m in graph_masks(batch))
            out["energy"].append(np.asarray(pred["energy"], np.float64)[graph_mask])
            out["forces"].append(np.asarray(pred["forces"], np.float64)[node_mask])
            out["stress"].append(np.asarray(pred["stress"], np.float64)[graph_mask])
            out["n_atoms"].append(np.asarray(batch.n_node)[graph_mask])
            out["pbc"].append(np.asarray(batch.globals["pbc"])[graph_mask] > 0)
            out["energy_label"].append(np.asarray(batch.globals["energy"], np.float64)[graph_mask])
            out["forces_label"].append(np.asarray(batch.nodes["forces"], np.float64)[node_mask])
    return {k: np.concatenate(v) for k, v in out.items()}


def compare(pred: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, Any]:
    """Error metrics of ``pred`` against ``ref`` (two :func:`predict_all` outputs), meV units."""
    de = np.abs(pred["energy"] - ref["energy"]) / np.maximum(ref["n_atoms"], 1)  # [n_configs]
    df = np.abs(pred["forces"] - ref["forces"])  # [n_atoms_total, 3]
    periodic = ref["pbc"]
    stress = None
    if np.any(periodic):
        stress = MEV * float(np.mean(np.abs(pred["stress"] - ref["stress"])[periodic]))
    rms_ref = float(np.sqrt(np.mean(ref["forces"] ** 2))) or 1.0
    finite = bool(np.all(np.isfinite(pred["energy"])) and np.all(np.isfinite(pred["forces"])))
    return {
        "energy_mae_mev_per_atom": MEV * float(np.mean(de)),
        "energy_max_mev_per_atom": MEV * float(np.max(de)),
        "forces_mae_mev_per_A": MEV * float(np.mean(df)),
        "forces_rmse_mev_per_A": MEV * float(np.sqrt(np.mean(df**2))),
        "forces_max_mev_per_A": MEV * float(np.max(df)),
        "forces_rel_rmse": float(np.sqrt(np.mean(df**2))) / rms_ref,
        "stress_mae_mev_per_A3": stress,
        "finite": finite,
    }


def model_test_error(ref: dict[str, np.ndarray]) -> dict[str, float]:
    """The model's own error against the data labels, from a :func:`predict_all` output."""
    de = np.abs(ref["energy"] - ref["energy_label"]) / np.maximum(ref["n_atoms"], 1)
    df = np.abs(ref["forces"] - ref["forces_label"])
    return {
        "energy_mae_mev_per_atom": MEV * float(np.mean(de)),
        "forces_mae_mev_per_A": MEV * float(np.mean(df)),
        "forces_rmse_mev_per_A": MEV * float(np.sqrt(np.mean(df**2))),
    }


def _describe(spec: str) -> tuple[str, str | None, str | None]:
    """``("ablation", "messages", "bf16")`` for a single-stage ablation ``fp32+<stage>=<dtype>``,
    else ``("preset", None, None)`` (a preset, or any other policy such as
    ``"bf16-mixed+update=f32,readout=f32"``: it goes with the presets in the tables).

    Example:
        >>> _describe("fp32+messages=f16"), _describe("bf16-mixed+update=f32,readout=f32")
        (('ablation', 'messages', 'fp16'), ('preset', None, None))
    """
    base, plus, rest = spec.partition("+")
    stage, eq, dtype = rest.partition("=")
    if base == "fp32" and plus and eq and "," not in dtype:
        return "ablation", stage, {"f16": "fp16", "bf16": "bf16"}.get(dtype, dtype)
    return "preset", None, None


def stage_errors(
    model: Any,
    params: Any,
    graphs: Sequence[jraph.GraphsTuple],
    *,
    policies: Sequence[str] | None = None,
    reference: str = "fp64",
    batch_size: int | None = None,
    model_error: dict | bool | None = None,
    reference_predictions: dict | None = None,
) -> list[dict]:
    """Errors of ``model`` under each policy against the same weights under ``reference``.

    Args:
        model: a model built by :func:`mpnn_jax.models.build_model` (any policy).
        params: its parameters (FP32 master weights; shared by all policies).
        graphs: unpadded single-configuration graphs (float64 preferred; cast per policy).
        policies: policy specs; default :func:`study_policies` (20 ablations + 6 presets).
        reference: the reference policy (``"fp64"``: ``jax_enable_x64`` is switched on only
            while it runs).
        batch_size: configurations per padded batch (default: one batch).
        model_error: the model's own test error (:func:`model_test_error`), or ``True`` to
            compute it from the reference predictions (trained models), or None (random init).
        reference_predictions: the :func:`predict_all` output of ``reference`` if already
            computed (saves one compilation).

    Returns:
        One dict per policy: ``policy``, ``kind`` (``"ablation"``/``"preset"``), ``stage``,
        ``dtype``, the metrics of :func:`compare`, ``forces_frac``/``energy_frac`` (with
        ``model_error``) and ``verdict``.

    Example:
        >>> # rows = stage_errors(model, params, graphs, policies=["fp32", "fp32+messages=bf16"])
    """
    policies = list(policies) if policies is not None else study_policies()
    ref = reference_predictions
    if ref is None:
        ref = predict_all(model, params, graphs, policy=reference, batch_size=batch_size)
    if model_error is True:
        model_error = model_test_error(ref)
    rows = []
    for spec in policies:
        pred = predict_all(model, params, graphs, policy=spec, batch_size=batch_size)
        kind, stage, dtype = _describe(spec)
        row = {"policy": spec, "kind": kind, "stage": stage, "dtype": dtype, "reference": reference}
        row.update(compare(pred, ref))
        if isinstance(model_error, dict):
            row["forces_frac"] = row["forces_mae_mev_per_A"] / model_error["forces_mae_mev_per_A"]
            row["energy_frac"] = (
                row["energy_mae_mev_per_atom"] / model_error["energy_mae_mev_per_atom"]
            )
        row["verdict"] = verdict(row)
        rows.append(row)
    return rows


def verdict(row: dict) -> str:
    """``"safe"``, ``"caution"``, ``"unsafe"`` or ``"fails"`` (the rule of the module docstring).

    Example:
        >>> verdict({"forces_mae_mev_per_A": 20.0, "energy_mae_mev_per_atom": 0.1})
        'unsafe'
        >>> verdict({"forces_mae_mev_per_A": 0.1, "energy_mae_mev_per_atom": 0.1,
        ...          "forces_frac": 0.02, "energy_frac": 0.4})
        'caution'
    """
    f = row["forces_mae_mev_per_A"]
    if not row.get("finite", True) or not math.isfinite(f):
        return "fails"
    if row.get("forces_frac") is not None:
        frac = max(row["forces_frac"], row.get("energy_frac") or 0.0)
        if frac < SAFE_FRACTION:
            return "safe"
        return "caution" if frac < CAUTION_FRACTION else "unsafe"
    worst = max(f, row.get("energy_mae_mev_per_atom") or 0.0)
    if worst < SAFE_ABS:
        return "safe"
    return "caution" if worst < CAUTION_ABS else "unsafe"


def _force_text(row: dict, *, full: bool) -> str:
    """The force error of ``row`` (with its % of the model's test MAE when known); ``full``:
    with units and the energy and stress errors."""
    text = (
        f"F {row['forces_mae_mev_per_A']:.3g} meV/Å"
        if full
        else f"{row['forces_mae_mev_per_A']:.2g}"
    )
    if row.get("forces_frac") is not None:
        pct = 100 * row["forces_frac"]
        of = " of test MAE" if full else ""
        text += f" ({pct:.0f}%{of})" if pct >= 10 else f" ({pct:.2g}%{of})"
    if full:
        text += f"; E {row['energy_mae_mev_per_atom']:.2g} meV/atom"
        if row.get("stress_mae_mev_per_A3") is not None:
            text += f"; S {row['stress_mae_mev_per_A3']:.2g} meV/Å³"
    return text


def _cell(row: dict | None, *, full: bool = True) -> str:
    if row is None:
        return "-"
    return _force_text(row, full=full) if row["finite"] else "non-finite"


def _stage_verdict(stage: str, bf16: dict | None, fp16: dict | None) -> str:
    measured = [(n, r) for n, r in (("BF16", bf16), ("FP16", fp16)) if r is not None]
    if not measured:
        return "not measured"
    parts = [f"{n} {r['verdict']}" for n, r in measured]
    safe = [n for n, r in measured if r["verdict"] == "safe"]
    unsafe = [n for n, _ in measured if n not in safe]
    if stage in SEED_LOW_OK:  # the seed: low precision is fine here
        if not unsafe:
            judged = "seed confirmed"
        else:
            judged = f"seed holds for {safe[0]} only" if safe else "seed refuted"
    elif not safe:  # the seed: keep FP32
        judged = "seed confirmed"
    else:
        judged = (
            f"seed confirmed for {unsafe[0]}; {safe[0]} safe" if unsafe else "seed over-cautious"
        )
    return f"{', '.join(parts)}: {judged}"


def stage_table(rows: Sequence[dict], *, model_error: dict | None = None) -> str:
    """Markdown: stage | the seed's claim | measured BF16 error | measured FP16 error | verdict,
    one row per stage of ``STAGES``, then a table of the presets.

    Args:
        rows: output of :func:`stage_errors` (or :func:`load_json`).
        model_error: the model's own test error, printed above the tables.
    """
    by = {(r["stage"], r["dtype"]): r for r in rows if r["kind"] == "ablation"}
    lines = []
    if model_error:
        lines.append(
            f"Model's own fp64 test error: forces MAE {model_error['forces_mae_mev_per_A']:.3g} "
            f"meV/Å, energy MAE {model_error['energy_mae_mev_per_atom']:.3g} meV/atom.\n"
        )
    lines += [
        "| stage | the seed's claim | measured BF16 error | measured FP16 error | verdict |",
        "|---|---|---|---|---|",
    ]
    for s in STAGES:
        bf, fp = by.get((s, "bf16")), by.get((s, "fp16"))
        lines.append(
            f"| {s} | {SEED_CLAIMS[s]} | {_cell(bf)} | {_cell(fp)} | {_stage_verdict(s, bf, fp)} |"
        )
    presets = [r for r in rows if r["kind"] == "preset"]
    if presets:
        lines += ["", "| preset | error against fp64 | verdict |", "|---|---|---|"]
        lines += [f"| {r['policy']} | {_cell(r)} | {r['verdict']} |" for r in presets]
    return "\n".join(lines) + "\n"


def _force_cell(row: dict | None) -> str:
    return _cell(row, full=False)


def summary_table(runs: dict[str, Sequence[dict]]) -> str:
    """Markdown: several per-stage studies side by side, force MAE against fp64 in meV/Å.

    One row per stage (``BF16 / FP16`` per run) and per preset, one column per run; for trained
    runs (rows with ``forces_frac``) the error is also given as a % of that model's own test
    force MAE.

    Args:
        runs: ``{label: rows}``, rows as :func:`stage_errors` returns them (or :func:`load_json`).

    Example:
        >>> row = {"kind": "ablation", "stage": "messages", "dtype": "bf16", "finite": True,
        ...        "forces_mae_mev_per_A": 3.6, "forces_frac": 0.07}
        >>> print(summary_table({"MACE": [row]}).splitlines()[6])
        | messages | 3.6 (7%) / - |
        >>> print(summary_table({"MACE": [{**row, "forces_frac": 1.3}]}).splitlines()[6])
        | messages | 3.6 (130%) / - |
    """
    labels = list(runs)
    by = {
        label: {
            (r["stage"], r["dtype"]) if r["kind"] == "ablation" else r["policy"]: r for r in rows
        }
        for label, rows in runs.items()
    }
    lines = [
        "| stage | " + " | ".join(f"{label} BF16 / FP16" for label in labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for st in STAGES:
        cells = [
            f"{_force_cell(by[lb].get((st, 'bf16')))} / {_force_cell(by[lb].get((st, 'fp16')))}"
            for lb in labels
        ]
        lines.append(f"| {st} | " + " | ".join(cells) + " |")
    presets = [k for k in dict.fromkeys(k for b in by.values() for k in b) if isinstance(k, str)]
    for pr in presets:
        lines.append(
            f"| preset **{pr}** | "
            + " | ".join(_force_cell(by[lb].get(pr)) for lb in labels)
            + " |"
        )
    return "\n".join(lines) + "\n"


def save_json(path: str | Path, rows: Sequence[dict], **meta: Any) -> Path:
    """Writes ``{"rows": rows, **meta}`` as JSON (``meta``: command, versions, seeds, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "rows": list(rows)}, indent=1, default=str) + "\n")
    return path


def load_json(path: str | Path) -> tuple[list[dict], dict]:
    """``(rows, meta)`` from :func:`save_json`."""
    data = json.loads(Path(path).read_text())
    rows = data.pop("rows")
    return rows, data


def plot_stage_errors(rows: Sequence[dict], path: str | Path, *, title: str = "") -> Path:
    """Bar charts (log scale) of the force MAE (top) and energy MAE (bottom) against fp64 per
    stage (BF16 and FP16 bars) and per preset, with the safe threshold as a dashed line
    (10% of the model's test error where the rows carry ``forces_frac``, else 1 meV/Å)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["stage"], r["dtype"]): r for r in rows if r["kind"] == "ablation"}
    presets = [r for r in rows if r["kind"] == "preset"]
    labels = list(STAGES) + [r["policy"] for r in presets]
    x = np.arange(len(labels))
    n = len(STAGES)
    floor = 1e-6  # a zero error is drawn at the floor of the log axis

    def val(r, key):
        if r is None or not math.isfinite(r[key]):
            return np.nan
        return max(r[key], floor)

    fig, axes = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    keys = (
        ("forces_mae_mev_per_A", "forces_frac", "force MAE vs fp64 (meV/Å)"),
        ("energy_mae_mev_per_atom", "energy_frac", "energy MAE vs fp64 (meV/atom)"),
    )
    for ax, (key, frac, ylabel) in zip(axes, keys, strict=True):
        for off, dt, color in ((-0.2, "bf16", "tab:blue"), (0.2, "fp16", "tab:orange")):
            heights = [val(by.get((s, dt)), key) for s in STAGES]
            ax.bar(x[:n] + off, heights, 0.4, color=color, label=f"fp32 + stage in {dt.upper()}")
        ax.bar(x[n:], [val(r, key) for r in presets], 0.5, color="tab:gray", label="presets")
        scaled = [r for r in rows if r.get(frac)]
        if scaled:
            test_mae = scaled[0][key] / scaled[0][frac]
            line, text = SAFE_FRACTION * test_mae, f"{SAFE_FRACTION:.0%} of the model's test MAE"
            ax.axhline(line, ls="--", c="k", lw=0.8, label=text)
        elif key.startswith("forces"):
            ax.axhline(SAFE_ABS, ls="--", c="k", lw=0.8, label=f"{SAFE_ABS:g} meV/Å (random init)")
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_title(title)
    axes[0].legend(fontsize=8)
    axes[1].set_xticks(x, labels, rotation=35, ha="right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
