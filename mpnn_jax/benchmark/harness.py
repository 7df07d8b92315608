"""Benchmark cases: compile and time one (size, system, preset, mode, variant, backend) case, or
every combination of them side by side with the same weights.

:func:`measure` builds the model (:func:`~mpnn_jax.benchmark.make_model`), lowers and compiles the
jitted predictor (``mode="ef"``: energy + forces) or the library's full training step
(``mode="train"``: energy + force loss, so second derivatives), and returns one JSON-able row:
compile time, the timing of :func:`~mpnn_jax.benchmark.time_compiled` over perturbed copies of the
input, the compiled program's memory, the device's peak bytes where reported and the roofline
columns (:func:`~mpnn_jax.benchmark.roofline`). :func:`run_benchmark` loops over the cases.

Implementation variants of the nn blocks (:func:`mpnn_jax.nn.ops.implementation`: ``take_rows``
"onehot"/"take", ``sorted_edges`` "none"/"senders"/"receivers") and backends of the convolution
and symmetric contraction (:func:`mpnn_jax.nn.backends.available_backends`) are per-case choices.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from mpnn_jax import xla
from mpnn_jax.benchmark.models import (
    backend_names,
    init_for,
    make_model,
    make_train_state_and_step,
    policy_names,
)
from mpnn_jax.benchmark.roofline import cost_analysis, roofline
from mpnn_jax.benchmark.systems import (
    System,
    avg_neighbours,
    build_system,
    perturbed_inputs,
    sort_edges,
    to_device,
)
from mpnn_jax.benchmark.timing import (
    compiled_bytes,
    fits_at_run_time,
    is_oom,
    peak_device_bytes,
    time_compiled,
    time_interleaved,
)
from mpnn_jax.precision import get_policy


def compile_program(
    model: Any, params: Any, graphs: Sequence[Any], *, mode: str, implementation: Any = None
) -> tuple[Any, list[tuple], float]:
    """The compiled E+F predictor (``mode="ef"``) or library training step (``"train"``) of
    ``model``, its argument tuples (one per graph of ``graphs``) and the compile time (s).

    Traced under the model's matmul precision and ``implementation`` (a context from
    :func:`mpnn_jax.nn.ops.implementation`; ``None``: the defaults).
    """
    from mpnn_jax.potential import make_predictor

    with implementation or contextlib.nullcontext(), get_policy(model.policy).matmul_context():
        if mode == "ef":
            fn, first = xla.jit(make_predictor(model), model=model), params
        elif mode == "train":
            first, step = make_train_state_and_step(model, params)
            fn = xla.jit(step, model=model)
        else:
            raise ValueError(f"unknown mode {mode!r}; expected 'ef' or 'train'")
        t0 = time.perf_counter()
        compiled = fn.lower(first, graphs[0]).compile()
        return compiled, [(first, g) for g in graphs], time.perf_counter() - t0


def case_row(
    size: str, system: System, preset: str, mode: str, model: Any, *, take_rows: str = "take",
    sorted_edges: str = "none",
) -> dict[str, Any]:  # fmt: skip
    """The fields that name a timed case (a result row's first columns): model size, system,
    atoms, edges, atom order, preset, mode, implementation variant, backend (``model.backend``)
    and the per-program XLA options (:mod:`mpnn_jax.xla`)."""
    return dict(
        model=size, system=system.name, n_atoms=system.n_atoms, n_edges=system.n_edges,
        atom_order=system.atom_order, preset=preset, mode=mode, take_rows=take_rows,
        sorted_edges=sorted_edges, backend=model.backend, xla_options=xla.options_for(model),
    )  # fmt: skip


def measure(
    *,
    size: str,
    system: System,
    preset: str,
    mode: str,
    params: Any,
    avg_num_neighbors: float,
    cutoff: float,
    repeats: int = 20,
    n_inputs: int = 3,
    warmup: int = 3,
    take_rows: str = "take",
    sorted_edges: str = "none",
    backend: str = "e3nn",
    ceilings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Compiles and times one (model size, system, preset, mode) case; ``mode`` is "ef" or "train".

    ``take_rows`` and ``sorted_edges`` select the implementation variant
    (:func:`mpnn_jax.nn.ops.implementation`); with sorted edges the graph is re-sorted first.
    ``backend`` names the convolution and symmetric contraction backend
    (:mod:`mpnn_jax.nn.backends`). ``ceilings`` (from :func:`device_ceilings`) feed the roofline
    columns (:func:`roofline`).

    Returns a JSON-able dict with the case (including ``backend``), compile_s, median_ms,
    atom_steps_per_s, compiled_bytes, the roofline entries and, where the device reports it,
    peak_bytes; an out-of-memory case returns ``{"oom": True}``.
    """
    row, compiled, inputs, cost = _prepare(
        size=size, system=system, preset=preset, mode=mode, params=params,
        avg_num_neighbors=avg_num_neighbors, cutoff=cutoff, n_inputs=n_inputs,
        take_rows=take_rows, sorted_edges=sorted_edges, backend=backend,
    )  # fmt: skip
    if compiled is None:
        return row
    try:
        times = time_compiled(compiled, inputs, warmup=warmup, repeats=repeats)
    except Exception as err:  # noqa: BLE001 - OOM surfaces as several exception types
        if is_oom(err):
            return {**row, "oom": True}
        raise
    return _finish(row, times, system, cost, preset, ceilings, peak_bytes=peak_device_bytes())


def _prepare(
    *, size, system, preset, mode, params, avg_num_neighbors, cutoff, n_inputs, take_rows,
    sorted_edges, backend,
) -> tuple[dict[str, Any], Any, list[tuple] | None, Any]:  # fmt: skip
    """The case's row with its compile fields, its compiled program, argument tuples and cost
    analysis; ``(row with oom, None, None, None)`` where it does not fit."""
    from mpnn_jax.nn import ops

    model = make_model(
        size,
        policy=preset,
        n_species=system.n_species,
        cutoff=cutoff,
        avg_num_neighbors=avg_num_neighbors,
        backend=backend,
    )
    graph = system.graph if sorted_edges == "none" else sort_edges(system.graph, by=sorted_edges)
    graphs = [to_device(g) for g in perturbed_inputs(graph, n_inputs)]
    row = case_row(
        size, system, preset, mode, model, take_rows=take_rows, sorted_edges=sorted_edges
    )
    try:
        impl = ops.implementation(take_rows=take_rows, sorted_edges=sorted_edges)
        compiled, inputs, row["compile_s"] = compile_program(
            model, params, graphs, mode=mode, implementation=impl
        )
        row["compiled_bytes"] = compiled_bytes(compiled)
        return row, compiled, inputs, cost_analysis(compiled)
    except Exception as err:  # noqa: BLE001 - OOM surfaces as several exception types
        if is_oom(err):
            row["oom"] = True
            return row, None, None, None
        raise


def _finish(row, times, system, cost, preset, ceilings, *, peak_bytes) -> dict[str, Any]:
    """The row with its timing, throughput, peak memory and roofline columns."""
    row = {**row, **times}
    row["atom_steps_per_s"] = system.n_atoms / (row["median_ms"] * 1e-3)
    row["peak_bytes"] = peak_bytes
    row.update(roofline(cost, preset=preset, median_ms=row["median_ms"], ceilings=ceilings))
    return row


def run_benchmark(
    *,
    sizes: Sequence[str],
    systems: Sequence[tuple[str, int]],
    presets: Sequence[str],
    modes: Sequence[str] = ("ef", "train"),
    cutoff: float = 5.0,
    repeats: int = 20,
    n_inputs: int = 3,
    warmup: int = 3,
    variants: Sequence[tuple[str, str]] = (("take", "none"),),
    backends: Sequence[str] = ("e3nn",),
    ceilings: dict[str, float] | None = None,
    progress: Callable[[dict], None] | None = None,
    interleaved: bool = False,
) -> list[dict[str, Any]]:
    """Every (size, system, mode, preset, variant, backend) case, side by side, same weights.

    Args:
        sizes: names from ``MODEL_SIZES``.
        systems: ``(kind, n_atoms)`` pairs, kind in {"cu", "water", "ethanol", "aspirin"}, or
            ``(kind, n_atoms, atom_order)`` (:func:`build_system`).
        presets: precision presets, e.g. ``("fp32", "bf16-mixed", "fp16-mixed", "fp32-highest")``.
        modes: ``"ef"`` (energy + forces) and/or ``"train"`` (a full training step).
        variants: ``(take_rows, sorted_edges)`` implementation variants, e.g.
            ``[("onehot", "none"), ("take", "none")]`` (see :func:`measure`).
        backends: names from :func:`mpnn_jax.nn.backends.available_backends`; each case runs
            once per backend (innermost loop, so backends sit side by side). An unknown or
            unavailable name raises ``ValueError`` before any compile.
        ceilings: :func:`device_ceilings` of this device for the roofline columns (None: the
            H100 defaults).
        progress: called with each finished row (e.g. to print it).
        interleaved: compile every preset of a (size, system, mode, variant, backend) case first,
            then time them in rounds (:func:`~mpnn_jax.benchmark.timing.time_interleaved`: each
            round calls each preset once), so that a speed-up is the median of the rounds'
            ratios, which the drift of one program between rows of a process (up to 5.6%,
            PERFORMANCE_LOG entry 27) does not move. Rows get ``interleaved`` and ``round_ms``;
            their ``peak_bytes`` is the process's peak over all the presets of the case.

    Returns:
        The rows (see :func:`measure`).
    """
    from mpnn_jax.data import SpeciesTable
    from mpnn_jax.nn import ops

    policy_names(presets)
    backends = backend_names(backends)  # "auto" resolved: rows record the backend that ran
    for take_rows, sorted_edges in variants:  # validates names before any compile
        with ops.implementation(take_rows=take_rows, sorted_edges=sorted_edges):
            pass
    table = SpeciesTable((1, 6, 8, 29))  # H, C, O, Cu: one table for every system
    rows = []
    for kind, n_atoms, *order in systems:
        system = build_system(
            kind, n_atoms, cutoff=cutoff, species_table=table, atom_order=(order or ["input"])[0]
        )
        for size in sizes:
            params = init_for(size, system, cutoff=cutoff)
            for mode in modes:
                common = dict(
                    size=size, system=system, mode=mode, params=params,
                    avg_num_neighbors=avg_neighbours(system), cutoff=cutoff, n_inputs=n_inputs,
                )  # fmt: skip
                if interleaved:
                    for take_rows, sorted_edges in variants:
                        for backend in backends:
                            impl = dict(take_rows=take_rows, sorted_edges=sorted_edges)
                            for row in _interleaved_case(
                                presets, common, impl, backend, repeats, warmup, ceilings
                            ):
                                rows.append(row)
                                if progress is not None:
                                    progress(row)
                    continue
                for preset in presets:
                    for take_rows, sorted_edges in variants:
                        for backend in backends:
                            row = measure(
                                **common,
                                preset=preset,
                                repeats=repeats,
                                warmup=warmup,
                                take_rows=take_rows,
                                sorted_edges=sorted_edges,
                                backend=backend,
                                ceilings=ceilings,
                            )
                            rows.append(row)
                            if progress is not None:
                                progress(row)
    return rows


def _interleaved_case(presets, common, impl, backend, repeats, warmup, ceilings) -> list[dict]:
    """Every preset of one case compiled, then timed in interleaved rounds (one row each; a
    preset that does not fit is an ``oom`` row and sits out the rounds)."""
    prepared = {
        preset: _prepare(**common, preset=preset, backend=backend, **impl) for preset in presets
    }
    programs = {p: (c[1], c[2]) for p, c in prepared.items() if c[1] is not None}
    for preset in list(programs):  # a program that compiled may still not fit when it runs
        if not fits_at_run_time(*programs[preset]):
            del programs[preset]
            prepared[preset][0]["oom"] = True
    times = time_interleaved(programs, warmup=warmup, repeats=repeats) if programs else {}
    peak = peak_device_bytes()
    rows = []
    for preset, (row, _, _, cost) in prepared.items():
        if preset not in times:
            rows.append(row)
            continue
        done = _finish(
            row, times[preset], common["system"], cost, preset, ceilings, peak_bytes=peak
        )
        rows.append({**done, "interleaved": True})
    return rows
