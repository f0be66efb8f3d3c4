"""``st_ino`` and ``st_dev`` as a program sees them through the overlay, read-only.

Follows ``fs/overlayfs``: ``super.c`` (``xino_mode``: ``ovl_fill_super``, ``ovl_lower_dir``,
``ovl_make_workdir``, ``ovl_get_fsid``, ``ovl_get_layers``), ``inode.c`` (``ovl_getattr``,
``ovl_map_dev_ino``, ``ovl_map_ino``, ``ovl_hash_bylower``) and ``util.c``
(``ovl_can_decode_fh``).

* Every layer's filesystem gets an fsid: 0 for the upper filesystem (reserved even without an
  upper layer), then one per other lower filesystem in the order of the lower layers.
* All layers on one filesystem (``samefs``): every object shows the overlay's own ``st_dev``
  and the real inode number it takes it from.
* Several filesystems with ``xino=on|auto``: the high ``xino`` bits of ``st_ino`` hold the
  fsid (32 bits when every layer uses the default 32-bit inode file handles, as ext4 does;
  else ``ilog2(numfs - 1) + 2`` bits, as on tmpfs or xfs), shifted by ``64 - bits + 1``, and
  ``st_dev`` is the overlay's.  An inode number that already uses those bits cannot be mapped:
  ``xino=on`` logs ``inode number too big``, and the object falls back as with ``xino=off``.
* ``xino=off`` on several filesystems: a non-directory shows the real inode number and a
  pseudo device of its filesystem (an anonymous device allocated at mount, not the real
  filesystem's); a directory shows the overlay's ``st_dev`` and an inode number overlayfs
  allocates at lookup (not persistent: 2 for the root, then in lookup order).
* Which real inode: a lower-only object's own; an upper object's own unless it has a lower
  (a directory merged with or redirected to a lower one, an upper file whose
  ``overlay.origin`` still decodes, a metacopy) that the kernel hashes the inode by: then the
  lower's, except a copied-up hard link (lower ``nlink > 1``) without an index entry, and every
  upper object with ``nfs_export=on`` that is not indexed.

Only descriptors of the layers are read (``lstat``, ``fstatfs``, ``open_by_handle_at`` with
``O_PATH``); nothing is written.
"""

from __future__ import annotations

import ctypes
import os
import stat as _stat
from dataclasses import dataclass, field

from ..model.layers import DiskLayer
from ..model.xattrs import NULL_UUID, decode_fh
from ..rules.catalogue import Finding

__all__ = ["InodeInfo", "Xino", "inode_of", "inode_json", "inode_text", "xino_of", "Collisions"]

#: statfs ``f_type`` of the filesystems whose export operations use the default 32-bit inode
#: encoder (``generic_encode_ino32_fh``), which ``ovl_can_decode_fh`` reports as
#: ``FILEID_INO32_GEN``: ext2/3/4 and f2fs.  Kernels 6.7 to the stable fix "ovl: fix wrong
#: detection of 32bit inode numbers" (7.0, backported to 6.12.y and 6.18.y) took them for
#: filesystems with unknown inode size (2 xino bits instead of 32); not modelled.
INO32_FS = {0xEF53: "ext4", 0xF2F52010: "f2fs"}

_libc = ctypes.CDLL(None, use_errno=True)


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("f_bsize", ctypes.c_long), ("rest", ctypes.c_byte * 120)]


def fs_type(fd: int) -> int | None:
    """``f_type`` of the filesystem ``fd`` (``O_PATH`` allowed) is on."""
    buf = _Statfs()
    if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
        return None
    return buf.f_type & 0xFFFFFFFF


@dataclass
class Xino:
    """The inode number scheme of a mount (the kernel's ``xino_mode`` and fsids)."""

    #: 0: all layers on one filesystem; -1: no unified numbers; >0: the xino bits
    mode: int
    #: fsid of each kernel layer (upper first); data-only layers share the "null fs"
    fsids: list[int]
    numfs: int
    #: what the kernel logs about it at mount
    log: list[str] = field(default_factory=list)
    #: data-only layers (they share the "null fs" and do not count for samefs)
    ndata: int = 0

    @property
    def samefs_text(self) -> str:
        return ("the upper and regular lower layers on one filesystem (data-only layers do not "
                "count)" if self.ndata else "all layers on one filesystem")

    @property
    def same_fs(self) -> bool:
        return self.mode == 0

    @property
    def bits(self) -> int:
        return self.mode if self.mode > 0 else 0

    def describe(self) -> str:
        if self.mode == 0:
            return f"{self.samefs_text}: real inode numbers, the overlay's st_dev"
        if self.mode < 0:
            return (f"layers on {self.numfs - (1 if self.fsids and self.fsids[0] is None else 0)} "
                    "filesystems and xino off: non-directories show their filesystem's pseudo "
                    "device, directories non-persistent inode numbers")
        return (f"xino: {self.mode} high bits of st_ino hold the layer's filesystem (fsid), the "
                "overlay's st_dev everywhere")


