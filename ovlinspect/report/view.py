"""One per-layer view of a resolution, for the CLI (``explain``) and the interactive view alike.

For each layer of the stack: the path the lookup asked that layer for (the merged path, the
redirected one, the deepest prefix of a redirect a failed walk reached), the layer's entry
there, and the :class:`Role` it plays.  Computed once, here: the CLI's ``layers`` table and the
TUI's layer columns show the same roles on every path (they used to be computed by the engine
and revised again by the UI, and disagreed on some demo paths).

A successful lookup (or ENOENT) follows the chain the engine kept (``res.upper``,
``res.lowers``, ``res.metadata``, ``res.data``); a failed lookup keeps no chain, so its view is
built from where it failed (``res.cause``, ``res.looked_at``) and, when the failure happened
while walking an absolute redirect, from the deepest prefix of that redirect each layer below
holds.
"""

from __future__ import annotations

import enum
from typing import Iterator, NamedTuple

from ..kernel.entry import Ref, Resolution
from ..rules.engine import Engine
from ..model.layers import Node, Path, split_path
from ..model.xattrs import decode_xattrs


class Role(enum.StrEnum):
    """What one layer does for one path (the value is the word shown to the user)."""

    METADATA = "metadata"
    DATA = "data"
    METADATA_DATA = "metadata+data"
    STACK = "stack"
    WHITEOUT = "whiteout"
    HIDDEN = "hidden"
    INTERCEPTING = "intercepting"
    ABSENT = "absent"
    DATA_ONLY = "data-only (never merged)"
    NOT_LOOKED_AT = "not looked at"
    # a failed lookup
    LOOKED_AT = "looked at"
    CAUSE = "cause"
    NOT_REACHED = "not reached"
    REDIRECT_TARGET = "redirect target"
    REDIRECT_TARGET_NOT_REACHED = "redirect target (not reached)"
    ON_REDIRECT_PATH = "on the redirect path"
    REFUSED_HERE = "refused here"
    INVALID_HERE = "invalid here"

    @property
    def help(self) -> str:
        """A one-line gloss of the role."""
        return ROLE_HELP[self]

    @property
    def gives(self) -> bool:
        """The layer gives the path's inode or bytes (the columns that matter most)."""
        return self in (Role.METADATA, Role.DATA, Role.METADATA_DATA, Role.INTERCEPTING)

    @property
    def fails(self) -> bool:
        """The lookup fails or goes wrong at this layer."""
        return self in (Role.INTERCEPTING, Role.CAUSE, Role.REFUSED_HERE, Role.INVALID_HERE)

    @property
    def idle(self) -> bool:
        """The layer plays no part in the answer (absent, unused, never looked at)."""
        return self in (Role.ABSENT, Role.HIDDEN, Role.DATA_ONLY, Role.NOT_LOOKED_AT, Role.NOT_REACHED)


ROLE_HELP: dict[Role, str] = {
    Role.METADATA: "gives the inode (stat)",
    Role.DATA: "gives the bytes (read)",
    Role.METADATA_DATA: "gives stat and bytes",
    Role.STACK: "merged into the directory",
    Role.WHITEOUT: "hides the name from the layers below",
    Role.HIDDEN: "present, not used",
    Role.INTERCEPTING: "serves bytes meant for a data-only layer",
    Role.ABSENT: "nothing here",
    Role.DATA_ONLY: "reached only through metacopy redirects",
    Role.NOT_LOOKED_AT: "the lookup ends above this layer",
    Role.LOOKED_AT: "the lookup fails (see the explanation)",
    Role.CAUSE: "the lookup fails here (see the explanation)",
    Role.NOT_REACHED: "present; the lookup fails before it",
    Role.REDIRECT_TARGET: "what the redirect meant; a regular layer answered first",
    Role.REDIRECT_TARGET_NOT_REACHED: "what the redirect meant; the lookup fails before it",
    Role.ON_REDIRECT_PATH: "the lookup walks through this",
    Role.REFUSED_HERE: "the mount's options refuse to follow this",
    Role.INVALID_HERE: "the kernel rejects this entry's xattrs",
}


