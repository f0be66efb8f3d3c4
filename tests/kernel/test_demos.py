"""Every built-in demo, built into real layers, mounted, and observed: the live prediction
(`explain --observe` on the mountpoint) must agree with the kernel on every path, and the
described (in-memory) stack must predict the same as the live one."""

from __future__ import annotations

import contextlib
import io
import json
import os

import pytest

from ovlinspect.live.build import build_stack
from ovlinspect.cli import main
from ovlinspect.rules.engine import Engine
from ovlinspect.sources.target import demo_names, demo_stack
from ovlinspect.report.document import path_json

pytestmark = pytest.mark.kernel


def run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, out.getvalue()


def all_paths(engine: Engine) -> list[str]:
    return ["/" + b"/".join(r.path).decode("utf-8", "surrogateescape") for r in engine.walk()]


@pytest.mark.parametrize("name", demo_names())
@pytest.mark.parametrize("api", ["legacy", "fsconfig"])
def test_demo_agrees_with_the_kernel(name: str, api: str, tmpfs: str) -> None:
    stack = demo_stack(name)
    described = Engine(stack)
    paths = all_paths(described)
    assert len(paths) > 1
    built = build_stack(stack, os.path.join(tmpfs, "layers"))
    target = os.path.join(tmpfs, "merged")
    os.mkdir(target)
    built.mount(target, api=api)
    try:
        rc, out = run_cli(["explain", "--json", "--observe", target, *paths])
        assert rc == 0
        doc = json.loads(out)
        bad = {p["path"]: p["mismatches"] for p in doc["paths"] if p["mismatches"]}
        assert not bad, f"demo {name}: kernel and prediction disagree: {bad}"
        # the described stack predicts exactly what the live one does
        live = {p["path"]: {k: p[k] for k in ("errno", "type", "size", "mode", "open_errno", "entries",
                                             "kernel_log")} for p in doc["paths"]}
        for res in (described.explain(p) for p in paths):
            pj = path_json(described, res)
            want = dict(live[pj["path"]])
            if pj["type"] == "dir":  # a directory's st_size belongs to the filesystem
                want.pop("size")
            assert {k: pj[k] for k in want} == want, pj["path"]
    finally:
        built.umount_all()


def test_demo_check_findings_are_the_same_live(tmpfs: str) -> None:
    stack = demo_stack("seed")
    built = build_stack(stack, os.path.join(tmpfs, "layers"))
    target = os.path.join(tmpfs, "merged")
    os.mkdir(target)
    built.mount(target)
    try:
        rc_live, out_live = run_cli(["check", "--json", target])
        rc_demo, out_demo = run_cli(["check", "--json", "demo:seed"])
        assert rc_live == rc_demo == 1
        rules = lambda out: sorted((f["rule"], f["path"]) for f in json.loads(out)["findings"])  # noqa: E731
        assert rules(out_live) == rules(out_demo)
        assert ("shadowed-lowerdata", "/foo") in rules(out_live)
    finally:
        built.umount_all()
