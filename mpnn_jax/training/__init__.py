"""Training: config, loss, metrics, optimiser, state, checkpoints, loop and evaluation.

``train(config, workdir)`` runs a configured training (resuming from ``workdir``);
``evaluate(workdir, data)`` and ``load_run(workdir)`` use a finished run.
"""

from mpnn_jax.training.checkpoint import load_weights, restore_state, save_checkpoint
from mpnn_jax.training.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    load_config,
    save_config,
)
from mpnn_jax.training.loss import loss_terms, make_loss_fn
from mpnn_jax.training.metrics import MetricsAccumulator, batch_error_sums
from mpnn_jax.training.optim import ema_update, make_optimizer, make_schedule
from mpnn_jax.training.state import TrainState, init_train_state, make_train_step

_LAZY = {
    "train": "mpnn_jax.training.loop",
    "evaluate": "mpnn_jax.training.evaluate",
    "format_metrics": "mpnn_jax.training.evaluate",
    "load_run": "mpnn_jax.training.evaluate",
}


def __getattr__(name: str):
    # lazy, so that ``python -m mpnn_jax.training.loop`` does not import the loop twice
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Config",
    "ConfigError",
    "MetricsAccumulator",
    "TrainState",
    "apply_overrides",
    "batch_error_sums",
    "config_from_dict",
    "ema_update",
    "evaluate",
    "format_metrics",
    "init_train_state",
    "load_config",
    "load_run",
    "load_weights",
    "loss_terms",
    "make_loss_fn",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "restore_state",
    "save_checkpoint",
    "save_config",
    "train",
]