def xino_of(engine) -> Xino | None:
    """The xino setup of ``engine``'s mount (None when a layer is not a directory on disk)."""
    cached = getattr(engine, "_inode_xino", False)
    if cached is not False:
        return cached
    engine._inode_xino = result = _xino(engine)  # noqa: SLF001 - a cache on the engine
    return result


def _xino(engine) -> Xino | None:
    from .origin import layer_id

    opts = engine.options
    layers = engine.klayers
    if any(l is not None and not isinstance(l, DiskLayer) for l in layers):
        return None
    xino = opts.xino
    has_upper = layers[0] is not None
    mode = 32 if xino != "off" else 0  # "assume 32bit inodes unless proven otherwise"
    log: list[str] = []
    devs: list[int | None] = []
    for k, layer in enumerate(layers):
        if layer is None:
            devs.append(None)
            continue
        devs.append(layer.dev)
        with layer._lock:  # noqa: SLF001 - the layer's own root descriptor
            ftype = fs_type(layer._root)  # noqa: SLF001
        lid = layer_id(layer)
        has_fh = lid is not None and lid.has_handles
        if xino == "auto" and has_upper and not has_fh and k > 0:
            xino = "off"
            log.append(f"overlayfs: fs on '{layer.path}' does not support file handles, "
                       "falling back to xino=off.")
        if not has_fh or ftype not in INO32_FS:  # "Check if ... fs has 32bit inode numbers"
            mode = -1
    # fsids: 0 for the upper filesystem, then each other lower filesystem in order
    fs: list[int | None] = [devs[0]]
    fsids: list[int] = [0]
    for k in range(1, engine.nlower + 1):
        dev = devs[k]
        if dev in fs:
            fsids.append(fs.index(dev))
        else:
            fs.append(dev)
            fsids.append(len(fs) - 1)
    numfs = len(fs)
    fsids += [numfs] * engine.ndata
    if numfs - (0 if has_upper else 1) == 1:
        if xino == "on":
            log.append('overlayfs: "xino=on" is useless with all layers on same fs, ignore.')
        mode = 0
    elif xino == "off":
        mode = -1
    elif mode < 0:
        mode = (numfs - 1).bit_length() - 1 + 2
    if mode > 0:
        log.append(f'overlayfs: "xino" feature enabled using {mode} upper inode bits.')
    return Xino(mode, fsids, numfs, log, ndata=engine.ndata)


@dataclass
class InodeInfo:
    """What ``lstat`` of a merged path gives for ``st_ino`` and ``st_dev``."""

    #: the number, or None when overlayfs allocates it at lookup (not persistent)
    st_ino: int | None
    #: "overlay" (the overlay's own device) or "pseudo:N" (the pseudo device of fsid N)
    st_dev: str
    #: the kernel layer and path (or handle-decoded object) whose real inode number it is
    source: tuple[int, tuple] | None
    real_ino: int | None
    fsid: int
    why: str
    #: the kernel's log line (xino=on, inode number too big)
    log: str | None = None
    #: the real object's identity (dev, ino): two merged paths with the same one are one file
    real: tuple[int, int] | None = None
    #: for an upper non-directory with an overlay.origin: whether it decodes in a lower layer
    origin_decodes: bool | None = None

    @property
    def persistent(self) -> bool:
        return self.st_ino is not None


def _lstat(layer, path) -> os.stat_result | None:
    return layer.lstat(path) if isinstance(layer, DiskLayer) else None


def _origin_fh(engine, upper_path):
    """The upper entry's ``overlay.origin``, decoded, when it is a usable file handle."""
    node = engine.layer(0).node(upper_path)
    raw = node.xattr(engine.prefix + b"origin") if node is not None else None
    if raw is None:
        return None
    fh = decode_fh(raw)
    return fh if fh.usable else None


