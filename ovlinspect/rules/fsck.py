"""A read-only ``fsck.overlay``: what it would repair in the layers, as findings with fixes.

Nothing is changed: each finding says what the repair is and what the kernel does meanwhile.

* ``fsck-orphan-whiteout``: a whiteout of the upper layer in a merged directory with nothing
  below it to hide
  (the lower file was removed since, or the whiteout was copied along): harmless to lookup and
  readdir, removed by ``fsck.overlay``.
* ``fsck-redirect-dangling``: an upper directory whose ``overlay.redirect`` names a directory
  no lower layer has any more: the directory shows only its upper entries (the renamed
  directory's lower content is gone from the merged tree).
* ``fsck-redirect-duplicate``: the redirect's origin is visible at its old name too (the
  whiteout the rename left there is gone): one lower directory is merged into two places.
* ``fsck-impure-missing``: an upper directory without ``overlay.impure`` that holds entries
  whose ``st_ino`` is not the upper inode's own (copy-ups keyed by their origin): readdir then
  reports the upper inode number as ``d_ino`` (``ovl_calc_d_ino``), which differs from
  ``st_ino`` (``find -inum``, ``ls -i`` versus ``stat``).  ``fsck-impure-stale``: marked impure
  with no such entry (readdir looks every entry up for nothing).
* ``fsck-origin-stale``: an upper file's ``overlay.origin`` names no object of a lower layer
  any more: the kernel ignores it (the file shows its own inode number, not the one it had).
* ``fsck-index-stale``: a non-directory index entry no upper file links to any more whose
  origin no longer decodes in a lower layer: the next ``index=on`` mount deletes it
  (``ovl_indexdir_cleanup`` / ``ovl_verify_index``: ESTALE).
"""

from __future__ import annotations

import os
import stat

from ..kernel.entry import Ref, show, show_path
from ..kernel.inode import _lstat, _origin, inode_of, xino_of
from ..model.layers import DiskLayer
from ..model.xattrs import NULL_UUID, decode_fh
from .catalogue import Finding

__all__ = ["Fsck"]


