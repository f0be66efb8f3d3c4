"""A stack with stale origin and impure state (trusted.overlay.* written by hand in our own
tmpfs layers, with fixed bytes so the screen is the same on every run): needs root."""

from __future__ import annotations

import contextlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "kernel"))
import harness  # noqa: E402

#: a fixed place (mounted privately: other processes never see our tmpfs there), so the
#: layer paths on screen are the same on every run
FIXED = "/tmp/ovlinspect-stale-origin"
T = "trusted.overlay."
FOREIGN_UUID = bytes.fromhex("5eed0000111122223333444455556666")
#: an origin handle (struct ovl_fb, 12-byte tmpfs fid) on a filesystem that is in no layer
FOREIGN_FH = b"\x00\xfb\x21\x00\x01" + FOREIGN_UUID + bytes.fromhex("2a000000000000000100000000")[:12]
OPTIONS = "index=on,nfs_export=on"


def _build(base: str) -> tuple[str, str, str]:
    u, l, w = (os.path.join(base, n) for n in ("upper", "lower", "work"))
    for d in ("usr/lib", "etc"):
        os.makedirs(os.path.join(u, d))
        os.makedirs(os.path.join(l, d))
    os.makedirs(w)
    for layer, name, text in ((l, "usr/lib/libc.so.6", "lower libc\n"), (l, "etc/passwd", "root:x:0:0\n"),
                              (u, "etc/hosts", "127.0.0.1 localhost\n")):
        with open(os.path.join(layer, name), "w") as fp:
            fp.write(text)
    os.setxattr(os.path.join(u, "usr/lib"), T + "origin", FOREIGN_FH)  # the lower moved
    os.setxattr(os.path.join(u, "usr"), T + "impure", b"y")  # needed: lib has an origin
    os.setxattr(os.path.join(u, "etc"), T + "impure", b"y")  # stale: nothing copied up below
    for d in (u, l):
        for root, dirs, files in os.walk(d):
            for n in dirs + files:
                os.utime(os.path.join(root, n), (0, 0), follow_symlinks=False)
    return u, l, w


@contextlib.contextmanager
def stale_stack():
    """(upperdir, lowerdir, workdir) of the stack on a private tmpfs at :data:`FIXED`."""
    reason = harness.kernel_unavailable_reason()
    if reason:
        import pytest

        pytest.skip(reason)
    harness.enter_private_namespace()
    os.makedirs(FIXED, exist_ok=True)
    err = harness._mount(b"tmpfs", FIXED, b"tmpfs", 0, b"mode=0755,size=4m")  # noqa: SLF001
    if err:
        raise OSError(err, f"mount tmpfs on {FIXED}")
    try:
        yield _build(FIXED)
    finally:
        harness._libc.umount2(os.fsencode(FIXED), harness.MNT_DETACH)  # noqa: SLF001
        with contextlib.suppress(OSError):
            os.rmdir(FIXED)  # another process's private mount may still sit on it
