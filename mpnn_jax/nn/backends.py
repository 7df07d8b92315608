"""Backends for the two expensive operations: the convolution and the symmetric contraction.

A backend is an object with ``.name``, ``.convolution(node_feats, sh, weights, senders, receivers,
edge_mask, *, irreps_out, avg_num_neighbors, policy)`` (see
:func:`mpnn_jax.nn.convolution.e3nn_convolution`) and ``.symmetric_contraction(*args, **kwargs)``
(see :mod:`mpnn_jax.nn.symmetric_contraction`). Models take ``backend: str = "e3nn"`` and look it up
here; ``"e3nn"`` is the pure-JAX reference implementation. Faster kernels register themselves with
:func:`register_backend` and are tested against the reference.

A backend whose ``convolution`` takes per-pair weights (``pairs=``, :mod:`mpnn_jax.nn.pairs`: the
radial MLP runs once per pair of reverse edges) says so with ``takes_pairs = True``; for any other
backend :class:`mpnn_jax.nn.convolution.Convolution` expands the weights to the edges first
(:func:`takes_pairs`), so a backend written for per-edge weights works on every graph.
A backend may also have ``indexed_matmul(x, w, indices)`` (species-indexed linear maps,
:func:`mpnn_jax.nn.linear.equivariant_linear`; ``"pallas"`` has one):
:class:`~mpnn_jax.nn.linear.Linear` uses it where it returns an array, the dense path where it
returns ``None`` or is absent. Likewise ``radial_mlp(scaled_weights, x, *, act_dtype,
out_dtype)`` (the radial MLP fused, :func:`mpnn_jax.nn.radial.radial_mlp`; ``"pallas"`` has one,
:mod:`mpnn_jax.nn.pallas_radial`): where a backend has it, the radial MLP returns its output in
the messages stage's dtype (the cast the convolution makes anyway). A backend may give a
program that differentiates the weights other kernels than one that does not: the library's
training step is traced inside :func:`training_program` (:func:`in_training_program`; the
``"pallas"`` radial MLP keeps XLA's GEMMs there, PERFORMANCE_LOG entry 27).

``"auto"`` is not a backend of its own: :func:`get_backend` resolves it when a program is traced
(:func:`resolve`), to ``"pallas"`` on NVIDIA GPUs of compute capability 8.0 or newer (the fused
kernels: our fastest measured programs, PERFORMANCE_LOG entries 13-25) where JAX still has
Pallas's Triton backend (:func:`pallas_triton_available`), and to the reference ``"e3nn"``
everywhere else (on CPUs the Pallas kernels only run in the slow interpreter). The
weights are the same for every backend, so a configuration or notebook written with ``"auto"``
runs the fast kernels on a GPU and the reference on a laptop.

Other backends are registered lazily, on the first :func:`get_backend` or
:func:`available_backends` call: ``"cueq"`` (:mod:`mpnn_jax.nn.cueq`, NVIDIA cuEquivariance) only
where ``cuequivariance_jax`` imports, then ``"pallas"`` (:mod:`mpnn_jax.nn.pallas_conv`: the
convolution as fused Pallas kernels, Triton on GPUs, interpreted on CPU; the reference's
symmetric contraction with its order-3 term as sparse Pallas forms,
:mod:`mpnn_jax.nn.pallas_symmetric`) always.

Example:
    >>> get_backend("e3nn").name
    'e3nn'
    >>> available_backends()[0]
    'e3nn'
    >>> resolve("auto", platform="cpu"), resolve("cueq")
    ('e3nn', 'cueq')
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from typing import Any, Protocol

from mpnn_jax.nn.convolution import e3nn_convolution

_TRAINING_PROGRAMS = 0  # training_program() blocks being traced (nested ones count)


@contextlib.contextmanager
def training_program():
    """While a program that differentiates the weights is traced (the library's training step:
    :func:`mpnn_jax.training.state.make_train_step`): backends may choose the kernels that pay
    there. Read when the program is traced, like the kernels' module settings.

    Example:
        >>> with training_program():
        ...     in_training_program()
        True
        >>> in_training_program()
        False
    """
    global _TRAINING_PROGRAMS
    _TRAINING_PROGRAMS += 1
    try:
        yield
    finally:
        _TRAINING_PROGRAMS -= 1


def in_training_program() -> bool:
    """Whether the program being traced is a training step (inside :func:`training_program`)."""
    return _TRAINING_PROGRAMS > 0


class Backend(Protocol):
    """Interface of a backend (``takes_pairs`` optional, default False)."""

    name: str

    def convolution(self, *args: Any, **kwargs: Any) -> Any: ...

    def symmetric_contraction(self, *args: Any, **kwargs: Any) -> Any: ...


class E3nnBackend:
    """The reference backend: plain JAX einsums with e3nn-jax Clebsch-Gordan coefficients."""

    name = "e3nn"
    takes_pairs = True

    @staticmethod
    def convolution(*args: Any, **kwargs: Any) -> Any:
        return e3nn_convolution(*args, **kwargs)

    @staticmethod
    def symmetric_contraction(*args: Any, **kwargs: Any) -> Any:
        from mpnn_jax.nn import symmetric_contraction as sc  # written by the MACE helper

        return sc.symmetric_contraction(*args, **kwargs)


_REGISTRY: dict[str, Backend] = {"e3nn": E3nnBackend()}
#: The name :func:`resolve` maps to the fastest measured backend of a platform.
AUTO = "auto"
_OPTIONAL_LOADED = False


class PallasBackend:
    """The convolution as one fused Pallas kernel per direction (:mod:`mpnn_jax.nn.pallas_conv`);
    the symmetric contraction of the reference with its order-3 term as sparse forms
    (:mod:`mpnn_jax.nn.pallas_symmetric`); species-indexed linears as one kernel
    (:mod:`mpnn_jax.nn.pallas_linear`, ``indexed_matmul``); the radial MLP as two kernels
    (:mod:`mpnn_jax.nn.pallas_radial`, ``radial_mlp``)."""

    name = "pallas"
    takes_pairs = True

    @staticmethod
    def convolution(*args: Any, **kwargs: Any) -> Any:
        from mpnn_jax.nn.pallas_conv import pallas_convolution

        return pallas_convolution(*args, **kwargs)

    @staticmethod
    def symmetric_contraction(*args: Any, **kwargs: Any) -> Any:
        from mpnn_jax.nn import pallas_symmetric as ps
        from mpnn_jax.nn import symmetric_contraction as sc

        x = args[0]
        if ps.SPARSE_ORDER3 and ps.usable(x.shape[-2]):
            kwargs = {**kwargs, "order3": ps.order3_term}
        return sc.symmetric_contraction(*args, **kwargs)

    @staticmethod
    def indexed_matmul(x: Any, w: Any, indices: Any) -> Any:
        """``[n, mul_in, ir_dim] x [n_sets, mul_in, mul_out] -> [n, ir_dim, mul_out]`` (FP32) by
        :func:`mpnn_jax.nn.pallas_linear.indexed_matmul`; ``None`` where it does not take the
        shapes (:func:`~mpnn_jax.nn.pallas_linear.usable`) or is off."""
        from mpnn_jax.nn import pallas_linear as pl

        if not (pl.INDEXED_LINEAR and pl.usable(w.shape[-2], w.shape[-1])):
            return None
        return pl.indexed_matmul(x, w, indices)

    @staticmethod
    def radial_mlp(ws: Any, x: Any, *, act_dtype: Any, out_dtype: Any) -> Any:
        """The radial MLP ``[rows, n_in] -> [rows, n_out]`` (scaled weights) by the fused kernels
        of :mod:`mpnn_jax.nn.pallas_radial`; ``None`` where they do not take the shapes
        (:func:`~mpnn_jax.nn.pallas_radial.usable`) or are off: ``RADIAL_FUSED = 0``, or 1
        inside a :func:`training_program` (there XLA's GEMMs are faster)."""
        from mpnn_jax.nn import pallas_radial as pr

        sizes = (ws[0].shape[0], *(w.shape[1] for w in ws))
        mode = pr.RADIAL_FUSED
        if not (mode and pr.usable(sizes)) or (mode == 1 and in_training_program()):
            return None
        return pr.radial_mlp(ws, x, act_dtype=act_dtype, out_dtype=out_dtype)


def _register_optional_backends() -> None:
    """Registers ``"cueq"`` once, if ``cuequivariance_jax`` is installed and imports, then
    ``"pallas"`` (JAX's own Pallas: always available; interpreted on CPU)."""
    global _OPTIONAL_LOADED
    if _OPTIONAL_LOADED:
        return
    _OPTIONAL_LOADED = True
    try:
        _register_cueq()
    finally:
        _REGISTRY.setdefault("pallas", PallasBackend())


def _register_cueq() -> None:
    if importlib.util.find_spec("cuequivariance_jax") is None:
        return
    try:
        from mpnn_jax.nn.cueq import CueqBackend
    except Exception as err:  # noqa: BLE001 - installed but broken (e.g. too old for this JAX)
        warnings.warn(f"cuequivariance_jax is installed but cueq failed: {err!r}", stacklevel=2)
        return
    _REGISTRY.setdefault("cueq", CueqBackend())


def register_backend(name: str, backend: Backend) -> None:
    """Registers ``backend`` under ``name`` (replacing an existing entry)."""
    _register_optional_backends()  # so that a later lazy registration cannot replace it
    _REGISTRY[name] = backend


def resolve(name: str, platform: str | None = None) -> str:
    """The registered backend that ``name`` stands for: ``"auto"`` is ``"pallas"`` on an NVIDIA GPU
    of compute capability 8.0 or newer, else ``"e3nn"``; any other name is itself.

    Args:
        name: a backend name or ``"auto"``.
        platform: ``"gpu"``, ``"cpu"``, ``"tpu"``...; default ``jax.default_backend()``. With
            ``"gpu"`` the first device's vendor and compute capability decide.
    """
    if name != AUTO:
        return name
    import jax

    platform = platform or jax.default_backend()
    if platform not in ("gpu", "cuda"):
        return "e3nn"
    try:
        device = jax.devices("gpu")[0]
        major = int(str(getattr(device, "compute_capability", "")).split(".")[0])
    except (RuntimeError, ValueError):  # no GPU here, or one without a CUDA compute capability
        return "e3nn"  # (ROCm: Triton through Pallas is untested there)
    # Pallas's Triton backend, which the "pallas" kernels compile through, is deprecated since
    # JAX 0.11.0 and due to be removed: a JAX without it gets the reference, not an error
    return "pallas" if major >= 8 and pallas_triton_available() else "e3nn"


def pallas_triton_available() -> bool:
    """Whether this JAX still has Pallas's Triton backend (``jax.experimental.pallas.triton``),
    deprecated in JAX 0.11.0 (the Pallas changelog: "will be removed in a future version")."""
    try:
        return importlib.util.find_spec("jax.experimental.pallas.triton") is not None
    except ImportError:  # a parent package gone too
        return False


def get_backend(name: str) -> Backend:
    """The backend registered as ``name`` (``"auto"``: see :func:`resolve`); unknown names raise
    ``ValueError``."""
    _register_optional_backends()
    name = resolve(name)
    if name not in _REGISTRY:
        hint = ""
        if name == "cueq":
            hint = " (cueq needs the cueq extra: pip install 'mpnn_jax[cueq]')"
        raise ValueError(
            f"unknown or unavailable backend {name!r}; expected one of "
            f"{available_backends()} or {AUTO!r}{hint}"
        )
    return _REGISTRY[name]


def takes_pairs(backend: Backend) -> bool:
    """Whether ``backend.convolution`` accepts per-pair weights with ``pairs=`` (its
    ``takes_pairs`` attribute; False where absent).

    Example:
        >>> takes_pairs(get_backend("e3nn")), takes_pairs(object())
        (True, False)
    """
    return bool(getattr(backend, "takes_pairs", False))


def available_backends() -> list[str]:
    """Names of the registered backends: the reference ``"e3nn"`` first, then the others in
    registration order (``["e3nn"]`` where no optional backend is installed)."""
    _register_optional_backends()
    return list(_REGISTRY)
