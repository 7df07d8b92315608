"""Fixtures shared by all test directories (keep small): float64 on demand and a seeded rng."""

import jax
import numpy as np
import pytest


@pytest.fixture
def x64():
    """Enables float64 for one test (``jax.enable_x64`` context), without leaking it."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def rng():
    """A seeded numpy generator."""
    return np.random.default_rng(0)
