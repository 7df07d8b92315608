"""NequIP (Batzner et al., Nat. Commun. 13, 2453, 2022): a Flax module giving per-atom energies.

Architecture (``model.apply(params, vectors, species, senders, receivers, edge_mask)``):

1. ``geometry``: edge lengths (NaN-safe on padded edges).
2. ``basis``: spherical harmonics up to ``max_ell`` ("component" normalisation) and ``n_basis``
   Bessel functions times the polynomial envelope (p = 6).
3. ``embedding``: species -> ``n_scalars x 0e`` (a linear map of the one-hot species).
4. ``n_layers`` interaction blocks, each: self-interaction linear -> convolution (channel-wise
   tensor product of sender features with the spherical harmonics, one weight per path and
   channel from a radial MLP on the radial basis; ``messages`` stage; summed over neighbours in
   the ``aggregation`` dtype and divided by ``avg_num_neighbors``) -> linear -> gate
   (``update`` stage) -> residual when input and output irreps match.
5. ``readout``: equivariant linear map to ``1x0e``.
6. ``energy``: ``scale * x + shift + E0[species]`` in the energy dtype.

Differences from the paper / the reference PyTorch code:

* The residual is a plain sum ``h + f(h)`` when the irreps match (the PyTorch code's default is a
  species-dependent self-connection tensor product); the first block has no residual.
* The neighbour sum is divided by ``avg_num_neighbors`` (the contracts of this library; the
  PyTorch code and nequip-jax divide by its square root).
* The readout is a single linear map to ``0e`` (the paper uses two: to ``hidden/2 x 0e``, then
  to ``0e``).
* The radial MLP has no biases and uses SiLU, and linear layers use e3nn's "path"
  normalisation (weights ``N(0, 1)`` divided by ``sqrt(fan_in)`` in the forward pass).
* The scale, shift and E0 are fixed constants (from the dataset statistics), not trained.

All parameters are FP32; dtypes of every stage come from ``policy``. Jittable.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from mpnn_jax.precision import get_policy
    >>> model = NequIP(policy=get_policy("fp32"), n_species=2, cutoff=3.0, n_layers=1,
    ...                hidden_irreps="4x0e+2x1o", radial_features=(8,))
    >>> v = jnp.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    >>> s, r, m = jnp.array([0, 1]), jnp.array([1, 0]), jnp.array([True, True])
    >>> params = model.init(jax.random.PRNGKey(0), v, jnp.array([0, 1]), s, r, m)
    >>> model.apply(params, v, jnp.array([0, 1]), s, r, m).shape
    (2,)
"""

from __future__ import annotations

import e3nn_jax as e3nn
import flax.linen as nn
import jax

from mpnn_jax.nn.convolution import Convolution
from mpnn_jax.nn.edges import edge_basis, edge_lengths
from mpnn_jax.nn.embedding import SpeciesEmbedding
from mpnn_jax.nn.gate import gate, gate_irreps
from mpnn_jax.nn.linear import Linear
from mpnn_jax.nn.pairs import EdgePairs, edge_pairs
from mpnn_jax.nn.readout import LinearReadout
from mpnn_jax.nn.scale_shift import ScaleShift
from mpnn_jax.precision import Policy


def hidden_irreps_from(channels: int, max_ell: int, *, parity: bool = True) -> e3nn.Irreps:
    """``channels x`` every irrep up to ``max_ell``.

    With ``parity`` the irreps of the spherical harmonics (``0e+1o+2e+...``), else both parities
    of each degree. E.g. ``hidden_irreps_from(32, 2) == 32x0e+32x1o+32x2e``.
    """
    if parity:
        irs = [(channels, (ell, (-1) ** ell)) for ell in range(max_ell + 1)]
    else:
        irs = [(channels, (ell, p)) for ell in range(max_ell + 1) for p in (1, -1)]
    return e3nn.Irreps(irs)


