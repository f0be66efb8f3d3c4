"""The engine: the kernel's predictions (:class:`~ovlinspect.kernel.overlay.Overlay`) plus the
diagnostics ovlinspect adds to them.

The checks here are not the kernel's behaviour but what a user needs told: a regular layer
intercepting a data-only layer's redirect (shadowing), sizes that disagree, overlay inodes
that alias, xattrs of the other namespace, readdir entries lookup hides (phantoms), and the
stack as a whole (mount refusal, shadowing hazards, known kernel regressions).  ``check``
walks every path with a no-op trace on a private clone.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

from ..kernel.bugs import bug_findings
from ..kernel.entry import Ref, Resolution, show, show_path
from ..kernel.inode import Collisions
from ..kernel.overlay import Overlay
from ..kernel.profile import KernelProfile
from ..model.layers import Path, split_path
from .catalogue import Finding
from .fsck import Fsck
from ..model.layers import iter_tree


class Engine(Overlay):
    """Predicts the kernel's behaviour for a stack, and diagnoses what it finds."""

    def _after_lookup(self, parent: Resolution, name: bytes, res: Resolution, ok: bool) -> None:
        if ok:
            self._file_findings(res)
            if res.kind == "dir":
                self._alias_finding(res)
        self._namespace_findings(parent, name, res)

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
                self.tracer.to(res).append(f"! shadowing: {self.where(ref)} also holds this path, but the "
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
        if res.upper is not None and not res.lowers and res.kind not in (None, "dir") \
                and not self._alias_guard:
            self._origin_alias(res)
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

    def _origin_alias(self, res: Resolution) -> None:
        """A copied-up file hashed by its origin (``ovl_hash_bylower``: one link below, or
        indexed) whose origin is the lower file another merged path shows without an upper
        (the lower object was moved or renamed since the copy-up): both paths key one overlay
        inode, and the one looked up second gets the first one's (or ESTALE)."""
        from ..kernel.inode import _indexed, origin_location

        try:
            loc = origin_location(self, res.upper)
        except OSError:
            return
        if loc is None or loc[1] == res.path:
            return
        j, path, st = loc
        indexed = _indexed(self, res.upper)
        if (st.st_nlink > 1 and not indexed) or (self.options.nfs_export and not indexed):
            return  # hashed by the upper inode: no alias
        self._alias_guard = True
        try:
            other = self.resolve(path)
        finally:
            self._alias_guard = False
        if other.errno is not None or other.upper is not None or other.lowers[:1] != [Ref(j, path)]:
            return
        here = b"/" + b"/".join(res.path)
        res.findings.append(Finding(
            "inode-alias", here,
            f"{show(here)} was copied up from the lower file now at {show_path(path)} "
            f"({self.where(Ref(j, path))}: moved or renamed in the lower layer since): both key one "
            "overlay inode by that lower inode; on a fresh mount the one looked up second fails "
            f"with ESTALE, or ({show_path(path)} second) shows this file's size, mode and data; "
            "this prediction assumes this path is looked up first",
            [self.json_index(0), self.json_index(j)]))

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

    def explain(self, path: str | bytes | Path, contained: bool = True) -> Resolution:
        """:meth:`walk_path` (or :meth:`resolve` of a component tuple) plus the directory listing
        and the listing's phantom entries."""
        res = self.resolve(path) if isinstance(path, tuple) else self.walk_path(path, contained)
        if res.is_dir:
            names = self.entries(res)
            for name in names:
                child = self.resolve(res.path + (name,))
                if child.errno == "ENOENT":
                    res.findings.append(self.phantom(res, name, child))
        return res

    def phantom(self, parent: Resolution, name: bytes, child: Resolution) -> Finding:
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
             cancel: Callable[[], bool] | None = None,
             skip: Callable[[Resolution], Callable[[bytes], bool]] | None = None
             ) -> Iterator[Resolution]:
        """Resolve every path the merged tree lists, directory by directory (depth first).

        Each layer directory is read once; only the current branch is held in memory.
        ``skip(directory)``, when given, is asked once per directory before it is listed and
        answers a test of its names: a name it passes is proved to end its lookup without a
        finding, and is counted but not looked up (``check``'s fast paths, rules/scan.py).
        """
        if self.tracer.on:
            # a clone without a trace, and without caches shared with interactive resolution
            # that may run on another thread meanwhile
            yield from self.clone(tracing=False).walk(progress, cancel, skip)
            return
        count = 0
        stack: list[Resolution] = [self._root]
        yield self._root
        while stack:
            if cancel is not None and cancel():
                return
            dirres = stack.pop()
            clean = skip(dirres) if skip is not None else None
            listed = self.entries(dirres)  # sorted, each name once
            # what readdir leaves out because its lookup fails is a problem all the same
            unlisted = dirres.unlisted_failures
            names = sorted(set(listed) | set(unlisted)) if unlisted else listed
            listed_set = set(listed) if unlisted else None
            for name in names:
                count += 1
                if clean is not None and clean(name):
                    continue
                # the lookup of one name in its parent (resolve() would walk down from the
                # root: quadratic in the depth, cubic over a deep tree)
                child = self.lookup_child(dirres, name)
                if child.errno == "ENOENT" and (listed_set is None or name in listed_set):
                    child.findings.append(self.phantom(dirres, name, child))
                yield child
                if child.is_dir:
                    stack.append(child)
            dirres._entries = None
            dirres.unlisted_failures = None
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
            why = f" ({self.options.mount_why})" if self.options.mount_why else ""
            out.append(Finding("mount-refused", b"/", f"mount fails with {self.options.mount_errno}: {msg}{why}"))
        else:  # known regressions of this kernel that the stack meets (kernel/bugs.py)
            out.extend(bug_findings(self))
        if self.ndata and not self.options.mount_errno:  # hazards of a mount that happens
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

    def check_findings(self, progress: Callable[[int], None] | None = None,
                       cancel: Callable[[], bool] | None = None,
                       walk: Callable[..., Iterator[Resolution]] | None = None
                       ) -> Iterator[tuple[Resolution | None, Finding]]:
        """Every finding of :meth:`check`, in order, with the resolution of the path it is
        about (None for the stack's own findings, and for those about several paths).

        ``walk(progress, cancel)`` gives the resolutions to check: :meth:`walk` by default;
        :mod:`.scan` gives a lean one that leaves out the names it proves clean."""
        for f in self.stack_findings():
            yield None, f
        if self.options.mount_errno:
            return
        # st_ino/st_dev reported twice (kernel/inode.py); what fsck.overlay would repair
        inodes, fsck = Collisions(self), Fsck(self)
        for res in (walk or self.walk)(progress, cancel):
            for f in res.findings:
                yield res, f
            inodes.add(res)
            fsck.add(res)
        for f in inodes.findings():
            yield None, f
        for f in fsck.findings():
            yield None, f

    def check(self, progress: Callable[[int], None] | None = None,
              cancel: Callable[[], bool] | None = None) -> list[Finding]:
        """Every finding of the stack and of every path its merged tree lists."""
        return [f for _, f in self.check_findings(progress, cancel)]

    def with_options(self, options: str, profile: KernelProfile | None = None) -> "Engine":
        """The same layers under other mount options, or on another kernel (what-if)."""
        # the stack as it is (its refusal too), with these options computed afresh
        stack = dataclasses.replace(self.stack, options=options, effective=None)
        return Engine(stack, kernel=self.kernel, profile=profile or self.profile)


