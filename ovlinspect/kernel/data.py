"""The lazy lookup of data in the data-only layers, at open (``ovl_lazy_lowerdata``, 6.5+).

A metacopy whose absolute redirect found no data in the regular layers defers the data
lookup to open: the redirect is walked from each data-only layer's root, no symlinks, and
must end on a regular file.
"""

from __future__ import annotations

import errno as _errno

from ..rules.catalogue import Finding
from .entry import Ref, Resolution, pd2, show, show_path


class DataLookup:
    """Mixin of :class:`~.overlay.Overlay`: data-only layers."""

    def data_lookup(self, redirect: bytes) -> tuple[Ref | None, str, list[str]]:
        """The lazy lookup in the data-only layers: (found, errno if not, trace)."""
        trace: list[str] = []
        err = "ENOENT"
        for li in range(self.nlower + 1, self.nlower + self.ndata + 1):
            ref, err, why = self._data_walk(li, redirect)
            if self.tracer.on:
                trace.append(f"{self.label(li)}: {why}")
            if ref is not None:
                return ref, "", trace
        return None, err, trace

    def _data_walk(self, li: int, redirect: bytes) -> tuple[Ref | None, str, str]:
        layer = self.layer(li)
        cur: list[bytes] = []
        comps = [c for c in redirect.split(b"/") if c]
        for k, comp in enumerate(comps):
            final = k == len(comps) - 1
            if comp == b".":
                continue
            if comp == b"..":
                if not cur:
                    return None, "EXDEV", "'..' would leave the layer root: EXDEV"
                cur.pop()
                continue
            n = layer.node(tuple(cur) + (comp,))
            here = show_path(tuple(cur) + (comp,))
            if n is None:
                return None, "ENOENT", f"{here} absent: ENOENT"
            if final:
                if n.is_reg:
                    return Ref(li, tuple(cur) + (comp,)), "", f"{here}: regular file, {n.size} bytes"
                return None, "ENOENT", f"{here} is a {n.kind}, not a regular file: ENOENT"
            if n.kind == "symlink":
                return None, "ELOOP", f"{here} is a symlink (no symlinks allowed): ELOOP"
            if not n.is_dir:
                return None, "ENOTDIR", f"{here} is a {n.kind}: ENOTDIR"
            cur.append(comp)
        n = layer.node(tuple(cur))
        if n is not None and n.is_reg:
            return Ref(li, tuple(cur)), "", f"{show_path(tuple(cur))}: regular file"
        return None, "ENOENT", f"{show_path(tuple(cur))} is not a regular file: ENOENT"

    def _lazy_data(self, res: Resolution, redirect: bytes) -> None:
        ref, err, trace = self.data_lookup(redirect)
        self.tracer.to(res).append(f"at open: lazy lookup of '{show(redirect)}' in the data-only layers")
        self.tracer.to(res).extend("  " + x for x in trace)
        if ref is None:
            res.open_errno = err
            code = getattr(_errno, err, 0)
            res.open_log.append(f"overlayfs: lazy lowerdata lookup failed ({pd2(res.path)}, err=-{code})")
            self.tracer.to(res).append(f"=> open fails: {err} (lstat still succeeds)")
            res.findings.append(Finding(
                "lowerdata-missing", b"/" + b"/".join(res.path),
                f"open fails with {err}: '{show(redirect)}' is not a regular file in any data-only "
                "layer", [self.json_index(r.layer) for r in res.lowers[:1]]))
        else:
            res.data = ref
            self.tracer.to(res).append(f"data: {self.where(ref)}")

