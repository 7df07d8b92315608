"""Data parallelism with JAX's own SPMD: one padded batch per device, gradients all-reduced by XLA.

A 1-D :class:`~jax.sharding.Mesh` with axis ``"data"`` spans the selected devices (of every
process). Each train step takes ``n_dev`` consecutive host batches of the loader's stream
(crossing epoch boundaries), pads them to one common bucket and stacks them into a leading device
axis ``[n_dev, ...]``, sharded with ``NamedSharding(mesh, P("data"))``; params, optimiser state,
EMA and loss scale are replicated (``P()``). The step is ``make_train_step`` with the per-batch
loss ``jax.vmap``-ed over the device axis and averaged (:func:`mean_over_devices`), jitted with
these shardings: XLA partitions the vmapped batch over the devices and inserts the gradient
all-reduce itself. There is one gradient tree, so the loss scale is global: a non-finite gradient
on any device skips the step on all of them and lowers the scale once.

Batch size and learning rate:

* The effective batch size is ``train.batch_size x n_devices`` (``n_devices`` over all
  processes); the learning rate is **not** scaled automatically. Keeping ``train.lr`` keeps the
  per-step update size of the Adam family (its steps are normalised) while each step averages
  more configurations; a common starting point when the effective batch grows ``k`` times is
  ``lr x sqrt(k)`` (or ``lr x k`` with warm-up), to be checked on the validation curve.
* ``TrainState.position`` counts host batches, so a checkpoint written with 4 devices resumes on
  1 (or 2, ...) with the data order continuing from the same batch.

Multi-host (``parallel.num_processes > 1``): :func:`initialize_distributed` calls
``jax.distributed.initialize``; the mesh then spans ``jax.devices()`` of all processes. Every
process runs the same program on the same (deterministic) data order and takes part in every
collective, but builds only the host batches of its own devices (:func:`put_group`: the common
bucket comes from the sizes of the whole group, so shapes agree without communication). Files
(checkpoints, ``metrics.jsonl``, plots, the resolved config) are written by process 0 alone
(:func:`is_primary`), followed by a barrier (:func:`sync_processes`); every process reads the
checkpoint on resume, so the run directory must be on a filesystem that all hosts share.

Example:
    >>> # mesh = make_mesh(select_devices("all"))
    >>> # step = make_parallel_train_step(predict, mesh=mesh, loss_fn=loss_fn, optimizer=opt)
    >>> # for group in iterate_sharded_groups(loader, mesh, epoch=0, position=0):
    >>> #     state, m = step(state, group)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mpnn_jax import xla
from mpnn_jax.data import GraphLoader
from mpnn_jax.data.buckets import Bucket
from mpnn_jax.training.loss import LossFn
from mpnn_jax.training.metrics import MetricsAccumulator
from mpnn_jax.training.state import BatchLoss, Predictor, TrainState, make_train_step

AXIS = "data"


def initialize_distributed(
    *, coordinator_address: str | None, num_processes: int, process_id: int | None
) -> None:
    """``jax.distributed.initialize`` for multi-host runs.

    A no-op when ``num_processes <= 1`` or when this process is already initialised (a second
    ``train`` call in the same process). Must run before anything touches a JAX backend.
    """
    if num_processes > 1 and not jax.distributed.is_initialized():
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )


def is_primary() -> bool:
    """True on process 0, the one process that writes files in a multi-process run."""
    return jax.process_index() == 0


def sync_processes(name: str) -> None:
    """A barrier over all processes (no-op with one), e.g. after process 0 wrote a checkpoint."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def single_process() -> bool:
    """True when this is the only JAX process (no ``jax.distributed`` peers)."""
    return jax.process_count() == 1


def agree(flag: bool) -> bool:
    """Process 0's ``flag`` on every process, so that a host-side decision (stop on a time
    limit) cannot send the processes down different paths (no-op with one process)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.bool_)))


def assert_same_on_all_processes(value: int, what: str) -> None:
    """Raises if an integer differs between processes (e.g. the step resumed from: a checkpoint
    one process does not see would otherwise silently desynchronise the replicas)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.assert_equal(
            np.asarray(value, np.int64), f"{what} differs between processes"
        )


