"""Runs tests/multidevice in its own process with 8 fake CPU devices: the device count is
fixed when JAX starts, so it cannot be changed inside this pytest process."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sharding_suite_on_8_fake_cpu_devices():
    # The device count is added to the suite's XLA flags (tests/conftest.py), not put in
    # their place.
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    env = dict(os.environ, XLA_FLAGS=flags.strip())
    env.pop("PYTEST_XDIST_WORKER", None)
    out = subprocess.run(
        # -o addopts='': the project's -q plus this -q would hide the summary line checked below
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-o",
            "addopts=",
            "-p",
            "no:cacheprovider",
            "tests/multidevice",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and "skipped" not in out.stdout, out.stdout[-2000:]
