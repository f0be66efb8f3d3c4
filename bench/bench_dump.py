#!/usr/bin/env python3
"""Benchmark: ``explain`` of one path and ``check`` on a large composefs dump.

Generates (deterministically) a dump in the format ``composefs-info dump`` writes for a real
image: the root with a security.selinux xattr, a tree of directories, external files
(``SIZE ... ab/cdef... - DIGEST``), small files with inline content, symlinks, hard links
(``@`` mode), a few whiteouts and xattrs.  Then runs the CLI as a user would, each command in
its own process, and prints wall time and the child's peak RSS (``ru_maxrss``).

    python bench/bench_dump.py [--lines 141000] [--repeat 3] [--keep FILE]

No timed asserts: figures only.  CPU time is printed besides wall time: on a loaded machine
it is the steadier figure.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def generate(path: str, lines: int) -> str:
    """Write a dump of about ``lines`` lines; return a deep path inside it (to explain)."""
    out = open(path, "w")
    out.write("/ 4096 40555 20 0 0 0 1695372970.944925700 - - - "
              "security.selinux=system_u:object_r:root_t:s0\\x00\n")
    n = 1
    target = "/"
    top = ["usr", "etc", "var", "opt", "srv"]
    for t in top:
        out.write(f"/{t} 4096 40755 8 0 0 0 1695372970.0 - - -\n")
        n += 1
    i = 0
    while n < lines:
        t = top[i % len(top)]
        d = f"/{t}/pkg{i:05d}"
        out.write(f"{d} 4096 40755 3 0 0 0 1695372970.{i % 1000000000} - - -\n")
        n += 1
        sub = f"{d}/lib"
        out.write(f"{sub} 4096 40755 2 0 0 0 1695372970.0 - - -\n")
        n += 1
        for j in range(40):
            h = hashlib.sha256(f"{i}/{j}".encode()).hexdigest()
            name = f"{sub}/file-{j:02d}.so.{i % 7}"
            k = j % 10
            if k < 6:
                size = 4096 + (i * 131 + j * 17) % 900000
                out.write(f"{name} {size} 100644 1 0 0 0 1695372970.{j} {h[:2]}/{h[2:]} - {h}"
                          " security.selinux=system_u:object_r:lib_t:s0\\x00\n")
            elif k < 8:
                content = f"inline-{i}-{j}\\n"
                size = len(f"inline-{i}-{j}\n")
                out.write(f"{name} {size} 100644 1 0 0 0 1695372970.{j} - {content} -\n")
            elif k == 8:
                out.write(f"{name} 12 120777 1 0 0 0 1695372970.{j} file-00.so.{i % 7} - -\n")
            else:
                out.write(f"{name} 0 @100644 1 0 0 0 1695372970.{j} {sub}/file-00.so.{i % 7} - -\n")
            n += 1
            if j == 5:
                target = name
        if i % 50 == 0:
            out.write(f"{d}/gone 0 20000 1 0 0 0 1.0 - - -\n")
            n += 1
        i += 1
    out.close()
    return target


def run(argv: list[str]) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds, peak RSS in MB of the child, exit status) of one CLI run."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "ovlinspect", *argv], env)
    _, status, usage = os.wait4(pid, 0)
    return (time.perf_counter() - t, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024,
            os.waitstatus_to_exitcode(status))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=141_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", metavar="FILE", help="write the dump here and keep it")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dump = args.keep or os.path.join(tmp, "image.dump")
        target = generate(dump, args.lines)
        with open(dump, "rb") as f:
            nlines = sum(1 for _ in f)
        size = os.path.getsize(dump)
        objects = os.path.join(tmp, "objects")  # an empty object store: every object missing
        os.mkdir(objects)
        lower = f"{dump}::{objects}"
        print(f"dump: {nlines} lines, {size / 1e6:.1f} MB; explaining {target}; --lowerdir {lower}")
        cases = [
            ("explain one path", ["explain", "--lowerdir", lower, target]),
            ("explain --json one path", ["explain", "--json", "--lowerdir", lower, target]),
            ("check", ["check", "--lowerdir", lower]),
            ("python -c pass (start-up floor)", None),
        ]
        for what, argv in cases:
            times, cpu, rss = [], [], []
            for _ in range(args.repeat):
                if argv is None:
                    t = time.perf_counter()
                    pid = os.fork()
                    if pid == 0:
                        os.execv(sys.executable, [sys.executable, "-c", "import ovlinspect.cli"])
                    _, status, usage = os.wait4(pid, 0)
                    s, c, r, rc = (time.perf_counter() - t, usage.ru_utime + usage.ru_stime,
                                   usage.ru_maxrss // 1024, 0)
                else:
                    s, c, r, rc = run(argv)
                times.append(s)
                cpu.append(c)
                rss.append(r)
            extra = ""
            if what == "check":
                extra = f", {max(rss) * 1024 * 1024 / nlines:.0f} B of peak RSS per dump line"
            print(f"{what:34s} median {statistics.median(times):6.2f} s (CPU {statistics.median(cpu):5.2f} s)"
                  f"  peak RSS {max(rss):5d} MB"
                  f"  (exit {rc}){extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
