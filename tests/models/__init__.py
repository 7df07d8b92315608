"""Shared parametrisation of the model tests."""

import pytest

from mpnn_jax.precision import PRESETS

#: presets whose training step runs in the default suite; the others (fp64, fp32-highest, the
#: seed variants, fp16-mixed and bf16-pure, which share these code paths; the training tests run
#: fp16-mixed end to end) are ``slow`` (``make test-all``)
DEFAULT_PRESETS = ("fp32", "bf16-mixed")


def preset_params(default: tuple[str, ...] = DEFAULT_PRESETS) -> list:
    """Every preset as a pytest parameter, those outside ``default`` marked ``slow``."""
    return [p if p in default else pytest.param(p, marks=pytest.mark.slow) for p in sorted(PRESETS)]
