"""The repository's scripts (``experiments/...``) as modules, for tests that call their ``main``
or helpers in-process. ``tests/`` is on ``sys.path`` under pytest's default import mode (its
``conftest.py`` is not in a package), so every test file imports this as ``repo_scripts``."""

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str) -> ModuleType:
    """The script at ``relative`` (to the repository root, e.g. ``"experiments/benchmark.py"``),
    executed as a fresh module named after its file."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
