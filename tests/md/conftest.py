"""Fixtures for the MD tests: an analytic pair "model" obeying the model interface, structures.

``PairModel`` is a Morse potential times the polynomial cutoff envelope, written as a Flax module
with the model interface (``apply(params, vectors, species, senders, receivers, edge_mask) ->
per-atom energies``), so the calculator and the integrators are tested through the real
potential (:func:`mpnn_jax.potential.make_predictor`) against a smooth, known energy.
"""

from __future__ import annotations

import ase
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpnn_jax.data.species import SpeciesTable
from mpnn_jax.nn.radial import polynomial_envelope
from mpnn_jax.precision import Policy, get_policy

CUTOFF = 4.0
TABLE = SpeciesTable((1, 6, 8))


class PairModel(nn.Module):
    """Morse pairs: E_i = 1/2 sum_j D ((1 - exp(-a (r - r0)))^2 - 1) u(r) + E0[species_i]."""

    policy: Policy
    cutoff: float = CUTOFF
    backend: str = "e3nn"  # recorded by run_md; the pair model has no convolution

    @nn.compact
    def __call__(self, vectors, species, senders, receivers, edge_mask):
        depth = self.param("depth", lambda k: jnp.asarray(0.3, jnp.float32))
        width = self.param("width", lambda k: jnp.asarray(1.4, jnp.float32))
        r0 = self.param("r0", lambda k: jnp.asarray([1.0, 1.3, 1.2], jnp.float32))
        e0 = self.param("e0", lambda k: jnp.asarray([-1.0, -3.0, -5.0], jnp.float32))
        dtype = self.policy.dtype("geometry")
        depth, width, r0, e0 = self.policy.cast_to(dtype, (depth, width, r0, e0))
        v = self.policy.cast("geometry", vectors)  # [n_edges, 3]
        r2 = jnp.sum(v * v, axis=-1)
        ok = edge_mask & (r2 > 0)
        r = jnp.sqrt(jnp.where(ok, r2, jnp.ones_like(r2)))  # [n_edges]
        rr = 0.5 * (r0[species[senders]] + r0[species[receivers]])
        pair = depth * ((1.0 - jnp.exp(-width * (r - rr))) ** 2 - 1.0)
        pair = pair * polynomial_envelope(r, cutoff=self.cutoff)
        pair = jnp.where(ok, pair, jnp.zeros_like(pair))
        n = species.shape[0]
        return 0.5 * jax.ops.segment_sum(pair, receivers, num_segments=n) + e0[species]


def _pair_model(policy="fp64"):
    model = PairModel(policy=get_policy(policy))
    v = jnp.ones((2, 3), jnp.float32)
    s = jnp.zeros((2,), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), v, s, s, s, jnp.ones(2, bool))
    return model, params


@pytest.fixture
def make_pair_model():
    """``make_pair_model(policy="fp64") -> (model, params)``."""
    return _pair_model


@pytest.fixture
def x64():
    """float64 for one test only (``jax.enable_x64`` context)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def molecule() -> ase.Atoms:
    """A 7-atom H/C/O cluster near the Morse minima."""
    rng = np.random.default_rng(0)
    base = np.array(
        [
            [0.0, 0.0, 0.0],
            [1.3, 0.0, 0.0],
            [0.0, 1.3, 0.0],
            [0.0, 0.0, 1.3],
            [1.3, 1.3, 0.0],
            [1.3, 0.0, 1.3],
            [0.0, 1.3, 1.3],
        ]
    )
    return ase.Atoms("CHHOHCH", positions=base + 0.05 * rng.normal(size=base.shape))


@pytest.fixture
def crystal() -> ase.Atoms:
    """A periodic, sheared cell of 8 atoms, displaced from a lattice."""
    rng = np.random.default_rng(1)
    frac = np.array([[i, j, k] for i in (0, 0.5) for j in (0, 0.5) for k in (0, 0.5)])
    cell = np.array([[2.8, 0.0, 0.0], [0.3, 2.7, 0.0], [0.2, -0.1, 2.9]])
    pos = frac @ cell + 0.05 * rng.normal(size=(8, 3))
    return ase.Atoms("C4H2O2", positions=pos, cell=cell, pbc=True)
