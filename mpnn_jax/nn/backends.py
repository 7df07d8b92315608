"""Backends for the two expensive operations: the convolution and the symmetric contraction.

A backend is an object with ``.name``, ``.convolution(node_feats, sh, weights, senders, receivers,
edge_mask, *, irreps_out, avg_num_neighbors, policy)`` (see
:func:`mpnn_jax.nn.convolution.e3nn_convolution`) and ``.symmetric_contraction(*args, **kwargs)``
(see :mod:`mpnn_jax.nn.symmetric_contraction`). Models take ``backend: str = "e3nn"`` and look it up
here; ``"e3nn"`` is the pure-JAX reference implementation. Faster kernels register themselves with
:func:`register_backend` and are tested against the reference.

Example:
    >>> get_backend("e3nn").name
    'e3nn'
    >>> available_backends()
    ['e3nn']
"""

from __future__ import annotations

from typing import Any, Protocol

from mpnn_jax.nn.convolution import e3nn_convolution


class Backend(Protocol):
    """Interface of a backend."""

    name: str

    def convolution(self, *args: Any, **kwargs: Any) -> Any: ...

    def symmetric_contraction(self, *args: Any, **kwargs: Any) -> Any: ...


class E3nnBackend:
    """The reference backend: plain JAX einsums with e3nn-jax Clebsch-Gordan coefficients."""

    name = "e3nn"

    @staticmethod
    def convolution(*args: Any, **kwargs: Any) -> Any:
        return e3nn_convolution(*args, **kwargs)

    @staticmethod
    def symmetric_contraction(*args: Any, **kwargs: Any) -> Any:
        from mpnn_jax.nn import symmetric_contraction as sc  # written by the MACE helper

        return sc.symmetric_contraction(*args, **kwargs)


_REGISTRY: dict[str, Backend] = {"e3nn": E3nnBackend()}


def register_backend(name: str, backend: Backend) -> None:
    """Registers ``backend`` under ``name`` (replacing an existing entry)."""
    _REGISTRY[name] = backend


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``; unknown names raise ``ValueError``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; expected one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def available_backends() -> list[str]:
    """Names of the registered backends."""
    return sorted(_REGISTRY)
