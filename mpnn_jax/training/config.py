"""Training configuration: YAML files validated into typed, frozen dataclasses.

A config has five sections, ``data``, ``model``, ``train``, ``precision`` and ``parallel``
(optional, default: data parallel over all local devices); every key is
checked against the dataclass fields below, and an unknown key is an error that names it and the
valid keys. Paths are absolute or relative to the config file; ``bundled:<name>/<split>`` names a
dataset shipped with the package (resolved by :func:`resolve_data_path`).

Example:
    >>> cfg = config_from_dict({"data": {"train": "/tmp/train.xyz"}, "model": {"name": "mace"}})
    >>> cfg.train.batch_size
    5
    >>> apply_overrides(cfg, ["train.max_steps=100", "train.lr=1e-3"]).train.lr
    0.001
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

MODEL_NAMES = ("nequip", "mace")
OPTIMIZERS = ("adam", "amsgrad")
SCHEDULES = ("constant", "warmup_cosine", "plateau")
LOSSES = ("mse", "huber")
BUNDLED_PREFIX = "bundled:"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data is and how to read it.

    Attributes:
        train: extended-XYZ training file (path or ``bundled:<name>/<split>``).
        valid: a validation file, or a fraction (0-1) of ``train`` held out.
        test: optional test file, evaluated at the end of training.
        energy_key, forces_key, stress_key: keys of the targets in the XYZ file.
        cutoff: neighbour cutoff, Å.
        e0s: file of isolated atoms (one config per element), or ``least_squares``.
        n_train: use only the first ``n_train`` training configs (after the valid split).
        n_valid: use at most ``n_valid`` validation configs.
        max_buckets: at most this many padded batch shapes per loader (each is one XLA
            compilation); 1 pads every batch to the worst case (one compile, most padding).
    """

    train: str
    valid: str | float = 0.05
    test: str | None = None
    energy_key: str = "energy"
    forces_key: str = "forces"
    stress_key: str = "stress"
    cutoff: float = 5.0
    e0s: str = "least_squares"
    n_train: int | None = None
    n_valid: int | None = None
    max_buckets: int = 4


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model and its sizes (``sizes`` is passed to ``build_model`` as keyword arguments).

    ``backend`` names the convolution and symmetric-contraction backend
    (:mod:`mpnn_jax.nn.backends`): ``"e3nn"`` (pure XLA, the reference), ``"pallas"`` (our fused
    kernels), ``"auto"`` (pallas on NVIDIA GPUs, e3nn elsewhere) or, with the ``cueq`` extra
    installed, ``"cueq"`` (NVIDIA cuEquivariance kernels on a GPU). The weights are the same
    for every backend, so a run can be evaluated or simulated with another one
    (``mpnn-jax evaluate/md --backend``).
    """

    name: str = "mace"
    sizes: dict = dataclasses.field(default_factory=dict)
    backend: str = "e3nn"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Weights multiply the per-atom energy, force and stress MSE/Huber.

    ``steps_per_call`` optimiser steps run in one device call (a ``lax.scan`` over that many
    batches of one padded shape), which removes the host's per-step dispatch cost on small
    batches; ``eval_every``, ``log_every`` and ``checkpoint_every`` must be multiples of it.
    """

    batch_size: int = 5
    valid_batch_size: int | None = None
    max_steps: int = 1000
    max_minutes: float | None = None
    seed: int = 0
    lr: float = 0.01
    optimizer: str = "adam"
    weight_decay: float = 0.0
    clip_norm: float | None = 100.0
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01
    plateau_patience: int = 5
    plateau_factor: float = 0.8
    ema_decay: float | None = 0.99
    eval_every: int = 100
    checkpoint_every: int | None = None
    log_every: int = 10
    steps_per_call: int = 1
    energy_weight: float = 1.0
    forces_weight: float = 100.0
    stress_weight: float = 0.0
    loss: str = "mse"
    huber_delta: float = 0.01


