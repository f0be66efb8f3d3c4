"""Real composefs mounts: the EROFS layer detached, as ``mount.composefs`` leaves it.

Each test mounts the way libcomposefs does (``libcomposefs/lcfs-mount.c``): the image on a
read-only autoclear loop device (or, file-backed, no device at all), EROFS mounted on a
temporary ``.composefs.XXXXXX`` directory, the overlay made with the new mount API
(``source=composefs``, ``metacopy=on``, ``redirect_dir=on``, ``lowerdir+=`` the EROFS directory,
``datadir+=`` the object store, maybe ``upperdir``/``workdir``), then the EROFS mount detached
and its directory removed.  mountinfo then names a path that is gone; ``check``, ``explain
--observe`` and the view must still work, from the image found (loop device, next to the
object store, ``--image``), and agree with the kernel.  The CLI runs as a subprocess (the
worktree's copy, in this process's private mount namespace); what the user's mounts and loop
devices look like is compared before and after.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import harness
from test_composefs_erofs import (
    PASSWD,
    PASSWD_OBJ,
    REASON,
    TOOL,
    TOOL_OBJ,
    make_objects,
    stage_like_composefs,
)

from ovlinspect.live import mountapi

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

ROOT = str(Path(__file__).resolve().parents[2])
OPTS = [("metacopy", "on"), ("redirect_dir", "on")]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "ovlinspect", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def loops() -> dict[str, str]:
    """Loop devices in use: name -> backing file."""
    out = {}
    for name in os.listdir("/sys/block"):
        st = mountapi.loop_status(name) if name.startswith("loop") else None
        if st:
            out[name] = st["backing_file"]
    return out


def mountinfo() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return f.read().splitlines()


def wait_released(before: dict[str, str]) -> dict[str, str]:
    """Autoclear detaches a loop device from a workqueue: wait (bounded) for it."""
    for _ in range(50):
        now = loops()
        if now == before:
            return now
        time.sleep(0.05)
    return loops()


def mount_like_composefs(image: Path, objects: Path, target: Path, tmp: Path, *, loop: bool,
                         lowers_below: list[Path] = (), upper: Path | None = None,
                         work: Path | None = None, name_prefix: str = ".composefs.") -> str:
    """Mount as lcfs_mount_erofs_ovl does; returns the EROFS directory the mountinfo names."""
    tmp.mkdir(exist_ok=True)
    if loop:
        loop_fd, source = mountapi.loop_attach_readonly(image)
    else:
        loop_fd, source = None, str(image)
    imagemount = tempfile.mkdtemp(prefix=name_prefix, dir=tmp)
    try:
        mnt_fd = mountapi.fsmount_erofs(source)
        try:
            # attach it on the temporary directory, the way lcfs_mount_erofs() does
            mountapi.move_mount_fd(mnt_fd, imagemount)
        finally:
            os.close(mnt_fd)
    finally:
        if loop_fd is not None:
            os.close(loop_fd)
    target.mkdir(exist_ok=True)
    try:
        mountapi.mount_overlay_fsconfig(target, [imagemount, *lowers_below], [objects], upper, work,
                                        OPTS, source="composefs")
    finally:
        mountapi.umount(imagemount)
        os.rmdir(imagemount)
    return imagemount


@pytest.fixture
def ws(kernel_ready):
    with harness.private_tmpfs() as t:
        yield Path(t)


@pytest.fixture
def disk(ws):
    """A directory on a disk filesystem for images mounted file-backed (EROFS reads a backing
    file through its page cache, which tmpfs does not offer); removed after."""
    d = Path(tempfile.mkdtemp(prefix="ovlk-cfs-", dir="/var/tmp"))
    try:
        probe = d / "probe"
        probe.mkdir()
        (probe / "f").write_bytes(b"f")
        subprocess.run(["mkfs.erofs", "--quiet", str(d / "probe.img"), str(probe)], check=True,
                       capture_output=True)
        try:
            os.close(mountapi.fsmount_erofs(d / "probe.img"))
        except mountapi.MountError as e:
            pytest.skip(f"this kernel cannot mount an EROFS image file without a loop device: {e}")
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def composefs_tree(t: Path) -> tuple[Path, Path]:
    """The test image (built like composefs's writer lays it out) and its object store.

    The image root also holds a file named after this test's directory: an identical image
    on another loop device (another test run on this machine) is not this mount's."""
    work = t / "build"
    work.mkdir()
    stage = work / "stage"
    stage_like_composefs(stage)
    (stage / f"id-{t.name}").write_bytes(b"this test's image\n")
    img = work / "staging.img"
    subprocess.run(["mkfs.erofs", "--quiet", str(img), str(stage)], check=True, capture_output=True)
    objects = t / "repo" / "objects"
    make_objects(objects)
    return img, objects


PATHS = ["/", "/etc", "/etc/passwd", "/etc/hostname", "/usr/bin/tool", "/usr/bin/tool2", "/bin",
         "/var", "/var/gone", "/dev/null"]


def explain_observed(*args: str) -> dict:
    r = cli("explain", "--json", "--observe", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def no_mismatch(doc: dict) -> None:
    bad = {p["path"]: p["mismatches"] for p in doc["paths"] if p["mismatches"]}
    assert not bad, bad


# -------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("with_upper", [False, True], ids=["lower-only", "upper"])
def test_loop_device_mount_like_libcomposefs(ws, with_upper):
    img, objects = composefs_tree(ws)
    # the image lives away from the object store: only its loop device can lead to it
    away = ws / "elsewhere"
    away.mkdir()
    img = Path(shutil.move(str(img), away / "system.cfs"))
    os.unlink(objects / TOOL_OBJ)  # an object missing on purpose
    upper = work = None
    if with_upper:
        upper, work = ws / "upper", ws / "work"
        upper.mkdir(), work.mkdir()
        (upper / "new").write_bytes(b"new\n")
    loops_before = loops()
    merged = ws / "merged"
    gone = mount_like_composefs(img, objects, merged, ws / "tmp", loop=True, upper=upper, work=work)
    try:
        assert not os.path.exists(gone)
        line = next(l for l in mountinfo() if f" {merged} " in l)
        assert f"lowerdir+={gone}" in line and "datadir+=" in line and " composefs " in line
        ours = {n: b for n, b in loops().items() if n not in loops_before}
        assert list(ours.values()) == [str(img)], ours  # the mount's own device
        before = mountinfo()

        r = cli("check", str(merged))
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"{1 if with_upper else 0}  lower  system.cfs  {img}" in r.stdout
        dev = f"/dev/{next(iter(ours))}"
        assert f"found through the loop device {dev} (backing file {img})" in r.stdout
        assert "gone" in r.stdout and os.path.basename(gone) in r.stdout
        # the missing object is one cause, of /usr/bin/tool and its hard link, and nothing else
        lines = r.stdout.splitlines()
        errors = [(n, l.split()) for n, l in enumerate(lines) if l.startswith("error")]
        assert [e[1:] for _, e in errors] == [["lowerdata-missing", "2", "paths"]], r.stdout
        n = errors[0][0]
        assert [l.strip() for l in lines[n + 3:n + 5]] == ["/usr/bin/tool", "/usr/bin/tool2"], r.stdout

        doc = explain_observed(str(merged), *PATHS, *(["/new"] if with_upper else []))
        no_mismatch(doc)
        assert doc["layers"][1 if with_upper else 0]["path"] == str(img)
        by = {p["path"]: p for p in doc["paths"]}
        assert by["/etc/passwd"]["data"] == {"layer": 2 if with_upper else 1, "path": "/" + PASSWD_OBJ}
        assert by["/usr/bin/tool"]["observed"]["open_errno"] == by["/usr/bin/tool"]["open_errno"] != None
        assert (merged / "etc" / "passwd").read_bytes() == PASSWD

        assert mountinfo() == before  # nothing of the user's mounts changed
        assert loops() == {**loops_before, **ours}  # our detached reads left no device behind
    finally:
        mountapi.umount(merged)
    assert wait_released(loops_before) == loops_before  # autoclear: released with the mount


def test_file_backed_found_next_to_the_object_store_and_with_image(ws, disk):
    img, objects = composefs_tree(disk)
    images = objects.parent / "images"
    images.mkdir()
    img = Path(shutil.move(str(img), images / "3f2a.cfs"))
    other = ws / "other"  # an EROFS image that is not this mount's
    other.mkdir()
    (other / "x").write_bytes(b"x")
    wrong = ws / "wrong.img"
    subprocess.run(["mkfs.erofs", "--quiet", str(wrong), str(other)], check=True, capture_output=True)
    # a newer image of the same tree, one file changed: same root listing, tried first
    stage = disk / "stage2"
    stage_like_composefs(stage)
    (stage / f"id-{disk.name}").write_bytes(b"this test's image\n")
    (stage / "etc" / "hostname").write_bytes(b"box-2\n")
    newer = images / "9c1d.cfs"
    subprocess.run(["mkfs.erofs", "--quiet", str(newer), str(stage)], check=True, capture_output=True)
    os.utime(img, (1_600_000_000, 1_600_000_000))
    assert sorted(os.listdir(stage)) == sorted(os.listdir(disk / "build" / "stage"))
    loops_before = loops()
    merged = ws / "merged"
    mount_like_composefs(img, objects, merged, ws / "tmp", loop=False)
    try:
        assert loops() == loops_before  # file-backed: no loop device anywhere
        before = mountinfo()
        r = cli("check", str(merged))
        assert r.returncode == 0, r.stdout + r.stderr
        assert (f"read from the EROFS image {img}, found in the images/ directory of the "
                f"composefs repository of {objects}") in r.stdout
        doc = explain_observed(str(merged), *PATHS)
        no_mismatch(doc)
        assert doc["paths"][PATHS.index("/usr/bin/tool")]["data"] == {"layer": 1, "path": "/" + TOOL_OBJ}

        copy = ws / "copy.cfs"
        shutil.copy(img, copy)
        r = cli("explain", str(merged), "/etc/passwd", "--image", str(copy))
        assert r.returncode == 0, r.stderr
        assert f"read from the EROFS image {copy}, found with --image" in r.stdout

        r = cli("check", str(merged), "--image", str(wrong))
        assert r.returncode == 2 and r.stdout == ""
        assert len(r.stderr.strip().splitlines()) == 1 and "does not match" in r.stderr, r.stderr
        r = cli("check", str(merged), "--image", str(ws / "nope.cfs"))
        assert r.returncode == 2 and "no such file" in r.stderr and len(r.stderr.splitlines()) == 1

        assert mountinfo() == before
        assert wait_released(loops_before) == loops_before
    finally:
        mountapi.umount(merged)


def test_no_image_to_be_found_names_image(ws, disk):
    img, objects = composefs_tree(disk)
    hidden = disk / "hidden"
    hidden.mkdir()
    img = Path(shutil.move(str(img), hidden / "x.img"))
    merged = ws / "merged"
    mount_like_composefs(img, objects, merged, ws / "tmp", loop=False)
    try:
        for argv in (["check", str(merged)], ["explain", str(merged), "/etc"]):
            r = cli(*argv)
            assert r.returncode == 2 and r.stdout == "", r.stdout
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and "--image" in lines[0] and "is gone" in lines[0], r.stderr
            assert "Traceback" not in r.stderr
        r = cli("check", str(merged), "--image", str(img))
        assert r.returncode == 0, r.stderr
        # the view takes --image too (and without it says the same one line)
        from ovlinspect.cli import view_app_args
        from ovlinspect.sources.target import InputError

        with pytest.raises(InputError, match="--image"):
            view_app_args([str(merged)])
        engine, _start = view_app_args([str(merged), "--image", str(img)])
        assert engine.stack.lowers[0].path == str(img)
        engine.stack.close()
    finally:
        mountapi.umount(merged)
    # --image where no layer is gone: one line
    plain = ws / "plain"
    (ws / "a").mkdir(), (ws / "b").mkdir()
    plain.mkdir()
    mountapi.mount_overlay_fsconfig(plain, [ws / "a", ws / "b"])
    try:
        r = cli("check", str(plain), "--image", str(img))
        assert r.returncode == 2 and "no lower layer" in r.stderr and len(r.stderr.splitlines()) == 1
    finally:
        mountapi.umount(plain)


def test_containers_storage_layout_with_a_shadowing_lower(ws, disk):
    """containers/storage: ``<ctr>/composefs-layers/1`` stays as an empty directory, the blob is
    ``<layer>/composefs-data/composefs.blob`` beside ``<layer>/diff`` (the data-only layer).
    A plain lower layer below holds the tool's object path: it intercepts the redirect."""
    img, objects = composefs_tree(disk)
    store = disk / "storage" / "overlay"
    layer = store / "l1"
    (layer / "composefs-data").mkdir(parents=True)
    shutil.move(str(img), layer / "composefs-data" / "composefs.blob")
    shutil.move(str(objects), layer / "diff")
    below = store / "plain" / "diff"
    (below / "ab").mkdir(parents=True)
    (below / "ab" / "cdef0123").write_bytes(b"shadow: not the object\n"[: len(TOOL)].ljust(len(TOOL), b"!"))
    (below / "extra").write_bytes(b"from the plain layer\n")
    ctr = store / "ctr"
    merged = ctr / "merged"
    (ctr / "composefs-layers").mkdir(parents=True)
    target_dir = ctr / "composefs-layers" / "1"
    target_dir.mkdir()
    # containers/storage mounts on a directory it keeps: lowerdir names it, and it stays
    loops_before = loops()
    mnt_fd = mountapi.fsmount_erofs(layer / "composefs-data" / "composefs.blob")
    try:
        mountapi.move_mount_fd(mnt_fd, target_dir)
    finally:
        os.close(mnt_fd)
    merged.mkdir()
    try:
        mountapi.mount_overlay_fsconfig(merged, [target_dir, below], [layer / "diff"], options=OPTS)
    finally:
        mountapi.umount(target_dir)
    assert target_dir.is_dir() and os.listdir(target_dir) == []  # left empty, not gone
    try:
        # the kernel reads the plain layer's bytes: the shadowing is real
        assert (merged / "usr" / "bin" / "tool").read_bytes() != TOOL
        r = cli("check", str(merged))
        assert r.returncode == 1, r.stdout + r.stderr
        assert "containers/storage's blob beside the data directory" in r.stdout
        assert "0  lower  l1  " in r.stdout
        assert "shadowed-lowerdata" in r.stdout and "/usr/bin/tool" in r.stdout
        doc = explain_observed(str(merged), *PATHS, "/extra")
        no_mismatch(doc)
        tool = doc["paths"][PATHS.index("/usr/bin/tool")]
        assert tool["data"] == {"layer": 1, "path": "/" + TOOL_OBJ}
        assert loops() == loops_before
    finally:
        mountapi.umount(merged)


def test_own_loop_device_when_forced_is_released(ws):
    """The loop fallback of older kernels: our own read-only autoclear device, gone on close."""
    from ovlinspect.sources.cfsimage import open_image

    img, _objects = composefs_tree(ws)
    before_mi, before = mountinfo(), loops()
    layer = open_image(str(img), str(img), "img", "test", force_loop=True)
    try:
        ours = {n: b for n, b in loops().items() if n not in before}
        assert list(ours.values()) == [str(img)]
        assert mountapi.loop_status(next(iter(ours)))["ro"] == "1"
        assert "read-only loop device" in layer.how
        assert layer.read((b"etc", b"hostname")) == b"box\n"
        assert layer.node((b"etc", b"passwd")).xattr(b"trusted.overlay.redirect") == b"/" + PASSWD_OBJ.encode()
        clone = layer.reopen()
        assert sorted(clone.listdir((b"usr", b"bin"))) == [b"tool", b"tool2"]
        clone.close()
    finally:
        layer.close()
    assert mountinfo() == before_mi
    assert wait_released(before) == before


async def test_view_loads_the_mount(ws):
    from ovlinspect.rules.engine import Engine
    from ovlinspect.sources.target import load_target
    from ovlinspect.ui.app import OvlInspectApp

    img, objects = composefs_tree(ws)
    os.unlink(objects / TOOL_OBJ)
    merged = ws / "merged"
    loops_before = loops()
    mount_like_composefs(img, objects, merged, ws / "tmp", loop=True)
    try:
        stack = load_target(str(merged))
        app = OvlInspectApp(Engine(stack), auto_jump_window=None)
        async with app.run_test(size=(130, 40)) as pilot:
            for _ in range(4):
                await app.workers.wait_for_complete()
                await pilot.pause()
            assert app.selection.path in ((b"usr", b"bin", b"tool"), (b"usr", b"bin", b"tool2"))
            svg = app.export_screenshot()
            assert "build.img" in svg or "staging.img" in svg
            assert "error" in svg
        stack.close()
    finally:
        mountapi.umount(merged)
    assert wait_released(loops_before) == loops_before
