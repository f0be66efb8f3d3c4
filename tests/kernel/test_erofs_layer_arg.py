"""An EROFS image file named as a layer (``--lowerdir meta.img:B::objects``), as a composefs
user has it in hand, against the real mount of that image under the same overlay.

Before, such a file was taken for a composefs dump and refused with "dump line 1: 1 fields".
The image is built with ``mkfs.erofs`` from a staging directory carrying the overlay xattrs
(metacopy + redirect) composefs writes; a regular layer B intercepts one redirect and breaks
another with a plain directory (EIO), one object is missing (ENOENT at open).  The kernel's
answers through ``mount -o loop`` + overlay are compared field by field with ``explain --json``
on the image file, and ovlinspect's own (detached) mount and loop device must be gone after.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import json

import pytest

from harness import compare, format_disagreements, observe, private_tmpfs, run_cli

pytestmark = pytest.mark.kernel


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mounts tmpfs, erofs and overlay)"
    for tool in ("mkfs.erofs", "mount", "umount", "losetup", "setfattr"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    with open("/proc/filesystems") as f:
        known = {line.split()[-1] for line in f if line.strip()}
    if "erofs" not in known or "overlay" not in known:
        return "the kernel has no erofs or no overlay filesystem"
    return None


REASON = _unavailable()

PATHS = ["/", "/usr", "/usr/bin", "/usr/bin/tool", "/usr/bin/other", "/usr/bin/gone", "/usr/bin/lost"]


def _loops_of(image: str) -> list[str]:
    out = subprocess.run(["losetup", "-j", image], capture_output=True, text=True).stdout
    return [line.split(":")[0] for line in out.splitlines() if line.strip()]


def _meta(root: str, path: str, size: int, redirect: str) -> None:
    full = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as f:
        f.truncate(size)
    os.setxattr(full, "trusted.overlay.metacopy", b"")
    os.setxattr(full, "trusted.overlay.redirect", redirect.encode())


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_erofs_image_as_layer_matches_the_kernel():
    with private_tmpfs() as tmp:
        meta, b, objects = (os.path.join(tmp, n) for n in ("meta", "B", "objects"))
        for d in (meta, f"{b}/ab", f"{b}/cd", f"{objects}/ab", f"{objects}/cd", f"{objects}/ef"):
            os.makedirs(d)
        for name, data in (("ab/0001", b"object one\n"), ("cd/0002", b"object two!\n"),
                           ("ef/0003", b"object three\n")):
            with open(f"{objects}/{name}", "wb") as f:
                f.write(data)
        with open(f"{b}/ab/0001", "wb") as f:
            f.write(b"INTERCEPTED\n")  # shadows the object: read() returns these bytes
        _meta(meta, "/usr/bin/tool", 11, "/ab/0001")
        _meta(meta, "/usr/bin/gone", 12, "/cd/missing")  # walks B's plain /cd: EIO at lookup
        _meta(meta, "/usr/bin/other", 13, "/ef/0003")
        _meta(meta, "/usr/bin/lost", 5, "/zz/none")  # no object: ENOENT at open
        img = os.path.join(tmp, "meta.img")
        subprocess.run(["mkfs.erofs", "--quiet", img, meta], check=True, capture_output=True)
        e, merged = os.path.join(tmp, "e"), os.path.join(tmp, "m")
        os.mkdir(e)
        os.mkdir(merged)
        subprocess.run(["mount", "-t", "erofs", "-o", "ro,loop", img, e], check=True, capture_output=True)
        loops_before = _loops_of(img)
        opts = f"ro,metacopy=on,redirect_dir=on,lowerdir={e}:{b}::{objects}"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, merged], check=True,
                       capture_output=True)
        obs = observe(merged, PATHS)
        # the kernel's own answers, so the comparison covers each kind of outcome
        assert obs["/usr/bin/gone"].errno == "EIO"
        assert obs["/usr/bin/lost"].open_errno == "ENOENT"
        assert obs["/usr/bin/tool"].data == b"INTERCEPTED\n"

        rc, out, err = run_cli(["explain", "--json", "--lowerdir", f"{img}:{b}::{objects}",
                                "-o", "metacopy=on,redirect_dir=on", *PATHS])
        assert rc == 0, err
        doc = json.loads(out)
        assert doc["layers"][0]["path"] == img
        dis = compare(obs, doc, layer_dirs=[e, b, objects])
        assert not dis, format_disagreements("erofs image as --lowerdir", dis)

        rc, out, err = run_cli(["check", "--json", "--lowerdir", f"{img}:{b}::{objects}",
                                "-o", "metacopy=on,redirect_dir=on"])
        assert rc == 1, err
        rules = {(f["rule"], f["path"]) for f in json.loads(out)["findings"]}
        assert ("shadowed-lowerdata", "/usr/bin/tool") in rules
        assert ("lowerdata-redirect-broken", "/usr/bin/gone") in rules
        assert ("lowerdata-missing", "/usr/bin/lost") in rules

        # ovlinspect's detached mount (and the loop device it may have made) is gone
        deadline = time.monotonic() + 5
        while _loops_of(img) != loops_before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _loops_of(img) == loops_before
