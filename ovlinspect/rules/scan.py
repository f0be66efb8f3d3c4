"""``check`` as its own walk: every path of the merged tree, with exact fast paths.

The general walk (:meth:`Engine.walk`) builds a full lookup result for every name.  Most
names of a real stack need none: a plain entry present in the first layer that holds it (a
container image's files), or a composefs metacopy whose absolute redirect no regular layer
below can intercept and whose data is where it should be.  For those this walk proves, from
the layer entries alone, that the general lookup would end without a finding, and only
counts them; any other name (a whiteout, an xattr anywhere it is not expected, a missing or
differently sized data file, a directory...) goes to the engine's own lookup of that name
in its parent (``Lookup._lookup``, as :meth:`Engine.walk` calls it), so the findings are the engine's, word for word, in the same
order.  ``tests/test_scan.py`` proves the output byte-identical to the general walk on
random stacks and on stacks with every kind of problem.

Each fast path stops at the first condition it cannot prove; the conditions follow
``Lookup._lookup_layers``/``_single``/``_check_redirect`` (kernel/lookup.py) (``fs/overlayfs/namei.c``):

* **plain**: the first layer of the parent's stack holding the name is a lower layer (an
  upper entry's inode number and fsck findings need its resolution) and holds a
  non-directory that is not a 0/0 whiteout and carries no overlay xattr at all: ``ovl_lookup_single`` stops
  there (no metacopy), nothing below is looked at, no redirect, no alias (a non-directory
  found in one layer), no namespace finding;
* **composefs metacopy**: that first layer is a regular lower layer (not the upper), the entry
  a regular file whose only overlay xattrs are this mount's ``metacopy`` (valid length) and an
  absolute, valid ``redirect`` (plus escaped ``trusted.overlay.overlay.*`` ones, meant for a
  nested overlay); the stack has data-only layers, metacopy and redirects are followed; no
  regular lower layer below holds the redirect's first component (so the walk of the
  redirect finds nothing there and the data lookup is deferred to the data-only layers); the
  data-only lookup (:meth:`Engine.data_lookup`) finds a regular file of the same size; and
  verity, if on, is satisfied (no digest needed, or the digest matches).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterator

from ..kernel.entry import NAME_MAX, Ref, Resolution
from ..model.layers import Node, exclusive_reads
from ..model.xattrs import METACOPY_MAX, METACOPY_MIN, decode_metacopy
from .catalogue import Finding
from .engine import Engine

_ESCAPED = b"trusted.overlay.overlay."


class _Fast:
    """What the fast paths need to know about the stack, computed once."""

    def __init__(self, engine: Engine):
        e = engine
        self.engine = e
        opts = e.options
        #: index=on with an upper: the lookup consults the index (kernel/origin.py)
        self.index = bool(opts.index and e.has_upper and e.stack.workdir)
        self.prefix = e.prefix
        self.metacopy_name = e.prefix + b"metacopy"
        self.redirect_name = e.prefix + b"redirect"
        self.composefs = (e.ndata > 0 and bool(opts.metacopy) and bool(opts.redirect_follow)
                          and e.check_redirect and not self.index)
        self.verity = opts.verity
        self.nlower = e.nlower
        self.regular = [e.layer(li) for li in range(1, e.nlower + 1)]  # kernel layer li at li-1
        self.data = [e.layer(li) for li in range(e.nlower + 1, e.nlower + e.ndata + 1)]
        #: (layer, a redirect's first name): whether a regular lower layer from that layer down
        #: holds the name (an object store has 256 of them: each asked once)
        self._below: dict[tuple[int, bytes], bool] = {}

    # ------------------------------------------------------------------ the fast paths
    def clean(self, scans: list[tuple[Ref, dict[bytes, Node]]], name: bytes) -> bool:
        """Whether the general lookup of ``name`` in this directory ends without a finding,
        as a non-directory (proved from the layer entries; False: not proved)."""
        if len(name) > NAME_MAX or name in (b"", b".", b".."):
            return False
        for k, (ref, scan) in enumerate(scans):
            node = scan.get(name)
            if node is None:
                continue
            kind = node.kind
            if kind == "dir" or (kind == "chardev" and node.rdev == (0, 0)):  # a whiteout
                return False
            if not node.xattrs:
                # not in the upper layer: an upper entry's inode number and its fsck are judged
                # on its resolution (kernel/inode.py, rules/fsck.py)
                return ref.layer != 0 and not self.index
            return self._metacopy(scans, k, ref, node)
        return False

    def _metacopy(self, scans: list, k: int, ref: Ref, node: Node) -> bool:
        if not self.composefs or ref.layer == 0 or not node.is_reg:
            return False
        mc = red = None
        for key, value in node.xattrs:
            if key == self.metacopy_name:
                mc = value
            elif key == self.redirect_name:
                red = value
            elif not key.startswith(_ESCAPED):
                return False
        if mc is None or red is None or (0 < len(mc) < METACOPY_MIN):
            return False
        # absolute, no empty component and none starting with a dot (so no "." or ".."):
        # stricter than the kernel, which is fine for a fast path
        if (red[:1] != b"/" or red[-1:] == b"/" or b"//" in red or b"/." in red
                or b"\0" in red):
            return False
        comps = red.split(b"/")
        # the redirect is walked from the root of every regular lower layer below this one
        key = (ref.layer, comps[1])
        held = self._below.get(key)
        if held is None:
            first = (comps[1],)
            held = self._below[key] = any(layer.node(first) is not None
                                          for layer in self.regular[ref.layer:])
        if held:
            return False
        path = tuple(comps[1:])
        if self.verity == "off":
            # only the data file's type and size matter: no node is made for it (this
            # runs once per file of a composefs image)
            for layer in self.data:
                size = layer.file_size(path)
                if size is not None:
                    return size == node.size
            return False
        dnode = self._data(path)
        if dnode is None or dnode.size != node.size:
            return False
        return self._verity_ok(mc, dnode)

    def _data(self, path: tuple) -> Node | None:
        """The data file ``DataLookup.data_lookup`` finds for a redirect without ``.`` or
        ``..``: in the first data-only layer where every component but the last is a
        directory and the last a regular file (anything else fails in that layer, and the
        next is tried).  ``Layer.node`` answers None when a parent is not a directory (a
        symlink included), so the final component's node says it all."""
        for layer in self.data:
            n = layer.node(path)
            if n is not None and n.kind == "file":
                return n
        return None

    def _verity_ok(self, mc: bytes, dnode: Node) -> bool:
        """Whether ``Verity._verity`` (kernel/verity.py) passes without a finding."""
        if self.verity == "off":
            return True
        require = self.verity == "require"
        if max(len(mc), METACOPY_MIN) <= METACOPY_MIN:
            return not require
        if len(mc) > METACOPY_MAX:
            return False
        header = decode_metacopy(mc)
        if header.version != 0 or header.length != header.size:
            return False
        if header.algo == 0:
            return not require
        return dnode.verity is not None and dnode.verity == (header.algo, header.digest)


