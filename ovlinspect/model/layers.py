"""Read-only access to the layers of an overlay stack.

A layer is anything that can answer "what is at this path?" without following symlinks:
a directory on disk (:class:`DiskLayer`), or an in-memory tree described by a stack file or a
composefs dump (:class:`MemoryLayer`).  Paths inside a layer are tuples of ``bytes``
components; ``()`` is the layer root.  Names are bytes and are never trusted.

Disk layers are walked with directory file descriptors opened ``O_PATH | O_NOFOLLOW``; the
final component is ``lstat``-ed through its parent's descriptor (or typed from ``readdir``'s
``d_type``, the ``lstat`` then deferred until a size, mode or owner is asked for), extended
attributes are read with the ``l*xattr`` calls on a name relative to the parent's descriptor
(so the last component is never followed), and only regular files are ever opened for
reading, with a size bound.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
import stat as _stat
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Iterable, Iterator


Path = tuple[bytes, ...]

KINDS = ("file", "dir", "symlink", "chardev", "blockdev", "fifo", "socket")

#: xattr name prefixes that carry overlay meaning in one namespace or the other.
OVERLAY_PREFIXES = (b"trusted.overlay.", b"user.overlay.")

#: Longest symlink target and xattr value we keep (the kernel caps both at 64 KiB / PATH_MAX).
MAX_XATTR_VALUE = 65536
MAX_READ = 1 << 20


class LayerError(Exception):
    """A layer cannot be read (missing, not a directory, permission denied, ...)."""


def _shown(b: bytes) -> str:
    from .xattrs import safe

    return safe(b)


def _kind_of(mode: int) -> str:
    if _stat.S_ISREG(mode):
        return "file"
    if _stat.S_ISDIR(mode):
        return "dir"
    if _stat.S_ISLNK(mode):
        return "symlink"
    if _stat.S_ISCHR(mode):
        return "chardev"
    if _stat.S_ISBLK(mode):
        return "blockdev"
    if _stat.S_ISFIFO(mode):
        return "fifo"
    return "socket"


# Not frozen: a frozen dataclass's __init__ costs 1.0 us against 0.2 us (measured, Python
# 3.11), paid for every entry a walk reads (330,000 on the check benchmark: 8% of its time).
# A node is never changed once made (dataclasses.replace makes another); it stays hashable.
@dataclass(slots=True, unsafe_hash=True)
class Node:
    """What one layer holds at one path (the layer's own lstat, plus its overlay xattrs)."""

    kind: str
    mode: int = 0o644
    size: int = 0
    uid: int = 0
    gid: int = 0
    rdev: tuple[int, int] = (0, 0)
    target: bytes | None = None
    #: Only xattrs whose names start with one of OVERLAY_PREFIXES, as (name, value) pairs.
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    #: fs-verity digest of a regular file, as (algorithm id, digest bytes), if it has one.
    verity: tuple[int, bytes] | None = None

    def __reduce__(self):
        # a dataclass with slots pickles through dataclasses' generic state functions, which
        # ask for its fields each time: a memory stack handed to the view's scan process is
        # hundreds of thousands of these
        return (Node, _node_fields(self))

    def xattr(self, name: bytes) -> bytes | None:
        for key, value in self.xattrs:
            if key == name:
                return value
        return None

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"

    @property
    def is_reg(self) -> bool:
        return self.kind == "file"

    @property
    def is_whiteout_dev(self) -> bool:
        return self.kind == "chardev" and self.rdev == (0, 0)


class Layer:
    """Interface every layer implements.  All methods are read-only."""

    #: A short label (``A``, ``upper``) and, for disk layers, the absolute path.
    label: str = ""
    path: str | None = None

    def node(self, path: Path) -> Node | None:
        """The entry at ``path`` (not following a final symlink), or None when absent.

        None is also returned when a parent component is missing or not a directory.
        """
        raise NotImplementedError

    def listdir(self, path: Path) -> list[bytes]:
        """Names in the directory at ``path`` (unsorted); ``[]`` when it is not a directory."""
        raise NotImplementedError

    def scan(self, path: Path) -> dict[bytes, Node]:
        """Every entry of the directory at ``path`` with its node (one read of the directory)."""
        result = {}
        for name in self.listdir(path):
            n = self.node(path + (name,))
            if n is not None:
                result[name] = n
        return result

    def file_size(self, path: Path) -> int | None:
        """The size of the regular file at ``path``; None when there is none (absent, another
        type, a parent that is not a directory) or it cannot be told."""
        n = self.node(path)
        return n.size if n is not None and n.kind == "file" else None

    def read(self, path: Path, limit: int = 4096) -> bytes:
        """Up to ``limit`` bytes of the regular file at ``path`` (b"" for anything else)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def reopen(self) -> "Layer":
        """A fresh handle on the same layer (its own caches; for another thread, or a re-read)."""
        return self


# --------------------------------------------------------------------------- memory layers


@dataclass
class MemoryLayer(Layer):
    """A layer held in memory: a stack file's inline entries, a composefs dump, a demo."""

    label: str = ""
    path: str | None = None
    nodes: dict[Path, Node] = field(default_factory=dict)
    contents: dict[Path, bytes] = field(default_factory=dict)
    children: dict[Path, list[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._known: dict[Path, set[bytes]] = {}
        #: path -> whether every parent of it is a directory (memoized: a lookup of a path of
        #: d components costs O(d) once, not O(d²) each time); valid while ``nodes`` keeps
        #: the size it had when filled
        self._reach: dict[Path, bool] = {}
        self._reach_size = -1
        if () not in self.nodes:
            self.nodes[()] = Node("dir", 0o755)
        for p in list(self.nodes):
            if p:
                self._link(p)

    def _link(self, p: Path) -> None:
        parent = p[:-1]
        kids = self.children.setdefault(parent, [])
        known = self._known.setdefault(parent, set())
        if p[-1] not in known:
            known.add(p[-1])
            kids.append(p[-1])

    def add(self, path: Path, node: Node, content: bytes | None = None) -> None:
        """Add an entry; missing parents are created as plain directories."""
        for i in range(1, len(path)):
            if path[:i] not in self.nodes:
                self.nodes[path[:i]] = Node("dir", 0o755)
                self._link(path[:i])
        self.nodes[path] = node
        if path:
            self._link(path)
        if content is not None:
            self.contents[path] = content

    def node(self, path: Path) -> Node | None:
        if self._reach_size != len(self.nodes):
            self._reach.clear()
            self._reach_size = len(self.nodes)
        ok = self._reach.get(path)
        if ok is None:
            ok = self._reachable(path)
        return self.nodes.get(path) if ok else None

    def _reachable(self, path: Path) -> bool:
        """Whether every parent of ``path`` is a directory (iterative, memoized)."""
        # the deepest prefix already known, then down from it
        i = len(path)
        while i > 0 and path[:i] not in self._reach:
            i -= 1
        ok = self._reach.get(path[:i], True) if i else True
        for j in range(i, len(path) + 1):
            prefix = path[:j]
            if j > i:
                parent = self.nodes.get(path[:j - 1])
                ok = ok and parent is not None and parent.is_dir
            self._reach[prefix] = ok
        return ok

    def listdir(self, path: Path) -> list[bytes]:
        n = self.node(path)
        if n is None or not n.is_dir:
            return []
        return list(self.children.get(path, ()))

    def read(self, path: Path, limit: int = 4096) -> bytes:
        n = self.node(path)
        if n is None or not n.is_reg:
            return b""
        data = self.contents.get(path)
        if data is None:
            return b"\0" * min(n.size, limit)
        return data[:limit]


# ----------------------------------------------------------------------------- disk layers


_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_PATH_DIR = getattr(os, "O_PATH", 0) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# FS_IOC_MEASURE_VERITY = _IOWR('f', 134, struct fsverity_digest)
_FS_IOC_MEASURE_VERITY = 0xC0046686


def _measure_verity(fd: int) -> tuple[int, bytes] | None:
    import fcntl
    import struct

    buf = bytearray(struct.pack("HH", 0, 64) + bytes(64))
    try:
        fcntl.ioctl(fd, _FS_IOC_MEASURE_VERITY, buf, True)
    except OSError:
        return None
    algo, size = struct.unpack_from("HH", buf)
    return algo, bytes(buf[4 : 4 + size])


# Overlay xattrs are read with the standard library, not the ``xattr`` package (which serves
# where speed does not matter: ``build`` sets xattrs with it): ``os.listxattr``/``os.getxattr`` make one syscall
# with a buffer on the stack, where ``xattr.listxattr``/``getxattr`` ask the size first and
# then the data (two).  And the name is given relative to the current directory, moved there
# with ``fchdir`` on the parent's descriptor, when one thread reads (see
# :func:`exclusive_reads`): a ``/proc/self/fd/N/name`` path makes the kernel resolve the procfs
# magic link at every call.  Measured here (kernel 6.18, tmpfs, 20,000 files, CPython 3.11,
# per call, the machine busy; the ratios held on several runs): llistxattr through
# /proc/self/fd 25.6 us with os, 49.7 us with the xattr package; relative to the current
# directory 11.7 us; lgetxattr 24.2 us against 10.8 us; ``listxattrat``/``getxattrat``
# (6.13+) through ctypes 28.3 / 34.5 us (the ctypes call costs more than the procfs walk
# saves), so threads that share a reader use the /proc/self/fd path.


class _Cwd:
    """The process's working directory while :func:`exclusive_reads` is in force."""

    active = False
    owner = 0
    #: the kept directory descriptor the working directory was last moved to (-1: none)
    at = -1


_CWD = _Cwd()


@contextlib.contextmanager
def exclusive_reads() -> Iterator[None]:
    """Within this block the calling thread is the only one reading disk layers: xattrs are
    read on names relative to the working directory, moved with ``fchdir`` to the parent's
    descriptor (about twice as fast as ``/proc/self/fd/N/name``).  The working directory is
    restored on the way out.  When other threads run, it changes nothing (the working
    directory is the process's: it would move under their feet)."""
    if _CWD.active or threading.active_count() != 1:
        yield
        return
    try:
        saved = os.open(".", _O_PATH_DIR & ~os.O_NOFOLLOW)
    except OSError:  # no working directory to come back to: keep the /proc/self/fd way
        yield
        return
    _CWD.active, _CWD.owner, _CWD.at = True, threading.get_ident(), -1
    try:
        yield
    finally:
        _CWD.active, _CWD.at = False, -1
        try:
            os.fchdir(saved)
        finally:
            os.close(saved)


def _close_fd(fd: int) -> None:
    if fd == _CWD.at:
        _CWD.at = -1  # the number may be reused for another directory
    os.close(fd)


_STR_PREFIXES = tuple(p.decode() for p in OVERLAY_PREFIXES)
#: os.fsencode's codec, called directly (a third of the cost, on every name read)
_FS = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())


def read_overlay_xattrs(dirfd: int, name: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """Overlay xattrs of ``name`` in the directory ``dirfd``, never following a symlink: one
    ``llistxattr``, then one ``lgetxattr`` per overlay name (none for the other names)."""
    # For the directory itself (no name) the magic link /proc/self/fd/N must be followed: it
    # leads to the descriptor already open, never elsewhere.  A named entry is never followed.
    if _cwd_at(dirfd):
        return _xattrs_of(name or b".", False)
    if name:
        return _xattrs_of(b"/proc/self/fd/%d/%s" % (dirfd, name), False)
    return _xattrs_of(b"/proc/self/fd/%d" % dirfd, True)


def _cwd_at(dirfd: int) -> bool:
    """Within :func:`exclusive_reads`, in its thread: the working directory moved to ``dirfd``
    (names are then read relative to it); False elsewhere."""
    if not (_CWD.active and _CWD.owner == threading.get_ident()):
        return False
    if _CWD.at != dirfd:
        os.fchdir(dirfd)
        _CWD.at = dirfd
    return True


def _xattrs_of(where: bytes, follow: bool) -> tuple[tuple[bytes, bytes], ...]:
    """The overlay xattrs at ``where`` (a name relative to the working directory or a
    /proc/self/fd path); OSError for a failure other than "no xattrs here"."""
    try:
        names = os.listxattr(where, follow_symlinks=follow)
    except OSError as e:
        if e.errno in (_errno.ENOTSUP, _errno.ENODATA, _errno.ENOENT):
            return ()
        raise
    result = []
    for key in names:
        if not key.startswith(_STR_PREFIXES):
            continue
        try:
            value = os.getxattr(where, key, follow_symlinks=follow)
        except OSError as e:
            if e.errno == _errno.ENODATA:
                continue
            raise
        result.append((key.encode(*_FS), value[:MAX_XATTR_VALUE]))
    return tuple(result)


# The slots of Node, written directly by the lazy node below (its properties hide them).
_SLOT = {f.name: Node.__dict__[f.name] for f in fields(Node)}
#: a node's fields in order, as one tuple (for pickling)
_node_fields = attrgetter(*_SLOT)


def _lazy(field_name: str) -> property:
    slot = _SLOT[field_name]

    def get(self: "_LazyNode"):
        if self._src is not None:
            self._load()
        return slot.__get__(self, Node)

    return property(get)


class _LazyNode(Node):
    """A node typed from ``readdir`` (a directory, regular file or symlink without overlay
    xattrs): its ``lstat`` (mode, size, owner) and a symlink's target are read when first
    asked for, so a walk that only needs the type never pays for them."""

    __slots__ = ("_src",)

    def __init__(self, *args, **kw) -> None:  # a complete node (dataclasses.replace)
        full = Node(*args, **kw)
        for f, slot in _SLOT.items():
            slot.__set__(self, slot.__get__(full, Node))
        object.__setattr__(self, "_src", None)

    @classmethod
    def _make(cls, kind: str, layer: "DiskLayer", parent: Path, name: bytes) -> "_LazyNode":
        self = cls.__new__(cls)
        for f, v in (("kind", kind), ("rdev", (0, 0)), ("xattrs", ()), ("verity", None)):
            _SLOT[f].__set__(self, v)
        object.__setattr__(self, "_src", (layer, parent, name))
        return self

    def _load(self) -> None:
        layer, parent, name = self._src
        st, target = layer._lstat(parent, name)
        for f, v in (("mode", _stat.S_IMODE(st.st_mode)), ("size", st.st_size),
                     ("uid", st.st_uid), ("gid", st.st_gid), ("target", target)):
            _SLOT[f].__set__(self, v)
        object.__setattr__(self, "_src", None)

    def __eq__(self, other: object) -> bool:  # equal to a Node of the same fields
        if not isinstance(other, Node):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in _SLOT)

    __hash__ = Node.__hash__

    mode = _lazy("mode")
    size = _lazy("size")
    uid = _lazy("uid")
    gid = _lazy("gid")
    target = _lazy("target")


def _fd_budget() -> int:
    """How many directory descriptors all disk layers together keep open: half of the
    process's limit (RLIMIT_NOFILE), the rest left to everything else."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        soft = 1 << 20
    return max(32, soft // 2 - 64)


class _Kept:
    """Directory descriptors kept open by every disk layer of the process."""

    lock = threading.Lock()
    count = 0
    budget = 0


class DiskLayer(Layer):
    """A layer directory on disk, read through directory descriptors, never through symlinks."""

    def __init__(self, path: str | bytes, label: str = "", *, want_verity: bool = False,
                 want_xattrs: bool = True):
        p = os.fsdecode(path)
        if not os.path.isabs(p):
            raise LayerError(f"layer path is not absolute: {p!r}")
        if "\0" in p:
            raise LayerError(f"layer path contains a NUL byte: {_shown(os.fsencode(p))}")
        self.path = p
        self.label = label or p
        self.want_verity = want_verity
        self.want_xattrs = want_xattrs
        try:
            # the layer path itself is resolved as the kernel resolves it (following symlinks,
            # as in docker's overlay2/l/ short links); nothing inside the layer ever is
            self._root = os.open(p, _O_PATH_DIR & ~os.O_NOFOLLOW)
        except FileNotFoundError:
            raise LayerError(f"layer directory does not exist: {p}") from None
        except NotADirectoryError:
            raise LayerError(f"layer is not a directory: {p}") from None
        except PermissionError:
            raise LayerError(f"layer directory is not readable: {p}") from None
        except OSError as e:
            raise LayerError(f"cannot open layer {p}: {e.strerror}") from None
        # one lock: descriptors are cached and evicted, and the UI reads from several threads
        self._lock = threading.RLock()
        #: the filesystem the layer root is on (overlay compares them: same_fs, xino)
        self.dev = os.fstat(self._root).st_dev
        #: every directory descriptor opened is kept (an object store's 256 directories, a
        #: deep tree's ancestors), least recently used first; closed only past the budget of
        #: all layers together (:func:`_fd_budget`)
        self._fds: OrderedDict[Path, int] = OrderedDict()
        self._scans: OrderedDict[Path, dict[bytes, Node]] = OrderedDict()
        self._max_scans = 4
        self._nodes: OrderedDict[Path, Node | None] = OrderedDict()
        self._max_nodes = 4096
        self._root_node: Node | None = None

    # -- descriptors
    def _dirfd(self, path: Path) -> int | None:
        """A descriptor of the directory at ``path``, or None when it is not a directory."""
        if not path:
            return self._root
        fd = self._fds.get(path)
        if fd is not None:
            self._fds.move_to_end(path)
            return fd
        # iterative (a path may have thousands of components): the deepest kept ancestor,
        # then one O_PATH open per component below it, each kept
        start = len(path) - 1
        while start > 0 and path[:start] not in self._fds:
            start -= 1
        parent = self._fds[path[:start]] if start else self._root
        if start:
            self._fds.move_to_end(path[:start])
        for i in range(start, len(path)):
            try:
                fd = os.open(path[i], _O_PATH_DIR, dir_fd=parent)
            except OSError:
                return None
            self._keep(path[: i + 1], fd)
            parent = fd
        return parent

    def _keep(self, path: Path, fd: int) -> None:
        self._fds[path] = fd
        with _Kept.lock:
            if not _Kept.budget:
                _Kept.budget = _fd_budget()
            _Kept.count += 1
            over = _Kept.count > _Kept.budget
        if over and len(self._fds) > 1:
            _, old = self._fds.popitem(last=False)
            _close_fd(old)
            with _Kept.lock:
                _Kept.count -= 1

    def _lstat(self, parent: Path, name: bytes) -> tuple[os.stat_result, bytes | None]:
        """The ``lstat`` of an entry (and a symlink's target), for a lazy node."""
        with self._lock:
            dirfd = self._dirfd(parent)
            try:
                if dirfd is None:
                    raise FileNotFoundError(_errno.ENOENT, "its directory is gone")
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                target = None
                if _stat.S_ISLNK(st.st_mode):
                    try:
                        target = os.readlink(name, dir_fd=dirfd)[:4096]
                    except OSError:
                        target = b""
            except OSError as e:
                raise LayerError(f"{self.path}: cannot lstat {_shown(join_path(parent + (name,)))}: "
                                 f"{e.strerror}") from None
            return st, target

    def _node_at(self, dirfd: int, name: bytes, st: os.stat_result | None = None,
                 parent: Path = (), xattrs: tuple | None = None) -> Node | None:
        if st is None:
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as e:
                if e.errno == _errno.ENAMETOOLONG:  # the kernel treats it as "not in this layer"
                    return None
                raise LayerError(f"{self.path}: cannot lstat {_shown(name)}: {e.strerror}") from None
        kind = _kind_of(st.st_mode)
        target = None
        if kind == "symlink":
            try:
                target = os.readlink(name, dir_fd=dirfd)[:4096]
            except OSError:
                target = b""
        if xattrs is None:
            xattrs = (self._overlay_xattrs(dirfd, name, parent + (name,))
                      if self.want_xattrs else ())
        verity = None
        if kind == "file" and self.want_verity:
            verity = self._verity(dirfd, name)
        rdev = (os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("chardev", "blockdev") else (0, 0)
        return Node(
            kind,
            _stat.S_IMODE(st.st_mode),
            st.st_size,
            st.st_uid,
            st.st_gid,
            rdev,
            target,
            xattrs,
            verity,
        )

    def _overlay_xattrs(self, dirfd: int, name: bytes, path: Path) -> tuple[tuple[bytes, bytes], ...]:
        """:func:`read_overlay_xattrs` of the entry at ``path`` (``name`` in ``dirfd``)."""
        try:
            return read_overlay_xattrs(dirfd, name)
        except OSError as e:
            raise self._xattr_error(path, e) from None

    def _xattr_error(self, path: Path, e: OSError) -> LayerError:
        """A failure to read the overlay xattrs of the entry at ``path`` (EACCES on a mode-000
        file for a user without the capability, EIO, ...), naming the entry."""
        where = os.fsencode(self.path or "") + (join_path(path) if path else b"")
        return LayerError(f"{_shown(where)}: cannot read its overlay xattrs: {e.strerror or e}")

    def _verity(self, dirfd: int, name: bytes) -> tuple[int, bytes] | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY, dir_fd=dirfd)
        except OSError:
            return None
        try:
            if not _stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return _measure_verity(fd)
        finally:
            os.close(fd)

    # -- interface
    def _node(self, path: Path) -> Node | None:
        if not path:
            if self._root_node is None:
                self._root_node = self._node_root()
            return self._root_node
        cached = self._scans.get(path[:-1])
        if cached is not None:
            return cached.get(path[-1])
        if path in self._nodes:
            self._nodes.move_to_end(path)
            return self._nodes[path]
        dirfd = self._dirfd(path[:-1])
        n = None if dirfd is None else self._node_at(dirfd, path[-1], parent=path[:-1])
        self._nodes[path] = n
        if len(self._nodes) > self._max_nodes:
            self._nodes.popitem(last=False)
        return n

    def _node_root(self) -> Node:
        st = os.stat(self._root)
        return Node("dir", _stat.S_IMODE(st.st_mode), st.st_size, st.st_uid, st.st_gid,
                    xattrs=self._overlay_xattrs(self._root, b"", ()))

    def _listdir(self, path: Path) -> list[bytes]:
        cached = self._scans.get(path)
        if cached is not None:  # the names of a scan just made, in readdir's order
            return list(cached)
        dirfd = self._dirfd(path)
        if dirfd is None:
            return []
        try:
            fd = os.open(".", _O_DIR, dir_fd=dirfd)
        except OSError:
            return []
        try:
            return [os.fsencode(e.name) for e in os.scandir(fd)]
        except OSError as e:  # a readdir that fails part-way: say so, do not guess
            raise LayerError(f"{self.path}: cannot read directory {_shown(join_path(path))}: "
                             f"{e.strerror}") from None
        finally:
            os.close(fd)

    def _scan(self, path: Path) -> dict[bytes, Node]:
        cached = self._scans.get(path)
        if cached is not None:
            return cached
        dirfd = self._dirfd(path)
        result: dict[bytes, Node] = {}
        if dirfd is None:
            return result
        try:
            fd = os.open(".", _O_DIR, dir_fd=dirfd)
        except OSError:
            return result
        # the type from readdir (d_type); one llistxattr per entry, lgetxattr for overlay names
        # only; the lstat only for entries with overlay xattrs (their size and mode matter to
        # the lookup), the other types, and fs-verity layers: the rest get it when asked.
        # This loop runs once per entry of every layer a walk reads: per entry it makes no
        # call it does not need (a regular file's Node is made here, not by _node_at; the
        # xattr path is one concatenation; an error message is built only on an error).
        want_x, lean = self.want_xattrs, not self.want_verity
        prefix = None if _cwd_at(dirfd) else b"/proc/self/fd/%d/" % dirfd
        isreg = _stat.S_ISREG
        try:
            for entry in os.scandir(fd):
                name = entry.name.encode(*_FS)
                try:
                    kind = ("file" if entry.is_file(follow_symlinks=False) else
                            "dir" if entry.is_dir(follow_symlinks=False) else
                            "symlink" if entry.is_symlink() else None)
                except FileNotFoundError:
                    continue
                xattrs = ()
                if want_x:
                    try:
                        xattrs = _xattrs_of(name if prefix is None else prefix + name, False)
                    except OSError as e:
                        raise self._xattr_error(path + (name,), e) from None
                # (a regular file's size is kept as the scan saw it: an export compares it
                # with what it reads later, to flag a file that changed meanwhile)
                if kind is not None and kind != "file" and lean and not xattrs:
                    result[name] = _LazyNode._make(kind, self, path, name)
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if lean and isreg(st.st_mode):
                    result[name] = Node("file", st.st_mode & 0o7777, st.st_size, st.st_uid,
                                        st.st_gid, (0, 0), None, xattrs, None)
                    continue
                n = self._node_at(dirfd, name, st, parent=path, xattrs=xattrs)
                if n is not None:
                    result[name] = n
        except OSError as e:  # a readdir that fails part-way: say so, do not guess
            raise LayerError(f"{self.path}: cannot read directory {_shown(join_path(path))}: "
                             f"{e.strerror}") from None
        finally:
            os.close(fd)
        self._scans[path] = result
        if len(self._scans) > self._max_scans:
            self._scans.popitem(last=False)
        return result

    def _read(self, path: Path, limit: int = 4096) -> bytes:
        if not path:
            return b""
        dirfd = self._dirfd(path[:-1])
        if dirfd is None:
            return b""
        try:
            fd = os.open(path[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY,
                         dir_fd=dirfd)
        except OSError:
            return b""
        try:
            if not _stat.S_ISREG(os.fstat(fd).st_mode):
                return b""
            return os.read(fd, min(limit, MAX_READ))
        finally:
            os.close(fd)

    def file_size(self, path: Path) -> int | None:
        # one fstatat, no Node and no cache: a composefs check asks this once per object
        # (300,000 times on the benchmark stack)
        if not path:
            return None
        with self._lock:
            cached = self._scans.get(path[:-1])
            if cached is not None:
                n = cached.get(path[-1])
                return n.size if n is not None and n.kind == "file" else None
            dirfd = self._dirfd(path[:-1])
            if dirfd is None:
                return None
            try:
                st = os.stat(path[-1], dir_fd=dirfd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError:  # the error node() gives (a LayerError, or None)
                return Layer.file_size(self, path)
        return st.st_size if _stat.S_ISREG(st.st_mode) else None

    def at(self, path: Path, fn):
        """``fn(dirfd, name)`` with the descriptor of ``path``'s directory and its last name
        (for the root: its own descriptor and ``b""``), under the layer's lock: for the calls
        that take a directory descriptor (file handles, stat).  None when the directory is gone."""
        with self._lock:
            fd = self._dirfd(path[:-1]) if path else self._root
            if fd is None:
                return None
            return fn(fd, path[-1] if path else b"")

    def lstat(self, path: Path) -> os.stat_result | None:
        """``lstat`` of an entry (the root itself for ``()``); None when it is gone.  For inode
        numbers and devices, which nodes do not keep."""
        def stat(fd: int, name: bytes) -> os.stat_result | None:
            try:
                return os.stat(name, dir_fd=fd, follow_symlinks=False) if name else os.fstat(fd)
            except OSError:
                return None

        return self.at(path, stat)

    def reopen(self) -> "DiskLayer":
        if not self.path:
            return self  # nothing to open again by name
        return DiskLayer(self.path or "", self.label, want_verity=self.want_verity,
                         want_xattrs=self.want_xattrs)

    def node(self, path: Path) -> Node | None:
        with self._lock:
            return self._node(path)

    def listdir(self, path: Path) -> list[bytes]:
        with self._lock:
            return self._listdir(path)

    def scan(self, path: Path) -> dict[bytes, Node]:
        with self._lock:
            return self._scan(path)

    def read(self, path: Path, limit: int = 4096) -> bytes:
        with self._lock:
            return self._read(path, limit)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        for fd in self._fds.values():
            _close_fd(fd)
        with _Kept.lock:
            _Kept.count -= len(self._fds)
        self._fds.clear()
        self._scans.clear()
        self._nodes.clear()
        if self._root >= 0:
            _close_fd(self._root)
            self._root = -1

    def __del__(self) -> None:
        try:
            self._close()
        except Exception:
            pass


def split_path(path: str | bytes) -> Path:
    """``/a/b`` (or ``a/b``) as a component tuple; ``.`` components and empty ones dropped."""
    b = os.fsencode(path)
    out: list[bytes] = []
    for part in b.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if out:
                out.pop()
            continue
        out.append(part)
    return tuple(out)


def join_path(path: Iterable[bytes]) -> bytes:
    return b"/" + b"/".join(path)


def iter_tree(layer: Layer, start: Path = ()) -> Iterator[tuple[Path, Node]]:
    """Every entry below ``start`` (depth first), each directory read once."""
    stack = [start]
    while stack:
        p = stack.pop()
        for name, n in sorted(layer.scan(p).items()):
            yield p + (name,), n
            if n.is_dir:
                stack.append(p + (name,))


def layer_entries(layer: Layer) -> list[tuple[Path, Node]]:
    """The layer root (a plain directory if it cannot be read) and every entry below it."""
    root = layer.node(())
    return [((), root if root is not None else Node("dir", 0o755))] + list(iter_tree(layer))
