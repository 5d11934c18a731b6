"""These tests need 8 (fake CPU) devices: tests/test_multidevice.py runs them in their own
process with XLA_FLAGS=--xla_force_host_platform_device_count=8 set before JAX starts."""

import os

import jax
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):
    # This hook sees every collected item of the session: mark only the ones in this folder.
    if jax.device_count() >= 8:
        return
    skip = pytest.mark.skip(reason="needs 8 devices (run via tests/test_multidevice.py)")
    for item in items:
        if str(item.path).startswith(HERE + os.sep):
            item.add_marker(skip)
