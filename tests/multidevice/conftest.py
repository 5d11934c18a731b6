"""These tests need 8 (fake CPU) devices: tests/test_multidevice.py runs them in their own
process with XLA_FLAGS=--xla_force_host_platform_device_count=8 set before JAX starts."""

import jax
import pytest


def pytest_collection_modifyitems(config, items):
    if jax.device_count() < 8:
        skip = pytest.mark.skip(reason="needs 8 devices (run via tests/test_multidevice.py)")
        for item in items:
            item.add_marker(skip)