@dataclasses.dataclass(frozen=True)
class PrecisionConfig:
    """Precision policy (a preset or grammar string) and dynamic loss-scale settings."""

    policy: str = "fp32"
    loss_scale_initial: float = 2.0**15
    loss_scale_period: int = 2000


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    """Data parallelism (see :mod:`mpnn_jax.training.parallel`).

    Each step runs one batch of ``train.batch_size`` per device: the effective batch size is
    ``batch_size x n_devices``; the learning rate is not scaled automatically.

    Attributes:
        devices: ``all`` (every device JAX sees) or how many of them to use (the first ones).
        coordinator_address, num_processes, process_id: passed to ``jax.distributed.initialize``
            when ``num_processes > 1`` (multi-host); ignored otherwise.
    """

    devices: str | int = "all"
    coordinator_address: str | None = None
    num_processes: int = 1
    process_id: int | None = None


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole run configuration."""

    data: DataConfig
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    precision: PrecisionConfig = dataclasses.field(default_factory=PrecisionConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "precision": PrecisionConfig,
    "parallel": ParallelConfig,
}


class ConfigError(ValueError):
    """An invalid configuration (unknown key, bad type or bad value)."""


# --- type checking and coercion ---------------------------------------------------------------
def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Checks ``value`` against the annotation ``tp``, coercing strings and ints where safe."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        # try non-str alternatives first so "0.1" becomes a float for `str | float`
        for a in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected a bool, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an int, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an int, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a float, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover


def _build_section(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {where}.{unknown[0]}; valid keys of {where}: {sorted(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {where}.{name}")
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    def choice(value: str, choices: tuple[str, ...], where: str) -> None:
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")

    choice(cfg.model.name, MODEL_NAMES, "model.name")
    if "backend" in cfg.model.sizes:
        raise ConfigError("model.sizes.backend: set the backend as model.backend")
    if cfg.model.backend != "e3nn":  # the reference is always there; others may not be
        try:
            from mpnn_jax.nn.backends import get_backend

            get_backend(cfg.model.backend)
        except ValueError as e:
            raise ConfigError(f"model.backend: {e}") from e
    choice(cfg.train.optimizer, OPTIMIZERS, "train.optimizer")
    choice(cfg.train.schedule, SCHEDULES, "train.schedule")
    choice(cfg.train.loss, LOSSES, "train.loss")
    if isinstance(cfg.data.valid, float) and not 0.0 < cfg.data.valid < 1.0:
        raise ConfigError(f"data.valid: a fraction must be in (0, 1), got {cfg.data.valid}")
    for key in ("batch_size", "max_steps", "eval_every", "log_every", "steps_per_call"):
        if getattr(cfg.train, key) < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {getattr(cfg.train, key)}")
    k = cfg.train.steps_per_call
    for key in ("eval_every", "log_every", "checkpoint_every"):
        value = getattr(cfg.train, key)
        if value is not None and value % k:
            raise ConfigError(
                f"train.{key} ({value}) must be a multiple of train.steps_per_call ({k}): "
                "logging, evaluation and checkpoints happen between device calls"
            )
    if cfg.data.cutoff <= 0:
        raise ConfigError(f"data.cutoff must be > 0, got {cfg.data.cutoff}")
    if cfg.data.max_buckets < 1:
        raise ConfigError(f"data.max_buckets must be >= 1, got {cfg.data.max_buckets}")
    if cfg.train.ema_decay is not None and not 0.0 <= cfg.train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {cfg.train.ema_decay}")
    _validate_parallel(cfg.parallel)
    from mpnn_jax.precision import get_policy

    try:
        get_policy(cfg.precision.policy)
    except ValueError as e:
        raise ConfigError(f"precision.policy: {e}") from e


def _validate_parallel(pc: ParallelConfig) -> None:
    if isinstance(pc.devices, str) and pc.devices != "all":
        raise ConfigError(f"parallel.devices: expected 'all' or an int >= 1, got {pc.devices!r}")
    if isinstance(pc.devices, int) and pc.devices < 1:
        raise ConfigError(f"parallel.devices must be >= 1, got {pc.devices}")
    if pc.num_processes < 1:
        raise ConfigError(f"parallel.num_processes must be >= 1, got {pc.num_processes}")
    if pc.num_processes > 1:
        if not pc.coordinator_address:
            raise ConfigError("parallel.coordinator_address is required when num_processes > 1")
        if pc.process_id is None or not 0 <= pc.process_id < pc.num_processes:
            raise ConfigError(
                f"parallel.process_id must be in [0, {pc.num_processes}), got {pc.process_id}"
            )


# --- paths --------------------------------------------------------------------------------------
def _resolve(path: str | None, base: Path | None) -> str | None:
    if path is None or path.startswith(BUNDLED_PREFIX) or path == "least_squares":
        return path
    p = Path(os.path.expanduser(path))
    if not p.is_absolute() and base is not None:
        p = base / p
    return str(p.resolve()) if base is not None or p.is_absolute() else str(p)


def resolve_data_path(path: str) -> Path:
    """Turns a config path into a file path; ``bundled:rmd17_ethanol/train`` -> the bundled file."""
    if path.startswith(BUNDLED_PREFIX):
        name, _, split = path[len(BUNDLED_PREFIX) :].partition("/")
        from mpnn_jax.data import bundled_path

        return Path(bundled_path(name, split or "train"))
    return Path(path)


def _resolve_paths(cfg: Config, base: Path | None) -> Config:
    d = cfg.data
    valid = d.valid if isinstance(d.valid, float) else _resolve(d.valid, base)
    data = dataclasses.replace(
        d,
        train=_resolve(d.train, base),
        valid=valid,
        test=_resolve(d.test, base),
        e0s=_resolve(d.e0s, base),
    )
    return dataclasses.replace(cfg, data=data)


# --- public API -------------------------------------------------------------------------------
def config_from_dict(raw: dict, *, base_dir: str | Path | None = None) -> Config:
    """Validates a nested dict into a :class:`Config`.

    Args:
        raw: ``{"data": {...}, "model": {...}, "train": {...}, "precision": {...},
            "parallel": {...}}`` (every section but ``data`` optional).
        base_dir: directory relative paths are resolved against (the config file's directory).

    Raises:
        ConfigError: unknown key (named, with the valid keys), wrong type or invalid value.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}; valid sections: {sorted(_SECTIONS)}")
    if "data" not in raw:
        raise ConfigError("missing required section 'data'")
    sections = {k: _build_section(cls, raw.get(k), k) for k, cls in _SECTIONS.items()}
    cfg = Config(**sections)
    _validate(cfg)
    return _resolve_paths(cfg, Path(base_dir).resolve() if base_dir is not None else None)


