"""MACE (Batatia et al., NeurIPS 2022): higher-order equivariant message passing, as a Flax module.

Contract: ``MACE(...).apply(params, vectors, species, senders, receivers, edge_mask)`` returns
per-atom energies ``[n_nodes]`` in eV (energy-stage dtype), including ``scale``, ``shift`` and the
per-species ``E0``. ``vectors`` ``[n_edges, 3]`` Å are ``r_receiver - r_sender (+ shift . cell)``;
``edge_mask`` is False on padded edges, which may be zero vectors: the model is NaN-free there in
value and gradient and padded edges send exactly zero. Parameters are float32 whatever the
policy, so ``model.clone(policy=...)`` evaluates the same parameters at another precision. The
whole ``apply`` is jittable (the policy and all sizes are static module attributes).

Architecture (one line per block, stage in brackets):

1. species embedding ``h0 = W[z]``, ``num_channels x 0e``                                [embedding]
2. edge lengths, spherical harmonics ``Y(r_ij)`` up to ``max_ell`` ("component"), Bessel(n_basis)
   x polynomial envelope (``p = envelope_p``)                                 [geometry, basis]
3. for each of ``num_interactions`` layers ``t``:
   * skip ``sc = W_{z_i} h`` (species-dependent linear; layers ``t > 0`` only)           [update]
   * interaction: ``linear_up``; convolution ``sum_j R(r_ij) (h_j x Y(r_ij))`` (one radial-MLP
     weight per path and channel, MLP ``radial_features``, SiLU, no biases), summed at receivers
     and divided by ``avg_num_neighbors``; linear to ``num_channels x (0e+1o+...+max_ell)``; in
     layer 0 a species-dependent linear instead of the residual (MACE's "first" block; the two
     linears as one composed map on backends with ``indexed_matmul``, the same function)
     [update, messages, aggregation, update]
   * product: :func:`~mpnn_jax.nn.symmetric_contraction.symmetric_contraction` of correlation
     order ``correlation`` with species-dependent weights, channel-wise, to ``hidden_irreps``
     (only ``0e`` in the last layer); linear; ``h <- that + sc``                          [update]
   * readout ``E_i^t``: linear to ``0e`` (``t < T-1``), MLP ``readout_mlp_irreps`` with SiLU
     (last layer)                                                                        [readout]
4. ``E_i = scale * sum_t E_i^t + shift + E0[z_i]``                                        [energy]

Differences from the paper / the PyTorch reference (``mace`` 0.3, ``ScaleShiftMACE``), none of
which changes a hyper-parameter's meaning:

* initialisation: linear layers and the radial MLP use ``N(0, 1)`` weights with
  ``1/sqrt(fan_in)`` in the forward pass (e3nn's path normalisation, as ``o3.Linear``); the
  symmetric contraction uses e3nn-jax's orthonormal reduced basis with ``N(0, 1)/multiplicity``
  weights (MACE's init) where the reference builds its own ``U`` matrices, so the two differ by a
  fixed constant per path;
* the species embedding is a table lookup (= MACE's linear on one-hot species, up to the
  ``1/sqrt(n_species)`` normalisation constant);
* ``scale``, ``shift`` and ``E0`` are constants, not parameters (as in the reference);
  ``E0`` and the sum over layers are added in the energy dtype, not the compute dtype;
* not implemented: the ZBL pair repulsion, learnable Bessel frequencies, the "agnostic
  non-linear" interaction variants, per-head readouts and ``MultiLayerPerceptron`` radial options.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from mpnn_jax.precision import get_policy
    >>> model = MACE(n_species=2, policy=get_policy("fp32"), num_channels=4, max_ell=2,
    ...              radial_features=(8,), cutoff=3.0)
    >>> vectors = jnp.array([[1.0, 0.2, 0.0], [-1.0, -0.2, 0.0]])
    >>> species, senders, receivers = jnp.array([0, 1]), jnp.array([0, 1]), jnp.array([1, 0])
    >>> mask = jnp.array([True, True])
    >>> params = model.init(jax.random.PRNGKey(0), vectors, species, senders, receivers, mask)
    >>> model.apply(params, vectors, species, senders, receivers, mask).shape
    (2,)
"""

