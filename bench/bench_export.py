#!/usr/bin/env python3
"""Benchmark: ``export`` (and ``build``) of a large tree with real contents.

The tree is read, never written: by default ``/usr/share`` (tens of thousands of paths,
hundreds of MB of real files), or ``--tree DIR``.  Runs the CLI as a user would, each command
in its own process, and prints wall time, CPU time, peak RSS (``ru_maxrss``) and the output
size, for ``export`` with large files inline and with ``--objects``.  With ``--roundtrip``
(root) the exported stack is built with ``build --mount`` in a private mount namespace and
every file read through the kernel is compared with the same file read through an overlay of
the original tree.  ``--pythonpath`` runs another checkout (for a before/after figure).

    python bench/bench_export.py [--tree /usr/share] [--roundtrip] [--pythonpath /work/main]

No timed asserts: figures only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def run(argv: list[str], stdout: str, pythonpath: str) -> tuple[float, float, int, int, str]:
    """(wall s, CPU s, peak RSS MB, exit status, stderr) of one CLI run, stdout to a file."""
    env = dict(os.environ, PYTHONPATH=pythonpath)
    t = time.perf_counter()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        fd = os.open(stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(w, 2)
        os.chdir(pythonpath)
        os.execve(sys.executable, [sys.executable, "-m", "ovlinspect", *argv], env)
    os.close(w)
    err = b""
    while chunk := os.read(r, 65536):
        err += chunk
    os.close(r)
    _, status, usage = os.wait4(pid, 0)
    return (time.perf_counter() - t, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024,
            os.waitstatus_to_exitcode(status), err.decode(errors="replace").strip())


def count(tree: str) -> tuple[int, int, int]:
    paths = size = big = 0
    for d, dirs, files in os.walk(tree):
        paths += len(dirs) + len(files)
        for f in files:
            try:
                st = os.lstat(os.path.join(d, f))
            except OSError:
                continue
            if st.st_mode & 0o170000 == 0o100000:
                size += st.st_size
                big += st.st_size > 65536
    return paths, size, big


def kernel_view(mnt: str) -> dict[str, str]:
    out = {}
    for d, _, names in os.walk(mnt):
        for n in names:
            p = os.path.join(d, n)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            out[os.path.relpath(p, mnt)] = h.hexdigest()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", default="/usr/share")
    ap.add_argument("--roundtrip", action="store_true")
    ap.add_argument("--pythonpath", default=ROOT, help="the checkout to run (default: this one)")
    args = ap.parse_args()
    paths, size, big = count(args.tree)
    print(f"tree {args.tree}: {paths} paths, {size / 1e6:.0f} MB in regular files, {big} files over 64 KiB;"
          f" code from {os.path.abspath(args.pythonpath)}")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        empty = os.path.join(tmp, "empty")
        os.mkdir(empty)
        lower = f"{args.tree}:{empty}"
        inline = os.path.join(tmp, "inline.toml")
        objects = os.path.join(tmp, "objects")
        withobj = os.path.join(tmp, "objects.toml")
        for what, argv, out in (("export (large files inline)", ["export", "--lowerdir", lower], inline),
                                ("export --objects DIR", ["export", "--objects", objects, "--lowerdir", lower], withobj)):
            wall, cpu, rss, rc, err = run(argv, out, args.pythonpath)
            osize = os.path.getsize(out)
            print(f"{what:30s} {wall:7.1f} s (CPU {cpu:6.1f} s)  peak RSS {rss:6d} MB  output {osize / 1e6:7.1f} MB"
                  f"  RSS/output {rss * 1024 * 1024 / max(osize, 1):.3f}  exit {rc}")
            if err:
                print("   stderr:", err.splitlines()[-1][:200])
            if "objects" in argv[1:2] and os.path.isdir(objects):
                n = sum(len(fs) for _, _, fs in os.walk(objects))
                print(f"   object store: {n} files")
        if args.roundtrip:
            roundtrip(args, tmp, lower, withobj, objects)
    return 0


def roundtrip(args, tmp: str, lower: str, stack: str, objects: str) -> None:
    if os.geteuid() != 0:
        print("round trip: skipped (needs root to mount)")
        return
    # a private mount namespace for the mounts of the round trip
    code = f"""
import os, sys, json, subprocess
sys.path.insert(0, {ROOT!r})
from bench.bench_export import kernel_view, run
from ovlinspect.live import mountapi
orig = {tmp!r} + "/orig"
os.mkdir(orig)
mountapi.mount_overlay_legacy(orig, {lower!r}, None, None, "")
want = kernel_view(orig)
dest = {tmp!r} + "/built"
wall, cpu, rss, rc, err = run(["build", {stack!r}, dest, "--mount", "--objects", {objects!r}], "/dev/null", {args.pythonpath!r})
got = kernel_view(dest + "/merged")
same = sum(1 for k in want if got.get(k) == want[k])
print(f"build --objects --mount           {{wall:7.1f}} s (CPU {{cpu:6.1f}} s)  peak RSS {{rss:6d}} MB  exit {{rc}}")
print(f"round trip: {{same}} of {{len(want)}} files read through the kernel are byte-identical"
      f"{{'' if same == len(want) == len(got) else ' -- DIFFERENT: ' + str(sorted(set(want) ^ set(got))[:5] or [k for k in want if got.get(k) != want[k]][:5])}}")
"""
    subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", code], check=False)


if __name__ == "__main__":
    sys.exit(main())
