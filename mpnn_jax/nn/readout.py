"""Per-atom readout heads (``readout`` stage): features -> one scalar per node.

* :class:`LinearReadout`: an equivariant linear map to ``1x0e`` (NequIP, MACE's inner layers).
* :class:`MLPReadout`: linear -> gate -> linear to ``1x0e`` (MACE's last layer).

The output is in the readout dtype; :mod:`mpnn_jax.nn.scale_shift` then moves it to the energy
dtype. Jittable.
"""

from __future__ import annotations

import e3nn_jax as e3nn
import flax.linen as nn
import jax

from mpnn_jax.nn.gate import apply_gate, gate_irreps
from mpnn_jax.nn.linear import Linear
from mpnn_jax.precision import Policy


class LinearReadout(nn.Module):
    """``[n_nodes, irreps] -> [n_nodes]`` by an equivariant linear map to ``1x0e``.

    Example:
        >>> from mpnn_jax.precision import get_policy
        >>> ro = LinearReadout(get_policy("fp32"))
        >>> x = e3nn.normal("4x0e+1x1o", jax.random.PRNGKey(0), (3,))
        >>> ro.apply(ro.init(jax.random.PRNGKey(1), x), x).shape
        (3,)
    """

    policy: Policy

    @nn.compact
    def __call__(self, x: e3nn.IrrepsArray) -> jax.Array:
        with Policy.scope("readout"):
            y = Linear("1x0e", self.policy, "readout")(x)  # [n_nodes, 1x0e]
            return y.array[:, 0]  # [n_nodes]


class MLPReadout(nn.Module):
    """``[n_nodes, irreps] -> [n_nodes]``: linear to ``hidden_irreps`` (+ gates), gate, linear.

    Attributes:
        hidden_irreps: e.g. ``"16x0e"``.
        policy: precision policy.
    """

    hidden_irreps: str | e3nn.Irreps
    policy: Policy

    @nn.compact
    def __call__(self, x: e3nn.IrrepsArray) -> jax.Array:
        with Policy.scope("readout"):
            h = Linear(gate_irreps(self.hidden_irreps), self.policy, "readout")(x)
            h = self.policy.cast("readout", _gate_readout(h))
            y = Linear("1x0e", self.policy, "readout")(h)  # [n_nodes, 1x0e]
            return y.array[:, 0]  # [n_nodes]


def _gate_readout(h: e3nn.IrrepsArray) -> e3nn.IrrepsArray:
    """The gate of :mod:`mpnn_jax.nn.gate`, kept in the readout dtype and scope."""
    return apply_gate(h)