from __future__ import annotations

import e3nn_jax as e3nn
import flax.linen as nn
import jax

from mpnn_jax.nn.convolution import Convolution
from mpnn_jax.nn.edges import edge_basis, edge_lengths, sh_irreps
from mpnn_jax.nn.embedding import SpeciesEmbedding
from mpnn_jax.nn.linear import Linear, linear_then_indexed
from mpnn_jax.nn.pairs import edge_pairs
from mpnn_jax.nn.readout import LinearReadout, MLPReadout
from mpnn_jax.nn.scale_shift import ScaleShift
from mpnn_jax.nn.symmetric_contraction import SymmetricContraction, irreps_out_of
from mpnn_jax.precision import Policy


def channel_irreps(irreps: str | e3nn.Irreps, num_channels: int) -> e3nn.Irreps:
    """``"0e+1o"`` (or ``"128x0e+128x1o"``) -> ``num_channels x 0e + num_channels x 1o``.

    Raises:
        ValueError: if a multiplicity other than 1 differs from ``num_channels``.
    """
    irreps = e3nn.Irreps(irreps)
    muls = {mul for mul, _ in irreps}
    if muls != {1} and muls != {num_channels}:
        raise ValueError(
            f"MACE needs every hidden irrep with multiplicity 1 or num_channels={num_channels}, "
            f"got {irreps}"
        )
    return e3nn.Irreps([(num_channels, ir) for ir in irreps_out_of(irreps).regroup()])


class Product(nn.Module):
    """MACE's product block: species-dependent symmetric contraction, then a linear (update).

    Call: ``(a [n_nodes, C x irreps_A], species [n_nodes]) -> [n_nodes, irreps_out]``.
    """

    irreps_out: e3nn.Irreps
    correlation: int
    n_species: int
    num_channels: int
    policy: Policy
    backend: str = "e3nn"

    @nn.compact
    def __call__(self, a: e3nn.IrrepsArray, species: jax.Array) -> e3nn.IrrepsArray:
        with Policy.scope("update"):
            a = a.regroup().mul_to_axis(self.num_channels)  # [n_nodes, C, irreps_A]
            b = SymmetricContraction(
                irreps_out_of(self.irreps_out),
                self.correlation,
                self.n_species,
                self.policy,
                backend=self.backend,
            )(a, species)  # [n_nodes, C, irreps_out per channel]
            b = b.axis_to_mul()  # [n_nodes, C x keep]
        return Linear(self.irreps_out, self.policy, "update")(b)  # [n_nodes, irreps_out]


