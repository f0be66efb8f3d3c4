"""A composefs-style EROFS image, mounted for real, against what ``load_dump`` predicts.

The test describes one tree twice: as composefs-dump(5) text, and as a staging directory that
carries, written out by hand, the overlay xattrs composefs's image writer puts in its EROFS
image (metacopy + redirect, escaped whiteouts and their parent markers, escaped
``trusted.overlay.*`` xattrs, the opaque root and its 256 whiteouts).  ``mkfs.erofs`` turns the
staging directory into an image; when ``mkcomposefs`` is installed the image is also built
straight from the dump.  The image is loop-mounted and read with ``DiskLayer``; every path
must match the dump-described layer.  Then the image is stacked with an object directory as a
data-only layer (``lowerdir=erofs::objects``) and reads through the overlay must return the
object bytes.  Everything lives on a private tmpfs that is unmounted afterwards.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from ovlinspect.sources.composefs import ROOT_WHITEOUTS, load_dump, metacopy_value
from ovlinspect.model.layers import OVERLAY_PREFIXES, DiskLayer, Layer, Node, iter_tree


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mounts tmpfs, erofs and overlay)"
    if shutil.which("mkfs.erofs") is None:
        return "needs mkfs.erofs (apt-get install erofs-utils)"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "needs mount and umount (util-linux)"
    try:
        with open("/proc/filesystems") as f:
            known = {line.split()[-1] for line in f if line.strip()}
    except OSError as e:
        return f"cannot read /proc/filesystems: {e.strerror}"
    for fs in ("tmpfs", "erofs", "overlay"):
        if fs not in known:
            subprocess.run(["modprobe", fs], capture_output=True)
            with open("/proc/filesystems") as f:
                if fs not in {line.split()[-1] for line in f if line.strip()}:
                    return f"the kernel has no {fs} filesystem"
    return None


REASON = _unavailable()
pytestmark = [pytest.mark.kernel, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

DIGEST = "35d02f81325122d77ec1d11baba655bc9bf8a891ab26119a41c50fa03ddfb408"
PASSWD_OBJ = "35/d02f81325122d77ec1d11baba655bc9bf8a891ab26119a41c50fa03ddfb408"
PASSWD = b"root:x:0:0:root:/root:/bin/sh\n"
TOOL_OBJ = "ab/cdef0123"
TOOL = b"#!/bin/sh\necho object tool\n"
T = "1700000000.0"

DUMP = "\n".join(
    [
        f"/ 4096 40755 7 0 0 0 {T} - - - user.image=demo",
        f"/0a 0 40700 2 1000 1000 0 {T} - - - user.overlay.opaque=y",
        f"/bin 7 120777 1 0 0 0 {T} usr/bin - -",
        f"/dev 0 40755 2 0 0 0 {T} - - -",
        f"/dev/fifo 0 10644 1 0 0 0 {T} - - -",
        f"/dev/null 0 20666 1 0 0 259 {T} - - -",
        f"/etc 0 40755 2 0 0 0 {T} - - - trusted.overlay.opaque=y",
        f"/etc/empty 0 100600 1 0 0 0 {T} - - -",
        f"/etc/hostname 4 100644 1 0 0 0 {T} - box\\n -",
        f"/etc/passwd {len(PASSWD)} 100644 1 0 0 0 {T} {PASSWD_OBJ} - {DIGEST} user.note=kept",
        f"/usr 0 40755 3 0 0 0 {T} - - -",
        f"/usr/bin 0 40755 2 0 0 0 {T} - - -",
        f"/usr/bin/tool {len(TOOL)} 100755 2 0 0 0 {T} {TOOL_OBJ} - -",
        f"/usr/bin/tool2 {len(TOOL)} @100755 2 0 0 0 {T} /usr/bin/tool - -",
        f"/var 0 40755 2 0 0 0 {T} - - -",
        f"/var/gone 0 20644 1 0 0 0 {T} - - -",
    ]
) + "\n"


# ------------------------------------------------------------------------------ helpers


class Mounts:
    """Mounts made by the test, unmounted in reverse order."""

    def __init__(self) -> None:
        self.done: list[Path] = []

    def mount(self, target: Path, *args: str) -> subprocess.CompletedProcess:
        r = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
        if r.returncode == 0:
            self.done.append(target)
        return r

    def close(self) -> None:
        while self.done:
            target = self.done.pop()
            r = subprocess.run(["umount", str(target)], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def ws(tmp_path):
    """A private tmpfs holding everything the test builds, and the mounts made on it."""
    root = tmp_path / "ws"
    root.mkdir()
    mounts = Mounts()
    r = mounts.mount(root, "-t", "tmpfs", "-o", "mode=0700", "ovlinspect-test")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield root, mounts
    finally:
        mounts.close()


def setx(path: Path, name: str, value: bytes | str = b"") -> None:
    os.setxattr(path, name, value.encode() if isinstance(value, str) else value, follow_symlinks=False)


def stage_like_composefs(stage: Path) -> None:
    """The image of DUMP, written by hand the way composefs's EROFS writer lays it out."""
    stage.mkdir()
    os.chmod(stage, 0o755)
    setx(stage, "user.image", "demo")
    setx(stage, "trusted.overlay.opaque", "y")  # the writer's own root marker
    for name in ROOT_WHITEOUTS:
        if name == b"0a":  # the dump has its own /0a
            continue
        p = stage / name.decode()
        os.mknod(p, stat.S_IFCHR | 0o644, os.makedev(0, 0))
        os.chmod(p, 0o644)

    (stage / "0a").mkdir()
    os.chmod(stage / "0a", 0o700)
    os.chown(stage / "0a", 1000, 1000)
    setx(stage / "0a", "user.overlay.opaque", "y")  # user.* is never escaped

    os.symlink("usr/bin", stage / "bin")

    (stage / "dev").mkdir(mode=0o755)
    os.mkfifo(stage / "dev" / "fifo")
    os.chmod(stage / "dev" / "fifo", 0o644)
    os.mknod(stage / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(stage / "dev" / "null", 0o666)

    etc = stage / "etc"
    etc.mkdir()
    os.chmod(etc, 0o755)
    setx(etc, "trusted.overlay.overlay.opaque", "y")  # the dump's trusted.overlay.opaque, escaped
    (etc / "empty").touch()
    os.chmod(etc / "empty", 0o600)
    (etc / "hostname").write_bytes(b"box\n")  # inline content
    os.chmod(etc / "hostname", 0o644)
    passwd = etc / "passwd"
    with open(passwd, "wb") as f:
        f.truncate(len(PASSWD))  # no data in the image: a sparse file of the right size
    os.chmod(passwd, 0o644)
    setx(passwd, "trusted.overlay.metacopy", bytes([0, 36, 0, 1]) + bytes.fromhex(DIGEST))
    setx(passwd, "trusted.overlay.redirect", "/" + PASSWD_OBJ)
    setx(passwd, "user.note", "kept")

    (stage / "usr" / "bin").mkdir(parents=True)
    os.chmod(stage / "usr", 0o755)
    os.chmod(stage / "usr" / "bin", 0o755)
    tool = stage / "usr" / "bin" / "tool"
    with open(tool, "wb") as f:
        f.truncate(len(TOOL))
    os.chmod(tool, 0o755)
    setx(tool, "trusted.overlay.metacopy", b"")
    setx(tool, "trusted.overlay.redirect", "/" + TOOL_OBJ)
    os.link(tool, stage / "usr" / "bin" / "tool2")

    var = stage / "var"
    var.mkdir()
    os.chmod(var, 0o755)
    # a dump whiteout becomes an escaped xattr whiteout; its directory is marked
    setx(var, "trusted.overlay.overlay.whiteouts")
    setx(var, "user.overlay.whiteouts")
    setx(var, "trusted.overlay.overlay.opaque", "x")
    setx(var, "user.overlay.opaque", "x")
    gone = var / "gone"
    gone.touch()
    os.chmod(gone, 0o644)
    setx(gone, "trusted.overlay.overlay.whiteout")
    setx(gone, "user.overlay.whiteout")


def make_objects(objects: Path) -> None:
    for rel, data in ((PASSWD_OBJ, PASSWD), (TOOL_OBJ, TOOL)):
        p = objects / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def build_image(kind: str, work: Path) -> Path:
    img = work / f"{kind}.img"
    if kind == "staging":
        stage = work / "stage"
        stage_like_composefs(stage)
        r = subprocess.run(["mkfs.erofs", "--quiet", str(img), str(stage)], capture_output=True, text=True)
        if r.returncode != 0 and "quiet" in r.stderr:  # very old erofs-utils
            r = subprocess.run(["mkfs.erofs", str(img), str(stage)], capture_output=True, text=True)
    else:
        dump = work / "image.dump"
        dump.write_text(DUMP)
        r = subprocess.run(["mkcomposefs", "--from-file", str(dump), str(img)], capture_output=True, text=True)
    assert r.returncode == 0, f"{kind}: {r.stderr.strip()}"
    return img


def relevant(n: Node) -> tuple:
    """What the overlay looks at in a lower layer entry (directory sizes are EROFS's own)."""
    return (
        n.kind,
        oct(n.mode),
        None if n.is_dir else n.size,
        n.uid,
        n.gid,
        n.rdev,
        n.target,
        tuple(sorted(n.xattrs)),
    )


def tree(layer: Layer, root: Node | None = None) -> dict:
    out = {(): relevant(root or layer.node(()))}
    out.update((p, relevant(n)) for p, n in iter_tree(layer))
    return out


def disk_root(path: Path) -> Node:
    """The layer root as the kernel reports it, read by path.

    ``DiskLayer.node(())`` reads the root's xattrs through ``/proc/self/fd/N`` without
    following that link, so it sees none; the root's ``trusted.overlay.opaque=y`` is read here
    directly instead.
    """
    st = os.lstat(path)
    xs = []
    for key in os.listxattr(path):
        bkey = os.fsencode(key)
        if bkey.startswith(OVERLAY_PREFIXES):
            xs.append((bkey, os.getxattr(path, key)))
    return Node("dir", stat.S_IMODE(st.st_mode), st.st_size, st.st_uid, st.st_gid, xattrs=tuple(xs))


def builders() -> list:
    have = shutil.which("mkcomposefs") is not None
    return [
        "staging",
        pytest.param("mkcomposefs", marks=pytest.mark.skipif(not have, reason="mkcomposefs is not installed")),
    ]


# -------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", builders())
def test_dump_predicts_the_mounted_erofs_layer(ws, kind):
    root, mounts = ws
    img = build_image(kind, root)
    mnt = root / "erofs"
    mnt.mkdir()
    r = mounts.mount(mnt, "-t", "erofs", "-o", "ro,loop", str(img))
    if r.returncode != 0:  # file-backed EROFS (6.12+) needs no loop device
        r2 = mounts.mount(mnt, "-t", "erofs", "-o", "ro", str(img))
        if r2.returncode != 0:
            pytest.skip(f"cannot mount an EROFS image: {r.stderr.strip()} / {r2.stderr.strip()}")

    described = load_dump(DUMP, label="image")
    real = DiskLayer(str(mnt), "erofs")
    try:
        root_node = disk_root(mnt)
        assert relevant(real.node(()))[:7] == relevant(root_node)[:7]
        want, got = tree(described), tree(real, root_node)
        assert sorted(got) == sorted(want)
        assert got == want
        # spot checks of the mapping, on what the kernel reads from the image
        assert real.node((b"etc", b"passwd")).xattr(b"trusted.overlay.metacopy") == metacopy_value(bytes.fromhex(DIGEST))
        assert real.node((b"var", b"gone")).kind == "file"
        assert real.node((b"ff",)).is_whiteout_dev
        assert root_node.xattr(b"trusted.overlay.opaque") == b"y"
        assert real.read((b"etc", b"hostname")) == described.read((b"etc", b"hostname")) == b"box\n"
    finally:
        real.close()


@pytest.mark.parametrize("kind", builders())
def test_reads_through_the_overlay_come_from_the_object_store(ws, kind):
    root, mounts = ws
    img = build_image(kind, root)
    objects = root / "objects"
    make_objects(objects)
    mnt, ovl = root / "erofs", root / "merged"
    mnt.mkdir()
    ovl.mkdir()
    r = mounts.mount(mnt, "-t", "erofs", "-o", "ro,loop", str(img))
    if r.returncode != 0:
        r2 = mounts.mount(mnt, "-t", "erofs", "-o", "ro", str(img))
        if r2.returncode != 0:
            pytest.skip(f"cannot mount an EROFS image: {r.stderr.strip()} / {r2.stderr.strip()}")
    opts = f"ro,metacopy=on,redirect_dir=on,lowerdir={mnt}::{objects}"
    r = mounts.mount(ovl, "-t", "overlay", "-o", opts, "overlay")
    assert r.returncode == 0, f"overlay mount failed: {r.stderr.strip()}"

    described = load_dump(DUMP)
    # data comes from the object the dump names, whatever the image file holds
    assert (ovl / "etc" / "passwd").read_bytes() == PASSWD
    assert described.object_path((b"etc", b"passwd")).decode() == PASSWD_OBJ
    assert (ovl / "usr" / "bin" / "tool").read_bytes() == TOOL
    assert (ovl / "usr" / "bin" / "tool2").read_bytes() == TOOL
    assert described.object_path((b"usr", b"bin", b"tool2")).decode() == TOOL_OBJ
    assert os.lstat(ovl / "etc" / "passwd").st_size == described.node((b"etc", b"passwd")).size
    assert (ovl / "etc" / "hostname").read_bytes() == b"box\n"
    assert os.readlink(ovl / "bin") == "usr/bin"

    # the opaque root's 256 whiteouts hide nothing the dump has, and the object store's
    # directories (35/, ab/) are not listed
    dump_root = {e.path[0].decode() for e in described.entries.values() if len(e.path) == 1}
    assert sorted(os.listdir(ovl)) == sorted(dump_root)

    # the composefs overlay does not act on escaped xattrs: it shows them one level down,
    # so an outer overlay stacked on this mount sees a real xattr whiteout and opaque=x
    gone = ovl / "var" / "gone"
    assert stat.S_ISREG(os.lstat(gone).st_mode) and os.lstat(gone).st_size == 0
    assert os.getxattr(gone, "trusted.overlay.whiteout", follow_symlinks=False) == b""
    assert os.getxattr(ovl / "var", "trusted.overlay.opaque") == b"x"
    assert os.getxattr(ovl / "etc", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(ovl / "0a", "user.overlay.opaque") == b"y"
    assert sorted(os.listdir(ovl / "etc")) == ["empty", "hostname", "passwd"]
