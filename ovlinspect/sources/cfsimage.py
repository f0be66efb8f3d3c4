"""Real composefs mounts: find and read the EROFS image behind a lower layer that is gone.

``mount.composefs`` (libcomposefs, as bootc and podman use it) attaches the image to a
read-only loop device, mounts EROFS on a temporary directory ``/tmp/.composefs.XXXXXX``, mounts
the overlay with ``lowerdir+=/tmp/.composefs.XXXXXX,datadir+=<objects>`` (metacopy=on,
redirect_dir=on, maybe verity=require, upperdir/workdir), then detaches the EROFS mount and
removes the directory.  The overlay keeps its own reference to the EROFS superblock, but
mountinfo keeps only the dead path.  containers/storage does the same per layer with
``<container>/composefs-layers/N`` (the directory stays, empty), its blobs being
``<layer>/composefs-data/composefs.blob`` beside the ``<layer>/diff`` data directories; newer
tools pass the EROFS mount as a file descriptor, which mountinfo shows as ``/``.

For each such lower layer this module looks for the image, in this order: ``--image`` (only
those, when given), the loop devices whose content is an EROFS image
(``/sys/block/loop*/loop/backing_file``), the images kept next to the data-only layers
(composefs repositories ``<repo>/objects`` + ``<repo>/images/*``, ostree/bootc
``<sysroot>/ostree/repo/objects`` + ``deploy/*/deploy/*/.ostree.cfs``, containers/storage
``composefs-data/composefs.blob``, ``*.cfs`` beside the store).  A candidate is used only when
it agrees with what the kernel shows at the mount's root (its ``readdir``, and without an upper
layer also the root's owner and mode and the ``lstat`` of the root entries it provides), all
read-only through the mount.

The image is read through a detached, read-only EROFS mount of our own (``fsopen`` /
``fsconfig`` / ``fsmount``, never attached: no mount table shows it), from the image file
(file-backed EROFS, Linux 6.12+, and not for a file on tmpfs, which has no page-cache reads
for it) or else from a read-only autoclear loop device set up here; for a loop-device
candidate the device itself is the source.  The mount lives as long as the layer's
descriptor: :meth:`ImageLayer.close` ends it (and the loop device with it).
"""

from __future__ import annotations

import errno as _errno
import glob
import os
import stat as _stat
from dataclasses import dataclass

from ..model.layers import DiskLayer, Layer, LayerError
from ..live.mountapi import MountError, fsmount_erofs, loop_attach_readonly, loop_status

__all__ = ["Gone", "ImageLayer", "gone_lowers", "image_layers", "open_image"]

EROFS_MAGIC = 0xE0F5E1E2
EROFS_SUPER_OFFSET = 1024
#: Candidate images tried per mount at most (each costs one detached EROFS mount).
MAX_CANDIDATES = 64
#: Entries whose lstat through the mount is compared, directories listed (read-only mounts only).
MAX_PROBES = 256
MAX_DIRS = 32


class ImageError(Exception):
    """No image could be found or used; the message is one line for the user."""


def _q(p: str) -> str:
    return p if p.isprintable() else repr(p)


# ------------------------------------------------------------------------------ the layer


class ImageLayer(DiskLayer):
    """An EROFS image read through a detached read-only mount of our own.

    ``path`` is the image (what the user knows it as, shown and put in the JSON); the reads go
    through ``/proc/self/fd/N`` of the mount's descriptor, which this layer owns.
    """

    def __init__(self, mnt_fd: int, image: str, label: str, how: str, source: str) -> None:
        self.mnt_fd = mnt_fd
        self.image = image
        self.how = how
        self.source = source
        try:
            super().__init__(f"/proc/self/fd/{mnt_fd}", label)
        except LayerError:
            os.close(mnt_fd)
            raise
        self.path = image

    def reopen(self) -> "ImageLayer":
        return ImageLayer(os.dup(self.mnt_fd), self.image, self.label, self.how, self.source)

    def _close(self) -> None:
        super()._close()
        if self.mnt_fd >= 0:
            os.close(self.mnt_fd)
            self.mnt_fd = -1


def _is_erofs(fd: int) -> bool:
    try:
        head = os.pread(fd, 4, EROFS_SUPER_OFFSET)
    except OSError:
        return False
    return len(head) == 4 and int.from_bytes(head, "little") == EROFS_MAGIC


