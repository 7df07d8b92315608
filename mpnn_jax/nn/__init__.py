"""Neural-network building blocks: pure functions with thin Flax (linen) shells.

Each block marks its precision stage with :meth:`mpnn_jax.precision.Policy.scope` and takes its
dtypes from the policy; parameters are FP32.
"""

from mpnn_jax.nn.backends import available_backends, get_backend, register_backend
from mpnn_jax.nn.convolution import (
    Convolution,
    conv_irreps,
    e3nn_convolution,
    num_path_weights,
    tp_paths,
)
from mpnn_jax.nn.edges import edge_basis, edge_lengths, sh_irreps
from mpnn_jax.nn.embedding import SpeciesEmbedding, embed_species
from mpnn_jax.nn.gate import gate, gate_irreps
from mpnn_jax.nn.linear import Linear, equivariant_linear, linear_paths
from mpnn_jax.nn.pairs import EdgePairs, edge_pairs, per_edge
from mpnn_jax.nn.radial import RadialMLP, bessel_basis, polynomial_envelope, radial_mlp
from mpnn_jax.nn.readout import LinearReadout, MLPReadout
from mpnn_jax.nn.scale_shift import ScaleShift, scale_shift

__all__ = [
    "Convolution",
    "EdgePairs",
    "Linear",
    "LinearReadout",
    "MLPReadout",
    "RadialMLP",
    "ScaleShift",
    "SpeciesEmbedding",
    "available_backends",
    "bessel_basis",
    "conv_irreps",
    "e3nn_convolution",
    "edge_basis",
    "edge_lengths",
    "edge_pairs",
    "embed_species",
    "equivariant_linear",
    "gate",
    "gate_irreps",
    "get_backend",
    "linear_paths",
    "num_path_weights",
    "per_edge",
    "polynomial_envelope",
    "radial_mlp",
    "register_backend",
    "scale_shift",
    "sh_irreps",
    "tp_paths",
]