def _origin(engine, upper_path) -> tuple[int, os.stat_result] | None:
    """The lower object an upper non-directory's ``overlay.origin`` decodes to (any lower layer
    whose filesystem matches the handle's uuid; anywhere on that filesystem), and its lstat."""
    from .origin import _open_handle, layer_ids, uses_origin_uuid

    fh = _origin_fh(engine, upper_path)
    if fh is None:
        return None
    ids = layer_ids(engine)  # read once per engine
    origin_uuid = uses_origin_uuid(engine)
    for k in range(1, engine.nlower + 1):
        lid = ids[k]
        if lid is None:
            continue
        if origin_uuid and lid.uuid is not None and lid.uuid != fh.uuid:
            continue
        if not origin_uuid and fh.uuid != NULL_UUID:
            continue
        fd = _open_handle(engine.layer(k)._root, fh.type, fh.fid)  # noqa: SLF001
        if fd is None:
            continue
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if _stat.S_IFMT(st.st_mode) == _stat.S_IFDIR:
            return None
        return k, st
    return None


def origin_location(engine, upper_path) -> tuple[int, tuple, os.stat_result] | None:
    """Where an upper non-directory's origin lives: (lower layer, path in it, its lstat), when
    it decodes to an object inside a lower layer's directory (opened ``O_PATH`` only)."""
    from .origin import _open_handle

    found = _origin(engine, upper_path)
    if found is None:
        return None
    k, st = found
    node = engine.layer(0).node(upper_path)
    fh = decode_fh(node.xattr(engine.prefix + b"origin"))
    fd = _open_handle(engine.layer(k)._root, fh.type, fh.fid)  # noqa: SLF001
    if fd is None:
        return None
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    finally:
        os.close(fd)
    for j in range(1, engine.nlower + 1):
        layer = engine.klayers[j]
        if layer is None or not getattr(layer, "path", None):
            continue
        root = os.path.realpath(layer.path).rstrip("/")
        if target.startswith(root + "/"):
            rel = target[len(root) + 1:]
            return j, tuple(os.fsencode(c) for c in rel.split("/") if c), st
    return None


def _indexed(engine, upper_path) -> bool:
    """Whether an upper non-directory's inode is indexed (``OVL_INDEX``): index=on, its origin
    decodes in a lower layer, and work/index holds the hex of that handle."""
    if not engine.options.index or not engine.stack.workdir:
        return False
    fh = _origin_fh(engine, upper_path)
    if fh is None:
        return False
    try:
        os.lstat(os.path.join(engine.stack.workdir, "index", fh.wire.hex()))
    except OSError:
        return False
    # the kernel looks the index up by the origin only when the origin decodes (a lower
    # re-created since: the entry is still there, but nothing names it)
    return _origin(engine, upper_path) is not None


def inode_of(engine, res) -> InodeInfo | None:
    """``st_ino``/``st_dev`` of a positive resolution (None when the layers are not on disk or
    the path does not resolve); computed once per resolution."""
    memo = getattr(res, "_inode_info", False)
    if memo is not False:
        return memo
    info = _inode_of(engine, res)
    try:
        res._inode_info = info  # noqa: SLF001 - a memo on the resolution
    except AttributeError:
        pass
    return info


def _inode_of(engine, res) -> InodeInfo | None:
    info = _inode_info(engine, res)
    if info is not None and not res.lowers and res.upper is not None and res.kind != "dir":
        info.origin_decodes = getattr(res, "_origin_decodes", None)
    if info is not None:
        line = _nlink_log(engine, res)
        if line:
            info.log = line if not info.log else info.log + "\n" + line
    return info


def _nlink_log(engine, res) -> str | None:
    """``ovl_get_nlink`` at the inode's first lookup: an upper non-directory whose lower
    object (its decoded origin, or its lower data) has several links reads its link count
    from ``overlay.nlink``; a copy-up made without an index (index=off, or a broken hard link)
    has none, and the kernel warns (rate-limited) and uses the upper's own count."""
    if res.kind == "dir" or not res.upper:
        return None
    if res.lowers:
        lower_st = _lstat(engine.layer(res.lowers[0].layer), res.lowers[0].path)
    else:
        found = _origin(engine, res.upper)
        lower_st = found[1] if found is not None else None
    if lower_st is None or lower_st.st_nlink <= 1:
        return None
    node = engine.layer(0).node(res.upper)
    if node is None or node.xattr(engine.prefix + b"nlink") is not None:
        return None
    from .origin import lower_pd2

    return (f"overlayfs: failed to get index nlink ({lower_pd2(engine.layer(0).path, res.upper)}, "
            "err=-61)")


