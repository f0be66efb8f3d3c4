#!/usr/bin/env python3
"""Benchmark: `ovlinspect check` on a large composefs-like stack against getfattr.

Builds (as root, on a private tmpfs under /tmp; with --ext4 also on an ext4 image on a loop
device) a stack `lowerdir=meta:base::objects`: `meta` holds N metacopy files (sparse, with an
absolute redirect /xx/<hash>) spread over directories, `base` a smaller regular layer,
`objects` the object store.  Then, interleaved (A B C A B C, medians shown): `getfattr -R -d
-m -` over the regular layers (the floor: the same metadata read by a C tool), `check`'s
lean walk (ovlinspect/rules/scan.py, what the CLI runs), the engine's general walk
(`Engine.check`), and with --before TREE the general walk of another checkout; each check in
a fresh interpreter, timed in-process, with its peak RSS growth per entry.

    python bench/bench_check.py [--entries 300000] [--rounds 3] [--before TREE] [--ext4]

Each check also reports its CPU time (user + system, `time.process_time` in the child; for
getfattr from RUSAGE_CHILDREN): on a shared machine it is the steadier figure.

Measured 2026-12-05 (2 cores shared with other jobs, kernel 6.18, 330,000 regular-layer
entries), two runs of --entries 300000 (the second with --ext4):
  tmpfs  getfattr 3.99 s / 5.08 s wall, 3.70 / 3.73 s CPU
         check (lean walk)  5.29 / 5.43 s wall = 1.33x / 1.07x, CPU 1.42x / 1.41x, +43 B/entry
         engine.check (general walk) 4.00x / 4.07x
  ext4   getfattr 6.89 s wall, 5.37 s CPU (a sparse image on a loop device)
         check (lean walk)  8.87 s wall = 1.29x, CPU 1.28x, +43 B/entry; general walk 3.24x
The session before measured 2.10x on tmpfs (1.77x on a quiet machine).  What took it to
about 1.4x: the size of a composefs data file by one fstatat (no Node, no cache); whether a
regular layer intercepts a redirect asked once per first name (256 for an object store);
a directory's listing taken from the scan just made; regular files' nodes made in the scan
loop; Node no longer a frozen dataclass (its __init__ was 8% of the walk).  Where the rest
goes (py-spy): about three quarters in the five syscalls per entry (llistxattr, two
lgetxattr, the entry's lstat, the data file's stat, which getfattr does not make) and their
CPython wrappers, a quarter in the walk's own Python.
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


#: Run in a fresh interpreter per measurement: times one check of the stack in-process (the
#: code the CLI runs, without interpreter start-up) and its peak RSS growth.
CHILD = r"""
import os, resource, sys, time
sys.path.insert(0, sys.argv[1])
try:
    from ovlinspect.rules.engine import Engine
except ImportError:  # a checkout from before the engine was cut (--before)
    from ovlinspect.kernel.engine import Engine
from ovlinspect.sources.target import stack_from_args
walk, lowerdir = sys.argv[2], sys.argv[3]
stack = stack_from_args(lowerdir, options="metacopy=on")
engine = Engine(stack)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t, c = time.perf_counter(), time.process_time()
if walk == "lean":
    from ovlinspect.rules.scan import check
    findings = check(engine)
else:
    findings = engine.check()
dt, dc = time.perf_counter() - t, time.process_time() - c
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(dt, len(findings), (rss1 - rss0) * 1024, dc)
"""


def _children_cpu() -> float:
    """CPU time (user + system) of the finished children so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def measure(meta: str, base: str, objects: str, entries: int, rounds: int,
            variants: list[tuple[str, str, str]]) -> None:
    """A B C A B C...: getfattr and every (label, source tree, walk) variant in turn."""
    lowerdir = f"{meta}:{base}::{objects}"
    times: dict[str, list[float]] = {"getfattr": []}
    cpu: dict[str, list[float]] = {"getfattr": []}
    rss: dict[str, list[int]] = {}
    found: dict[str, int] = {}
    for _ in range(rounds):
        c = _children_cpu()
        t = time.perf_counter()
        subprocess.run(["getfattr", "-R", "-d", "-m", "-", meta, base],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times["getfattr"].append(time.perf_counter() - t)
        cpu["getfattr"].append(_children_cpu() - c)
        for label, tree, walk in variants:
            out = subprocess.run([sys.executable, "-c", CHILD, tree, walk, lowerdir],
                                 capture_output=True, text=True, check=True).stdout.split()
            times.setdefault(label, []).append(float(out[0]))
            found[label] = int(out[1])
            rss.setdefault(label, []).append(int(out[2]))
            cpu.setdefault(label, []).append(float(out[3]))
    g, gc = _median(times["getfattr"]), _median(cpu["getfattr"])
    print(f"  getfattr -R -d -m - (regular layers)  {g:6.2f}s  cpu {gc:6.2f}s "
          f"({g / entries * 1e6:.1f} us/entry; runs {', '.join(f'{x:.2f}' for x in times['getfattr'])})")
    for label, _, _ in variants:
        m, mc = _median(times[label]), _median(cpu[label])
        print(f"  {label:<37} {m:6.2f}s  cpu {mc:6.2f}s  = {m / g:.2f}x getfattr "
              f"({mc / gc:.2f}x in CPU time), {found[label]} findings, "
              f"peak RSS +{max(rss[label]) / entries:.0f} B/entry "
              f"(runs {', '.join(f'{x:.2f}' for x in times[label])})")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3, help="A B A B rounds (medians are shown)")
    ap.add_argument("--before", metavar="TREE",
                    help="also time the general walk of another checkout (e.g. /work/main)")
    ap.add_argument("--ext4", action="store_true",
                    help="also on ext4 (a sparse image on a loop device, inside the tmpfs)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (trusted.overlay.* xattrs)", file=sys.stderr)
        return 2
    here = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    variants = [("ovlinspect check (lean walk)", here, "lean"),
                ("engine.check (general walk)", here, "general")]
    if args.before:
        variants.append((f"engine.check of {args.before}", os.path.abspath(args.before), "general"))
    root = tempfile.mkdtemp(prefix="ovlbench-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8g", "tmpfs", root], check=True)
    loop_mnt = None
    try:
        places = [("tmpfs", os.path.join(root, "t"))]
        if args.ext4:
            img = os.path.join(root, "ext4.img")
            with open(img, "wb") as fh:
                fh.truncate(4 << 30)
            subprocess.run(["mkfs.ext4", "-q", "-N", str(args.entries * 3), img], check=True)
            loop_mnt = os.path.join(root, "e")
            os.mkdir(loop_mnt)
            subprocess.run(["mount", "-o", "loop", img, loop_mnt], check=True)
            places.append(("ext4 (loop)", os.path.join(loop_mnt, "s")))
        entries = args.entries + args.entries // 10
        for name, where in places:
            os.mkdir(where)
            t = time.perf_counter()
            meta, base, objects = build(where, args.entries)
            print(f"{name}: built {entries} regular-layer entries in {time.perf_counter() - t:.1f}s; "
                  f"medians of {args.rounds} interleaved rounds:")
            measure(meta, base, objects, entries, args.rounds, variants)
    finally:
        if loop_mnt is not None:
            subprocess.run(["umount", "-d", loop_mnt])
        if subprocess.run(["umount", root]).returncode:
            subprocess.run(["umount", "-l", root])  # something still looks at it: detach
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
