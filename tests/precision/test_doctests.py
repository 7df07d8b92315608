"""The examples in the precision modules' docstrings run and give what they show."""

import doctest
import importlib

import pytest

MODULES = ["policy", "loss_scale", "audit"]  # presets.py has no examples


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    # import_module: the attribute mpnn_jax.precision.audit is the function, not the module
    module = importlib.import_module(f"mpnn_jax.precision.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