def _inode_info(engine, res) -> InodeInfo | None:
    if res.errno is not None or res.kind is None:
        return None
    x = xino_of(engine)
    if x is None:
        return None
    opts = engine.options
    is_dir = res.kind == "dir"
    upper = res.upper
    lower_k: int | None = None
    lower_st: os.stat_result | None = None
    lower_path: tuple | None = None
    served = any(f.rule == "index-served" for f in res.findings)
    if res.lowers:
        ref = res.lowers[0]
        lower_k, lower_path = ref.layer, ref.path
        lower_st = _lstat(engine.layer(ref.layer), ref.path)
    elif upper is not None and not is_dir:
        found = _origin(engine, upper)
        if found is not None:
            lower_k, lower_st = found
        try:
            res._origin_decodes = found is not None  # noqa: SLF001
        except AttributeError:
            pass
    upper_st = _lstat(engine.layer(0), upper) if upper is not None else None
    if upper is not None and upper_st is None:
        return None
    if upper is None and lower_st is None:
        return None
    has_upper_mount = engine.has_upper
    index = served or (upper is not None and lower_st is not None and not is_dir
                       and _indexed(engine, upper))
    if is_dir and upper is not None and res.lowers and getattr(engine, "_index", None) is not None:
        index = engine._index.dir_indexed(upper, res.lowers[0])  # noqa: SLF001 - nfs_export
    # ovl_hash_bylower: is the overlay inode keyed by its lower inode (OVL_CONST_INO)?
    bylower = False
    if lower_st is not None:
        if index or not has_upper_mount:
            bylower = True
        elif (upper is not None or not opts.index) and not is_dir and lower_st.st_nlink > 1:
            bylower = False
        elif opts.nfs_export and upper is not None:
            bylower = False
        else:
            bylower = True
    verify_lower = opts.nfs_export and opts.index
    why: list[str] = []
    if upper is None:
        real_st, fsid, source = lower_st, x.fsids[lower_k], (lower_k, lower_path)
        why.append(f"the inode number of {engine.where(res.lowers[0])}")
    else:
        real_st, fsid, source = upper_st, 0, (0, upper)
        if not upper:
            why.append("the overlay root: the upper root's inode number")
        elif lower_st is not None and bylower:
            if index or (not verify_lower and (is_dir or lower_st.st_nlink == 1)):
                real_st, fsid = lower_st, x.fsids[lower_k]
                source = (lower_k, lower_path)
                what = (engine.where(res.lowers[0]) if res.lowers else
                        f"its copy-up origin in {engine.label(lower_k)}")
                why.append(f"the inode number of {what}" + (
                    " (kept across copy-up)" if not is_dir else ""))
            else:
                why.append("the upper inode's own number: its lower has "
                           f"{lower_st.st_nlink} links and no index entry"
                           if lower_st.st_nlink > 1 else
                           "the upper inode's own number (nfs_export verifies lower origins)")
        elif lower_st is not None:
            why.append("the upper inode's own number: "
                       + ("a copied-up hard link without an index entry is not keyed by its "
                          "lower inode" if lower_st.st_nlink > 1 and not is_dir else
                          "with nfs_export=on a non-indexed upper is not keyed by its lower"))
        else:
            why.append("the upper inode's own number")
    real_ino = real_st.st_ino
    backing = upper_st if upper is not None else lower_st
    real = (backing.st_dev, backing.st_ino)  # the object behind the overlay inode
    if is_dir and not (x.mode >= 0):
        # directories of several filesystems without xino: overlayfs numbers them itself
        ino = 2 if res.path == () else None
        return InodeInfo(ino, "overlay", None, real_ino, 0,
                         "layers on several filesystems without xino: the directory gets an "
                         "inode number overlayfs allocates at lookup (not persistent: 2 for "
                         "the root, then in lookup order) and the overlay's st_dev", real=real)
    if x.same_fs:
        return InodeInfo(real_ino, "overlay", source, real_ino, fsid,
                         "; ".join(why) + f"; {x.samefs_text}: the overlay's st_dev",
                         real=real)
    if x.bits:
        shift = 64 - x.bits
        if not real_ino >> shift:
            return InodeInfo(real_ino | (fsid << (shift + 1)), "overlay", source, real_ino, fsid,
                             "; ".join(why) + f"; xino: fsid {fsid} in the high bits (shifted by "
                             f"{shift + 1}), the overlay's st_dev", real=real)
        log = None
        if opts.xino == "on":
            from .entry import pd2

            log = (f"overlayfs: inode number too big ({pd2(res.path) if res.path else '/'}, "
                   f"ino={real_ino}, xinobits={x.bits})")
        why.append(f"inode number too big: it uses the {x.bits} high bits xino needs")
        if is_dir:
            return InodeInfo(None, "overlay", None, real_ino, fsid,
                             "; ".join(why) + ": the directory gets an inode number overlayfs "
                             "allocates (not persistent), the overlay's st_dev", log, real=real)
        return InodeInfo(real_ino, f"pseudo:{fsid}", source, real_ino, fsid,
                         "; ".join(why) + f": the pseudo device of fsid {fsid}", log, real=real)
    return InodeInfo(real_ino, f"pseudo:{fsid}", source, real_ino, fsid,
                     "; ".join(why) + f"; xino off on several filesystems: st_dev is the pseudo "
                     f"device overlayfs allocated for fsid {fsid}", real=real)


