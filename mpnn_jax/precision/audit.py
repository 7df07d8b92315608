"""Precision audit: which dtype every stage actually computed in, read from the traced program.

:func:`audit` traces a function with ``jax.make_jaxpr`` and walks every equation, recursing into
the jaxprs of higher-order primitives (``jit``/``pjit``, ``closed_call``, ``custom_jvp_call``,
``custom_vjp_call``, ``scan``, ``while``, ``cond``, ``remat``; of a ``platform_dependent`` only
the branch of one platform, the GPU's by default). Each equation is attributed to
the innermost stage of :data:`STAGES` on its name stack (a stage is opened by
``Policy.scope(stage)``, i.e. ``jax.named_scope``; the name stack of a nested jaxpr is prefixed
by that of the equation that calls it). Autodiff wraps names as ``jvp(messages)`` or
``transpose(jvp(messages))``; these wrappers are stripped, and equations under ``transpose(...)``
are marked *backward*. Equations outside every stage go to ``"unscoped"``.

For every equation with a floating output the audit records its output dtypes and its kind:

* ``matmul`` (``dot_general``, convolutions): operand dtypes and the accumulation dtype
  (the accumulator of a named dot algorithm such as ``BF16_BF16_F32``, else
  ``preferred_element_type``, else the output dtype); a call of
  :func:`~mpnn_jax.precision.ops.accum_contraction` (a tiny contraction written as an upcast,
  an elementwise product and a sum) is one ``matmul`` record too, with the dtypes of its
  operands and, as accumulation, the widest dtype of the arithmetic inside it; so is a call of
  one of the kernel helpers of :data:`CONTRACTION_CALLS` and any Pallas kernel of ours
  (``pallas_call`` named ``mpnn_*``, :data:`KERNEL_PREFIX`), its body included;
* ``reduction`` (``reduce_sum``, ``scatter-add`` from ``jax.ops.segment_sum``, ``cumsum``, ...):
  the accumulation (= output) dtype;
* ``cast`` (``convert_element_type``): from and to;
* ``op``: everything else, except constant fills (a broadcast of a literal, e.g. the zeros a
  differentiated ``cond`` makes for another branch's residuals), which compute nothing.

:meth:`AuditReport.check` compares this with a :class:`Policy`. In a stage of dtype ``d`` with
accumulator ``a = policy.accum(stage)``:

* an ``op`` must output ``d`` (backward: ``d`` or ``a``, the cotangent of an accumulator);
* a ``matmul`` must take ``d`` operands (backward: ``d`` or ``a``) and accumulate in ``d`` or ``a``;
* a ``reduction`` must accumulate in ``d`` or ``a``; in ``aggregation`` and ``energy`` (the sums
  the seed wants in FP32) it must accumulate in ``policy.dtype(stage)`` or wider ``a``;
* a ``cast`` must go to a dtype of the policy (the stage-boundary casts of ``Policy.cast``).

``"unscoped"`` equations are reported but not checked. The audit reads the program that JAX
traced, before XLA: XLA may still fuse or upcast on a given backend. Flax puts module names on the
name stack too, so a submodule *named* like a stage (``name="readout"``) counts as that stage:
name submodules after stages only where they implement them.

Example:
    >>> import jax.numpy as jnp
    >>> from mpnn_jax.precision import Policy, audit, get_policy
    >>> p = get_policy("bf16-mixed")
    >>> def f(x):
    ...     with Policy.scope("messages"):
    ...         y = p.cast("messages", x) * 2
    ...     with Policy.scope("energy"):
    ...         return jnp.sum(p.cast("energy", y))
    >>> report = audit(f, jnp.ones(3))
    >>> report.op_dtypes("messages")
    {'bf16': 2}
    >>> report.check(p)
    []
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp

from mpnn_jax.precision.policy import STAGES, Policy, dtype_short

UNSCOPED = "unscoped"
MATMUL_PRIMITIVES = frozenset(
    {"dot_general", "conv_general_dilated", "ragged_dot", "ragged_dot_general"}
)
SCATTER_ADD_PRIMITIVES = frozenset({"scatter-add", "scatter_add"})
REDUCTION_PRIMITIVES = SCATTER_ADD_PRIMITIVES | {
    "reduce_sum",
    "cumsum",
    "reduce_prod",
    "cumprod",
    "psum",
}
CAST_PRIMITIVES = frozenset({"convert_element_type"})
# allocate without computing: autodiff fills the residuals a cond branch does not make with these
_PLACEHOLDER_PRIMITIVES = frozenset({"empty", "empty2"})
#: stages whose sums must accumulate in the stage dtype of the policy (the seed's FP32 sums)
SUM_STAGES = ("aggregation", "energy")
# primitives whose sub-jaxprs are scalar combiners, not program code
_NO_RECURSE_PREFIXES = ("scatter", "reduce", "select_and", "sort", "argsort", "cum")
_WRAPPER = re.compile(r"[A-Za-z_][\w.\-]*\(")
#: names of the jitted contraction helpers that the audit reads as one matmul each
#: (:func:`~mpnn_jax.precision.ops.accum_contraction`,
#: :func:`~mpnn_jax.nn.pallas_symmetric.sparse_form`,
#: :func:`~mpnn_jax.nn.pallas_linear.indexed_kernel`, the radial MLP's kernels
#: :func:`~mpnn_jax.nn.pallas_radial.radial_kernel` and ``radial_dx_kernel``)
CONTRACTION_CALLS = (
    "accum_contraction",
    "sparse_form",
    "indexed_kernel",
    "radial_kernel",
    "radial_dx_kernel",
)
#: the name prefix of our Pallas kernels (``pallas_call(..., name="mpnn_gather_sum")``): a kernel
#: called directly, not through one of :data:`CONTRACTION_CALLS`, is read as one contraction
#: too (its operands, its widest arithmetic as the accumulator), not as the ops of its body
KERNEL_PREFIX = "mpnn_"
#: contraction calls that read an operand narrower than their stage's dtype and convert it up,
#: exactly, before any arithmetic (the radial MLP's derivative reads the cotangent of an output
#: it wrote in the messages stage's dtype): such operands are accepted, the accumulator is checked
UPCASTING_CALLS = ("radial_dx_kernel",)


def stage_of(name_stack: str) -> str:
    """The innermost stage named in ``name_stack``; ``"unscoped"`` if none.

    Example:
        >>> stage_of("transpose(jvp(energy))/readout/i,ij->j")
        'readout'
        >>> stage_of("jit/foo")
        'unscoped'
    """
    flat = _WRAPPER.sub("", name_stack).replace(")", "")
    for comp in reversed(flat.split("/")):
        if comp.strip() in STAGES:
            return comp.strip()
    return UNSCOPED


def _is_float(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jnp.floating)


@dataclasses.dataclass(frozen=True)
class OpRecord:
    """One equation of the traced program with a floating output.

    Attributes:
        stage: the stage it is attributed to (or ``"unscoped"``).
        primitive: the primitive's name, e.g. ``"dot_general"``.
        kind: ``"op"``, ``"matmul"``, ``"reduction"`` or ``"cast"``.
        in_dtypes: short names of its floating operand dtypes.
        out_dtypes: short names of its floating output dtypes.
        accum: accumulation dtype of a matmul or reduction, else ``None``.
        backward: True under ``transpose(...)`` (the backward pass of ``jax.grad``).
        name_stack: the full name stack.
    """

    stage: str
    primitive: str
    kind: str
    in_dtypes: tuple[str, ...]
    out_dtypes: tuple[str, ...]
    accum: str | None
    backward: bool
    name_stack: str


def _subjaxprs(eqn: Any, platform: str) -> Iterator[jex.Jaxpr]:
    if eqn.primitive.name.startswith(_NO_RECURSE_PREFIXES):
        return
    platforms = eqn.params.get("branches_platforms")
    if eqn.primitive.name == "cond" and platforms:  # jax.lax.platform_dependent
        named = [i for i, ps in enumerate(platforms) if ps is not None and platform in ps]
        default = [i for i, ps in enumerate(platforms) if ps is None]
        (i, *_) = named or default or [0]
        yield eqn.params["branches"][i].jaxpr
        return
    for value in eqn.params.values():
        for v in value if isinstance(value, tuple | list) else (value,):
            if isinstance(v, jex.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, jex.Jaxpr):
                yield v


def _equations(jaxpr: jex.Jaxpr, platform: str) -> Iterator[Any]:
    """Every equation of ``jaxpr`` and of its sub-jaxprs (kernel bodies included)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in _subjaxprs(eqn, platform):
            yield from _equations(sub, platform)


