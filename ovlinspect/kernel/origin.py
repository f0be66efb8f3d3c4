"""File handles, origins and the index: what ``index=on`` checks at mount, read-only.

With ``index=on`` (and ``nfs_export=on``) the kernel ties an upper layer to its lower layers by
file handles (``struct ovl_fb``: version, magic 0xfb, len, flags, type, the filesystem UUID,
then the exportfs handle of the object).  At mount (``super.c: ovl_get_indexdir``) it encodes
the handle of the first lower layer's root and compares it byte for byte with the upper root's
``overlay.origin`` (``namei.c: ovl_verify_origin_fh``); a mismatch refuses the mount with
ESTALE and ``overlayfs: failed to verify upper root origin``.  It then compares the index
directory's ``overlay.upper`` with the upper root's handle, and verifies every index entry
(``ovl_indexdir_cleanup`` / ``ovl_verify_index``): a name that is not a file handle refuses the
mount with EINVAL.

The handle of an object is read here with ``name_to_handle_at(2)`` (never following a
symlink) and the filesystem UUID (the kernel's ``sb->s_uuid``) with the ``FS_IOC_GETFSUUID``
ioctl (Linux 6.7+) on a read-only descriptor of the layer root.  tmpfs draws a fresh random
UUID at every mount, so a lower layer on a tmpfs (``/run``) that is re-created after a reboot,
a restored backup or a migrated copy all change the handle the kernel expects.

Nothing here writes: where the kernel would write (a missing origin it records, stale index
entries it deletes), the finding says so.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import os
import stat as _stat
import weakref
from dataclasses import dataclass, field

from ..model.layers import DiskLayer, Layer
from ..rules.catalogue import Finding
from ..model.xattrs import NULL_UUID, FileHandle, decode_fh, encode_fh, safe, uuid_text
from .workdir import in_use_checks, incompat_features, index_entries, work_leftovers
from .entry import show_path

_libc = ctypes.CDLL(None, use_errno=True)
MAX_HANDLE_SZ = 128
AT_EMPTY_PATH = 0x1000
#: ``_IOR(0x15, 0, struct fsuuid2)``: ``struct fsuuid2 { __u8 len; __u8 uuid[16]; }``
FS_IOC_GETFSUUID = 0x80111500
#: the shortest index entry name the kernel accepts: ``sizeof(struct ovl_fb) * 2`` hex digits
MIN_INDEX_NAME = 21 * 2
#: index entries looked at (a huge index is summarized, never read whole)
MAX_INDEX_ENTRIES = 4096
_OVL = "overlayfs: "


class _Handle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ)]


_libc.name_to_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Handle),
                                    ctypes.POINTER(ctypes.c_int), ctypes.c_int]


def handle_at(dirfd: int, name: bytes = b"") -> tuple[int, bytes] | int:
    """(type, handle bytes) of ``name`` in ``dirfd`` (``b""``: ``dirfd`` itself), or an errno.

    The final component is never followed (no ``AT_SYMLINK_FOLLOW``); ``dirfd`` may be an
    ``O_PATH`` descriptor.
    """
    h = _Handle()
    h.handle_bytes = MAX_HANDLE_SZ
    mount_id = ctypes.c_int()
    res = _libc.name_to_handle_at(dirfd, name, ctypes.byref(h), ctypes.byref(mount_id),
                                  AT_EMPTY_PATH if not name else 0)
    if res != 0:
        return ctypes.get_errno()
    return h.handle_type, bytes(h.f_handle[: h.handle_bytes])


def fs_uuid(fd: int) -> bytes | None:
    """The filesystem UUID the kernel uses (``sb->s_uuid``) of the file ``fd`` is on.

    ``fd`` may be an ``O_PATH`` descriptor of a directory: it is reopened read-only through
    ``/proc/self/fd`` (a directory: nothing is opened that could block).  None when the kernel
    does not say (before 6.7, or a filesystem that records no UUID).
    """
    try:
        rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        out = fcntl.ioctl(rfd, FS_IOC_GETFSUUID, bytes(17))
    except OSError:
        return None
    finally:
        os.close(rfd)
    n = out[0]
    return bytes(out[1:1 + n]) if 0 < n <= 16 else None


@dataclass
class LayerId:
    """What the kernel knows a layer root by: its filesystem, that filesystem's UUID, its handle."""

    dev: int
    ino: int
    uuid: bytes | None
    #: (type, bytes), or the errno ``name_to_handle_at`` gave (EOPNOTSUPP: no file handles)
    handle: tuple[int, bytes] | int

    @property
    def has_handles(self) -> bool:
        return isinstance(self.handle, tuple)

    def fh(self, origin_uuid: bool, upper: bool = False) -> bytes | None:
        """The ``ovl_fb`` the kernel encodes for this root (None without file handles); an
        unreadable UUID is left null (compare with :func:`same_fh`)."""
        if not isinstance(self.handle, tuple):
            return None
        uuid = (self.uuid or NULL_UUID) if origin_uuid else None
        return encode_fh(self.handle[0], self.handle[1], uuid, upper=upper)


