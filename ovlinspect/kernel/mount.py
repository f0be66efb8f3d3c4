"""The mounted stack: its layers as the kernel numbers them, its options, its predicates.

Like the kernel's ``struct ovl_fs`` and the ``ovl_redirect_follow()``-style helpers of
``util.c``: what a lookup asks about the mount (how layers are numbered and labelled, which
options hold, what the upper/work/index state made the kernel do at mount), never a kernel
version number (those live in :mod:`.profile`).

Layers are numbered as the kernel numbers them: 0 is the upper slot (even without an upper
layer), 1..n the regular lower layers, then the data-only layers.  :meth:`json_index` turns
that into the index of the JSON contract (which lists the upper only when present).
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict

from ..model.layers import Layer, Node, Path
from ..model.stack import Stack
from .entry import Ref, Resolution, show, show_path
from .params import ModuleDefaults, Options, effective_options
from .profile import KernelProfile, profile_for_release
from .trace import NULL_TRACE, TRACE, Tracer
from .origin import IndexLookup, mount_state, MountState, where_origin


class MountedStack:
    """A :class:`Stack` as mounted: layers, options and the kernel profile that applies."""

    def __init__(self, stack: Stack, options: Options | None = None, kernel: str | None = None,
                 profile: KernelProfile | None = None):
        self.stack = stack
        self.kernel = kernel or os.uname().release
        #: the overlayfs behaviours predicted: those of ``kernel`` unless another is asked for
        self.profile = profile or stack.profile or profile_for_release(self.kernel)
        self.klayers: list[Layer | None] = [stack.upper] + list(stack.lowers) + list(stack.data)
        self.nlower = len(stack.lowers)
        self.ndata = len(stack.data)
        if options is None and stack.effective is not None:
            options = stack.effective  # type: ignore[assignment]
        if options is None:
            defaults = (ModuleDefaults.from_mapping(stack.params) if stack.params is not None
                        else ModuleDefaults.read())
            options = effective_options(stack.options, has_upper=stack.upper is not None,
                                        n_lower=self.nlower, n_data=self.ndata, defaults=defaults,
                                        profile=self.profile)
        if stack.refusal is not None and not options.mount_errno:
            options = dataclasses.replace(options, mount_errno=stack.refusal[0],
                                          mount_log=tuple(options.mount_log) + (stack.refusal[1],))
        self.options = options
        self.prefix: bytes = options.xattr_prefix
        self.other_prefix = b"user.overlay." if self.prefix == b"trusted.overlay." else b"trusted.overlay."
        # 6.16 reads metacopy and redirect xattrs in every regular layer when data-only layers
        # exist, even with redirects not followed
        self.check_redirect = options.redirect_follow or (
            self.ndata > 0 and self.profile.lower_data_relaxed)
        self.root_lowers: list[Ref] = [Ref(i, ()) for i in range(1, self.nlower + 1)]
        self._cache: OrderedDict[Path, Resolution] = OrderedDict()
        #: set while resolving the other path of an inode alias (no alias check in there)
        self._alias_guard = False
        #: build the step-by-step trace (off while walking a whole stack for check)
        self.tracer: Tracer = TRACE
        self._labels = [self._make_label(k) for k in range(len(self.klayers))]
        #: what the upper/work/index state makes the kernel do at mount (kernel/origin.py)
        self.mount_state = self._mount_state()
        if self.mount_state.refusal is not None and not self.options.mount_errno:
            errno_, log = self.mount_state.refusal
            self.options = dataclasses.replace(
                self.options, mount_errno=errno_, mount_log=tuple(self.options.mount_log) + log)
        if self.mount_state.fallback or self.mount_state.log:
            self.options = dataclasses.replace(
                self.options, **self.mount_state.fallback,  # type: ignore[arg-type]
                mount_log=tuple(self.options.mount_log) + tuple(self.mount_state.log))
        self._index = self._index_lookup()
        self._root = self._make_root()

    def _mount_state(self):

        if self.options.mount_errno:
            return MountState()
        try:
            return mount_state(self)
        except OSError as e:
            state = MountState()
            state.unchecked.append(f"the work or index directory could not be read: {e.strerror}")
            return state

    def origin_text(self, fh, path: Path | None = None) -> str:
        """Where an origin file handle points in this stack (see kernel/origin.py); ``path``:
        the name to prefer for an inode with several (hard links)."""

        try:
            return where_origin(self, fh, path)
        except OSError:
            return ""

    def _index_lookup(self):

        try:
            return IndexLookup.for_engine(self)
        except OSError:
            return None

    @property
    def has_upper(self) -> bool:
        return self.stack.upper is not None

    def json_index(self, klayer: int) -> int:
        return klayer if self.has_upper else klayer - 1

    def kernel_index(self, json_index: int) -> int:
        return json_index if self.has_upper else json_index + 1

    def role(self, klayer: int) -> str:
        if klayer == 0:
            return "upper"
        return "lower" if klayer <= self.nlower else "data"

    def layer(self, klayer: int) -> Layer:
        layer = self.klayers[klayer]
        assert layer is not None
        return layer

    def label(self, klayer: int) -> str:
        return self._labels[klayer]

    def _make_label(self, klayer: int) -> str:
        layer = self.klayers[klayer]
        name = show(layer.label.encode("utf-8", "surrogateescape")) if layer is not None and layer.label else ""
        return f"{self.role(klayer)} {self.json_index(klayer)}" + (f" ({name})" if name else "")

    def where(self, ref: Ref) -> str:
        return f"{self.label(ref.layer)}:{show_path(ref.path)}"

    @property
    def mount_errno(self) -> str | None:
        return self.options.mount_errno

    @property
    def same_fs(self) -> bool:
        devs = {getattr(l, "dev", None) for l in self.klayers if l is not None}
        devs.discard(None)
        return len(devs) <= 1

    def _make_root(self) -> Resolution:
        res = Resolution(path=(), kind="dir", merge=True)
        res.upper = () if self.has_upper else None
        res.lowers = self.root_lowers
        top = Ref(0, ()) if self.has_upper else (Ref(1, ()) if self.nlower else None)
        if top is None:
            res.errno = "EINVAL"
            return res
        node = self.layer(top.layer).node(())
        self._fill_attrs(res, node)
        res.metadata = top
        res.inode_keys = {}
        self.tracer.to(res).append(f"root: merged directory of {self._stack_text(res)}")
        # opaque=x on a lower root (not the lowest) enables xattr whiteouts there
        for ref in self.root_lowers[:-1]:
            n = self.layer(ref.layer).node(())
            if n is not None and self.opaque_value(n) == b"x":
                res.xwhiteouts = True
                res.x_layers = (res.x_layers or set()) | {ref.layer}
        res.x_seen = frozenset(res.x_layers or ())
        return res

    def _stack_text(self, res: Resolution) -> str:
        parts = []
        if res.upper is not None:
            parts.append(self.where(Ref(0, res.upper)))
        parts += [self.where(r) for r in res.lowers]
        return ", ".join(parts) if parts else "nothing"

    @staticmethod
    def _fill_attrs(res: Resolution, node: Node | None) -> None:
        if node is None:
            return
        res.kind = node.kind
        res.size = node.size
        res.mode = node.mode
        res.uid = node.uid
        res.gid = node.gid
        res.target = node.target

    def clone(self, tracing: bool | None = None):
        """The same mount, with fresh caches (for a worker thread), tracing or not."""
        other = type(self)(self.stack, options=self.options, kernel=self.kernel, profile=self.profile)
        other.tracer = self.tracer if tracing is None else (TRACE if tracing else NULL_TRACE)
        return other
