#!/usr/bin/env python3
"""The kernel-agreement tests inside every kernel of the matrix, as a table (run as root).

    python bench/kernel_matrix.py [--kernels 6.1,6.12,6.16,6.17,6.18,7.2] [--random N] [--fetch]

Each kernel is booted with ``../shared/tools/kernel-vm`` (QEMU) and runs, in one pytest
process: the option tests against real mounts, the probes, every row of the reference tables
(both mount APIs), the demos and N random stacks (``OVLK_EXAMPLES``).  Prints one
line per kernel: passed, failed, skipped, and the time.  ``--fetch`` downloads missing kernel
packages first.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "kernel"))

import vm  # noqa: E402

SUITE = ("tests/test_probe.py tests/test_profile.py tests/test_options.py tests/kernel/test_tables.py "
         "tests/kernel/test_demos.py tests/kernel/test_random.py")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", default="6.1,6.12,6.16,6.17,6.18,7.2")
    ap.add_argument("--random", type=int, default=200, help="random stacks per kernel")
    ap.add_argument("--fetch", action="store_true", help="download missing kernel packages")
    ns = ap.parse_args()
    os.environ["OVLINSPECT_VM"] = "1"
    reason = vm.skip_reason()
    if reason:
        print(f"cannot run: {reason}")
        return 2
    if ns.fetch:
        os.environ["OVLINSPECT_VM_FETCH"] = "1"
    os.environ["OVLK_EXAMPLES"] = str(ns.random)
    print(f"{'kernel':<8} {'passed':>7} {'failed':>7} {'skipped':>8} {'seconds':>8}  first failure")
    bad = 0
    for version in ns.kernels.split(","):
        try:
            rc, summary, out, seconds = vm.run_tests(version, SUITE, timeout=3600)
        except LookupError as e:
            print(f"{version:<8} {'-':>7} {'-':>7} {'-':>8} {'-':>8}  {e}")
            continue

        def count(word: str) -> int:
            m = re.search(r"(\d+) " + word, summary)
            return int(m.group(1)) if m else 0

        first = next((line[7:] for line in out.splitlines() if line.startswith("FAILED ")), "")
        if not summary:
            first = f"the VM did not run the tests (exit {rc})"
        bad += count("failed") + (0 if summary else 1)
        print(f"{version:<8} {count('passed'):>7} {count('failed'):>7} {count('skipped'):>8} "
              f"{seconds:>8.0f}  {first[:100]}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
