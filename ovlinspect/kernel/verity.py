"""fs-verity validation of metacopy data at open (``ovl_maybe_validate_verity``, ``util.c``)."""

from __future__ import annotations

from ..model.xattrs import METACOPY_MAX, METACOPY_MIN, decode_metacopy
from ..rules.catalogue import Finding
from .entry import Resolution, show


class Verity:
    """Mixin of :class:`~.overlay.Overlay`: ``verity=on|require``."""

    def _verity(self, res: Resolution) -> None:
        """fs-verity validation at open (``ovl_maybe_validate_verity``)."""
        meta = res.metadata
        assert meta is not None
        mnode = self.layer(meta.layer).node(meta.path)
        name = show(res.path[-1]) if res.path else "/"
        require = self.options.verity == "require"

        def fail(errno: str, log: str, why: str, rule: str = "verity-failure") -> None:
            res.open_errno = errno
            res.open_log.append(log)
            res.data = None
            self.tracer.to(res).append(f"=> open fails: {why}: {errno}")
            res.findings.append(Finding(rule, b"/" + b"/".join(res.path), why,
                                        [self.json_index(meta.layer)]))

        if res.metacopy_size <= METACOPY_MIN:
            if require:
                fail("EIO", f"overlayfs: metacopy file '{name}' has no digest specified",
                     "verity=require but the metacopy xattr holds no digest")
            return
        value = self._x(mnode, b"metacopy") if mnode else None
        if value is None:
            return
        mname = show(meta.path[-1]) if meta.path else "/"
        if len(value) > METACOPY_MAX:
            fail("ERANGE", "overlayfs: failed to get metacopy (-34)",
                 f"the metacopy xattr is {len(value)} bytes (at most 68)", "metacopy-invalid")
            return
        header = decode_metacopy(value)
        if header.version != 0:
            fail("EIO", f"overlayfs: metacopy file '{mname}' has unsupported version",
                 f"metacopy header version {header.version} (only 0 is known)", "metacopy-invalid")
            return
        if header.length != header.size:
            fail("EIO", f"overlayfs: metacopy file '{mname}' has invalid xattr size",
                 f"metacopy header says {header.length} bytes, the xattr has {header.size}",
                 "metacopy-invalid")
            return
        if header.algo == 0:
            if require:
                fail("EIO", f"overlayfs: metacopy file '{mname}' has no digest specified",
                     "verity=require but the metacopy header names no digest algorithm")
            return
        data = res.data
        if data is None:
            return
        dnode = self.layer(data.layer).node(data.path)
        dname = show(data.path[-1]) if data.path else "/"
        if dnode is None or dnode.verity is None:
            fail("EIO", f"overlayfs: lower file '{dname}' has no fs-verity digest",
                 f"{self.where(data)} has no fs-verity digest")
            return
        got_algo, got = dnode.verity
        if got_algo != header.algo or got != header.digest:
            fail("EIO", f"overlayfs: lower file '{dname}' has the wrong fs-verity digest",
                 f"{self.where(data)} has a different fs-verity digest than the metacopy names")

