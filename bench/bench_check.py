#!/usr/bin/env python3
"""Benchmark: `ovlinspect check` on a large composefs-like stack against getfattr.

Builds (as root, on a private tmpfs under /tmp) a stack `lowerdir=meta:base::objects`:
`meta` holds N metacopy files (sparse, with an absolute redirect /xx/<hash>) spread over
directories, `base` a smaller regular layer, `objects` the object store.  Prints the time of
`check` (in-process, the same code the CLI runs), the time of
`getfattr -R -d -m '^trusted\\.overlay\\.'` over the regular layers, and the peak memory of
check per entry (tracemalloc peak and max RSS growth).

    python bench/bench_check.py [--entries 300000]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ovlinspect.rules.engine import Engine  # noqa: E402
from ovlinspect.sources.target import stack_from_args  # noqa: E402


def build(root: str, n: int) -> tuple[str, str, str]:
    meta, base, objects = (os.path.join(root, x) for x in ("meta", "base", "objects"))
    for d in (meta, base, objects):
        os.mkdir(d)
    per_dir = 1000
    for i in range(n):
        d = os.path.join(meta, f"d{i // per_dir:04d}")
        if i % per_dir == 0:
            os.mkdir(d)
        h = hashlib.sha256(str(i).encode()).hexdigest()
        f = os.path.join(d, f"f{i}")
        with open(f, "wb") as fh:
            fh.truncate(16)
        os.setxattr(f, "trusted.overlay.metacopy", b"")
        os.setxattr(f, "trusted.overlay.redirect", f"/{h[:2]}/{h[2:]}".encode())
        if i % 1000 != 999:  # all objects present but one in a thousand (missing: lowerdata-missing)
            od = os.path.join(objects, h[:2])
            os.makedirs(od, exist_ok=True)
            with open(os.path.join(od, h[2:]), "wb") as fh:
                fh.write(b"x" * 16)
    for i in range(n // 10):
        with open(os.path.join(base, f"b{i}"), "wb"):
            pass
    return meta, base, objects


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=300_000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (trusted.overlay.* xattrs)", file=sys.stderr)
        return 2
    root = tempfile.mkdtemp(prefix="ovlbench-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8g", "tmpfs", root], check=True)
    try:
        t = time.perf_counter()
        meta, base, objects = build(root, args.entries)
        entries = args.entries + args.entries // 10
        print(f"built {entries} regular-layer entries in {time.perf_counter() - t:.1f}s")

        t = time.perf_counter()
        subprocess.run(["getfattr", "-R", "-d", "-m", r"^trusted\.overlay\.", meta, base],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t_getfattr = time.perf_counter() - t

        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        stack = stack_from_args(f"{meta}:{base}::{objects}", options="metacopy=on")
        t = time.perf_counter()
        findings = Engine(stack).check()
        stack.close()
        t_check = time.perf_counter() - t
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        tracemalloc.start()
        stack = stack_from_args(f"{meta}:{base}::{objects}", options="metacopy=on")
        Engine(stack).check()
        stack.close()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

        print(f"getfattr -R -d over the regular layers: {t_getfattr:.2f}s")
        print(f"ovlinspect check:                       {t_check:.2f}s "
              f"({t_check / t_getfattr:.2f}x getfattr), {len(findings)} findings")
        print(f"peak traced memory: {peak / 1e6:.1f} MB = {peak / entries:.0f} bytes/entry")
        print(f"max RSS growth:     {(rss1 - rss0) / 1e3:.1f} MB = {(rss1 - rss0) * 1024 / entries:.0f} bytes/entry")
    finally:
        subprocess.run(["umount", root])
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
