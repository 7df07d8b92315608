"""The examples in the docstrings of mpnn_jax.md run and print what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["analysis", "integrators", "neighbours", "calculator"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"mpnn_jax.md.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
