#!/usr/bin/env python3
"""Random stacks against the running kernel: a matrix of agreements and disagreements.

Runs N random stacks (the generator of ``tests/kernel/test_random.py``: upper, lowers,
data-only layers, metacopy and redirects in every layer, redirect chains, whiteouts, opaque
y/x, both xattr namespaces, random options), each built on a fresh private tmpfs, mounted,
observed and compared with the engine's prediction, and prints a table: cases run, mounts the
kernel refused (compared too), agreements, disagreements by class, and the time taken.

    python bench/random_matrix.py [-n 1000] [--seed 1] [--save DIR] [--live] [--upper]

With ``--upper``, the stacks are those of ``test_random_stack_with_upper_state``: random lowers
mounted with an upper (index on/off, metacopy on/off, nfs_export, xino), real operations done
through the mount (chmod, write, rename, link, rm, rm -r + mkdir), unmounted, predicted from
the layers alone and compared with a fresh mount (st_ino/st_dev and the mount's log too); the
table then also counts the operations' outcomes and the upper state they left.

Needs root and overlay mounts (it moves into a private mount namespace first).  With
``--save DIR``, the stack file of the first case of every disagreement class is written
there (``<class>.toml``), with the disagreements as a comment, to reproduce it with
``ovlinspect build`` or a test case.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import traceback
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "kernel"))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import harness  # noqa: E402
from test_random import APIS, describe_ops, random_case, run_random, upper_case  # noqa: E402


def classify(res, dis) -> str:
    """A short class name for one disagreement (field, kernel answer, predicted answer)."""
    by_path = {p["path"]: p for p in (res.pred or {}).get("paths", [])}
    p = by_path.get(dis.path, {})
    where = ""
    meta = p.get("metadata") or {}
    layers = (res.pred or {}).get("layers", [])
    if isinstance(meta.get("layer"), int) and meta["layer"] < len(layers):
        where = f" [{layers[meta['layer']]['role']} {p.get('type')}]"
    fld = dis.field.split(" (")[0]
    live = " (live)" if dis.field.endswith("(live)") else ""
    if fld in ("data", "entries", "target"):
        k = "error" if isinstance(dis.kernel, str) and dis.kernel.startswith("<") else "value"
        return f"{fld}{live}: kernel and prediction differ ({k}){where}"
    return f"{fld}{live}: kernel {dis.kernel!r}, predicted {dis.predicted!r}{where}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--cases", type=int, default=1000, help="random stacks to run (default 1000)")
    ap.add_argument("--seed", type=int, default=None, help="seed (default: derandomized, as in CI)")
    ap.add_argument("--save", metavar="DIR", help="write one stack file per disagreement class here")
    ap.add_argument("--live", action="store_true", help="also compare the live-mount prediction")
    ap.add_argument("--stats", action="store_true", help="also count the kernel's answers (errnos)")
    ap.add_argument("--upper", action="store_true",
                    help="stacks with upper state made by real operations through a mount")
    ap.add_argument("--unpredicted-log", action="store_true",
                    help="with --upper: also count overlayfs log lines the engine did not predict "
                         "(the kernel log is the machine's: run it on a quiet machine)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every disagreeing case")
    args = ap.parse_args(argv)
    harness.LOG_UNPREDICTED = args.unpredicted_log
    reason = harness.kernel_unavailable_reason()
    if reason:
        print(f"random_matrix: {reason}", file=sys.stderr)
        return 2
    stats: Counter = Counter()
    classes: Counter = Counter()
    cases_by_class: Counter = Counter()
    first: dict[str, str] = {}
    times: list[float] = []
    answers: Counter = Counter()  # what the kernel answered, over every observed path
    ops: Counter = Counter()  # --upper: operation outcomes
    state: Counter = Counter()  # --upper: what the operations left in upper and work/index

    def one(case, api) -> None:
        t0 = time.monotonic()
        try:
            res, dis = run_random(case, api, live=args.live)
        except Exception as e:  # a crash of the engine or the CLI is a class of its own
            tb = traceback.extract_tb(e.__traceback__)
            frame = next((f for f in reversed(tb) if "/ovlinspect/" in f.filename), tb[-1])
            cls = f"crash: {type(e).__name__} in {os.path.basename(frame.filename)}:{frame.name}"
            stats["crashed"] += 1
            classes[cls] += 1
            cases_by_class[cls] += 1
            first.setdefault(cls, harness.case_toml(case) + f"\n# {type(e).__name__}: {str(e)[:300]}\n")
            times.append(time.monotonic() - t0)
            return
        times.append(time.monotonic() - t0)
        stats["run"] += 1
        if case.ops:
            for op, got in zip(case.ops, getattr(res.built, "op_results", [])):
                ops[f"{op[0]} {got}" if not got.startswith("mount") else got] += 1
            state.update(getattr(res.built, "op_state", {}))
        for o in res.obs.values():
            answers[f"lstat {o.errno or 'ok'}"] += 1
            if o.readdir_errno or o.open_errno:
                answers[f"readdir {o.readdir_errno}" if o.readdir_errno else f"open {o.open_errno}"] += 1
        if res.aliased:
            stats["aliased"] += 1
        if dis is None:
            stats["unavailable"] += 1
            return
        if res.mount_errno is not None:
            stats["mount refused"] += 1
        if not dis:
            stats["agree"] += 1
            return
        stats["disagree"] += 1
        seen = set()
        for x in dis:
            cls = classify(res, x)
            classes[cls] += 1
            if cls not in seen:
                cases_by_class[cls] += 1
                seen.add(cls)
            if cls not in first:
                text = harness.format_disagreements(f"a random stack ({api}, -o {case.options or '(defaults)'})",
                                                    dis)
                text += "\n" + describe_ops(case, res)
                first[cls] = harness.case_toml(case) + "\n" + "\n".join("# " + l for l in text.splitlines()) + "\n"
        if args.verbose:
            print(harness.format_disagreements(f"case {stats['run']} ({api})", dis, harness.case_toml(case)))

    @settings(max_examples=args.cases, derandomize=args.seed is None, deadline=None, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=upper_case() if args.upper else random_case(),
           api=st.just("legacy") if args.upper else st.sampled_from(APIS))
    def run(case, api) -> None:
        one(case, api)

    if args.seed is not None:
        run = seed(args.seed)(run)
    t0 = time.monotonic()
    run()
    total = time.monotonic() - t0
    n = stats["run"] + stats["crashed"]
    print(f"kernel {os.uname().release}; {n} random stacks in {total:.1f} s "
          f"({1000 * total / max(n, 1):.0f} ms each; slowest {max(times, default=0):.2f} s)")
    print(f"  {'cases':<28}{n:>6}")
    print(f"  {'mount refused (compared)':<28}{stats['mount refused']:>6}")
    print(f"  {'agreements':<28}{stats['agree']:>6}")
    print(f"  {'disagreements':<28}{stats['disagree']:>6}")
    print(f"  {'crashes':<28}{stats['crashed']:>6}")
    print(f"  {'with access-order paths':<28}{stats['aliased']:>6}  (ESTALE re-observed alone)")
    if stats["unavailable"]:
        print(f"  {'no prediction (CLI)':<28}{stats['unavailable']:>6}")
    if classes:
        print("\n  cases  fields  class")
        for cls, count in sorted(classes.items(), key=lambda kv: (-cases_by_class[kv[0]], kv[0])):
            print(f"  {cases_by_class[cls]:>5}  {count:>6}  {cls}")
    if ops:
        print("\n  operations through the mount (outcome):")
        for k, v in sorted(ops.items(), key=lambda kv: -kv[1]):
            print(f"  {v:>7}  {k}")
        print("\n  upper state they left (objects, over all stacks):")
        for k, v in sorted(state.items(), key=lambda kv: -kv[1]):
            print(f"  {v:>7}  {k}")
    if args.stats:
        print("\n  kernel answers over all observed paths:")
        for k, v in sorted(answers.items(), key=lambda kv: -kv[1]):
            print(f"  {v:>7}  {k}")
    if args.save and first:
        os.makedirs(args.save, exist_ok=True)
        for i, (cls, text) in enumerate(sorted(first.items())):
            name = re.sub(r"[^A-Za-z0-9]+", "-", cls).strip("-")[:80]
            with open(os.path.join(args.save, f"{i:02d}-{name}.toml"), "w") as fh:
                fh.write(f"# class: {cls}\n" + text)
        print(f"\n  stack files of the first case of each class in {args.save}/")
    return 1 if stats["disagree"] or stats["crashed"] else 0


if __name__ == "__main__":
    sys.exit(main())
