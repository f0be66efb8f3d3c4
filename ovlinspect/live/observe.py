"""Observed beside predicted: what a program sees through the merged path of a live mount.

Paths are resolved inside the mount as a program whose root is the merged tree resolves
them (a container): ``openat2(2)`` with ``RESOLVE_IN_ROOT`` on an ``O_PATH`` descriptor of the
mountpoint, so an absolute symlink in the middle of a path starts again at the merged root
and ``..`` stops there.  Where ``openat2`` is missing (before Linux 5.6, or a seccomp filter
refusing it) the same walk is done in user space, component by component, and the
observation says so.  The last component is never followed.

Only read-only operations: ``lstat``, ``readlink``, ``readdir``, and ``open`` + bounded
``read`` of regular files (``O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_NOCTTY``, plus ``O_NOATIME``
where permitted).  Fifos, devices and sockets are never opened.  The bytes read are hashed
(sha256) and compared with the predicted data source, read from its layer through the
layer's own safe API, so a shadowed file is observed, not only predicted.

A disagreement is explained with evidence (:func:`evidence`): a second read of the layers,
and a fresh, detached, lower-only kernel mount of the same layers (mounted by
``fsopen``/``fsmount`` and never attached anywhere, gone when its descriptor is closed) that
looks the path up first.  Only when the fresh mount agrees with this one, the layers read the
same twice and no unmodelled feature is in use does the evidence point to ovlinspect.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import hashlib
import os
import stat as _stat
from dataclasses import dataclass

from ..kernel.entry import show, show_path
from ..model.layers import MemoryLayer, Path, _kind_of
from ..report.document import path_json
from ..report.view import layer_view
from . import mountapi
from ..kernel.bugs import observed_bug

#: Bytes read (and hashed) through the mount and from the predicted layer file.
READ_LIMIT = 1 << 20
MAX_SYMLINK_HOPS = 40

_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_O_NOATIME = getattr(os, "O_NOATIME", 0)


def _err(e: OSError) -> str:
    return _errno.errorcode.get(e.errno or 0, str(e.errno))


# ------------------------------------------------------------------ resolving in the root

SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.syscall.restype = ctypes.c_long
except (OSError, AttributeError):  # pragma: no cover - no libc with syscall()
    _libc = None

#: Why openat2 is not used (None while it works); set on the first ENOSYS/EPERM.
_openat2_missing: str | None = None if _libc is not None else "no syscall() in the C library"


def _openat2(rootfd: int, rel: bytes, flags: int) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    for _ in range(8):  # EAGAIN: a rename raced with '..' resolution; the kernel asks to retry
        fd = _libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(rootfd), ctypes.c_char_p(rel),
                           ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err != _errno.EAGAIN:
            break
    raise OSError(err, os.strerror(err))


def _walk(rootfd: int, comps: list[bytes]) -> int:
    """User-space RESOLVE_IN_ROOT: an O_PATH descriptor of the directory ``comps`` names,
    every symlink followed inside the root (absolute ones from the root, ``..`` stopping
    there).  The fallback where openat2 is missing."""
    dirs = [os.dup(rootfd)]
    queue = list(comps)
    hops = 0
    try:
        while queue:
            name = queue.pop(0)
            if name in (b"", b"."):
                continue
            if name == b"..":
                if len(dirs) > 1:
                    os.close(dirs.pop())
                continue
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirs[-1])
            st = os.fstat(fd)
            if _stat.S_ISLNK(st.st_mode):
                os.close(fd)
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise OSError(_errno.ELOOP, os.strerror(_errno.ELOOP))
                target = os.readlink(name, dir_fd=dirs[-1])
                if target.startswith(b"/"):
                    while len(dirs) > 1:
                        os.close(dirs.pop())
                queue = target.split(b"/") + queue
            elif _stat.S_ISDIR(st.st_mode):
                dirs.append(fd)
            else:
                os.close(fd)
                raise OSError(_errno.ENOTDIR, os.strerror(_errno.ENOTDIR))
        out = dirs.pop()
        return out
    finally:
        for fd in dirs:
            os.close(fd)


def open_dir_in_root(rootfd: int, comps: Path) -> tuple[int, str]:
    """An O_PATH descriptor of the directory ``comps`` inside the root, and how it was found."""
    global _openat2_missing
    if _openat2_missing is None:
        try:
            return _openat2(rootfd, b"/".join(comps) or b".", os.O_PATH | os.O_DIRECTORY), "openat2"
        except OSError as e:
            if e.errno not in (_errno.ENOSYS, _errno.EPERM):
                raise
            _openat2_missing = f"openat2: {_err(e)}"
    return _walk(rootfd, list(comps)), f"user-space walk ({_openat2_missing})"


# ------------------------------------------------------------------------ observation


@dataclass
class Content:
    """The first ``READ_LIMIT`` bytes of a file, as a hash."""

    sha256: str
    nbytes: int
    truncated: bool

    def as_json(self) -> dict:
        return {"sha256": self.sha256, "bytes": self.nbytes, "truncated": self.truncated}

    def text(self) -> str:
        return (f"{self.nbytes} bytes{' (first MiB; file is longer)' if self.truncated else ''}, "
                f"sha256 {self.sha256[:16]}")


def _content(data: bytes, truncated: bool) -> Content:
    return Content(hashlib.sha256(data).hexdigest(), len(data), truncated)


@dataclass
class Observation:
    path: Path
    errno: str | None = None
    kind: str | None = None
    size: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    target: bytes | None = None
    open_errno: str | None = None
    read_errno: str | None = None
    content: Content | None = None
    entries: list[bytes] | None = None
    readdir_errno: str | None = None
    #: how the path was resolved inside the merged root ("openat2" or the fallback)
    resolved_by: str = ""
    #: the owner as the processes of a container's user namespace see it (None: no mapping)
    ns_uid: int | None = None
    ns_gid: int | None = None

    def as_json(self) -> dict:
        return {
            "errno": self.errno,
            "type": self.kind,
            "size": self.size,
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "target": self.target.decode("utf-8", "surrogateescape") if self.target is not None else None,
            "open_errno": self.open_errno,
            "read_errno": self.read_errno,
            "content": self.content.as_json() if self.content is not None else None,
            "entries": [n.decode("utf-8", "surrogateescape") for n in self.entries]
            if self.entries is not None else None,
            "readdir_errno": self.readdir_errno,
            "resolved_by": self.resolved_by,
            "ns_uid": self.ns_uid,
            "ns_gid": self.ns_gid,
        }

    def summary(self) -> str:
        if self.errno:
            return f"lstat fails: {self.errno}"
        text = f"{self.kind}, {self.size} bytes, mode {self.mode:04o}, owner {self.uid}:{self.gid}"
        if (self.ns_uid, self.ns_gid) != (None, None) and (self.ns_uid, self.ns_gid) != (self.uid, self.gid):
            text += f" ({_id(self.ns_uid)}:{_id(self.ns_gid)} in the container's user namespace)"
        if self.kind == "symlink":
            text += f" -> {show(self.target)}"
        if self.kind == "file":
            text += ", open " + (f"fails: {self.open_errno}" if self.open_errno else "ok")
            if self.read_errno:
                text += f", read fails: {self.read_errno}"
        if self.kind == "dir":
            text += (f", readdir fails: {self.readdir_errno}" if self.readdir_errno
                     else f", readdir lists {len(self.entries or [])}")
        return text


def _id(v: int | None) -> str:
    return "nobody" if v is None else str(v)


def read_id_map(path: str) -> list[tuple[int, int, int]] | None:
    """``/proc/PID/uid_map`` as (inside, outside, count) lines; None for the identity map."""
    try:
        with open(path, "rb") as f:
            text = f.read(65536).decode("ascii", "replace")
    except OSError:
        return None
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            out.append((int(parts[0]), int(parts[1]), int(parts[2])))
    if not out or out == [(0, 0, 4294967295)]:
        return None
    return out


def _inside(idmap: list[tuple[int, int, int]], host: int | None) -> int | None:
    if host is None:
        return None
    for inside, outside, count in idmap:
        if outside <= host < outside + count:
            return inside + host - outside
    return None  # unmapped: the overflow id (nobody) inside


def map_owner(ob: "Observation", pid: int | None) -> None:
    """Record the owner as seen in ``pid``'s user namespace, when it has a non-identity map
    (a container started with a uid map: what its programs see)."""
    if not pid or ob.uid is None:
        return
    umap, gmap = read_id_map(f"/proc/{pid}/uid_map"), read_id_map(f"/proc/{pid}/gid_map")
    if umap is None and gmap is None:
        return
    ob.ns_uid = _inside(umap, ob.uid) if umap is not None else ob.uid
    ob.ns_gid = _inside(gmap, ob.gid) if gmap is not None else ob.gid


def _read_bounded(fd: int, limit: int = READ_LIMIT) -> tuple[bytes, bool]:
    chunks, left = [], limit
    while left:
        b = os.read(fd, min(left, 1 << 16))
        if not b:
            return b"".join(chunks), False
        chunks.append(b)
        left -= len(b)
    return b"".join(chunks), bool(os.read(fd, 1))


def _open_file(name: bytes, pfd: int) -> int:
    if _O_NOATIME:
        try:
            return os.open(name, _O_READ | _O_NOATIME, dir_fd=pfd)
        except PermissionError:  # O_NOATIME needs ownership or CAP_FOWNER: open without it
            pass
    return os.open(name, _O_READ, dir_fd=pfd)


def observe_at(rootfd: int, path: Path) -> Observation:
    """What a program whose root is ``rootfd`` sees at ``path`` (the last component not followed)."""
    ob = Observation(path)
    pfd = -1
    try:
        if path and path[-1] == b"":  # "dir/": the whole path must be a directory (symlinks followed)
            pfd, ob.resolved_by = open_dir_in_root(rootfd, path[:-1])
            name = b"."
            st = os.fstat(pfd)
        elif path:
            pfd, ob.resolved_by = open_dir_in_root(rootfd, path[:-1])
            name = path[-1]
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        else:
            pfd, name, ob.resolved_by = os.dup(rootfd), b".", "the mount root"
            st = os.fstat(pfd)
    except OSError as e:
        ob.errno = _err(e)
        if pfd >= 0:
            os.close(pfd)
        return ob
    try:
        ob.kind = _kind_of(st.st_mode)
        ob.size, ob.mode = st.st_size, _stat.S_IMODE(st.st_mode)
        ob.uid, ob.gid = st.st_uid, st.st_gid
        if ob.kind == "symlink":
            try:
                ob.target = os.readlink(name, dir_fd=pfd)
            except OSError:
                ob.target = None
        elif ob.kind == "file":
            try:
                fd = _open_file(name, pfd)
            except OSError as e:
                ob.open_errno = _err(e)
            else:
                try:
                    if _stat.S_ISREG(os.fstat(fd).st_mode):  # replaced meanwhile: read nothing
                        ob.content = _content(*_read_bounded(fd))
                except OSError as e:
                    ob.read_errno = _err(e)
                finally:
                    os.close(fd)
        elif ob.kind == "dir":
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
                try:
                    ob.entries = sorted(os.fsencode(n) for n in os.listdir(fd))
                finally:
                    os.close(fd)
            except OSError as e:
                ob.readdir_errno = _err(e)
    finally:
        os.close(pfd)
    return ob


def open_root(mountpoint: str) -> int:
    """An O_PATH descriptor of the merged root (the mountpoint path itself is the host's)."""
    return os.open(mountpoint, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def observe(mountpoint: str, path: Path) -> Observation:
    rootfd = open_root(mountpoint)
    try:
        return observe_at(rootfd, path)
    finally:
        os.close(rootfd)


# ------------------------------------------------------------------- predicted content


@dataclass
class PredictedContent:
    """The predicted data source's bytes (bounded like the observation), or why unknown."""

    content: Content | None
    where: str
    note: str | None = None

    def as_json(self) -> dict:
        return {**(self.content.as_json() if self.content else {"sha256": None, "bytes": None,
                                                                "truncated": None}),
                "from": self.where, "note": self.note}


def predicted_content(engine, res) -> PredictedContent | None:
    """The hash of the file ``read()`` is predicted to return, read from its layer."""
    if res.errno or res.kind != "file" or res.open_errno or res.data is None:
        return None
    where = engine.where(res.data)
    layer = engine.layer(res.data.layer)
    node = layer.node(res.data.path)
    if node is None or not node.is_reg:
        return PredictedContent(None, where, "the predicted data file is no longer a regular file in its layer")
    if isinstance(layer, MemoryLayer) and res.data.path not in layer.contents:
        return PredictedContent(None, where, "the layer is described without file contents")
    want = min(node.size, READ_LIMIT)
    data = layer.read(res.data.path, want)
    if len(data) != want:
        return PredictedContent(None, where, f"the layer file gave {len(data)} of {want} bytes")
    return PredictedContent(_content(data, node.size > READ_LIMIT), where)


def _layer_hashes(engine, res) -> dict[str, str]:
    """sha256 of every regular file any layer holds for this path (to name observed bytes)."""
    out: dict[str, str] = {}
    for li, p, node, _role in layer_view(engine, res):
        if node is None or not node.is_reg:
            continue
        layer = engine.layer(li)
        if isinstance(layer, MemoryLayer) and p not in layer.contents:
            continue
        want = min(node.size, READ_LIMIT)
        data = layer.read(p, want)
        if len(data) == want:
            out.setdefault(hashlib.sha256(data).hexdigest(), f"{engine.label(li)}:{show_path(p)}")
    return out


# ---------------------------------------------------------------------------- compare


def _fmt(name: str, v) -> str:
    if v is None:
        return "-"
    if name == "mode":
        return f"{v:04o}"
    if isinstance(v, bytes):
        return "'" + show(v) + "'"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(name, x) for x in v) + "]"
    return str(v)


def differences(engine, res, ob: Observation, pc: PredictedContent | None) -> list[tuple[str, object, object]]:
    """(field, predicted, observed) for every field where the observation disagrees."""
    out: list[tuple[str, object, object]] = []

    def diff(name: str, predicted, observed) -> None:
        if predicted != observed:
            out.append((name, predicted, observed))

    diff("errno", res.errno, ob.errno)
    if res.errno is None and ob.errno is None:
        diff("type", res.kind, ob.kind)
        if res.kind != ob.kind:
            return out
        if res.kind != "dir":
            diff("size", res.size, ob.size)
        diff("mode", res.mode, ob.mode)
        # the owner as the host sees it, or as the container's user namespace does
        if not (ob.ns_uid is not None and (res.uid, res.gid) == (ob.ns_uid, ob.ns_gid)):
            diff("uid", res.uid, ob.uid)
            diff("gid", res.gid, ob.gid)
        if res.kind == "symlink":
            diff("target", res.target, ob.target)
        if res.kind == "file":
            diff("open", res.open_errno, ob.open_errno)
            if ob.read_errno:
                out.append(("read", None, ob.read_errno))
            elif pc is not None and pc.content is not None and ob.content is not None:
                diff("content", pc.content.sha256, ob.content.sha256)
        if res.kind == "dir":
            diff("readdir", res.readdir_errno, ob.readdir_errno)
            if res.readdir_errno is None and ob.entries is not None:
                diff("entries", engine.entries(res), ob.entries)
    return out


def content_line(engine, res, ob: Observation, pc: PredictedContent | None) -> str | None:
    """Where the bytes ``read()`` returned come from, in words."""
    if ob.content is None:
        return None
    text = f"read() {ob.content.text()}"
    if pc is None:
        return text
    if pc.content is None:
        return text + f"; the predicted source {pc.where} cannot be compared ({pc.note})"
    if pc.content.sha256 == ob.content.sha256:
        shadowed = any(f.rule == "shadowed-lowerdata" for f in res.findings)
        return text + f": the bytes of {pc.where}, as predicted" + (
            " (shadowing observed: not the data-only layer's copy)" if shadowed else "")
    owner = _layer_hashes(engine, res).get(ob.content.sha256)
    return text + (f": the bytes of {owner}" if owner else ": bytes of no layer file at this path") + \
        f", not those of {pc.where} as predicted"


def compare(engine, res, ob: Observation, *, pc: PredictedContent | None = None,
            fresh=None, whatif: str | None = None) -> list[str]:
    """Disagreements between a prediction and an observation, the last one the evidence."""
    if pc is None:
        pc = predicted_content(engine, res)
    diffs = differences(engine, res, ob, pc)
    out = []
    for name, predicted, observed in diffs:
        if name == "content":
            out.append(f"content: {content_line(engine, res, ob, pc)}")
        else:
            out.append(f"{name}: predicted {_fmt(name, predicted)}, observed {_fmt(name, observed)}")
    if out and whatif:
        out.append(f"evidence: the prediction is a what-if (-o {show(whatif.encode())}) while this mount "
                   "runs with its own options: differences are expected")
    elif out:
        out.append(evidence(engine, res, ob, diffs, fresh=fresh))
    return out


# --------------------------------------------------------------------------- evidence


def fresh_mount(engine) -> tuple[int | None, str]:
    """A detached, lower-only overlay of the same layers with the same lookup options.

    The upper layer (if any) becomes the top lower layer, so nothing is ever written.  The
    mount is never attached to a mountpoint: it lives as long as the returned descriptor.
    Returns (descriptor, "") or (None, why not).
    """

    stack = engine.stack
    regular = ([stack.upper] if stack.upper is not None else []) + list(stack.lowers)
    if any(l.path is None for l in regular + list(stack.data)):
        return None, "a layer is held in memory (no directory to mount)"
    if os.geteuid() != 0:
        return None, "mounting needs root"
    o = engine.options
    opts: list[tuple[str, str | None]] = []
    if o.userxattr:
        opts.append(("userxattr", None))
    else:
        opts.append(("redirect_dir", "follow" if o.redirect_follow else "nofollow"))
        opts.append(("metacopy", "on" if o.metacopy else "off"))
        if o.verity != "off":
            opts.append(("verity", o.verity))
    sc = mountapi._syscall
    fs_fd = sc(mountapi.SYS_FSOPEN, ctypes.c_char_p(b"overlay"), ctypes.c_uint(mountapi.FSOPEN_CLOEXEC))
    if fs_fd < 0:
        return None, f"fsopen: {_errno.errorcode.get(-fs_fd, -fs_fd)}"
    try:
        def config(cmd: int, key: bytes | None, value: bytes | None) -> str | None:
            r = sc(mountapi.SYS_FSCONFIG, ctypes.c_int(fs_fd), ctypes.c_uint(cmd), ctypes.c_char_p(key),
                   ctypes.c_char_p(value), ctypes.c_int(0))
            if r < 0:
                log = "; ".join(mountapi.fs_context_log(fs_fd))
                return f"{_errno.errorcode.get(-r, -r)}" + (f" ({log})" if log else "")
            return None

        steps = [(mountapi.FSCONFIG_SET_STRING, b"source", b"ovlinspect-observe")]
        steps += [(mountapi.FSCONFIG_SET_STRING, b"lowerdir+", os.fsencode(l.path)) for l in regular]
        steps += [(mountapi.FSCONFIG_SET_STRING, b"datadir+", os.fsencode(l.path)) for l in stack.data]
        steps += [(mountapi.FSCONFIG_SET_FLAG if v is None else mountapi.FSCONFIG_SET_STRING,
                   k.encode(), None if v is None else v.encode()) for k, v in opts]
        steps.append((mountapi.FSCONFIG_CMD_CREATE, None, None))
        for cmd, key, value in steps:
            why = config(cmd, key, value)
            if why:
                return None, f"the kernel refused it: {why}"
        mnt = sc(mountapi.SYS_FSMOUNT, ctypes.c_int(fs_fd), ctypes.c_uint(mountapi.FSMOUNT_CLOEXEC),
                 ctypes.c_uint(0))
        if mnt < 0:
            return None, f"fsmount: {_errno.errorcode.get(-mnt, -mnt)}"
        return mnt, ""
    finally:
        os.close(fs_fd)


def observe_fresh(engine, path: Path) -> tuple[Observation | None, str]:
    """The path observed alone on a fresh detached mount of the same layers (or why not)."""
    fd, why = fresh_mount(engine)
    if fd is None:
        return None, why
    try:
        return observe_at(fd, path), ""
    finally:
        os.close(fd)


def evidence(engine, res, ob: Observation, diffs, *, fresh=None) -> str:
    """What a disagreement points to, from evidence gathered now: access order, an unmodelled
    feature, layers changed under the mount or while we looked, or, only when all of these
    are ruled out, ovlinspect."""
    rules = {f.rule for f in res.findings} | {f.rule for f in engine.stack_findings()}
    # 1. the layers read again: do they still predict the same?
    again_engine = engine.__class__(_reopen(engine.stack), options=engine.options, kernel=engine.kernel,
                                    profile=engine.profile)
    again = again_engine.resolve(res.path)
    if path_json(again_engine, again) != path_json(engine, res) or (
            _hash(predicted_content(again_engine, again)) != _hash(predicted_content(engine, res))):
        return ("evidence: the layers changed while ovlinspect looked (a second read predicts "
                "differently); changing layers under a mounted overlay is undefined: remount, then "
                "explain again")
    # 2. owners alone, all shifted by one offset: an idmapping between the layers and the mount
    names = {d[0] for d in diffs}
    if names and names <= {"uid", "gid"} and None not in (res.uid, res.gid, ob.uid, ob.gid):
        shift = {ob.uid - res.uid, ob.gid - res.gid} if names == {"uid", "gid"} else (
            {ob.uid - res.uid} if "uid" in names else {ob.gid - res.gid})
        if len(shift) == 1:
            return (f"evidence: owners only, shifted by {shift.pop()}: the mount sees its layers "
                    "through an idmapping (idmapped layer mounts, as podman --uidmap makes them, or "
                    "an idmapped overlay mount), and ovlinspect reads the layer directories "
                    "unmapped; with --pid or a container TARGET owners are compared as the "
                    "container's user namespace sees them" + (f" (see the note: {engine.stack.description})"
                                                              if "idmapped" in engine.stack.description else ""))
    # 3. a known regression of the running kernel that this stack meets and the mismatch fits

    known = observed_bug(engine, diffs, ob)
    if known:
        return known
    # 4. the kernel itself, fresh: the same layers mounted again, this path looked up first
    if fresh is None:
        fresh = observe_fresh(engine, res.path)
    fob, why = fresh
    if fob is None:
        tail = ("; the kernel caches lookups, so layers changed after this mount looked the path "
                "up are one explanation, an ovlinspect bug another")
        if "inode-alias" in rules or "ESTALE" in (ob.errno, ob.open_errno):
            return ("evidence: inode aliasing (see the inode-alias finding): the kernel answers for "
                    "the path looked up first since the mount; the prediction is that of a fresh "
                    f"mount looking this path up first (no fresh mount to confirm: {why})")
        return f"evidence: not conclusive: a fresh mount to compare with was not possible ({why}){tail}"
    fresh_diffs = {d[0] for d in differences(engine, res, fob, predicted_content(engine, res))}
    live_names = {d[0] for d in diffs}
    if not (fresh_diffs & live_names):
        if "inode-alias" in rules or "ESTALE" in (ob.errno, ob.open_errno, ob.readdir_errno):
            return ("evidence: access order (inode aliasing, see the inode-alias finding): a fresh "
                    "mount of the same layers looking this path up first agrees with the prediction; "
                    "this mount looked up an alias first")
        return ("evidence: this overlay cached the path before its layers changed: a fresh mount "
                "of the same layers agrees with the prediction, and the layers read the same twice; "
                "changing layers under a mounted overlay is undefined: remount to see them as they are")
    same_as_live = all(getattr(fob, a) == getattr(ob, a) for a in
                       ("errno", "kind", "size", "mode", "uid", "gid", "target", "open_errno",
                        "entries", "readdir_errno"))
    same_as_live = same_as_live and _hash(fob.content) == _hash(ob.content)
    if "not-modelled" in rules:
        return ("evidence: the mount uses a feature ovlinspect does not model (see the not-modelled "
                "note), and a fresh mount of the same layers disagrees with the prediction too: that "
                "feature is the likely cause")
    upper = (" (the fresh mount takes the upper layer as its top lower layer)"
             if engine.stack.upper is not None else "")
    if same_as_live:
        return ("evidence: bug in ovlinspect: a fresh mount of the same layers, looking this path up "
                f"first, answers as this mount does{upper}; the layers read the same twice and no "
                "unmodelled feature is in use; please report it with `ovlinspect export`")
    return ("evidence: not conclusive: a fresh mount of the same layers disagrees both with this "
            f"mount and with the prediction{upper}; the kernel caches lookups and access order "
            "matters; please report it with `ovlinspect export` if a remount does not help")


def _hash(x) -> str | None:
    if x is None:
        return None
    c = x.content if isinstance(x, PredictedContent) else x
    return c.sha256 if c is not None else None


def _reopen(stack):
    return stack.reopened()
