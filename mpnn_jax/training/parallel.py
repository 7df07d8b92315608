"""Data parallelism with JAX's own SPMD: one padded batch per device, gradients all-reduced by XLA.

A 1-D :class:`~jax.sharding.Mesh` with axis ``"data"`` spans the selected devices. Each train
step takes ``n_dev`` consecutive host batches of the loader's stream (crossing epoch boundaries),
pads them to one common bucket and stacks them into a leading device axis ``[n_dev, ...]``,
sharded with ``NamedSharding(mesh, P("data"))``; params, optimiser state, EMA and loss scale are
replicated (``P()``). The step is ``make_train_step`` with the per-batch loss ``jax.vmap``-ed
over the device axis and averaged (:func:`mean_over_devices`), jitted with these shardings: XLA
partitions the vmapped batch over the devices and inserts the gradient all-reduce itself. There
is one gradient tree, so the loss scale is global: a non-finite gradient on any device skips the
step on all of them and lowers the scale once.

* The effective batch size is ``train.batch_size x n_devices``; the learning rate is **not**
  scaled automatically.
* ``TrainState.position`` counts host batches, so a checkpoint written with 4 devices resumes on
  1 (or 2, ...) with the data order continuing from the same batch.
* Multi-host: ``parallel.num_processes > 1`` calls ``jax.distributed.initialize``; every process
  builds the same (deterministic) groups and ``jax.device_put`` keeps its own shards.

Example:
    >>> # mesh = make_mesh(select_devices("all"))
    >>> # step = make_parallel_train_step(predict, mesh=mesh, loss_fn=loss_fn, optimizer=opt)
    >>> # for group in iterate_groups(loader, n_devices=mesh.size, epoch=0, position=0):
    >>> #     state, m = step(state, shard_batch(group, mesh))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mpnn_jax.data import GraphLoader
from mpnn_jax.training.loss import LossFn
from mpnn_jax.training.metrics import MetricsAccumulator
from mpnn_jax.training.state import BatchLoss, Predictor, TrainState, make_train_step

AXIS = "data"


def initialize_distributed(
    *, coordinator_address: str | None, num_processes: int, process_id: int | None
) -> None:
    """``jax.distributed.initialize`` for multi-host runs (a no-op when ``num_processes <= 1``)."""
    if num_processes > 1:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )


def select_devices(devices: str | int = "all") -> list:
    """``jax.devices()`` (``"all"``) or its first ``devices`` entries."""
    available = jax.devices()
    if devices == "all":
        return list(available)
    if not 1 <= int(devices) <= len(available):
        raise ValueError(f"parallel.devices={devices} but {len(available)} device(s) available")
    return list(available[: int(devices)])


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
) -> Callable[[TrainState, jraph.GraphsTuple], tuple[TrainState, dict]]:
    """The jitted data-parallel step ``step(state, stacked) -> (state, metrics)``.

    ``stacked`` is ``[mesh.size, ...]`` (see :func:`stack_group` and :func:`shard_batch`); the
    loss is the mean of the per-device losses and ``position`` advances by ``mesh.size``.
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
    return jax.jit(step, in_shardings=(rep, batch_sharding(mesh)), out_shardings=(rep, rep))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places ``tree`` (e.g. a TrainState or params) on every device of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(stacked: jraph.GraphsTuple, mesh: Mesh) -> jraph.GraphsTuple:
    """Places a stacked host batch ``[n_dev, ...]`` with one row per device."""
    return jax.device_put(stacked, batch_sharding(mesh))


# --- host side: groups of batches -------------------------------------------------------------
def stack_group(loader: GraphLoader, group: Sequence[np.ndarray]) -> jraph.GraphsTuple:
    """Pads the batches of ``group`` (graph indices per device) to one bucket and stacks them.

    The bucket is the loader plan's cheapest one that fits the largest real totals of the group
    (extended if none does), so every device gets the same static shapes.

    Returns:
        A numpy GraphsTuple whose every leaf has a leading axis ``[len(group), ...]``.
    """
    sizes = np.array([loader.sizes(idx) for idx in group])  # [n_dev, 3]
    bucket = loader.bucket(*(int(s) for s in sizes.max(axis=0)))
    batches = [loader.make_batch(idx, bucket=bucket) for idx in group]
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches)


def iterate_groups(
    loader: GraphLoader, *, n_devices: int, epoch: int, position: int
) -> Iterator[jraph.GraphsTuple]:
    """Stacked groups of ``n_devices`` consecutive host batches from ``(epoch, position)`` on.

    The host-batch stream runs through the epochs (``loader.batch_indices(epoch)``), so a group
    may straddle an epoch boundary; it is the stream a single device would see, cut in groups.
    Infinite: the caller stops.
    """

    def stream() -> Iterator[np.ndarray]:
        e, p = epoch, position
        while True:
            yield from loader.batch_indices(e)[p:]
            e, p = e + 1, 0

    it = stream()
    while True:
        yield stack_group(loader, [next(it) for _ in range(n_devices)])


def _zero_weight(batch: jraph.GraphsTuple) -> jraph.GraphsTuple:
    """A copy of ``batch`` with every graph weight 0: it adds exactly zero to error sums."""
    weight = np.zeros_like(np.asarray(batch.globals["weight"]))
    return batch._replace(globals={**batch.globals, "weight": weight})


def evaluation_groups(loader: GraphLoader, n_devices: int) -> Iterator[jraph.GraphsTuple]:
    """Epoch 0 of ``loader`` in stacked groups; the last group is filled with zero-weight copies."""
    indices = loader.batch_indices(0)
    for i in range(0, len(indices), n_devices):
        group = list(indices[i : i + n_devices])
        n_real = len(group)
        group += [group[-1]] * (n_devices - n_real)
        stacked = stack_group(loader, group)
        if n_real < n_devices:
            rows = unstack(stacked)
            rows = rows[:n_real] + [_zero_weight(r) for r in rows[n_real:]]
            stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *rows)
        yield stacked


def make_sharded_sums_fn(
    sums_fn: Callable[[Any, jraph.GraphsTuple], dict], mesh: Mesh
) -> Callable[[Any, jraph.GraphsTuple], dict]:
    """Jits ``sums_fn(params, graph)`` (unjitted) vmapped over a sharded device axis.

    Returns:
        ``fn(params, stacked) -> {key: [n_dev]}``: the sums of each device's batch (added up on
        the host in float64, as on one device).
    """
    vmapped = jax.vmap(sums_fn, in_axes=(None, 0))
    shard = batch_sharding(mesh)
    return jax.jit(vmapped, in_shardings=(replicated(mesh), shard), out_shardings=shard)


def evaluate_sharded(
    sharded_sums_fn: Callable[[Any, jraph.GraphsTuple], dict],
    params: Any,
    loader: GraphLoader,
    mesh: Mesh,
) -> MetricsAccumulator:
    """Error sums of ``params`` over epoch 0 of ``loader``, ``mesh.size`` batches at a time.

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
    for stacked in evaluation_groups(loader, mesh.size):
        sums = jax.device_get(sharded_sums_fn(params, shard_batch(stacked, mesh)))
        for j in range(mesh.size):
            acc.add({k: v[j] for k, v in sums.items()})
    return acc


def unstack(stacked: jraph.GraphsTuple) -> list[jraph.GraphsTuple]:
    """The per-device batches of a stacked group, in device order (numpy or traced arrays)."""
    n = int(stacked.n_node.shape[0])
    return [jax.tree_util.tree_map(lambda x, j=j: x[j], stacked) for j in range(n)]
