"""Data pipeline: extended-XYZ reading, species, neighbour lists, graphs, padding, statistics.

Everything here is host-side numpy except the masks (`node_mask`, `edge_mask`, `graph_mask`,
`graph_index`), which are jittable.
"""

from mpnn_jax.data.buckets import Bucket, BucketPlan, bucket_for, plan_buckets, round_up
from mpnn_jax.data.bundled import bundled_path, shared_data_dir
from mpnn_jax.data.graphs import (
    atoms_to_graph,
    batch_graphs,
    edge_mask,
    graph_index,
    graph_mask,
    node_mask,
    pad_graph,
    unbatch,
)
from mpnn_jax.data.info import format_summary, summarize
from mpnn_jax.data.loader import GraphLoader
from mpnn_jax.data.neighbours import neighbour_list, reverse_edges
from mpnn_jax.data.species import SpeciesTable
from mpnn_jax.data.statistics import (
    DatasetStatistics,
    dataset_statistics,
    e0s_from_file,
    e0s_least_squares,
    species_counts,
)
from mpnn_jax.data.xyz import Configuration, atoms_to_configuration, read_xyz

__all__ = [
    "Bucket",
    "BucketPlan",
    "Configuration",
    "DatasetStatistics",
    "GraphLoader",
    "SpeciesTable",
    "atoms_to_configuration",
    "atoms_to_graph",
    "batch_graphs",
    "bucket_for",
    "bundled_path",
    "shared_data_dir",
    "dataset_statistics",
    "e0s_from_file",
    "e0s_least_squares",
    "edge_mask",
    "format_summary",
    "graph_index",
    "graph_mask",
    "neighbour_list",
    "node_mask",
    "pad_graph",
    "plan_buckets",
    "read_xyz",
    "reverse_edges",
    "round_up",
    "species_counts",
    "summarize",
    "unbatch",
]
