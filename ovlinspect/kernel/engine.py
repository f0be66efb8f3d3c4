"""The resolution engine: what the kernel does with each path of an overlay stack, and why.

This follows the lookup of Linux 6.16+ (``fs/overlayfs/namei.c``), as written down in
``overlayfs-semantics.md``: per-layer lookup of one component, the walk of absolute
redirects from the layer root, the loop over the lower stack, the deferred (lazy) lookup of
data in data-only layers at open, and the readdir merge.  Every step is recorded in a trace,
so the prediction can be explained.

Layers are numbered as the kernel numbers them: 0 is the upper slot (even without an upper
layer), 1..n the regular lower layers, then the data-only layers.  :meth:`Engine.json_index`
turns that into the index of the JSON contract (which lists the upper only when present).
"""

from __future__ import annotations

import dataclasses
import errno as _errno
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .bugs import bug_findings
from .profile import KernelProfile, profile_for_release
from ..model.layers import Layer, Node, Path, split_path
from .params import ModuleDefaults, Options, effective_options
from ..rules.catalogue import Finding
from ..model.stack import Stack
from ..model.xattrs import METACOPY_MAX, METACOPY_MIN, decode_metacopy, safe

MAX_SYMLINK_HOPS = 40
#: the longest name the layers take (the overlay refuses longer ones with ENAMETOOLONG)
NAME_MAX = 255


def pd2(path: Path) -> str:
    """The kernel's ``%pd2``: the last two components, ``/foo`` right under the root."""
    if not path:
        return "/"
    parent = path[-2] if len(path) > 1 else b"/"
    # the kernel prints the raw bytes: kept (surrogate-escaped) for --json, escaped by show()
    # on every text line
    if parent == b"/":
        return "/" + path[-1].decode("utf-8", "surrogateescape")
    return (parent + b"/" + path[-1]).decode("utf-8", "surrogateescape")


#: Bytes for a trace line: decoded, undecodable bytes and control characters made visible.
show = safe


def show_path(path: Path) -> str:
    return show(b"/" + b"/".join(path))


def show_raw(path: Path) -> bytes:
    return b"/" + b"/".join(path)


@dataclass(frozen=True, slots=True)
class Ref:
    """A place in one layer: kernel layer number and path inside that layer."""

    layer: int
    path: Path


class LookupFailed(Exception):
    def __init__(self, errno: str, log: str | None, why: str, rule: str | None = None,
                 layers: list[int] | None = None, cause: "Ref | None" = None):
        super().__init__(why)
        #: the layer entry where the lookup fails (the refused metacopy, the bad redirect, ...)
        self.cause = cause
        self.errno = errno
        self.log = log
        self.why = why
        self.rule = rule
        self.layers = layers or []


@dataclass
class _LookupData:
    """The state the kernel carries through one lookup (``struct ovl_lookup_data``)."""

    name: bytes
    last: bool = False
    is_dir: bool = False
    opaque: bool = False
    xwhiteouts: bool = False
    stop: bool = False
    redirect: bytes | None = None
    upperredirect: bytes | None = None
    metacopy: int = 0
    absolute_redirect: bool = False
    # not kernel state: bookkeeping for explanations and findings
    cleared_by: Ref | None = None
    metacopy_at: Ref | None = None
    x_layers: set | None = None
    redirect_from: Ref | None = None
    abs_redirect_value: bytes | None = None


@dataclass
class Resolution:
    """The engine's answer for one merged path."""

    path: Path
    errno: str | None = None
    kind: str | None = None
    size: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    target: bytes | None = None
    metadata: Ref | None = None
    data: Ref | None = None
    open_errno: str | None = None
    kernel_log: list[str] = field(default_factory=list)
    open_log: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    # directory context (like the kernel's ovl_entry): used to look up children
    upper: Path | None = None
    lowers: list[Ref] = field(default_factory=list)
    merge: bool = False
    xwhiteouts: bool = False
    opaque: bool = False
    #: set when the final component was reached through a symlink in a parent
    via_symlink: bool = False
    #: the layer whose entry ended the walk down the layers (an opaque directory, a file over
    #: directories, ...): the regular layers below it are not looked at
    stopped_at: int | None = None
    #: the data lookup was deferred to open, with this absolute redirect
    lowerdata_redirect: bytes | None = None
    metacopy: bool = False
    metacopy_size: int = 0
    redirect: bytes | None = None
    whiteout: Ref | None = None
    #: overlay inodes of this directory and its ancestors: hash key (the first lower) -> upper
    inode_keys: dict | None = None
    #: layers whose copy of this directory was read with opaque=x (xattr whiteouts enabled)
    x_layers: set | None = None
    #: layers the lookups of this directory and its ancestors found opaque=x in (the kernel
    #: flags such a layer for good: ``ovl_layer_set_xwhiteouts``)
    x_seen: frozenset = frozenset()
    readdir_errno: str | None = None
    #: for a failed lookup: where it fails, and the entry whose metacopy/redirect led there
    cause: Ref | None = None
    looked_at: Ref | None = None
    readdir_log: list[str] = field(default_factory=list)
    _entries: list[bytes] | None = None
    _hidden: dict[bytes, str] | None = None
    #: names readdir does not show although a layer holds them and their lookup fails with an
    #: error (not ENOENT): impure directories leave them out, or fail the whole listing
    _unlisted_failures: list[bytes] | None = None
    #: the path as asked (:meth:`Engine.walk_path`), when it differs from ``path``: with its
    #: ``..``, its trailing ``/`` or the symlinks the walk followed
    asked: bytes | None = None
    #: the walk needed ``path`` as a directory (a trailing ``/``, or a ``..`` or more
    #: components after it): what a program sees is ``lstat("path/")``
    slash: bool = False

    @property
    def ok(self) -> bool:
        return self.errno is None

    @property
    def is_dir(self) -> bool:
        return self.errno is None and self.kind == "dir"


