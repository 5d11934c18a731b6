"""Shared fixtures: tiny configs and their initialised params, built once per test session."""

import jax
import pytest

from moe_rl.models import transformer
from tests.utils import make_config


@pytest.fixture(scope="session")
def tiny():
    """(cfg, params, state) of the tiny MoE."""
    cfg = make_config("tiny")
    params, state = transformer.init(cfg, jax.random.key(0))
    return cfg, params, state


@pytest.fixture(scope="session")
def tiny_dense():
    cfg = make_config("tiny_dense")
    params, state = transformer.init(cfg, jax.random.key(0))
    return cfg, params, state
