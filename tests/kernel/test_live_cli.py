"""Live-mount commands: `mounts`, `--pid` (another mount namespace), bad live targets."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import time

import pytest

from harness import run_cli

from ovlinspect.live.build import build_stack
from ovlinspect.kernel.profile import profile_for_release
from ovlinspect.sources.target import demo_stack

pytestmark = pytest.mark.kernel

#: the seed demos have data-only layers (lowerdir A:B::C), which kernels before 6.5 lack
needs_data_only = pytest.mark.skipif(
    not profile_for_release(os.uname().release).data_only_layers,
    reason=f"the seed demos need data-only layers (6.5+), not in {os.uname().release}")



@needs_data_only
def test_mounts_lists_health(tmpfs: str) -> None:
    built = build_stack(demo_stack("seed-eio"), os.path.join(tmpfs, "layers"))
    target = os.path.join(tmpfs, "merged")
    os.mkdir(target)
    built.mount(target)
    try:
        # quick: a small stack is checked whole within the time given to each mount; the
        # EIO of /foo is an error (the kernel: `cat` fails), not an "ok" or a mere warning
        with pytest.raises(OSError) as failed:
            os.stat(os.path.join(target, "foo"))
        assert failed.value.errno == errno.EIO
        rc, out, _ = run_cli(["mounts", "--json"])
        row = next(r for r in json.loads(out) if r["mountpoint"] == target)
        assert (row["lowers"], row["datas"], row["upper"]) == (2, 1, False)
        assert rc == 1 and row["health"] == "error" and "lowerdata-redirect-broken" in row["detail"]
        assert "quick" not in row["detail"]
        # the mount is in this process's namespace: said so, not as the process that stood for
        # it (the first one found in it, "pid 2 (kthreadd)" on a host)
        assert row["own_namespace"] is True
        _, out, _ = run_cli(["mounts"])
        assert "this mount namespace" in next(x for x in out.splitlines() if target in x)
        rc, out, _ = run_cli(["mounts", "--json", "--deep"])
        row = next(r for r in json.loads(out) if r["mountpoint"] == target)
        assert row["health"] == "error" and "lowerdata-redirect-broken" in row["detail"]
        # a budget too small for the whole stack says how far it got
        from ovlinspect.live import mounts

        old, mounts.QUICK_SECONDS = mounts.QUICK_SECONDS, 0.0
        try:
            row = next(r for r in mounts.list_mounts(engines=False) if r["mountpoint"] == target)
        finally:
            mounts.QUICK_SECONDS = old
        assert "quick: the first" in row["detail"] and "--deep checks all" in row["detail"]
    finally:
        built.umount_all()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
@needs_data_only
def test_pid_reads_another_mount_namespace(tmpfs: str) -> None:
    """--pid: the layers are found on the host when they are there, under /proc/PID/root
    when only that process sees them; --observe reaches the mount through its namespace."""
    built = build_stack(demo_stack("seed"), os.path.join(tmpfs, "layers"))
    target = os.path.join(tmpfs, "elsewhere")
    hidden = os.path.join(tmpfs, "hidden")  # a tmpfs mounted only in the child's namespace
    target2 = os.path.join(tmpfs, "elsewhere2")
    for d in (target, hidden, target2):
        os.mkdir(d)
    layers = os.path.join(tmpfs, "layers")
    lower2 = built.lowerdir_string().replace(layers, hidden)
    script = (f"mount -t overlay overlay -o lowerdir={built.lowerdir_string()},metacopy=on {target} && "
              f"mount -t tmpfs tmpfs {hidden} && cp -a {layers}/. {hidden}/ && "
              f"mount -t overlay overlay -o lowerdir={lower2},metacopy=on {target2} && "
              "echo ok && exec sleep 60")
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ok"
        # not mounted in our namespace ...
        rc, _, err = run_cli(["check", target])
        assert rc == 2 and "not on an overlay mount" in err
        # ... and the one line says which --pid reaches it
        assert f"mount namespace of pid {proc.pid} " in err and f"use --pid {proc.pid}" in err
        assert err.count("\n") == 1
        # ... but in the child's; its layers exist on the host: read there
        rc, out, err = run_cli(["explain", "--json", "--pid", str(proc.pid), target, "/foo"])
        assert rc == 0, err
        doc = json.loads(out)
        assert doc["paths"][0]["data"] == {"layer": 1, "path": "/1e/abcdef"}
        assert all(l["path"].startswith(layers + "/") for l in doc["layers"])
        # layers only the child sees: read through its root
        rc, out, err = run_cli(["explain", "--json", "--observe", "--pid", str(proc.pid), target2,
                                "/foo", "/1e", "/"])
        assert rc == 0, err
        doc = json.loads(out)
        assert doc["paths"][0]["data"] == {"layer": 1, "path": "/1e/abcdef"}
        assert all(l["path"].startswith(f"/proc/{proc.pid}/root{hidden}/") for l in doc["layers"])
        # observed through the child's namespace (the hidden tmpfs is empty here)
        assert [p["mismatches"] for p in doc["paths"]] == [[], [], []]
        assert doc["paths"][0]["observed"]["type"] == "file"
        # a process that does not exist, or 0: one line, exit 2
        for bad in ("999999999", "0"):
            rc, _, err = run_cli(["explain", "--pid", bad, target, "/foo"])
            assert rc == 2 and "no such process" in err and err.count("\n") == 1
    finally:
        proc.kill()
        proc.wait()


@needs_data_only
def test_relative_layer_paths_need_help(tmpfs: str) -> None:
    built = build_stack(demo_stack("seed"), os.path.join(tmpfs, "layers"))
    target = os.path.join(tmpfs, "merged")
    os.mkdir(target)
    rel = built.lowerdir_string().replace(os.path.join(tmpfs, "layers") + "/", "")
    cwd = os.getcwd()
    os.chdir(os.path.join(tmpfs, "layers"))
    try:
        from ovlinspect.live import mountapi

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
    from ovlinspect.live import mountapi

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


@needs_data_only
def test_mounts_exit_status_and_needs_root(tmpfs: str) -> None:
    """`mounts` exits 1 on an unresolved mount; without root a trusted.* mount is `needs-root`."""
    built = build_stack(demo_stack("seed"), os.path.join(tmpfs, "layers"))
    target = os.path.join(tmpfs, "merged")
    os.mkdir(target)
    built.mount(target)
    rel_target = os.path.join(tmpfs, "relative")
    os.mkdir(rel_target)
    from ovlinspect.live import mountapi

    cwd = os.getcwd()
    os.chdir(os.path.join(tmpfs, "layers"))
    try:
        rel = built.lowerdir_string().replace(os.path.join(tmpfs, "layers") + "/", "")
        mountapi.mount_overlay_legacy(rel_target, rel, options="metacopy=on")
    finally:
        os.chdir(cwd)
    try:
        rc, out, _ = run_cli(["mounts", "--json", "--pid", str(os.getpid())])
        rows = {r["mountpoint"]: r for r in json.loads(out)}
        assert rows[rel_target]["health"] == "unresolved" and "relative" in rows[rel_target]["detail"]
        # the seed stack's /foo reads B's bytes, not C's: an error (quick mode checks it whole)
        assert rows[target]["health"] == "error" and rows[target]["pid"] == os.getpid()
        assert "shadowed-lowerdata" in rows[target]["detail"]
        assert rc == 1
        rc, out, _ = run_cli(["mounts", "--pid", str(os.getpid())])
        assert rc == 1 and "unresolved" in out
        # not root: the trusted.overlay.* xattrs are invisible; say so instead of "ok"/"warning"
        import ovlinspect.rules.engine  # noqa: F401  (the child cannot import from /root afterwards)
        import ovlinspect.sources.target  # noqa: F401
        from ovlinspect.live.mounts import list_mounts

        r, w = os.pipe()
        child = os.fork()
        if child == 0:
            try:
                os.close(r)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                rows = list_mounts(engines=False)
                os.write(w, json.dumps(rows).encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            text = f.read()
        os.waitpid(child, 0)
        rows = {x["mountpoint"]: x for x in json.loads(text)}
        assert rows[target]["health"] == "needs-root" and "root" in rows[target]["detail"]
    finally:
        mountapi.umount(rel_target, detach=True)
        built.umount_all()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_mounts_sees_a_user_and_mount_namespace(tmpfs: str) -> None:
    """An overlay mounted in a user+mount namespace (how rootless podman mounts) is listed,
    and `check` of its mountpoint says which --pid reaches it."""
    built = build_stack(demo_stack("whiteouts"), os.path.join(tmpfs, "layers"))
    target = os.path.join(tmpfs, "rootless")
    os.mkdir(target)
    script = (f"mount -t overlay overlay -o lowerdir={built.lowerdir_string()},userxattr {target} "
              "&& echo ok && exec sleep 60")
    proc = subprocess.Popen(["unshare", "-U", "-r", "-m", "--propagation", "private", "sh", "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        if line != "ok":
            pytest.skip(f"no overlay in a user namespace here: {proc.stderr.read().strip()[:200]}")
        assert os.readlink(f"/proc/{proc.pid}/ns/user") != os.readlink("/proc/self/ns/user")
        for _ in range(100):  # "ok" comes just before the exec of sleep
            with open(f"/proc/{proc.pid}/comm") as f:
                if f.read().strip() == "sleep":
                    break
            time.sleep(0.02)
        rc, out, err = run_cli(["mounts", "--json"])
        rows = [r for r in json.loads(out) if r["mountpoint"] == target]
        assert len(rows) == 1 and rows[0]["pid"] == proc.pid and rows[0]["comm"] == "sleep", rows
        assert rows[0]["mnt_ns"] != os.stat("/proc/self/ns/mnt").st_ino
        rc, _, err = run_cli(["check", target])
        assert rc == 2 and f"use --pid {proc.pid}" in err and err.count("\n") == 1
        rc, out, err = run_cli(["explain", "--json", "--observe", "--pid", str(proc.pid), target, "/"])
        assert rc == 0 and json.loads(out)["paths"][0]["mismatches"] == [], err
    finally:
        proc.kill()
        proc.wait()


def test_a_mount_on_top_of_the_overlay_is_named(tmpfs: str) -> None:
    """A volume (here a tmpfs) mounted inside the merged tree hides the overlay's entries there:
    `explain` says so for every path below it, and the kernel agrees (the file is the volume's)."""
    from ovlinspect.live import mountapi

    built = build_stack(demo_stack("whiteouts"), os.path.join(tmpfs, "layers"))
    target = os.path.join(tmpfs, "merged")
    os.mkdir(target)
    built.mount(target)
    try:
        sub = next(n for n in sorted(os.listdir(target)) if os.path.isdir(os.path.join(target, n)))
        with mountapi.private_tmpfs(os.path.join(target, sub)) as vol:
            with open(os.path.join(vol, "only-in-volume"), "w") as f:
                f.write("volume\n")
            assert os.listdir(os.path.join(target, sub)) == ["only-in-volume"]  # the kernel
            rc, out, _ = run_cli(["explain", "--json", target, f"/{sub}/only-in-volume", "/"])
            doc = json.loads(out)
            first, root = doc["paths"]
            assert first["errno"] == "ENOENT"  # the overlay has no such entry...
            assert first["covered_by"] == {"mountpoint": f"/{sub}", "fstype": "tmpfs", "source": "tmpfs"}
            assert root["covered_by"] is None
            rc, out, _ = run_cli(["explain", target, f"/{sub}/only-in-volume"])
            assert f"COVERED   /{sub} is a tmpfs mount" in out
    finally:
        built.umount_all()


def test_a_bind_mounted_file_names_its_source_as_findmnt_does(tmpfs: str) -> None:
    """A file bind-mounted over a merged path (docker's /etc/hosts): the text names the source
    as findmnt does, device[root], not the root glued to the device name (/dev/vda/tmp/...,
    which reads as a path that does not exist); the JSON keeps its documented joined form."""
    built = build_stack(demo_stack("whiteouts"), os.path.join(tmpfs, "layers"))
    target = os.path.join(tmpfs, "merged")
    os.mkdir(target)
    built.mount(target)
    try:
        name = next(os.path.relpath(os.path.join(d, n), target) for d, _, files in sorted(os.walk(target))
                    for n in sorted(files) if not os.path.islink(os.path.join(d, n)))
        os.makedirs(os.path.join(tmpfs, "ctr"))
        src = os.path.join(tmpfs, "ctr", "hosts")
        with open(src, "w") as f:
            f.write("bound\n")
        subprocess.run(["mount", "--bind", src, os.path.join(target, name)], check=True)
        try:
            with open(os.path.join(target, name)) as f:  # the kernel: the bound file is seen
                assert f.read() == "bound\n"
            rc, out, _ = run_cli(["explain", "--json", target, f"/{name}"])
            cover = json.loads(out)["paths"][0]["covered_by"]
            assert cover == {"mountpoint": f"/{name}", "fstype": "tmpfs", "source": "tmpfs/ctr/hosts"}
            rc, out, _ = run_cli(["explain", target, f"/{name}"])
            assert f"COVERED   /{name} is a tmpfs mount (tmpfs[/ctr/hosts]) on top" in out, out
        finally:
            subprocess.run(["umount", os.path.join(target, name)], check=True)
    finally:
        built.umount_all()