def _is_contraction_call(eqn: Any) -> bool:
    if eqn.primitive.name == "pallas_call":  # a kernel of ours not wrapped in a named call
        return str(eqn.params.get("name", "")).startswith(KERNEL_PREFIX)
    return eqn.primitive.name in ("jit", "pjit") and eqn.params.get("name") in CONTRACTION_CALLS


def _call_name(eqn: Any) -> str:
    return str(eqn.params["name"])


def _call_body(eqn: Any) -> jex.Jaxpr:
    body = eqn.params["jaxpr"]
    return body if isinstance(body, jex.Jaxpr) else body.jaxpr


def _vars(atoms: list[Any]) -> list[Any]:
    return [v for v in atoms if not isinstance(v, jex.Literal)]


def _join(prefix: str, name: str) -> str:
    return "/".join(p for p in (prefix, name) if p)


def _walk(jaxpr: jex.Jaxpr, prefix: str, out: list[OpRecord], platform: str) -> None:
    placeholders: set[Any] = set()  # uninitialised residual slots of a differentiated cond
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in _PLACEHOLDER_PRIMITIVES or (
            name == "broadcast_in_dim"
            and (any(v in placeholders for v in _vars(eqn.invars)) or not _vars(eqn.invars))
        ):  # an uninitialised slot, or a constant fill (the zeros of a residual another branch
            # of a differentiated cond would have made): nothing is computed
            placeholders.update(eqn.outvars)
            continue
        ns = _join(prefix, str(eqn.source_info.name_stack))
        if _is_contraction_call(eqn):
            ins = tuple(dtype_short(v.aval.dtype) for v in eqn.invars if _is_float(v.aval.dtype))
            outs = tuple(dtype_short(v.aval.dtype) for v in eqn.outvars)
            # accumulator: its widest arithmetic, a Pallas kernel's body included (a kernel
            # may sum in FP32 and store BF16)
            wide = max(
                (v.aval.dtype for e in _equations(_call_body(eqn), platform)
                 for v in e.outvars if _is_float(v.aval.dtype)),
                key=lambda d: jnp.finfo(d).bits,
                default=eqn.outvars[0].aval.dtype,
            )  # fmt: skip
            accum = dtype_short(wide)
            rec = OpRecord(
                stage_of(ns), _call_name(eqn), "matmul", ins, outs, accum, "transpose(" in ns, ns
            )
            out.append(rec)
            continue
        subs = list(_subjaxprs(eqn, platform))
        if subs:
            for sub in subs:
                _walk(sub, ns, out, platform)
            continue
        outs = tuple(dtype_short(v.aval.dtype) for v in eqn.outvars if _is_float(v.aval.dtype))
        if not outs:
            continue
        ins = tuple(
            dtype_short(v.aval.dtype)
            for v in eqn.invars
            if hasattr(v.aval, "dtype") and _is_float(v.aval.dtype)
        )
        accum = None
        if name in MATMUL_PRIMITIVES:
            kind = "matmul"
            pet = eqn.params.get("preferred_element_type")
            accum = dtype_short(pet) if pet is not None else outs[0]
            algorithm = eqn.params.get("precision")
            if getattr(algorithm, "accumulation_type", None) is not None:  # a named dot algorithm
                accum = dtype_short(algorithm.accumulation_type)
        elif name in REDUCTION_PRIMITIVES:
            kind, accum = "reduction", outs[0]
        elif name in CAST_PRIMITIVES:
            kind = "cast"
        else:
            kind = "op"
        out.append(OpRecord(stage_of(ns), name, kind, ins, outs, accum, "transpose(" in ns, ns))