def select_devices(devices: str | int = "all") -> list:
    """``jax.devices()`` (``"all"``, every process's) or its first ``devices`` entries.

    Raises:
        ValueError: more devices than available, or (multi-process) a selection that leaves this
            process without a device: every process must feed at least one.
    """
    available = jax.devices()
    if devices == "all":
        return list(available)
    if not 1 <= int(devices) <= len(available):
        raise ValueError(f"parallel.devices={devices} but {len(available)} device(s) available")
    selected = list(available[: int(devices)])
    if jax.process_count() > 1 and not any(
        d.process_index == jax.process_index() for d in selected
    ):
        raise ValueError(
            f"parallel.devices={devices} leaves process {jax.process_index()} without a device "
            f"({len(available)} devices over {jax.process_count()} processes)"
        )
    return selected


def make_mesh(devices: Sequence) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices``."""
    return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of params, optimiser state, EMA and loss scale (a copy on every device)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of stacked batches: leading axis split over the devices."""
    return NamedSharding(mesh, P(AXIS))


def mean_over_devices(batch_loss: BatchLoss) -> BatchLoss:
    """``loss(params, stacked) -> (mean loss, mean terms)`` over the leading device axis.

    Args:
        batch_loss: ``batch_loss(params, graph) -> (loss [], terms {name: []})`` of one batch.

    Returns:
        The same function of a stacked batch ``[n_dev, ...]`` (``jax.vmap`` over the axis).
    """

    def loss(params: Any, graphs: jraph.GraphsTuple) -> tuple[jax.Array, dict]:
        losses, terms = jax.vmap(batch_loss, in_axes=(None, 0))(params, graphs)  # [n_dev]
        return jnp.mean(losses), jax.tree_util.tree_map(lambda t: jnp.mean(t, 0), terms)

    return loss


