"""The merged tree: what readdir lists, loaded one directory at a time, with markers.

Directories are listed in a worker thread (by a :class:`~ovlinspect.ui.session.Lister` with its
own engine), and only when expanded.  A directory with more than ``CHUNK`` entries shows the
first ones and a "more" entry.  Each entry is coloured by the layer that gives its metadata and
marked with what matters: a dot per layer that holds it, redirect, metacopy, opaque, lookup and
open errors, problems found by the scan, what-if changes.  With *show hidden* on, the tree
also shows what the merged view hides: whited-out names, lower copies, and the contents of the
data-only layers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich.style import Style
from rich.text import Text
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from ..kernel.entry import Resolution
from ..model.layers import Node, Path
from ..rules.catalogue import RULES, Finding
from .palette import LayerPalette
from .render import esc, esc_str, path_text, size_text
from .session import CHUNK, Child, Lister

if TYPE_CHECKING:
    from .app import OvlInspectApp

SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}
SEVERITY_MARK = {"error": "✖", "warning": "▲", "info": "ℹ"}
SEVERITY_STYLE = {"error": "bold #ff5f5f", "warning": "bold #ffd75f", "info": "#87afd7"}


def severity_of(f: Finding, unknown: str = "error") -> str:
    """The severity of ``f``'s rule; ``unknown`` for a rule the table does not know."""
    return RULES[f.rule].severity if f.rule in RULES else unknown


