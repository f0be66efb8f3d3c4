"""Live mounts whose layer paths hold spaces, commas, colons, backslashes and tabs, mounted
with the legacy lowerdir= string and with the new mount API (lowerdir+/datadir+): the stack
read back from mountinfo must be the right one, and the prediction must match the kernel."""

from __future__ import annotations

import contextlib
import io
import json
import os

import pytest

from ovlinspect.live import mountapi
from ovlinspect.live.build import build_stack
from ovlinspect.cli import main
from ovlinspect.kernel.params import join_lowerdir
from ovlinspect.sources.target import demo_stack, live_stack

pytestmark = pytest.mark.kernel

WEIRD = ["a b", "c,d", "e:f", "g\\h", "i\tj"]


@pytest.mark.parametrize("api", ["legacy", "fsconfig"])
def test_weird_layer_paths(api: str, tmpfs: str) -> None:
    built = build_stack(demo_stack("seed"), os.path.join(tmpfs, "layers"))
    dirs = []
    for i, (_, _, d) in enumerate(built.dirs):
        new = os.path.join(tmpfs, f"L{i} {WEIRD[i % len(WEIRD)]}{WEIRD[(i + 2) % len(WEIRD)]}")
        os.rename(d, new)
        dirs.append(new)
    lowers, datas = dirs[:2], dirs[2:]
    target = os.path.join(tmpfs, "merged, with: odd\\name")
    os.mkdir(target)
    if api == "legacy":
        mountapi.mount_overlay_legacy(target, join_lowerdir(lowers, datas), options="metacopy=on")
    else:
        mountapi.mount_overlay_fsconfig(target, lowers, datas, options=[("metacopy", "on")])
    try:
        stack = live_stack(target)
        assert [l.path for l in stack.lowers] == lowers
        assert [l.path for l in stack.data] == datas
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(["explain", "--json", "--observe", target, "/", "/foo", "/bar", "/1e/abcdef",
                       "/etc/hostname"])
        assert rc == 0
        doc = json.loads(out.getvalue())
        assert [l["path"] for l in doc["layers"]] == dirs
        assert all(not p["mismatches"] for p in doc["paths"]), doc["paths"]
        foo = doc["paths"][1]
        assert foo["data"] == {"layer": 1, "path": "/1e/abcdef"}
        # what the kernel reads is B's shadowing file, byte for byte
        with open(os.path.join(target, "foo"), "rb") as f:
            with open(os.path.join(dirs[1], "1e", "abcdef"), "rb") as g:
                assert f.read() == g.read()
    finally:
        mountapi.umount(target, detach=True)
