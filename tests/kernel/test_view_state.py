"""The origin/index/impure words of the layers table (report/state.py) against real mounts.

Each stack is made by real copy-ups through a mount (index=on or off), then the world changes
as users change it (a lower directory re-created, a lower copied to another filesystem); the
words ``explain`` shows under the upper layer are checked, and so is what they claim about
the kernel: an index entry present keeps hard links one inode, a missing one breaks them
apart, a stale directory origin is merged by path (nfs_export=off) or not at all (on).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil

import pytest

from ovlinspect.cli import main
from ovlinspect.live.mountapi import mount_overlay_legacy, umount

pytestmark = pytest.mark.kernel


def _explain(l: str, u: str, w: str, options: str, path: str) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["explain", "--color", "never", "--lowerdir", l, "--upperdir", u, "--workdir", w,
                   "-o", options, path])
    assert rc in (0, 1), out.getvalue()
    text = out.getvalue()
    table = text[text.index("\n  layers\n"):text.index("\n  why\n")]
    upper = table.split("\n    lower 1")[0]  # the upper layer's rows
    return [ln.split("→ ", 1)[1] for ln in upper.splitlines() if "→ " in ln]


def _stack(tmp: str) -> tuple[str, str, str, str]:
    l, u, w, m = (os.path.join(tmp, n) for n in ("l", "u", "w", "m"))
    for d in (l + "/usr/lib", u, w, m):
        os.makedirs(d)
    for name in ("usr/lib/libc.so", "f", "g"):
        with open(os.path.join(l, name), "w") as fp:
            fp.write(name + "\n")
    os.link(os.path.join(l, "f"), os.path.join(l, "hl"))
    return l, u, w, m


def _use(l, u, w, m, options: str) -> None:
    mount_overlay_legacy(m, l, u, w, options)
    try:
        with open(os.path.join(m, "f"), "a") as fp:  # a lower hard link copied up
            fp.write("more\n")
        os.chmod(os.path.join(m, "g"), 0o600)
        os.chmod(os.path.join(m, "usr/lib"), 0o700)  # a merged directory copied up
    finally:
        umount(m)


def _lstat(l, u, w, m, options: str, *paths: str) -> list[os.stat_result]:
    mount_overlay_legacy(m, l, u, w, options)
    try:
        return [os.lstat(m + p) for p in paths]
    finally:
        umount(m)


def test_index_present_keeps_hard_links_one_inode(tmpfs):
    l, u, w, m = _stack(tmpfs)
    _use(l, u, w, m, "index=on")
    states = _explain(l, u, w, "index=on", "/f")
    assert states[0] == "origin: matches lower 1 (l):/f", states
    assert states[1].startswith("index: present (index/") and "the same inode: 2 links" in states[1], states
    g = _explain(l, u, w, "index=on", "/g")
    assert g[1].startswith("index: none (its lower has one link"), g
    f, hl = _lstat(l, u, w, m, "index=on", "/f", "/hl")
    assert f.st_ino == hl.st_ino and f.st_size == hl.st_size  # the kernel: one inode


def test_index_missing_breaks_hard_links(tmpfs):
    l, u, w, m = _stack(tmpfs)
    _use(l, u, w, m, "index=on")
    for name in os.listdir(os.path.join(w, "index")):  # "cleaning" the workdir
        os.unlink(os.path.join(w, "index", name))
    states = _explain(l, u, w, "index=on", "/f")
    assert states[1].startswith("index: missing (index/"), states
    assert "hard links to its lower are not kept together" in states[1]
    f, hl = _lstat(l, u, w, m, "index=on", "/f", "/hl")
    assert f.st_ino != hl.st_ino and f.st_size != hl.st_size  # the kernel: two files


@pytest.mark.parametrize("nfs", [False, True])
def test_lower_directory_recreated(tmpfs, nfs):
    options = "index=on,nfs_export=on" if nfs else "index=on"
    l, u, w, m = _stack(tmpfs)
    _use(l, u, w, m, options)
    shutil.rmtree(os.path.join(l, "usr/lib"))  # a new lower directory at the same path
    os.mkdir(os.path.join(l, "usr/lib"))
    with open(os.path.join(l, "usr/lib/libnew.so"), "w") as fp:
        fp.write("new\n")
    states = _explain(l, u, w, options, "/usr/lib")
    assert states[0].startswith("origin: stale: the lower object changed: lower 1 (l):/usr/lib is a new "
                                "object"), states
    mount_overlay_legacy(m, l, u, w, options)
    try:
        listed = sorted(os.listdir(m + "/usr/lib"))
    finally:
        umount(m)
    # merged by path without nfs_export; not merged with it (the origin is verified)
    assert listed == ([] if nfs else ["libnew.so"])


def test_everything_restored_on_another_filesystem(tmpfs):
    l, u, w, m = _stack(tmpfs)
    _use(l, u, w, m, "index=off")
    import harness

    with harness.private_tmpfs() as other:
        l2, u2, w2, m2 = (os.path.join(other, n) for n in ("l", "u", "w", "m"))
        for src, dst in ((l, l2), (u, u2), (w, w2)):
            shutil.copytree(src, dst, symlinks=True)  # xattrs kept (copystat)
        os.mkdir(m2)
        states = _explain(l2, u2, w2, "index=off", "/g")
        assert states[0].startswith("origin: points to a filesystem that is not in this stack (uuid "), states
        before = _lstat(l, u, w, m, "index=off", "/g")[0]
        after = _lstat(l2, u2, w2, m2, "index=off", "/g")[0]
        # the kernel: the origin no longer decodes, the copied-up file shows its own inode number
        assert before.st_ino == os.lstat(os.path.join(l, "g")).st_ino
        assert after.st_ino == os.lstat(os.path.join(u2, "g")).st_ino


def test_lower_moved_upper_stays(tmpfs):
    """The handle still decodes, on the upper's filesystem, outside every layer: the kernel
    looks origins up in the lower layers only."""
    l, u, w, m = _stack(tmpfs)
    _use(l, u, w, m, "index=off")
    import harness

    with harness.private_tmpfs() as other:
        l2 = os.path.join(other, "l")
        shutil.copytree(l, l2, symlinks=True)
        states = _explain(l2, u, w, "index=off", "/g")
        assert states[0].startswith("origin: an object on the filesystem of upper 0 (upper), outside every "
                                    "layer"), states
        assert states[0].endswith("the kernel looks origins up in the lower layers only: it ignores this one")
        after = _lstat(l2, u, w, m, "index=off", "/g")[0]
        assert after.st_ino == os.lstat(os.path.join(u, "g")).st_ino
