"""Kernel-agreement tests: the running kernel judges every prediction.

Every test here is marked ``kernel``.  They need root and overlay mounts; where either is
missing they skip with the reason.  On first use the pytest process moves into a private
mount namespace (``unshare(CLONE_NEWNS)`` with ``/`` made private), so every tmpfs and overlay
mounted by a test stays invisible to the rest of the machine and disappears with the process.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import harness  # noqa: E402


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.kernel)


@pytest.fixture(scope="session")
def kernel_ready():
    """Skip unless this process can mount overlays; enter a private mount namespace once."""
    reason = harness.kernel_unavailable_reason()
    if reason:
        pytest.skip(reason)
    return True


@pytest.fixture
def tmpfs(kernel_ready):
    """A fresh private tmpfs for one test; everything mounted below it is unmounted after."""
    with harness.private_tmpfs() as path:
        yield path


@pytest.fixture
def klog(kernel_ready):
    """The kernel log from now on (``/dev/kmsg``): the overlay lines a mount or lookup logs."""
    from ovlinspect.live.mountapi import KernelLog

    try:
        log = KernelLog()
    except OSError as e:
        pytest.skip(f"cannot read /dev/kmsg: {e.strerror}")
    with log:
        yield log
