"""Checkpoints: msgpack + JSON, no pickle, written atomically.

A checkpoint is one file ``<name>.msgpack`` holding a msgpack map (written with
``flax.serialization.msgpack_serialize``, read back with ``msgpack_restore``, which never executes
code)::

    {"format": "mpnn_jax-checkpoint-1",
     "metadata": "<JSON string>",             # step, epoch, best metric, species, E0s, ...
     "state": {"<key path>": array, ...},     # every leaf of the TrainState, by key path
     "ema_params": {...}}                     # the evaluated weights as a nested dict

and, for humans, a copy of the metadata as ``<name>.json``. Every file is written to a temporary
file in the same directory, flushed, fsync'ed and moved into place with ``os.replace``, so a
crash during a write leaves the previous checkpoint intact.

Restoring the full state needs a template pytree of the same structure (a freshly initialised
TrainState); loading only the weights (:func:`load_weights`) needs nothing.

Multi-process runs: the arrays are read with ``jax.device_get``, which works for the replicated
state on every process; the training loop calls :func:`save_checkpoint` on process 0 only
(``mpnn_jax.training.parallel.is_primary``) and then waits at a barrier, and every process reads
the checkpoint when it resumes.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

FORMAT = "mpnn_jax-checkpoint-1"
LATEST = "latest"
BEST = "best"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (temp file in the same dir, fsync, os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_all(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _write_all(f: Any, data: bytes) -> None:
    """Writes in 1 MiB chunks (a seam for tests that simulate a crash mid-write)."""
    view = memoryview(data)
    for i in range(0, len(view), 1 << 20):
        f.write(view[i : i + (1 << 20)])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _to_numpy(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)


def flatten_state(tree: Any) -> dict[str, np.ndarray]:
    """``{key path: numpy array}`` for every leaf of ``tree`` (PRNG keys as their raw data)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    out = {}
    for path, leaf in leaves:
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out[jax.tree_util.keystr(path)] = np.asarray(jax.device_get(leaf))
    return out


def unflatten_state(template: Any, flat: dict[str, Any]) -> Any:
    """Fills ``template``'s structure with the arrays of ``flat`` (checks paths, shapes, dtypes)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    missing = [jax.tree_util.keystr(p) for p, _ in leaves if jax.tree_util.keystr(p) not in flat]
    if missing or len(flat) != len(leaves):
        extra = sorted(set(flat) - {jax.tree_util.keystr(p) for p, _ in leaves})
        raise ValueError(
            f"checkpoint does not match the state: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    new = []
    for path, leaf in leaves:
        key = jax.tree_util.keystr(path)
        value = np.asarray(flat[key])
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            new.append(jax.random.wrap_key_data(value))
            continue
        ref = np.asarray(leaf)
        if value.shape != ref.shape or value.dtype != ref.dtype:
            raise ValueError(
                f"checkpoint leaf {key}: {value.dtype}{value.shape} != {ref.dtype}{ref.shape}"
            )
        new.append(jax.numpy.asarray(value))
    return jax.tree_util.tree_unflatten(treedef, new)


def checkpoint_path(directory: str | Path, name: str = LATEST) -> Path:
    """``directory/<name>.msgpack``."""
    return Path(directory) / f"{name}.msgpack"


def save_checkpoint(
    directory: str | Path,
    *,
    state: Any,
    ema_params: Any,
    metadata: dict,
    name: str = LATEST,
) -> Path:
    """Saves ``state`` (any pytree), the evaluated weights and JSON metadata atomically.

    Args:
        directory: checkpoint directory (created if needed).
        state: the full training state, restored later by :func:`restore_state`.
        ema_params: the weights that are evaluated (a nested dict of arrays).
        metadata: JSON-serialisable dict (step, epoch, best metric, species, E0s, cutoff, ...).
        name: ``"latest"`` or ``"best"``.

    Returns:
        The path of the msgpack file.
    """
    meta_text = json.dumps(metadata, sort_keys=True, default=_json_default)
    payload = {
        "format": FORMAT,
        "metadata": meta_text,
        "state": flatten_state(state),
        "ema_params": serialization.to_state_dict(_to_numpy(ema_params)),
    }
    data = serialization.msgpack_serialize(payload)
    path = checkpoint_path(directory, name)
    atomic_write_bytes(path, data)
    atomic_write_bytes(
        path.with_suffix(".json"), json.dumps(metadata, indent=1, default=_json_default).encode()
    )
    return path


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray | jax.Array):
        return np.asarray(x).tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def read_checkpoint(path: str | Path) -> dict:
    """Reads a checkpoint into ``{"metadata": dict, "state": flat dict, "ema_params": ...}``."""
    with open(path, "rb") as f:
        payload = serialization.msgpack_restore(f.read())
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not an mpnn_jax checkpoint (format {payload.get('format')!r})")
    return {
        "metadata": json.loads(payload["metadata"]),
        "state": payload["state"],
        "ema_params": payload["ema_params"],
    }


def restore_state(path: str | Path, template: Any) -> tuple[Any, dict]:
    """Restores the full state saved at ``path`` into ``template``'s structure.

    Returns:
        ``(state, metadata)``.
    """
    ckpt = read_checkpoint(path)
    return unflatten_state(template, ckpt["state"]), ckpt["metadata"]


def load_weights(path: str | Path) -> tuple[Any, dict]:
    """The evaluated (EMA) weights as a nested dict of arrays, and the metadata."""
    ckpt = read_checkpoint(path)
    params = jax.tree_util.tree_map(jax.numpy.asarray, ckpt["ema_params"])
    return params, ckpt["metadata"]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """``directory/latest.msgpack`` if it exists, else None."""
    p = checkpoint_path(directory, LATEST)
    return p if p.exists() else None
