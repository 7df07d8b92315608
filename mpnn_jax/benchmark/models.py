"""The model of a benchmark case: a named size, a precision preset and a backend.

:data:`MODEL_SIZES` names the NequIP and MACE sizes; :func:`make_model` builds one through the
library's model factory (random-init weights suffice for timing), :func:`init_for` its FP32
parameters for a system (shared by every preset and backend: parameters do not depend on either),
and :func:`make_train_state_and_step` the library's own training step. :func:`policy_names` and
:func:`backend_names` check names before anything compiles.

Example:
    >>> policy_names(["fp32", "bf16-mixed"])
    ['fp32', 'bf16-mixed']
    >>> backend_names(["e3nn"])
    ['e3nn']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from mpnn_jax.benchmark.systems import System, avg_neighbours, to_device
from mpnn_jax.precision import get_policy

#: Model sizes. NequIP: channels per irrep and lmax; MACE: channels, hidden irreps, max_ell,
#: correlation, interactions. ``mace-mp-s`` is cuEquivariance's MP-S benchmark size.
MODEL_SIZES: dict[str, dict[str, Any]] = {
    "nequip-S": dict(name="nequip", channels=16, max_ell=1, n_layers=3),
    "nequip-M": dict(name="nequip", channels=32, max_ell=2, n_layers=4),
    "nequip-L": dict(name="nequip", channels=64, max_ell=2, n_layers=5),
    "mace-S": dict(
        name="mace", num_channels=32, hidden_irreps="0e+1o", max_ell=2, correlation=2,
        num_interactions=2,
    ),
    "mace-M": dict(
        name="mace", num_channels=64, hidden_irreps="0e+1o", max_ell=3, correlation=3,
        num_interactions=2,
    ),
    "mace-L": dict(
        name="mace", num_channels=128, hidden_irreps="0e+1o+2e", max_ell=3, correlation=3,
        num_interactions=2,
    ),
    "mace-mp-s": dict(
        name="mace", num_channels=128, hidden_irreps="0e", max_ell=3, correlation=3,
        num_interactions=2,
    ),
}  # fmt: skip


def policy_names(presets: Sequence[str]) -> list[str]:
    """Validates preset names early (a typo fails before any compile)."""
    return [get_policy(p).name for p in presets]


def backend_names(backends: Sequence[str]) -> list[str]:
    """Validates backend names early: each must be registered in :mod:`mpnn_jax.nn.backends`.
    ``"auto"`` is resolved for this process's platform, so that rows record the backend that ran.

    Raises:
        ValueError: naming the unknown or unavailable backend and the available ones.
    """
    from mpnn_jax.nn.backends import available_backends, resolve

    available = available_backends()
    backends = [resolve(name) for name in backends]
    for name in backends:
        if name not in available:
            raise ValueError(
                f"unknown or unavailable backend {name!r}; available backends: "
                f"{', '.join(available)}"
            )
    return list(backends)


def make_model(
    size: str,
    *,
    policy: str,
    n_species: int,
    cutoff: float,
    avg_num_neighbors: float,
    backend: str = "e3nn",
):
    """The model of a named size (``MODEL_SIZES``) under ``policy`` with the convolution and
    symmetric contraction of ``backend``; random-init weights suffice."""
    from mpnn_jax.models import build_model

    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; expected one of {list(MODEL_SIZES)}")
    spec = dict(MODEL_SIZES[size])
    name = spec.pop("name")
    return build_model(
        name,
        policy=policy,
        n_species=n_species,
        cutoff=cutoff,
        avg_num_neighbors=avg_num_neighbors,
        backend=backend,
        **spec,
    )


def init_for(size: str, system: System, *, cutoff: float, seed: int = 0) -> Any:
    """FP32 random-init parameters of ``size`` for ``system`` (shared by every preset)."""
    from mpnn_jax.potential import init_params

    model = make_model(
        size,
        policy="fp32",
        n_species=system.n_species,
        cutoff=cutoff,
        avg_num_neighbors=avg_neighbours(system),
    )
    return init_params(model, jax.random.PRNGKey(seed), to_device(system.graph))


def make_train_state_and_step(model, params: Any, *, forces_weight: float = 100.0):
    """The library's own training step (loss scaling, Adam, EMA) for ``model``.

    Returns ``(state, step)`` with ``step(state, graph) -> (state, metrics)``: exactly what
    ``mpnn-jax train`` runs, so the benchmark times the real thing.
    """
    from mpnn_jax.potential import make_predictor
    from mpnn_jax.precision import loss_scale_for
    from mpnn_jax.training.loss import make_loss_fn
    from mpnn_jax.training.optim import make_optimizer
    from mpnn_jax.training.state import init_train_state, make_train_step

    optimizer, _ = make_optimizer(lr=1e-3, optimizer="adam")
    step = make_train_step(
        make_predictor(model),
        loss_fn=make_loss_fn(energy_weight=1.0, forces_weight=forces_weight),
        optimizer=optimizer,
        ema_decay=0.99,
    )
    state = init_train_state(
        params=params,
        optimizer=optimizer,
        loss_scale=loss_scale_for(model.policy),
        rng=jax.random.PRNGKey(0),
    )
    return state, step
