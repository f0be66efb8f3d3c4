"""Ask the running kernel which overlay options it has, without mounting anything.

Distribution kernels backport: Debian's 6.12.118 has the ``fsync=`` option of 6.18, and a
release number alone would predict ``Unknown parameter 'fsync'``.  Each probe here opens a
filesystem context (``fsopen``), sets one option (``fsconfig``) and closes the context: the
option parser answers at once, no superblock is made and nothing is mounted.  Layer paths live
on a tmpfs of our own that is never attached anywhere (``fsmount`` without ``move_mount``).

Only the options the fs_context parser knows can be probed this way, which is how kernels from
6.5 on parse overlay options; the lookup behaviours (6.16's refusals, xattr whiteouts) would
need mounts and lookups, whose refusals write to the kernel log the user is reading, so they
keep the release's values.  Parse errors go to the context's own log, not to ``dmesg``.

Needs CAP_SYS_ADMIN; without it, or on any surprise, the release's profile is kept.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
from dataclasses import replace

from .mountapi import (
    FSCONFIG_CMD_CREATE,
    FSCONFIG_SET_FLAG,
    FSCONFIG_SET_STRING,
    FSMOUNT_CLOEXEC,
    FSOPEN_CLOEXEC,
    SYS_FSCONFIG,
    SYS_FSMOUNT,
    SYS_FSOPEN,
    _syscall,
)
from ..kernel.profile import KernelProfile

__all__ = ["probe_options", "probed_profile"]


def _fsopen(fstype: bytes) -> int:
    fd = _syscall(SYS_FSOPEN, ctypes.c_char_p(fstype), ctypes.c_uint(FSOPEN_CLOEXEC))
    if fd < 0:
        raise OSError(-fd, f"fsopen {fstype.decode()}")
    return fd


def _config(fd: int, cmd: int, key: bytes | None, value: bytes | None) -> int:
    """0, or the errno the kernel answers."""
    res = _syscall(SYS_FSCONFIG, ctypes.c_int(fd), ctypes.c_uint(cmd), ctypes.c_char_p(key),
                   ctypes.c_char_p(value), ctypes.c_int(0))
    return -res if res < 0 else 0


def _accepts(key: bytes, value: bytes | None) -> bool:
    """Whether overlay's option parser takes ``key`` (``=value``)."""
    fd = _fsopen(b"overlay")
    try:
        cmd = FSCONFIG_SET_FLAG if value is None else FSCONFIG_SET_STRING
        err = _config(fd, cmd, key, value)
        if err not in (0, _errno.EINVAL):
            raise OSError(err, f"fsconfig {key.decode()}")
        return err == 0
    finally:
        os.close(fd)


def _scratch() -> int:
    """A tmpfs of our own, never attached: a mount fd whose root holds the directories A, C."""
    fs = _fsopen(b"tmpfs")
    try:
        err = _config(fs, FSCONFIG_CMD_CREATE, None, None)
        if err:
            raise OSError(err, "fsconfig create tmpfs")
        mnt = _syscall(SYS_FSMOUNT, ctypes.c_int(fs), ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(0))
        if mnt < 0:
            raise OSError(-mnt, "fsmount tmpfs")
    finally:
        os.close(fs)
    for name in ("A", "C"):
        os.mkdir(name, 0o755, dir_fd=mnt)
    return mnt


def probe_options() -> dict[str, bool]:
    """The option-level profile fields, as the running kernel answers them.

    Raises OSError when the kernel cannot be asked (no CAP_SYS_ADMIN, no new mount API, no
    overlay).  On a kernel whose overlay has no fs_context parser (before 6.5) every option is
    taken at this step and refused only at mount time, so the probe says nothing beyond that.
    """
    found = {"fs_context_parser": not _accepts(b"ovlinspect-probe", None)}
    if not found["fs_context_parser"]:
        return found
    found["fsync_option"] = _accepts(b"fsync", b"strict")
    found["override_creds_option"] = _accepts(b"nooverride_creds", None)
    found["uuid_null_auto"] = _accepts(b"uuid", b"null")
    found["verity_option"] = _accepts(b"verity", b"off")
    mnt = _scratch()
    try:
        root = f"/proc/self/fd/{mnt}".encode()
        found["lowerdir_add"] = _accepts(b"lowerdir+", root + b"/A")
        # "::" splits off a data-only layer; before data-only layers it is an empty element
        found["data_only_layers"] = _accepts(b"lowerdir", root + b"/A::" + root + b"/C")
    finally:
        os.close(mnt)
    return found


def probed_profile(base: KernelProfile) -> KernelProfile:
    """``base`` (the release's profile) corrected by what the running kernel answers.

    ``chosen_by`` says how: "release" when the probes agree, "release + probe: fsync_option"
    when a probe found a backport (or a removal), "release (not probed: ...)" when the kernel
    could not be asked.
    """
    try:
        found = probe_options()
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        return replace(base, chosen_by=f"release (not probed: {reason})")
    differs = {k: v for k, v in found.items() if getattr(base, k) != v}
    if not differs:
        return replace(base, chosen_by="release, confirmed by probes")
    return replace(base, chosen_by="release + probe: " + ", ".join(
        f"{k}={'yes' if v else 'no'}" for k, v in sorted(differs.items())), **differs)
