"""The examples shown in the data modules' docstrings run and give the shown output."""

import doctest
import importlib

import pytest

MODULES = [
    "mpnn_jax.data.xyz",
    "mpnn_jax.data.species",
    "mpnn_jax.data.neighbours",
    "mpnn_jax.data.graphs",
    "mpnn_jax.data.buckets",
    "mpnn_jax.data.bundled",
    "mpnn_jax.data.info",
    "mpnn_jax.data.order",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
