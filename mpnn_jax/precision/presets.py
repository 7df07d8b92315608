"""Policy presets and the policy grammar.

Grammar: comma-separated ``key=value`` items, optionally after a preset and a ``+``:

* ``"params=f32,compute=bf16,geometry=f32,basis=f32,aggregation=f32,energy=f32"``
* ``"fp32+messages=bf16"`` (the ``fp32`` preset with one stage changed: a single-stage ablation)
* keys: ``params``, ``compute``, ``output``, ``accum``, any stage of ``STAGES``, ``matmul``
  (``default``/``tensorfloat32``/``highest``), ``loss_scale`` (``none``/``dynamic``).
* dtypes: ``f64``, ``f32``, ``bf16``, ``f16`` (also ``fp32``, ``float32``, ...).

A stage that the string does not name takes ``compute``. With no preset, ``params`` and ``output``
default to ``f32``; ``loss_scale`` defaults to ``dynamic`` when any stage is FP16.

Presets (:data:`PRESETS`):

* ``fp64``: everything FP64 (the reference; needs ``jax_enable_x64``).
* ``fp32``: everything FP32; matmuls at XLA's default (TF32 on NVIDIA GPUs).
* ``fp32-highest``: ``fp32`` with true FP32 matmuls (``matmul=highest``).
* ``bf16-mixed``: the seed's recipe as measured: BF16 embedding, messages, update and readout;
  FP32 geometry, basis, radial MLP, aggregation (accumulation), energy and forces. The one
  departure from the seed: its "message MLP over pairwise features" (our ``radial`` stage) stays
  FP32, because it carried most of the BF16 force error of the messages in the precision study
  (``experiments/results/precision_study``).
* ``fp16-mixed``: the same with FP16 and dynamic loss scaling.
* ``bf16-seed`` / ``fp16-seed``: the seed's table verbatim (radial MLP in BF16/FP16 too).
* ``bf16-pure``: every stage BF16, the negative control.
"""

from __future__ import annotations

import functools

from mpnn_jax.precision.policy import (
    LOSS_SCALINGS,
    MATMUL_PRECISIONS,
    STAGES,
    Policy,
    parse_dtype,
)

_SEED_FP32 = ("geometry", "basis", "aggregation", "energy", "forces")
_SAFE_FP32 = (*_SEED_FP32, "radial")  # + the measured departure from the seed

PRESETS: dict[str, str] = {
    "fp64": "params=f64,compute=f64,output=f64,accum=f64,matmul=highest",
    "fp32": "params=f32,compute=f32,output=f32",
    "fp32-highest": "params=f32,compute=f32,output=f32,matmul=highest",
    "bf16-mixed": "params=f32,compute=bf16,output=f32," + ",".join(f"{s}=f32" for s in _SAFE_FP32),
    "fp16-mixed": "params=f32,compute=f16,output=f32,"
    + ",".join(f"{s}=f32" for s in _SAFE_FP32)
    + ",loss_scale=dynamic",
    "bf16-seed": "params=f32,compute=bf16,output=f32," + ",".join(f"{s}=f32" for s in _SEED_FP32),
    "fp16-seed": "params=f32,compute=f16,output=f32,"
    + ",".join(f"{s}=f32" for s in _SEED_FP32)
    + ",loss_scale=dynamic",
    "bf16-pure": "params=f32,compute=bf16,output=f32,accum=bf16",
}

_GLOBAL_KEYS = ("params", "compute", "output", "accum", "matmul", "loss_scale")


def _parse_items(text: str) -> dict[str, str]:
    items: dict[str, str] = {}
    for raw in text.split(","):
        raw = raw.strip()
        if not raw:
            continue
        if "=" not in raw:
            raise ValueError(f"policy item {raw!r} is not of the form key=value")
        key, value = (t.strip() for t in raw.split("=", 1))
        key = key.lower()
        if key not in _GLOBAL_KEYS and key not in STAGES:
            raise ValueError(
                f"unknown policy key {key!r}; expected a stage {STAGES} or one of {_GLOBAL_KEYS}"
            )
        if key in items:
            raise ValueError(f"policy key {key!r} given twice")
        items[key] = value
    return items


def _build(name: str, items: dict[str, str]) -> Policy:
    compute = parse_dtype(items.get("compute", "f32"))
    stages = tuple((s, parse_dtype(items[s]) if s in items else compute) for s in STAGES)
    matmul = items.get("matmul", "default").lower()
    if matmul not in MATMUL_PRECISIONS:
        raise ValueError(
            f"unknown matmul precision {matmul!r}; expected one of {MATMUL_PRECISIONS}"
        )
    any_f16 = any(d.name == "float16" for _, d in stages)
    loss_scale = items.get("loss_scale", "dynamic" if any_f16 else "none").lower()
    if loss_scale not in LOSS_SCALINGS:
        raise ValueError(f"unknown loss_scale {loss_scale!r}; expected one of {LOSS_SCALINGS}")
    return Policy(
        name=name,
        param_dtype=parse_dtype(items.get("params", "f32")),
        compute_dtype=compute,
        output_dtype=parse_dtype(items.get("output", "f32")),
        stage_dtypes=stages,
        accum_dtype=parse_dtype(items.get("accum", "f32")),
        matmul_precision=matmul,
        loss_scaling=loss_scale,
    )


@functools.lru_cache(maxsize=256)
def get_policy(spec: str | Policy) -> Policy:
    """Parses a preset name, ``"<preset>+key=value,..."`` or a grammar string into a Policy.

    Args:
        spec: e.g. ``"bf16-mixed"``, ``"fp32+messages=bf16"``, ``"params=f32,compute=bf16"``;
            a ``Policy`` is returned unchanged.

    Returns:
        The frozen :class:`Policy`.

    Raises:
        ValueError: unknown preset, stage, key or dtype, with the valid choices in the message.
    """
    if isinstance(spec, Policy):
        return spec
    text = str(spec).strip()
    if not text:
        raise ValueError("empty policy spec")
    if text in PRESETS:
        return _build(text, _parse_items(PRESETS[text]))
    if "+" in text:
        preset, rest = text.split("+", 1)
        preset = preset.strip()
        if preset not in PRESETS:
            raise ValueError(f"unknown policy preset {preset!r}; expected one of {list(PRESETS)}")
        items = _parse_items(PRESETS[preset])
        extra = _parse_items(rest)
        # an ablation of a non-FP16 preset that introduces FP16 turns dynamic loss scaling on,
        # unless the string says otherwise
        if "loss_scale" not in extra and "loss_scale" not in items:
            items.pop("loss_scale", None)
        items.update(extra)
        return _build(text, items)
    if "=" not in text:
        raise ValueError(
            f"unknown policy {text!r}; expected a preset {list(PRESETS)}, "
            "'<preset>+<stage>=<dtype>' or 'key=value,...'"
        )
    return _build(text, _parse_items(text))


def ablations(dtypes: tuple[str, ...] = ("bf16", "f16")) -> list[str]:
    """All single-stage ablation specs ``fp32+<stage>=<dtype>``, in stage order."""
    return [f"fp32+{s}={d}" for d in dtypes for s in STAGES]