class MACE(nn.Module):
    """The MACE potential: per-atom energies from edge vectors and species.

    Attributes:
        n_species: number of species (rows of every species-dependent weight).
        policy: precision policy (frozen; a static attribute).
        cutoff: radial cutoff in Å.
        avg_num_neighbors: normalisation of the neighbour sum.
        atomic_energies: ``E0`` per species in eV (``None``: zeros).
        scale: energy scale in eV (e.g. the RMS of the forces).
        shift: per-atom energy shift in eV.
        num_channels: channels per irrep (MACE's ``num_channels``, e.g. 128).
        hidden_irreps: irreps per channel of the node features, e.g. ``"0e"``, ``"0e+1o"``,
            ``"0e+1o+2e"`` (or with multiplicities equal to ``num_channels``).
        max_ell: highest degree of the spherical harmonics (and of the ``A`` features).
        correlation: body order minus one of the product (1, 2 or 3).
        num_interactions: number of message-passing layers.
        n_basis: number of Bessel functions.
        envelope_p: exponent of the polynomial envelope (MACE: 5).
        radial_features: hidden widths of the radial MLP (MACE: ``(64, 64, 64)``).
        readout_mlp_irreps: hidden irreps of the last readout (MACE: ``"16x0e"``).
        backend: backend of the convolution and symmetric contraction (``"e3nn"``; ``"auto"``
            for the fastest of the platform, :func:`mpnn_jax.nn.backends.resolve`).
    """

    n_species: int
    policy: Policy
    cutoff: float = 5.0
    avg_num_neighbors: float = 1.0
    atomic_energies: tuple[float, ...] | None = None
    scale: float = 1.0
    shift: float = 0.0
    num_channels: int = 128
    hidden_irreps: str = "0e+1o"
    max_ell: int = 3
    correlation: int = 3
    num_interactions: int = 2
    n_basis: int = 8
    envelope_p: int = 5
    radial_features: tuple[int, ...] = (64, 64, 64)
    readout_mlp_irreps: str = "16x0e"
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
            vectors: [n_edges, 3] edge vectors in Å (geometry dtype).
            species: int [n_nodes] species indices.
            senders: int [n_edges].
            receivers: int [n_edges].
            edge_mask: bool [n_edges], False on padded edges.
            reverse: optional int32 [n_edges], each edge's reverse (``graph.edges["reverse"]``):
                the radial MLPs then run once per pair of edges (:mod:`mpnn_jax.nn.pairs`).

        Returns:
            [n_nodes] per-atom energies in eV, in the energy dtype.
        """
        policy, c = self.policy, self.num_channels
        hidden = channel_irreps(self.hidden_irreps, c)
        scalars = e3nn.Irreps(f"{c}x0e")
        irreps_a = channel_irreps(sh_irreps(self.max_ell), c)  # A features: C x (0e+1o+2e+...)

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
        h = SpeciesEmbedding(self.n_species, scalars, policy)(species)  # [n_nodes, C x 0e]

        energies = []
        for t in range(self.num_interactions):
            last = t == self.num_interactions - 1
            irreps_out = scalars if last else hidden  # only scalars feed the last readout
            # species-dependent residual (layers after the first)
            sc = None
            if t > 0:
                sc = Linear(irreps_out, policy, "update", self.n_species, backend=self.backend)(
                    h, species
                )  # [n_nodes, irreps_out]
            # interaction block
            h_up = Linear(h.irreps, policy, "update")(h)  # [n_nodes, irreps_h]
            a = Convolution(
                irreps_a, self.avg_num_neighbors, self.radial_features, policy, self.backend
            )(h_up, sh, radial, senders, receivers, edge_mask, pairs)  # [n_nodes, paths]
            linear = Linear(irreps_a, policy, "update")
            if t == 0:  # then a species-dependent linear: as one map where the backend can
                indexed = Linear(irreps_a, policy, "update", self.n_species, backend=self.backend)
                a = linear_then_indexed(linear, indexed, a, species)  # [n_nodes, C x (0e+...)]
            else:
                a = linear(a)  # [n_nodes, C x (0e+1o+...)]
            # product block
            h = Product(irreps_out, self.correlation, self.n_species, c, policy, self.backend)(
                a, species
            )  # [n_nodes, irreps_out]
            if sc is not None:
                with Policy.scope("update"):
                    h = h + sc
            # readout
            if last:
                e_t = MLPReadout(self.readout_mlp_irreps, policy)(h)  # [n_nodes]
            else:
                e_t = LinearReadout(policy)(h)  # [n_nodes]
            energies.append(e_t)

        with Policy.scope("energy"):
            e = policy.cast("energy", energies[0])
            for e_t in energies[1:]:
                e = e + policy.cast("energy", e_t)  # [n_nodes]
        atomic = None if self.atomic_energies is None else tuple(self.atomic_energies)
        return ScaleShift(self.scale, self.shift, atomic, policy)(e, species)  # [n_nodes] eV
