"""MACE's symmetric contraction: species-dependent products of node features up to order 3.

For each node ``i`` of species ``z``, each channel ``c`` and each kept output irrep ``L`` the
contraction builds the higher-order features of MACE (Batatia et al. 2022, eq. 10)

    B[i, c, L] = sum_{nu=1}^{correlation} sum_k W_nu[z, k, c]
                 sum_{j1..jnu} U_nu[j1, ..., jnu, k, L] x[i, c, j1] ... x[i, c, jnu]

where ``x[i, c, :]`` are the equivariant features of one channel (one copy of ``irreps_in``,
e.g. ``0e+1o+2e+3o``) and ``U_nu`` is the basis of the symmetric ``nu``-fold tensor power of
``irreps_in`` reduced to irrep ``L`` (:func:`e3nn_jax.reduced_symmetric_tensor_product_basis`;
``k`` runs over its multiplicity). Channels do not mix; each has its own weights per species.

The basis is computed once at trace time in float64 NumPy (cached by e3nn) and enters the
program as a constant. The sum is evaluated from the highest order down (Horner's scheme),

    ((T_3 x + T_2) x + T_1) x,

and each order's weights are contracted together with one copy of ``x`` (``Z = x (x) W``, a
``[n, c, d, k]`` outer product) before meeting ``U_nu``, so the largest intermediate is
``[n_nodes, channels, d**(correlation - 1), dim L]`` rather than ``d**correlation``.

Precision: the whole contraction is the MACE *product block*, part of the node update, so it runs
in the dtype of stage ``"update"``: inputs, weights (float32 parameters) and the basis are cast to
it and every contraction accumulates in ``policy.accum("update")`` (:meth:`Policy.einsum`).

Weights follow MACE's initialisation (``N(0, 1) / multiplicity`` per path, as in the PyTorch
reference), stored unscaled so that the Adam hyper-parameters of MACE carry over.

Everything here is pure and jittable; :class:`SymmetricContraction` only creates parameters.

Example:
    >>> import jax, jax.numpy as jnp, e3nn_jax as e3nn
    >>> from mpnn_jax.precision import get_policy
    >>> x = e3nn.normal("0e+1o+2e", jax.random.PRNGKey(0), (5, 4))  # [n_nodes, channels, 9]
    >>> species = jnp.array([0, 1, 0, 1, 1])
    >>> layer = SymmetricContraction(
    ...     keep_irrep_out="0e+1o", correlation=3, n_species=2, policy=get_policy("fp32"))
    >>> params = layer.init(jax.random.PRNGKey(1), x, species)
    >>> layer.apply(params, x, species).shape
    (5, 4, 4)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mpnn_jax.nn.ops import take_rows
from mpnn_jax.precision import Policy

STAGE = "update"
MAX_CORRELATION = 3


def irreps_out_of(keep_irrep_out: str | e3nn.Irreps) -> e3nn.Irreps:
    """The output irreps per channel: each distinct irrep of ``keep_irrep_out`` once, in order.

    ``"128x0e+128x1o"`` and ``"0e+1o"`` both give ``1x0e+1x1o``.
    """
    seen: list[e3nn.Irrep] = []
    for _, ir in e3nn.Irreps(keep_irrep_out):
        if ir not in seen:
            seen.append(ir)
    return e3nn.Irreps([(1, ir) for ir in seen])


@functools.lru_cache(maxsize=64)
def contraction_basis(
    irreps_in: e3nn.Irreps, correlation: int, keep_irrep_out: e3nn.Irreps
) -> dict[tuple[int, e3nn.Irrep], np.ndarray]:
    """The reduced symmetric bases, ``{(nu, L): U}`` with ``U`` of shape ``[d]*nu + [k, dim L]``.

    Args:
        irreps_in: irreps of one channel (``d = irreps_in.dim``).
        correlation: the highest order ``nu`` (1 to 3).
        keep_irrep_out: output irreps (multiplicities ignored).

    Returns:
        A dict of float64 NumPy arrays; an ``(nu, L)`` with no symmetric path is absent.
    """
    if not 1 <= correlation <= MAX_CORRELATION:
        raise ValueError(f"correlation must be in 1..{MAX_CORRELATION}, got {correlation}")
    irreps_out = irreps_out_of(keep_irrep_out)
    out: dict[tuple[int, e3nn.Irrep], np.ndarray] = {}
    for nu in range(1, correlation + 1):
        try:
            basis = e3nn.reduced_symmetric_tensor_product_basis(
                irreps_in, nu, keep_ir=[ir for _, ir in irreps_out]
            )
        except ValueError as err:  # e3nn cannot concatenate zero paths: nothing at this order
            if "empty" not in str(err):
                raise
            continue
        for (mul, ir), chunk in zip(basis.irreps, basis.chunks):
            if mul > 0 and chunk is not None:
                out[(nu, ir)] = np.asarray(chunk, dtype=np.float64)  # [d]*nu + [k, dim L]
    return out


def weight_name(nu: int, ir: e3nn.Irrep) -> str:
    """Parameter name of the order-``nu`` weights of output irrep ``ir``, e.g. ``"w3_1o"``."""
    return f"w{nu}_{ir}"


def weight_shapes(
    irreps_in: str | e3nn.Irreps,
    *,
    correlation: int,
    keep_irrep_out: str | e3nn.Irreps,
    n_channels: int,
    n_species: int,
) -> dict[str, tuple[int, int, int]]:
    """``{name: (n_species, multiplicity, n_channels)}`` of the weights the contraction needs."""
    basis = contraction_basis(
        e3nn.Irreps(irreps_in), correlation, irreps_out_of(keep_irrep_out).simplify()
    )
    return {
        weight_name(nu, ir): (n_species, u.shape[-2], n_channels) for (nu, ir), u in basis.items()
    }


def symmetric_contraction(
    x: e3nn.IrrepsArray,
    species: jax.Array,
    weights: Mapping[str, jax.Array],
    *,
    correlation: int,
    keep_irrep_out: str | e3nn.Irreps,
    policy: Policy,
    order3: Callable[..., jax.Array] | None = None,
) -> e3nn.IrrepsArray:
    """Species-dependent symmetric contraction of ``x`` with itself up to ``correlation``.

    Args:
        x: ``[n_nodes, n_channels, irreps_in]`` node features, one copy of ``irreps_in`` per
            channel (``IrrepsArray.mul_to_axis`` of MACE's ``channels x (0e+1o+...)``).
        species: int ``[n_nodes]`` species indices.
        weights: ``{weight_name(nu, L): [n_species, k, n_channels]}`` as in :func:`weight_shapes`.
        correlation: highest order of the product (1, 2 or 3).
        keep_irrep_out: the output irreps ``L`` (multiplicities ignored); an irrep that no
            symmetric product reaches comes out as zeros.
        policy: precision policy; the contraction runs in stage ``"update"``.
        order3: another evaluation of the order-3 term (``correlation == 3``), called as
            ``order3(xs [n, c, d], w3 [n_species, k, c], species, ir, irreps_in=, policy=,
            stage=) -> [n, c, dim ir]`` in the stage dtype (the pallas backend's sparse forms,
            :func:`mpnn_jax.nn.pallas_symmetric.order3_term`), or ``None`` where it declines that
            irrep; ``None``: the dense GEMM here.

    Returns:
        ``[n_nodes, n_channels, irreps_out]`` in the update dtype, ``irreps_out`` being the
        distinct irreps of ``keep_irrep_out`` with multiplicity 1.
    """
    irreps_out = irreps_out_of(keep_irrep_out)
    with Policy.scope(STAGE):
        if x.ndim != 3:
            raise ValueError(f"x must be [n_nodes, n_channels, irreps], got shape {x.shape}")
        dtype = policy.dtype(STAGE)
        basis = contraction_basis(x.irreps, correlation, irreps_out.simplify())
        xs = policy.cast(STAGE, x.array)  # [n, c, d]
        chunks = []
        for _, ir in irreps_out:
            acc = None  # [n, c, d**(nu-1), dim L] after order nu
            top, extra = correlation, None
            if order3 is not None and correlation == 3 and (3, ir) in basis:
                w3 = weights[weight_name(3, ir)]
                extra = order3(xs, w3, species, ir, irreps_in=x.irreps, policy=policy, stage=STAGE)
                top = 3 if extra is None else 2  # [n, c, dim L], added after the dense orders
            for nu in range(top, 0, -1):
                if acc is not None:
                    # one more power of x: contract the last basis index of the accumulator
                    acc = policy.einsum(STAGE, "nc...jm,ncj->nc...m", acc, xs)
                if (nu, ir) not in basis:
                    continue
                u = jnp.asarray(policy.cast_to(dtype, basis[(nu, ir)]))  # [d]*nu + [k, dim L]
                # a one-hot selection: its gradient is an FP32 sum over nodes, not 16-bit atomics
                w = take_rows(policy, STAGE, weights[weight_name(nu, ir)], species)  # [n, k, c]
                z = xs[:, :, :, None] * jnp.swapaxes(w, 1, 2)[:, :, None, :]  # [n, c, d, k]
                term = policy.einsum(STAGE, "...jkm,ncjk->nc...m", u, z)  # [n, c, d**(nu-1), m]
                acc = term if acc is None else acc + term
            if extra is not None:
                acc = extra if acc is None else acc + extra
            chunks.append(None if acc is None else acc[:, :, None, :])  # [n, c, 1, dim L]
        return e3nn.from_chunks(irreps_out, chunks, x.shape[:-1], dtype)


class SymmetricContraction(nn.Module):
    """Flax shell of :func:`symmetric_contraction`: creates the species-dependent weights.

    Attributes:
        keep_irrep_out: output irreps (multiplicities ignored), e.g. ``"0e+1o"``.
        correlation: highest product order (1 to 3).
        n_species: number of species (rows of each weight).
        policy: precision policy (stage ``"update"``).
        backend: name in :mod:`mpnn_jax.nn.backends` whose ``symmetric_contraction`` is called
            (``"e3nn"``: :func:`symmetric_contraction`).

    Call:
        ``(x [n_nodes, n_channels, irreps_in], species int [n_nodes])``
        -> ``[n_nodes, n_channels, irreps_out]``.
    """

    keep_irrep_out: str | e3nn.Irreps
    correlation: int
    n_species: int
    policy: Policy
    backend: str = "e3nn"

    @nn.compact
    def __call__(self, x: e3nn.IrrepsArray, species: jax.Array) -> e3nn.IrrepsArray:
        from mpnn_jax.nn.backends import get_backend  # the backends import this module

        shapes = weight_shapes(
            x.irreps,
            correlation=self.correlation,
            keep_irrep_out=self.keep_irrep_out,
            n_channels=x.shape[-2],
            n_species=self.n_species,
        )
        weights = {
            name: self.param(name, _mace_init, shape, jnp.float32)  # float32 whatever the policy
            for name, shape in shapes.items()
        }
        return get_backend(self.backend).symmetric_contraction(
            x,
            species,
            weights,
            correlation=self.correlation,
            keep_irrep_out=self.keep_irrep_out,
            policy=self.policy,
        )


def _mace_init(key: jax.Array, shape: tuple[int, int, int], dtype) -> jax.Array:
    """MACE's initialisation: ``N(0, 1) / multiplicity`` (``shape = [n_species, k, channels]``)."""
    return jax.random.normal(key, shape, dtype) / shape[1]
