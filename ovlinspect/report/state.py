"""Origin, index and impure state of one layer's entry, in words (issue 10), for the CLI's
``explain`` layers table and the view's layer columns alike.

For a row of :func:`ovlinspect.report.view.layer_view`:

* ``origin``: the decoded ``overlay.origin`` handle and what it points to in this stack
  (``matches lower 2 (l):/usr/lib``, ``points to a filesystem that is not in this stack``,
  ``stale: no object with this handle ...``), and, for a merged directory or a metacopy whose
  lower the kernel finds by path, ``stale: the lower object changed`` when the handle names
  another object than the one found there (``ovl_verify_origin``);
* ``index`` (upper entries, ``index=on``): the entry ``work/index/<hex of the origin handle>``
  of a copied-up file (present: the same inode; missing; stale: another inode, a whiteout)
  and, with ``nfs_export=on``, of a directory (its ``overlay.upper`` must name this directory);
* ``impure``: the mark on an upper directory, and whether an entry still needs it (an entry
  with an origin or a redirect).

Nothing here writes; lower objects are opened ``O_PATH`` only (in :mod:`ovlinspect.kernel.origin`).
"""

from __future__ import annotations

import os
import stat as _stat
from typing import NamedTuple

from ..kernel.entry import Resolution, show_path
from ..kernel.inode import _origin
from ..kernel.origin import _getxattr_at, handle_at
from ..model.layers import DiskLayer, Node, Path
from ..model.xattrs import decode_fh, safe
from ..rules.engine import Engine


class StateLine(NamedTuple):
    """One line of state: ``tone`` is ``ok``, ``warning``, ``bad`` or ``info``."""

    tone: str
    text: str


def _handle_of(layer, path: Path) -> tuple[int, bytes] | None:
    """The real file handle of an object in a disk layer (never following a symlink)."""
    if not isinstance(layer, DiskLayer):
        return None
    got = layer.at(path, handle_at)
    return got if isinstance(got, tuple) else None


def _lstat(layer, path: Path) -> os.stat_result | None:
    if not isinstance(layer, DiskLayer):
        return None
    with layer._lock:  # noqa: SLF001
        fd = layer._dirfd(path[:-1]) if path else layer._root  # noqa: SLF001
        if fd is None:
            return None
        try:
            return os.stat(path[-1], dir_fd=fd, follow_symlinks=False) if path else os.fstat(fd)
        except OSError:
            return None


def _tone_of(where: str) -> str:
    if where.startswith("matches"):
        return "ok"
    if where.startswith("stale"):
        return "bad"
    if where.startswith("points to"):
        return "warning"
    return "info"


def layer_state(engine: Engine, res: Resolution, k: int, path: Path, node: Node | None) -> list[StateLine]:
    """The origin/index/impure lines of layer ``k``'s entry at ``path`` for ``res``."""
    if node is None:
        return []
    layer = engine.klayers[k] if k < len(engine.klayers) else None
    if not isinstance(layer, DiskLayer):
        return []  # a described or image layer: no handles to compare
    out: list[StateLine] = []
    raw = node.xattr(engine.prefix + b"origin")
    fh = decode_fh(raw) if raw is not None else None
    if fh is not None:
        out.append(_origin_line(engine, res, k, path, fh))
        if k == 0 and path == res.upper and engine.options.index:
            line = _index_line(engine, path, node, fh)
            if line is not None:
                out.append(line)
    if node.kind == "dir" and node.xattr(engine.prefix + b"impure") is not None:
        out.append(_impure_line(engine, layer, path))
    return out