class Fsck:
    """Fed every resolution of a walk (:meth:`add`); :meth:`findings` at the end."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.found: list[Finding] = []
        self.x = xino_of(engine)
        #: upper directories seen: merged path -> (impure, children needing d_ino recalculated)
        self.upper_dirs: dict[tuple, list] = {}

    def _f(self, rule: str, path: tuple, message: str, layers: list[int]) -> None:
        self.found.append(Finding(rule, b"/" + b"/".join(path), message, layers))

    def add(self, res) -> None:
        if res.errno is not None:
            return
        e = self.engine
        try:
            if res.kind == "dir":
                self._whiteouts(res)
                self._redirect(res)
                if res.upper is not None and e.has_upper:
                    node = e.layer(0).node(res.upper)
                    impure = node is not None and e._x(node, b"impure") == b"y"  # noqa: SLF001
                    self.upper_dirs[res.path] = [impure, []]
            if res.upper is not None and res.path:
                self._child(res)
        except OSError:
            return

    # ------------------------------------------------------------------ whiteouts
    def _whiteouts(self, res) -> None:
        if not res.merge:
            return  # a whiteout in a directory that is not merged: phantom-whiteout says it
        e = self.engine
        if res.upper is None:
            return  # the upper layer's whiteouts only (fsck of what mounts wrote; cheap)
        refs = [Ref(0, res.upper)] + list(res.lowers)
        for i, ref in enumerate(refs[:1]):
            below = refs[i + 1:]
            for name, node in e.layer(ref.layer).scan(ref.path).items():
                if not e.is_whiteout(node):
                    continue
                if any(e.layer(r.layer).node(r.path + (name,)) is not None for r in below):
                    continue
                self._f("fsck-orphan-whiteout", res.path + (name,),
                        f"the whiteout {e.where(Ref(ref.layer, ref.path + (name,)))} hides nothing: "
                        "no layer merged below it holds that name (the lower entry was removed "
                        "since, or the whiteout was copied along); lookup and readdir are not "
                        "affected", [e.json_index(ref.layer)])

    # ------------------------------------------------------------------ redirects
    def _redirect(self, res) -> None:
        e = self.engine
        if res.upper is None or not res.path:
            return
        node = e.layer(0).node(res.upper)
        raw = e._x(node, b"redirect") if node is not None else None  # noqa: SLF001
        if raw is None:
            return
        if not res.lowers:
            self._f("fsck-redirect-dangling", res.path,
                    f"{show_path(res.path)} is redirected to '{show(raw)}', which no lower layer "
                    "holds any more: the directory shows only its upper entries (the renamed "
                    "directory's lower content is gone from the merged tree)", [0])
            return
        if raw.startswith(b"/"):
            target = tuple(c for c in raw.split(b"/") if c)
        else:
            target = res.path[:-1] + (raw,)
        if not target or target == res.path:
            return
        other = e.resolve(target)
        if other.errno is None and other.kind == "dir" and set(other.lowers) & set(res.lowers):
            self._f("fsck-redirect-duplicate", res.path,
                    f"{show_path(res.path)} is redirected from {show_path(target)}, which is "
                    f"still visible: the lower directory {e.where(res.lowers[0])} is merged into "
                    "both (the whiteout the rename left at the old name is gone); as both are "
                    "keyed by that lower directory, whichever is looked up second while the "
                    "other is cached fails with ESTALE",
                    [0, e.json_index(res.lowers[0].layer)])

    # ------------------------------------------------------------------ impure, origin
    def _child(self, res) -> None:
        e = self.engine
        parent = self.upper_dirs.get(res.path[:-1])
        node = e.layer(0).node(res.upper)
        if node is None:
            return
        if res.kind != "dir" and not res.lowers and e._x(node, b"origin") is not None:  # noqa: SLF001
            fh = decode_fh(e._x(node, b"origin"))  # noqa: SLF001
            info = inode_of(e, res)
            decodes = info.origin_decodes if info is not None else None
            if decodes is None:
                decodes = _origin(e, res.upper) is not None
            if fh.usable and not decodes and self._origin_checkable(fh):
                self._f("fsck-origin-stale", res.path,
                        f"the overlay.origin of {e.where(Ref(0, res.upper))} names no object of a "
                        "lower layer any more: the kernel ignores it, so the file shows the upper "
                        "inode's own number (not the one it had before)", [0])
        if parent is None or self.x is None or not self.x.same_fs:
            return
        info = inode_of(e, res)
        st = _lstat(e.layer(0), res.upper)
        if info is None or st is None or info.st_ino is None:
            return
        if info.st_ino != st.st_ino or (res.kind == "dir" and e._x(node, b"redirect") is not None):  # noqa: SLF001
            parent[1].append((res.path[-1], st.st_ino, info.st_ino))

    def _origin_checkable(self, fh) -> bool:
        """Whether a failed decode means stale (not: no CAP_DAC_READ_SEARCH, unreadable uuid)."""
        from ..kernel.origin import layer_ids

        if not hasattr(self, "_ids"):
            self._ids = layer_ids(self.engine)[1:self.engine.nlower + 1]
        ids = self._ids
        return all(i is not None and i.uuid is not None for i in ids) and fh.uuid != NULL_UUID \
            or all(i is not None for i in ids) and fh.uuid == NULL_UUID

    def _impure(self) -> None:
        e = self.engine
        for path, (impure, needing) in self.upper_dirs.items():
            up = e.layer(0)
            if needing and not impure:
                name, real, ino = needing[0]
                self._f("fsck-impure-missing", path,
                        f"the upper directory {show_path(path) or '/'} is not marked impure but "
                        f"holds {len(needing)} entr{'y' if len(needing) == 1 else 'ies'} whose "
                        f"st_ino is not the upper inode's own: readdir reports d_ino {real} for "
                        f"'{show(name)}', lstat st_ino {ino}", [0])
            elif impure and not needing and isinstance(up, DiskLayer):
                self._f("fsck-impure-stale", path,
                        f"the upper directory {show_path(path) or '/'} is marked impure but holds "
                        "no copied-up or redirected entry: readdir looks every entry up for "
                        "nothing", [0])

    # ------------------------------------------------------------------ index
    def _index(self) -> None:
        e = self.engine
        st = e.stack
        if not (e.options.index and st.workdir and e.has_upper):
            return
        from ..kernel.origin import MAX_INDEX_ENTRIES, _open_handle, layer_ids
        from ..kernel.workdir import _valid_index_name

        index = os.path.join(st.workdir, "index")
        try:
            names = []
            with os.scandir(index) as it:
                for entry in it:
                    names.append(os.fsencode(entry.name))
                    if len(names) >= MAX_INDEX_ENTRIES:
                        break
        except OSError:
            return
        ids = layer_ids(e)[1:e.nlower + 1]
        if any(i is None or i.uuid is None for i in ids):
            return  # the uuid cannot be read: a failed decode would prove nothing
        for name in sorted(names):
            if name.startswith(b"#") or not _valid_index_name(name):
                continue  # leftovers and invalid names: mount_state reports them
            try:
                st = os.stat(os.path.join(index, os.fsdecode(name)), follow_symlinks=False)
            except OSError:
                continue
            # ovl_verify_index decodes the origin only of a non-directory entry that no upper
            # file links to any more (nlink 1); others are kept whatever their origin
            if stat.S_ISDIR(st.st_mode) or st.st_nlink != 1 or (
                    stat.S_ISCHR(st.st_mode) and st.st_rdev == 0):
                continue
            fh = decode_fh(bytes.fromhex(name[: len(name) // 2 * 2].decode("ascii")))
            if not fh.usable:
                continue
            found = False
            for k, lid in enumerate(ids, 1):
                if fh.uuid not in (lid.uuid, NULL_UUID):
                    continue
                fd = _open_handle(e.layer(k)._root, fh.type, fh.fid)  # noqa: SLF001
                if fd is not None:
                    os.close(fd)
                    found = True
                    break
            if not found:
                self._f("fsck-index-stale", (),
                        f"index/{show(name)} is linked by no upper file any more and names an "
                        "origin that no lower layer holds (the lower file was deleted or the "
                        "layer replaced): the next index=on mount logs 'overlayfs: failed to "
                        f"verify index (index/{show(name)}, ftype={stat.S_IFMT(st.st_mode):x}, "
                        "err=-116)' and deletes it (a write to the work directory)", [0])

    def findings(self) -> list[Finding]:
        self._impure()
        self._index()
        return self.found