class Engine:
    """Predicts the kernel's behaviour for a :class:`Stack`."""

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
        self.tracing = True
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
        from .origin import MountState, mount_state

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
        from .origin import where_origin

        try:
            return where_origin(self, fh, path)
        except OSError:
            return ""

    def _index_lookup(self):
        from .origin import IndexLookup

        try:
            return IndexLookup.for_engine(self)
        except OSError:
            return None

    # ------------------------------------------------------------------ layer numbering
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

    # -------------------------------------------------------------------- xattr helpers
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

    # ------------------------------------------------------------------------- the root
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
        if self.tracing:
            res.trace.append(f"root: merged directory of {self._stack_text(res)}")
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

    # ---------------------------------------------------------------- public resolution
    def resolve(self, path: str | bytes | Path) -> Resolution:
        """Resolve a merged path as ``lstat`` would (a final symlink is not followed)."""
        comps = path if isinstance(path, tuple) else split_path(path)
        return self._resolve(tuple(comps), hops=0)

    def _resolve(self, comps: Path, hops: int) -> Resolution:
        cur = self._root
        if cur.errno:
            return cur
        for i, name in enumerate(comps):
            sub = comps[: i + 1]
            child = self._cache.get(sub)
            if child is None:
                child = self._lookup(cur, name)
                if child.errno is None and child.kind == "dir":
                    self._cache[sub] = child
                    if len(self._cache) > 4096:
                        self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(sub)
            if i == len(comps) - 1:
                return child
            if child.errno is not None:
                return self._fail_through(comps, child)
            if child.kind == "symlink":
                return self._through_symlink(comps, i, child, hops)
            if child.kind != "dir":
                res = Resolution(path=comps, errno="ENOTDIR")
                if self.tracing:
                    res.trace.append(f"{show_path(sub)} is a {child.kind}, not a directory: ENOTDIR")
                return res
            cur = child
        return cur

    def _fail_through(self, comps: Path, parent: Resolution) -> Resolution:
        res = Resolution(path=comps, errno=parent.errno)
        res.kernel_log = list(parent.kernel_log)
        res.trace = [f"parent {show_path(parent.path)} fails first:"] + list(parent.trace)
        res.findings = list(parent.findings)
        return res

    def _through_symlink(self, comps: Path, i: int, link: Resolution, hops: int) -> Resolution:
        if hops >= MAX_SYMLINK_HOPS:
            res = Resolution(path=comps, errno="ELOOP")
            if self.tracing:
                res.trace.append("too many levels of symbolic links: ELOOP")
            return res
        target = link.target or b""
        base = () if target.startswith(b"/") else comps[:i]
        joined = base + tuple(c for c in target.split(b"/") if c) + comps[i + 1 :]
        new = split_path(b"/" + b"/".join(joined))
        res = self._resolve(new, hops + 1)
        res = dataclasses.replace(res)
        res.trace = [f"{show_path(comps[: i + 1])} is a symlink to '{show(target)}'; the path "
                     f"walk follows it to {show_path(new)}"
                     + (" (absolute: resolved inside the merged tree)" if target.startswith(b"/") else "")
                     ] + res.trace
        res.path = comps
        res.via_symlink = True
        return res

    # --------------------------------------------------------------------- the lookup
    def _lookup(self, parent: Resolution, name: bytes) -> Resolution:
        path = parent.path + (name,)
        res = Resolution(path=path)
        t = res.trace
        d = _LookupData(name=name, last=(False if self.check_redirect else not parent.lowers))
        try:
            if len(name) > NAME_MAX:
                raise LookupFailed("ENAMETOOLONG", None,
                                   f"the name is {len(name)} bytes, more than the layers allow ({NAME_MAX})")
            self._lookup_layers(parent, d, res)
        except LookupFailed as e:
            res.errno = e.errno
            if e.log:
                res.kernel_log.append(e.log)
            if self.tracing:
                t.append(f"=> {e.why}: {e.errno}")
            if e.rule:
                res.findings.append(Finding(e.rule, b"/" + b"/".join(path), e.why,
                                            [self.json_index(x) for x in e.layers]))
            res.upper = None
            res.lowers = []
            res.cause = e.cause
            res.looked_at = d.metacopy_at or d.redirect_from
            res.redirect = d.redirect
        else:
            self._file_findings(res)
            if res.kind == "dir":
                self._alias_finding(res)
        self._namespace_findings(parent, name, res)
        return res

    def _check_follow(self, d: _LookupData, path: Path) -> None:
        """``ovl_check_follow_redirect`` (6.16+): before each lower layer and after the loop."""
        if d.metacopy and not self.options.metacopy:
            self._refuse_metacopy(d, path)
        if (d.redirect is not None or d.upperredirect is not None) and not self.options.redirect_follow:
            self._refuse_redirect(d, path)

    def _refuse_metacopy(self, d: _LookupData, path: Path) -> None:
        at = d.metacopy_at
        why = ((f"{self.where(at)} is a metacopy file" if at else "a metacopy file was found")
               + " and the lookup would have to go on below it, but metacopy is off")
        if at is not None and at.layer == self.nlower and not d.absolute_redirect:
            why = (f"{self.where(at)} carries a metacopy xattr in the lowest layer, where no data "
                   "can be found: remove the stray xattr (with metacopy=on this becomes EIO)")
        raise LookupFailed(
            "EPERM",
            f"overlayfs: refusing to follow metacopy origin for ({pd2(path)})",
            why, "metacopy-refused", [at.layer] if at else [], cause=at,
        )

    def _refuse_redirect(self, d: _LookupData, path: Path) -> None:
        raise LookupFailed(
            "EPERM",
            f"overlayfs: refusing to follow redirect for ({pd2(path)})",
            f"a redirect would have to be followed, but redirect_dir={self.options.redirect_dir}",
            "redirect-refused",
            [d.redirect_from.layer] if d.redirect_from else [], cause=d.redirect_from,
        )

    def _lookup_layers(self, parent: Resolution, d: _LookupData, res: Resolution) -> None:
        path = res.path
        t = res.trace
        upper_path: Path | None = None
        uppermetacopy = False
        metacopy_size = 0
        roe = self.root_lowers
        poe = parent.lowers
        if parent.upper is not None:
            upper_path = self._lookup_layer(0, parent.upper, d, res)
            if upper_path is not None and not d.is_dir:
                uppermetacopy = d.metacopy > 0
                metacopy_size = d.metacopy
            if d.redirect is not None:
                d.upperredirect = d.redirect
                if d.redirect.startswith(b"/"):
                    poe = roe
                    if self.tracing:
                        t.append(f"upper redirect '{show(d.redirect)}' is absolute: the lower lookup "
                                 "starts again from the layer roots")
            res.opaque = d.opaque
        if d.stop and parent.lowers and poe:
            res.stopped_at = 0
            if self.tracing:
                t.append("the lower layers are not looked at")
        stack: list[Ref] = []
        i = 0
        consistent = self.profile.consistent_follow_checks
        while not d.stop and i < len(poe):
            lower = poe[i]
            if consistent:
                self._check_follow(d, path)
            if not self.check_redirect:
                d.last = i == len(poe) - 1
            elif d.is_dir or not self.ndata:
                d.last = lower.layer == self.nlower
            this = self._lookup_layer(lower.layer, lower.path, d, res)
            if this is None:
                i += 1
                continue
            ref = Ref(lower.layer, this)
            if not consistent and (uppermetacopy or d.metacopy) and not self.options.metacopy:
                # before 6.16 the refusal waits for a lower entry to be found
                self._refuse_metacopy(d, path)
            if upper_path is not None and not stack and self._index is not None:
                failed = self._index.verify_lower(upper_path, ref, d.is_dir)
                if failed and d.is_dir:
                    res.kernel_log.append(failed)
                    if self.tracing:
                        t.append(f"nfs_export: the upper directory's origin is not "
                                 f"{self.where(ref)}: the lower directories are not merged")
                    res.findings.append(Finding(
                        "stale-origin-lookup", b"/" + b"/".join(path),
                        f"the upper directory's overlay.origin does not name "
                        f"{self.where(ref)} (the lower directory was replaced or moved): with "
                        "nfs_export=on the kernel does not merge it, and its entries are not "
                        "listed", [self.json_index(0), self.json_index(ref.layer)]))
                    break
                if failed:
                    raise LookupFailed(
                        "ESTALE", failed,
                        f"index=on: the upper metacopy's overlay.origin names another lower "
                        f"object than {self.where(ref)}, which the lookup by name found (the "
                        "lower file was replaced, or layers were added or reordered)",
                        "stale-origin-lookup", [0, ref.layer], cause=ref)
            if upper_path is None and not d.is_dir and not stack and d.metacopy:
                metacopy_size = d.metacopy
            if d.metacopy and stack:
                if self.tracing:
                    t.append(f"{self.where(ref)}: intermediate metacopy, not kept in the stack")
            else:
                stack.append(ref)
            if not consistent and d.redirect is not None and not self.options.redirect_follow:
                self._refuse_redirect(d, path)
            if d.stop:
                res.stopped_at = lower.layer
                break
            if d.redirect is not None and d.redirect.startswith(b"/") and poe is not roe:
                poe = roe
                i = lower.layer - 1
                if self.tracing:
                    t.append("absolute redirect: continuing from the root stack below "
                             f"{self.label(lower.layer)}")
            i += 1

        deferred: bytes | None = None
        if d.metacopy and stack and self.ndata and d.absolute_redirect:
            d.metacopy = 0
            deferred = d.redirect
            if self.tracing:
                t.append(f"metacopy with absolute redirect '{show(deferred)}' and no data found in the "
                         "regular layers: data lookup deferred to open, in the data-only layers")
        elif consistent:
            self._check_follow(d, path)

        if d.metacopy or (uppermetacopy and not stack):
            layers = [r.layer for r in stack] + ([0] if uppermetacopy else [])
            rule = "metacopy-without-data"
            at = d.metacopy_at
            why = (f"{self.where(at) if at else 'the metacopy file'} is a metacopy, and no layer "
                   "below holds its data" + (f" at '{show(d.redirect)}'" if d.redirect else ""))
            if at is not None and at.layer == self.nlower and not self.ndata:
                why = (f"{self.where(at)} carries a metacopy xattr but is in the lowest layer, "
                       "where no data can be found: a stray metacopy xattr makes it inaccessible")
            if d.cleared_by is not None and self.ndata and d.abs_redirect_value is not None:
                rule = "lowerdata-redirect-broken"
                why = (f"the absolute redirect '{show(d.abs_redirect_value)}' walked through the plain "
                       f"directory {self.where(d.cleared_by)}, which cancels the lookup in the "
                       "data-only layers; no data found")
                layers = layers + [d.cleared_by.layer]
            elif uppermetacopy and self.ndata and d.upperredirect and d.upperredirect.startswith(b"/"):
                why = ("an upper metacopy cannot reach data-only layers directly; its redirect "
                       f"'{show(d.upperredirect)}' found nothing in the regular layers")
            raise LookupFailed(
                "EIO",
                f"overlayfs: metacopy with no lower data found - abort lookup ({pd2(path)})",
                why, rule, layers,
                cause=d.cleared_by if rule == "lowerdata-redirect-broken" else d.metacopy_at)

        if upper_path is None and not stack:
            res.errno = "ENOENT"
            if res.whiteout is not None:
                if self.tracing:
                    t.append(f"=> hidden by the whiteout in {self.where(res.whiteout)}: ENOENT")
            else:
                if self.tracing:
                    t.append("=> in no layer: ENOENT")
            return

        # positive: build the inode
        res.upper = upper_path
        res.lowers = stack
        res.xwhiteouts = d.xwhiteouts
        res.x_layers = d.x_layers
        res.x_seen = parent.x_seen | frozenset(d.x_layers or ())
        top = Ref(0, upper_path) if upper_path is not None else stack[0]
        node = self.layer(top.layer).node(top.path)
        self._fill_attrs(res, node)
        res.metadata = top
        res.metacopy_size = metacopy_size
        self._inode_alias(parent, res, stack)
        if d.is_dir:
            real = node
            res.merge = (upper_path is not None and bool(stack)) or len(stack) > 1 or (
                real is not None and self._x(real, b"origin") is not None)
            res.redirect = d.upperredirect or d.redirect
            if self.tracing:
                t.append(("merged" if res.merge else "non-merged (readdir passes through)")
                         + f" directory: {self._stack_text(res)}")
            return
        if self._index is not None:
            log = self._index.check(res, upper_path, stack)
            if log is True:
                res.data = None  # the index entry: in no layer
                return
            if log:
                raise LookupFailed("EIO", log, "index=on: the index entry named by this file's "
                                   "origin is a whiteout or of another type (a stale or damaged "
                                   "index)", "index-entry-bad", [0])
        if res.kind != "file":
            return
        res.redirect = d.redirect
        if upper_path is not None and not uppermetacopy:
            res.data = Ref(0, upper_path)
            if self.tracing:
                t.append(f"data: {self.where(res.data)} (upper file, not a metacopy)")
            return
        res.metacopy = uppermetacopy or len(stack) > 1 or deferred is not None
        if deferred is not None:
            res.lowerdata_redirect = deferred
            self._lazy_data(res, deferred)
        else:
            res.data = stack[-1]
            if res.data != res.metadata:
                if self.tracing:
                    t.append(f"data: {self.where(res.data)} (below the metacopy)")
            else:
                if self.tracing:
                    t.append(f"data: {self.where(res.data)}")
        if res.open_errno is None and self.options.verity != "off" and res.metacopy:
            self._verity(res)

    def _inode_alias(self, parent: Resolution, res: Resolution, stack: list[Ref]) -> None:
        """Overlay inodes with a lower are hashed by their first lower inode (``ovl_get_inode``).

        A directory whose first lower is already the inode of one of its ancestors, with a
        different upper, fails ``ovl_verify_inode``: ESTALE.  With the same (no) upper it would
        share the ancestor's inode, and the dentry alias would make a loop: ELOOP.
        """
        keys = dict(parent.inode_keys or {})
        if stack and res.kind == "dir":
            key = stack[0]
            if key in keys:
                other_upper = keys[key]
                if res.upper is not None and other_upper != res.upper:
                    raise LookupFailed(
                        "ESTALE", "overlayfs: failed to get inode (-116)",
                        f"this directory's first lower {self.where(key)} is already the inode "
                        "of an ancestor with another upper directory (inode aliasing)",
                        "inode-alias", [key.layer], cause=key)
                if res.upper is None and other_upper is None:
                    raise LookupFailed(
                        "ELOOP", None,
                        f"this directory would share the inode of its ancestor ({self.where(key)}): "
                        "the directory alias would make a loop", "inode-alias", [key.layer])
            keys[key] = res.upper
        if res.kind == "dir":
            res.inode_keys = keys

    def _lookup_layer(self, li: int, base: Path, d: _LookupData, res: Resolution) -> Path | None:
        """One layer: one step for a relative name, a walk from the root for an absolute one."""
        if not d.name.startswith(b"/"):
            return self._single(li, base, d, d.name, 0, b"", res)
        if self.tracing:
            res.trace.append(f"{self.label(li)}: walking '{show(d.name)}' from the layer root")
        rem = len(d.name) - 1
        cur: Path | None = base
        found: Path | None = None
        while cur is not None:
            n = self.layer(li).node(cur)
            if n is None or not n.is_dir:
                break
            start = len(d.name) - rem
            nxt = d.name.find(b"/", start)
            if nxt < 0:
                nxt = len(d.name)
            comp = d.name[start:nxt]
            post = d.name[nxt:]
            cur = self._single(li, cur, d, comp, start, post, res)
            found = cur
            if not post:
                break
            rem -= len(comp) + 1
        return found

    def _single(self, li: int, base: Path, d: _LookupData, name: bytes, prelen: int,
                post: bytes, res: Resolution) -> Path | None:
        """One path component in one layer (``ovl_lookup_single``)."""
        t = res.trace
        layer = self.layer(li)
        last_element = not post
        is_upper = li == 0
        p = base + (name,)
        where = self.where(Ref(li, p)) if self.tracing else ""
        if name in (b"", b".", b".."):
            # lookup_one() refuses these names outright
            raise LookupFailed("EACCES", None, f"{self.label(li)}: the name '{show(name)}' cannot be "
                               "looked up in a layer (a redirect led here)", "invalid-redirect", [li])
        node = layer.node(p)
        if node is None:
            if self.tracing:
                t.append(f"{where}: absent")
            return None
        if self.is_whiteout(node):
            d.stop = d.opaque = True
            kind = "0/0 whiteout" if node.is_whiteout_dev else "xattr whiteout"
            if self.tracing:
                t.append(f"{where}: {kind}; lower layers are hidden")
            if last_element:
                res.whiteout = Ref(li, p)
            return None
        if last_element and d.metacopy and not node.is_reg:
            d.stop = True
            if self.tracing:
                t.append(f"{where}: {node.kind}, but a metacopy above needs a regular file; stop")
            return None
        if not node.is_dir:
            if d.is_dir or not last_element:
                d.stop = True
                if self.tracing:
                    t.append(f"{where}: {node.kind}, " + (
                        "hides the directories below" if d.is_dir else "not a directory; the walk stops"))
                return None
            mc = self._metacopy_size(li, p, node)
            d.metacopy = mc
            if mc:
                d.metacopy_at = Ref(li, p)
            d.stop = not mc
            if not mc:
                if node.is_reg and self._x(node, b"redirect") is not None:
                    if self.tracing:
                        t.append(f"{where}: regular file (its redirect xattr is ignored: not a metacopy)")
                    res.findings.append(Finding(
                        "redirect-ignored", b"/" + b"/".join(res.path),
                        f"{self.where(Ref(li, p))} carries a redirect xattr but no metacopy xattr; the kernel "
                        "serves the file itself", [self.json_index(li)]))
                else:
                    if self.tracing:
                        t.append(f"{where}: {node.kind}" + (f", {node.size} bytes" if node.is_reg else ""))
                return p
            if d.last:
                if self.tracing:
                    t.append(f"{where}: metacopy file (bottom layer: redirect not read)")
                return p
            if self.tracing:
                t.append(f"{where}: metacopy file ({node.size} bytes)")
        else:
            if last_element:
                d.is_dir = True
            if d.last:
                if self.tracing:
                    t.append(f"{where}: directory (bottom layer: opaque and redirect not read)")
                return p
            val = self.opaque_value(node)
            if last_element and not is_upper and val == b"x":
                d.xwhiteouts = True
                d.x_layers = (d.x_layers or set()) | {li}
                if self.tracing:
                    t.append(f"{where}: directory with opaque=x (holds xattr whiteouts; not opaque)")
            elif val == b"y":
                d.stop = True
                if last_element:
                    d.opaque = True
                if self.tracing:
                    t.append(f"{where}: opaque directory; lower layers are hidden" + (
                        "" if last_element else " (the walk goes on in this layer)"))
                return p
            else:
                if self.tracing:
                    t.append(f"{where}: directory")
        self._check_redirect(li, p, node, d, prelen, post, res)
        return p

    def _check_redirect(self, li: int, p: Path, node: Node, d: _LookupData, prelen: int,
                        post: bytes, res: Resolution) -> None:
        if d.absolute_redirect and not node.is_reg:
            d.cleared_by = Ref(li, p)
        d.absolute_redirect = False
        value = self._x(node, b"redirect")
        if value is None:
            if d.cleared_by == Ref(li, p):
                if self.tracing:
                    res.trace.append(f"  {self.where(Ref(li, p))} has no redirect: the absolute redirect "
                                     "no longer counts (data-only layers will not be searched)")
            return
        buf = value.split(b"\0", 1)[0]
        if not self._valid_redirect(value, buf):
            raise LookupFailed("EINVAL", f"overlayfs: invalid redirect ({show(buf)})",
                               f"invalid redirect xattr '{show(value)}' on {self.where(Ref(li, p))}",
                               "invalid-redirect", [li], cause=Ref(li, p))
        d.redirect_from = Ref(li, p)
        if buf.startswith(b"/"):
            d.absolute_redirect = True
            d.stop = False
            d.cleared_by = None
            new = buf + post
            d.abs_redirect_value = new
            if self.tracing:
                res.trace.append(f"  absolute redirect '{show(buf)}': now looking for '{show(new)}'")
        else:
            new = d.name[:prelen] + buf + post
            if self.tracing:
                res.trace.append(f"  relative redirect '{show(buf)}': now looking for '{show(new)}'")
        d.redirect = new
        d.name = new

    @staticmethod
    def _valid_redirect(raw: bytes, buf: bytes) -> bool:
        if not raw:
            return False
        if buf.startswith(b"/"):
            return all(buf.split(b"/")[1:])
        return b"/" not in buf

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

    # ---------------------------------------------------------------- data-only layers
    def data_lookup(self, redirect: bytes) -> tuple[Ref | None, str, list[str]]:
        """The lazy lookup in the data-only layers: (found, errno if not, trace)."""
        trace: list[str] = []
        err = "ENOENT"
        for li in range(self.nlower + 1, self.nlower + self.ndata + 1):
            ref, err, why = self._data_walk(li, redirect)
            if self.tracing:
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
        if self.tracing:
            res.trace.append(f"at open: lazy lookup of '{show(redirect)}' in the data-only layers")
        if self.tracing:
            res.trace += ["  " + x for x in trace]
        if ref is None:
            res.open_errno = err
            code = getattr(_errno, err, 0)
            res.open_log.append(f"overlayfs: lazy lowerdata lookup failed ({pd2(res.path)}, err=-{code})")
            if self.tracing:
                res.trace.append(f"=> open fails: {err} (lstat still succeeds)")
            res.findings.append(Finding(
                "lowerdata-missing", b"/" + b"/".join(res.path),
                f"open fails with {err}: '{show(redirect)}' is not a regular file in any data-only "
                "layer", [self.json_index(r.layer) for r in res.lowers[:1]]))
        else:
            res.data = ref
            if self.tracing:
                res.trace.append(f"data: {self.where(ref)}")

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
            if self.tracing:
                res.trace.append(f"=> open fails: {why}: {errno}")
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

    # ----------------------------------------------------------------------- findings
    def _file_findings(self, res: Resolution) -> None:
        if res.kind != "file" or res.errno is not None:
            return
        here = b"/" + b"/".join(res.path)
        # a regular layer served an absolute redirect meant for a data-only layer
        if (self.ndata and res.data is not None and res.lowerdata_redirect is None
                and res.data.layer != 0 and res.data.layer <= self.nlower
                and res.data != res.metadata and res.redirect and res.redirect.startswith(b"/")):
            ref, _, _ = self.data_lookup(res.redirect)
            if ref is not None:
                res.findings.append(Finding(
                    "shadowed-lowerdata", here,
                    f"{self.where(res.data)} intercepts the redirect '{show(res.redirect)}': read() "
                    f"returns its bytes, not those of {self.where(ref)}",
                    [self.json_index(res.data.layer), self.json_index(ref.layer)]))
                if self.tracing:
                    res.trace.append(f"! shadowing: {self.where(ref)} also holds this path, but the "
                                     "regular layers are searched first")
        self._alias_finding(res)
        if res.data is not None and res.metacopy and res.open_errno is None:
            dnode = self.layer(res.data.layer).node(res.data.path)
            if dnode is not None and res.size is not None and dnode.size != res.size:
                res.findings.append(Finding(
                    "metacopy-size-mismatch", here,
                    f"stat says {res.size} bytes, read() returns the {dnode.size} bytes of "
                    f"{self.where(res.data)}",
                    [self.json_index(res.data.layer)]))

    def _alias_finding(self, res: Resolution) -> None:
        """Flag another merged path whose overlay inode is this one's (``ovl_get_inode``).

        Overlay inodes with a lower are hashed by their first lower inode, whatever the file's
        data: an upper metacopy redirected to a lower metacopy (a chain) shares the inode of that
        lower file's own path, and so does an upper directory redirected to a visible lower one.
        The second of two such paths looked up either gets the first one's inode (a file
        without an upper copy: its size, mode and data) or fails with ESTALE.  The prediction is
        the fresh-mount answer for this path looked up first.
        """
        if res.upper is None or not res.lowers or self._alias_guard:
            return
        key = res.lowers[0]
        if key.path == res.path:
            return
        self._alias_guard = True  # the other path may be a redirect back to this one (a loop)
        try:
            other = self.resolve(key.path)
        finally:
            self._alias_guard = False
        if other.errno is not None or other.lowers[:1] != [key]:
            return
        here = b"/" + b"/".join(res.path)
        second = ("fails with ESTALE (\"overlayfs: failed to get inode (-116)\")"
                  if res.kind == "dir" or other.upper is not None else
                  f"fails with ESTALE, or ({show_path(key.path)} second) shows this path's "
                  "size, mode and data")
        res.findings.append(Finding(
            "inode-alias", here,
            f"{show(here)} and {show_path(key.path)} both resolve to the lower inode "
            f"{self.where(key)} (the first lower, which keys the overlay inode); on a fresh mount "
            f"the one looked up second {second}, and an impure parent's readdir then leaves that "
            "name out; this prediction assumes this path is looked up first",
            [self.json_index(key.layer)]))

    def _namespace_findings(self, parent: Resolution, name: bytes, res: Resolution) -> None:
        """Overlay xattrs in the other namespace, or escaped, are ignored by this mount."""
        refs: list[Ref] = []
        if res.metadata is not None:
            refs.append(res.metadata)
        for ref in refs:
            node = self.layer(ref.layer).node(ref.path)
            if node is None:
                continue
            # (escaped trusted.overlay.overlay.* names are meant for a nested overlay, as
            # composefs writes them: shown by the per-layer view, not a problem)
            values = dict(node.xattrs)
            ignored = [k for k, _ in node.xattrs
                       if k.startswith(self.other_prefix) and not k.startswith(self.other_prefix + b"overlay")
                       and not self._duplicated(k, values)]
            meaningful = [k for k in ignored
                          if k.rsplit(b".", 1)[-1] in (b"metacopy", b"redirect", b"opaque", b"whiteout")]
            here = b"/" + b"/".join(res.path)
            names = ", ".join(show(k) for k in meaningful)
            if res.kind == "file" and any(k.endswith(b".metacopy") for k in meaningful):
                # silently wrong data, as shadowing is: an error
                res.findings.append(Finding(
                    "metacopy-ignored", here,
                    f"{self.where(ref)} carries {names}, which this mount ignores (it reads "
                    f"{show(self.prefix)}*): the file is not a metacopy here, and read() returns "
                    f"its own {node.size} bytes ({'zeros' if node.size else 'nothing'}, for a "
                    "sparse metacopy) instead of the data", [self.json_index(ref.layer)]))
            elif meaningful:
                res.findings.append(Finding(
                    "xattr-namespace-mismatch", here,
                    f"{self.where(ref)} carries {names}, which this mount ignores (it reads "
                    f"{show(self.prefix)}*)", [self.json_index(ref.layer)]))

    def _duplicated(self, key: bytes, values: dict[bytes, bytes]) -> bool:
        """An other-namespace overlay xattr with the same value in this mount's namespace, or
        in the escaped trusted.overlay.overlay.* form (composefs writes user.overlay.whiteout
        and opaque next to the trusted copies on purpose, for an outer userxattr overlay)."""
        suffix = key[len(self.other_prefix):]
        value = values.get(key)
        return any(values.get(name) == value
                   for name in (self.prefix + suffix, b"trusted.overlay.overlay." + suffix))

    # ------------------------------------------------------------------------- readdir
    def entries(self, res: Resolution) -> list[bytes]:
        """The names ``readdir`` lists for a directory (sorted), phantoms included."""
        if res._entries is not None:
            return res._entries
        names: list[bytes] = []
        hidden: dict[bytes, str] = {}
        if not res.is_dir:
            res._entries = []
            return []
        res._unlisted_failures = None
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
                        res._unlisted_failures = names
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
                        res._unlisted_failures = (res._unlisted_failures or []) + [name]
                        if not returned:
                            res.readdir_errno = child.errno
                            res._unlisted_failures = [n for n in seen if n not in hidden or
                                                      n in res._unlisted_failures]
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

    @property
    def same_fs(self) -> bool:
        devs = {getattr(l, "dev", None) for l in self.klayers if l is not None}
        devs.discard(None)
        return len(devs) <= 1

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

    # ------------------------------------------------------------------ path walk
    def walk_path(self, path: str | bytes, contained: bool = True) -> Resolution:
        """Resolve a path as ``lstat(2)`` walks it, ``..`` and a trailing ``/`` included.

        A path without ``..`` and without a trailing slash is :meth:`resolve` (``.`` and
        doubled slashes mean nothing).  Otherwise the walk goes component by component the
        way the kernel's path walk does: a component followed by more (or by ``/``) must be a
        directory, a symlink there is followed first (relative targets from its directory,
        absolute ones from the merged root), so ``link/..`` is the parent of the link's
        target, not the link's own directory; ``file/`` and ``file/..`` fail with ENOTDIR; a
        lookup that fails ends the walk with its errno.  ``..`` at the merged root stays there
        (as in the container, whose root it is) when ``contained``; otherwise the path leaves
        the mount and :class:`ValueError` is raised.
        """
        raw = os.fsencode(path)
        comps = [c for c in raw.split(b"/") if c not in (b"", b".")]
        trailing = bool(comps) and (raw.endswith(b"/") or raw.endswith(b"/."))
        if b".." not in comps and not trailing:
            return self.resolve(tuple(comps))
        asked = b"/" + raw.lstrip(b"/")
        cur: Path = ()
        steps: list[str] = []
        pending = list(comps)
        hops = 0

        def done(res: Resolution, slash: bool = False) -> Resolution:
            res = dataclasses.replace(res, trace=steps + list(res.trace), slash=slash,
                                      findings=list(res.findings))
            if (asked if slash else asked.rstrip(b"/") or b"/") != show_raw(res.path) + (b"/" if slash else b""):
                res.asked = asked
            return res

        while pending:
            name = pending.pop(0)
            if name == b"..":
                if cur:
                    steps.append(f"'..' in {show_path(cur)}: back to {show_path(cur[:-1])}")
                    cur = cur[:-1]
                elif contained:
                    steps.append("'..' at the merged root stays at the root")
                else:
                    raise ValueError("'..' leads out of the mount")
                continue
            if not pending and not trailing:
                return done(self.resolve(cur + (name,)))
            res = self.resolve(cur + (name,))
            here = cur + (name,)
            why = "a trailing '/' follows" if not pending else "more of the path follows"
            if res.errno is not None:
                steps.append(f"{show_path(here)} must be a directory ({why}); its lookup fails:")
                return done(res, slash=True)
            if res.kind == "symlink":
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    fail = Resolution(path=here, errno="ELOOP")
                    fail.trace.append("too many levels of symbolic links: ELOOP")
                    return done(fail, slash=True)
                target = res.target or b""
                if not target:
                    fail = Resolution(path=here, errno="ENOENT")
                    fail.trace.append(f"{show_path(here)} is a symlink with an empty target: ENOENT")
                    return done(fail, slash=True)
                steps.append(f"{show_path(here)} is a symlink to '{show(target)}' and {why}: the "
                             "walk follows it" + (" (absolute: from the merged root)"
                                                  if target.startswith(b"/") else ""))
                if target.startswith(b"/"):
                    cur = ()
                pending = [c for c in target.split(b"/") if c not in (b"", b".")] + pending
                continue
            if res.kind != "dir":
                fail = Resolution(path=here, errno="ENOTDIR", cause=res.metadata)
                fail.trace.append(f"{show_path(here)} is a {res.kind}, not a directory, and {why}: ENOTDIR")
                return done(fail, slash=True)
            cur = here
        return done(self.resolve(cur))

    # ---------------------------------------------------------------- explain & check
    def explain(self, path: str | bytes | Path, contained: bool = True) -> Resolution:
        """:meth:`walk_path` (or :meth:`resolve` of a component tuple) plus the directory listing
        and the listing's phantom entries."""
        res = self.resolve(path) if isinstance(path, tuple) else self.walk_path(path, contained)
        if res.is_dir:
            names = self.entries(res)
            for name in names:
                child = self.resolve(res.path + (name,))
                if child.errno == "ENOENT":
                    res.findings.append(self._phantom(res, name, child))
        return res

    def _phantom(self, parent: Resolution, name: bytes, child: Resolution) -> Finding:
        wh = child.whiteout
        where = self.where(wh) if wh else "a lower layer"
        node = self.layer(wh.layer).node(wh.path) if wh else None
        xattr = node is not None and not node.is_whiteout_dev
        if not parent.merge:
            why = ("the directory exists in one layer only, so it is not merged and readdir passes "
                   "the whiteout through; remove the whiteout (it hides nothing)")
        elif xattr and wh is not None and wh.layer == 0:
            why = ("readdir never hides an xattr whiteout of the upper layer (opaque=x counts in lower "
                   "layers only); use a 0/0 character device there")
        elif xattr:
            why = (f"its directory in {self.label(wh.layer) if wh else 'that layer'} lacks "
                   "opaque=x, so readdir does not check it; mark the directory opaque=x")
        else:
            why = "readdir lists it although lookup hides it"
        return Finding("phantom-whiteout", b"/" + b"/".join(parent.path + (name,)),
                       f"readdir lists '{show(name)}' but lookup gives ENOENT ({where}): {why}",
                       [self.json_index(wh.layer)] if wh else [])

    def walk(self, progress: Callable[[int], None] | None = None,
             cancel: Callable[[], bool] | None = None) -> Iterator[Resolution]:
        """Resolve every path the merged tree lists, directory by directory (depth first).

        Each layer directory is read once; only the current branch is held in memory.
        """
        if self.tracing:
            # a quiet twin on the same layers: no traces, and no shared caches with
            # interactive resolution that may run on another thread meanwhile
            quiet = Engine(self.stack, options=self.options, kernel=self.kernel, profile=self.profile)
            quiet.tracing = False
            yield from quiet.walk(progress, cancel)
            return
        count = 0
        stack: list[Resolution] = [self._root]
        yield self._root
        while stack:
            if cancel is not None and cancel():
                return
            dirres = stack.pop()
            listed = self.entries(dirres)
            # what readdir leaves out because its lookup fails is a problem all the same
            unlisted = dirres._unlisted_failures or []
            for name in sorted(set(listed) | set(unlisted)):
                child = self._lookup(dirres, name)
                count += 1
                if child.errno == "ENOENT" and name in listed:
                    child.findings.append(self._phantom(dirres, name, child))
                yield child
                if child.is_dir:
                    stack.append(child)
            dirres._entries = None
            dirres._unlisted_failures = None
            if progress is not None:
                progress(count)

    def stack_findings(self) -> list[Finding]:
        """Findings about the stack as a whole (mount refusal, shadowing hazards)."""
        out: list[Finding] = []
        state = self.mount_state
        out.extend(state.findings)
        if self.options.index and self.has_upper:
            live = self.stack.mountpoint is not None
            why = "; ".join(state.unchecked)
            if why or not self.stack.workdir:
                text = ((f"index=on: {why}. " if why else "index=on: the work directory is not "
                         "known. ") + "The kernel also verifies origins and index entries (a bad "
                        "or stale one gives ESTALE or EIO, hard links are shared through the "
                        "index); ovlinspect could not check them here")
            else:
                text = ("index=on: " + ("the index lookup of files is predicted (the mount-time "
                        "checks passed when this overlay was mounted)" if live else
                        "the mount-time checks (upper root origin, index directory, work "
                        "directory) and the index lookup of files are predicted")
                        + "; the kernel also looks up directory index entries, which ovlinspect "
                        "does not model")
            out.append(Finding("not-modelled", b"/", text))
        if self.options.xino != "off" and not self.same_fs:
            out.append(Finding("not-modelled", b"/",
                               f"xino={self.options.xino} on layers of several filesystems: readdir "
                               "looks every entry up to remap inode numbers, which can hide entries "
                               "whose lookup fails; ovlinspect does not model that"))
        if self.options.mount_errno and state.refusal is None:
            msg = "; ".join(self.options.mount_log) or "the mount is refused"
            out.append(Finding("mount-refused", b"/", f"mount fails with {self.options.mount_errno}: {msg}"))
        else:  # known regressions of this kernel that the stack meets (kernel/bugs.py)
            out.extend(bug_findings(self))
        if self.ndata:
            tops: dict[bytes, int] = {}
            for li in range(self.nlower + 1, self.nlower + self.ndata + 1):
                for name, n in self.layer(li).scan(()).items():
                    if n.is_dir:
                        tops.setdefault(name, li)
            regular = ([0] if self.has_upper else []) + list(range(1, self.nlower + 1))
            reach = _RedirectReach(self, regular)
            for li in regular:
                for name, n in self.layer(li).scan(()).items():
                    if name in tops and n.is_dir and reach.walked(li, name):
                        out.append(Finding(
                            "shadowing-hazard", b"/" + name,
                            f"{self.where(Ref(li, (name,)))} is a directory with the same name as "
                            f"the top-level directory {show_path((name,))} of "
                            f"{self.label(tops[name])}: a redirect into it walks this directory "
                            "first, and any file added there will intercept redirects",
                            [self.json_index(li), self.json_index(tops[name])]))
        return out

    def check(self, progress: Callable[[int], None] | None = None,
              cancel: Callable[[], bool] | None = None) -> list[Finding]:
        findings = self.stack_findings()
        if self.options.mount_errno:
            return findings
        for res in self.walk(progress, cancel):
            findings.extend(res.findings)
        return findings

    def with_options(self, options: str, profile: KernelProfile | None = None) -> "Engine":
        """The same layers under other mount options, or on another kernel (what-if)."""
        # the stack as it is (its refusal too), with these options computed afresh
        stack = dataclasses.replace(self.stack, options=options, effective=None)
        return Engine(stack, kernel=self.kernel, profile=profile or self.profile)

    # ---------------------------------------------------------------------------- json
    def ref_json(self, ref: Ref | None) -> dict | None:
        if ref is None:
            return None
        return {"layer": self.json_index(ref.layer), "path": _j(b"/" + b"/".join(ref.path))}

    def to_json(self, res: Resolution) -> dict:
        ok = res.errno is None
        is_file = ok and res.kind == "file"
        entries = [_j(n) for n in self.entries(res)] if ok and res.kind == "dir" else None
        if res.readdir_errno:
            entries = None
        logs = res.kernel_log + (res.open_log if ok else []) + (res.readdir_log if ok else [])
        path = _j(show_raw(res.path) + (b"/" if res.slash and res.path else b""))
        return {
            "path": path,
            "asked": _j(res.asked) if res.asked is not None else path,
            "errno": res.errno,
            "type": res.kind if ok else None,
            "size": res.size if ok else None,
            "mode": res.mode if ok else None,
            "uid": res.uid if ok else None,
            "gid": res.gid if ok else None,
            "target": _j(res.target) if ok and res.target is not None else None,
            "metadata": self.ref_json(res.metadata) if ok else None,
            "data": self.ref_json(res.data) if is_file else None,
            "open_errno": res.open_errno if is_file else None,
            "entries": entries,
            "readdir_errno": res.readdir_errno if ok and res.kind == "dir" else None,
            "kernel_log": "\n".join(logs) if logs else None,
            "trace": list(res.trace),
            "findings": [f.as_json() for f in res.findings],
        }

    def document(self, paths: list[Resolution]) -> dict:
        return {
            "version": 1,
            "kernel": self.kernel,
            "kernel_profile": self.profile.as_json(),
            "source": self.stack.source,
            "layers": [
                {"index": i, "role": role, "path": layer.path if layer.path else None,
                 "label": layer.label}
                for i, (role, layer) in enumerate(self.stack.layers)
            ],
            "options": self.options.as_json(),
            "mount_errno": self.options.mount_errno,
            "mount_log": list(self.options.mount_log),
            "paths": [self.to_json(r) for r in paths],
        }


class _RedirectReach:
    """Which regular layers an absolute metacopy redirect into a top-level directory walks:
    only those below the layer holding it (the lookup goes on downwards from there)."""

    def __init__(self, engine: "Engine", regular: list[int]):
        self.engine = engine
        self.regular = regular
        #: top-level name -> (highest layer holding such a redirect, its path), found lazily
        self._first: dict[bytes, tuple[int, Path] | None] = {}
        self._scanned = -1

    def _scan_until(self, limit: int) -> None:
        from ..model.layers import iter_tree

        e = self.engine
        for li in self.regular:
            if li <= self._scanned or li >= limit:
                continue
            for path, node in iter_tree(e.layer(li)):
                if not node.is_reg:
                    continue
                red = e._x(node, b"redirect")
                if red is None or not red.startswith(b"/") or e._x(node, b"metacopy") is None:
                    continue
                top = split_path(red)[:1]
                if top and self._first.get(top[0]) is None:
                    self._first[top[0]] = (li, path)
            self._scanned = li

    def walked(self, li: int, name: bytes) -> bool:
        self._scan_until(li)
        first = self._first.get(name)
        return first is not None and first[0] < li


def _j(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")
