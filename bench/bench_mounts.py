#!/usr/bin/env python3
"""Benchmark: ``mounts --deep`` against ``check`` summed over the same mounts.

As root, in a private mount namespace (the mounts are invisible elsewhere and go away with
it): N overlay mounts (default 14) over read-only real trees (``/usr/include``,
``/usr/lib/python3``: read, never written) with an upper layer on a private tmpfs holding a
few changes each.  Then, each command in its own process, the time of ``mounts --deep`` and of
``check MOUNTPOINT`` for every mount, summed.  ``--profile FILE`` writes a cProfile of
``mounts --deep``.

    python bench/bench_mounts.py [--mounts 14] [--pythonpath DIR] [--profile FILE]

No timed asserts: figures only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def inside(args) -> int:
    import resource

    from ovlinspect.live import mountapi

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    tmp = tempfile.mkdtemp(prefix="ovlbench-")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", tmp], check=True)
    mounts = []
    try:
        for i in range(args.mounts):
            up, work, mnt = (os.path.join(tmp, f"{x}{i}") for x in ("u", "w", "m"))
            for d in (up, work, mnt):
                os.mkdir(d)
            os.makedirs(os.path.join(up, "linux"))
            with open(os.path.join(up, "linux", f"changed{i}.h"), "w") as f:
                f.write("/* changed */\n")
            os.mknod(os.path.join(up, "stdio.h"), 0o20000 | 0o600, 0)  # a whiteout
            mountapi.mount_overlay_legacy(mnt, "/usr/include:/usr/lib/python3", up, work, "")
            mounts.append(mnt)
        env = dict(os.environ, PYTHONPATH=args.pythonpath)

        def run(argv: list[str]) -> tuple[float, float, int, str]:
            c0, t = cpu(), time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "ovlinspect", *argv], env=env, cwd=args.pythonpath,
                               capture_output=True, text=True)
            return time.perf_counter() - t, cpu() - c0, p.returncode, p.stdout + p.stderr

        results = {}
        for rep in range(args.repeat):  # A B A B: mounts --deep, then the checks
            wall, c, rc, out = run(["mounts", "--deep", "--pid", str(os.getpid())])
            results.setdefault("deep", []).append((wall, c))
            if rep == 0:
                rows = [line for line in out.splitlines() if "/ovlbench-" in line]
                print(f"mounts --deep: exit {rc}, {len(rows)} rows of ours; first: {rows[0].strip()[:150] if rows else out[:300]}")
            total_w = total_c = 0.0
            for m in mounts:
                wall, c, rc, out = run(["check", m])
                total_w += wall
                total_c += c
            results.setdefault("check", []).append((total_w, total_c))
        import statistics

        dw = statistics.median(w for w, _ in results["deep"])
        dc = statistics.median(c for _, c in results["deep"])
        cw = statistics.median(w for w, _ in results["check"])
        cc = statistics.median(c for _, c in results["check"])
        n = args.mounts
        print(f"mounts --deep over {n} mounts: {dw:6.2f} s (CPU {dc:6.2f} s)")
        print(f"check x{n}, summed:           {cw:6.2f} s (CPU {cc:6.2f} s)   (each a process: start-up included)")
        print(f"ratio deep / summed checks:   {dw / cw:.2f} wall, {dc / cc:.2f} CPU")
        if args.profile:
            subprocess.run([sys.executable, "-m", "cProfile", "-o", args.profile, "-m", "ovlinspect", "mounts",
                            "--deep", "--pid", str(os.getpid())], env=env, cwd=args.pythonpath,
                           capture_output=True)
            print(f"profile of mounts --deep written to {args.profile}")
    finally:
        for m in reversed(mounts):
            mountapi.umount(m, detach=True)
        subprocess.run(["umount", "-l", tmp], check=False)
        os.rmdir(tmp)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mounts", type=int, default=14)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--pythonpath", default=ROOT)
    ap.add_argument("--profile", metavar="FILE")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside:
        sys.path.insert(0, args.pythonpath)
        return inside(args)
    if os.geteuid() != 0:
        print("needs root (overlay mounts in a private mount namespace)")
        return 0
    cmd = ["unshare", "-m", "--propagation", "private", sys.executable, os.path.abspath(__file__), "--inside",
           "--mounts", str(args.mounts), "--repeat", str(args.repeat), "--pythonpath", os.path.abspath(args.pythonpath)]
    if args.profile:
        cmd += ["--profile", os.path.abspath(args.profile)]
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())
