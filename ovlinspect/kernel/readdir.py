"""readdir of a merged directory (``fs/overlayfs/readdir.c``).

The merge of the layers' listings in the kernel's order, whiteouts hidden, the entries looked
up as they are returned (impure directories, xattr whiteouts) and the errors that makes.
"""

from __future__ import annotations

import errno as _errno

from ..model.layers import Node
from .entry import Ref, Resolution, show


class Readdir:
    """Mixin of :class:`~.overlay.Overlay`: directory listings."""

    def entries(self, res: Resolution) -> list[bytes]:
        """The names ``readdir`` lists for a directory (sorted), phantoms included."""
        if res._entries is not None:
            return res._entries
        names: list[bytes] = []
        hidden: dict[bytes, str] = {}
        if not res.is_dir:
            res._entries = []
            return []
        res.unlisted_failures = None
        impure = self._impure(res)
        if not res.merge:
            real = Ref(0, res.upper) if res.upper is not None else res.lowers[0]
            names = sorted(self.layer(real.layer).listdir(real.path))
            if impure:
                # d_ino of an impure upper directory is recomputed by looking every entry up;
                # an entry whose lookup fails makes readdir itself fail
                for name in names:
                    child = self.resolve(res.path + (name,))
                    if child.errno not in (None, "ENOENT"):
                        res.readdir_errno = child.errno
                        res.readdir_log.append(self._stale_log(name, child.errno))
                        res.unlisted_failures = names
                        names = []
                        break
        else:
            names = self._merged_entries(res, impure, hidden)
        res._entries = names
        res._hidden = hidden
        return names

    def _merged_entries(self, res: Resolution, impure: bool, hidden: dict[bytes, str]) -> list[bytes]:
        """A merged directory's listing, as ``ovl_iterate`` produces it (``readdir.c``).

        The merged list (``ovl_dir_read_merged``) holds each name once, from the highest layer
        holding it, in the kernel's order: every name of the lowest layer first, in that
        layer's order (``.`` and ``..`` first; names seen above are moved there), then the
        other names of the top layer, then those of the layers in between.  Some
        entries are looked up as they are returned: upper entries of an impure directory
        (d_ino), regular files of a layer with xattr whiteouts.  A negative lookup hides the
        entry; a failing one hides it too, but ends that ``getdents`` call with the error,
        which reaches the program only when the call returned nothing yet: when it is the
        first entry, or right after another failing entry (the next call starts there).
        """
        reads: list[Ref] = ([Ref(0, res.upper)] if res.upper is not None else []) + list(res.lowers)
        dots = (b".", b"..")
        # name -> (layer entry it comes from, its node, checked for xattr whiteouts); the dots
        # are looked up without fail and always returned
        rest: dict[bytes, tuple[Ref, Node, bool] | None] = {}
        front: dict[bytes, tuple[Ref, Node, bool] | None] = {}
        for k, ref in enumerate(reads):
            in_x = res.xwhiteouts and ref.layer != 0 and self._layer_xwhiteouts(res, ref)
            scan = self.layer(ref.layer).scan(ref.path)
            if k and k == len(reads) - 1:
                # ovl_fill_lowest: the lowest layer's names go in front, in its order, the
                # names already seen above moved there (the dots too)
                for name in dots + tuple(scan):
                    if name in rest:
                        front[name] = rest.pop(name)
                    elif name not in front:
                        front[name] = (ref, scan[name], in_x)
                continue
            if k == 0:
                rest.update(dict.fromkeys(dots))
            for name, node in scan.items():
                if name not in rest:
                    rest[name] = (ref, node, in_x)
        seen = (set(front) | set(rest)) - set(dots)
        names: list[bytes] = []
        returned = 0  # entries returned by the current getdents call
        for name, item in list(front.items()) + list(rest.items()):
            if item is None:
                returned += 1
                continue
            ref, node, in_x = item
            if node.is_whiteout_dev:
                hidden[name] = f"0/0 whiteout in {self.where(Ref(ref.layer, ref.path + (name,)))}"
                continue
            if (in_x and node.is_reg) or (impure and ref.layer == 0):
                child = self.resolve(res.path + (name,))
                if child.errno is not None:
                    why = ("xattr-whiteout check in " + self.label(ref.layer) if in_x and node.is_reg
                           else "impure upper directory: d_ino recomputed by a lookup")
                    hidden[name] = f"{why}: lookup gives {child.errno}"
                    if child.errno != "ENOENT":
                        res.readdir_log.append(self._stale_log(name, child.errno))
                        res.unlisted_failures = (res.unlisted_failures or []) + [name]
                        if not returned:
                            res.readdir_errno = child.errno
                            res.unlisted_failures = [n for n in seen if n not in hidden or
                                                      n in res.unlisted_failures]
                            return []
                        returned = 0  # the next getdents call starts right after it
                    continue
            names.append(name)
            returned += 1
        names.sort()
        return names

    def _impure(self, res: Resolution) -> bool:
        """An upper directory marked impure, on a stack whose layers share one filesystem."""
        if res.upper is None or not self.same_fs:
            return False
        n = self.layer(0).node(res.upper)
        return n is not None and self._x(n, b"impure") == b"y"

    @staticmethod
    def _stale_log(name: bytes, errno: str) -> str:
        code = getattr(_errno, errno, 0)
        return f"overlayfs: failed to look up ({show(name)}) for ino (-{code})"

    def hidden_entries(self, res: Resolution) -> dict[bytes, str]:
        self.entries(res)
        return res._hidden or {}

    def _layer_xwhiteouts(self, res: Resolution, ref: Ref) -> bool:
        """Whether readdir checks this layer's regular files for xattr whiteouts.

        The kernel flags a layer when a lookup reads opaque=x on one of its directories (never
        on the bottom layer, where opaque is not read), and at mount for a lower root with
        opaque=x (not the lowest).  This directory's own lookup, its ancestors' lookups and the
        roots are what a fresh mount is sure to have seen.
        """
        if res.x_layers and ref.layer in res.x_layers:
            return True
        return ref.layer in res.x_seen  # the ancestors' lookups, and the roots at mount

