#!/usr/bin/env python3
"""Benchmark: ``explain`` of one path and ``check`` on a large composefs dump.

Generates (deterministically) a dump in the format ``composefs-info dump`` writes for a real
image: the root with a security.selinux xattr, a tree of directories, external files
(``SIZE ... ab/cdef... - DIGEST``), small files with inline content, symlinks, hard links
(``@`` mode), a few whiteouts and xattrs.  Then runs the CLI as a user would, each command in
its own process, and prints wall time and the child's peak RSS (``ru_maxrss``).

    python bench/bench_dump.py [--lines 141000] [--repeat 5] [--keep FILE] [--no-live]

As root it also materializes the dump's tree as a real directory on a private tmpfs (the
metadata layer mkcomposefs would write: metacopy files with absolute redirects, escaped
xattrs, the root's 256 whiteouts) with an object store of sparse files as the data-only
layer, and runs ``explain`` of the same path on those live layers, interleaved with the dump
run (A B A B, medians), printing the ratio.  ``check`` runs with every object present and
with an empty store (every external file's object missing: one finding and one cause each).

No timed asserts: figures only.  CPU time is printed besides wall time: on a loaded machine
it is the steadier figure.
"""

from __future__ import annotations

import argparse
import hashlib
import os
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


def run(argv: list[str] | None) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds, peak RSS in MB of the child, exit status) of one CLI run
    (``None``: the start-up floor, ``python -c "import ovlinspect.cli"``)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.chdir(ROOT)
        if argv is None:
            os.execve(sys.executable, [sys.executable, "-c", "import ovlinspect.cli"], env)
        os.execve(sys.executable, [sys.executable, "-m", "ovlinspect", *argv], env)
    _, status, usage = os.wait4(pid, 0)
    return (time.perf_counter() - t, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024,
            os.waitstatus_to_exitcode(status))


def object_store(dump: str, objects: str) -> int:
    """Every object the dump's external files name, as a sparse file of the right size (what
    a healthy image's store holds; tmpfs keeps no blocks for the holes).  Returns the count."""
    n = 0
    made: set[str] = set()
    with open(dump, "rb") as f:
        for raw in f:
            fields = raw.split(b" ", 11)
            if len(fields) < 11 or not fields[2].startswith(b"100") or fields[9] != b"-" \
                    or fields[8] == b"-" or fields[1] == b"0":
                continue
            rel = os.fsdecode(fields[8]).lstrip("/")
            d = os.path.join(objects, os.path.dirname(rel))
            if d not in made:
                os.makedirs(d, exist_ok=True)
                made.add(d)
            with open(os.path.join(objects, rel), "wb") as o:
                o.truncate(int(fields[1]))
            n += 1
    return n


def materialize(dump: str, where: str) -> str | None:
    """The dump's EROFS tree as a real directory, through the CLI as a user would do it
    (``export`` of the dump as a lone lower layer, then ``build``): the 256 root whiteouts as
    char devices, escaped overlay xattrs, each external file a sparse metacopy file with its
    ``trusted.overlay.metacopy`` and absolute ``trusted.overlay.redirect``.  This is the tree
    mkcomposefs writes into its image (mkcomposefs itself is not installed here, and no
    package of this machine provides it).  Returns the layer's directory, or None."""
    toml = os.path.join(where, "meta.toml")
    env = dict(os.environ, PYTHONPATH=ROOT)
    with open(toml, "wb") as out:
        r = subprocess.run([sys.executable, "-m", "ovlinspect", "export", "--lowerdir", dump],
                           stdout=out, cwd=ROOT, env=env)
    if r.returncode:
        return None
    built = os.path.join(where, "built")
    r = subprocess.run([sys.executable, "-m", "ovlinspect", "build", toml, built], cwd=ROOT,
                       env=env, stdout=subprocess.DEVNULL)
    os.unlink(toml)
    if r.returncode:
        return None
    (layer,) = os.listdir(built)
    return os.path.join(built, layer)


def measure(cases: list[tuple[str, list[str] | None]], repeat: int) -> dict[str, list[tuple]]:
    """Every case once per round, the rounds one after the other (A B A B ...)."""
    got: dict[str, list[tuple]] = {what: [] for what, _ in cases}
    for _ in range(repeat):
        for what, argv in cases:
            got[what].append(run(argv))
    return got


