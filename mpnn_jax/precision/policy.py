"""The stage-wise mixed-precision policy: one frozen object, parsed from a short string.

An MPNN potential is cut into ten *stages* (``STAGES``). The policy gives each stage one dtype,
and layers take their dtypes from it and nowhere else:

=============  ===================================================  ============================
stage          what it covers                                        the seed's recommendation
=============  ===================================================  ============================
embedding      species -> initial node features                      low precision is fine
geometry       r_ij = r_j - r_i + shift . cell, lengths              FP32
basis          spherical harmonics, radial basis, cutoff envelope    FP32, then cast down
radial         radial MLP: basis -> per-edge path weights            low precision (message MLP)
messages       tensor products, per-edge messages                    low precision
aggregation    sum of messages over neighbours (accumulator dtype)   FP32 accumulation
update         node linears / MLPs / gates / skip connections        low precision
readout        per-atom energy head                                  low precision
energy         scale, shift, E0 and the sums over atoms and graphs   FP32 (FP64 optional)
forces         -dE/dr and stress returned by autodiff                FP32
=============  ===================================================  ============================

Contract:
  * Parameters are stored in ``param_dtype`` (FP32 master weights). A layer casts its weights to
    its stage dtype with :meth:`Policy.cast` at use, once per apply.
  * Matmuls and contractions in a low-precision stage accumulate in ``accum_dtype`` (FP32) via
    ``preferred_element_type`` where XLA supports it (:meth:`Policy.einsum`).
  * The only ``astype`` calls of the library live here (:meth:`Policy.cast`); the audit
    (:mod:`mpnn_jax.precision.audit`) checks what actually ran.
  * ``matmul_precision`` is handed to ``jax.default_matmul_precision`` by the potential: on NVIDIA
    GPUs ``"default"`` lets an FP32 matmul run as TF32; ``"highest"`` forces true FP32.

The policy is a frozen, hashable dataclass, so it can be a Flax module attribute and a static
argument of ``jax.jit``.

Example:
    >>> from mpnn_jax.precision import get_policy
    >>> p = get_policy("bf16-mixed")
    >>> p.dtype("messages").name, p.dtype("aggregation").name
    ('bfloat16', 'float32')
    >>> get_policy("fp32+basis=bf16").dtype("basis").name
    'bfloat16'
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import jmp
import numpy as np

STAGES: tuple[str, ...] = (
    "embedding",
    "geometry",
    "basis",
    "radial",
    "messages",
    "aggregation",
    "update",
    "readout",
    "energy",
    "forces",
)

#: The seed's claim for each stage (``../shared/seed``), used in reports.
SEED_CLAIMS: dict[str, str] = {
    "embedding": "low precision is fine",
    "geometry": "FP32 (cancellation for small displacements)",
    "basis": "compute in FP32, then cast down",
    "radial": "low precision (the message MLP over pairwise features)",
    "messages": "low precision",
    "aggregation": "accumulate in FP32",
    "update": "low precision",
    "readout": "low precision; scale, shift and E0 in FP32",
    "energy": "FP32 (FP64 as an option)",
    "forces": "FP32 outputs; loss scaling in training",
}

_DTYPE_NAMES: dict[str, Any] = {
    "f64": jnp.float64,
    "fp64": jnp.float64,
    "float64": jnp.float64,
    "f32": jnp.float32,
    "fp32": jnp.float32,
    "float32": jnp.float32,
    "bf16": jnp.bfloat16,
    "bfloat16": jnp.bfloat16,
    "f16": jnp.float16,
    "fp16": jnp.float16,
    "float16": jnp.float16,
}
_SHORT = {"float64": "f64", "float32": "f32", "bfloat16": "bf16", "float16": "f16"}
MATMUL_PRECISIONS = ("default", "tensorfloat32", "highest")
LOSS_SCALINGS = ("none", "dynamic")


def parse_dtype(name: str) -> np.dtype:
    """``"bf16"`` -> ``dtype('bfloat16')``; an unknown name raises ``ValueError`` (with choices)."""
    key = str(name).strip().lower()
    if key not in _DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPE_NAMES)}")
    return jnp.dtype(_DTYPE_NAMES[key])


def dtype_short(dtype: Any) -> str:
    """``dtype('bfloat16')`` -> ``"bf16"``."""
    return _SHORT.get(jnp.dtype(dtype).name, jnp.dtype(dtype).name)


def _is_float(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


@dataclasses.dataclass(frozen=True)
class Policy:
    """A frozen, stage-wise mixed-precision policy.

    Attributes:
        name: the spec it was parsed from (a preset name or a grammar string).
        param_dtype: dtype parameters are stored and optimised in (FP32 master weights).
        compute_dtype: the default dtype of a stage that is not named.
        output_dtype: dtype of the energies, forces and stress handed to the user.
        stage_dtypes: ``((stage, dtype), ...)`` for every stage in ``STAGES`` order.
        accum_dtype: accumulator of matmuls/contractions in low-precision stages.
        matmul_precision: ``"default"`` (TF32 on NVIDIA GPUs for FP32), ``"tensorfloat32"`` or
            ``"highest"`` (true FP32 matmuls).
        loss_scaling: ``"dynamic"`` (FP16 training) or ``"none"``.
    """

    name: str
    param_dtype: np.dtype
    compute_dtype: np.dtype
    output_dtype: np.dtype
    stage_dtypes: tuple[tuple[str, np.dtype], ...]
    accum_dtype: np.dtype = np.dtype("float32")
    matmul_precision: str = "default"
    loss_scaling: str = "none"

    def __post_init__(self) -> None:
        names = tuple(s for s, _ in self.stage_dtypes)
        if names != STAGES:
            raise ValueError(f"stage_dtypes must name every stage in order {STAGES}, got {names}")
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ValueError(
                f"unknown matmul precision {self.matmul_precision!r}; "
                f"expected one of {MATMUL_PRECISIONS}"
            )
        if self.loss_scaling not in LOSS_SCALINGS:
            raise ValueError(
                f"unknown loss scaling {self.loss_scaling!r}; expected one of {LOSS_SCALINGS}"
            )

    # --- dtypes -----------------------------------------------------------------------------
    @property
    def jmp_policy(self) -> jmp.Policy:
        """The equivalent ``jmp.Policy`` (param, compute, output dtypes)."""
        return jmp.Policy(
            param_dtype=self.param_dtype,
            compute_dtype=self.compute_dtype,
            output_dtype=self.output_dtype,
        )

    def dtype(self, stage: str) -> np.dtype:
        """The dtype of ``stage``; an unknown stage raises ``ValueError``."""
        for s, d in self.stage_dtypes:
            if s == stage:
                return d
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")

    def accum(self, stage: str) -> np.dtype:
        """Accumulator dtype of matmuls in ``stage``: the wider of its dtype and ``accum_dtype``."""
        d = self.dtype(stage)
        return d if jnp.finfo(d).bits >= jnp.finfo(self.accum_dtype).bits else self.accum_dtype

    @property
    def uses_x64(self) -> bool:
        """True if any dtype of the policy is float64 (needs ``jax_enable_x64``)."""
        dts = [self.param_dtype, self.compute_dtype, self.output_dtype, self.accum_dtype]
        return any(jnp.dtype(d) == jnp.float64 for d in dts + [d for _, d in self.stage_dtypes])

    # --- casts: the only place the library changes dtypes ---------------------------------
    def cast(self, stage: str, tree: Any) -> Any:
        """Casts every floating leaf of ``tree`` to the dtype of ``stage`` (ints untouched)."""
        return self.cast_to(self.dtype(stage), tree)

    @staticmethod
    def cast_to(dtype: Any, tree: Any) -> Any:
        """Casts every floating leaf of ``tree`` (arrays or ``e3nn.IrrepsArray``) to ``dtype``."""
        dtype = jnp.dtype(dtype)

        def f(x):
            if _is_float(x) and x.dtype != dtype:
                return x.astype(dtype)
            return x

        return jax.tree_util.tree_map(f, tree)

    def cast_output(self, tree: Any) -> Any:
        """Casts the user-facing outputs (energies, forces, stress) to ``output_dtype``."""
        return self.cast_to(self.output_dtype, tree)

    def cast_params(self, params: Any) -> Any:
        """Casts parameters to ``param_dtype`` (used when creating and loading them)."""
        return self.cast_to(self.param_dtype, params)

    def einsum(self, stage: str, subscripts: str, *operands: jax.Array) -> jax.Array:
        """``jnp.einsum`` in the dtype of ``stage`` accumulating in :meth:`accum`.

        Operands are cast to the stage dtype; the result is returned in the stage dtype (in a
        16-bit stage stored by the dot itself: :data:`mpnn_jax.precision.ops.STORE_16BIT`).
        """
        from mpnn_jax.precision.ops import accum_einsum

        ops = [self.cast(stage, o) for o in operands]
        out = accum_einsum(
            subscripts, *ops, accum_dtype=self.accum(stage), out_dtype=self.dtype(stage)
        )
        return self.cast(stage, out)

    # --- scopes ------------------------------------------------------------------------------
    @staticmethod
    def scope(stage: str) -> contextlib.AbstractContextManager:
        """``jax.named_scope(stage)``: marks the operations of a stage for the audit."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        return jax.named_scope(stage)

    @contextlib.contextmanager
    def matmul_context(self) -> Iterator[None]:
        """Context in which matmuls run at ``matmul_precision`` (enter around tracing)."""
        if self.matmul_precision == "default":
            yield
        else:
            with jax.default_matmul_precision(self.matmul_precision):
                yield

    # --- printing ----------------------------------------------------------------------------
    def spec(self) -> str:
        """The full grammar string of this policy; ``get_policy(p.spec()) == p`` up to the name."""
        parts = [
            f"params={dtype_short(self.param_dtype)}",
            f"compute={dtype_short(self.compute_dtype)}",
            f"output={dtype_short(self.output_dtype)}",
        ]
        parts += [f"{s}={dtype_short(d)}" for s, d in self.stage_dtypes]
        parts += [
            f"accum={dtype_short(self.accum_dtype)}",
            f"matmul={self.matmul_precision}",
            f"loss_scale={self.loss_scaling}",
        ]
        return ",".join(parts)

    def table(self) -> str:
        """A Markdown table: stage | dtype | the seed's recommendation."""
        rows = ["| stage | dtype | the seed's recommendation |", "|---|---|---|"]
        rows += [f"| {s} | {dtype_short(d)} | {SEED_CLAIMS[s]} |" for s, d in self.stage_dtypes]
        return "\n".join(rows)

    def __str__(self) -> str:
        return f"Policy({self.name}: {self.spec()})"
