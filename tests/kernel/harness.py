"""Build a stack, mount it, look at it through the kernel, and compare with the engine.

A :class:`Case` describes layers with stack-file entries (see :mod:`ovlinspect.sources.stackfile`),
mount options, and what the kernel is expected to say about some paths.  Regular files
without explicit content get content naming their layer and path (``"B:/1e/abcdef\\n"``), so
the bytes read through the mount prove which layer supplied them.

* :func:`build` materializes a case; :func:`mount_errno` mounts it (``legacy`` or ``fsconfig``);
* :func:`observe` records, per path, what ``lstat``/``readlink``/``open``/``read``/``readdir``
  give on the mount;
* :func:`predict` runs ``ovlinspect explain --json`` on the described layers (or on the live
  mount) and parses the document;
* :func:`compare` lists every field where kernel and prediction disagree.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as _errno
import io
import json
import os
import stat as _stat
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from ovlinspect.live.build import BuildError, BuiltStack, build_stack
from ovlinspect.live.mountapi import KernelLog
from ovlinspect.model.layers import join_path, split_path
from ovlinspect.sources.stackfile import dump_stack, stack_from_dict

READ_LIMIT = 64 * 1024

# ----------------------------------------------------------------------- mount namespace

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

_state: dict[str, Any] = {}


def _mount(source: bytes | None, target: str, fstype: bytes | None, flags: int, data: bytes | None) -> int:
    res = _libc.mount(source, os.fsencode(target), fstype, flags, data)
    return 0 if res == 0 else ctypes.get_errno()


def enter_private_namespace() -> bool:
    """Move this process into its own mount namespace with ``/`` private (once)."""
    if "private_ns" not in _state:
        ok = False
        if _libc.unshare(CLONE_NEWNS) == 0:
            ok = _mount(None, "/", None, MS_REC | MS_PRIVATE, None) == 0
        _state["private_ns"] = ok
    return _state["private_ns"]


def kernel_unavailable_reason() -> str | None:
    """Why overlay mounts cannot be tested here, or None when they can."""
    if "reason" in _state:
        return _state["reason"]
    reason = None
    if os.geteuid() != 0:
        reason = f"kernel tests need root (running as uid {os.geteuid()})"
    else:
        try:
            with open("/proc/filesystems") as f:
                if "overlay" not in f.read().split():
                    reason = "the running kernel has no overlay filesystem"
        except OSError:
            reason = "cannot read /proc/filesystems"
    if reason is None:
        enter_private_namespace()
        try:
            with private_tmpfs() as tmp:
                for d in ("a", "b", "m"):
                    os.mkdir(os.path.join(tmp, d))
                err = _mount(b"overlay", os.path.join(tmp, "m"), b"overlay", 0,
                             os.fsencode(f"lowerdir={tmp}/a:{tmp}/b"))
                if err:
                    reason = f"cannot mount overlay here: {_errno.errorcode.get(err, err)}"
        except OSError as e:
            reason = f"cannot mount tmpfs here: {e}"
    _state["reason"] = reason
    return reason


def _mounts_below(path: str) -> list[str]:
    out = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            mp = line.split(b" ")[4].decode("unicode_escape")
            if mp == path or mp.startswith(path + "/"):
                out.append(mp)
    return out


@contextlib.contextmanager
def private_tmpfs() -> Iterator[str]:
    """A fresh tmpfs on a new temporary directory; unmounts everything below it after."""
    enter_private_namespace()
    path = tempfile.mkdtemp(prefix="ovlk-")
    err = _mount(b"tmpfs", path, b"tmpfs", 0, b"mode=0755,size=64m")
    if err:
        os.rmdir(path)
        raise OSError(err, f"mount tmpfs on {path}: {os.strerror(err)}")
    try:
        yield path
    finally:
        for mp in sorted(_mounts_below(path), key=len, reverse=True):
            _libc.umount2(os.fsencode(mp), MNT_DETACH)
        try:
            os.rmdir(path)
        except OSError:
            pass


# ------------------------------------------------------------------------------- cases


def E(path: str, type: str = "file", **kw: Any) -> dict:
    """One stack-file entry (``E("/a/b", "dir", mode="0700")``)."""
    return {"path": path, "type": type, **kw}


@dataclass
class Case:
    """A stack to build and mount, and what the kernel should say about it.

    ``layers``: (role, name, entries) in kernel order, entries as stack-file entry dicts.
    ``expect``: path -> {field: value}; fields are those of :class:`Observation`, plus
    ``data_from`` ("C:/1e/abcdef": the bytes read equal that layer file's bytes).
    ``mount_errno``: the errno name the mount itself fails with, when it should fail.
    ``paths``: the paths to observe, in this order (default: :func:`paths_of_case`).
    """

    name: str
    layers: list[tuple[str, str, list[dict]]]
    options: str = ""
    expect: dict[str, dict] = field(default_factory=dict)
    mount_errno: str | None = None
    paths: list[str] | None = None
    note: str = ""
    #: the first kernel the row's own claims (``expect``, ``mount_errno``) were checked on; on
    #: older kernels only the engine is compared with the kernel
    since: tuple[int, int] = (6, 16)
    #: real operations done through a mount of the built layers before anything is predicted
    #: or observed (upper state made by the kernel's own copy-ups): see :func:`apply_ops`
    ops: list[tuple] = field(default_factory=list)
    #: the options of that mount (default: ``options``; a different index=/xino= is a user
    #: who changed them between two mounts)
    ops_options: str | None = None
    #: hard links made in the built lower layers first: (layer label, existing path, new path)
    links: list[tuple[str, str, str]] = field(default_factory=list)
    #: after the operations, the world changed the way users change it: "copy-lower" (the
    #: first lower layer replaced by a ``cp -a`` copy of itself: a restore, a migration; every
    #: origin handle into it goes stale), "copy-upper" (upper and workdir replaced by a copy),
    #: "reextract-lower" (everything below the last lower's root re-created in place: the
    #: root's handle still matches, every other one is stale), "swap-lower" (two files or two
    #: directories of the last lower swap names: their handles decode to the other name)
    after: str | None = None

    def __str__(self) -> str:
        return self.name


def _label_content(layer: str, path: str, size: int | None) -> dict:
    text = f"{layer}:{path}\n".encode("utf-8", "surrogateescape")
    if size is not None:
        text = text[:size]
    try:
        return {"content": text.decode("utf-8")}
    except UnicodeDecodeError:
        return {"content_hex": text.hex()}


def case_doc(case: Case) -> dict:
    """The case as a stack-file document (files get their naming content)."""
    layers = []
    for role, name, entries in case.layers:
        out = []
        for e in entries:
            e = dict(e)
            if e.get("type", "file") == "file" and "content" not in e and "content_hex" not in e:
                p = e.get("path") or os.fsdecode(bytes.fromhex(e["path_hex"]))
                e.update(_label_content(name, p, e.get("size")))
            out.append(e)
        layers.append({"role": role, "name": name, "entry": out})
    doc: dict[str, Any] = {"version": 1, "description": case.name, "layer": layers}
    if case.options:
        doc["options"] = case.options
    return doc


def case_stack(case: Case):
    return stack_from_dict(case_doc(case), ".", source=f"case {case.name}")


def case_toml(case: Case) -> str:
    """A self-contained stack file reproducing the case (for bug reports)."""
    return dump_stack(case_stack(case))


def paths_of_case(case: Case) -> list[str]:
    """``/``, every path of every layer, absolute and relative redirect targets."""
    seen: dict[str, None] = {"/": None}

    def add(p: bytes) -> None:
        parts = split_path(p)
        for i in range(1, len(parts) + 1):
            seen.setdefault(os.fsdecode(join_path(parts[:i])), None)

    for _role, _name, entries in case.layers:
        for e in entries:
            raw = os.fsencode(e["path"]) if "path" in e else bytes.fromhex(e["path_hex"])
            add(raw)
            for key, is_hex in (("xattrs", False), ("xattrs_hex", True)):
                for xname, value in (e.get(key) or {}).items():
                    if not xname.endswith("overlay.redirect"):
                        continue
                    v = bytes.fromhex(value) if is_hex else os.fsencode(value)
                    if not v or b"\0" in v:
                        continue
                    if v.startswith(b"/"):
                        add(v)
                    else:
                        add(os.path.dirname(raw) + b"/" + v)
    for _label, _old, new in case.links:  # hard links made in a lower layer
        add(os.fsencode(new))
    for op in case.ops:  # what real operations through a mount touched
        for a in op[1:]:
            if isinstance(a, str):
                add(os.fsencode(a))
    return sorted(seen, key=lambda p: (p.count("/") if p != "/" else 0, p))


def build(case: Case, dest: str) -> BuiltStack:
    built = build_stack(case_stack(case), dest, exact=True)  # our own cases: every bit as described
    for label, old, new in case.links:
        try:
            os.link(built.dir_of(label) + old, built.dir_of(label) + new, follow_symlinks=False)
        except OSError:
            pass  # not a regular file there, or the new name exists: no link
    built.op_results = apply_ops(built, case) if case.ops else []  # type: ignore[attr-defined]
    return built


# ------------------------------------------------------------------ upper state by real ops


def _parent_in_root(rootfd: int, path: str) -> tuple[int, str]:
    """(O_PATH fd of the parent, resolved inside the merged root; last name)."""
    parent, name = os.path.split(path.rstrip("/") or "/")
    return openat2_in_root(rootfd, parent or "/", _O_PATH_DIR), name or "."


def _rmtree_at(dfd: int, name: str) -> None:
    """rm -r of ``name`` in ``dfd`` through the mount, never following a symlink."""
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if not _stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dfd)
        return
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    try:
        for child in os.listdir(fd):
            _rmtree_at(fd, child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dfd)


def _one_op(rootfd: int, op: tuple) -> None:
    kind, path = op[0], op[1]
    pfd, name = _parent_in_root(rootfd, path)
    try:
        if kind in ("rename", "link"):
            qfd, qname = _parent_in_root(rootfd, op[2])
            try:
                if kind == "rename":
                    os.rename(name, qname, src_dir_fd=pfd, dst_dir_fd=qfd)
                else:
                    os.link(name, qname, src_dir_fd=pfd, dst_dir_fd=qfd, follow_symlinks=False)
            finally:
                os.close(qfd)
            return
        if kind == "mkdir":
            os.mkdir(name, 0o755, dir_fd=pfd)
        elif kind == "create":
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=pfd)
            os.write(fd, f"new:{path}\n".encode("utf-8", "surrogateescape"))
            os.close(fd)
        elif kind == "rm":
            _rmtree_at(pfd, name)
        elif kind == "opaque":  # rm -r and mkdir again: an opaque directory
            _rmtree_at(pfd, name)
            os.mkdir(name, 0o755, dir_fd=pfd)
        else:  # chmod / write / truncate: only regular files and directories, never a symlink
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if kind == "chmod":
                if not (_stat.S_ISREG(st.st_mode) or _stat.S_ISDIR(st.st_mode)):
                    raise OSError(_errno.ELOOP, "not a file or directory")
                os.chmod(name, op[2], dir_fd=pfd)
            else:
                if not _stat.S_ISREG(st.st_mode):
                    raise OSError(_errno.EISDIR, "not a regular file")
                fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                             | (os.O_APPEND if kind == "write" else os.O_TRUNC), dir_fd=pfd)
                try:
                    if kind == "write":
                        os.write(fd, b"appended\n")
                finally:
                    os.close(fd)
    finally:
        os.close(pfd)


def apply_ops(built: BuiltStack, case: Case) -> list[str]:
    """Mount the built layers (with ``case.ops_options``), do ``case.ops`` through the mount,
    unmount: the upper, work and index directories are left as the kernel's copy-ups leave
    them.  Operations: ("chmod", path, mode) (a metacopy copy-up with metacopy=on),
    ("write", path) and ("truncate", path) (a full copy-up), ("rename", src, dst) (redirects
    for directories), ("link", src, dst), ("rm", path) (whiteouts), ("opaque", path) (rm -r and
    mkdir), ("mkdir", path), ("create", path).  Paths are resolved inside the merged root.
    Returns one outcome per operation ("ok" or the errno name; the mount's errno alone when
    the kernel refuses it)."""
    target = built.dest + "-ops"
    opts = case.options if case.ops_options is None else case.ops_options
    err = mount_errno(built, target, options=opts)
    if err is not None:
        return [f"mount {err}"]
    out = []
    try:
        rootfd = os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for op in case.ops:
                try:
                    _one_op(rootfd, op)
                    out.append("ok")
                except OSError as e:
                    out.append(_ename(e))
        finally:
            os.close(rootfd)
    finally:
        built.umount_all()
    built.op_state = upper_state(built)  # type: ignore[attr-defined]
    if case.after == "copy-lower" and built.lowers:
        _replace_by_copy(built.lowers[0])
    elif case.after == "copy-upper" and built.upper and built.workdir:
        _replace_by_copy(built.upper, built.workdir)
    elif case.after == "reextract-lower" and built.lowers:
        _reextract(built.lowers[-1])
    elif case.after == "swap-lower" and built.lowers:
        _swap(built.lowers[-1])
    return out


def _swap(layer: str) -> None:
    """Swap the names of two regular files and of two directories of a layer (the first ones
    in sorted order): the handles still decode, to the object now at the other name."""
    kinds: dict[str, list[str]] = {"file": [], "dir": []}
    for d, dirs, files in os.walk(layer):
        dirs.sort()
        for n in sorted(files):
            if _stat.S_ISREG(os.lstat(os.path.join(d, n)).st_mode):
                kinds["file"].append(os.path.join(d, n))
        kinds["dir"] += [os.path.join(d, n) for n in dirs]
    for found in kinds.values():
        pair = next(((a, b) for i, a in enumerate(found) for b in found[i + 1:]
                     if not (b + "/").startswith(a + "/")), None)
        if pair is None:
            continue
        a, b = pair
        tmp = os.path.join(layer, ".swap")
        os.rename(a, tmp)
        os.rename(b, a)
        os.rename(tmp, b)
        break  # one swap per layer: a second could undo what the first moved


def _reextract(layer: str) -> None:
    """Re-create everything below a layer's root in place (the root keeps its inode): a layer
    unpacked again into the same directory; every object below gets a new inode and handle."""
    import shutil
    import subprocess

    stage = layer.rstrip("/") + ".again"
    os.mkdir(stage)
    names = os.listdir(layer)
    if names:
        subprocess.run(["cp", "-a", *[os.path.join(layer, n) for n in names], stage], check=True)
    for n in names:
        p = os.path.join(layer, n)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)
    if names:
        subprocess.run(["cp", "-a", *[os.path.join(stage, n) for n in names], layer], check=True)
    shutil.rmtree(stage)


def _replace_by_copy(*dirs: str) -> None:
    """Replace directories by ``cp -a`` copies of themselves (xattrs, whiteouts and hard links
    within one copy kept; new inode numbers and handles), as a restore or a migration does."""
    import shutil
    import subprocess

    parent = os.path.dirname(dirs[0])
    stage = os.path.join(parent, ".copy")
    os.mkdir(stage)
    subprocess.run(["cp", "-a", *dirs, stage], check=True)
    for d in dirs:
        shutil.rmtree(d)
        os.rename(os.path.join(stage, os.path.basename(d)), d)
    os.rmdir(stage)


def upper_state(built: BuiltStack) -> dict[str, int]:
    """What a mount left: overlay xattrs and whiteouts in the upper, entries in work/index."""
    counts: dict[str, int] = {}
    for top, what in ((built.upper, "upper"), (os.path.join(built.workdir or "", "index"), "index")):
        if not top or not os.path.isdir(top):
            continue
        for d, dirs, files in os.walk(top):
            for n in dirs + files:
                full = os.path.join(d, n)
                if what == "index":
                    counts["index entries"] = counts.get("index entries", 0) + 1
                    continue
                st = os.lstat(full)
                keys = ["upper whiteout"] if _stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 else []
                try:
                    names = os.listxattr(full, follow_symlinks=False)
                except OSError:
                    names = []
                keys += [f"upper {x.split('overlay.', 1)[1]}" for x in names if "overlay." in x]
                for k in keys:
                    counts[k] = counts.get(k, 0) + 1
    return counts


def mount_errno(built: BuiltStack, target: str, api: str = "legacy", options: str | None = None) -> str | None:
    """Mount; None on success, else the errno name."""
    os.makedirs(target, exist_ok=True)
    try:
        built.mount(target, api=api, options=options)
    except OSError as e:
        return _errno.errorcode.get(e.errno, str(e.errno))
    return None


# ----------------------------------------------------------------------------- observe


@dataclass
class Observation:
    errno: str | None = None
    type: str | None = None
    size: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    target: str | None = None
    open_errno: str | None = None
    data: bytes | None = None
    entries: list[str] | None = None
    readdir_errno: str | None = None
    #: listxattr names through the mount (checked against case expectations only).
    xattrs: list[str] | None = None
    #: st_ino and st_dev of the lstat (compared where the prediction gives them, see compare)
    ino: int | None = None
    dev: int | None = None


def _ename(e: OSError) -> str:
    return _errno.errorcode.get(e.errno, str(e.errno))


_KINDS = {
    _stat.S_IFREG: "file", _stat.S_IFDIR: "dir", _stat.S_IFLNK: "symlink", _stat.S_IFCHR: "chardev",
    _stat.S_IFBLK: "blockdev", _stat.S_IFIFO: "fifo", _stat.S_IFSOCK: "socket",
}


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


SYS_OPENAT2 = 437
RESOLVE_IN_ROOT = 0x10
_libc.syscall.restype = ctypes.c_long


def openat2_in_root(rootfd: int, path: str, flags: int) -> int:
    """``openat2(rootfd, path, flags, RESOLVE_IN_ROOT)``: the path is resolved as if ``rootfd``
    were ``/`` (``..`` stops there, absolute symlinks start there), like a path inside the
    merged tree."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT)
    rel = path.lstrip("/") or "."
    fd = _libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(rootfd), ctypes.c_char_p(os.fsencode(rel)),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


_O_PATH_DIR = os.O_PATH | os.O_DIRECTORY


def _lstat_in_root(rootfd: int, path: str) -> tuple[os.stat_result, int, str]:
    """lstat of ``path`` inside the root; returns (stat, parent fd (caller closes), name)."""
    parent, name = os.path.split(path.rstrip("/") or "/")
    if not name:
        fd = os.dup(rootfd)
        return os.stat(fd), fd, "."
    pfd = openat2_in_root(rootfd, parent, _O_PATH_DIR)
    try:
        return os.stat(name, dir_fd=pfd, follow_symlinks=False), pfd, name
    except BaseException:
        os.close(pfd)
        raise


def _listxattr_at(pfd: int, name: str) -> list[str]:
    where = f"/proc/self/fd/{pfd}" if name == "." else f"/proc/self/fd/{pfd}/{name}"
    return sorted(os.listxattr(where, follow_symlinks=False))


def observe(mountpoint: str, paths: list[str]) -> dict[str, Observation]:
    """What the kernel shows for each path, in the given order.

    Paths are resolved inside the mount as inside a root (``openat2`` with RESOLVE_IN_ROOT),
    so a symlink in the middle of a path stays in the merged tree.  Only reads: ``lstat``,
    ``readlink``, ``open(O_RDONLY)`` + ``read`` and ``readdir``.  A directory is listed right
    after its ``lstat``, as ``ls -l`` would: with paths ordered parents first (as
    :func:`paths_of_case` orders them), every directory is listed before any of its entries
    is looked up.  The order matters: a merged directory listed after a lookup of one of its
    entries failed hides that entry, and inode aliasing makes the second of two aliases fail
    with ESTALE (see :func:`refresh_stale`).
    """
    out: dict[str, Observation] = {}
    rootfd = os.open(mountpoint, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for p in paths:
            o = out[p] = _observe_one(rootfd, p)
            if o.type == "dir":
                try:
                    fd = openat2_in_root(rootfd, p, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        o.entries = sorted(os.listdir(fd))
                    finally:
                        os.close(fd)
                except OSError as e:
                    o.readdir_errno = _ename(e)
    finally:
        os.close(rootfd)
    return out


def _observe_one(rootfd: int, p: str) -> Observation:
    o = Observation()
    try:
        st, pfd, name = _lstat_in_root(rootfd, p)
    except OSError as e:
        o.errno = _ename(e)
        return o
    try:
        o.type = _KINDS.get(_stat.S_IFMT(st.st_mode), "?")
        o.size = st.st_size
        o.mode = _stat.S_IMODE(st.st_mode)
        o.uid, o.gid = st.st_uid, st.st_gid
        o.ino, o.dev = st.st_ino, st.st_dev
        try:
            o.xattrs = _listxattr_at(pfd, name)
        except OSError as e:
            o.xattrs = [f"<listxattr {_ename(e)}>"]
        if o.type == "symlink":
            try:
                o.target = os.fsdecode(os.readlink(os.fsencode(name), dir_fd=pfd))
            except OSError as e:
                o.target = f"<readlink {_ename(e)}>"
        elif o.type == "file":
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY,
                             dir_fd=pfd)
            except OSError as e:
                o.open_errno = _ename(e)
            else:
                try:
                    o.data = _read_bounded(fd)
                except OSError as e:
                    o.open_errno = "read:" + _ename(e)
                finally:
                    os.close(fd)
    finally:
        os.close(pfd)
    return o



# ----------------------------------------------------------------------------- predict


class PredictionUnavailable(Exception):
    """The CLI is missing or refused the invocation (the reason is the message)."""


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run ``ovlinspect.cli.main(argv)`` capturing stdout and stderr."""
    try:
        from ovlinspect import cli
    except ImportError as e:
        raise PredictionUnavailable(f"ovlinspect.cli is not available yet ({e})") from None
    if not hasattr(cli, "main"):
        raise PredictionUnavailable("ovlinspect.cli has no main() yet")
    out_b, err_b = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_b, encoding="utf-8", errors="surrogateescape", write_through=True)
    err = io.TextIOWrapper(err_b, encoding="utf-8", errors="surrogateescape", write_through=True)
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        try:
            rc = cli.main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    finally:
        out.flush()
        err.flush()
        sys.stdout, sys.stderr = old
    return rc, out_b.getvalue().decode("utf-8", "surrogateescape"), err_b.getvalue().decode("utf-8", "replace")


def explain_argv(built: BuiltStack, paths: list[str]) -> list[str]:
    argv = ["explain", "--json", "--lowerdir", built.lowerdir_string()]
    if built.upper is not None:
        argv += ["--upperdir", built.upper, "--workdir", built.workdir]
    if built.options:
        argv += ["-o", built.options]
    return argv + list(paths)


def predict(built: BuiltStack, paths: list[str]) -> dict:
    """The engine's document for the described (not mounted) stack."""
    argv = explain_argv(built, paths)
    rc, out, err = run_cli(argv)
    if rc != 0:
        raise AssertionError(f"ovlinspect {' '.join(argv)} exited {rc}: {err.strip()}")
    return json.loads(out)


def predict_live(mountpoint: str, paths: list[str]) -> dict:
    """The engine's document for a mounted overlay; PredictionUnavailable if unsupported."""
    rc, out, err = run_cli(["explain", "--json", mountpoint, *paths])
    if rc != 0:
        raise PredictionUnavailable(f"live TARGET not supported yet (exit {rc}: {err.strip()[:200]})")
    return json.loads(out)


# ----------------------------------------------------------------------------- compare


@dataclass
class Disagreement:
    path: str
    field: str
    kernel: Any
    predicted: Any
    trace: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        s = f"{self.path}: {self.field}: kernel {self.kernel!r}, predicted {self.predicted!r}"
        if self.trace:
            s += "\n      trace: " + "\n             ".join(str(t) for t in self.trace)
        return s


def _read_layer_file(layer_dir: str, path: str) -> bytes | str:
    full = layer_dir + ("" if path == "/" else path)
    try:
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        return f"<cannot open {full}: {_ename(e)}>"
    try:
        if not _stat.S_ISREG(os.fstat(fd).st_mode):
            return f"<not a regular file: {full}>"
        return _read_bounded(fd)
    finally:
        os.close(fd)


def _read_bounded(fd: int) -> bytes:
    """At most READ_LIMIT bytes from an open file, read to its end."""
    chunks, left = [], READ_LIMIT
    while left:
        b = os.read(fd, left)
        if not b:
            break
        chunks.append(b)
        left -= len(b)
    return b"".join(chunks)


def _short(b: Any) -> Any:
    if isinstance(b, bytes) and len(b) > 80:
        return b[:80] + b"..." + f"({len(b)} bytes)".encode()
    return b


def compare(obs: dict[str, Observation], pred: dict, layer_dirs: list[str] | None = None,
            aliased: set[str] = frozenset(), inodes: bool = False,
            workdir: str | None = None) -> list[Disagreement]:
    """Field-by-field differences between kernel observations and an explain document.

    ``layer_dirs`` are the layer directories indexed like the document's ``layers`` (default:
    the document's own layer paths); the predicted data source is read from there directly.
    ``aliased``: paths that gave ESTALE because of inode aliasing (access order); a listing
    may drop them (readdir looks entries up and hides the ones that fail), which is tolerated.
    With ``inodes``, ``st_ino`` is compared where the prediction gives one (not for aliased
    paths: an alias shows the inode of whichever path was looked up first), and ``st_dev`` as
    a relation: "overlay" is the merged root's device, a pseudo device is another one.
    """
    if layer_dirs is None:
        layer_dirs = [l["path"] for l in pred.get("layers", [])]
    out: list[Disagreement] = []
    by_path = {p["path"]: p for p in pred.get("paths", [])}
    for path, o in obs.items():
        p = by_path.get(path)
        if p is None:
            out.append(Disagreement(path, "path", "observed", "missing from the prediction"))
            continue
        trace = list(p.get("trace") or [])

        def diff(fld: str, k: Any, v: Any) -> None:
            if k != v:
                out.append(Disagreement(path, fld, _short(k), _short(v), trace))

        diff("errno", o.errno, p.get("errno"))
        if o.errno is not None or p.get("errno") is not None:
            continue
        diff("type", o.type, p.get("type"))
        if o.type != p.get("type"):
            continue
        diff("size", o.size, p.get("size"))
        diff("mode", oct(o.mode) if o.mode is not None else None,
             oct(p["mode"]) if isinstance(p.get("mode"), int) else p.get("mode"))
        diff("uid", o.uid, p.get("uid"))
        diff("gid", o.gid, p.get("gid"))
        ino = p.get("inode") if inodes and path not in aliased else None
        if ino:
            if ino.get("st_ino") is not None:
                diff("st_ino", o.ino, ino["st_ino"])
            root = obs.get("/")
            if root is not None and root.dev is not None and path != "/":
                diff("st_dev", "overlay" if o.dev == root.dev else "another device",
                     "overlay" if ino.get("st_dev") == "overlay" else "another device")
        if o.type == "symlink":
            diff("target", o.target, p.get("target"))
        if o.type == "file":
            diff("open_errno", o.open_errno, p.get("open_errno"))
            if o.open_errno is None and p.get("open_errno") is None:
                src = p.get("data")
                served = [f["message"] for f in p.get("findings", []) if f["rule"] == "index-served"]
                if not src and served and workdir:
                    # served from an index entry (the copied-up alias of a lower hard link): the
                    # bytes are the entry's, which no layer path names
                    name = served[0].split("work/index/", 1)[-1].split(" ", 1)[0]
                    expected = _read_layer_file(os.path.join(workdir, "index"), "/" + name)
                    if expected != o.data:
                        out.append(Disagreement(path, f"data (from index entry {name})", _short(o.data),
                                                _short(expected), trace))
                elif not src:
                    out.append(Disagreement(path, "data", _short(o.data), None, trace))
                else:
                    try:
                        expected = _read_layer_file(layer_dirs[src["layer"]], src["path"])
                    except (IndexError, KeyError, TypeError):
                        expected = f"<bad data reference {src!r}>"
                    if expected != o.data:
                        out.append(Disagreement(path, f"data (from layer {src.get('layer')} {src.get('path')})",
                                                _short(o.data), _short(expected), trace))
        if o.type == "dir" and (o.readdir_errno is not None or p.get("readdir_errno") is not None):
            # explain-json v1 has no field for a failing readdir; "readdir_errno" is the proposal.
            diff("readdir_errno", o.readdir_errno, p.get("readdir_errno"))
        elif o.type == "dir":
            k = o.entries
            v = p.get("entries")
            if isinstance(k, list) and isinstance(v, list) and k != v:
                base = "" if path == "/" else path
                extra = set(v) ^ set(k)
                if all(f"{base}/{n}" in aliased for n in extra):
                    continue
            diff("entries", k, v)
    return out


def format_disagreements(case_name: str, dis: list[Disagreement], toml: str | None = None) -> str:
    lines = [f"{len(dis)} disagreement(s) between the kernel and the prediction in {case_name}:"]
    lines += ["  " + str(d) for d in dis]
    if toml:
        lines += ["", "stack file reproducing it:", toml]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- run a case


@dataclass
class Result:
    case: Case
    built: BuiltStack
    target: str
    paths: list[str]
    mount_errno: str | None
    obs: dict[str, Observation]
    #: Paths that gave ESTALE on the first pass (inode aliasing), re-observed on fresh mounts.
    aliased: set[str] = field(default_factory=set)
    #: The described-stack prediction (made before mounting), or why there is none.
    pred: dict | None = None
    unavailable: str | None = None
    #: the overlay lines the kernel logged while mounting and observing (cases with ``ops``,
    #: when /dev/kmsg can be read), else None
    log: list[str] | None = None


def run_kernel(case: Case, tmp: str, api: str = "legacy", with_prediction: bool = True) -> Result:
    """Build the case under ``tmp``, predict it from the pristine layer directories, mount it,
    and observe every path."""
    try:
        built = build(case, os.path.join(tmp, "layers"))
    except BuildError as e:
        if "user." in str(e) and os.strerror(_errno.EOPNOTSUPP) in str(e):
            import pytest

            pytest.skip(f"this kernel's tmpfs takes no user.* xattrs (tmpfs has them from 6.6): {e}")
        raise
    paths = case.paths if case.paths is not None else paths_of_case(case)
    pred, unavailable = None, None
    if with_prediction:
        try:
            pred = predict(built, paths)
        except PredictionUnavailable as e:
            unavailable = str(e)
    target = os.path.join(tmp, "merged")
    klog = None
    if case.ops:
        try:
            klog = KernelLog()
            klog.new_lines()
        except OSError:
            klog = None
    try:
        err = mount_errno(built, target, api)
        obs = observe(target, paths) if err is None else {}
        log = [l for l in klog.new_lines() if l.startswith("overlay")] if klog is not None else None
    finally:
        if klog is not None:
            klog.close()
    return Result(case, built, target, paths, err, obs, set(), pred, unavailable, log)


def _stale(obs: dict[str, Observation]) -> list[str]:
    """The observed paths that gave ESTALE somewhere (inode aliasing)."""
    return [p for p, o in obs.items() if "ESTALE" in (o.errno, o.readdir_errno, o.open_errno)]


def _observe_alone(res: Result, paths: Iterable[str], prefix: str, api: str = "legacy") -> None:
    """Observe each path again, alone, on a fresh mount of freshly built layers.

    The layers are rebuilt because a mount with an upper layer writes to it while looking
    things up (``origin`` on merged directories, ``impure`` on their parents), which changes
    what a second mount of the same directories shows.
    """
    tmp = os.path.dirname(res.built.dest)
    for p in paths:
        n = len(os.listdir(tmp))
        built = build(res.case, os.path.join(tmp, f"{prefix}-{n}-layers"))
        target = os.path.join(tmp, f"{prefix}-{n}-merged")
        if mount_errno(built, target, api) is None:
            res.obs[p] = observe(target, [p])[p]
            built.umount_all()


def refresh_stale(res: Result, api: str = "legacy") -> None:
    """Re-observe, each on a fresh mount of freshly built layers, the paths that gave ESTALE
    (inode aliasing depends on access order; predictions are fresh-mount answers)."""
    stale = _stale(res.obs)
    res.aliased.update(stale)
    _observe_alone(res, stale, "refresh", api)


def settle_for_live(res: Result, api: str = "legacy") -> None:
    """Before predicting from the live mount: remount the same layers and observe again.

    The first observation wrote to the upper layer (the kernel sets ``origin`` and ``impure``
    while looking merged directories up) and the overlay cached listings made before those
    writes.  A live prediction reads the layers as they are now, so it is compared with what a
    fresh mount of these same layers shows.
    """
    if res.mount_errno is not None or res.built.upper is None:
        return
    res.built.umount_all()
    res.built.mount(res.target, api=api)
    first_looked_up = {p: res.obs[p] for p in res.aliased if p in res.obs}
    res.obs = observe(res.target, res.paths)
    res.obs.update(first_looked_up)  # access-order answers were already taken on fresh mounts
    stale = _stale(res.obs)
    res.aliased.update(stale)
    for p in stale:
        res.built.umount_all()
        res.built.mount(res.target, api=api)
        res.obs[p] = observe(res.target, [p])[p]


def check_expectations(res: Result) -> list[str]:
    """Where the kernel contradicts the case's own expectations (the reference tables)."""
    problems = []
    case = res.case
    if res.mount_errno != case.mount_errno:
        problems.append(f"mount: kernel {res.mount_errno!r}, table says {case.mount_errno!r}")
        return problems
    for path, exp in case.expect.items():
        o = res.obs.get(path)
        if o is None:
            problems.append(f"{path}: not observed")
            continue
        for fld, want in exp.items():
            if fld == "data_from":
                label, _, lpath = want.partition(":")
                got = _read_layer_file(res.built.dir_of(label), lpath)
                if o.data != got:
                    problems.append(f"{path}: data: kernel read {_short(o.data)!r}, table says {label}'s {lpath} ({_short(got)!r})")
            else:
                have = getattr(o, fld)
                if have != want:
                    problems.append(f"{path}: {fld}: kernel {have!r}, table says {want!r}")
    return problems


def prediction_disagreements(res: Result) -> list[Disagreement]:
    """Compare the described-stack prediction with the observations (mount errno included)."""
    pred = res.pred if res.pred is not None else predict(res.built, res.paths)
    dis: list[Disagreement] = []
    if pred.get("mount_errno") != res.mount_errno:
        dis.append(Disagreement("(mount)", "mount_errno", res.mount_errno, pred.get("mount_errno")))
    if res.mount_errno is None and pred.get("mount_errno") is None:
        dis += compare(res.obs, pred, res.built.layer_dirs, res.aliased, inodes=bool(res.case.ops),
                       workdir=res.built.workdir)
        dis = _alias_order(res, pred, dis)
    if res.log is not None:
        dis += log_disagreements(res, pred)
    return dis


#: Lines overlayfs prints with ``pr_warn_ratelimited`` (10 per 5 s per call site): in a run of
#: many stacks the kernel drops some, so their absence is no disagreement (``ovl_verify_origin_xattr``
#: "failed to verify upper/origin (...)", ``ovl_verify_index`` "failed to verify index (...)",
#: ``ovl_lookup_index`` and ``ovl_lookup`` warnings).
RATELIMITED = ("overlayfs: failed to verify upper (", "overlayfs: failed to verify origin (",
               "overlayfs: failed to verify index (", "overlayfs: suspected ", "overlayfs: bad index found",
               "overlayfs: invalid redirect", "overlayfs: metacopy with no lower data found",
               "overlayfs: failed to get inode", "overlayfs: orphan index entry", "overlayfs: cleanup of")


#: Also report overlayfs lines the kernel logged that the engine did not predict.  The kernel
#: log is the machine's: another process's overlay mounts (other test runs) log there too, so
#: this is for ``bench/random_matrix.py --unpredicted-log`` on a quiet machine, not for CI.
LOG_UNPREDICTED = os.environ.get("OVLK_LOG_UNPREDICTED") == "1"


def log_disagreements(res: Result, pred: dict) -> list[Disagreement]:
    """Every line the engine says the mount logs was logged (a rate-limited one may be
    dropped); with :data:`LOG_UNPREDICTED`, also every overlayfs line the kernel logged while
    mounting and observing is one the engine predicted (for the mount, a path, or an inode)."""
    out = []
    for line in pred.get("mount_log") or []:
        if line not in res.log and not line.startswith(RATELIMITED):
            out.append(Disagreement("(mount)", "mount_log", res.log, line))
    said = set(pred.get("mount_log") or [])
    if pred.get("xino") and pred["xino"].get("log"):
        said.update(pred["xino"]["log"] if isinstance(pred["xino"]["log"], list) else [pred["xino"]["log"]])
    for p in pred.get("paths", []):
        for text in (p.get("kernel_log"), (p.get("inode") or {}).get("kernel_log")):
            if text:
                said.update(text.split("\n") if isinstance(text, str) else text)
    for line in res.log if LOG_UNPREDICTED else []:
        if line.startswith("overlayfs:") and line not in said and "callbacks suppressed" not in line:
            out.append(Disagreement("(log)", "kernel_log", line, "not predicted"))
    return out


def _alias_order(res: Result, pred: dict, dis: list[Disagreement]) -> list[Disagreement]:
    """Drop disagreements that come from inode aliasing the engine flagged (access order).

    Two merged paths sharing one lower inode share one overlay inode: the one looked up second
    shows the first one's attributes (or ESTALE).  The engine predicts each path as the first
    looked up on a fresh mount, and flags the alias (rule ``inode-alias``, naming both paths).
    Such a path is observed again alone, on a fresh mount of freshly built layers.
    """
    flagged = [f["message"] for p in pred["paths"] for f in p.get("findings", []) if f["rule"] == "inode-alias"]
    suspects = {d.path for d in dis if d.path != "(mount)"
                and any(f"{d.path} " in m or m.startswith(d.path) or f" {d.path}" in m for m in flagged)}
    if not suspects:
        return dis
    _observe_alone(res, suspects, "alias")
    res.aliased.update(suspects)
    return compare(res.obs, pred, res.built.layer_dirs, res.aliased, inodes=bool(res.case.ops),
                       workdir=res.built.workdir)
