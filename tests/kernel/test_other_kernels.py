"""The kernel-agreement tests again, inside other kernels: Debian's 6.1, 6.12 and 7.2.

``../shared/tools/kernel-vm`` boots a Debian kernel package in QEMU with this machine's root
shared read-only and runs one command inside.  Each test here copies the project into
``/tmp/kvm-ovlinspect-*`` (the VM sees ``/tmp/kvm-*``), boots one kernel and runs, in one
pytest process there: the option tests against real mounts, the probe and profile tests, and
the reference tables (``tests/kernel/test_tables.py``, the ``mount(2)`` variant of each row).
Inside, ovlinspect predicts for the kernel it runs on (its release, corrected by the probes),
so a pass means the profile of that kernel agrees with the kernel.

Where QEMU, the tool or the kernel packages are missing, the tests skip with the reason.
``OVLINSPECT_VM_KERNELS`` (``6.1,6.12,7.2``) chooses the kernels; ``OVLINSPECT_VM_FETCH=1``
lets the test download missing packages with the tool's ``fetch`` (``.ci/run`` sets it);
``OVLINSPECT_VM_FULL=1`` runs every table variant and the random stacks too (slower).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

import vm

KERNELS = [k for k in os.environ.get("OVLINSPECT_VM_KERNELS", "6.1,6.12,7.2").split(",") if k]
#: what runs inside: the option tests against real mounts, the probes, the reference tables (their
#: mount(2) variant) and the random stacks with upper state made by real operations (60 of them:
#: on 6.1 they found that origins were judged without the filesystem UUID, which 6.1 does not
#: tell); OVLINSPECT_VM_FULL=1: both APIs, the demos and all the random stacks
SELECTION = ("tests/test_probe.py tests/test_profile.py tests/test_options.py tests/kernel/test_tables.py "
             "tests/kernel/test_estale.py tests/kernel/test_inode.py tests/kernel/test_fsck.py tests/kernel/test_live_cli.py "
             "tests/kernel/test_random.py "
             "-k '((legacy or not test_table) and not random) or upper_state'")
FULL = ("tests/test_probe.py tests/test_profile.py tests/test_options.py tests/kernel/test_tables.py "
        "tests/kernel/test_estale.py tests/kernel/test_inode.py tests/kernel/test_fsck.py tests/kernel/test_live_cli.py "
        "tests/kernel/test_demos.py tests/kernel/test_random.py")

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def runs():
    """Every kernel's run, started at once (two VMs at a time: QEMU emulates, one core each)."""
    reason = vm.skip_reason()
    if reason:
        pytest.skip(reason)
    selection = FULL if os.environ.get("OVLINSPECT_VM_FULL") else SELECTION
    pool = ThreadPoolExecutor(max_workers=2)
    # packages first, one kernel after the other (fetch shares one APT state)
    files = {v: vm.debs(v) for v in KERNELS}
    futures = {v: pool.submit(vm.run_tests, v, selection, files=files[v]) for v in KERNELS}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("version", KERNELS)
def test_agreement_inside_kernel(version: str, runs) -> None:
    try:
        rc, summary, out, seconds = runs[version].result()
    except LookupError as e:
        pytest.skip(str(e))
    if rc in (124, 125) or not summary:
        pytest.fail(f"kernel {version}: the VM did not run the tests (exit {rc}):\n{out[-3000:]}")
    print(f"kernel {version}: {summary} ({seconds:.0f} s)")
    assert " failed" not in summary and " error" not in summary, (
        f"kernel {version} disagrees with ovlinspect:\n{out[-6000:]}")