def line(what: str, runs: list[tuple], nlines: int | None = None, floor: int | None = None) -> str:
    wall = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    rss = max(r[2] for r in runs)
    codes = sorted({r[3] for r in runs})
    extra = ""
    if nlines:
        extra = (f", {rss * 1048576 / nlines:.0f} B/line of peak RSS, "
                 f"{(rss - floor) * 1048576 / nlines:.0f} B/line above the start-up floor")
    return (f"  {what:40s} median {wall:6.2f} s (CPU {cpu:5.2f} s)  peak RSS {rss:5d} MB"
            f"  (exit {','.join(map(str, codes))}){extra}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=141_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", metavar="FILE", help="write the dump here and keep it")
    ap.add_argument("--no-live", action="store_true",
                    help="skip the live-layer comparison (it needs root: a private tmpfs, "
                         "char devices and trusted.* xattrs)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mounted = False
        try:
            if not args.no_live and os.geteuid() == 0:
                # a private tmpfs for the object stores and the materialized layer
                subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "bench-dump", tmp],
                               check=True)
                mounted = True
            return _bench(args, tmp, mounted)
        finally:
            if mounted:
                subprocess.run(["umount", tmp], check=False)


def _bench(args, tmp: str, live: bool) -> int:
    dump = args.keep or os.path.join(tmp, "image.dump")
    target = generate(dump, args.lines)
    with open(dump, "rb") as f:
        nlines = sum(1 for _ in f)
    size = os.path.getsize(dump)
    empty = os.path.join(tmp, "empty-objects")  # every object missing
    os.mkdir(empty)
    full = os.path.join(tmp, "objects")
    os.mkdir(full)
    nobj = object_store(dump, full)
    print(f"dump: {nlines} lines, {size / 1e6:.1f} MB, {nobj} objects; explaining {target}")
    floor = measure([("floor", None)], 3)["floor"]
    floor_mb = max(r[2] for r in floor)
    print(line("python -c 'import ovlinspect.cli' (floor)", floor))

    meta = None
    if live:
        t = time.perf_counter()
        meta = materialize(dump, tmp)
        print(f"materialized the dump's tree (export + build) in {time.perf_counter() - t:.1f} s: {meta}")
    else:
        print("live layers: skipped (--no-live, or not root)")
    print("explain of one path, interleaved (A B A B ...):")
    cases = [("A dump  explain", ["explain", "--lowerdir", f"{dump}::{full}", target])]
    if meta:
        cases.append(("B live  explain", ["explain", "--lowerdir", f"{meta}::{full}", target]))
    got = measure(cases, args.repeat)
    for what, _ in cases:
        print(line(what, got[what]))
    if meta:
        a, b = got[cases[0][0]], got[cases[1][0]]
        print(f"  ratio dump/live: wall {statistics.median(r[0] for r in a) / statistics.median(r[0] for r in b):.2f}x, "
              f"CPU {statistics.median(r[1] for r in a) / statistics.median(r[1] for r in b):.2f}x, "
              f"peak RSS {max(r[2] for r in a) / max(r[2] for r in b):.2f}x  (target: <= 3x)")
    cases = [("A dump  explain --json", ["explain", "--json", "--lowerdir", f"{dump}::{full}", target])]
    if meta:
        cases.append(("B live  explain --json", ["explain", "--json", "--lowerdir", f"{meta}::{full}", target]))
    got = measure(cases, args.repeat)
    for what, _ in cases:
        print(line(what, got[what]))

    print(f"check (target: <= 300 B of peak RSS per dump line above the floor of {floor_mb} MB):")
    cases = [("dump, every object present", ["check", "--lowerdir", f"{dump}::{full}"]),
             ("dump, every object missing", ["check", "--lowerdir", f"{dump}::{empty}"]),
             ("dump, every object missing --json", ["check", "--json", "--lowerdir", f"{dump}::{empty}"])]
    got = measure(cases, max(1, args.repeat // 2))
    for what, _ in cases:
        print(line(what, got[what], nlines, floor_mb))
    if meta:
        cases = [("live, every object present", ["check", "--lowerdir", f"{meta}::{full}"]),
                 ("live, every object missing", ["check", "--lowerdir", f"{meta}::{empty}"])]
        got = measure(cases, 1)
        for what, _ in cases:
            print(line(what, got[what], nlines, floor_mb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