def same_fh(stored: FileHandle, want: bytes, uuid_known: bool) -> bool:
    """Whether the kernel's byte comparison succeeds (the UUID left out when unreadable)."""
    if uuid_known:
        return stored.wire == want
    return stored.wire[:5] + stored.wire[21:] == want[:5] + want[21:]


def layer_id(layer: Layer) -> LayerId | None:
    """The identity of a layer directory on disk (None for described or image layers)."""
    if not isinstance(layer, DiskLayer):
        return None
    with layer._lock:  # noqa: SLF001 - the layer's own root descriptor, read-only
        fd = layer._root  # noqa: SLF001
        st = os.fstat(fd)
        return LayerId(st.st_dev, st.st_ino, fs_uuid(fd), handle_at(fd))


def layer_ids(engine) -> list[LayerId | None]:
    """:func:`layer_id` of every kernel layer (index 0: the upper; None where not on disk).

    Where the kernel does not tell a filesystem's UUID (``FS_IOC_GETFSUUID`` came with 6.7: a
    6.1 or 6.6 kernel), it is taken from the upper root's ``overlay.origin`` when that names
    the first lower root (its handle is that root's): the kernel wrote that UUID from the
    lower filesystem's superblock at the first mount with index=on.  Every layer on the same
    filesystem gets it.  Without it, every origin on such a kernel would look stale.
    """
    cached = getattr(engine, "_layer_ids", None)
    if cached is not None:
        return cached
    ids = [layer_id(l) if l is not None else None for l in engine.klayers]
    first = ids[1] if len(ids) > 1 else None
    upper = engine.stack.upper
    if first is not None and first.uuid is None and first.has_handles and upper is not None:
        root = upper.node(())
        raw = root.xattr(engine.prefix + b"origin") if root is not None else None
        fh = decode_fh(raw) if raw is not None else None
        if fh is not None and fh.usable and fh.uuid != NULL_UUID and \
                (fh.type, fh.fid) == first.handle:
            for i in ids:
                if i is not None and i.uuid is None and i.dev == first.dev:
                    i.uuid = fh.uuid
    engine._layer_ids = ids  # noqa: SLF001 - a cache on the engine, as inode.py keeps one
    return ids


def uses_origin_uuid(engine) -> bool:
    """:func:`origin_uuid_used` for ``engine``'s stack: whether the upper and regular lower
    layers are on one filesystem is read from their identities."""
    ids = layer_ids(engine)
    same_fs = len({i.dev for i in ids[: engine.nlower + 1] if i is not None}) == 1
    return origin_uuid_used(engine.options, engine.profile, same_fs)


def pd2_of_dir(path: str) -> str:
    """The kernel's ``%pd2`` of a directory given by path: its last two components inside its
    filesystem (``/u`` right under the root of a mount, ``/`` for a filesystem root)."""
    real = os.path.realpath(path)
    if os.path.ismount(real):
        return "/"
    parent, name = os.path.split(real)
    if os.path.ismount(parent) or parent == "/":
        return "/" + name
    return os.path.basename(parent) + "/" + name


# ------------------------------------------------------------------------ mount prediction


@dataclass
class MountState:
    """What the kernel does with the upper/work/index state at mount."""

    #: (errno, kernel log lines) when the mount is refused
    refusal: tuple[str, tuple[str, ...]] | None = None
    #: findings: the refusal's cause with its fix, and warnings (kernel falls back, cleans up)
    findings: list[Finding] = field(default_factory=list)
    #: lines the kernel logs without refusing
    log: list[str] = field(default_factory=list)
    #: what could not be checked, for the not-modelled note
    unchecked: list[str] = field(default_factory=list)
    #: options the kernel turns off at mount (index, nfs_export, xino), with their new values
    fallback: dict[str, object] = field(default_factory=dict)

    def refuse(self, errno: str, log: list[str], rule: str, message: str, layers: list[int]) -> None:
        if self.refusal is None:
            self.refusal = (errno, tuple(log))
            self.findings.append(Finding(rule, b"/", message, layers))


