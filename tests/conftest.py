"""Shared fixtures: tiny configs and their initialised params, built once per test session."""

import os

# Tests run tiny models: XLA's expensive LLVM passes cost compile time and buy nothing here.
os.environ.setdefault("XLA_FLAGS", "--xla_llvm_disable_expensive_passes=true")

import jax  # noqa: E402
import pytest  # noqa: E402

from moe_rl.models import transformer  # noqa: E402
from tests.utils import make_config  # noqa: E402


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