def _at_least(dtype: Any) -> set[str]:
    bits = jnp.finfo(dtype).bits
    wide = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)
    return {dtype_short(d) for d in wide if jnp.finfo(d).bits >= bits}


def _fmt_counts(counts: dict[Any, int]) -> str:
    return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items())) or "-"


@dataclasses.dataclass(frozen=True)
class AuditReport:
    """The result of :func:`audit`: one :class:`OpRecord` per floating equation."""

    records: tuple[OpRecord, ...]

    def stages(self) -> list[str]:
        """The stages seen, in ``STAGES`` order, then ``"unscoped"`` if present."""
        seen = {r.stage for r in self.records}
        return [s for s in (*STAGES, UNSCOPED) if s in seen]

    def of(self, stage: str, kind: str | None = None) -> list[OpRecord]:
        """The records of ``stage`` (optionally only those of ``kind``)."""
        return [r for r in self.records if r.stage == stage and kind in (None, r.kind)]

    def op_dtypes(self, stage: str) -> dict[str, int]:
        """``{dtype: count}`` of the floating outputs of every equation of ``stage``."""
        return dict(collections.Counter(d for r in self.of(stage) for d in r.out_dtypes))

    def matmuls(self, stage: str) -> dict[str, int]:
        """``{"bf16*bf16->f32": count}`` of the matmuls of ``stage`` (operands -> accumulation)."""
        return dict(
            collections.Counter(
                f"{'*'.join(r.in_dtypes)}->{r.accum}" for r in self.of(stage, "matmul")
            )
        )

    def reductions(self, stage: str) -> dict[str, int]:
        """``{"scatter-add:f32": count}`` of the sums of ``stage`` (primitive:accumulation)."""
        return dict(
            collections.Counter(f"{r.primitive}:{r.accum}" for r in self.of(stage, "reduction"))
        )

    def low_precision_scatter_adds(self) -> list[OpRecord]:
        """The scatter-adds that accumulate in 16 bits, forward or backward (the transpose of a
        gather is one). On GPUs they run as atomics on 16-bit words, which XLA emulates with
        compare-and-swap loops: with many rows adding into few (547k edge vectors onto 10k
        positions) such a sum can cost more than the whole FP32 program (performance log,
        entries 3 and 12). A policy is fast only where this list is empty."""
        return [
            r
            for r in self.records
            if r.primitive in SCATTER_ADD_PRIMITIVES and r.accum in ("bf16", "f16")
        ]

    def mixed_gemms(self, policy: Policy) -> list[OpRecord]:
        """The GEMMs (``dot_general``) of the 16-bit stages of ``policy`` that take one operand in
        FP32 and one in the stage's 16 bits. :meth:`check` accepts them in backward passes (the
        FP32 cotangent of an accumulator), but XLA runs such a dot in FP32 and reads the FP32
        operand's 4 bytes per value: where the FP32 side is the cotangent of a cast to 16 bits it
        holds 16-bit values, and a GEMM that stores its 16-bit result itself avoids it
        (:data:`mpnn_jax.nn.linear.STORE_SINGLE_PATH`, performance log entry 32). Kernels that
        read FP32 cotangents (e.g. the symmetric contraction's) are not GEMMs and not listed."""
        out = []
        for stage in STAGES:
            short = dtype_short(policy.dtype(stage))
            if short == "f32":
                continue
            out += [
                r
                for r in self.of(stage, "matmul")
                if r.primitive == "dot_general" and {"f32", short} <= set(r.in_dtypes)
            ]
        return out

    def casts(self, stage: str) -> dict[str, int]:
        """``{"f32->bf16": count}`` of the casts in ``stage``."""
        return dict(
            collections.Counter(
                f"{'/'.join(r.in_dtypes) or '?'}->{r.out_dtypes[0]}" for r in self.of(stage, "cast")
            )
        )

    def check(self, policy: Policy, *, allow_wider_accum: bool = False) -> list[str]:
        """Violations of ``policy`` (the rules are in the module docstring); empty if none.

        Args:
            policy: the policy the program was meant to follow.
            allow_wider_accum: also accept matmuls, sums and backward ops in any dtype at least
                as wide as ``policy.accum(stage)`` (e.g. ``jnp.sum`` of a 16-bit array, which JAX
                accumulates in FP32, under ``bf16-pure``).

        Returns:
            One line per offending equation: stage, primitive, name stack and what is wrong.
        """
        return [msg for _, msg in self._violations(policy, allow_wider_accum)]

    def _violations(self, policy: Policy, allow_wider_accum: bool = False) -> list[tuple[str, str]]:
        policy_dtypes = {dtype_short(d) for _, d in policy.stage_dtypes} | {
            dtype_short(policy.accum_dtype),
            dtype_short(policy.param_dtype),
            dtype_short(policy.output_dtype),
        }
        problems: list[tuple[str, str]] = []
        for r in self.records:
            if r.stage == UNSCOPED:
                continue
            d, a = dtype_short(policy.dtype(r.stage)), dtype_short(policy.accum(r.stage))
            fwd_ok = {d}
            any_ok = {d, a} | (_at_least(policy.accum(r.stage)) if allow_wider_accum else set())
            where = f"{r.stage} (backward)" if r.backward else r.stage
            loc = f"{where}: {r.primitive} at {r.name_stack!r}"
            msgs: list[str] = []
            if r.kind == "cast":
                if r.backward:  # the transpose of a forward cast, which is checked
                    continue
                bad = [t for t in r.out_dtypes if t not in policy_dtypes]
                if bad:
                    msgs.append(f"{loc} casts to {bad[0]}, not a dtype of the policy")
            elif r.kind == "matmul":
                ok_in = any_ok if r.backward else fwd_ok
                if r.primitive in UPCASTING_CALLS:  # narrower operands converted up in the call
                    ok_in = ok_in | (set(r.in_dtypes) - _at_least(policy.dtype(r.stage)))
                if any(t not in ok_in for t in r.in_dtypes):
                    msgs.append(f"{loc} has operands {r.in_dtypes}, policy says {d}")
                if r.accum not in any_ok:
                    msgs.append(f"{loc} accumulates in {r.accum}, policy says {d}/{a}")
            elif r.kind == "reduction":
                if r.accum not in any_ok:
                    what = "sum" if r.stage in SUM_STAGES else "reduction"
                    msgs.append(f"{loc} {what} accumulates in {r.accum}, policy says {d}")
            else:
                ok_out = any_ok if r.backward else fwd_ok
                bad = [t for t in r.out_dtypes if t not in ok_out]
                if bad:
                    msgs.append(f"{loc} computes in {bad[0]}, policy says {d}")
            problems += [(r.stage, m) for m in msgs]
        return problems

    def table(self, policy: Policy | None = None) -> str:
        """A Markdown table: stage | policy dtype | op dtypes seen | matmul accumulation |
        reduction accumulation | OK? (the last two columns need ``policy``)."""
        problems = self._violations(policy) if policy is not None else []
        rows = [
            "| stage | policy dtype | op dtypes seen | matmul accumulation "
            "| reduction accumulation | OK? |",
            "|---|---|---|---|---|---|",
        ]
        for s in self.stages():
            if policy is None or s == UNSCOPED:
                pd, ok = "-", "-"
            else:
                pd = dtype_short(policy.dtype(s))
                n_bad = sum(stage == s for stage, _ in problems)
                ok = "yes" if n_bad == 0 else f"NO ({n_bad})"
            rows.append(
                f"| {s} | {pd} | {_fmt_counts(self.op_dtypes(s))} | "
                f"{_fmt_counts(self.matmuls(s))} | {_fmt_counts(self.reductions(s))} | {ok} |"
            )
        return "\n".join(rows)

    def to_json(self, policy: Policy | None = None) -> dict[str, Any]:
        """A JSON-able dict: per stage the counts of op dtypes, matmuls, reductions and casts;
        the 16-bit scatter-adds (:meth:`low_precision_scatter_adds`: stage, primitive, dtype,
        backward); with ``policy`` also its dtype per stage and the violations."""
        stages = {
            s: {
                "op_dtypes": self.op_dtypes(s),
                "matmuls": self.matmuls(s),
                "reductions": self.reductions(s),
                "casts": self.casts(s),
                "n_ops": len(self.of(s)),
            }
            for s in self.stages()
        }
        out: dict[str, Any] = {"stages": stages}
        out["low_precision_scatter_adds"] = [
            {"stage": r.stage, "primitive": r.primitive, "accum": r.accum, "backward": r.backward}
            for r in self.low_precision_scatter_adds()
        ]
        if policy is not None:
            out["policy"] = policy.spec()
            for s in stages:
                if s != UNSCOPED:
                    stages[s]["policy_dtype"] = dtype_short(policy.dtype(s))
            out["violations"] = self.check(policy)
        return out