def make_parallel_train_step(
    predict: Predictor,
    *,
    mesh: Mesh,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformationExtraArgs,
    ema_decay: float | None = 0.99,
    batches_per_epoch: int | None = None,
    plateau: bool = False,
    compiler_options: Mapping[str, str] | None = None,
) -> Callable[[TrainState, jraph.GraphsTuple], tuple[TrainState, dict]]:
    """The jitted data-parallel step ``step(state, stacked) -> (state, metrics)``.

    ``stacked`` is ``[mesh.size, ...]`` (see :func:`put_group`, or :func:`stack_group` and
    :func:`shard_batch`); the loss is the mean of the per-device losses and ``position`` advances
    by ``mesh.size``. Every process of a multi-process run calls it with the same global batch.
    """
    step = make_train_step(
        predict,
        loss_fn=loss_fn,
        optimizer=optimizer,
        ema_decay=ema_decay,
        batches_per_epoch=batches_per_epoch,
        plateau=plateau,
        loss_over_devices=mean_over_devices,
        batches_per_step=mesh.size,
    )
    rep = replicated(mesh)
    return xla.jit(
        step,
        in_shardings=(rep, batch_sharding(mesh)),
        out_shardings=(rep, rep),
        compiler_options=compiler_options,
    )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places ``tree`` (e.g. a TrainState or params) on every device of ``mesh``.

    With several processes every process must pass the same values (JAX checks, and raises if
    they differ); raw ``uint32`` PRNG keys are fine, typed key arrays are not (JAX 0.10).
    """
    return jax.device_put(tree, replicated(mesh))


def shard_batch(stacked: jraph.GraphsTuple, mesh: Mesh) -> jraph.GraphsTuple:
    """Places a stacked host batch ``[n_dev, ...]`` with one row per device.

    Every process must hold the whole stacked batch; :func:`put_group` builds only the rows of
    this process's devices.
    """
    return jax.device_put(stacked, batch_sharding(mesh))


# --- host side: groups of batches -------------------------------------------------------------
def group_bucket(loader: GraphLoader, group: Sequence[np.ndarray]) -> Bucket:
    """The loader plan's cheapest bucket that fits every batch of ``group`` (graph indices per
    device; the plan is extended if none does). Needs only the graph sizes, so every process
    finds the same bucket for the same group without building or exchanging batches."""
    sizes = np.array([loader.sizes(idx) for idx in group])  # [n_dev, 3]
    return loader.bucket(*(int(s) for s in sizes.max(axis=0)))


def stack_group(loader: GraphLoader, group: Sequence[np.ndarray]) -> jraph.GraphsTuple:
    """Pads the batches of ``group`` (graph indices per device) to one bucket and stacks them.

    The bucket is :func:`group_bucket`'s, so every device gets the same static shapes.

    Returns:
        A numpy GraphsTuple whose every leaf has a leading axis ``[len(group), ...]``.
    """
    bucket = group_bucket(loader, group)
    batches = [loader.make_batch(idx, bucket=bucket) for idx in group]
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches)


def put_group(
    loader: GraphLoader, group: Sequence[np.ndarray], mesh: Mesh, *, n_real: int | None = None
) -> jraph.GraphsTuple:
    """The global sharded batch ``[mesh.size, ...]`` of ``group``, built process-locally.

    Row ``j`` (the batch of ``group[j]``, padded to :func:`group_bucket`) lives on the mesh's
    device ``j``; this process makes only the rows of its own devices and assembles the global
    array with ``jax.make_array_from_single_device_arrays``. With one process this equals
    ``shard_batch(stack_group(loader, group), mesh)``.

    Args:
        loader: the loader whose graphs ``group`` indexes.
        group: ``mesh.size`` arrays of graph indices, one per device.
        mesh: the device mesh.
        n_real: rows from ``n_real`` on are copies with every graph weight 0 (they add exactly
            zero to error sums; see :func:`evaluation_index_groups`); default: all rows real.

    Returns:
        A GraphsTuple of global ``jax.Array`` leaves, each ``[mesh.size, ...]`` on
        :func:`batch_sharding`.
    """
    if len(group) != mesh.size:
        raise ValueError(f"group of {len(group)} batches for a mesh of {mesh.size} devices")
    n_real = len(group) if n_real is None else n_real
    bucket = group_bucket(loader, group)
    sharding = batch_sharding(mesh)
    rows = {}  # device -> its row's numpy batch (this process's devices only)
    for device, index in sharding.addressable_devices_indices_map((len(group),)).items():
        j = index[0].start or 0
        batch = loader.make_batch(group[j], bucket=bucket)
        rows[device] = batch if j < n_real else _zero_weight(batch)
    devices = list(rows)
    leaves = [jax.tree_util.tree_flatten(rows[d]) for d in devices]
    treedef = leaves[0][1]
    out = []
    for k, ref in enumerate(leaves[0][0]):
        shards = [jax.device_put(leaves[i][0][k][None], d) for i, d in enumerate(devices)]
        out.append(
            jax.make_array_from_single_device_arrays((len(group), *ref.shape), sharding, shards)
        )
    return jax.tree_util.tree_unflatten(treedef, out)


def host_batch_stream(loader: GraphLoader, *, epoch: int, position: int) -> Iterator[np.ndarray]:
    """The graph indices of the single-device batch stream from ``(epoch, position)`` on, epoch
    after epoch (``loader.batch_indices(e)``); infinite: the caller stops."""
    e, p = epoch, position
    while True:
        yield from loader.batch_indices(e)[p:]
        e, p = e + 1, 0


def iterate_groups(
    loader: GraphLoader, *, n_devices: int, epoch: int, position: int
) -> Iterator[jraph.GraphsTuple]:
    """Stacked numpy groups of ``n_devices`` consecutive host batches from ``(epoch, position)``.

    The host-batch stream runs through the epochs (:func:`host_batch_stream`), so a group may
    straddle an epoch boundary; it is the stream a single device would see, cut in groups.
    Infinite: the caller stops. (Single process; :func:`iterate_sharded_groups` is the same
    stream placed on a mesh, built process-locally.)
    """
    it = host_batch_stream(loader, epoch=epoch, position=position)
    while True:
        yield stack_group(loader, [next(it) for _ in range(n_devices)])


def iterate_sharded_groups(
    loader: GraphLoader, mesh: Mesh, *, epoch: int, position: int
) -> Iterator[jraph.GraphsTuple]:
    """:func:`iterate_groups`' stream as global sharded arrays (:func:`put_group`): the same
    global batch order with any number of processes, each building only its devices' rows."""
    it = host_batch_stream(loader, epoch=epoch, position=position)
    while True:
        yield put_group(loader, [next(it) for _ in range(mesh.size)], mesh)


def _zero_weight(batch: jraph.GraphsTuple) -> jraph.GraphsTuple:
    """A copy of ``batch`` with every graph weight 0: it adds exactly zero to error sums."""
    weight = np.zeros_like(np.asarray(batch.globals["weight"]))
    return batch._replace(globals={**batch.globals, "weight": weight})


