"""Padding buckets: a small set of static batch shapes so each shape compiles once.

Every batch holds at most ``batch_size`` real graphs and is padded to one bucket
``(n_node, n_edge, n_graph)`` with n_node a multiple of 8, n_edge a multiple of 64 (of a larger
power of two for large budgets, at most 1/64 of the budget: :func:`edge_multiple`) and
n_graph = batch_size + 1 (one padding graph, jraph convention). The largest bucket holds the
worst case (the ``batch_size`` largest graphs together), so every batch of every shuffled epoch
fits; smaller buckets sit at quantiles of the batch sizes seen in simulated shuffled epochs, so
most batches carry little padding. Batches are padded to the smallest bucket that fits them.

Plain numpy and dataclasses; nothing here is jitted.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np

NODE_MULTIPLE = 8
EDGE_MULTIPLE = 64
#: The largest multiple an edge budget is rounded to (:func:`edge_multiple`).
#:
#: Why large multiples: XLA splits the reduction of a weight-gradient dot over the edges (the
#: radial MLP's, in a training step) into blocks and pads the edge dimension to a multiple of
#: ``split * block`` first, a copy of the whole operand per dot. At 547,200 edges (a multiple of
#: 64 and 128) that cost 1.5-4.0% of a training step, removed by multiples of 1024 (H200;
#: PERFORMANCE_LOG entry 11). Since the radial MLP runs once per pair of reverse edges (entry 20)
#: the dots reduce over ``n_edge / 2`` rows: 273,920 pairs were padded to 274,432 = 67 x 4096,
#: twenty ``[pairs, 64]`` copies and 1.1 ms of a 10k-atom MACE training step (H100, entry 28),
#: hence edge budgets of 547k edges in multiples of 8192.
MAX_EDGE_MULTIPLE = 16_384


def round_up(x: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= x (and >= multiple)."""
    return max(multiple, -(-int(x) // multiple) * multiple)


def edge_multiple(n_edge: int) -> int:
    """The multiple an edge budget of ``n_edge`` edges is rounded to: the largest power of two
    that is at most ``n_edge / 64``, between :data:`EDGE_MULTIPLE` (64) and
    :data:`MAX_EDGE_MULTIPLE`; so a budget holds at most 1/64 (1.6%) more edges than needed.

    Example:
        >>> edge_multiple(5_000), edge_multiple(70_000), edge_multiple(547_164)
        (64, 1024, 8192)
    """
    multiple = EDGE_MULTIPLE
    while multiple < MAX_EDGE_MULTIPLE and 2 * multiple * 64 <= n_edge:
        multiple *= 2
    return multiple


def edge_budget(n_edge: int) -> int:
    """``n_edge`` rounded up to :func:`edge_multiple` (the padded edge dimension of a batch).

    Example:
        >>> edge_budget(100), edge_budget(547_164)
        (128, 548864)
    """
    return round_up(n_edge, edge_multiple(n_edge))


@dataclasses.dataclass(frozen=True, order=True)
class Bucket:
    """One static padded shape: totals including padding."""

    n_node: int
    n_edge: int
    n_graph: int

    def fits(self, n_node: int, n_edge: int, n_graph: int) -> bool:
        """True if real totals fit, leaving >= 1 padding node and >= 1 padding graph."""
        return n_node < self.n_node and n_edge <= self.n_edge and n_graph < self.n_graph


def bucket_for(n_node: int, n_edge: int, n_graph: int) -> Bucket:
    """The tightest rounded bucket holding a batch with these real totals."""
    return Bucket(
        n_node=round_up(n_node + 1, NODE_MULTIPLE),
        n_edge=edge_budget(n_edge),
        n_graph=n_graph + 1,
    )


@dataclasses.dataclass(frozen=True)
class BucketPlan:
    """Padding buckets for batches of ``batch_size`` graphs, sorted from small to large.

    Attributes:
        batch_size: real graphs per batch (the last batch of an epoch may hold fewer).
        buckets: the padded shapes, ascending.
        n_graphs: number of graphs the plan was made from.
        max_graph_nodes: largest single graph (nodes); max_graph_edges likewise.
    """

    batch_size: int
    buckets: tuple[Bucket, ...]
    n_graphs: int = 0
    max_graph_nodes: int = 0
    max_graph_edges: int = 0

    def select(self, n_node: int, n_edge: int, n_graph: int) -> Bucket | None:
        """Cheapest bucket (fewest edges, then nodes) that fits the real totals, or None."""
        fitting = [b for b in self.buckets if b.fits(n_node, n_edge, n_graph)]
        return min(fitting, key=lambda b: (b.n_edge, b.n_node, b.n_graph), default=None)

    def with_bucket(self, bucket: Bucket) -> BucketPlan:
        """A new plan with one more bucket."""
        return dataclasses.replace(self, buckets=tuple(sorted(set(self.buckets) | {bucket})))

    def to_dict(self) -> dict:
        """JSON-able form."""
        return {
            "batch_size": self.batch_size,
            "n_graphs": self.n_graphs,
            "max_graph_nodes": self.max_graph_nodes,
            "max_graph_edges": self.max_graph_edges,
            "buckets": [dataclasses.asdict(b) for b in self.buckets],
        }

    def __str__(self) -> str:
        lines = [
            f"padding buckets (batch_size={self.batch_size}, from {self.n_graphs} graphs)",
            f"{'bucket':>6}  {'n_node':>8}  {'n_edge':>9}  {'n_graph':>7}",
        ]
        for i, b in enumerate(self.buckets):
            lines.append(f"{i:>6}  {b.n_node:>8}  {b.n_edge:>9}  {b.n_graph:>7}")
        return "\n".join(lines)


def _sizes(graphs) -> tuple[np.ndarray, np.ndarray]:
    """Per-graph (n_node, n_edge) from GraphsTuples or from (n_node, n_edge) pairs."""
    n_node, n_edge = [], []
    for g in graphs:
        if hasattr(g, "n_node"):
            n_node.append(int(np.sum(g.n_node)))
            n_edge.append(int(np.sum(g.n_edge)))
        else:
            n_node.append(int(g[0]))
            n_edge.append(int(g[1]))
    return np.asarray(n_node, np.int64), np.asarray(n_edge, np.int64)


def plan_buckets(
    graphs: Sequence,
    batch_size: int,
    *,
    max_buckets: int = 4,
    n_epochs_simulated: int = 20,
    seed: int = 0,
) -> BucketPlan:
    """Chooses at most ``max_buckets`` padded shapes for batches of ``batch_size`` graphs.

    Args:
        graphs: unpadded GraphsTuples, or (n_node, n_edge) pairs, one per configuration.
        batch_size: real graphs per batch.
        max_buckets: upper bound on distinct padded shapes (= compilations per epoch).
        n_epochs_simulated: shuffled epochs simulated to place the smaller buckets.
        seed: seed of those simulations.

    Returns:
        A `BucketPlan`; its largest bucket holds any ``batch_size`` graphs of ``graphs``.

    Example:
        >>> plan = plan_buckets([(9, 72)] * 100, batch_size=10)
        >>> [(b.n_node, b.n_edge, b.n_graph) for b in plan.buckets]
        [(96, 768, 11)]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_buckets < 1:
        raise ValueError(f"max_buckets must be >= 1, got {max_buckets}")
    n_node, n_edge = _sizes(graphs)
    if n_node.size == 0:
        raise ValueError("plan_buckets needs at least one graph")
    k = min(batch_size, n_node.size)
    worst = bucket_for(int(np.sort(n_node)[-k:].sum()), int(np.sort(n_edge)[-k:].sum()), batch_size)
    buckets = {worst}
    if max_buckets > 1 and n_node.size > 1:
        rng = np.random.default_rng(seed)
        totals = []
        for _ in range(n_epochs_simulated):
            perm = rng.permutation(n_node.size)
            for start in range(0, perm.size, batch_size):
                idx = perm[start : start + batch_size]
                totals.append((n_node[idx].sum(), n_edge[idx].sum()))
        totals = np.asarray(totals)
        for q in np.linspace(0.0, 1.0, max_buckets + 1)[1:-1]:
            candidate = bucket_for(
                int(np.quantile(totals[:, 0], q, method="higher")),
                int(np.quantile(totals[:, 1], q, method="higher")),
                batch_size,
            )
            if candidate.n_node <= worst.n_node and candidate.n_edge <= worst.n_edge:
                buckets.add(candidate)
    return BucketPlan(
        batch_size=batch_size,
        buckets=tuple(sorted(buckets)),
        n_graphs=int(n_node.size),
        max_graph_nodes=int(n_node.max()),
        max_graph_edges=int(n_edge.max()),
    )


def extend_plan(plan: BucketPlan, n_node: int, n_edge: int, n_graph: int) -> BucketPlan:
    """Adds a bucket for a batch that fits none (with a warning), never truncating."""
    bucket = bucket_for(n_node, n_edge, max(n_graph, plan.batch_size))
    warnings.warn(
        f"batch of {n_graph} graphs, {n_node} nodes, {n_edge} edges fits no padding bucket; "
        f"adding bucket {bucket} (one more compilation)",
        stacklevel=3,
    )
    return plan.with_bucket(bucket)
