"""Shared fixtures: tiny configs and their initialised params, built once per test session."""

import os
import shutil
import tempfile

# Tests run tiny models, so compilation is most of their time: without XLA:CPU's expensive LLVM
# passes and at backend optimization level 0 a tiny MoE's train step compiles in 2.7 s instead
# of 4.5 and runs in 9 ms instead of 4 (measured on the 2-core VM), which is the better trade
# for steps counted in tens. The whole suite passes at either level (its tolerances hold).
os.environ.setdefault(
    "XLA_FLAGS", "--xla_llvm_disable_expensive_passes=true --xla_backend_optimization_level=0"
)
# One persistent compilation cache for the whole run: the xdist workers and every subprocess
# (notebooks, the 8-device suite, the CLI tests) inherit it from the controller, so a program
# compiled once (the tiny model's step, sampler, evaluation) is loaded, not compiled, by the
# next test that builds it. Compilation is most of a tiny model's test time. A user's
# JAX_COMPILATION_CACHE_DIR is kept (and not deleted).
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="moe_rl_xla_cache_")
    os.environ["MOE_RL_TEST_CACHE_OWNER"] = str(os.getpid())
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

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


def pytest_unconfigure(config):
    """The process that made the compilation cache deletes it at the end of the run."""
    if os.environ.get("MOE_RL_TEST_CACHE_OWNER") == str(os.getpid()):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