def origin_uuid_used(options, profile, same_fs: bool) -> bool:
    """Whether origin handles carry the filesystem UUID (``ovl_origin_uuid``): not with
    ``uuid=off``, which before 7.0 holds only when the upper and lower layers share one
    filesystem (it falls back to ``uuid=null`` otherwise) and from 7.0 on is kept."""
    if options.uuid != "off":
        return True
    return not (same_fs or profile.uuid_off_index_relaxed)


def _label(engine, klayer: int) -> str:
    return engine.label(klayer)


def _describe_mismatch(engine, stored: FileHandle, want: bytes, ids: list[LayerId | None],
                       origin_uuid: bool) -> str:
    """Which layer moved or changed filesystem, in words."""
    first = ids[1]
    want_fh = decode_fh(want)
    stored_uuid = "null" if stored.uuid == NULL_UUID else uuid_text(stored.uuid)
    same_handle = (stored.type, stored.fid) == (want_fh.type, want_fh.fid)
    other_root = [k for k, i in enumerate(ids) if k > 1 and i is not None and i.has_handles
                  and i.handle == (stored.type, stored.fid)
                  and (not origin_uuid or i.uuid is None or i.uuid == stored.uuid)]
    if other_root:
        return (f"the origin is the root of {_label(engine, other_root[0])}: the lower layers "
                "were reordered, or lower layers were added on top")
    parts = []
    if origin_uuid and first is not None and first.uuid is not None and stored.uuid != first.uuid:
        if stored.uuid == NULL_UUID:
            stored_uuid = "a null uuid (made with uuid=off, or on a filesystem without a UUID)"
        upper = ids[0]
        where = (" (the upper layer's filesystem)" if upper is not None and upper.uuid ==
                 stored.uuid else "")
        parts.append(f"{_label(engine, 1)} is now on another filesystem: uuid "
                     f"{uuid_text(first.uuid) if first.uuid != NULL_UUID else 'null'}, the "
                     f"origin was recorded on {stored_uuid}{where}")
        if same_handle:
            parts.append("its root has the same handle under the new uuid: a btrfs clone "
                         "with a temporary fsid, or a filesystem whose UUID was changed "
                         "(a stack made with uuid=off does not record the UUID)")
        else:
            parts.append("its root's handle differs too: a copy (a restore, a migration, a "
                         "tmpfs re-created after a reboot), so uuid=off would not help")
    elif not origin_uuid and stored.uuid != NULL_UUID:
        parts.append(f"the origin records the filesystem uuid {stored_uuid}, but with uuid=off "
                     "the kernel expects a null uuid")
    elif not same_handle:
        parts.append(f"{_label(engine, 1)}'s root is not the directory the upper was made on "
                     f"(handle type 0x{want_fh.type:x} {want_fh.fid.hex()}, the origin holds type "
                     f"0x{stored.type:x} {stored.fid.hex()}): it was re-created, copied or replaced")
    if stored.path_upper:
        parts.append("the origin is flagged as an upper-layer handle")
    return "; ".join(parts) or "the recorded origin differs from the first lower layer's root"