def erofs_file(path: str) -> bool:
    """``path`` is a regular file (symlinks followed: it is not inside a layer) holding EROFS."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not (_stat.S_ISREG(st.st_mode) or _stat.S_ISBLK(st.st_mode)):
            return False
        return _is_erofs(fd)
    finally:
        os.close(fd)


def open_image(source: str, image: str, label: str, how: str, *, force_loop: bool = False) -> ImageLayer:
    """Mount ``source`` (an image file or a block device) detached and read-only, as a layer.

    A file the kernel cannot mount directly (ENOTBLK: before 6.12, or on tmpfs) is put on a
    read-only autoclear loop device first; the device goes away with the mount.
    """
    loop_fd = None
    try:
        st = os.stat(source)
        if force_loop and _stat.S_ISREG(st.st_mode):
            raise MountError(_errno.ENOTBLK, "fsconfig source")
        mnt_fd = fsmount_erofs(source)
    except MountError as e:
        if e.errno != _errno.ENOTBLK or not _stat.S_ISREG(st.st_mode):
            raise ImageError(f"cannot mount {_q(source)} as EROFS: {e}") from None
        try:
            loop_fd, dev = loop_attach_readonly(source)
            mnt_fd = fsmount_erofs(dev)
        except (MountError, OSError) as e2:
            raise ImageError(f"cannot mount {_q(source)} as EROFS through a loop device: {e2}") from None
        how += f", read through our own read-only loop device {dev}"
    except OSError as e:
        raise ImageError(f"{_q(source)}: {e.strerror}") from None
    finally:
        if loop_fd is not None:
            os.close(loop_fd)  # the mount holds the device now; autoclear releases it after
    return ImageLayer(mnt_fd, image, label, how, source)


# --------------------------------------------------------------------------- gone layers


@dataclass
class Gone:
    """A regular lower layer whose mountinfo path no longer reaches it."""

    index: int
    path: str
    why: str


def gone_lowers(lowers: list[str], resolve=None) -> list[Gone]:
    """The lower layers (mountinfo paths) that are gone; ``resolve`` maps a mountinfo path to
    where it is looked up (default: itself; ``/proc/PID/root/...`` for another namespace)."""
    out = []
    for i, p in enumerate(lowers):
        real = resolve(p) if resolve is not None else p
        if not p.startswith("/"):
            continue  # relative paths are another story (--layer-root)
        if p == "/":
            out.append(Gone(i, p, "passed as the file descriptor of a detached mount, which "
                                  "mountinfo shows as '/'"))
        elif p.endswith(" (deleted)"):
            out.append(Gone(i, p, "its directory was deleted after the mount was made"))
        elif not os.path.lexists(real):
            why = "its directory no longer exists"
            if os.path.basename(p).startswith(".composefs."):
                why += ", as mount.composefs leaves it once the EROFS mount is detached"
            out.append(Gone(i, p, why))
        elif os.path.basename(os.path.dirname(p)) == "composefs-layers" and os.path.isdir(real) \
                and not os.path.ismount(real):
            out.append(Gone(i, p, "containers/storage mounted a composefs blob there and "
                                  "detached it; the directory left is empty"))
    return out


# ---------------------------------------------------------------------------- candidates


def _loop_candidates() -> list[tuple[str, str, str]]:
    """(source, image shown, how) for each loop device holding an EROFS image."""
    out = []
    try:
        names = sorted((n for n in os.listdir("/sys/block") if n.startswith("loop")),
                       key=lambda n: int(n[4:]) if n[4:].isdigit() else 1 << 30)
    except OSError:
        return out
    for name in names:
        info = loop_status(name)
        if not info:
            continue
        dev = f"/dev/{name}"
        if not erofs_file(dev):
            continue
        backing = info.get("backing_file", "")
        extra = ", ".join(f"{k} {info[k]}" for k in ("offset", "sizelimit") if info.get(k, "0") != "0")
        how = (f"through the loop device {dev} (backing file {_q(backing)}"
               + (f", {extra}" if extra else "") + ")")
        shown = backing if backing.startswith("/") and not backing.endswith(" (deleted)") \
            and not extra else dev
        out.append((dev, shown, how))
    return out


def _store_candidates(datas: list[str], resolve) -> list[tuple[str, str, str]]:
    """Images kept next to the data-only layers (object stores), newest first per rule."""
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()

    def add(files: list[str], how: str) -> None:
        def mtime(f: str) -> float:
            try:
                return os.stat(f).st_mtime
            except OSError:
                return 0.0

        for f in sorted(files, key=mtime, reverse=True):
            real = os.path.realpath(f)
            if real in seen or len(out) >= MAX_CANDIDATES or not erofs_file(f):
                continue
            seen.add(real)
            out.append((f, f[len(root):] if root and f.startswith(root) else f, how))

    for d in datas:
        if not d.startswith("/") or d == "/":
            continue
        base = resolve(d).rstrip("/")
        root = base[: len(base) - len(d.rstrip("/"))] if base.endswith(d.rstrip("/")) else ""
        parent = os.path.dirname(base)
        store = _q(d)
        # containers/storage: <layer>/diff is the data, <layer>/composefs-data/composefs.blob the image
        add([os.path.join(parent, "composefs-data", "composefs.blob")],
            f"as containers/storage's blob beside the data directory {store}")
        # composefs repository: <repo>/objects and <repo>/images/<id>
        add(glob.glob(glob.escape(os.path.join(parent, "images")) + "/*")[:1024],
            f"in the images/ directory of the composefs repository of {store}")
        # ostree / bootc: <sysroot>/ostree/repo/objects, deploy/<os>/deploy/<commit>.N/.ostree.cfs
        if os.path.basename(base) == "objects" and os.path.basename(parent) == "repo":
            ostree = os.path.dirname(parent)
            add(glob.glob(glob.escape(ostree) + "/deploy/*/deploy/*/.ostree.cfs")[:1024],
                f"as an ostree deployment's .ostree.cfs (repository {_q(d)})")
        add(glob.glob(glob.escape(parent) + "/*.cfs")[:1024], f"beside the object store {store}")
    return out


# --------------------------------------------------------------------------- verification


def _visible_names(layer: Layer) -> tuple[set[bytes], set[bytes]]:
    """(names shown, names whited out) at a layer's root; see :func:`_unsure`."""
    shown, white = set(), set()
    for name, node in layer.scan(()).items():
        (white if node.is_whiteout_dev else shown).add(name)
    return shown, white