class LayerRow(NamedTuple):
    """One layer at one path: ``(layer, path, node, role)``."""

    layer: int  #: the kernel's layer number (0 = upper, 1.. lowers, then data-only layers)
    path: Path  #: where this layer was asked
    node: Node | None  #: its entry there
    role: Role


class LayerView:
    """Each layer of the stack for one resolution, top first (iterates :class:`LayerRow`)."""

    def __init__(self, rows: list[LayerRow], on_redirect_path: set[int]):
        self.rows = rows
        #: layers a failed walk down an absolute redirect went through (their ``path`` is the
        #: deepest prefix of the redirect they hold)
        self.on_redirect_path = on_redirect_path

    def __iter__(self) -> Iterator[LayerRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def roles(self) -> dict[int, Role]:
        return {r.layer: r.role for r in self.rows}

    def row(self, layer: int) -> LayerRow | None:
        return next((r for r in self.rows if r.layer == layer), None)


def _shadowed(res: Resolution) -> bool:
    return any(f.rule == "shadowed-lowerdata" for f in res.findings)


def layer_view(engine: Engine, res: Resolution) -> LayerView:
    """The per-layer view of ``res`` (see the module docstring)."""
    if res.errno is not None and res.errno != "ENOENT":
        return _failure_view(engine, res)
    return LayerView(_found_view(engine, res), set())


def _found_view(engine: Engine, res: Resolution) -> list[LayerRow]:
    """A lookup that succeeded, or found nothing (ENOENT): the chain the engine kept."""
    absolute = bool(res.redirect and res.redirect.startswith(b"/"))
    out = []
    used = {r.layer: r.path for r in res.lowers}
    if res.upper is not None:
        used[0] = res.upper
    # where each layer was asked: the parent's copy in that layer plus the (redirected) name
    asked: dict[int, Path] = {}
    if res.path and not res.via_symlink:
        parent = engine.resolve(res.path[:-1])
        name = res.path[-1]
        if res.redirect and not absolute and res.kind == "dir":
            name = res.redirect
        copies = ([Ref(0, parent.upper)] if parent.upper is not None else []) + list(parent.lowers)
        asked = {r.layer: r.path + (name,) for r in copies}
        if absolute and res.kind == "dir":
            first = min(used) if used else 0
            asked.update({r.layer: split_path(res.redirect) for r in engine.root_lowers
                          if r.layer > first})
    shadowed = _shadowed(res)
    for li in range(len(engine.klayers)):
        if engine.klayers[li] is None:
            continue
        path = used.get(li, asked.get(li, res.path))
        walked = (absolute and res.kind != "dir" and res.metadata is not None
                  and li > res.metadata.layer and li not in used)
        if res.data is not None and res.data.layer == li:
            path = res.data.path
        elif walked:  # regular layers below the metacopy, and data-only layers, see the redirect
            path = split_path(res.redirect)
        node = engine.layer(li).node(path)
        role = Role.ABSENT if node is None else Role.HIDDEN
        if res.whiteout is not None and res.whiteout.layer == li:
            role = Role.WHITEOUT
            path = res.whiteout.path
        if res.metadata is not None and res.metadata.layer == li:
            role = Role.METADATA_DATA if res.data == res.metadata else Role.METADATA
        elif res.data is not None and res.data.layer == li:
            role = Role.INTERCEPTING if shadowed else Role.DATA
        elif li in used:
            role = Role.STACK
        elif li > engine.nlower and not absolute:
            role = Role.DATA_ONLY
        elif li > engine.nlower and shadowed and role is Role.HIDDEN:
            role = Role.REDIRECT_TARGET  # what the redirect meant; a regular layer answered first
        elif asked and li not in asked and not walked and role is Role.ABSENT:
            role = Role.NOT_LOOKED_AT  # the parent directory has no copy in this layer
        elif res.whiteout is not None and li > res.whiteout.layer and role is Role.ABSENT:
            role = Role.NOT_LOOKED_AT  # the whiteout above ends the lookup
        elif (res.stopped_at is not None and res.stopped_at < li <= engine.nlower
              and role is Role.ABSENT and not walked):
            role = Role.NOT_LOOKED_AT  # an entry above ends the walk down the layers
        out.append(LayerRow(li, path, node, role))
    return out


def _failure_view(engine: Engine, res: Resolution) -> LayerView:
    """A failed lookup: where it fails, what led there, what was meant."""
    target = split_path(res.redirect) if res.redirect and res.redirect.startswith(b"/") else None
    rows: list[LayerRow] = []
    for li in range(len(engine.klayers)):
        if engine.klayers[li] is None:
            continue
        path, role = res.path, None
        if res.cause is not None and res.cause.layer == li:
            path, role = res.cause.path, Role.CAUSE
        elif res.looked_at is not None and res.looked_at.layer == li:
            path, role = res.looked_at.path, Role.LOOKED_AT
        elif li > engine.nlower and target is not None:
            path, role = target, Role.REDIRECT_TARGET_NOT_REACHED
        node = engine.layer(li).node(path)
        rows.append(LayerRow(li, path, node, role or (Role.ABSENT if node is None else Role.NOT_REACHED)))
    return _walk_failed_redirect(engine, res, rows)


def _walk_failed_redirect(engine: Engine, res: Resolution, view: list[LayerRow]) -> LayerView:
    """A failed lookup keeps no chain: show the layers below a redirect at the redirect's path.

    When the top entry carries an absolute redirect and the lookup failed while walking it,
    the interesting entries below are at the redirect path (the plain directory that cancels
    it, the data-only file it meant), not at the merged path.  The layers the findings name
    are the cause; an EPERM/EINVAL before the walk is refused/invalid at the top entry.
    """
    involved = {engine.kernel_index(j) for f in res.findings for j in f.layers}
    # only these failures happen while (or after) walking the redirect; a refusal (EPERM) or an
    # invalid redirect (EINVAL) stops before the layers below are looked at
    walked = any(f.rule in ("lowerdata-redirect-broken", "metacopy-without-data") for f in res.findings)
    redirect: bytes | None = None
    top = None
    for row in view:
        if row.node is not None:
            top = row.layer
            for x in decode_xattrs(row.node, engine.prefix):
                if x.redirect is not None and x.redirect.startswith(b"/") and x.active:
                    redirect = x.redirect
            break
    rp = split_path(redirect) if walked and redirect is not None else None
    out: list[LayerRow] = []
    on_path: set[int] = set()
    for k, p, node, role in view:
        if rp is not None and top is not None and k > top:
            layer = engine.klayers[k]
            found: Path | None = None
            if layer is not None:
                # the deepest prefix of the redirect this layer holds: where the walk stopped
                for i in range(len(rp), 0, -1):
                    n = layer.node(rp[:i])
                    if n is not None:
                        found, node = rp[:i], n
                        break
            if found is not None:
                p = found
                on_path.add(k)
                role = (Role.REDIRECT_TARGET_NOT_REACHED if k > engine.nlower and found == rp
                        else Role.ON_REDIRECT_PATH)
        if k == top and res.errno in ("EPERM", "EINVAL") and not walked:
            role = Role.REFUSED_HERE if res.errno == "EPERM" else Role.INVALID_HERE
        below = any(j > k for j in involved)
        if (k in involved and node is not None and not (k == top and below)
                and role not in (Role.REFUSED_HERE, Role.INVALID_HERE)):
            role = Role.CAUSE
        out.append(LayerRow(k, p, node, role))
    return LayerView(out, on_path)
