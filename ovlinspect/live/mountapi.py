"""Mount overlay stacks from Python, through ``ctypes`` (no helper binaries needed).

Two ways in, matching the two ways the kernel accepts an overlay mount:

* :func:`mount_overlay_legacy` calls ``mount(2)`` with one option string, as ``mount -t overlay``
  does.  The ``lowerdir=`` value is passed exactly as given (the caller writes the ``:``/``::``
  separators and backslash escapes; see :func:`ovlinspect.kernel.params.join_lowerdir`).
* :func:`mount_overlay_fsconfig` uses the new mount API (``fsopen``, ``fsconfig``, ``fsmount``,
  ``move_mount``) and adds one ``lowerdir+``/``datadir+`` per layer, which the kernel takes
  without any unescaping.

Both raise :class:`MountError` (an :class:`OSError` carrying ``errno``) when the kernel refuses.
For the new API the error also carries the messages the kernel wrote to the filesystem context's
log (``.log``); with ``mount(2)`` those messages go to the kernel log instead.

These helpers need ``CAP_SYS_ADMIN`` (run as root, ideally inside ``unshare -m`` so the mounts
stay private).  Syscall numbers are the generic ones shared by every architecture that has the
new mount API (x86_64, arm64, riscv, ...).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as _errno
import os
from collections.abc import Iterable, Iterator, Sequence

__all__ = [
    "KernelLog",
    "MountError",
    "cannot_mount_overlay",
    "fs_context_log",
    "fsmount_erofs",
    "loop_attach_readonly",
    "mount_overlay_fsconfig",
    "mount_overlay_legacy",
    "open_tree_clone",
    "loop_status",
    "move_mount_fd",
    "private_tmpfs",
    "umount",
]

# Generic syscall numbers (include/uapi/asm-generic/unistd.h; identical on x86_64).
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432

FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100

FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6

OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = 0o2000000

MNT_DETACH = 0x2
MS_PRIVATE = 1 << 18
MS_NOSUID = 0x2
MS_NODEV = 0x4

PathLike = str | bytes | os.PathLike[str] | os.PathLike[bytes]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.mount.restype = ctypes.c_int
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int


class MountError(OSError):
    """The kernel refused a mount step.

    ``errno`` is the kernel's error number; ``step`` names the call that failed (``"mount"``,
    ``"fsopen"``, ``"fsconfig lowerdir+"``, ``"fsconfig create"``, ...); ``log`` holds the lines
    the kernel wrote to the new-API context log (each like ``"e overlay: ..."``), empty for
    ``mount(2)``.
    """

    def __init__(self, err: int, step: str, log: Sequence[str] = (), detail: str = "") -> None:
        message = f"{step}: {os.strerror(err)}"
        if detail:
            message += f" ({detail})"
        if log:
            message += ": " + "; ".join(log)
        super().__init__(err, message)
        self.step = step
        self.log: tuple[str, ...] = tuple(log)


def _b(value: PathLike) -> bytes:
    return os.fsencode(value)


def _syscall(number: int, *args: object) -> int:
    result = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        return -ctypes.get_errno()
    return int(result)


def fs_context_log(fs_fd: int) -> list[str]:
    """Drain the messages queued on a filesystem-context fd (``"e overlay: ..."`` lines)."""
    lines: list[str] = []
    while True:
        try:
            chunk = os.read(fs_fd, 4096)
        except OSError as exc:
            if exc.errno in (_errno.ENODATA, _errno.EAGAIN):
                break
            raise
        if not chunk:
            break
        lines.append(chunk.decode("utf-8", "replace").rstrip("\n"))
    return lines


def _escape_layer_name(path: bytes) -> bytes:
    """Backslash-escape a path for an option the kernel unescapes (upperdir/workdir/lowerdir)."""
    out = bytearray()
    for byte in path:
        if byte in b"\\:,":
            out += b"\\"
        out.append(byte)
    return bytes(out)


def mount_overlay_fsconfig(
    target: PathLike,
    lowers: Iterable[PathLike | int],
    datas: Iterable[PathLike | int] = (),
    upper: PathLike | int | None = None,
    work: PathLike | int | None = None,
    options: Iterable[tuple[str, str | None]] = (),
    *,
    source: str | None = "overlay",
) -> None:
    """Mount an overlay at ``target`` with the new mount API.

    Every regular lower layer becomes one ``lowerdir+`` (top first), every data-only layer one
    ``datadir+``.  A layer given as an ``int`` is passed as a file descriptor
    (``FSCONFIG_SET_FD``, Linux 6.13+).  ``lowerdir+``/``datadir+`` names are passed verbatim
    (the kernel does not unescape them); ``upperdir``/``workdir`` strings are backslash-escaped
    here, because the kernel unescapes those.  ``options`` are ``(key, value)`` pairs; a
    ``None`` value is sent as a flag.
    """
    fs_fd = _syscall(SYS_FSOPEN, ctypes.c_char_p(b"overlay"), ctypes.c_uint(FSOPEN_CLOEXEC))
    if fs_fd < 0:
        raise MountError(-fs_fd, "fsopen")
    try:

        def config(cmd: int, key: str | None, value: bytes | None, aux: int, what: str) -> None:
            res = _syscall(
                SYS_FSCONFIG,
                ctypes.c_int(fs_fd),
                ctypes.c_uint(cmd),
                ctypes.c_char_p(key.encode() if key is not None else None),
                ctypes.c_char_p(value),
                ctypes.c_int(aux),
            )
            if res < 0:
                raise MountError(-res, f"fsconfig {what}", fs_context_log(fs_fd))

        def layer(key: str, value: PathLike | int, escape: bool) -> None:
            if isinstance(value, int):
                config(FSCONFIG_SET_FD, key, None, value, key)
            else:
                raw = _b(value)
                config(FSCONFIG_SET_STRING, key, _escape_layer_name(raw) if escape else raw, 0, key)

        if source is not None:
            config(FSCONFIG_SET_STRING, "source", source.encode(), 0, "source")
        for lower in lowers:
            layer("lowerdir+", lower, escape=False)
        for data in datas:
            layer("datadir+", data, escape=False)
        if upper is not None:
            layer("upperdir", upper, escape=True)
        if work is not None:
            layer("workdir", work, escape=True)
        for key, value in options:
            if value is None:
                config(FSCONFIG_SET_FLAG, key, None, 0, key)
            else:
                config(FSCONFIG_SET_STRING, key, value.encode(), 0, f"{key}={value}")
        config(FSCONFIG_CMD_CREATE, None, None, 0, "create")

        mnt_fd = _syscall(
            SYS_FSMOUNT, ctypes.c_int(fs_fd), ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(0)
        )
        if mnt_fd < 0:
            raise MountError(-mnt_fd, "fsmount", fs_context_log(fs_fd))
        try:
            res = _syscall(
                SYS_MOVE_MOUNT,
                ctypes.c_int(mnt_fd),
                ctypes.c_char_p(b""),
                ctypes.c_int(AT_FDCWD),
                ctypes.c_char_p(_b(target)),
                ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
            )
            if res < 0:
                raise MountError(-res, "move_mount")
        finally:
            os.close(mnt_fd)
    finally:
        os.close(fs_fd)


def mount_overlay_legacy(
    target: PathLike,
    lowerdir_string: str | bytes,
    upper: PathLike | None = None,
    work: PathLike | None = None,
    options: str = "",
    *,
    flags: int = 0,
    source: str = "overlay",
) -> None:
    """Mount an overlay at ``target`` with ``mount(2)`` and one option string.

    ``lowerdir_string`` is used verbatim as the ``lowerdir=`` value (already escaped, e.g. from
    :func:`ovlinspect.kernel.params.join_lowerdir`).  ``upper``/``work`` are plain paths; they are
    backslash-escaped here.  ``options`` (a ``mount -o`` style string) is included when not
    empty.  The ``lowerdir=`` option goes last, so that a final backslash in it cannot escape
    the comma before another option (the kernel's option splitter honours ``\\,``).
    """
    lowerdir = (
        lowerdir_string if isinstance(lowerdir_string, bytes) else os.fsencode(lowerdir_string)
    )
    parts: list[bytes] = []
    if upper is not None:
        parts.append(b"upperdir=" + _escape_layer_name(_b(upper)))
    if work is not None:
        parts.append(b"workdir=" + _escape_layer_name(_b(work)))
    if options:
        parts.append(options.encode())
    parts.append(b"lowerdir=" + lowerdir)
    data = b",".join(parts)
    res = _libc.mount(source.encode(), _b(target), b"overlay", flags, data)
    if res != 0:
        raise MountError(ctypes.get_errno(), "mount")


def umount(target: PathLike, *, detach: bool = True) -> None:
    """Unmount ``target`` (lazily by default); raises :class:`OSError` on failure."""
    res = _libc.umount2(_b(target), MNT_DETACH if detach else 0)
    if res != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount: {os.strerror(err)}", os.fsdecode(_b(target)))


def open_tree_clone(path: PathLike) -> int:
    """A file descriptor for a detached copy of the mount tree at ``path`` (``open_tree(2)``).

    Passing it as a layer to :func:`mount_overlay_fsconfig` makes mountinfo show the layer as
    ``/``, the way composefs mounts its images.
    """
    fd = _syscall(
        SYS_OPEN_TREE,
        ctypes.c_int(AT_FDCWD),
        ctypes.c_char_p(_b(path)),
        ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC),
    )
    if fd < 0:
        raise MountError(-fd, "open_tree")
    return fd


def cannot_mount_overlay() -> str | None:
    """Why overlays cannot be mounted here (not root, no overlay support), or None if they can."""
    if os.geteuid() != 0:
        return "mounting overlays needs root"
    try:
        with open("/proc/filesystems", encoding="ascii") as f:
            known = {line.split()[-1] for line in f if line.strip()}
    except OSError as exc:
        return f"cannot read /proc/filesystems: {exc.strerror}"
    if "overlay" not in known:
        return "the kernel has no overlay filesystem (modprobe overlay?)"
    if "tmpfs" not in known:
        return "the kernel has no tmpfs"
    return None


@contextlib.contextmanager
def private_tmpfs(path: PathLike) -> Iterator[str]:
    """Mount a private tmpfs on the existing directory ``path`` for the duration of the block.

    Mounts made below it do not propagate to other mount namespaces; everything below is
    detached when the block ends.
    """
    target = os.fsdecode(_b(path))
    if _libc.mount(b"tmpfs", _b(target), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755") != 0:
        err = ctypes.get_errno()
        raise MountError(err, "mount tmpfs", detail=target)
    try:
        if _libc.mount(None, _b(target), None, MS_PRIVATE, None) != 0:
            err = ctypes.get_errno()
            raise MountError(err, "make private", detail=target)
        yield target
    finally:
        umount(target, detach=True)


class KernelLog:
    """Reads kernel log lines written after it was created (``/dev/kmsg``, needs root).

    :meth:`new_lines` returns the message text of each record since the previous call, e.g.
    ``"overlayfs: conflicting options: metacopy=on,redirect_dir=nofollow"``.  Other activity on
    the machine shows up too, so look for the lines you expect rather than for exact equality.
    """

    def __init__(self) -> None:
        self._fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.lseek(self._fd, 0, os.SEEK_END)

    def new_lines(self) -> list[str]:
        lines: list[str] = []
        while True:
            try:
                record = os.read(self._fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == _errno.EPIPE:  # records were overwritten; carry on
                    continue
                raise
            if not record:
                break
            text = record.decode("utf-8", "replace")
            lines.append(text.split(";", 1)[-1].split("\n", 1)[0])
        return lines

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> KernelLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------- EROFS images, detached

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8

# <linux/loop.h>
LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_NAME_SIZE = 64
LO_KEY_SIZE = 32


class _LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64),
        ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64),
        ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32),
        ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32),
        ("lo_file_name", ctypes.c_uint8 * LO_NAME_SIZE),
        ("lo_crypt_name", ctypes.c_uint8 * LO_NAME_SIZE),
        ("lo_encrypt_key", ctypes.c_uint8 * LO_KEY_SIZE),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class _LoopConfig(ctypes.Structure):
    _fields_ = [
        ("fd", ctypes.c_uint32),
        ("block_size", ctypes.c_uint32),
        ("info", _LoopInfo64),
        ("reserved", ctypes.c_uint64 * 8),
    ]


_libc.ioctl.restype = ctypes.c_int


def fsmount_erofs(source: PathLike) -> int:
    """A detached, read-only EROFS mount of ``source`` (an image file or a block device).

    ``fsopen("erofs")``, ``fsconfig(source, ro)``, ``fsmount(MOUNT_ATTR_RDONLY|...)``: the
    mount is never attached anywhere, so no mount table shows it and nothing can be written
    through it.  Returns the mount's file descriptor (its root directory; read it through
    ``/proc/self/fd/N`` or ``openat``); the mount goes away when the last descriptor on it is
    closed.  An image *file* as source needs Linux 6.12+ (file-backed EROFS) and a backing
    filesystem with page-cache reads (not tmpfs); otherwise the kernel refuses it with
    ENOTBLK: then use :func:`loop_attach_readonly`.
    """
    fs_fd = _syscall(SYS_FSOPEN, ctypes.c_char_p(b"erofs"), ctypes.c_uint(FSOPEN_CLOEXEC))
    if fs_fd < 0:
        raise MountError(-fs_fd, "fsopen erofs")
    try:
        def config(cmd: int, key: bytes | None, value: bytes | None, what: str) -> None:
            res = _syscall(SYS_FSCONFIG, ctypes.c_int(fs_fd), ctypes.c_uint(cmd),
                           ctypes.c_char_p(key), ctypes.c_char_p(value), ctypes.c_int(0))
            if res < 0:
                raise MountError(-res, f"fsconfig {what}", fs_context_log(fs_fd))

        config(FSCONFIG_SET_STRING, b"source", _b(source), "source")
        config(FSCONFIG_SET_FLAG, b"ro", None, "ro")
        config(FSCONFIG_CMD_CREATE, None, None, "create")
        attrs = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC
        mnt_fd = _syscall(SYS_FSMOUNT, ctypes.c_int(fs_fd), ctypes.c_uint(FSMOUNT_CLOEXEC),
                          ctypes.c_uint(attrs))
        if mnt_fd < 0:
            raise MountError(-mnt_fd, "fsmount erofs", fs_context_log(fs_fd))
        return mnt_fd
    finally:
        os.close(fs_fd)


def loop_attach_readonly(image: PathLike) -> tuple[int, str]:
    """Attach ``image`` to a free loop device, read-only and autoclear; (device fd, path).

    ``LOOP_CONFIGURE`` with ``LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR``: the device detaches by
    itself once its last user (the descriptor returned, a filesystem mounted from it) is gone.
    Close the descriptor after mounting.
    """
    img_fd = os.open(_b(image), os.O_RDONLY | os.O_CLOEXEC)
    try:
        for _attempt in range(8):  # another process may take the free device first
            ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
            try:
                number = _libc.ioctl(ctl, LOOP_CTL_GET_FREE)
                if number < 0:
                    err = ctypes.get_errno()
                    raise MountError(err, "loop: LOOP_CTL_GET_FREE")
            finally:
                os.close(ctl)
            dev = f"/dev/loop{number}"
            loop_fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
            cfg = _LoopConfig()
            cfg.fd = img_fd
            cfg.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR
            name = _b(image)[: LO_NAME_SIZE - 1]
            ctypes.memmove(cfg.info.lo_file_name, name, len(name))
            if _libc.ioctl(loop_fd, LOOP_CONFIGURE, ctypes.byref(cfg)) == 0:
                return loop_fd, dev
            err = ctypes.get_errno()
            os.close(loop_fd)
            if err != _errno.EBUSY:
                raise MountError(err, f"loop: LOOP_CONFIGURE {dev}")
        raise MountError(_errno.EBUSY, "loop: no free loop device")
    finally:
        os.close(img_fd)


def loop_status(name: str) -> dict[str, str] | None:
    """What sysfs says of loop device ``name`` (``loop3``): its backing file, offset, ...

    Keys are the files of ``/sys/block/NAME/loop/`` (``backing_file``, ``offset``,
    ``sizelimit``, ``autoclear``) and ``ro`` (``/sys/block/NAME/ro``), values stripped; None
    when the device is unused.
    """
    base = f"/sys/block/{name}/loop"
    if not os.path.isdir(base):
        return None
    out: dict[str, str] = {}
    for key in ("backing_file", "offset", "sizelimit", "ro", "autoclear"):
        try:
            with open(os.path.join(base if key != "ro" else base[:-5], key), "rb") as f:
                out[key] = os.fsdecode(f.read(8192).rstrip(b"\n"))
        except OSError:
            continue
    return out if "backing_file" in out else None


def move_mount_fd(mnt_fd: int, target: PathLike) -> None:
    """Attach the detached mount ``mnt_fd`` (from ``fsmount``/``open_tree``) at ``target``."""
    res = _syscall(SYS_MOVE_MOUNT, ctypes.c_int(mnt_fd), ctypes.c_char_p(b""), ctypes.c_int(AT_FDCWD),
                   ctypes.c_char_p(_b(target)), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH))
    if res < 0:
        raise MountError(-res, "move_mount", detail=os.fsdecode(_b(target)))
