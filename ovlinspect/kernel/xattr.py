"""How the kernel reads the overlay xattrs of one layer entry (``util.c``, ``namei.c``).

Whiteouts (a 0/0 device, or an empty regular file with ``overlay.whiteout`` where the kernel
has xattr whiteouts), the one-byte ``overlay.opaque`` value (``y``, or ``x`` where the kernel
knows it), a redirect as ``ovl_check_redirect`` accepts it, and the size of a metacopy xattr.
"""

from __future__ import annotations

from ..model.layers import Node, Path
from ..model.xattrs import METACOPY_MIN
from .entry import LookupFailed, Ref, show


class XattrRules:
    """Mixin of :class:`~.overlay.Overlay`: the overlay xattrs as this mount reads them."""

    def _x(self, node: Node, suffix: bytes) -> bytes | None:
        return node.xattr(self.prefix + suffix)

    def is_whiteout(self, node: Node) -> bool:
        if node.is_whiteout_dev:
            return True
        return (self.profile.xattr_whiteouts and node.is_reg and node.size == 0
                and self._x(node, b"whiteout") is not None)

    def opaque_value(self, node: Node) -> bytes | None:
        v = self._x(node, b"opaque")
        # the kernel reads one byte; a longer value fails with ERANGE and counts as none
        if v is None or len(v) != 1 or (v == b"x" and not self.profile.opaque_x):
            return None
        return v

    def _metacopy_size(self, li: int, p: Path, node: Node) -> int:
        if not node.is_reg:
            return 0
        v = self._x(node, b"metacopy")
        if v is None:
            return 0
        if len(v) == 0:
            return METACOPY_MIN
        if len(v) < METACOPY_MIN:
            raise LookupFailed(
                "EIO", f"overlayfs: metacopy file '{show(p[-1])}' has too small xattr",
                f"the metacopy xattr on {self.where(Ref(li, p))} is {len(v)} bytes (at least 4 needed)",
                "metacopy-invalid", [li], cause=Ref(li, p))
        return len(v)