def load_config(path: str | Path, *, overrides: typing.Iterable[str] | None = None) -> Config:
    """Reads and validates a YAML config file; relative paths resolve against its directory.

    Args:
        path: the YAML file.
        overrides: optional ``section.key=value`` strings (see :func:`apply_overrides`).
    """
    path = Path(path)
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    cfg = config_from_dict(raw, base_dir=path.parent)
    return apply_overrides(cfg, overrides) if overrides else cfg


def config_to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts (inverse of :func:`config_from_dict`)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Writes the resolved config as YAML (paths are already absolute)."""
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)


def apply_overrides(cfg: Config, overrides: typing.Iterable[str]) -> Config:
    """Applies ``section.key=value`` overrides with type coercion.

    ``model.sizes.<name>=<value>`` sets one model size (the value is parsed as YAML). Relative
    paths in overrides resolve against the current directory.

    Example:
        ``apply_overrides(cfg, ["train.max_steps=100", "precision.policy=bf16-mixed"])``
    """
    raw = config_to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if parts[0] not in _SECTIONS:
            raise ConfigError(f"unknown key {parts[0]!r}; valid sections: {sorted(_SECTIONS)}")
        section = raw[parts[0]]
        if parts[:2] == ["model", "sizes"] and len(parts) == 3:
            section["sizes"][parts[2]] = yaml.safe_load(value)
            continue
        if len(parts) != 2:
            raise ConfigError(f"override key {key!r} must be section.key")
        if parts[1] not in section:
            raise ConfigError(f"unknown key {key}; valid keys of {parts[0]}: {sorted(section)}")
        parsed = yaml.safe_load(value) if value.strip() else value
        section[parts[1]] = parsed if parsed is not None or value.strip() else value
    new = config_from_dict(raw, base_dir=Path.cwd())
    return new
