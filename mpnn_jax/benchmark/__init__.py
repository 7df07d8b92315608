"""Timing and memory harness for energy+forces inference and training steps.

Used by ``experiments/benchmark.py``. The harness builds realistic systems (batches of real
molecules, periodic fcc Cu, a water-density O/H box), a model at a named size, and times the
jitted predictor (energy + forces) and a full training step (energy + force loss, so second
derivatives) under each precision preset:

* compile time (lower + compile, seconds),
* the median of ``repeats`` timed calls after warm-up, each synchronised with
  ``block_until_ready``, rotating among ``n_inputs`` perturbed copies of the input so caches do
  not flatter,
* the compiled program's memory (arguments + outputs + temporaries, from XLA's memory analysis)
  and, on a GPU, the device's peak bytes in use,
* a roofline account: XLA's cost analysis of the compiled program (FLOPs, bytes accessed), the
  lower-bound time ``max(flops / matmul ceiling of the preset, bytes / bandwidth)`` against the
  device's ceilings (:func:`device_ceilings` when measured in the same run, else
  :data:`H100_CEILINGS`), and measured / lower bound.

Implementation variants of the nn blocks (:func:`mpnn_jax.nn.ops.implementation`: ``take_rows``
"onehot"/"take", ``sorted_edges`` "none"/"senders"/"receivers") and backends of the convolution and
symmetric contraction (:func:`mpnn_jax.nn.backends.available_backends`) are per-case choices, so
they can be timed side by side in one process; a case with sorted edges gets its graph re-sorted
(:func:`sort_edges`).

No timing claim comes from the CPU: ``--quick`` exists to keep the harness working in the test
suite. Everything here runs on whatever ``jax.devices()[0]`` is.

Modules (every public name is re-exported here, as ``mpnn_jax.benchmark.<name>``):

* :mod:`~mpnn_jax.benchmark.systems`: the inputs (molecule batches, periodic cells, padding,
  edge sorting, perturbed copies);
* :mod:`~mpnn_jax.benchmark.models`: named model sizes, parameters, the training step, name checks;
* :mod:`~mpnn_jax.benchmark.timing`: wall time, compiled and device memory, device facts;
* :mod:`~mpnn_jax.benchmark.roofline`: XLA's cost analysis against the device's ceilings;
* :mod:`~mpnn_jax.benchmark.harness`: one case (:func:`measure`) and every case
  (:func:`run_benchmark`);
* :mod:`~mpnn_jax.benchmark.largest`: the largest system that fits;
* :mod:`~mpnn_jax.benchmark.report`: the table and the throughput plot;
* :mod:`~mpnn_jax.benchmark.goals`: the performance issue's goals checked against result files.
"""

from mpnn_jax.benchmark.goals import (
    GOALS,
    Goal,
    device_of,
    format_goals,
    goal_figures,
    goal_summary,
)
from mpnn_jax.benchmark.harness import case_row, compile_program, measure, run_benchmark
from mpnn_jax.benchmark.largest import bytes_per_atom, largest_system
from mpnn_jax.benchmark.models import (
    MODEL_SIZES,
    backend_names,
    init_for,
    make_model,
    make_train_state_and_step,
    policy_names,
)
from mpnn_jax.benchmark.report import backend_name, format_table, plot_throughput, variant_name
from mpnn_jax.benchmark.roofline import (
    H100_CEILINGS,
    ceiling_key,
    cost_analysis,
    device_ceilings,
    roofline,
)
from mpnn_jax.benchmark.stage_bound import precision_bound, split_by_precision, stage_name
from mpnn_jax.benchmark.systems import (
    System,
    avg_neighbours,
    build_system,
    cu_fcc,
    molecule_batch,
    perturbed_inputs,
    sort_edges,
    to_device,
    water_box,
)
from mpnn_jax.benchmark.timing import (
    compiled_bytes,
    device_info,
    device_memory_budget,
    fits_at_run_time,
    is_oom,
    peak_device_bytes,
    round_ratio,
    speed_up,
    time_compiled,
    time_interleaved,
    timed_in_rounds,
)

__all__ = [
    "GOALS",
    "Goal",
    "H100_CEILINGS",
    "MODEL_SIZES",
    "System",
    "avg_neighbours",
    "backend_name",
    "backend_names",
    "build_system",
    "bytes_per_atom",
    "case_row",
    "ceiling_key",
    "compile_program",
    "compiled_bytes",
    "cost_analysis",
    "cu_fcc",
    "device_ceilings",
    "device_info",
    "device_memory_budget",
    "device_of",
    "fits_at_run_time",
    "format_goals",
    "format_table",
    "goal_figures",
    "goal_summary",
    "init_for",
    "is_oom",
    "largest_system",
    "make_model",
    "make_train_state_and_step",
    "measure",
    "molecule_batch",
    "peak_device_bytes",
    "perturbed_inputs",
    "plot_throughput",
    "policy_names",
    "precision_bound",
    "roofline",
    "run_benchmark",
    "sort_edges",
    "split_by_precision",
    "stage_name",
    "round_ratio",
    "speed_up",
    "time_compiled",
    "time_interleaved",
    "timed_in_rounds",
    "to_device",
    "variant_name",
    "water_box",
]
