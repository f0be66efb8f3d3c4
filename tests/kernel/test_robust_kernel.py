"""Issue 8 on real mounts: hostile mountpoints, unreadable entries, failing readdirs, refused mounts.

Every input here is made by the kernel itself (a mount on a directory with a hostile name, an
overlay whose readdir fails, a mode-000 file read by a user without the capability), so the
test fails if ovlinspect does not meet what a real machine gives it.
"""

from __future__ import annotations

import json
import os

import pytest

import harness
from harness import E, Case

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(*argv):
    return harness.run_cli(list(argv))


def one_line_error(rc, out, err):
    assert rc == 2, (rc, out, err)
    assert err.startswith("ovlinspect: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def no_raw_controls(text: str) -> None:
    bad = [c for c in text if c != "\n" and not c.isprintable()]
    assert not bad, f"raw control characters: {bad[:5]!r}"


def _two_lowers(tmp: str) -> str:
    for n in ("A", "B"):
        os.makedirs(os.path.join(tmp, n), exist_ok=True)
    with open(os.path.join(tmp, "A", "f"), "w") as f:
        f.write("A\n")
    return f"{tmp}/A:{tmp}/B"


#: Characters str.splitlines() splits on (besides \n, which mountinfo escapes as \012).
SPLITTERS = ["\r", "\f", "\v", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


def test_hostile_mountpoints(tmpfs):
    """Overlays mounted on directories named with every character splitlines() splits on, and
    one ending in \\r: `mounts` lists each exactly, `check` and `explain` find each, nothing
    raw reaches the terminal."""
    low = _two_lowers(tmpfs)
    mps = []
    for i, ch in enumerate(SPLITTERS + ["\x1b[2J", "end\r"]):
        mp = os.path.join(tmpfs, f"m{i}{ch}x" if not ch.endswith("\r") else f"m{i}{ch}")
        os.mkdir(mp)
        assert harness._mount(b"overlay", mp, b"overlay", 0, b"lowerdir=" + low.encode()) == 0
        mps.append(mp)
    rc, out, err = run("mounts", "--json")
    rows = json.loads(out)
    # exit 1 says some mount is unhealthy: none of ours (others may run tests meanwhile)
    assert rc in (0, 1), err
    assert all(r["health"] == "ok" for r in rows if r["mountpoint"] in mps), rows
    listed = {r["mountpoint"] for r in rows}
    assert set(mps) <= listed
    rc, out, err = run("mounts")
    assert rc in (0, 1), err  # 1: another overlay on this machine is unhealthy, as above
    no_raw_controls(out)
    for mp in mps:
        rc, out, err = run("explain", "--json", mp, "/f")
        assert rc == 0, err
        doc = json.loads(out)
        assert doc["source"] == mp and doc["paths"][0]["type"] == "file"
        rc, out, err = run("check", mp)
        assert rc == 0, err
        no_raw_controls(out)
    # a layer path with a trailing \r is that directory, not its \r-less twin
    twin = os.path.join(tmpfs, "L")
    os.makedirs(twin + "\r")
    os.makedirs(twin)
    with open(twin + "\r/only-in-cr", "w"):
        pass
    mp = os.path.join(tmpfs, "crlayer")
    os.mkdir(mp)
    assert harness._mount(b"overlay", mp, b"overlay", 0,
                          b"lowerdir=" + os.fsencode(twin + "\r") + b":" + os.fsencode(f"{tmpfs}/B")) == 0
    rc, out, err = run("explain", "--json", mp, "/only-in-cr")
    assert rc == 0, err
    assert json.loads(out)["paths"][0]["type"] == "file"


def test_readdir_failing_in_a_layer(tmpfs):
    """A layer that is itself an overlay directory whose readdir fails (an impure upper
    directory holding an entry whose lookup fails: EPERM from the kernel)."""
    case = Case("readdir-fails", [
        ("upper", "U", [E("/d", "dir", xattrs={"trusted.overlay.impure": "y"}),
                        *[E(f"/d/ok{i:04d}") for i in range(300)],
                        E("/d/x", size=4, xattrs={"trusted.overlay.metacopy": ""})]),
        ("lower", "A", [E("/a")]), ("lower", "B", [])])
    built = harness.build(case, os.path.join(tmpfs, "layers"))
    mp = os.path.join(tmpfs, "merged")
    assert harness.mount_errno(built, mp) is None
    with pytest.raises(OSError):  # the kernel's own answer: this directory cannot be listed
        os.listdir(os.path.join(mp, "d"))
    empty = os.path.join(tmpfs, "empty")
    os.mkdir(empty)
    err = one_line_error(*run("check", "--lowerdir", f"{mp}:{empty}"))
    assert "cannot read directory /d" in err and "Operation not permitted" in err
    err = one_line_error(*run("explain", "--lowerdir", f"{mp}:{empty}", "/d"))
    assert "cannot read directory /d" in err


def _run_as_nobody(*argv):
    """run_cli(argv) in a forked child that is uid/gid 65534 (modules already imported by a
    first run as root: the interpreter's own files are not readable by nobody here)."""
    run(*argv)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, json.dumps(run(*argv)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, data
    return json.loads(data)


def test_mode_000_file_with_user_xattr_as_non_root(tmpfs):
    """user.overlay.* xattrs of a file its reader may not read (mode 000, not its owner)."""
    lower = os.path.join(tmpfs, "A")
    os.makedirs(lower)
    f = os.path.join(lower, "secret")
    with open(f, "w"):
        pass
    os.setxattr(f, "user.overlay.metacopy", b"")
    os.chmod(f, 0)
    other = os.path.join(tmpfs, "B")
    os.makedirs(other)
    rc, out, err = _run_as_nobody("check", "-o", "userxattr", "--lowerdir", f"{lower}:{other}")
    one_line_error(rc, out, err)
    assert "/secret: cannot read its overlay xattrs: Permission denied" in err
    rc, out, err = _run_as_nobody("explain", "-o", "userxattr", "--lowerdir", f"{lower}:{other}", "/secret")
    one_line_error(rc, out, err)


def test_build_mount_refused_by_the_kernel(tmpfs):
    """One lower layer and no upper: the kernel refuses the mount (EINVAL); one line, exit 2."""
    f = os.path.join(tmpfs, "one.toml")
    with open(f, "w") as fh:
        fh.write('version = 1\n[[layer]]\nrole = "lower"\nname = "A"\n[[layer.entry]]\npath = "/f"\ntype = "file"\n')
    dest = os.path.join(tmpfs, "built")
    err = one_line_error(*run("build", f, dest, "--mount"))
    assert "the kernel refuses the mount" in err and "EINVAL" in err
    assert not os.path.ismount(os.path.join(dest, "merged"))
    # and the prediction agrees with the kernel
    rc, out, _ = run("explain", "--json", f, "/")
    assert json.loads(out)["mount_errno"] == "EINVAL"


def test_a_mount_in_a_copied_namespace_is_one_row(tmpfs):
    """A mount namespace copied from ours (unshare -m, systemd's PrivateTmp) holds the same
    overlay at the same place: `mounts` lists it once and names the other namespace."""
    import shutil
    import subprocess
    import time

    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    low = _two_lowers(tmpfs)
    mp = os.path.join(tmpfs, "merged")
    os.mkdir(mp)
    assert harness._mount(b"overlay", mp, b"overlay", 0, b"lowerdir=" + low.encode()) == 0
    # a private copy of this namespace (the mount propagates no further: --propagation private)
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "60"])
    try:
        ns = f"/proc/{proc.pid}/ns/mnt"
        deadline = time.monotonic() + 10
        while os.stat(ns).st_ino == os.stat("/proc/self/ns/mnt").st_ino:
            assert time.monotonic() < deadline, "unshare did not make a namespace"
            time.sleep(0.02)
        with open(f"/proc/{proc.pid}/mountinfo") as f:
            assert f" {mp} " in f.read()  # the kernel: the copy holds the mount at the same place
        rc, out, err = run("mounts", "--json")
        rows = [r for r in json.loads(out) if r["mountpoint"] == mp]
        assert len(rows) == 1, rows
        assert proc.pid in {a["pid"] for a in rows[0]["also_in"]} | {rows[0]["pid"]}
        rc, out, err = run("mounts")
        line = next(l for l in out.splitlines() if mp in l)
        assert "other mount namespace" in line
    finally:
        proc.kill()
        proc.wait()
