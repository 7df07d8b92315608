"""How fast a mixed-precision preset can be at best, from an FP32 profile split by precision stage.

A preset such as ``bf16-mixed`` runs some stages in 16 bits and keeps the others in FP32
(geometry, basis, radial MLP, aggregation, energy and forces). The FP32 stages' time does not fall
when the preset changes, so it bounds the speed-up (Amdahl): with ``T`` the FP32 kernel time of
the whole program, ``F`` that of the stages the preset keeps in FP32 and ``S = T - F`` that of the
rest,

    speed-up <= T / (F + S / k)

when every 16-bit stage runs ``k`` times faster than in FP32. ``k = 2`` is the ceiling for a
memory-bound kernel whose bytes all halve (and the H100's BF16 / TF32 matmul ceilings are 1.8x
apart), so ``T / (F + S / 2)`` is the most the preset can give for this program. With a profile
of the preset itself, the measured ``S_fp32 / S_16`` says how far its 16-bit stages are from that,
and since the FP32 stages also move fewer bytes where their inputs or outputs are 16-bit (their
measured time ``F_16`` can be below ``F``), ``T / (F_16 + S / 2)`` is the bound with the FP32
stages as they ran, and ``k_needed = S / (T / target - F_16)`` the speed-up the 16-bit stages
would need for a target ratio.

Input: the ``by_stage`` dict of ``experiments/perf/profile.py`` (``{"Module:stage[ bwd]": ms}``;
``"(other)"`` and ``"-"`` stages are counted as fixed: parameter copies, the optimiser).

Example:
    >>> fp32 = {"Conv_0:radial": 4.0, "Conv_0:messages bwd": 4.0, "-:geometry": 2.0}
    >>> b = precision_bound(fp32, "bf16-mixed")
    >>> b["fixed_ms"], b["scalable_ms"], round(b["bound"], 3)
    (6.0, 4.0, 1.25)
"""

from __future__ import annotations

from mpnn_jax.precision import get_policy
from mpnn_jax.precision.policy import STAGES


def stage_name(label: str) -> str | None:
    """The precision stage of a profile label (``"Convolution_1:radial bwd"`` -> ``"radial"``),
    None for ``"(other)"`` and labels without a stage."""
    stage = label.split(":", 1)[-1].removesuffix(" bwd").strip()
    return stage if stage in STAGES else None


def split_by_precision(by_stage: dict[str, float], preset: str) -> tuple[float, float]:
    """``(fixed, scalable)`` ms: time in stages that ``preset`` keeps in 32 or more bits (and
    unattributed time), and time in the stages it runs in 16 bits."""
    policy = get_policy(preset)
    fixed = scalable = 0.0
    for label, ms in by_stage.items():
        stage = stage_name(label)
        if stage is not None and policy.dtype(stage).itemsize == 2:
            scalable += ms
        else:
            fixed += ms
    return fixed, scalable


def precision_bound(
    fp32_by_stage: dict[str, float],
    preset: str,
    *,
    low_by_stage: dict[str, float] | None = None,
    k: float = 2.0,
    target: float | None = None,
) -> dict[str, float | str]:
    """The most ``preset`` can speed up the program profiled in FP32 (module docstring).

    Args:
        fp32_by_stage: ms per ``"Module:stage[ bwd]"`` of the ``fp32`` program.
        preset: the mixed preset (its stage dtypes decide which time can scale).
        low_by_stage: the same program's profile under ``preset``, if measured.
        k: speed-up of every 16-bit stage (2: all bytes halved).
        target: a speed-up to reach (e.g. 1.5): with ``low_by_stage``, ``k_needed``.

    Returns:
        ``fp32_ms``, ``fixed_ms``, ``scalable_ms``, ``fixed_share``, ``bound`` (the speed-up at
        ``k``), ``bound_k_inf`` (``T / F``: 16-bit stages free); with ``low_by_stage`` also
        ``low_ms``, ``measured`` (``T / T_low``), ``fixed_low_ms``, ``scalable_low_ms``,
        ``scalable_speedup`` (``S / S_low``), ``fixed_speedup`` (``F / F_low``) and
        ``bound_low_fixed`` (``T / (F_low + S / k)``); with ``target`` too, ``k_needed`` (inf
        when the FP32 stages alone exceed ``T / target``).
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    fixed, scalable = split_by_precision(fp32_by_stage, preset)
    total = fixed + scalable
    if total <= 0:
        raise ValueError("the FP32 profile has no time")
    out: dict[str, float | str] = {
        "preset": preset,
        "k": k,
        "fp32_ms": total,
        "fixed_ms": fixed,
        "scalable_ms": scalable,
        "fixed_share": fixed / total,
        "bound": total / (fixed + scalable / k),
        "bound_k_inf": total / fixed if fixed > 0 else float("inf"),
    }
    if low_by_stage is not None:
        fixed_low, scalable_low = split_by_precision(low_by_stage, preset)
        out.update(
            low_ms=fixed_low + scalable_low,
            measured=total / (fixed_low + scalable_low),
            fixed_low_ms=fixed_low,
            scalable_low_ms=scalable_low,
            scalable_speedup=scalable / scalable_low if scalable_low > 0 else float("inf"),
            fixed_speedup=fixed / fixed_low if fixed_low > 0 else float("inf"),
            bound_low_fixed=total / (fixed_low + scalable / k),
        )
        if target is not None:
            room = total / target - fixed_low  # ms left for the 16-bit stages
            out["target"] = target
            out["k_needed"] = scalable / room if room > 0 else float("inf")
    return out
