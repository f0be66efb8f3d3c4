#!/usr/bin/env python3
"""Benchmark-style fuzz run: the fuzz suite with 10x the examples, then the bounded inputs.

Runs tests/fuzz (hypothesis, derandomized unless --random) with ``--factor`` times the CI
examples per target, and prints per target: examples, time, and how the calls ended (exit
0/1/2); then the peak memory, and the figures of the inputs that used to be unbounded: a gzip
dump that inflates to 1 GB (refused at the cap), `check` on a 4 KB path.

    python bench/fuzz.py [--factor 10] [--random]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # this checkout's ovlinspect, not an installed one


def run_suite(factor: int, random: bool) -> int:
    sys.path.insert(0, os.path.join(ROOT, "tests", "fuzz"))
    import fuzzing

    os.environ["OVLINSPECT_FUZZ_EXAMPLES"] = str(fuzzing.EXAMPLES * factor)
    fuzzing.EXAMPLES *= factor
    if random:
        os.environ["OVLINSPECT_FUZZ_RANDOM"] = "1"
    import pytest

    import ovlinspect

    assert os.path.dirname(ovlinspect.__file__) == os.path.join(ROOT, "ovlinspect"), ovlinspect.__file__
    times: dict[str, float] = {}

    class Timer:
        def pytest_runtest_logreport(self, report):
            if report.when == "call":
                times[report.nodeid.split("::")[-1]] = (report.duration, report.outcome)

    t = time.monotonic()
    rc = pytest.main(["-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning",
                      os.path.join(ROOT, "tests", "fuzz")], plugins=[Timer()])
    total = time.monotonic() - t
    print(f"\nfuzz suite, {fuzzing.EXAMPLES} examples per target"
          f"{' (random seed)' if random else ' (derandomized)'}: {total:.1f} s, pytest exit {rc}")
    print(f"{'target':<28} {'time':>8}  outcome   calls by exit status")
    for name, (dur, outcome) in times.items():
        kind = {"test_fuzz_stack_files": "stackfile", "test_fuzz_composefs_dumps": "dump",
                "test_fuzz_inspect_json": "inspect", "test_fuzz_option_strings": "options",
                "test_fuzz_xattr_values": "xattrs", "test_fuzz_cli_argv": "argv"}.get(name, "")
        counts = {k.split(":")[1]: v for k, v in fuzzing.STATS.items() if k.startswith(kind + ":")} if kind else {}
        if name == "test_fuzz_mountinfo_lines":
            counts = {"parsed": fuzzing.STATS.get("mountinfo", 0)}
        shown = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        print(f"{name:<28} {dur:>7.1f}s  {outcome:<8}  {shown}")
    print(f"peak RSS of the run: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return rc


def measure(argv: list[str]) -> tuple[float, float, int, str]:
    """(seconds, peak MiB, exit status, last stderr line) of one ovlinspect run."""
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-c", "import resource, sys, runpy\n"
                        "sys.argv = ['ovlinspect'] + sys.argv[1:]\n"
                        "try:\n    runpy.run_module('ovlinspect', run_name='__main__')\n"
                        "except SystemExit as e:\n"
                        "    sys.stderr.write('RSS %d\\n' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
                        "    raise\n", *argv],
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True)
    took = time.monotonic() - t
    lines = p.stderr.strip().splitlines()
    rss = int(lines[-1].split()[1]) / 1024 if lines and lines[-1].startswith("RSS ") else float("nan")
    msg = lines[-2] if len(lines) > 1 else ""
    return took, rss, p.returncode, msg


def bounded_inputs() -> None:
    print("\nbounded inputs (each was unbounded before issue 8):")
    with tempfile.TemporaryDirectory(prefix="ovlbench-") as d:
        bomb = os.path.join(d, "bomb.dump")
        z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        with open(bomb, "wb") as f:
            f.write(z.compress(b"/ 4096 40755 2 0 0 0 0.0 - - -\n"))
            chunk = b"\0" * (1 << 20)
            for _ in range(1024):
                f.write(z.compress(chunk))
            f.write(z.flush())
        size = os.path.getsize(bomb)
        took, rss, rc, msg = measure(["check", "--lowerdir", bomb])
        print(f"  gzip dump of {size / 1024:.0f} KiB inflating to 1 GiB: {took:.1f} s, peak {rss:.0f} MiB, "
              f"exit {rc}: {msg}")
        p = "/" + "/".join(["d"] * 2040)
        toml = os.path.join(d, "deep.toml")
        with open(toml, "w") as f:
            for name in ("A", "B"):
                f.write(f'[[layer]]\nrole = "lower"\nname = "{name}"\n[[layer.entry]]\npath = "{p}"\ntype = "file"\n')
        took, rss, rc, _ = measure(["check", toml])
        print(f"  check of a stack file with a {len(p)}-byte path (2040 components): {took:.1f} s, "
              f"peak {rss:.0f} MiB, exit {rc}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--factor", type=int, default=10, help="times the CI examples per target")
    ap.add_argument("--random", action="store_true", help="a random seed instead of the fixed one")
    ap.add_argument("--no-suite", action="store_true", help="only the bounded-input figures")
    args = ap.parse_args()
    rc = 0 if args.no_suite else run_suite(args.factor, args.random)
    bounded_inputs()
    return rc


if __name__ == "__main__":
    sys.exit(main())
