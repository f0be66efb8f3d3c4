"""The merged tree: what readdir lists, loaded one directory at a time, with markers.

Directories are listed in a worker thread (by a :class:`~ovlinspect.ui.session.Lister` with its
own engine), and only when expanded.  A directory of any size is listed whole, at once, with its
names only: an entry is resolved (on the UI thread, with the screen's engine) the first time
its row is drawn, so only the rows on screen cost a lookup, and any entry (``End``, a problem
deep in a 20,000-entry directory) is one jump away.  Each entry is coloured by the layer that
gives its metadata and marked with what matters: a dot per layer whose copy the merged entry
uses, redirect, metacopy, opaque, lookup and open errors, problems found by the scan, what-if
changes.  With *show hidden* on, the tree
also shows what the merged view hides: whited-out names, lower copies, and the contents of the
data-only layers.
"""

from __future__ import annotations

import asyncio
import gc
from dataclasses import dataclass
from typing import Sequence

from rich.style import Style
from rich.text import Text
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from ..rules.engine import Engine
from ..kernel.entry import Resolution
from ..model.layers import Node, Path
from ..rules.catalogue import RULES, Finding
from .palette import LayerPalette
from .render import esc, esc_str, kind_short, path_text
from .session import Child, Lister
from .style import Ink, ink_of

#: how a tree row names a whiteout (a 0/0 character device)
WHITEOUT_LONG = "whiteout (0/0 chardev)"

#: the label of a row not drawn yet (see :meth:`MergedTree.render_label`)
_NO_LABEL = Text()

#: more layers than this make a directory's dots a count
MAX_DOTS = 6

SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}
SEVERITY_MARK = {"error": "✖", "warning": "▲", "info": "ℹ"}
#: severity colours, from the theme (see :mod:`.style`): resolve with an :class:`.style.Ink`
SEVERITY_STYLE = {"error": "bold $text-error", "warning": "bold $text-warning", "info": "$text-primary"}


def severity_of(f: Finding, unknown: str = "error") -> str:
    """The severity of ``f``'s rule; ``unknown`` for a rule the table does not know."""
    return RULES[f.rule].severity if f.rule in RULES else unknown


@dataclass(eq=False, slots=True)
class Entry:
    """What one tree line stands for."""

    path: Path
    #: merged | whiteout | copy | datalayer | layerpath | loading | message | asked
    #: ("asked": a name the user asked for that the listing does not show, with ``rest`` the
    #: components asked below it)
    kind: str = "merged"
    res: Resolution | None = None
    reason: str = ""
    layer: int | None = None
    node: Node | None = None
    loaded: bool = False
    #: for "asked": the components asked below this name
    rest: Sequence[bytes] = ()
    hidden_copies: Sequence[tuple[int, Path, Node]] = ()
    #: for copies: the path inside the layer
    lpath: Path | None = None
    # label cache
    text: Text | None = None
    text_gen: int = -1

    @property
    def is_dir(self) -> bool:
        if self.kind == "merged":
            return self.res is not None and self.res.is_dir
        if self.kind in ("layerpath", "datalayer"):
            return self.node is not None and self.node.is_dir
        return False