def mount_state(engine) -> MountState:
    """Predict the index checks of a mount of ``engine``'s stack (upper + workdir given)."""

    st = MountState()
    stack = engine.stack
    opts = engine.options
    if stack.upper is None or not stack.workdir or stack.mountpoint is not None:
        return st
    # ovl_get_upper / ovl_get_workdir: in use by another mount, then work/incompat
    for rule_errno, lines, message in in_use_checks(stack, opts.index):
        if rule_errno:
            st.refuse(rule_errno, lines, "workdir-in-use", message, [])
            return st
        st.log += lines
        st.findings.append(Finding("workdir-shared", b"/", message, []))
    feature = incompat_features(stack.workdir, engine.profile.incompat_dot_names)
    if feature is not None:
        name = safe(feature)
        volatile = feature == b"volatile"
        st.refuse("EINVAL", [_OVL + f"overlay with incompat feature '{name}' cannot be mounted"],
                  "incompat-workdir",
                  f"the work directory holds work/incompat/{name}"
                  + (": a mount with 'volatile' used it and was not cleaned up, so the upper "
                     "layer may have lost writes at a crash" if volatile else "")
                  + "; the kernel refuses every later mount (volatile or not). Fix: throw away "
                  "the upper and work directories and start fresh" + (
                      ", or, if the volatile mount was unmounted cleanly and the upper was "
                      "synced, delete the work directory's work/incompat" if volatile else ""),
                  [engine.json_index(0)])
        return st
    leftovers = work_leftovers(stack.workdir)
    if leftovers:
        st.findings.append(Finding(
            "workdir-leftovers", b"/", f"the work directory's work/ holds {leftovers} leftover "
            "entr" + ("y" if leftovers == 1 else "ies") + " of interrupted copy-ups or renames: "
            "the kernel deletes them at mount (a write to the work directory); nothing in the "
            "merged tree depends on them", [engine.json_index(0)]))
    if not opts.index:
        return st
    ids: list[LayerId | None] = layer_ids(engine)
    upper_id = ids[0]
    if upper_id is None:
        st.unchecked.append("the upper layer is not a directory on disk")
        return st
    lowers = ids[1:engine.nlower + 1]
    if any(i is None for i in lowers):
        st.unchecked.append("a lower layer is not a directory on disk")
        return st
    # ovl_lower_dir / ovl_make_workdir: layers without file handles turn the index off
    for k, i in enumerate(ids[: engine.nlower + 1]):
        if i is not None and not i.has_handles:
            what = "upper fs does not support file handles, falling back to index=off." if k == 0 \
                else (f"fs on '{engine.layer(k).path}' does not support file handles, falling "
                      "back to index=off,nfs_export=off.")
            st.log.append(_OVL + what)
            st.findings.append(Finding("index-fallback", b"/", f"{_label(engine, k)}: {what}",
                                       [engine.json_index(k)]))
            st.fallback = {"index": False} if k == 0 else {"index": False, "nfs_export": False}
            return st
    # ovl_get_fsid / ovl_lower_uuid_ok: two lower filesystems with one uuid turn the index off
    seen: dict[bytes, int] = {}
    for k in range(1, engine.nlower + engine.ndata + 1):
        i = ids[k]
        if i is None or i.dev == upper_id.dev or i.uuid is None:
            continue
        prev = seen.get(i.uuid)
        if prev is not None and ids[prev].dev != i.dev:  # type: ignore[union-attr]
            what = ("in non-single lower fs" if engine.profile.uuid_conflict_non_single
                    else "detected in lower fs")
            line = (_OVL + f"conflicting uuid {what} '{pd2_of_dir(engine.layer(k).path)}', "
                    f"falling back to xino={'off' if opts.xino == 'auto' else opts.xino},index=off,"
                    "nfs_export=off.")
            st.log.append(line)
            st.findings.append(Finding(
                "index-fallback", b"/",
                f"{_label(engine, prev)} and {_label(engine, k)} are on two filesystems with the "
                f"same uuid {uuid_text(i.uuid)} (a cloned image): the kernel turns the index off",
                [engine.json_index(prev), engine.json_index(k)]))
            st.fallback = {"index": False, "nfs_export": False}
            if opts.xino == "auto":
                st.fallback["xino"] = "off"
            return st
        seen.setdefault(i.uuid, k)
    origin_uuid = uses_origin_uuid(engine)
    first = lowers[0]
    assert first is not None
    if origin_uuid and (first.uuid is None or upper_id.uuid is None):
        st.unchecked.append("the filesystem UUID of a layer cannot be read (FS_IOC_GETFSUUID needs "
                            "Linux 6.7+ and a filesystem that records one)")
    # ovl_get_indexdir: the upper root's origin against the first lower root
    root = stack.upper.node(())
    raw = root.xattr(engine.prefix + b"origin") if root is not None else None
    want = first.fh(origin_uuid)
    stored = decode_fh(raw) if raw is not None else None
    if stored is not None and stored.usable and want is not None:
        if not same_fh(stored, want, not origin_uuid or first.uuid is not None):
            why = _describe_mismatch(engine, stored, want, ids, origin_uuid)
            st.refuse("ESTALE", [_OVL + "failed to verify upper root origin"], "stale-origin",
                      f"index=on: the upper root's overlay.origin does not match the root of "
                      f"{_label(engine, 1)}, so the mount fails with ESTALE: {why}. Fix: mount "
                      "with index=off (this mount then keeps no index: hard links copied up "
                      "from now on are broken apart, and nfs_export is off), or mount the lower "
                      "layer the upper was made on; to adopt this lower layer for good, remove "
                      "the upper root's overlay.origin and the index directory (the kernel "
                      "records the new origin; earlier copy-ups keep stale origins, so their "
                      "inode numbers change)", [engine.json_index(0), engine.json_index(1)])
            return st
    # the index directory's "upper" xattr against the upper root
    index_dir = os.path.join(stack.workdir, "index")
    try:
        raw_upper = os.getxattr(index_dir, engine.prefix + b"upper", follow_symlinks=False)
    except OSError:
        raw_upper = None
    if raw_upper is not None:
        have = decode_fh(raw_upper)
        want_upper = upper_id.fh(origin_uuid, upper=True)
        if have.usable and want_upper is not None and not same_fh(
                have, want_upper, not origin_uuid or upper_id.uuid is not None):
            same_uuid = have.uuid == (upper_id.uuid if origin_uuid else NULL_UUID)
            why = ("the upper layer is a different directory than the one this index was made "
                   "for (copied, restored or re-created)") if same_uuid else (
                f"the upper layer is now on filesystem "
                f"{uuid_text(upper_id.uuid) if upper_id.uuid else 'unknown'}, the index was "
                f"made for one on {uuid_text(have.uuid)} (a restored or migrated copy)")
            st.refuse("ESTALE", [
                _OVL + f"failed to verify upper ({pd2_of_dir(stack.upper.path)}, "
                f"ino={upper_id.ino}, err=-116)",
                _OVL + "failed to verify index dir 'upper' xattr",
                _OVL + "try deleting index dir or mounting with '-o index=off' to disable inodes "
                "index."], "stale-origin",
                f"index=on: the index directory's overlay.upper does not match the upper "
                f"layer's root, so the mount fails with ESTALE: {why}. Fix: mount with "
                "index=off, or delete the work directory's index/ (hard links copied up before "
                "are no longer shared)", [engine.json_index(0)])
            return st
    # ovl_indexdir_cleanup: every entry must be named by a file handle
    for name, mode, problem in index_entries(index_dir):
        if problem == "invalid":
            ftype = _stat.S_IFMT(mode)
            st.refuse("EINVAL", [
                _OVL + f"failed to verify index (index/{safe(name)}, ftype={ftype:x}, err=-22)",
                _OVL + "failed index dir cleanup (-22)",
                _OVL + "try deleting index dir or mounting with '-o index=off' to disable inodes "
                "index."], "index-entry-invalid",
                f"the index directory holds {safe(name)!r}, which is not a file handle in hex: "
                "the kernel aborts the mount rather than risk corrupting the index (EINVAL). "
                "Fix: remove the entry, delete the index directory, or mount with index=off",
                [engine.json_index(0)])
            return st
        if problem == "temp":
            st.findings.append(Finding(
                "index-entry-stale", b"/", f"index/{safe(name)} is a leftover of an interrupted "
                "index update: the kernel deletes it at mount (a write)", [engine.json_index(0)]))
    return st