def _origin_line(engine: Engine, res: Resolution, k: int, path: Path, fh) -> StateLine:
    if not fh.usable:
        return StateLine("warning", "origin: not a handle the kernel can use (ignored)")
    where = engine.origin_text(fh, path)
    if not where:
        return StateLine("info", "origin: not checked here (this filesystem gives no handles or UUID)")
    if where.startswith("stale") and k == 0 and path == res.upper:
        # the handle names nothing any more; is there a lower object at this path (re-created)?
        for j in range(1, engine.nlower + 1):
            if engine.klayers[j] is not None and engine.layer(j).node(path) is not None:
                rest = where[len("stale: "):] if where.startswith("stale: ") else where
                return StateLine("bad", f"origin: stale: the lower object changed: "
                                        f"{engine.label(j)}:{show_path(path)} is a new object "
                                        + ("(its inode number is no longer kept)" if res.kind != "dir"
                                           else "(the kernel merges it by path unless nfs_export=on)")
                                        + f"; {rest}")
    # a merged directory or a metacopy: the kernel finds the lower by path and verifies it
    if k == 0 and path == res.upper and res.lowers and where.startswith("matches"):
        lower = res.lowers[0]
        got = _handle_of(engine.klayers[lower.layer], lower.path)
        if got is not None and got != (fh.type, fh.fid):
            return StateLine("bad", f"origin: stale: the lower object changed (the handle {where}; "
                                    f"{engine.label(lower.layer)}:{show_path(lower.path)} is another "
                                    "object)")
    if engine.has_upper and where.startswith(f"an object on the filesystem of {engine.label(0)},"):
        return StateLine("warning", f"origin: {where}; the kernel looks origins up in the lower layers "
                                    "only: it ignores this one")
    return StateLine(_tone_of(where), f"origin: {where}")


def _index_line(engine: Engine, path: Path, node: Node, fh) -> StateLine | None:
    workdir = engine.stack.workdir
    if not workdir or not fh.usable:
        return None
    is_dir = node.kind == "dir"
    if is_dir and not engine.options.nfs_export:
        return None  # directories are indexed only with nfs_export=on
    name = fh.wire.hex()
    short = f"index/{name[:12]}…{name[-8:]}"
    index_dir = os.path.join(workdir, "index")
    try:
        dfd = os.open(index_dir, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return StateLine("warning", "index: no work/index directory (the next index=on mount makes one)")
    try:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError:
            if not is_dir and not engine.options.nfs_export:
                found = _origin(engine, path)
                if found is None:
                    return None  # the origin does not decode: nothing to index by
                if found[1].st_nlink <= 1:
                    return StateLine("info", "index: none (its lower has one link: index=on "
                                             "indexes copied-up hard links only)")
            if is_dir:
                return StateLine("warning", f"index: missing ({short}): nfs_export file handles of "
                                            "this directory do not decode")
            return StateLine("warning", f"index: missing ({short}): copied up without index=on, "
                                        "or the entry was removed; hard links to its lower are "
                                        "not kept together")
        if not is_dir and _origin(engine, path) is None:
            return StateLine("warning", f"index: {short} is there, but the origin no longer decodes "
                                        "in a lower layer: the kernel does not use it (this file's "
                                        "hard links come apart)")
        if _stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return StateLine("bad", f"index: stale ({short} is a whiteout: every link was "
                                    "removed); lookup fails with EIO")
        upper = engine.klayers[0]
        if is_dir:
            try:
                stored = decode_fh(_getxattr_at(dfd, name.encode(), engine.prefix + b"upper"))
            except OSError:
                return StateLine("bad", f"index: stale ({short} has no 'upper' handle)")
            if _stat.S_ISDIR(st.st_mode) and stored.usable \
                    and _handle_of(upper, path) == (stored.type, stored.fid):
                return StateLine("ok", f"index: present ({short}, its 'upper' names this directory)")
            return StateLine("bad", f"index: stale ({short} names another upper directory: "
                                    "lookup fails with EIO)")
        own = _lstat(upper, path)
        if own is not None and (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino):
            return StateLine("ok", f"index: present ({short}, the same inode: {st.st_nlink} links)")
        return StateLine("bad", f"index: stale ({short} is another inode than this file: the "
                                "kernel ignores it)")
    finally:
        os.close(dfd)


def _impure_line(engine: Engine, layer, path: Path) -> StateLine:
    try:
        children = layer.scan(path)
    except OSError:
        return StateLine("info", "impure: marked")
    needing = [n for n, c in children.items()
               if c.xattr(engine.prefix + b"origin") is not None or c.xattr(engine.prefix + b"redirect") is not None]
    if needing:
        first = safe(needing[0])
        more = f" and {len(needing) - 1} more" if len(needing) > 1 else ""
        return StateLine("ok", f"impure: marked, and needed ('{first}'{more} copied up or redirected: "
                               "readdir asks its origin for d_ino)")
    return StateLine("warning", "impure: marked, but no entry is copied up or redirected any more "
                                "(readdir looks every entry up for nothing; fsck.overlay clears it)")
