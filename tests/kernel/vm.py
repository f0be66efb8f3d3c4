"""Run this project's tests inside another kernel, with ``../shared/tools/kernel-vm``.

Used by ``tests/kernel/test_other_kernels.py`` and ``bench/kernel_matrix.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT.parent / "shared" / "tools" / "kernel-vm"
DEBS = Path(os.environ.get("DEBS", "/tmp/kvm-debs"))


def skip_reason() -> str | None:
    if os.environ.get("KVM_KREL"):
        return "already inside a kernel VM"
    if not (os.environ.get("CI") or os.environ.get("OVLINSPECT_VM")):
        return "kernel VMs take minutes: they run under CI, or with OVLINSPECT_VM=1"
    if os.geteuid() != 0:
        return "kernel VMs need root"
    if not (TOOL / "run").exists():
        return f"the kernel-vm tool is not at {TOOL}"
    if not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86_64 is not installed (Debian package qemu-system-x86)"
    for tool in ("busybox", "cpio"):
        if not shutil.which(tool) and not Path(f"/bin/{tool}").exists():
            return f"{tool} is not installed (needed to build the VM's initramfs)"
    return None


def debs(version: str) -> list[str] | str:
    """The package files of kernel ``version``, or why there are none."""
    line = ""
    if os.environ.get("OVLINSPECT_VM_FETCH"):
        r = subprocess.run([str(TOOL / "fetch"), version], capture_output=True, text=True, timeout=900,
                           env={**os.environ, "DEBS": str(DEBS)})
        line = next((x for x in r.stdout.splitlines() if x.startswith(version + " ")), "")
        if not line:
            return f"fetch {version} failed: {r.stderr.strip()[-300:]}"
        return line.split()[1:]
    if version.count(".") != 1:
        return f"bad kernel version {version!r}"
    pattern = re.compile(r"^linux-(image|binary|modules)-" + re.escape(version) + r"[.-].*-cloud-amd64_.*\.deb$")
    found = sorted(p.name for p in DEBS.glob("*.deb") if pattern.match(p.name)) if DEBS.is_dir() else []
    binary = [f for f in found if f.startswith("linux-binary-")]
    modules = [f for f in found if f.startswith("linux-modules-")]
    files = (binary[-1:] + modules[-1:]) if binary else [f for f in found if f.startswith("linux-image-")][-1:]
    if not files:
        return (f"no Debian kernel package for {version} in {DEBS} (run {TOOL}/fetch {version}, "
                "or set OVLINSPECT_VM_FETCH=1)")
    return [str(DEBS / f) for f in files]


def snapshot() -> str:
    """A copy of the project the VM can read (/tmp/kvm-* is bound into it)."""
    dest = tempfile.mkdtemp(prefix="kvm-ovlinspect-", dir="/tmp")
    for part in ("ovlinspect", "tests", "pyproject.toml"):
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, Path(dest) / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, Path(dest) / part)
    return dest


def run_tests(version: str, selection: str, timeout: int = 1500,
              files: list[str] | str | None = None) -> tuple[int, str, str, float]:
    """Boot kernel ``version`` and run ``pytest -q SELECTION`` on a copy of the project.

    ``files``: the kernel's packages (:func:`debs`), found here when not given.  Returns (the
    tool's exit status, the last pytest summary line or "", the output's tail, seconds).
    Raises LookupError with the reason when the kernel cannot be had.
    """
    files = debs(version) if files is None else files
    if isinstance(files, str):
        raise LookupError(files)
    snap = snapshot()
    start = time.monotonic()
    try:
        command = (f"cd {snap} && export PYTHONPATH={snap} && "
                   f"{sys.executable} -m pytest -q -p no:cacheprovider {selection} 2>&1 | tail -80")
        r = subprocess.run([str(TOOL / "run"), "--timeout", str(timeout), *files, "--", command],
                           capture_output=True, text=True, timeout=timeout + 300)
    finally:
        shutil.rmtree(snap, ignore_errors=True)
    summary = [line for line in r.stdout.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    return r.returncode, (summary[-1].strip() if summary else ""), r.stdout + r.stderr[-2000:], (
        time.monotonic() - start)
