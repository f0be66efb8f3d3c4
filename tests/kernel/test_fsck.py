"""The read-only fsck (rules/fsck.py) against states made by real mounts, judged by the kernel.

A real mount (index=on, redirect_dir=on) copies up, renames directories, deletes files and
copies up hard links; then the world changes the way it does (a lower layer rebuilt without
some files, a tool that removed a whiteout or an xattr).  `check` must name what fsck.overlay
would repair, and every claim is checked on a real mount: what the whiteout hides, what the
redirected directory lists, readdir's d_ino against lstat's st_ino, which inode number an
upper file with a stale origin shows, and that the next index=on mount deletes the stale index
entry.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess

import pytest

from ovlinspect.cli import main
from ovlinspect.kernel.origin import layer_ids
from ovlinspect.rules.engine import Engine
from ovlinspect.sources.target import stack_from_args
from ovlinspect.live.mountapi import mount_overlay_legacy, umount

pytestmark = pytest.mark.kernel
OPTS = "index=on,redirect_dir=on"


def _check(l: str, u: str, w: str) -> dict[str, list[dict]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["check", "--json", "--lowerdir", l, "--upperdir", u, "--workdir", w, "-o", OPTS])
    found: dict[str, list[dict]] = {}
    for f in json.loads(out.getvalue())["findings"]:
        found.setdefault(f["rule"], []).append(f)
    return found


@contextlib.contextmanager
def mounted(l: str, u: str, w: str, m: str, options: str = OPTS):
    mount_overlay_legacy(m, l, u, w, options)
    try:
        yield m
    finally:
        umount(m)


def test_what_fsck_would_repair(tmpfs, klog):
    l, u, w, m = (os.path.join(tmpfs, n) for n in ("l", "u", "w", "m"))
    for d in (u, w, m, l):
        os.mkdir(d)
    for d in ("d", "a", "c"):
        os.mkdir(os.path.join(l, d))
    for name, text in (("d/f", "f"), ("d/g", "g"), ("a/x", "x"), ("c/y", "y"), ("h", "h"), ("k", "k")):
        with open(os.path.join(l, name), "w") as fp:
            fp.write(text)
    os.link(os.path.join(l, "h"), os.path.join(l, "h2"))
    with mounted(l, u, w, m):
        os.chmod(os.path.join(m, "d", "f"), 0o600)   # copy-up: keeps its lower inode number
        os.unlink(os.path.join(m, "d", "g"))          # a whiteout
        os.rename(os.path.join(m, "a"), os.path.join(m, "b"))   # redirect b -> a, whiteout a
        os.rename(os.path.join(m, "c"), os.path.join(m, "c2"))  # redirect c2 -> c, whiteout c
        os.chmod(os.path.join(m, "h"), 0o600)         # an indexed hard link copy-up
        os.chmod(os.path.join(m, "k"), 0o600)         # a copy-up (not indexed: one link)
    assert _check(l, u, w).keys() & {r for r in (
        "fsck-orphan-whiteout", "fsck-redirect-dangling", "fsck-redirect-duplicate",
        "fsck-impure-missing", "fsck-origin-stale", "fsck-index-stale")} == set()
    [entry] = [n for n in os.listdir(os.path.join(w, "index")) if not n.startswith("#")]
    # the world changes
    os.unlink(os.path.join(l, "d", "g"))              # the lower layer rebuilt without d/g
    shutil.rmtree(os.path.join(l, "a"))               # ... and without a/
    os.unlink(os.path.join(u, "c"))                   # a tool removed the whiteout of c
    os.removexattr(os.path.join(u, "d"), "trusted.overlay.impure")
    os.unlink(os.path.join(l, "k"))                   # the origin of the copied-up k is gone
    os.unlink(os.path.join(l, "h"))                   # the hard-linked lower file is gone,
    os.unlink(os.path.join(l, "h2"))
    os.unlink(os.path.join(u, "h"))                   # and its upper copy (a cleanup script)
    found = _check(l, u, w)
    paths = {rule: sorted(f["path"] for f in fs) for rule, fs in found.items()}
    assert paths["fsck-orphan-whiteout"] == ["/a", "/d/g"]
    assert paths["fsck-redirect-dangling"] == ["/b"]
    assert paths["fsck-redirect-duplicate"] == ["/c2"]
    assert paths["fsck-impure-missing"] == ["/d"]
    # the lower filesystem's UUID is known: from FS_IOC_GETFSUUID (Linux 6.7+), else from the
    # upper root's origin, which the index=on mount wrote (without it a failed decode would
    # prove nothing, and ovlinspect would not claim a stale origin)
    engine = Engine(stack_from_args(l, u, w, OPTS))
    assert layer_ids(engine)[1].uuid is not None
    assert paths["fsck-origin-stale"] == ["/k"]
    assert entry in found["fsck-index-stale"][0]["message"]
    # the kernel: what each finding claims
    st_k_upper = os.lstat(os.path.join(u, "k")).st_ino
    klog.new_lines()
    with mounted(l, u, w, m):
        assert "g" not in os.listdir(os.path.join(m, "d")) and not os.path.lexists(os.path.join(m, "d", "g"))
        assert not os.path.lexists(os.path.join(m, "a"))
        assert os.listdir(os.path.join(m, "b")) == []      # dangling: the lower content is gone
        assert os.listdir(os.path.join(m, "c")) == ["y"]    # duplicate: merged twice, and
        with pytest.raises(OSError) as e:                    # one inode keyed by the lower dir
            os.listdir(os.path.join(m, "c2"))
        assert e.value.errno == 116  # ESTALE
        d_ino = {e.name: e.inode() for e in os.scandir(os.path.join(m, "d"))}
        st_f = os.lstat(os.path.join(m, "d", "f")).st_ino
        assert os.lstat(os.path.join(m, "k")).st_ino == st_k_upper  # the stale origin ignored
    assert d_ino["f"] != st_f
    logged = klog.new_lines()
    predicted = found["fsck-index-stale"][0]["message"].split("logs '")[1].split("' and")[0]
    assert predicted in logged, (predicted, logged)
    msg = found["fsck-impure-missing"][0]["message"]
    assert f"d_ino {d_ino['f']} for 'f', lstat st_ino {st_f}" in msg
    with mounted(l, u, w, m):  # looked up first, the redirected one shows the lower content
        assert os.listdir(os.path.join(m, "c2")) == ["y"]
    # the index=on mount deleted the stale index entry (this test's own copy)
    assert entry not in os.listdir(os.path.join(w, "index"))  # deleted: the kernel agrees
    assert "fsck-index-stale" not in _check(l, u, w)
    # the repairs, applied to a copy: orphan whiteouts removed and impure set change nothing
    # a program sees, except that readdir's d_ino now agrees with st_ino
    u2, w2 = os.path.join(tmpfs, "u2"), os.path.join(tmpfs, "w2")
    subprocess.run(["cp", "-a", u, u2], check=True)
    os.mkdir(w2)
    os.unlink(os.path.join(u2, "d", "g"))
    os.unlink(os.path.join(u2, "a"))
    os.setxattr(os.path.join(u2, "d"), "trusted.overlay.impure", b"y")
    with mounted(l, u2, w2, m, "index=off,redirect_dir=on"):
        assert sorted(os.listdir(m)) == ["b", "c", "c2", "d", "k"]
        assert os.listdir(os.path.join(m, "d")) == ["f"]
        assert {e.name: e.inode() for e in os.scandir(os.path.join(m, "d"))}["f"] == \
            os.lstat(os.path.join(m, "d", "f")).st_ino
    found2 = _check(l, u2, w2)
    assert not {"fsck-orphan-whiteout", "fsck-impure-missing"} & found2.keys()
