"""Paths of the datasets bundled with mpnn_jax (see ``mpnn_jax/datasets/*/README.md``)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

_SPLITS = {
    "rmd17_ethanol": {
        "train": "train.xyz",
        "test": "test_MD.xyz",
        "isolated_atoms": "isolated_atoms.xyz",
    },
}


def bundled_path(name: str = "rmd17_ethanol", split: str = "train") -> Path:
    """Path of a bundled extended-XYZ file.

    Args:
        name: dataset name; ``"rmd17_ethanol"``.
        split: ``"train"``, ``"test"`` or ``"isolated_atoms"``.

    Returns:
        A filesystem path to the file (inside the installed package).

    Example:
        >>> bundled_path("rmd17_ethanol", "isolated_atoms").name
        'isolated_atoms.xyz'
    """
    if name not in _SPLITS:
        raise ValueError(f"unknown bundled dataset {name!r}; available: {sorted(_SPLITS)}")
    if split not in _SPLITS[name]:
        raise ValueError(f"unknown split {split!r} of {name!r}; available: {sorted(_SPLITS[name])}")
    resource = importlib.resources.files("mpnn_jax") / "datasets" / name / _SPLITS[name][split]
    path = Path(str(resource))
    if not path.is_file():
        raise FileNotFoundError(f"bundled file {path} is missing from the installation")
    return path


def shared_data_dir() -> Path | None:
    """The folder of the larger reference datasets, or None when it is absent.

    Looked up in order: ``$MPNN_JAX_SHARED_DATA``; ``<checkout>/../shared/data`` (the layout of a
    clone with ``shared/`` beside it); ``<checkout>/shared/data``.
    """
    import os

    candidates = []
    if os.environ.get("MPNN_JAX_SHARED_DATA"):
        candidates.append(Path(os.environ["MPNN_JAX_SHARED_DATA"]))
    root = Path(__file__).resolve().parents[2]
    candidates += [root.parent / "shared" / "data", root / "shared" / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None