def check(engine: Engine, progress: Callable[[int], None] | None = None,
          cancel: Callable[[], bool] | None = None) -> list[Finding]:
    """The findings of :meth:`Engine.check`, in the same order, the same words."""
    return [f for _, f in check_findings(engine, progress, cancel)]


def check_findings(engine: Engine, progress: Callable[[int], None] | None = None,
                   cancel: Callable[[], bool] | None = None
                   ) -> Iterator[tuple[Resolution | None, Finding]]:
    """:meth:`Engine.check_findings`: every finding, in order, with the resolution of its path
    (None for the stack's own findings and those about several paths), over the lean walk."""
    with exclusive_reads():
        yield from engine.check_findings(progress, cancel,
                                         walk=lambda p, c: _walk(engine, p, c))


def _walk(engine: Engine, progress, cancel) -> Iterator[Resolution]:
    """:meth:`Engine.walk` without the names the fast paths prove clean (no finding, no upper
    entry: nothing :class:`Collisions` or :class:`Fsck` look at either)."""
    # a clone without a trace, with its own caches, as Engine.walk uses
    e = engine.clone(tracing=False)
    fast = _Fast(e)

    def proved_clean(dirres: Resolution) -> Callable[[bytes], bool]:
        # this directory's copies, top first: the layers the lookup of a child consults (read
        # before its listing, which then reuses the layers' scans)
        refs = ([Ref(0, dirres.upper)] if dirres.upper is not None else []) + list(dirres.lowers)
        return partial(fast.clean, [(ref, e.layer(ref.layer).scan(ref.path)) for ref in refs])

    return e.walk(progress, cancel, skip=proved_clean)
