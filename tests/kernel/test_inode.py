"""st_ino and st_dev through the overlay: ovlinspect's prediction against real lstat.

Layers are made by real mounts (copy-ups of a file, a hard link, a directory; new files), then
the stack is mounted with xino=off/auto/on, on one tmpfs (same filesystem) and with a lower
layer on a second tmpfs (two filesystems), and every path's predicted ``st_ino`` is compared
with what ``lstat`` gives; ``st_dev`` is compared as a relation: "overlay" must be the merged
root's device, "pseudo:N" one device per fsid, different from the overlay's and the real one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil

import pytest

from ovlinspect.cli import main
from ovlinspect.rules.engine import Engine
from ovlinspect.kernel.inode import inode_of, xino_of
from ovlinspect.live.mountapi import mount_overlay_legacy, umount
from ovlinspect.sources.target import stack_from_args

import harness

pytestmark = pytest.mark.kernel

PATHS = ["/", "/f", "/h", "/g", "/d", "/d/x", "/n", "/nd", "/e", "/o"]


def _lower(l: str) -> None:
    os.makedirs(os.path.join(l, "d"))
    for name, text in (("f", "f\n"), ("g", "g\n"), ("d/x", "x\n")):
        with open(os.path.join(l, name), "w") as fp:
            fp.write(text)
    os.link(os.path.join(l, "f"), os.path.join(l, "h"))
    os.mkdir(os.path.join(l, "e"))
    os.mkdir(os.path.join(l, "o"))


def _use(l: str, u: str, w: str, m: str, options: str) -> None:
    """What a container does: chmod (copy-up) a file, a hard link, a directory; new entries."""
    mount_overlay_legacy(m, l, u, w, options)
    try:
        os.chmod(os.path.join(m, "g"), 0o600)
        os.chmod(os.path.join(m, "f"), 0o600)  # a lower hard link: broken apart unless indexed
        os.chmod(os.path.join(m, "d"), 0o700)
        with open(os.path.join(m, "n"), "w") as fp:
            fp.write("new\n")
        os.mkdir(os.path.join(m, "nd"))
        os.rmdir(os.path.join(m, "o"))
        os.mkdir(os.path.join(m, "o"))  # opaque: no lower
    finally:
        umount(m)


def _compare(lowerdir: str, u: str, w: str, m: str, options: str, klog=None) -> dict:
    engine = Engine(stack_from_args(lowerdir, u, w, options))
    predicted = {p: inode_of(engine, engine.explain(p)) for p in PATHS}
    if klog is not None:
        klog.new_lines()
    mount_overlay_legacy(m, lowerdir, u, w, options)
    try:
        real = {p: os.lstat(m + p if p != "/" else m) for p in PATHS}
    finally:
        umount(m)
    logged = [x for x in klog.new_lines() if x.startswith("overlay")] if klog is not None else []
    root_dev = real["/"].st_dev
    pseudo: dict[str, int] = {}
    for p in PATHS:
        info, st = predicted[p], real[p]
        assert info is not None, p
        if info.st_ino is not None:
            assert info.st_ino == st.st_ino, (options, p, info, st.st_ino)
        if info.st_dev == "overlay":
            assert st.st_dev == root_dev, (options, p, info)
        else:
            assert st.st_dev != root_dev, (options, p, info)
            assert pseudo.setdefault(info.st_dev, st.st_dev) == st.st_dev, (options, p, info)
    assert len(set(pseudo.values())) == len(pseudo)  # one pseudo device per fsid
    for line in xino_of(engine).log:
        if "xino" in line and klog is not None:
            assert line in logged, (line, logged)
    return {"engine": engine, "predicted": predicted, "real": real}


@pytest.mark.parametrize("index", ["off", "on"])
def test_one_filesystem(tmpfs, klog, index):
    l, u, w, m = (os.path.join(tmpfs, n) for n in ("l", "u", "w", "m"))
    for d in (u, w, m):
        os.mkdir(d)
    _lower(l)
    _use(l, u, w, m, f"index={index}")
    for xino in ("off", "auto", "on"):
        got = _compare(l, u, w, m, f"index={index},xino={xino}", klog)
        pred = got["predicted"]
        # a copy-up keeps its lower inode number; a new file has its own
        assert pred["/g"].st_ino == os.lstat(os.path.join(l, "g")).st_ino
        assert pred["/n"].st_ino == os.lstat(os.path.join(u, "n")).st_ino
        # the copied-up hard link: its own number unless the index shares it
        lower_f = os.lstat(os.path.join(l, "f")).st_ino
        assert (pred["/f"].st_ino == lower_f) == (index == "on")


def test_two_filesystems(tmpfs, klog):
    """A lower layer on another tmpfs: xino off gives pseudo devices, auto/on fsid bits."""
    with harness.private_tmpfs() as other:
        l1, l2 = os.path.join(tmpfs, "l"), os.path.join(other, "l2")
        u, w, m = (os.path.join(tmpfs, n) for n in ("u", "w", "m"))
        for d in (u, w, m):
            os.mkdir(d)
        _lower(l1)
        os.makedirs(os.path.join(l2, "e"))
        with open(os.path.join(l2, "only2"), "w") as fp:
            fp.write("2\n")
        _use(l1, u, w, m, "index=off")
        shutil.rmtree(os.path.join(l1, "e"))  # /e now comes from the second filesystem
        PATHS.append("/only2")
        try:
            for xino in ("off", "auto", "on"):
                got = _compare(f"{l1}:{l2}", u, w, m, f"xino={xino}", klog)
                x = xino_of(got["engine"])
                assert x.numfs == 2 and x.fsids[:3] == [0, 0, 1]
                info = got["predicted"]["/only2"]
                if xino == "off":
                    assert x.mode == -1 and info.st_dev == "pseudo:1"
                    assert got["predicted"]["/"].st_ino == 2  # allocated: the root first
                else:
                    assert x.bits == 2  # tmpfs: its own handle encoder, ilog2(1) + 2
                    assert info.st_ino == os.lstat(os.path.join(l2, "only2")).st_ino | (1 << 63)
        finally:
            PATHS.remove("/only2")


def test_copies_sharing_an_origin(tmpfs, klog):
    """An upper copied with its xattrs (cp -a of a copied-up file): both copies are keyed by one
    lower inode.  Alone each reports its st_ino; together the second lookup fails (ESTALE).
    `check` names the pair."""
    l, u, w, m = (os.path.join(tmpfs, n) for n in ("l", "u", "w", "m"))
    for d in (u, w, m):
        os.mkdir(d)
    _lower(l)
    _use(l, u, w, m, "index=off")
    with open(os.path.join(u, "g"), "rb") as src, open(os.path.join(u, "g2"), "wb") as dst:
        dst.write(src.read())
    os.setxattr(os.path.join(u, "g2"), "trusted.overlay.origin",
                os.getxattr(os.path.join(u, "g"), "trusted.overlay.origin"))
    inos = []
    for p in ("g", "g2"):  # one mount each: the other is not in the inode cache
        mount_overlay_legacy(m, l, u, w, "index=off")
        try:
            inos.append(os.lstat(os.path.join(m, p)).st_ino)
        finally:
            umount(m)
    assert inos[0] == inos[1] == os.lstat(os.path.join(l, "g")).st_ino
    mount_overlay_legacy(m, l, u, w, "index=off")
    try:
        os.lstat(os.path.join(m, "g"))
        with pytest.raises(OSError) as e:
            os.lstat(os.path.join(m, "g2"))
        assert e.value.errno == 116  # ESTALE
    finally:
        umount(m)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["check", "--json", "--lowerdir", l, "--upperdir", u, "--workdir", w, "-o", "index=off"])
    found = [f for f in json.loads(out.getvalue())["findings"] if f["rule"] == "inode-collision"]
    assert len(found) == 1 and {"/g", "/g2"} <= set(found[0]["message"].replace(" and ", " ").split())
    # explain shows the number, in text and JSON
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["explain", "--json", "--lowerdir", l, "--upperdir", u, "--workdir", w, "-o",
              "index=off", "/g2"])
    doc = json.loads(out.getvalue())
    assert doc["paths"][0]["inode"]["st_ino"] == inos[0]
    assert doc["paths"][0]["inode"]["st_dev"] == "overlay"
    assert doc["xino"]["same_fs"] is True


def test_two_ext4_filesystems_use_32_xino_bits(tmpfs, klog):
    """ext4 encodes 32-bit inode file handles: xino takes the 32 high bits (fsid << 33)."""
    from test_estale import ext4

    with ext4(tmpfs, os.path.join(tmpfs, "e1"), "1.img") as (_, e1), \
            ext4(tmpfs, os.path.join(tmpfs, "e2"), "2.img") as (_, e2):
        l, u, w, m = os.path.join(e2, "l"), os.path.join(e1, "u"), os.path.join(e1, "w"), \
            os.path.join(tmpfs, "m")
        for d in (u, w, m):
            os.mkdir(d)
        _lower(l)
        _use(l, u, w, m, "index=off")
        for xino in ("auto", "off"):
            got = _compare(l, u, w, m, f"xino={xino}", klog)
            x = xino_of(got["engine"])
            if xino == "auto":
                assert x.bits == 32
                h = got["predicted"]["/h"]
                assert h.st_ino == os.lstat(os.path.join(l, "h")).st_ino | (1 << 33)
            else:
                assert x.mode == -1 and got["predicted"]["/h"].st_dev == "pseudo:1"


@pytest.mark.parametrize("options", ["index=on", "index=on,nfs_export=on"])
def test_fs_uuid_unreadable_before_6_7(tmpfs, klog, monkeypatch, options):
    """Before 6.7 the kernel does not tell a filesystem's UUID (no FS_IOC_GETFSUUID: Debian's
    6.1, found by the random upper-state stacks in its VM).  It is then taken from the upper
    root's origin, which names the first lower root: without it every origin looks stale
    (a copied-up directory not merged with nfs_export=on, its st_ino the upper's)."""
    import ovlinspect.kernel.origin as origin

    l, u, w, m = (os.path.join(tmpfs, n) for n in ("l", "u", "w", "m"))
    for d in (u, w, m):
        os.mkdir(d)
    _lower(l)
    _use(l, u, w, m, options)
    monkeypatch.setattr(origin, "fs_uuid", lambda fd: None)
    got = _compare(l, u, w, m, options, klog)
    assert got["predicted"]["/d"].st_ino == os.lstat(os.path.join(l, "d")).st_ino
    res = got["engine"].explain("/d")
    assert res.errno is None and len(res.lowers) == 1  # merged with its lower
    assert not [f for f in res.findings if f.rule.startswith("stale-origin")]