def _unsure(layer: Layer, d: tuple[bytes, ...] = ()) -> set[bytes]:
    """Names carrying a whiteout xattr: hidden or not depending on the namespace and the
    parent's markers; no evidence either way for the comparison."""
    return {n for n, node in layer.scan(d).items()
            if node.xattr(b"trusted.overlay.whiteout") is not None
            or node.xattr(b"user.overlay.whiteout") is not None}


class _Mount:
    """What the kernel shows at the merged root, read once, read-only."""

    def __init__(self, merged: str, has_upper: bool) -> None:
        self.merged = merged
        self.has_upper = has_upper
        self.names: set[bytes] | None = None
        self.error = ""
        try:
            self.names = set(os.listdir(os.fsencode(merged)))
            self.root_st = os.stat(merged)
        except OSError as e:
            self.error = f"cannot list the mount's root: {e.strerror}"

    def _full(self, rel: tuple[bytes, ...]) -> bytes:
        return os.fsencode(self.merged).rstrip(b"/") + b"/" + b"/".join(rel)

    def lstat(self, rel: tuple[bytes, ...]) -> os.stat_result | None:
        # only without an upper layer: a lookup through a writable overlay may write to the
        # upper layer (origin/impure xattrs); readdir of the root alone never does.  The path
        # is made of names the image lists, never of symlinks, and nothing is opened.
        if self.has_upper:
            return None
        try:
            return os.lstat(self._full(rel))
        except OSError:
            return None  # the very failure being debugged: no evidence

    def listdir(self, rel: tuple[bytes, ...]) -> set[bytes] | None:
        if self.has_upper:
            return None
        try:
            fd = os.open(self._full(rel), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return {os.fsencode(e.name) for e in os.scandir(fd)}
        except OSError:
            return None
        finally:
            os.close(fd)


def _mismatch(cand: Layer, index: int, layers: list[Layer | None], upper: Layer | None,
              mount: _Mount) -> str | None:
    """Why ``cand`` is not lower layer ``index`` of the mount, or None when it agrees."""
    assert mount.names is not None
    above = ([upper] if upper is not None else []) + layers[:index]
    hidden: set[bytes] = set()
    covered: set[bytes] = set()
    for layer in above:
        if layer is None:
            continue
        shown, white = _visible_names(layer)
        hidden |= white - covered
        covered |= shown | white
    shown, _white = _visible_names(cand)
    missing = sorted(shown - _unsure(cand) - hidden - mount.names)
    if missing:
        return (f"its root holds {_q(os.fsdecode(missing[0]))}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + ", which the mount's root does not list")
    full = list(layers)
    full[index] = cand
    if all(l is not None for l in full):
        union: set[bytes] = set()
        gone_below: set[bytes] = set()
        for layer in ([upper] if upper is not None else []) + full:
            s, w = _visible_names(layer)
            union |= s - gone_below
            gone_below |= s | w
        extra = sorted(mount.names - union)
        if extra:
            return (f"the mount's root lists {_q(os.fsdecode(extra[0]))}, which neither it nor "
                    "another layer holds")
    if upper is None and index == 0:
        root = cand.node(())
        st = mount.root_st
        if root is not None and (root.mode, root.uid, root.gid) != (
                _stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid):
            return (f"its root is mode {root.mode:04o} owner {root.uid}:{root.gid}, the mount's "
                    f"root mode {_stat.S_IMODE(st.st_mode):04o} owner {st.st_uid}:{st.st_gid}")
    if upper is None:
        return _probe(cand, index, len(layers), shown - covered, mount)
    return None


def _probe(cand: Layer, index: int, n_lowers: int, top_names: set[bytes], mount: _Mount) -> str | None:
    """Without an upper layer, compare what the image holds with lookups through the mount.

    The root entries the image provides (nothing above holds them): kind, mode and size of
    each.  When the image is the top layer, also the directories below, breadth first and
    bounded: every name it lists must be listed through the mount (exactly those when it is
    the only regular layer), with its kind, mode and size.  An entry the kernel fails to look
    up (EIO, ...) is no evidence either way: that may be the failure being debugged.
    """
    budget, dirs = MAX_PROBES, MAX_DIRS
    queue: list[tuple[bytes, ...]] = [()]
    while queue and budget > 0:
        d = queue.pop(0)
        scan = cand.scan(d)
        if not d:
            names = sorted(top_names)
        else:
            listing = mount.listdir(d)
            if listing is None:
                continue
            vis = {n for n, node in scan.items() if not node.is_whiteout_dev}
            shown = "/" + os.fsdecode(b"/".join(d))
            missing = sorted(vis - _unsure(cand, d) - listing)
            if missing:
                return (f"{_q(shown)}/{_q(os.fsdecode(missing[0]))} is in it, but the mount's "
                        f"{_q(shown)} does not list it")
            extra = sorted(listing - vis)
            if n_lowers == 1 and extra:
                return (f"the mount's {_q(shown)} lists {_q(os.fsdecode(extra[0]))}, which it "
                        "does not hold")
            names = sorted(vis)
        for name in names:
            if budget <= 0:
                break
            budget -= 1
            node = scan[name]
            rel = d + (name,)
            st = mount.lstat(rel)
            if st is None:
                continue
            where = "/" + os.fsdecode(b"/".join(rel))
            if _stat.S_ISDIR(st.st_mode) != node.is_dir or \
                    _stat.S_ISLNK(st.st_mode) != (node.kind == "symlink"):
                return f"{_q(where)} is a {node.kind} in it, not through the mount"
            if node.is_dir:
                if index == 0 and dirs > 0:
                    dirs -= 1
                    queue.append(rel)
                continue
            if _stat.S_IMODE(st.st_mode) != node.mode or st.st_size != node.size:
                return (f"{_q(where)}: {node.size} bytes mode {node.mode:04o} in it, "
                        f"{st.st_size} bytes mode {_stat.S_IMODE(st.st_mode):04o} through the mount")
    return None


# ------------------------------------------------------------------------------ the hook


def _label(image: str, gone: Gone) -> str:
    base = os.path.basename(image.rstrip("/"))
    if base == "composefs.blob":  # containers/storage: name the layer
        return os.path.basename(os.path.dirname(os.path.dirname(image))) or base
    return base or os.path.basename(gone.path.rstrip("/")) or gone.path


def image_layers(entry, root: str = "", images: list[str] | None = None, *, resolve=None,
                 force_loop: bool = False) -> tuple[dict[int, ImageLayer], str]:
    """Layers standing for the gone lower layers of an overlay mount, and a note saying how.

    ``entry`` is the mount's :class:`~ovlinspect.sources.mountinfo.MountEntry` (layer paths as seen
    from ``root``, ``/proc/PID/root`` for another namespace, where the mountpoint is; ``resolve``
    maps a layer path to where it is read, by default ``root`` + path).  ``images`` are the
    ``--image`` arguments: when given, only they are tried.  Raises :class:`ImageError` (one
    line naming ``--image``) when a gone layer has no image, or a given image does not match.
    """
    # composefs always stacks data-only layers (the object store); other gone layers (podman's
    # idmapped copies, deleted directories) are no business of this module
    if resolve is None:
        def resolve(p: str) -> str:
            return root + p
    composefs_like = bool(entry.datas) or entry.source == "composefs" or bool(images)
    gone = gone_lowers(entry.lowers, resolve) if composefs_like else []
    if not gone:
        if images:
            raise ImageError(f"--image: no lower layer of {_q(entry.mountpoint)} is gone (every "
                             "layer path of its mountinfo line exists); --image names the EROFS "
                             "image of a detached composefs layer")
        return {}, ""
    mp = entry.mountpoint
    if images:
        cands = []
        for img in images:
            full = os.path.abspath(img)
            if not os.path.exists(full):
                raise ImageError(f"--image {_q(img)}: no such file")
            if not erofs_file(full):
                raise ImageError(f"--image {_q(img)}: not an EROFS image (no EROFS superblock at "
                                 "offset 1024)")
            cands.append((full, full, "with --image"))
    else:
        cands = _loop_candidates() + _store_candidates(entry.datas, resolve)
        cands = cands[:MAX_CANDIDATES]

    # the layers still reachable, opened read-only for the comparison
    def try_open(p: str) -> Layer | None:
        try:
            return DiskLayer(resolve(p), "", want_xattrs=False)
        except LayerError:
            return None

    gone_ix = {g.index for g in gone}
    known: list[Layer | None] = [None if i in gone_ix else try_open(p) for i, p in enumerate(entry.lowers)]
    upper = try_open(entry.upperdir) if entry.upperdir and entry.upperdir.startswith("/") else None
    mount = _Mount(root + mp, entry.upperdir is not None)
    found: dict[int, ImageLayer] = {}
    notes: list[str] = []
    used: set[str] = set()
    try:
        for g in gone:
            reasons: list[str] = []
            for source, shown, how in cands:
                if source in used:
                    continue
                try:
                    layer = open_image(source, shown, _label(shown, g), how, force_loop=force_loop)
                except ImageError as e:
                    reasons.append(str(e))
                    continue
                why = _mismatch(layer, g.index, known, upper, mount) if mount.names is not None else None
                if why is None and mount.names is None and not images:
                    why = mount.error  # an image found by searching must be checked
                if why is not None:
                    reasons.append(f"{_q(shown)}: {why}")
                    layer.close()
                    continue
                used.add(source)
                found[g.index] = layer
                known[g.index] = layer
                checked = (f"checked against the mount's root ({len(mount.names)} names)"
                           if mount.names is not None else f"not checked: {mount.error}")
                notes.append(f"lower {g.index} ({_q(g.path)}) is gone: {g.why}; read from the EROFS "
                             f"image {_q(shown)}, found {layer.how}, mounted detached and "
                             f"read-only; {checked}")
                break
            else:
                tried = f"; tried {len(reasons)}: {reasons[0]}" + (" ..." if len(reasons) > 1 else "") \
                    if reasons else "; no loop device or image next to the object store holds EROFS"
                if images:
                    raise ImageError(f"{_q(mp)}: --image does not match lower layer {g.index} "
                                     f"({_q(g.path)}){tried}")
                raise ImageError(
                    f"{_q(mp)}: lower layer {g.index} ({_q(g.path)}) is gone ({g.why}) and no EROFS "
                    f"image matching it was found{tried}; name it with --image IMAGE (or give every "
                    "layer with --lowerdir)")
    except BaseException:
        for layer in found.values():
            layer.close()
        raise
    finally:
        for layer in [*known, upper]:
            if layer is not None and not isinstance(layer, ImageLayer):
                layer.close()
    return found, " ".join(notes)