class _RedirectReach:
    """Which regular layers an absolute metacopy redirect into a top-level directory walks:
    only those below the layer holding it (the lookup goes on downwards from there).

    The layers above are read only as far as the answer needs: a composefs metadata layer
    with redirects into every top-level directory of the object store answers after a few
    hundred files, where reading it whole doubled a check (4.5 s of 7 on 240,000 entries).
    """

    def __init__(self, engine: "Engine", regular: list[int]):
        self.engine = engine
        self.regular = regular
        #: top-level name -> the highest layer holding such a redirect, as found so far
        self._first: dict[bytes, int] = {}
        #: every regular layer up to this one has been read whole
        self._complete = -1
        self._events = self._redirects()

    def _redirects(self) -> Iterator[tuple[int, bytes | None]]:
        """(layer, top-level name) of each absolute metacopy redirect, layer after layer, top
        first; (layer, None) once a layer has been read whole."""
        e = self.engine
        for li in self.regular:
            for _, node in iter_tree(e.layer(li)):
                if not node.is_reg:
                    continue
                red = e._x(node, b"redirect")
                if red is None or not red.startswith(b"/") or e._x(node, b"metacopy") is None:
                    continue
                top = split_path(red)[:1]
                if top:
                    yield li, top[0]
            yield li, None

    def walked(self, li: int, name: bytes) -> bool:
        while True:
            first = self._first.get(name)
            if first is not None and first < li:
                return True
            if not any(self._complete < r < li for r in self.regular):
                return False  # every layer above li is read: none holds such a redirect
            event = next(self._events, None)
            if event is None:
                return False
            lj, top = event
            if top is None:
                self._complete = lj
            else:
                self._first.setdefault(top, lj)
