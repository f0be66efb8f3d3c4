"""Lookup: what the kernel does with one merged path (``fs/overlayfs/namei.c``).

Per-layer lookup of one component (``ovl_lookup_single``), the walk of absolute redirects
from the layer root (``ovl_lookup_layer``), the loop over the lower stack (``ovl_lookup``),
with the checks of ``ovl_check_follow_redirect``, the inode aliasing of ``ovl_get_inode``, and
the path walk of ``lstat(2)`` (``..``, a trailing ``/``, symlinks in the middle).  Every step
is written to the resolution's trace (a no-op trace for the hot scan).
"""

from __future__ import annotations

import dataclasses
import os

from ..model.layers import Node, Path, split_path
from ..model.xattrs import redirect_valid
from ..rules.catalogue import Finding
from .entry import (MAX_SYMLINK_HOPS, NAME_MAX, LookupFailed, Ref, Resolution, _LookupData,
                    pd2, show, show_path, show_raw)


class Lookup:
    """Mixin of :class:`~.overlay.Overlay`: lookup of merged paths."""

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
                child = self.lookup_child(cur, name)
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
                self.tracer.to(res).append(f"{show_path(sub)} is a {child.kind}, not a directory: ENOTDIR")
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
            self.tracer.to(res).append("too many levels of symbolic links: ELOOP")
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

    def lookup_child(self, parent: Resolution, name: bytes) -> Resolution:
        """``ovl_lookup`` of one name in a directory already looked up (no cache: a walk of a
        whole tree calls it once per name, the parent's resolution in hand)."""
        path = parent.path + (name,)
        res = Resolution(path=path)
        t = self.tracer.to(res)
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
            t.append(f"=> {e.why}: {e.errno}")
            if e.rule:
                res.findings.append(Finding(e.rule, b"/" + b"/".join(path), e.why,
                                            [self.json_index(x) for x in e.layers]))
            res.upper = None
            res.lowers = []
            res.cause = e.cause
            res.looked_at = d.metacopy_at or d.redirect_from
            res.redirect = d.redirect
            self._after_lookup(parent, name, res, ok=False)
        else:
            self._after_lookup(parent, name, res, ok=True)
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
        t = self.tracer.to(res)
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
                    t.append(f"upper redirect '{show(d.redirect)}' is absolute: the lower lookup "
                             "starts again from the layer roots")
            res.opaque = d.opaque
        if d.stop and parent.lowers and poe:
            res.stopped_at = 0
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
                t.append("absolute redirect: continuing from the root stack below "
                         f"{self.label(lower.layer)}")
            i += 1

        deferred: bytes | None = None
        if d.metacopy and stack and self.ndata and d.absolute_redirect:
            d.metacopy = 0
            deferred = d.redirect
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
                t.append(f"=> hidden by the whiteout in {self.where(res.whiteout)}: ENOENT")
            else:
                t.append("=> in no layer: ENOENT")
            return

        if d.is_dir and stack and self._index is not None and self.options.nfs_export:
            # nfs_export=on indexes directories too: the verified origin names an index entry
            log = self._index.check_dir(upper_path, stack[0])
            if log:
                raise LookupFailed("EIO", log, "nfs_export=on: the directory index entry named by "
                                   "this directory's origin does not belong to it (a lower directory "
                                   "moved or renamed since it was copied up, or a damaged index)",
                                   "index-entry-bad", [0])

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
            t.append(("merged" if res.merge else "non-merged (readdir passes through)")
                     + f" directory: {self._stack_text(res)}")
            return
        if self._index is not None:
            log = self._index.check(res, upper_path, stack)
            if log is True:
                return  # served from the index entry (check() set res.data)
            if log:
                raise LookupFailed("EIO", log, "index=on: the index entry named by this file's "
                                   "origin is a whiteout or of another type (a stale or damaged "
                                   "index)", "index-entry-bad", [0])
        if res.kind != "file":
            return
        res.redirect = d.redirect
        if upper_path is not None and not uppermetacopy:
            res.data = Ref(0, upper_path)
            t.append(f"data: {self.where(res.data)} (upper file, not a metacopy)")
            return
        res.metacopy = uppermetacopy or len(stack) > 1 or deferred is not None
        if deferred is not None:
            res.lowerdata_redirect = deferred
            self._lazy_data(res, deferred)
        else:
            res.data = stack[-1]
            if res.data != res.metadata:
                t.append(f"data: {self.where(res.data)} (below the metacopy)")
            else:
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
        self.tracer.to(res).append(f"{self.label(li)}: walking '{show(d.name)}' from the layer root")
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
        t = self.tracer.to(res)
        layer = self.layer(li)
        last_element = not post
        is_upper = li == 0
        p = base + (name,)
        where = self.where(Ref(li, p)) if self.tracer.on else ""
        if name in (b"", b".", b".."):
            # lookup_one() refuses these names outright
            raise LookupFailed("EACCES", None, f"{self.label(li)}: the name '{show(name)}' cannot be "
                               "looked up in a layer (a redirect led here)", "invalid-redirect", [li])
        node = layer.node(p)
        if node is None:
            t.append(f"{where}: absent")
            return None
        if self.is_whiteout(node):
            d.stop = d.opaque = True
            kind = "0/0 whiteout" if node.is_whiteout_dev else "xattr whiteout"
            t.append(f"{where}: {kind}; lower layers are hidden")
            if last_element:
                res.whiteout = Ref(li, p)
            return None
        if last_element and d.metacopy and not node.is_reg:
            d.stop = True
            t.append(f"{where}: {node.kind}, but a metacopy above needs a regular file; stop")
            return None
        if not node.is_dir:
            if d.is_dir or not last_element:
                d.stop = True
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
                    t.append(f"{where}: regular file (its redirect xattr is ignored: not a metacopy)")
                    res.findings.append(Finding(
                        "redirect-ignored", b"/" + b"/".join(res.path),
                        f"{self.where(Ref(li, p))} carries a redirect xattr but no metacopy xattr; the kernel "
                        "serves the file itself", [self.json_index(li)]))
                else:
                    t.append(f"{where}: {node.kind}" + (f", {node.size} bytes" if node.is_reg else ""))
                return p
            if d.last:
                t.append(f"{where}: metacopy file (bottom layer: redirect not read)")
                return p
            t.append(f"{where}: metacopy file ({node.size} bytes)")
        else:
            if last_element:
                d.is_dir = True
            if d.last:
                t.append(f"{where}: directory (bottom layer: opaque and redirect not read)")
                return p
            val = self.opaque_value(node)
            if last_element and not is_upper and val == b"x":
                d.xwhiteouts = True
                d.x_layers = (d.x_layers or set()) | {li}
                t.append(f"{where}: directory with opaque=x (holds xattr whiteouts; not opaque)")
            elif val == b"y":
                d.stop = True
                if last_element:
                    d.opaque = True
                t.append(f"{where}: opaque directory; lower layers are hidden" + (
                    "" if last_element else " (the walk goes on in this layer)"))
                return p
            else:
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
                self.tracer.to(res).append(f"  {self.where(Ref(li, p))} has no redirect: the absolute redirect "
                                 "no longer counts (data-only layers will not be searched)")
            return
        buf = value.split(b"\0", 1)[0]
        if not redirect_valid(value):
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
            self.tracer.to(res).append(f"  absolute redirect '{show(buf)}': now looking for '{show(new)}'")
        else:
            new = d.name[:prelen] + buf + post
            self.tracer.to(res).append(f"  relative redirect '{show(buf)}': now looking for '{show(new)}'")
        d.redirect = new
        d.name = new

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

    def _after_lookup(self, parent: Resolution, name: bytes, res: Resolution, ok: bool) -> None:
        """Called after each lookup; the diagnostics (:mod:`ovlinspect.rules`) hook in here."""