class MergedTree(Tree[Entry]):
    """The merged view of the stack (see the module docstring)."""

    BINDINGS = [
        ("right", "expand_node", "Expand"),
        ("left", "collapse_or_parent", "Collapse"),
    ]

    def __init__(self, lister: Lister, palette: LayerPalette, *, engine: Engine, **kwargs) -> None:
        super().__init__(Text("/", style="bold"), Entry(()), **kwargs)
        #: the engine on screen (the lister has its own copy for its thread)
        self.engine = engine
        self.lister = lister
        self.palette = palette
        self.show_hidden = False
        self.gen = 0
        #: scan results: path -> [errors, warnings, infos] at the path, and below a directory
        self.problems_at: dict[Path, list[int]] = {}
        self.problems_below: dict[Path, list[int]] = {}
        #: what-if: paths whose outcome changes
        self.changed: set[Path] = set()
        self.guide_depth = 2
        self._pending: dict[int, asyncio.Future] = {}
        #: merged entries listed so far, by path (to repaint one when the scan finds something,
        #: to reach one in a jump)
        self.by_path: dict[Path, TreeNode[Entry]] = {}
        #: keys the user pressed on the tree (a jump started before one does not move the cursor)
        self.user_keys = 0
        #: the last reveal gave up because the user pressed a key meanwhile
        self.reveal_abandoned = False
        #: the theme's colours, captured once per repaint (labels are drawn per row)
        self.ink = Ink()

    # ------------------------------------------------------------------ loading
    def on_mount(self) -> None:
        self.ink = ink_of(self)
        self.root.expand()
        self.start_load(self.root)

    def restart(self, lister: Lister, palette: LayerPalette, *, engine: Engine) -> None:
        """Start again on another engine (what-if) or with hidden entries toggled."""
        self.engine = engine
        self.lister = lister
        self.palette = palette
        self._pending.clear()
        self.by_path = {}
        self.clear()
        self.root.data = Entry(())
        self.gen += 1
        self.root.expand()

    def start_load(self, node: TreeNode[Entry]) -> None:
        e = node.data
        if e is None or e.loaded or node.id in self._pending:
            return
        self.run_worker(self.ensure_loaded(node), group="tree-load", exit_on_error=False)

    async def ensure_loaded(self, node: TreeNode[Entry]) -> None:
        e = node.data
        if e is None or e.loaded:
            return
        fut = self._pending.get(node.id)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._pending[node.id] = fut
            try:
                await self._load(node)
            except Exception as err:  # show it in the tree; never take the app down
                node.remove_children()
                node.add_leaf(esc_str(f"cannot list: {err}", "red"), Entry(e.path, "message"))
                e.loaded = True
            finally:
                fut.set_result(None)
                self._pending.pop(node.id, None)
        else:
            await fut

    async def _load(self, node: TreeNode[Entry]) -> None:
        e = node.data
        assert e is not None
        if not node.children:
            node.add_leaf(Text("loading…", style="dim italic"), Entry(e.path, "loading"))
        lister = self.lister
        hidden = self.show_hidden
        if e.kind in ("datalayer", "layerpath"):
            assert e.layer is not None
            rows = await asyncio.to_thread(lister.list_layer, e.layer, e.path)
            if lister is not self.lister:
                return
            node.remove_children()
            self._add_many(node, [(esc(name), Entry(e.path + (name,), "layerpath", layer=e.layer, node=n,
                                                    loaded=not n.is_dir), n.is_dir)
                                  for name, n in rows])
            e.loaded = True
            return
        # names only (cheap); with hidden entries on, every child resolved in the worker (its
        # hidden copies make a file expandable, which must be known before it is drawn)
        listing = await asyncio.to_thread(lister.list_dir, e.path, (1 << 62) if hidden else 0, hidden)
        if lister is not self.lister:
            return  # the tree was reset meanwhile
        node.remove_children()
        if listing.error:
            node.add_leaf(esc_str(f"cannot list: {listing.error}", "red"), Entry(e.path, "message"))
            e.loaded = True
            return
        if hidden:
            for k, p, n in e.hidden_copies:
                self._add_copy(node, e.path, k, p, n)
            items: list[tuple[bytes, Child | str]] = [(c.name, c) for c in listing.children]
            items += sorted(listing.hidden.items())
            items.sort(key=lambda x: x[0])
            for name, item in items:
                if isinstance(item, str):
                    self._add_whiteout(node, e.path + (name,), item)
                else:
                    self._add_child(node, e.path, item)
        else:
            # no label per row: render_label draws each row from its entry when it is on screen
            rows = [(_NO_LABEL, Entry(e.path + (name,), "merged"), False) for name in listing.names]
            for child in self._add_many(node, rows):
                assert child.data is not None
                self.by_path[child.data.path] = child
        if hidden and not e.path:
            for k in range(self.engine.nlower + 1, len(self.engine.klayers)):
                lab = Text()
                lab.append_text(self.palette.chip(k))
                lab.append(" data-only layer contents (not in the merged view)", "italic dim")
                layer = self.engine.klayers[k]
                root = layer.node(()) if layer is not None else None
                node.add(lab, Entry((), "datalayer", layer=k, node=root))
        e.loaded = True

    def _add_many(self, parent: TreeNode[Entry], rows: list[tuple[Text, Entry, bool]]) -> list[TreeNode[Entry]]:
        """Add ``(label, entry, allow_expand)`` rows under ``parent`` at once.

        ``TreeNode.add`` invalidates the whole tree for each node (20,000 entries: 1.1 s); this
        adds them in one go through the same internals and invalidates once (0.4 s).  Should
        a Textual release rename those internals, it falls back to ``add``.
        """
        out: list[TreeNode[Entry]] = []
        try:
            make = self._add_node
            kids = parent._children
        except AttributeError:  # pragma: no cover - another Textual
            for label, entry, expandable in rows:
                out.append(parent.add(label, entry, allow_expand=expandable))
            return out
        # tens of thousands of new objects: the collector would walk the whole heap (the
        # engine's caches) several times over; nothing here makes a cycle
        collecting = gc.isenabled()
        gc.disable()
        try:
            for label, entry, expandable in rows:
                n = make(parent, label, entry)
                n._allow_expand = expandable
                kids.append(n)
                out.append(n)
        finally:
            if collecting:
                gc.enable()
        parent._updates += 1
        self._invalidate()
        return out

    def process_label(self, label) -> Text:
        # labels made here are single-line Text already (names are escaped): skip the split
        if isinstance(label, Text) and "\n" not in label.plain:
            return label
        return super().process_label(label)

    def resolved(self, node: TreeNode[Entry]) -> Resolution | None:
        """The resolution of a merged row, computed the first time it is needed (drawn,
        selected, expanded): a large directory costs a lookup only for the rows seen."""
        e = node.data
        if e is None or e.kind != "merged":
            return e.res if e is not None else None
        if e.res is None:
            e.res = self.engine.resolve(e.path)
            if e.res.is_dir and not node._allow_expand:
                node._allow_expand = True
                node._updates += 1
        return e.res

    def _add_child(self, parent: TreeNode[Entry], path: Path, c: Child) -> TreeNode[Entry]:
        entry = Entry(path + (c.name,), "merged", res=c.res, hidden_copies=c.hidden_copies)
        label = esc(c.name)
        if c.res.is_dir:
            node = parent.add(label, entry)
        elif c.hidden_copies:
            node = parent.add(label, entry)
            for k, p, n in c.hidden_copies:
                self._add_copy(node, entry.path, k, p, n)
            entry.loaded = True
        else:
            node = parent.add_leaf(label, entry)
        self.by_path[entry.path] = node
        return node

    def _add_copy(self, parent: TreeNode[Entry], merged: Path, k: int, p: Path, n: Node) -> None:
        parent.add_leaf(Text(""), Entry(merged, "copy", layer=k, node=n, lpath=p, loaded=True))

    def _add_whiteout(self, parent: TreeNode[Entry], path: Path, reason: str) -> None:
        parent.add_leaf(esc(path[-1]), Entry(path, "whiteout", reason=reason, loaded=True))

    def add_asked(self, parent: TreeNode[Entry], path: Path) -> TreeNode[Entry] | None:
        """A row for the path asked for, whose first unlisted name is under ``parent``."""
        pe = parent.data
        if pe is None or path[: len(pe.path)] != pe.path or len(path) <= len(pe.path):
            return None
        first = path[: len(pe.path) + 1]
        for child in parent.children:
            d = child.data
            if d is not None and d.kind == "asked" and d.path == first:
                return child
        res = self.engine.resolve(path)
        entry = Entry(first, "asked", res=res, rest=list(path[len(first):]), loaded=True)
        if not parent.is_expanded:
            parent.expand()
        return parent.add_leaf(esc(first[-1]), entry)

    def scroll_to_line(self, line: int, animate: bool = True) -> None:
        # no animation: a jump (End, a problem 19,000 rows down) lands at once, and the rows it
        # would scroll past are never drawn, so never resolved
        super().scroll_to_line(line, animate=False)

    def on_tree_node_expanded(self, event: Tree.NodeExpanded[Entry]) -> None:
        if event.node.tree is self:
            self.start_load(event.node)

    def on_key(self, event) -> None:
        # a key for the tree: a jump still loading must not move the cursor afterwards
        self.user_keys += 1

    # ------------------------------------------------------------------ keys
    def action_expand_node(self) -> None:
        node = self.cursor_node
        if node is None:
            return
        self.resolved(node)
        if node.allow_expand and not node.is_expanded:
            node.expand()
        elif node.children:
            self.move_cursor(node.children[0])

    def action_collapse_or_parent(self) -> None:
        node = self.cursor_node
        if node is None:
            return
        if node.is_expanded and node.allow_expand:
            node.collapse()
        elif node.parent is not None:
            self.move_cursor(node.parent)

    # ------------------------------------------------------------------ finding paths
    def build_lines(self) -> None:
        """Make line numbers current (after adding nodes) before moving the cursor."""
        self._tree_lines  # noqa: B018 - the property rebuilds the line list

    async def reveal(self, path: Path) -> TreeNode[Entry] | None:
        """Expand the tree down to ``path`` (loading as needed) and put the cursor on it.

        Returns the node, or the deepest ancestor found when the name is not listed.  When the
        user presses a key on the tree while a directory on the way is being listed, the jump
        is abandoned (``reveal_abandoned``; None returned): the cursor never moves on its own
        after a key.
        """
        keys = self.user_keys
        self.reveal_abandoned = False

        def stale() -> bool:
            if self.user_keys != keys:
                self.reveal_abandoned = True
            return self.reveal_abandoned

        node = self.root
        await self.ensure_loaded(node)
        if stale():
            return None
        for i in range(1, len(path) + 1):
            want = path[:i]
            found = self.by_path.get(want)
            if found is None or found.parent is not node:
                found = next((c for c in node.children if c.data is not None and c.data.path == want
                              and c.data.kind in ("merged", "whiteout")), None)
            if found is None:
                break
            node = found
            if i < len(path):
                res = self.resolved(node)
                if res is not None and not res.is_dir:
                    break
                if not node.is_expanded:
                    node.expand()
                await self.ensure_loaded(node)
                if stale():
                    return None
        self.resolved(node)
        self.build_lines()
        self.move_cursor(node)
        return node

    def find_loaded(self, path: Path) -> TreeNode[Entry] | None:
        if not path:
            return self.root
        node = self.by_path.get(path)
        return node if node is not None and node.data is not None and node.data.kind == "merged" else None

    def expanded_paths(self) -> list[Path]:
        out: list[Path] = []

        def visit(n: TreeNode[Entry]) -> None:
            for c in n.children:
                if c.is_expanded and c.data is not None and c.data.kind == "merged":
                    out.append(c.data.path)
                    visit(c)

        visit(self.root)
        return out

    # ------------------------------------------------------------------ labels
    def repaint_paths(self, paths: set[Path]) -> None:
        """Recompute the labels of these paths, where the tree shows them."""
        changed = False
        for p in paths:
            node = self.by_path.get(p) if p else self.root
            if node is not None and node.data is not None:
                node.data.text = None
                changed = True
        if changed:
            # a label that grows or shrinks changes the tree's width (its horizontal scrollbar)
            self._invalidate()

    def repaint_labels(self) -> None:
        """Labels depend on scan results, what-if state and the theme: recompute the visible ones."""
        self.ink = ink_of(self)
        self.gen += 1
        self._invalidate()

    def _label_text(self, node: TreeNode[Entry], e: Entry) -> Text:
        """The entry's label, computed once per change (no resolving: formatting only)."""
        if e.text is None or e.text_gen != self.gen:
            e.text = self.entry_text(node, e)
            e.text_gen = self.gen
        return e.text

    def get_label_width(self, node: TreeNode[Entry]) -> int:
        # Called for every line when the tree is rebuilt.  The width must be the label's real
        # width whether or not the line has been painted yet: an estimate made the tree's
        # horizontal scrollbar depend on paint timing (the flaky snapshots).
        e = node.data
        if e is None:
            return super().get_label_width(node)
        if e.kind == "merged" and e.path:
            # A merged row is resolved only when drawn (a directory may hold 100,000 names), so
            # its real label is not known before: the width comes from the name alone, the
            # same whether or not the row was painted (an estimate that changed once painted
            # made the layout depend on paint timing: the flaky snapshots).
            return len(e.path[-1]) + 14
        return self._label_text(node, e).cell_len + 2  # + the "▶ " prefix

    def render_label(self, node: TreeNode[Entry], base_style: Style, style: Style) -> Text:
        e = node.data
        if e is None:
            return super().render_label(node, base_style, style)
        if e.kind == "merged" and e.res is None:
            self.resolved(node)  # drawn for the first time: resolve it now (see the docstring)
        label = self._label_text(node, e)
        if e.kind == "merged" and e.res is not None and (e.res.errno or e.res.open_errno or any(
                f.rule == "shadowed-lowerdata" for f in e.res.findings)):
            depth, up = 0, node.parent
            while up is not None:
                depth, up = depth + 1, up.parent
            guides = depth * self.guide_depth if self.show_root else max(0, depth - 1) * self.guide_depth
            if guides + 2 + label.cell_len > self.scrollable_content_region.width:
                label = self.entry_text(node, e, marks_first=True)
        label = label.copy()
        label.stylize(style)
        if node.allow_expand and (node.children or not e.loaded):
            prefix = ("▼ " if node.is_expanded else "▶ ", base_style + Style(bold=True))
        else:
            prefix = ("  ", base_style)
        return Text.assemble(prefix, label)

    def entry_text(self, node: TreeNode[Entry], e: Entry, marks_first: bool = False) -> Text:
        pal = self.palette
        ink = self.ink
        t = Text()
        if e.kind == "loading":
            return Text("loading…", style="dim italic")
        if e.kind == "message":
            return node.label.copy()
        if e.kind == "copy":
            assert e.layer is not None and e.node is not None
            t.append("hidden copy in ", "dim italic")
            t.append_text(pal.tag(e.layer))
            t.append(" ")
            t.append_text(path_text(e.lpath or (), "dim"))
            t.append(f"  {kind_short(e.node, WHITEOUT_LONG)}", "dim")
            return t
        if e.kind == "datalayer":
            return node.label.copy()
        if e.kind == "layerpath":
            assert e.layer is not None
            t.append_text(esc(e.path[-1], pal.style(e.layer)))
            if e.node is not None:
                if e.node.is_dir:
                    t.append("/", pal.style(e.layer))
                t.append(f"  {kind_short(e.node, WHITEOUT_LONG)}", "dim")
            return t
        if e.kind == "asked":
            t.append_text(esc(b"/".join((e.path[-1], *e.rest)), ink("bold $text-error")))
            err = e.res.errno if e.res is not None else None
            if err:
                t.append(f" {err} ", Style(color="white", bgcolor="#d70000", bold=True))
            t.append("  asked for; not listed here", "italic dim")
            return t
        if e.kind == "whiteout":
            t.append_text(esc(e.path[-1], Style(strike=True, dim=True)))
            t.append("  whiteout", ink("bold $whiteout"))
            # "0/0 whiteout in upper 0 (upper):/etc/motd" says the name and "whiteout" again:
            # the layer alone, by its short name, so that the row fits the pane
            head = "0/0 whiteout in "
            k = next((k for k in pal.colors if e.reason.startswith(head + self.engine.label(k) + ":")), None)
            if k is not None:
                t.append(" in ", "dim")
                t.append_text(pal.tag(k))
            else:
                t.append("  " + e.reason, "dim")
            return t
        res = e.res
        if res is None:
            return node.label.copy()
        name_style = Style(bold=res.is_dir)
        if res.errno:
            name_style += ink("$text-error")
        elif res.metadata is not None:
            name_style += pal.style(res.metadata.layer)
        t.append_text(esc(e.path[-1], name_style) if e.path else Text("/", name_style))
        if res.is_dir and e.path:
            t.append("/", name_style)
        # one dot per layer the merged entry is made of (a directory's merged copies; a file's
        # metadata and data), in the layers' colours
        dots = []
        if res.errno is None:
            if res.upper is not None:
                dots.append(0)
            dots += [r.layer for r in res.lowers]
            if res.data is not None and res.data.layer not in dots:
                dots.append(res.data.layer)
        dot_text = Text()
        if len(dots) > MAX_DOTS:
            # a directory merged from 25 layers: the top one's dot and the count
            dot_text.append(" ")
            dot_text.append("●", pal.style(dots[0]))
            dot_text.append(f"×{len(dots)}", "dim")
        elif dots:
            dot_text.append(" ")
            for k in dots:
                dot_text.append("●", pal.style(k))
        # what is wrong first (the pane is narrow), then what the entry is
        wrong = Text()
        if res.errno == "ENOENT":
            wrong.append("  phantom: lookup ENOENT", ink("bold $text-warning"))
        elif res.errno:
            wrong.append(f" {res.errno} ", Style(color="white", bgcolor="#d70000", bold=True))
        if res.open_errno:
            wrong.append(" ")
            wrong.append(f" open {res.open_errno} ", Style(color="white", bgcolor="#af005f", bold=True))
        rules = {f.rule for f in res.findings}
        if "shadowed-lowerdata" in rules:
            wrong.append(" ")
            wrong.append(" SHADOWED ", ink("bold white on $intercept"))
        if marks_first and wrong:
            # a deep row that must be cut: the verdict before the dots, so the cut takes the dots
            t.append_text(wrong)
            t.append_text(dot_text)
        else:
            t.append_text(dot_text)
            t.append_text(wrong)
        counts = list(self.problems_at.get(e.path, [0, 0, 0]))
        for f in res.findings:
            sev = severity_of(f, unknown="info")
            if not counts[SEVERITY_RANK[sev]]:
                counts[SEVERITY_RANK[sev]] = 1
        if "shadowed-lowerdata" in rules and counts[0] == 1:
            counts[0] = 0  # SHADOWED says it already
        marks = [(SEVERITY_MARK[s], ink(SEVERITY_STYLE[s])) for s, n in zip(("error", "warning", "info"), counts) if n]
        if marks:
            t.append(" ")
            for mark, style in marks:
                t.append(mark, style)
        below = self.problems_below.get(e.path)
        if below and res.is_dir:
            parts = [f"{n}{SEVERITY_MARK[s]}" for s, n in zip(("error", "warning", "info"), below) if n]
            if parts:
                worst = "error" if below[0] else ("warning" if below[1] else "info")
                t.append("  (" + " ".join(parts) + " below)", ink(SEVERITY_STYLE[worst]))
        if e.path in self.changed:
            t.append(" ")
            t.append(" Δ what-if ", ink("bold black on $whatif" if ink.dark else "bold white on $whatif"))
        if res.kind == "symlink" and res.errno is None:
            t.append(" → ", "dim")
            t.append_text(esc(res.target, "dim", limit=40))
        if res.redirect is not None:
            t.append("  ⇒", ink("bold $text-primary"))
            t.append_text(esc(res.redirect, ink("$text-primary"), limit=32))
        if res.metacopy:
            t.append("  metacopy", ink("$metacopy"))
        if res.opaque:
            t.append("  opaque", ink("$whiteout"))
        if res.whiteout is not None and res.errno:
            t.append("  whited out", ink("$whiteout"))
        if e.hidden_copies and self.show_hidden:
            t.append(f"  +{len(e.hidden_copies)} hidden", "dim italic")
        return t