def inode_json(engine, res) -> dict | None:
    info = inode_of(engine, res)
    if info is None:
        return None
    x = xino_of(engine)
    src = None
    if info.source is not None:
        k, p = info.source
        src = {"layer": engine.json_index(k),
               # raw bytes kept as the contract keeps every path (\udcXX for undecodable ones)
               "path": ("/" + "/".join(c.decode("utf-8", "surrogateescape") for c in p))
               if p is not None else None}
    return {"st_ino": info.st_ino, "st_dev": info.st_dev, "real_ino": info.real_ino,
            "from": src, "fsid": info.fsid, "xino_bits": x.bits if x else 0,
            "persistent": info.persistent, "why": info.why, "kernel_log": info.log}


def inode_text(engine, res) -> str | None:
    info = inode_of(engine, res)
    if info is None:
        return None
    ino = str(info.st_ino) if info.st_ino is not None else "allocated at lookup (not persistent)"
    dev = "the overlay's" if info.st_dev == "overlay" else (
        f"the pseudo device of fsid {info.fsid}")
    return f"st_ino {ino}, st_dev {dev}: {info.why}"


class Collisions:
    """Merged paths that report one ``(st_ino, st_dev)`` for different files (tar, rsync, du
    and ``find -samefile`` then take them for hard links of each other)."""

    MAX = 1_000_000

    def __init__(self, engine) -> None:
        self.engine = engine
        self.seen: dict[tuple[int, str], tuple[tuple, tuple | None]] = {}
        self.found: list[Finding] = []
        self.enabled = xino_of(engine) is not None

    def add(self, res) -> None:
        # only entries with an upper: a lower-only entry shows its own lower inode, unique on
        # its filesystem (lower-only entries are not lstat'ed: a walk stays cheap; a lower-only
        # path sharing an inode with an upper copy keyed by it is not detected)
        if not self.enabled or res.errno is not None or res.upper is None or \
                len(self.seen) >= self.MAX:
            return
        try:
            info = inode_of(self.engine, res)
        except OSError:
            return
        if info is None or info.st_ino is None:
            return
        if any(f.rule == "index-served" for f in res.findings):
            return  # the index entry: the same inode as its copied-up alias
        key = (info.st_ino, info.st_dev)
        other = self.seen.get(key)
        if other is None:
            self.seen[key] = (res.path, info.real)
            return
        other_path, other_real = other
        if other_real == info.real:
            return  # the same inode (hard links)
        from .entry import show_path

        self.found.append(Finding(
            "inode-collision", b"/" + b"/".join(res.path),
            f"{show_path(res.path)} and {show_path(other_path)} both report st_ino "
            f"{info.st_ino} on the same st_dev but are different files ({info.why}): tar, "
            "rsync -H, du and cp -a take them for hard links of one file; and as both are "
            "keyed by one lower inode, whichever is looked up while the other is in the inode "
            "cache fails with ESTALE (a copy of the upper made with its overlay.origin "
            "xattrs, or a whiteout removed over a renamed copy-up)",
            [self.engine.json_index(info.source[0])] if info.source else []))

    def findings(self) -> list[Finding]:
        return self.found