@dataclass(eq=False)
class Entry:
    """What one tree line stands for."""

    path: Path
    #: merged | whiteout | copy | datalayer | layerpath | more | loading | message | asked
    #: ("asked": a name the user asked for that the listing does not show, with ``rest`` the
    #: components asked below it)
    kind: str = "merged"
    res: Resolution | None = None
    reason: str = ""
    layer: int | None = None
    node: Node | None = None
    loaded: bool = False
    #: for "more": names still to show
    rest: list[bytes] = field(default_factory=list)
    hidden_copies: list[tuple[int, Path, Node]] = field(default_factory=list)
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

    def __init__(self, lister: Lister, palette: LayerPalette, **kwargs) -> None:
        super().__init__(Text("/", style="bold"), Entry(()), **kwargs)
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
        #: merged entries shown so far, by path (to repaint one when the scan finds something)
        self.by_path: dict[Path, TreeNode[Entry]] = {}

    @property
    def oapp(self) -> "OvlInspectApp":
        return self.app  # type: ignore[return-value]

    # ------------------------------------------------------------------ loading
    def on_mount(self) -> None:
        self.root.expand()
        self.start_load(self.root)

    def restart(self, lister: Lister, palette: LayerPalette) -> None:
        """Start again on another engine (what-if) or with hidden entries toggled."""
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
            for name, n in rows[:CHUNK * 4]:
                self._add_layer_entry(node, e.layer, e.path + (name,), n)
            if len(rows) > CHUNK * 4:
                node.add_leaf(Text(f"… {len(rows) - CHUNK * 4} more entries", style="dim"),
                              Entry(e.path, "message"))
            e.loaded = True
            return
        listing = await asyncio.to_thread(lister.list_dir, e.path, CHUNK, hidden)
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
        names = listing.names
        whiteouts = sorted(listing.hidden.items())
        if hidden and whiteouts:
            # merge the hidden names into the sorted listing
            merged: list[tuple[bytes, Child | str]] = [(c.name, c) for c in listing.children]
            merged += whiteouts
            merged.sort(key=lambda x: x[0])
            for name, item in merged:
                if isinstance(item, str):
                    self._add_whiteout(node, e.path + (name,), item)
                else:
                    self._add_child(node, e.path, item)
        else:
            for c in listing.children:
                self._add_child(node, e.path, c)
        if len(names) > CHUNK:
            self._add_more(node, e.path, names[CHUNK:])
        if hidden and not e.path:
            for k in range(self.oapp.engine.nlower + 1, len(self.oapp.engine.klayers)):
                lab = Text()
                lab.append_text(self.palette.chip(k))
                lab.append(" data-only layer contents (not in the merged view)", "italic dim")
                layer = self.oapp.engine.klayers[k]
                root = layer.node(()) if layer is not None else None
                node.add(lab, Entry((), "datalayer", layer=k, node=root))
        e.loaded = True

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
        res = self.oapp.engine.resolve(path)
        entry = Entry(first, "asked", res=res, rest=list(path[len(first):]), loaded=True)
        if not parent.is_expanded:
            parent.expand()
        return parent.add_leaf(esc(first[-1]), entry)

    def _add_more(self, parent: TreeNode[Entry], path: Path, rest: list[bytes]) -> None:
        parent.add_leaf(Text(""), Entry(path, "more", rest=rest))

    def _add_layer_entry(self, parent: TreeNode[Entry], k: int, p: Path, n: Node) -> None:
        entry = Entry(p, "layerpath", layer=k, node=n)
        if n.is_dir:
            parent.add(esc(p[-1]), entry)
        else:
            entry.loaded = True
            parent.add_leaf(esc(p[-1]), entry)

    async def load_more(self, node: TreeNode[Entry]) -> None:
        """Replace a "more" entry by the next chunk of its directory."""
        e = node.data
        if e is None or e.kind != "more" or node.parent is None:
            return
        parent = node.parent
        rest = e.rest
        e.rest = []
        e.kind = "loading"
        e.text = None
        node.refresh()
        lister = self.lister
        children = await asyncio.to_thread(lister.resolve_children, e.path, rest[:CHUNK], self.show_hidden)
        if lister is not self.lister:
            return
        first: TreeNode[Entry] | None = None
        for c in children:
            n = self._add_child(parent, e.path, c)
            first = first or n
        node.remove()
        if len(rest) > CHUNK:
            self._add_more(parent, e.path, rest[CHUNK:])
        if first is not None:
            self.build_lines()
            self.move_cursor(first)

    def on_tree_node_expanded(self, event: Tree.NodeExpanded[Entry]) -> None:
        if event.node.tree is self:
            self.start_load(event.node)

    def on_tree_node_selected(self, event: Tree.NodeSelected[Entry]) -> None:
        e = event.node.data
        if e is not None and e.kind == "more":
            self.run_worker(self.load_more(event.node), group="tree-load", exit_on_error=False)

    # ------------------------------------------------------------------ keys
    def action_expand_node(self) -> None:
        node = self.cursor_node
        if node is None:
            return
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

        Returns the node, or the deepest ancestor found when the name is not listed.
        """
        node = self.root
        await self.ensure_loaded(node)
        for i in range(1, len(path) + 1):
            want = path[:i]
            found = None
            while found is None:
                more = None
                for child in node.children:
                    d = child.data
                    if d is None:
                        continue
                    if d.path == want and d.kind in ("merged", "whiteout"):
                        found = child
                        break
                    if d.kind == "more":
                        more = child
                if found is None and more is not None and more.data is not None and want[-1] in more.data.rest:
                    await self.load_more(more)
                    continue
                break
            if found is None:
                break
            node = found
            if i < len(path):
                if not node.is_expanded:
                    node.expand()
                await self.ensure_loaded(node)
        self.build_lines()
        self.move_cursor(node)
        return node

    def find_loaded(self, path: Path) -> TreeNode[Entry] | None:
        node = self.root
        for i in range(1, len(path) + 1):
            for child in node.children:
                if child.data is not None and child.data.path == path[:i] and child.data.kind == "merged":
                    node = child
                    break
            else:
                return None
        return node

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
        for p in paths:
            node = self.by_path.get(p) if p else self.root
            if node is not None and node.data is not None:
                node.data.text = None
                node.refresh()

    def repaint_labels(self) -> None:
        """Labels depend on scan results and what-if state: recompute the visible ones."""
        self.gen += 1
        self.root.refresh()
        self.refresh()

    def get_label_width(self, node: TreeNode[Entry]) -> int:
        # Called for every line when the tree is rebuilt: must not resolve anything.
        e = node.data
        if e is not None and e.text is not None:
            return e.text.cell_len + 2
        return node.label.cell_len + 12

    def render_label(self, node: TreeNode[Entry], base_style: Style, style: Style) -> Text:
        e = node.data
        if e is None:
            return super().render_label(node, base_style, style)
        if e.text is None or e.text_gen != self.gen:
            e.text = self.entry_text(node, e)
            e.text_gen = self.gen
        label = e.text.copy()
        label.stylize(style)
        if node.allow_expand and (node.children or not e.loaded):
            prefix = ("▼ " if node.is_expanded else "▶ ", base_style + Style(bold=True))
        else:
            prefix = ("  ", base_style)
        return Text.assemble(prefix, label)

    def entry_text(self, node: TreeNode[Entry], e: Entry) -> Text:
        pal = self.palette
        t = Text()
        if e.kind == "more":
            t.append(f"… {len(e.rest)} more entries (enter to load {min(len(e.rest), CHUNK)})", "italic #87afd7")
            return t
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
            t.append(f"  {_kind_short(e.node)}", "dim")
            return t
        if e.kind == "datalayer":
            return node.label.copy()
        if e.kind == "layerpath":
            assert e.layer is not None
            t.append_text(esc(e.path[-1], pal.style(e.layer)))
            if e.node is not None:
                if e.node.is_dir:
                    t.append("/", pal.style(e.layer))
                t.append(f"  {_kind_short(e.node)}", "dim")
            return t
        if e.kind == "asked":
            t.append_text(esc(b"/".join((e.path[-1], *e.rest)), Style(color="#ff5f5f", bold=True)))
            err = e.res.errno if e.res is not None else None
            if err:
                t.append(f" {err} ", Style(color="white", bgcolor="#d70000", bold=True))
            t.append("  asked for; not listed here", "italic dim")
            return t
        if e.kind == "whiteout":
            t.append_text(esc(e.path[-1], Style(strike=True, dim=True)))
            t.append("  whiteout", "bold #af87ff")
            t.append("  " + e.reason, "dim")
            return t
        res = e.res
        if res is None:
            return node.label.copy()
        name_style = Style(bold=res.is_dir)
        if res.errno:
            name_style += Style(color="#ff5f5f")
        elif res.metadata is not None:
            name_style += pal.style(res.metadata.layer)
        t.append_text(esc(e.path[-1] if e.path else b"/", name_style))
        if res.is_dir:
            t.append("/", name_style)
        # one dot per layer that holds it, in the layers' colours
        dots = []
        if res.errno is None:
            if res.upper is not None:
                dots.append(0)
            dots += [r.layer for r in res.lowers]
            if res.data is not None and res.data.layer not in dots:
                dots.append(res.data.layer)
        if dots:
            t.append(" ")
            for k in dots:
                t.append("●", pal.style(k))
        # what is wrong first (the pane is narrow), then what the entry is
        if res.errno == "ENOENT":
            t.append("  phantom: lookup ENOENT", "bold #ffd75f")
        elif res.errno:
            t.append(f" {res.errno} ", Style(color="white", bgcolor="#d70000", bold=True))
        if res.open_errno:
            t.append(" ")
            t.append(f" open {res.open_errno} ", Style(color="white", bgcolor="#af005f", bold=True))
        rules = {f.rule for f in res.findings}
        if "shadowed-lowerdata" in rules:
            t.append(" ")
            t.append(" SHADOWED ", Style(color="white", bgcolor="#d75f00", bold=True))
        counts = list(self.problems_at.get(e.path, [0, 0, 0]))
        for f in res.findings:
            sev = severity_of(f, unknown="info")
            if not counts[SEVERITY_RANK[sev]]:
                counts[SEVERITY_RANK[sev]] = 1
        if "shadowed-lowerdata" in rules and counts[0] == 1:
            counts[0] = 0  # SHADOWED says it already
        marks = [(SEVERITY_MARK[s], SEVERITY_STYLE[s]) for s, n in zip(("error", "warning", "info"), counts) if n]
        if marks:
            t.append(" ")
            for mark, style in marks:
                t.append(mark, style)
        below = self.problems_below.get(e.path)
        if below and res.is_dir:
            parts = [f"{n}{SEVERITY_MARK[s]}" for s, n in zip(("error", "warning", "info"), below) if n]
            if parts:
                worst = "error" if below[0] else ("warning" if below[1] else "info")
                t.append("  (" + " ".join(parts) + " below)", SEVERITY_STYLE[worst])
        if e.path in self.changed:
            t.append(" ")
            t.append(" Δ what-if ", Style(color="black", bgcolor="#ff87ff", bold=True))
        if res.kind == "symlink" and res.errno is None:
            t.append(" → ", "dim")
            t.append_text(esc(res.target, "dim", limit=40))
        if res.redirect is not None:
            t.append("  ⇒", "bold #5fafff")
            t.append_text(esc(res.redirect, "#5fafff", limit=32))
        if res.metacopy:
            t.append("  metacopy", "#5fd7d7")
        if res.opaque:
            t.append("  opaque", "#af87ff")
        if res.whiteout is not None and res.errno:
            t.append("  whited out", "#af87ff")
        if e.hidden_copies and self.show_hidden:
            t.append(f"  +{len(e.hidden_copies)} hidden", "dim italic")
        return t


def _kind_short(n: Node) -> str:
    if n.is_whiteout_dev:
        return "whiteout (0/0 chardev)"
    if n.is_reg:
        return f"file {size_text(n.size)}"
    return n.kind