# ---------------------------------------------------------------------------- at lookup


class _HandleIn(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ)]


_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.POINTER(_HandleIn), ctypes.c_int]


def decodes(dir_fd: int, ftype: int, fid: bytes) -> bool | None:
    """Whether a handle still names an object on the filesystem of the directory ``dir_fd``
    (which may be ``O_PATH``).  The object is opened ``O_PATH``: nothing is read, no device or
    fifo is opened.  None when it cannot be told (no CAP_DAC_READ_SEARCH)."""
    if len(fid) > MAX_HANDLE_SZ:
        return False
    try:  # open_by_handle_at wants a real descriptor on the filesystem, not an O_PATH one
        mount_fd = os.open(f"/proc/self/fd/{dir_fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _decodes(mount_fd, ftype, fid)
    finally:
        os.close(mount_fd)


def _decodes(mount_fd: int, ftype: int, fid: bytes) -> bool | None:
    h = _HandleIn()
    h.handle_bytes = len(fid)
    h.handle_type = ftype
    ctypes.memmove(h.f_handle, fid, len(fid))
    fd = _libc.open_by_handle_at(mount_fd, ctypes.byref(h), os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        return None if err == _errno.EPERM else False
    os.close(fd)
    return True


_KIND_IFMT = {"file": _stat.S_IFREG, "symlink": _stat.S_IFLNK, "dir": _stat.S_IFDIR,
              "fifo": _stat.S_IFIFO, "socket": _stat.S_IFSOCK, "chardev": _stat.S_IFCHR,
              "blockdev": _stat.S_IFBLK}


class IndexLookup:
    """The index lookup of ``ovl_lookup`` for non-directories (``ovl_lookup_index``).

    The origin of a copied-up file (its ``overlay.origin``, when it still decodes in a lower
    layer) or the lower file of a lower-only one names an index entry: the hex of its handle
    in ``work/index``.  A whiteout or an entry of another type there fails the lookup with EIO
    (``bad index found``); for a lower-only file, an entry is the copy-up of a hard-linked
    alias, and the kernel serves the file from it (the upper bytes, not the lower's).
    """

    def __init__(self, engine) -> None:
        self.engine = engine
        self.index_dir = os.path.join(engine.stack.workdir, "index")
        self.ids = layer_ids(engine)
        self.origin_uuid = uses_origin_uuid(engine)
        self.prefix = engine.prefix
        try:
            self.fd: int | None = os.open(self.index_dir, os.O_PATH | os.O_DIRECTORY
                                          | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            self.fd = None
        else:
            weakref.finalize(self, os.close, self.fd)

    @classmethod
    def for_engine(cls, engine) -> "IndexLookup | None":
        st = engine.stack
        if not (engine.options.index and st.upper is not None and st.workdir
                and not engine.options.mount_errno):
            return None
        if not isinstance(st.upper, DiskLayer) or not all(isinstance(l, DiskLayer) for l in st.lowers):
            return None
        # without work/index yet (the mount makes it) there are no entries, but directory
        # origins are still verified with nfs_export=on
        return cls(engine)

    def _entry(self, fh: bytes) -> tuple[bytes, os.stat_result] | None:
        if self.fd is None:
            return None
        name = fh.hex().encode()
        try:
            return name, os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except OSError:
            return None

    def _lower_fh(self, klayer: int, path) -> tuple[bytes, int] | None:
        """(the index key of a lower object, its S_IFMT), from its real handle."""
        layer = self.engine.layer(klayer)
        lid = self.ids[klayer]
        if lid is None:
            return None
        got = layer.at(path, handle_at)
        st = layer.lstat(path)
        if not isinstance(got, tuple) or st is None:
            return None
        mode = st.st_mode
        uuid = (lid.uuid or NULL_UUID) if self.origin_uuid else None
        return encode_fh(got[0], got[1], uuid), _stat.S_IFMT(mode)

    def _stored_origin(self, upper_path):
        """The upper entry's ``overlay.origin``, decoded, when the kernel would use it."""
        node = self.engine.layer(0).node(upper_path)
        raw = node.xattr(self.prefix + b"origin") if node is not None else None
        if raw is None:
            return None, node
        fh = decode_fh(raw)
        return (fh if fh.usable else None), node

    def _upper_origin(self, upper_path) -> tuple[bytes, int] | None:
        """(the stored origin, the origin's S_IFMT) when it decodes in a lower layer."""
        fh, node = self._stored_origin(upper_path)
        if fh is None:
            return None
        for k in range(1, self.engine.nlower + 1):
            lid = self.ids[k]
            if lid is None:
                continue
            if self.origin_uuid and lid.uuid is not None and lid.uuid != fh.uuid:
                continue
            if not self.origin_uuid and fh.uuid != NULL_UUID:
                continue
            layer = self.engine.layer(k)
            if decodes(layer._root, fh.type, fh.fid):  # noqa: SLF001
                return fh.wire, _KIND_IFMT.get(node.kind, 0)
        return None

    def check(self, res, upper_path, stack) -> str | bool | None:
        """Apply the index lookup to a positive non-directory: the EIO log line when it fails,
        True when the file is served from the index entry (``res`` then says so)."""

        key: tuple[bytes, int] | None
        if upper_path is None:
            key = self._lower_fh(stack[0].layer, stack[0].path) if stack else None
        else:
            key = self._upper_origin(upper_path)
        if key is None:
            return None
        fh, origin_type = key
        found = self._entry(fh)
        if found is None:
            return None
        name, st = found
        whiteout = _stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        if origin_type and (whiteout or _stat.S_IFMT(st.st_mode) != origin_type):
            return (f"overlayfs: bad index found (index=index/{safe(name)}, "
                    f"ftype={_stat.S_IFMT(st.st_mode):x}, origin ftype={origin_type:x}).")
        if upper_path is not None:
            return None  # the upper is the indexed inode, or the entry is ignored
        # a lower hard link whose alias was copied up: served from the index entry
        res.size, res.mode, res.uid, res.gid = (st.st_size, _stat.S_IMODE(st.st_mode),
                                                st.st_uid, st.st_gid)
        # a metacopy copy-up (chmod with metacopy=on): the entry holds the metadata only, the
        # bytes are still the lower file's (the entry's origin: this very lower inode)
        metacopy = False
        if _stat.S_ISREG(st.st_mode):
            try:
                _getxattr_at(self.fd, name, self.prefix + b"metacopy")
                metacopy = True
            except OSError:
                pass
        res.data = stack[0] if metacopy else None  # else the index entry: in no layer
        if self.engine.tracer.on:
            res.trace.append(f"index=on: the lower file's handle names the index entry "
                             f"index/{safe(name)}: a hard-linked alias was copied up, and the "
                             "kernel serves this file from it")
        res.findings.append(Finding(
            "index-served", b"/" + b"/".join(res.path),
            f"{show_path(res.path)} is a hard link in {self.engine.label(stack[0].layer)} whose "
            f"alias was copied up with index=on: stat and read give the index entry "
            f"work/index/{safe(name)} (the copied-up inode: its size {st.st_size}, "
            + ("its metadata; a metacopy: the bytes are still the lower file's)" if metacopy else
               "its bytes), not the lower file"), [self.engine.json_index(stack[0].layer)]))
        return True

    def check_dir(self, upper_path, ref) -> str | None:
        """``ovl_lookup_index`` for a directory (nfs_export=on): its origin (``ref``, the first
        lower) names an index entry that is not a directory (``bad index found``), that
        belongs to an upper directory while this one has none (``suspected uncovered
        redirected dir``), or whose ``overlay.upper`` names another upper directory
        (``suspected multiply redirected dir``): the lookup fails with EIO (the log line)."""
        key = self._lower_fh(ref.layer, ref.path)
        if key is None:
            return None
        found = self._entry(key[0])
        if found is None:
            return None
        name, st = found
        index = f"index/{safe(name)}"
        origin = lower_pd2(self.engine.layer(ref.layer).path, ref.path)
        whiteout = _stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        if whiteout or not _stat.S_ISDIR(st.st_mode):
            return (f"overlayfs: bad index found (index={index}, ftype={_stat.S_IFMT(st.st_mode):x}, "
                    f"origin ftype={_stat.S_IFDIR:x}).")
        if upper_path is None:
            return f"overlayfs: suspected uncovered redirected dir found (origin={origin}, index={index})."
        if not self.dir_indexed(upper_path, ref):
            upper = lower_pd2(self.engine.layer(0).path, upper_path) if upper_path else \
                pd2_of_dir(self.engine.layer(0).path)
            return (f"overlayfs: suspected multiply redirected dir found (upper={upper}, origin={origin}, "
                    f"index={index}).")
        return None

    def dir_indexed(self, upper_path, ref) -> bool:
        """Whether a merged directory's overlay inode is indexed (``OVL_INDEX``): with
        nfs_export=on (``ovl_index_all``) the verified origin of an upper directory (its first
        lower, ``ref``) names an index entry, a directory whose ``overlay.upper`` is the upper
        directory's own handle (``ovl_verify_upper``).  The inode then keeps the lower's
        st_ino; without the entry it gets the upper's."""
        if not (self.engine.options.nfs_export and upper_path is not None and ref is not None):
            return False
        key = self._lower_fh(ref.layer, ref.path)
        if key is None:
            return False
        found = self._entry(key[0])
        if found is None or not _stat.S_ISDIR(found[1].st_mode):
            return False
        try:
            raw = _getxattr_at(self.fd, found[0], self.prefix + b"upper")
        except OSError:
            return False
        stored = decode_fh(raw)
        upper = self.engine.layer(0)
        with upper._lock:  # noqa: SLF001 - the layer's own descriptors, read-only
            fd = upper._dirfd(upper_path[:-1]) if upper_path else upper._root  # noqa: SLF001
            got = handle_at(fd, upper_path[-1] if upper_path else b"") if fd is not None else None
        return isinstance(got, tuple) and stored.usable and (stored.type, stored.fid) == got

    def verify_lower(self, upper_path, ref, is_dir: bool) -> str | None:
        """``ovl_verify_origin`` of the first lower entry found by path under an upper one:
        the log line when the upper's origin names another object (None: it matches, or the
        kernel does not verify).  Files: with index=on, when the origin still decodes (a
        metacopy: the lookup fails with ESTALE).  Directories: with nfs_export=on (the lower
        directory is then not merged)."""
        fh, _ = self._stored_origin(upper_path)
        if fh is None:
            return None
        if is_dir:
            if not self.engine.options.nfs_export:
                return None
        elif self._upper_origin(upper_path) is None:
            return None
        want = self._lower_fh(ref.layer, ref.path)
        if want is None or fh.wire == want[0]:
            return None
        layer = self.engine.layer(ref.layer)
        try:
            with layer._lock:  # noqa: SLF001
                fd = layer._dirfd(ref.path[:-1])  # noqa: SLF001
                ino = os.stat(ref.path[-1], dir_fd=fd, follow_symlinks=False).st_ino if fd is not None else 0
        except OSError:
            ino = 0
        return f"overlayfs: failed to verify origin ({lower_pd2(layer.path, ref.path)}, ino={ino}, err=-116)"


def _getxattr_at(dir_fd: int, name: bytes, attr: bytes) -> bytes:
    """An xattr of ``name`` in ``dir_fd`` (an O_PATH descriptor), never following a symlink,
    at most 4 KiB."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return os.getxattr(f"/proc/self/fd/{fd}", attr)[:4096]
    finally:
        os.close(fd)


def lower_pd2(layer_dir: str, path) -> str:
    """``%pd2`` of an object inside a layer: its parent's name and its own."""
    name = path[-1].decode("utf-8", "backslashreplace")
    if len(path) > 1:
        return path[-2].decode("utf-8", "backslashreplace") + "/" + name
    parent = pd2_of_dir(layer_dir)
    return "/" + name if parent == "/" else parent.rsplit("/", 1)[-1] + "/" + name


def _open_handle(dir_fd: int, ftype: int, fid: bytes) -> int | None:
    try:
        mount_fd = os.open(f"/proc/self/fd/{dir_fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        h = _HandleIn()
        h.handle_bytes = len(fid)
        h.handle_type = ftype
        ctypes.memmove(h.f_handle, fid, len(fid))
        fd = _libc.open_by_handle_at(mount_fd, ctypes.byref(h),
                                     os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        return fd if fd >= 0 else None
    finally:
        os.close(mount_fd)


def _lstat_in(layer, path) -> os.stat_result | None:
    return layer.lstat(path) if isinstance(layer, DiskLayer) and path else None


def where_origin(engine, fh: FileHandle, prefer=None) -> str:
    """Where an origin handle points, in the stack's words: ``matches lower 2 (l):/usr/lib``,
    or ``points to a filesystem that is not in this stack`` (the object is only opened
    ``O_PATH`` to learn its path; nothing is read)."""
    if not fh.usable or len(fh.fid) > MAX_HANDLE_SZ:
        return ""

    ids = layer_ids(engine)
    same_uuid = [k for k, i in enumerate(ids) if i is not None and i.uuid is not None
                 and (fh.uuid == i.uuid or fh.uuid == NULL_UUID)]
    if not same_uuid:
        if all(i is None or i.uuid is None for i in ids):
            return ""
        return (f"points to a filesystem that is not in this stack (uuid {uuid_text(fh.uuid)}): "
                "the lower layer moved, or was copied")
    for k in same_uuid:
        if k == 0 and fh.uuid == NULL_UUID:
            continue
        layer = engine.layer(k)
        fd = _open_handle(layer._root, fh.type, fh.fid)  # noqa: SLF001
        if fd is None:
            continue
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            st = os.fstat(fd)
        except OSError:
            target, st = "", None
        finally:
            os.close(fd)
        if prefer and st is not None:  # a hard link: name it as the merged path does
            for j in same_uuid:
                node_st = _lstat_in(engine.layer(j), prefer)
                if node_st is not None and (node_st.st_dev, node_st.st_ino) == (st.st_dev, st.st_ino):
                    return f"matches {engine.label(j)}:{show_path(prefer)}"
        for j in same_uuid:  # the layer that holds it (several layers may share a filesystem)
            r = os.path.realpath(engine.layer(j).path)
            if target == r or target.startswith(r.rstrip("/") + "/"):
                rel = target[len(r):].lstrip("/")
                comps = tuple(os.fsencode(c) for c in rel.split("/") if c)
                return f"matches {engine.label(j)}:{show_path(comps)}"
        return (f"an object on the filesystem of {engine.label(k)}, outside every layer "
                f"({safe(os.fsencode(target))})" if target else
                f"an object on the filesystem of {engine.label(k)}, outside every layer")
    return ("stale: no object with this handle on the filesystem of "
            f"{engine.label(same_uuid[0])} (deleted or re-created: the kernel treats the origin "
            "as unknown)")
