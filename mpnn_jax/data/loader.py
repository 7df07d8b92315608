"""`GraphLoader`: seeded, resumable iteration over padded batches of graphs.

The order of epoch ``e`` is a pure function of ``(seed, e)``: ``iterate(e, start_step=s)``
reproduces exactly the batches from step ``s`` of epoch ``e``, so a training loop resumes from
``(seed, epoch, step)`` with no other loader state. Each batch is padded to a bucket of the
`BucketPlan`; a batch that fits no bucket gets a new one (with a warning), never truncation.

Host-side numpy; the yielded GraphsTuples are meant to be passed to jitted functions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import jraph
import numpy as np

from mpnn_jax.data.buckets import Bucket, BucketPlan, extend_plan, plan_buckets
from mpnn_jax.data.graphs import batch_graphs, pad_graph


class GraphLoader:
    """Batches unpadded graphs and pads each batch to a bucket.

    Args:
        graphs: unpadded single-graph GraphsTuples (see `atoms_to_graph`).
        batch_size: real graphs per batch.
        plan: padding buckets; default `plan_buckets(graphs, batch_size)`.
        shuffle: shuffle each epoch (order depends only on seed and epoch).
        seed: shuffling seed.
        drop_last: drop the final incomplete batch of an epoch.

    Example:
        >>> loader = GraphLoader(graphs, batch_size=8, shuffle=True, seed=0)  # doctest: +SKIP
        >>> for step, batch in enumerate(loader.iterate(epoch=3, start_step=5)):  # doctest: +SKIP
        ...     state = train_step(state, batch)
    """

    def __init__(
        self,
        graphs: Sequence[jraph.GraphsTuple],
        *,
        batch_size: int,
        plan: BucketPlan | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if len(graphs) == 0:
            raise ValueError("GraphLoader needs at least one graph")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.graphs = list(graphs)
        self.batch_size = int(batch_size)
        self.plan = plan if plan is not None else plan_buckets(self.graphs, self.batch_size)
        if self.plan.batch_size < self.batch_size:
            raise ValueError(
                f"plan was made for batch_size={self.plan.batch_size} < {self.batch_size}"
            )
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self._n_node = np.array([int(np.sum(g.n_node)) for g in self.graphs])
        self._n_edge = np.array([int(np.sum(g.n_edge)) for g in self.graphs])

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.graphs)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """int [n_graphs] permutation used in ``epoch`` (identity when not shuffling)."""
        if not self.shuffle:
            return np.arange(len(self.graphs))
        return np.random.default_rng([self.seed, int(epoch)]).permutation(len(self.graphs))

    def batch_indices(self, epoch: int) -> list[np.ndarray]:
        """Indices of the graphs in each batch of ``epoch``."""
        perm = self.order(epoch)
        return [perm[i * self.batch_size : (i + 1) * self.batch_size] for i in range(len(self))]

    def sizes(self, indices: np.ndarray) -> tuple[int, int, int]:
        """Real totals ``(n_node, n_edge, n_graph)`` of the graphs at ``indices``."""
        return int(self._n_node[indices].sum()), int(self._n_edge[indices].sum()), len(indices)

    def bucket(self, n_node: int, n_edge: int, n_graph: int) -> Bucket:
        """The plan's bucket for these real totals (extending the plan if none fits)."""
        bucket = self.plan.select(n_node, n_edge, n_graph)
        if bucket is None:
            self.plan = extend_plan(self.plan, n_node, n_edge, n_graph)
            bucket = self.plan.select(n_node, n_edge, n_graph)
        return bucket

    def make_batch(self, indices: np.ndarray, *, bucket: Bucket | None = None) -> jraph.GraphsTuple:
        """Batches and pads the graphs at ``indices`` to ``bucket`` (default: the plan's choice)."""
        bucket = bucket if bucket is not None else self.bucket(*self.sizes(indices))
        batch = batch_graphs([self.graphs[i] for i in indices])
        return pad_graph(batch, n_node=bucket.n_node, n_edge=bucket.n_edge, n_graph=bucket.n_graph)

    def iterate(self, epoch: int, *, start_step: int = 0) -> Iterator[jraph.GraphsTuple]:
        """Yields the padded batches of ``epoch`` from ``start_step`` on (deterministic)."""
        for indices in self.batch_indices(epoch)[start_step:]:
            yield self.make_batch(indices)

    def __iter__(self) -> Iterator[jraph.GraphsTuple]:
        """Epoch 0; use `iterate` for later epochs or to resume."""
        return self.iterate(0)
