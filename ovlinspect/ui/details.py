"""The right-hand side: one column per layer for the selected path, and the explanation.

:class:`LayerColumns` shows, side by side, what each layer holds where the lookup looked (type,
size, mode, owner, decoded overlay xattrs) and the role it plays.  A redirect names the column
and path it leads to (``r`` or a click highlights that column).  :class:`Explanation` shows the
predicted ``lstat`` and ``open`` results, the kernel log lines, the lookup step by step and the
problems at the path; on a live mount, what the real mount returns beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from humanize import intcomma
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import HorizontalScroll, VerticalScroll
from textual.widget import Widget
from textual.widgets import Static

from ..kernel.entry import Ref, Resolution

from ..rules.engine import Engine
from ..model.layers import Node, Path
from .merged_tree import SEVERITY_MARK, SEVERITY_RANK, SEVERITY_STYLE, severity_of
from .palette import LayerPalette
from .render import esc, esc_str, kind_short, path_text, size_text
from .session import redirect_target
from .style import Ink, ink_of
from .xattrs import Decoded, decode
from ..report.state import layer_state
from ..report.view import ROLE_HELP as _ROLE_HELP, Role, layer_view

#: the style of a state line (report/state.py) in a layer column (``$names``: the theme's)
STATE_STYLE = {"ok": "$text-success", "warning": "$text-warning", "bad": "bold $text-error", "info": "dim"}

#: how each role is drawn (the roles and their one-line gloss: :mod:`ovlinspect.report.view`);
#: ``$names`` are the theme's colours (:class:`.style.Ink`)
ROLE_STYLE: dict[str, str] = {
    Role.METADATA: "bold",
    Role.DATA: "bold",
    Role.METADATA_DATA: "bold",
    Role.INTERCEPTING: "bold white on $intercept",
    Role.WHITEOUT: "bold $whiteout",
    Role.STACK: "",
    Role.HIDDEN: "dim",
    Role.ABSENT: "dim",
    Role.DATA_ONLY: "dim",
    Role.NOT_LOOKED_AT: "dim",
    Role.NOT_REACHED: "dim",
    Role.LOOKED_AT: "",
    Role.REDIRECT_TARGET: "bold $intercept",
    Role.REDIRECT_TARGET_NOT_REACHED: "bold $intercept",
    Role.ON_REDIRECT_PATH: "",
    Role.CAUSE: "bold white on #d70000",
    Role.REFUSED_HERE: "bold white on #d70000",
    Role.INVALID_HERE: "bold white on #d70000",
}
ROLE_HELP: dict[str, str] = {str(r): h for r, h in _ROLE_HELP.items()}


#: the width of a layer column that plays no part for the path, and the least of the others
STUB = 14
WIDE = 28


@dataclass
class Selection:
    """What the detail side shows: a merged path, or a raw path in one layer."""

    path: Path
    layer: int | None = None
    raw: bool = False  # a data-only layer's own path, not a merged one


def kind_line(node: Node, ink: Ink | None = None) -> Text:
    ink = ink or Ink()
    t = Text()
    if node.is_whiteout_dev:
        t.append("chardev 0/0", "bold")
        t.append(" = whiteout", ink("$whiteout"))
    elif node.is_reg:
        t.append("file ", "bold")
        t.append(size_text(node.size))
        if node.size >= 1024:
            # the exact size beside the rounded one: a metacopy file and its data file one
            # byte apart (a size mismatch) both read 1.0 MiB
            t.append(f" ({intcomma(node.size)} B)", "dim")
    elif node.kind == "symlink":
        t.append("symlink ", "bold")
        t.append("→ ", "dim")
        t.append_text(esc(node.target, limit=60))
    elif node.kind in ("chardev", "blockdev"):
        t.append(f"{node.kind} {node.rdev[0]}:{node.rdev[1]}", "bold")
    else:
        t.append(node.kind, "bold")
    t.append(f"  {node.mode:04o}  {node.uid}:{node.gid}", "dim")
    return t


class LayerColumn(Static):
    """What one layer holds at the selected path."""

    def __init__(self, k: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.k = k


class LayerColumns(HorizontalScroll):
    """One :class:`LayerColumn` per layer, in the stack's order (tab reaches it; the arrow
    keys scroll it)."""

    def __init__(self, engine: Engine, palette: LayerPalette, **kwargs) -> None:
        super().__init__(**kwargs)
        self.engine = engine
        self.palette = palette
        self.targets: dict[int, Ref] = {}
        #: the role of each layer for the path shown
        self.roles: dict[int, Role] = {}
        self.ink = Ink()

    def compose(self) -> ComposeResult:
        for k, layer in enumerate(self.engine.klayers):
            if layer is not None:
                yield LayerColumn(k, id=f"layer-col-{k}", classes="layer-col")
        # when the stubs do not fit beside the layers that matter: one line per other layer
        yield Static(id="layer-others", classes="layer-col -idle")

    def on_resize(self) -> None:
        self._share_width()

    def _share_width(self) -> None:
        """Share the width out by hand (fr widths do not divide a scrolling container).

        Layers that play no part for this path (absent, unused, not looked at) get a narrow
        stub; the others share the rest, at least ``WIDE`` cells each, scrolling sideways when
        they do not fit, scrolled so that the first layer that matters (the one failing, giving
        the data, or the metadata) is in view.
        """
        cols = list(self.query(LayerColumn))
        others = self.query_one("#layer-others", Static)
        if not cols or not self.size.width:
            return
        total = self.size.width - 1  # the vertical scrollbar
        idle = [c for c in cols if self.roles.get(c.k, Role.ABSENT).idle]
        if len(idle) == len(cols):
            idle = []  # nothing matters more than the rest: all alike
        busy = [c for c in cols if c not in idle]
        folded = bool(idle) and len(busy) * (WIDE - 4) + STUB * len(idle) > total
        for c in cols:
            c.display = not (folded and c in idle)
        others.display = folded
        if folded:
            # the stubs would push the layers that matter off screen: list them in one column
            t = Text("OTHER LAYERS\n", "dim bold")
            for c in idle:
                t.append_text(self.palette.mini(c.k, 16))
                t.append(f" {self.roles[c.k]}\n", "dim")
            others.update(t)
            others.styles.width = 30
            others.border_title = Text(f"{len(idle)} more", "dim")  # type: ignore[assignment]
            idle = []
            total -= 30
        room = total - STUB * len(idle)
        each = room // len(busy)
        fits = each >= WIDE - 4
        if not fits:
            each = WIDE  # scroll sideways
        for c in idle:
            c.styles.width = STUB
        for i, c in enumerate(busy):
            c.styles.width = room - each * (len(busy) - 1) if fits and i == len(busy) - 1 else each
        key = next((c for c in cols if self.roles.get(c.k, Role.ABSENT).fails), None) or \
            next((c for c in cols if self.roles.get(c.k, Role.ABSENT).gives), None)
        if key is not None:
            self.call_after_refresh(self.scroll_to_column, key)

    def scroll_to_column(self, col: Widget) -> None:
        """Scroll sideways so that ``col`` is in view and the first column shown starts at the
        left edge (a column cut in the middle of its title reads as another layer: "er 0 top")."""
        shown = [c for c in self.children if c.display]
        width = self.scrollable_content_region.width
        if not shown or not width:
            return
        right = col.virtual_region.right
        starts = sorted(c.virtual_region.x for c in shown)
        x = next((s for s in starts if right - s <= width), col.virtual_region.x)
        self.scroll_to(x=x, animate=False, immediate=True)

    def column(self, k: int) -> LayerColumn:
        return self.query_one(f"#layer-col-{k}", LayerColumn)

    def show(self, engine: Engine, palette: LayerPalette, sel: Selection, res: Resolution | None) -> None:
        self.engine = engine
        self.palette = palette
        self.targets = {}
        ink = self.ink = ink_of(self)
        for col in self.query(LayerColumn):
            col.remove_class("-target")
            col.remove_class("-focus")
        if sel.raw:
            self.roles = {}
            self._show_raw(sel)
            self._share_width()
            return
        assert res is not None
        view = layer_view(engine, res)
        self.roles = view.roles()
        on_path = view.on_redirect_path
        decoded = {k: decode(node, engine.prefix, root=p == ()) for k, p, node, _ in view if node is not None}
        sources: dict[int, int] = {}  # target layer -> layer whose redirect leads there
        redirects: dict[int, Ref | None] = {}
        for k, p, node, role in view:
            if any(d.redirect is not None for d in decoded.get(k, ())):
                tgt = redirect_target(res, k)
                if tgt is None and res.errno:
                    # a failed lookup keeps no chain: the first entry below on the redirect path
                    tgt = next((Ref(k2, p2) for k2, p2, n2, _ in view if k2 > k and k2 in on_path), None)
                redirects[k] = tgt
                if tgt is not None:
                    sources[tgt.layer] = k
                    self.targets[k] = tgt
        for k, p, node, role in view:
            col = self.column(k)
            col.border_title = palette.chip(k)  # type: ignore[assignment]
            col.border_subtitle = Text(role, style=ink(ROLE_STYLE.get(role, "")))  # type: ignore[assignment]
            col.set_class(role.gives, "-used")
            col.set_class(role.fails, "-intercepting")
            col.set_class(role.idle, "-idle")
            col.styles.border = ("round" if role not in ("metadata", "metadata+data") else "heavy",
                                 palette.color(k))
            col.update(self._column_text(engine, palette, res, k, p, node, decoded.get(k, []), role,
                                         redirects.get(k, None), k in redirects, sources.get(k)))
            if sel.layer == k:
                col.add_class("-focus")
        self._share_width()

    def _column_text(self, engine: Engine, pal: LayerPalette, res: Resolution, k: int, p: Path,
                     node: Node | None, decoded: list[Decoded], role: str, target: Ref | None,
                     has_redirect: bool, source: int | None) -> Text:
        t = Text()
        if role.idle and self.roles and not all(r.idle for r in self.roles.values()):
            # a stub: the role, and what is there (the layer's chip is the border title)
            t.append(role.upper(), "dim")
            if node is not None:
                t.append("\n")
                t.append(kind_short(node), "dim")
            return t
        ink = self.ink
        t.append(role.upper(), ink(ROLE_STYLE[role]) if ROLE_STYLE.get(role) else pal.style(k, bold=True))
        if role in ("metadata", "data", "metadata+data"):
            t.stylize(pal.style(k, bold=True))
        t.append("\n")
        t.append(ROLE_HELP.get(role, ""), "dim italic")
        if source is not None:
            t.append("\n⤷ ", ink("bold $text-primary"))
            t.append("redirect from ", ink("$text-primary"))
            t.append_text(pal.tag(source))
        t.append("\n")
        if p != res.path or role == "absent":
            t.append("at ", "dim")
            t.append_text(path_text(p, "bold" if p != res.path else "dim"))
            t.append("\n")
        if node is None:
            return t
        t.append_text(kind_line(node, ink))
        if node.verity is not None:
            algo, digest = node.verity
            t.append("\nfs-verity ", "dim")
            t.append(digest.hex()[:32] + "…", ink("$text-warning"))
        for d in decoded:
            t.append("\n")
            t.append_text(d.text)
            if d.redirect is not None and has_redirect:
                t.append("\n")
                if target is not None:
                    link = ink("bold underline $text-primary") + Style.from_meta(
                        {"@click": f"app.follow_redirect({k})"})
                    t.append("⤳ leads to ", ink("$text-primary"))
                    t.append_text(esc_str(engine.label(target.layer), link))
                    t.append(" at ", ink("$text-primary"))
                    t.append_text(path_text(target.path, ink("$text-primary")))
                    t.append("  [r]", "dim")
                elif res.lowerdata_redirect is not None and res.open_errno:
                    t.append(f"⤳ found in no data-only layer: open {res.open_errno}", ink("bold $text-error"))
                else:
                    t.append("⤳ leads nowhere here", "dim")
        if not decoded and role != "absent":
            t.append("\nno overlay xattrs", "dim")
        # origin, index and impure state in words (the CLI's layers table says the same)
        for tone, text in layer_state(engine, res, k, p, node):
            t.append("\n→ ", "dim")
            t.append_text(esc_str(text, ink(STATE_STYLE.get(tone, ""))))
        return t

    def _show_raw(self, sel: Selection) -> None:
        engine, pal = self.engine, self.palette
        for k, layer in enumerate(engine.klayers):
            if layer is None:
                continue
            col = self.column(k)
            node = layer.node(sel.path)
            col.border_title = pal.chip(k)  # type: ignore[assignment]
            role = "selected" if k == sel.layer else ("absent" if node is None else "same path")
            col.border_subtitle = Text(role)  # type: ignore[assignment]
            col.set_class(False, "-used")
            col.set_class(False, "-intercepting")
            col.set_class(k != sel.layer, "-idle")
            col.styles.border = ("heavy" if k == sel.layer else "round", pal.color(k))
            t = Text()
            t.append(role.upper(), pal.style(k, bold=True) if k == sel.layer else "dim")
            t.append("\n")
            t.append_text(path_text(sel.path, "dim"))
            if node is not None:
                t.append("\n")
                t.append_text(kind_line(node, ink_of(self)))
                for d in decode(node, engine.prefix):
                    t.append("\n")
                    t.append_text(d.text)
            col.update(t)

    def follow(self, k: int) -> Ref | None:
        """Highlight the column the redirect on layer ``k`` leads to."""
        tgt = self.targets.get(k)
        if tgt is None:
            return None
        col = self.column(tgt.layer)
        col.add_class("-target")
        self.scroll_to_column(col)
        return tgt


class Explanation(VerticalScroll):
    """The prediction for the selected path, and why."""

    def compose(self) -> ComposeResult:
        yield Static(id="explain-text")

    def show_text(self, t: Text) -> None:
        self.query_one("#explain-text", Static).update(t)
        self.scroll_home(animate=False)


def explanation(engine: Engine, pal: LayerPalette, res: Resolution, extra_findings: list,
                observed: tuple[str, list[str]] | None = None, whatif: bool = False,
                ink: Ink | None = None) -> Text:
    """The explanation text for one resolution (``ink``: the theme's colours; dark's if None)."""
    ink = ink or Ink()
    t = Text()
    t.append_text(path_text(res.path, "bold"))
    if res.via_symlink:
        t.append("  (through a symlink)", "dim")
    if whatif:
        t.append("  what-if prediction", ink("black on $whatif" if ink.dark else "white on $whatif"))
    t.append("\n")
    if engine.mount_errno:
        t.append(f"mount  ✖ {engine.mount_errno}", ink("bold $text-error"))
        t.append(": the kernel refuses these options; below, what lookup would do if it did not\n",
                 ink("$text-error"))
    # the step that fails first: at 80x24 the panel shows three lines, and "lstat ✔" on a path
    # whose open ends in EIO reads as healthy
    lstat = _lstat_line(pal, res, ink)
    opened = _open_line(pal, res, ink) if res.errno is None and res.kind == "file" else None
    if opened is not None and (res.open_errno or any(f.rule == "shadowed-lowerdata" for f in res.findings)):
        t.append_text(opened)
        t.append_text(lstat)
    else:
        t.append_text(lstat)
        if opened is not None:
            t.append_text(opened)
    # the cause and its fix, before the details
    findings = list(res.findings)
    seen = {(f.rule, f.path) for f in findings}
    findings += [f for f in extra_findings if (f.rule, f.path) not in seen]
    findings.sort(key=lambda f: SEVERITY_RANK[severity_of(f)])
    for f in findings:
        sev = severity_of(f)
        t.append(f"{SEVERITY_MARK[sev]} {f.rule}", ink(SEVERITY_STYLE[sev]))
        t.append("  ")
        t.append_text(pal.colorize(esc_str(f.message)))
        t.append("\n  fix: ", "dim")
        t.append_text(esc_str(f.hint, "italic"))
        t.append("\n")
    logs = res.kernel_log + res.open_log
    for line in logs:
        t.append("dmesg  ", "bold")
        t.append_text(esc_str(line, ink("$text-error")))
        t.append("\n")
    if observed is not None:
        summary, mismatches = observed
        t.append("real   ", "bold")
        t.append_text(esc_str(summary))
        if mismatches:
            t.append("  ✖ MISMATCH", "bold white on #d70000")
            for m in mismatches:
                t.append("\n       ")
                t.append_text(esc_str(m, ink("$text-error")))
        else:
            t.append("  ✔ matches the prediction", ink("bold $text-success"))
        t.append("\n")
    if res.trace:
        t.append("\nlookup, step by step\n", "bold underline")
        for n, step in enumerate(res.trace, 1):
            style = ""
            if step.startswith("=>"):
                style = "bold"
            elif step.startswith("!"):
                style = ink("bold $text-error")
            line = esc_str(step, style)
            pal.colorize(line)
            t.append(f"{n:>2}. ", "dim")
            t.append_text(line)
            t.append("\n")
    return t


def _lstat_line(pal: LayerPalette, res: Resolution, ink: Ink) -> Text:
    t = Text()
    t.append("lstat  ", "bold")
    if res.errno:
        t.append(f"✖ {res.errno}", ink("bold $text-error"))
    else:
        t.append("✔ ", ink("bold $text-success"))
        what = res.kind or "?"
        if res.kind == "file":
            what += f", {size_text(res.size)}"
        t.append(what)
        if res.kind == "symlink":
            t.append(" → ", "dim")
            t.append_text(esc(res.target, limit=80))
        if res.mode is not None:
            t.append(f", mode {res.mode:04o}, owner {res.uid}:{res.gid}", "dim")
        if res.metadata is not None:
            t.append("  inode from ", "dim")
            t.append_text(pal.tag(res.metadata.layer))
            t.append(" ")
            t.append_text(path_text(res.metadata.path, "dim"))
    t.append("\n")
    return t


def _open_line(pal: LayerPalette, res: Resolution, ink: Ink) -> Text:
    """``open ✖ EIO``, ``open ✔ bytes from …``, or, when a regular layer intercepts the data
    meant for a data-only layer, ``open ▲ wrong bytes from …`` (no green tick on wrong data)."""
    t = Text()
    t.append("open   ", "bold")
    if res.open_errno:
        t.append(f"✖ {res.open_errno}", ink("bold $text-error"))
    elif any(f.rule == "shadowed-lowerdata" for f in res.findings):
        t.append("▲ WRONG bytes from ", ink("bold $intercept"))
        if res.data is not None:
            t.append_text(pal.tag(res.data.layer))
            t.append(" ")
            t.append_text(path_text(res.data.path))
        t.append("  SHADOWED", ink("bold $intercept"))
    else:
        t.append("✔ ", ink("bold $text-success"))
        if res.data is not None:
            t.append("bytes from ", "dim")
            t.append_text(pal.tag(res.data.layer))
            t.append(" ")
            t.append_text(path_text(res.data.path))
    t.append("\n")
    return t


def raw_explanation(engine: Engine, pal: LayerPalette, k: int, path: Path, ink: Ink | None = None) -> Text:
    layer = engine.klayers[k]
    node = layer.node(path) if layer is not None else None
    t = Text()
    t.append_text(pal.tag(k))
    t.append(" ")
    t.append_text(path_text(path, "bold"))
    t.append("\n")
    if node is not None:
        t.append_text(kind_line(node, ink))
        t.append("\n")
    t.append("\nThis is a path inside a data-only layer. Data-only layers never appear in the merged "
             "view: their files are reached only by the absolute redirect of a metacopy file, and "
             "only when no regular layer holds that path first.", "italic")
    return t
