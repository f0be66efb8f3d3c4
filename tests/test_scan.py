"""`check`'s own walk (ovlinspect/rules/scan.py) against the engine's general walk.

The lean walk must give byte-identical `check` output, text and JSON: the same findings, in
the same order, with the same words, and the same count of paths.  Compared here without
root on in-memory layers: 300 random stacks (the generator of tests/kernel/test_random.py),
every demo, and every row of the reference tables (each a stack with a problem injected);
tests/kernel/test_scan_disk.py does the same on disk layers (the lean reader).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "kernel"))

from harness import case_stack, case_toml, run_cli  # noqa: E402
from test_random import random_case  # noqa: E402
from test_tables import CASES  # noqa: E402

import ovlinspect.rules.scan as scan  # noqa: E402
from ovlinspect.rules.engine import Engine  # noqa: E402
from ovlinspect.kernel.profile import parse_version, profile_for  # noqa: E402
from ovlinspect.sources.target import demo_names, demo_stack  # noqa: E402

PARAMS = {"metacopy": "N", "redirect_dir": "N", "redirect_always_follow": "Y", "index": "N",
          "nfs_export": "N", "xino_auto": "N"}
#: rules seen over the table rows and demos (the comparison must have met problems)
SEEN: Counter = Counter()


def _both(make_stack, version: str = "6.18") -> tuple[list, list]:
    """(engine.check, scan.check) of fresh engines on fresh copies of a stack: each as the
    list of (rule, path, message, layers) in order, followed by the count of paths."""
    out = []
    for run in (lambda e, p: e.check(p), scan.check):
        stack = make_stack()
        engine = Engine(stack, profile=profile_for(parse_version(version), chosen_by="test"))
        count = [0]
        findings = run(engine, lambda n: count.__setitem__(0, n))
        out.append([(f.rule, f.path, f.message, f.layers) for f in findings] + [count[0]])
        stack.close()
    return out[0], out[1]


def _memory(case):
    def make():
        stack = case_stack(case)
        stack.params = dict(PARAMS)
        return stack
    return make


@contextlib.contextmanager
def general_walk():
    """The CLI's `check` through the engine's general walk instead of the lean one."""
    lean = scan.check_findings
    scan.check_findings = lambda engine, progress=None, cancel=None: engine.check_findings(progress, cancel)
    try:
        yield
    finally:
        scan.check_findings = lean


def cli_outputs(argv: list[str]) -> tuple[list, list]:
    """The text and JSON output (and exit codes) of `check`, lean and general."""
    lean = [run_cli(["check", *argv]), run_cli(["check", "--json", *argv])]
    with general_walk():
        general = [run_cli(["check", *argv]), run_cli(["check", "--json", *argv])]
    return lean, general


@settings(max_examples=int(os.environ.get("OVL_SCAN_EXAMPLES", "300")), derandomize=True,
          deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=random_case())
def test_random_stacks_check_the_same(case) -> None:
    general, lean = _both(_memory(case))
    assert lean == general, case_toml(case)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_table_rows_check_the_same(case) -> None:
    general, lean = _both(_memory(case), "7.0" if case.since > (6, 18) else "6.18")
    assert lean == general
    SEEN.update(x[0] for x in general[:-1])


@pytest.mark.parametrize("name", demo_names())
def test_demos_check_the_same_byte_for_byte(name) -> None:
    general, lean = _both(lambda: demo_stack(name))
    assert lean == general
    SEEN.update(x[0] for x in general[:-1])
    lean_out, general_out = cli_outputs([f"demo:{name}"])
    assert lean_out == general_out
    assert lean_out[0][0] in (0, 1) and lean_out[0][1]  # a real report, not an error


def test_the_comparison_met_many_kinds_of_problem() -> None:
    """Not vacuous: the rows and demos compared above hold problems of many rules."""
    if len(SEEN) < 5:
        pytest.skip("run with the table and demo comparisons (not selected)")
    assert len(SEEN) >= 15, sorted(SEEN)


# ------------------------------------------------------- a composefs stack with every problem

from memstack import T, layer, metacopy  # noqa: E402

from ovlinspect.model.layers import MemoryLayer, Node  # noqa: E402
from ovlinspect.model.stack import Stack  # noqa: E402

U = b"user.overlay."
DIGEST = bytes.fromhex("00240001") + b"\xcd" * 32


def _objects() -> MemoryLayer:
    c = MemoryLayer(label="objects")
    for path, verity in [(b"aa/obj1", None), (b"aa/objv", (1, b"\xcd" * 32)), (b"aa/objw", (1, b"\xee" * 32)),
                         (b"aa/objn", None), (b"bb/x", None), (b"cc/y", None)]:
        c.add(tuple(path.split(b"/")), Node("file", 0o644, 18, verity=verity), b"d" * 18)
    c.add((b"aa", b"dirobj"), Node("dir", 0o755))
    c.add((b"aa", b"fifo18"), Node("fifo", 0o644, 18))
    c.add((b"aa", b"lnk"), Node("symlink", 0o777, 18, target=b"obj1"))
    return c


def _more_objects() -> MemoryLayer:
    """A second data-only layer: what the first one lacks (or holds as no regular file)."""
    e = MemoryLayer(label="more")
    for path in (b"ee/obj", b"aa/lnk", b"aa/deep/x"):
        e.add(tuple(path.split(b"/")), Node("file", 0o644, 18), b"e" * 18)
    e.add((b"ff",), Node("file", 0o644, 18), b"f" * 18)
    return e


def _problems_stack(options: str, upper: bool) -> Stack:
    mc = lambda red, size=18, value=b"": metacopy(red, size, value)  # noqa: E731
    meta = layer("meta", {
        **{f"/ok/f{i}": mc(b"/aa/obj1") for i in range(4)},
        "/ok/esc": ("file", {T + b"metacopy": b"", T + b"redirect": b"/aa/obj1",
                             T + b"overlay.metacopy": b""}, {"size": 18}),
        "/ok/nsdup": ("file", {T + b"metacopy": b"", T + b"redirect": b"/aa/obj1",
                               U + b"redirect": b"/elsewhere"}, {"size": 18}),
        "/ok/dig": mc(b"/aa/objv", value=DIGEST),
        "/ok/digwrong": mc(b"/aa/objw", value=DIGEST),
        "/ok/dignov": mc(b"/aa/objn", value=DIGEST),
        "/ok/hdr": mc(b"/aa/obj1", value=bytes.fromhex("00040000")),
        "/ok/badver": mc(b"/aa/obj1", value=bytes.fromhex("01040000")),
        "/ok/badlen": mc(b"/aa/obj1", value=bytes.fromhex("00050000")),
        "/ok/big": mc(b"/aa/obj1", value=bytes(70)),
        "/ok/short": mc(b"/aa/obj1", value=b"\0\0"),
        "/miss": mc(b"/aa/missing"),
        "/fifoobj": mc(b"/aa/fifo18"),
        "/second": mc(b"/ee/obj"),
        "/lnkobj": mc(b"/aa/lnk"),
        "/deepobj": mc(b"/aa/deep/x"),
        "/throughfile": mc(b"/ff/x"),
        "/missdir": mc(b"/aa/dirobj"),
        "/size": mc(b"/aa/obj1", size=99),
        "/inter": mc(b"/bb/x"),
        "/broken": mc(b"/cc/y"),
        "/rel": mc(b"obj1"),
        "/inval": mc(b"/aa//obj1"),
        "/dot": mc(b"/./aa/obj1"),
        "/dotdot": mc(b"/aa/../aa/obj1"),
        "/nul": mc(b"/aa/obj1\0junk"),
        "/noredirect": mc(None),
        "/ns": ("file", {U + b"metacopy": b"", U + b"redirect": b"/aa/obj1"}, {"size": 18}),
        "/redironly": ("file", {T + b"redirect": b"/aa/obj1"}, {"size": 18}),
        "/origin": ("file", {T + b"origin": b"\0"}, {"size": 3}),
        "/wh": "wh",
        "/xwh": ("file", {T + b"whiteout": b""}, {"size": 0}),
        "/opq": ("dir", {T + b"opaque": b"y"}),
        "/opq/a": b"a",
        "/xdir": ("dir", {T + b"opaque": b"x"}),
        "/xdir/gone": ("file", {T + b"whiteout": b""}, {"size": 0}),
        "/rdir": ("dir", {T + b"redirect": b"/bb"}),
        "/p1": b"plain",
        "/p2": b"",
        "/s": ("symlink", {}, {"target": b"p1"}),
        "/fifo": ("fifo", {}),
        "/aa": "dir",
        "/aa/obj1": mc(b"/aa/obj1"),
    })
    base = layer("base", {
        "/bb/x": b"intercepts",
        "/cc": "dir",
        "/wh": b"hidden",
        "/opq/b": b"b",
        "/xdir/gone": b"g", "/xdir/kept": b"k",
        "/stray": mc(None),
        "/p1": b"below",
        "/phantom": "wh",
        "/d": "dir", "/d/e": b"e",
    })
    up = layer("upper", {
        "/umc": mc(b"/aa/obj1"),
        "/ok": ("dir", {T + b"impure": b"y"}),
        "/ok/f0": b"copied up",
        "/p3": b"upper plain",
        "/d": ("dir", {T + b"redirect": b"/ok"}),
    }) if upper else None
    return Stack(lowers=[meta, base], data=[_objects(), _more_objects()], upper=up, options=options,
                 params=dict(PARAMS), workdir="/nonexistent/work" if upper else None)


PROBLEM_OPTIONS = ["metacopy=on", "metacopy=on,verity=on", "metacopy=on,verity=require",
                   "metacopy=on,redirect_dir=on", "metacopy=off", "userxattr"]


@pytest.mark.parametrize("upper", [False, True], ids=["no-upper", "upper"])
@pytest.mark.parametrize("options", PROBLEM_OPTIONS)
def test_every_problem_on_a_composefs_stack_checks_the_same(options: str, upper: bool) -> None:
    calls: Counter = Counter()
    clean = scan._Fast.clean

    def counted(self, scans, name):
        ok = clean(self, scans, name)
        calls[ok] += 1
        return ok

    scan._Fast.clean = counted
    try:
        general, lean = _both(lambda: _problems_stack(options, upper))
    finally:
        scan._Fast.clean = clean
    assert lean == general
    rules = {x[0] for x in general[:-1]}
    assert calls[True] and calls[False]  # both ways taken
    if options == "metacopy=on,verity=on" and not upper:
        assert {"lowerdata-missing", "metacopy-size-mismatch", "verity-failure", "metacopy-invalid",
                "shadowed-lowerdata", "lowerdata-redirect-broken", "metacopy-ignored",
                "redirect-ignored", "invalid-redirect", "metacopy-without-data",
                "xattr-namespace-mismatch"} <= rules, rules