def evaluation_index_groups(
    loader: GraphLoader, n_devices: int
) -> Iterator[tuple[list[np.ndarray], int]]:
    """Epoch 0 of ``loader`` in groups of ``n_devices`` batch indices, as ``(group, n_real)``;
    the last group is filled up with copies of its last batch (to be zero-weighted)."""
    indices = loader.batch_indices(0)
    for i in range(0, len(indices), n_devices):
        group = list(indices[i : i + n_devices])
        n_real = len(group)
        yield group + [group[-1]] * (n_devices - n_real), n_real


def evaluation_groups(loader: GraphLoader, n_devices: int) -> Iterator[jraph.GraphsTuple]:
    """Epoch 0 of ``loader`` in stacked numpy groups; the last group is filled with zero-weight
    copies (single process; :func:`evaluate_sharded` builds them process-locally)."""
    for group, n_real in evaluation_index_groups(loader, n_devices):
        rows = unstack(stack_group(loader, group))
        rows = rows[:n_real] + [_zero_weight(r) for r in rows[n_real:]]
        yield jax.tree_util.tree_map(lambda *xs: np.stack(xs), *rows)


def make_sharded_sums_fn(
    sums_fn: Callable[[Any, jraph.GraphsTuple], dict],
    mesh: Mesh,
    *,
    compiler_options: Mapping[str, str] | None = None,
) -> Callable[[Any, jraph.GraphsTuple], dict]:
    """Jits ``sums_fn(params, graph)`` (unjitted) vmapped over a sharded device axis.

    Returns:
        ``fn(params, stacked) -> {key: [n_dev]}``: the sums of each device's batch (added up on
        the host in float64, as on one device), replicated so that every process can read them.
    """
    vmapped = jax.vmap(sums_fn, in_axes=(None, 0))
    rep = replicated(mesh)
    return xla.jit(
        vmapped,
        in_shardings=(rep, batch_sharding(mesh)),
        out_shardings=rep,
        compiler_options=compiler_options,
    )


def make_sharded_predictor(
    predict: Predictor, mesh: Mesh, *, compiler_options: Mapping[str, str] | None = None
) -> Predictor:
    """Batched inference over the mesh: ``fn(params, stacked) -> {key: [n_dev, ...]}``.

    ``predict(params, graph)`` (unjitted, e.g. ``mpnn_jax.potential.make_predictor(model)``) is
    ``jax.vmap``-ed over the device axis of a stacked batch (:func:`put_group`) and jitted with
    replicated params; the outputs stay sharded like the input (row ``j`` on device ``j``).
    """
    vmapped = jax.vmap(predict, in_axes=(None, 0))
    shard = batch_sharding(mesh)
    return xla.jit(
        vmapped,
        in_shardings=(replicated(mesh), shard),
        out_shardings=shard,
        compiler_options=compiler_options,
    )


def evaluate_sharded(
    sharded_sums_fn: Callable[[Any, jraph.GraphsTuple], dict],
    params: Any,
    loader: GraphLoader,
    mesh: Mesh,
) -> MetricsAccumulator:
    """Error sums of ``params`` over epoch 0 of ``loader``, ``mesh.size`` batches at a time.

    Every process builds only its devices' batches (:func:`put_group`) and reads the replicated
    sums, so every process returns the same accumulator.

    Args:
        sharded_sums_fn: from :func:`make_sharded_sums_fn`.
        params: the evaluated weights (replicated here).
        loader: an unshuffled loader of the evaluation set.
        mesh: the device mesh.

    Returns:
        The accumulator (``.result()``: the same metrics as a single-device evaluation).
    """
    params = replicate(params, mesh)
    acc = MetricsAccumulator()
    for group, n_real in evaluation_index_groups(loader, mesh.size):
        stacked = put_group(loader, group, mesh, n_real=n_real)
        sums = jax.device_get(sharded_sums_fn(params, stacked))
        for j in range(mesh.size):
            acc.add({k: v[j] for k, v in sums.items()})
    return acc


def unstack(stacked: jraph.GraphsTuple) -> list[jraph.GraphsTuple]:
    """The per-device batches of a stacked group, in device order (numpy or traced arrays)."""
    n = int(stacked.n_node.shape[0])
    return [jax.tree_util.tree_map(lambda x, j=j: x[j], stacked) for j in range(n)]