class NequIPLayer(nn.Module):
    """One interaction block: ``[n_nodes, irreps_in] -> [n_nodes, hidden_irreps]`` (update)."""

    hidden_irreps: str | e3nn.Irreps
    avg_num_neighbors: float
    radial_features: tuple[int, ...]
    policy: Policy
    backend: str = "e3nn"

    @nn.compact
    def __call__(
        self,
        node_feats: e3nn.IrrepsArray,
        sh: e3nn.IrrepsArray,
        radial: jax.Array,
        senders: jax.Array,
        receivers: jax.Array,
        edge_mask: jax.Array,
        pairs: EdgePairs | None = None,
    ) -> e3nn.IrrepsArray:
        hidden = e3nn.Irreps(self.hidden_irreps)
        residual = node_feats
        with Policy.scope("update"):
            h = Linear(node_feats.irreps, self.policy, "update")(node_feats)  # self-interaction
        h = Convolution(
            gate_irreps(hidden),
            self.avg_num_neighbors,
            self.radial_features,
            self.policy,
            self.backend,
        )(h, sh, radial, senders, receivers, edge_mask, pairs)  # [n_nodes, conv_irreps]
        with Policy.scope("update"):
            h = Linear(gate_irreps(hidden), self.policy, "update")(h)
            h = gate(h, policy=self.policy)  # [n_nodes, hidden]
            if residual.irreps == h.irreps:
                h = h + self.policy.cast("update", residual)
        return h


class NequIP(nn.Module):
    """NequIP returning per-atom energies [n_nodes] in eV (see the module docstring).

    Attributes:
        policy: precision policy.
        n_species: number of species.
        cutoff: cutoff radius (Å).
        avg_num_neighbors: normalisation of the neighbour sum.
        atomic_energies: E0 per species (eV), or ``None``.
        scale: energy scale (eV).
        shift: per-atom energy shift (eV).
        n_layers: number of interaction blocks.
        hidden_irreps: irreps of the hidden features; if ``None`` built from ``channels`` and
            ``max_ell`` with :func:`hidden_irreps_from`.
        channels: multiplicity per irrep when ``hidden_irreps`` is ``None``.
        max_ell: highest degree of the spherical harmonics (and of the hidden irreps).
        n_basis: number of Bessel functions.
        radial_features: hidden widths of the radial MLP.
        envelope_p: exponent of the polynomial envelope.
        backend: name in :mod:`mpnn_jax.nn.backends` (``"auto"``: the fastest of the platform,
            :func:`mpnn_jax.nn.backends.resolve`).
    """

    policy: Policy
    n_species: int
    cutoff: float
    avg_num_neighbors: float = 1.0
    atomic_energies: tuple[float, ...] | None = None
    scale: float = 1.0
    shift: float = 0.0
    n_layers: int = 3
    hidden_irreps: str | None = None
    channels: int = 32
    max_ell: int = 2
    n_basis: int = 8
    radial_features: tuple[int, ...] = (64, 64)
    envelope_p: int = 6
    backend: str = "e3nn"

    @nn.compact
    def __call__(
        self,
        vectors: jax.Array,
        species: jax.Array,
        senders: jax.Array,
        receivers: jax.Array,
        edge_mask: jax.Array,
        reverse: jax.Array | None = None,
    ) -> jax.Array:
        """Per-atom energies.

        Args:
            vectors: [n_edges, 3] edge vectors ``r_receiver - r_sender`` (Å).
            species: int32 [n_nodes].
            senders: int32 [n_edges].
            receivers: int32 [n_edges].
            edge_mask: bool [n_edges], False on padded edges.
            reverse: optional int32 [n_edges], each edge's reverse (``graph.edges["reverse"]``):
                the radial MLPs then run once per pair of edges (:mod:`mpnn_jax.nn.pairs`).

        Returns:
            [n_nodes] per-atom energies (eV) in the energy dtype (padding nodes are not masked).
        """
        policy = self.policy
        hidden = (
            e3nn.Irreps(self.hidden_irreps)
            if self.hidden_irreps is not None
            else hidden_irreps_from(self.channels, self.max_ell)
        )
        pairs = None if reverse is None else edge_pairs(reverse)
        lengths = edge_lengths(vectors, edge_mask, policy=policy)  # [n_edges]
        sh, radial = edge_basis(
            vectors,
            lengths,
            edge_mask,
            max_ell=self.max_ell,
            n_basis=self.n_basis,
            cutoff=self.cutoff,
            policy=policy,
            envelope_p=self.envelope_p,
            pairs=pairs,
        )  # [n_edges, sh_irreps], [n_edges or n_pairs, n_basis]
        n_scalars = hidden.filter(keep=["0e"]).num_irreps or hidden.num_irreps
        h = SpeciesEmbedding(self.n_species, f"{n_scalars}x0e", policy)(species)
        for _ in range(self.n_layers):
            h = NequIPLayer(
                hidden, self.avg_num_neighbors, self.radial_features, policy, self.backend
            )(h, sh, radial, senders, receivers, edge_mask, pairs)  # [n_nodes, hidden]
        x = LinearReadout(policy)(h)  # [n_nodes]
        return ScaleShift(self.scale, self.shift, self.atomic_energies, policy)(x, species)
