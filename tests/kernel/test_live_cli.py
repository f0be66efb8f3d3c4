"""Live-mount commands: `mounts`, `--pid` (another mount namespace), bad live targets."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess

import pytest

from ovlinspect.build import build_stack
from ovlinspect.cli import main
from ovlinspect.sources import demo_stack

pytestmark = pytest.mark.kernel


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_mounts_lists_health(tmpfs: str) -> None:
    built = build_stack(demo_stack("seed-eio"), os.path.join(tmpfs, "layers"))
    target = os.path.join(tmpfs, "merged")
    os.mkdir(target)
    built.mount(target)
    try:
        rc, out, _ = run_cli(["mounts", "--json"])
        row = next(r for r in json.loads(out) if r["mountpoint"] == target)
        assert (row["lowers"], row["datas"], row["upper"]) == (2, 1, False)
        assert row["health"] == "warning"  # quick: the stack-level shadowing hazard
        rc, out, _ = run_cli(["mounts", "--json", "--deep"])
        row = next(r for r in json.loads(out) if r["mountpoint"] == target)
        assert row["health"] == "error" and "lowerdata-redirect-broken" in row["detail"]
    finally:
        built.umount_all()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_pid_reads_another_mount_namespace(tmpfs: str) -> None:
    built = build_stack(demo_stack("seed"), os.path.join(tmpfs, "layers"))
    target = os.path.join(tmpfs, "elsewhere")
    os.mkdir(target)
    script = f"mount -t overlay overlay -o lowerdir={built.lowerdir_string()},metacopy=on {target} && echo ok && exec sleep 60"
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ok"
        # not mounted in our namespace ...
        rc, _, err = run_cli(["check", target])
        assert rc == 2 and "not on an overlay mount" in err
        # ... but in the child's
        rc, out, err = run_cli(["explain", "--json", "--pid", str(proc.pid), target, "/foo"])
        assert rc == 0, err
        doc = json.loads(out)
        assert doc["paths"][0]["data"] == {"layer": 1, "path": "/1e/abcdef"}
        assert all(l["path"].startswith(f"/proc/{proc.pid}/root/") for l in doc["layers"])
    finally:
        proc.kill()
        proc.wait()


def test_relative_layer_paths_need_help(tmpfs: str) -> None:
    built = build_stack(demo_stack("seed"), os.path.join(tmpfs, "layers"))
    target = os.path.join(tmpfs, "merged")
    os.mkdir(target)
    rel = built.lowerdir_string().replace(os.path.join(tmpfs, "layers") + "/", "")
    cwd = os.getcwd()
    os.chdir(os.path.join(tmpfs, "layers"))
    try:
        from ovlinspect import mountapi

        mountapi.mount_overlay_legacy(target, rel, options="metacopy=on")
    finally:
        os.chdir(cwd)
    try:
        rc, _, err = run_cli(["check", target])
        assert rc == 2 and "relative" in err and "--layer-root" in err and err.count("\n") == 1
        rc, out, _ = run_cli(["check", "--json", "--layer-root", os.path.join(tmpfs, "layers"), target])
        assert rc == 1 and any(f["rule"] == "shadowed-lowerdata" for f in json.loads(out)["findings"])
    finally:
        mountapi.umount(target, detach=True)


def test_docker_overlay2_relative_short_links(tmpfs: str) -> None:
    """docker mounts `lowerdir=l/A:l/B` from its overlay2 root, upper absolute: found anyway."""
    from ovlinspect import mountapi

    root = os.path.join(tmpfs, "overlay2")
    for ident, content in (("base", b"base\n"), ("app", b"app\n"), ("ctr", b"ctr\n")):
        os.makedirs(os.path.join(root, ident, "diff"))
        with open(os.path.join(root, ident, "diff", ident), "wb") as f:
            f.write(content)
    os.makedirs(os.path.join(root, "ctr", "work"))
    os.mkdir(os.path.join(root, "l"))
    for short, ident in (("AAA", "app"), ("BBB", "base")):
        os.symlink(f"../{ident}/diff", os.path.join(root, "l", short))
    target = os.path.join(root, "ctr", "merged")
    os.mkdir(target)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        mountapi.mount_overlay_legacy(target, "l/AAA:l/BBB", upper=os.path.join(root, "ctr", "diff"),
                                      work=os.path.join(root, "ctr", "work"))
    finally:
        os.chdir(cwd)
    try:
        rc, out, err = run_cli(["explain", "--observe", target, "/base", "/app", "/ctr", "/"])
        assert rc == 0, err
        assert "docker's overlay2 layout" in out
        assert "MISMATCH" not in out and out.count("(matches the prediction)") == 4
    finally:
        mountapi.umount(target, detach=True)