def audit_jaxpr(closed_jaxpr: jex.ClosedJaxpr, *, platform: str = "cuda") -> AuditReport:
    """The :class:`AuditReport` of an already traced program.

    Args:
        closed_jaxpr: e.g. ``jax.make_jaxpr(fn)(*args)``.
        platform: which branch of a ``jax.lax.platform_dependent`` to read (``"cuda"``,
            ``"rocm"``, ``"tpu"`` or ``"cpu"``); a platform without its own branch reads the
            default one.
    """
    records: list[OpRecord] = []
    _walk(closed_jaxpr.jaxpr, "", records, platform)
    return AuditReport(tuple(records))


def audit(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> AuditReport:
    """Traces ``fn(*args, **kwargs)`` with ``jax.make_jaxpr`` and audits every equation.

    Args:
        fn: the function to audit (a potential, a loss, ``jax.grad`` of either, ...).
        *args: its positional arguments (arrays or pytrees; traced).
        **kwargs: its keyword arguments (closed over, not traced).

    Returns:
        The :class:`AuditReport` of the program as it runs on a GPU: of a
        ``jax.lax.platform_dependent`` (e.g. the CPU fallback of
        :func:`mpnn_jax.precision.ops.accum_einsum`) only the accelerator branch is read; use
        :func:`audit_jaxpr` with ``platform="cpu"`` for the CPU program.
    """
    return audit_jaxpr(jax.make_jaxpr(functools.partial(fn, **kwargs))(*args))
