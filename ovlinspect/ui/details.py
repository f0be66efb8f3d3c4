"""The right-hand side: one column per layer for the selected path, and the explanation.

:class:`LayerColumns` shows, side by side, what each layer holds where the lookup looked (type,
size, mode, owner, decoded overlay xattrs) and the role it plays.  A redirect names the column
and path it leads to (``r`` or a click highlights that column).  :class:`Explanation` shows the
predicted ``lstat`` and ``open`` results, the kernel log lines, the lookup step by step and the
problems at the path; on a live mount, what the real mount returns beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static

from ..kernel.entry import Ref, Resolution

from ..rules.engine import Engine
from ..model.layers import Node, Path, split_path
from .merged_tree import SEVERITY_MARK, SEVERITY_STYLE, severity_of
from .palette import LayerPalette
from .render import esc, esc_str, path_text, size_text
from .session import redirect_target
from .xattrs import Decoded, decode

ROLE_STYLE = {
    "metadata": "bold",
    "data": "bold",
    "metadata+data": "bold",
    "intercepting": "bold white on #d75f00",
    "whiteout": "bold #af87ff",
    "stack": "",
    "hidden": "dim",
    "absent": "dim",
    "data-only (never merged)": "dim",
    "looked at": "",
    "redirect target": "bold #d75f00",
    "redirect target (not reached)": "bold #d75f00",
    "on the redirect path": "",
    "cause": "bold white on #d70000",
    "refused here": "bold white on #d70000",
    "invalid here": "bold white on #d70000",
}
ROLE_HELP = {
    "metadata": "gives the inode (stat)",
    "data": "gives the bytes (read)",
    "metadata+data": "gives stat and bytes",
    "intercepting": "serves bytes meant for a data-only layer",
    "whiteout": "hides the name from the layers below",
    "stack": "merged into the directory",
    "hidden": "present, not used",
    "absent": "nothing here",
    "data-only (never merged)": "reached only through metacopy redirects",
    "looked at": "the lookup fails (see the explanation)",
    "redirect target": "what the redirect meant; a regular layer answered first",
    "redirect target (not reached)": "what the redirect meant; the lookup fails before it",
    "on the redirect path": "the lookup walks through this",
    "cause": "the lookup fails here (see the explanation)",
    "refused here": "the mount's options refuse to follow this",
    "invalid here": "the kernel rejects this entry's xattrs",
}


def failed_view(engine: Engine, res: Resolution, view: list) -> tuple[list, set[int]]:
    """A failed lookup keeps no chain: show the layers below a redirect at the redirect's path.

    The engine's view of a failed lookup looks at the merged path in every layer; when the top
    entry carries an absolute redirect, the interesting entries below are at the redirect path
    (the plain directory that cancels it, the data-only file it meant).
    """
    involved = {engine.kernel_index(j) for f in res.findings for j in f.layers}
    # only these failures happen while (or after) walking the redirect; a refusal (EPERM) or an
    # invalid redirect (EINVAL) stops before the layers below are looked at
    walked = any(f.rule in ("lowerdata-redirect-broken", "metacopy-without-data") for f in res.findings)
    redirect: bytes | None = None
    top = None
    for k, p, node, role in view:
        if node is not None:
            top = k
            for d in decode(node, engine.prefix):
                if d.redirect is not None and d.redirect.startswith(b"/") and d.active:
                    redirect = d.redirect
            break
    rp = split_path(redirect) if walked and redirect is not None else None
    out = []
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
                role = "redirect target" if k > engine.nlower and found == rp else "on the redirect path"
        if k == top and res.errno in ("EPERM", "EINVAL") and not walked:
            role = "refused here" if res.errno == "EPERM" else "invalid here"
        below = any(j > k for j in involved)
        if (k in involved and node is not None and not (k == top and below)
                and role not in ("refused here", "invalid here")):
            role = "cause"
        out.append((k, p, node, role))
    return out, on_path


def ui_role(engine: Engine, res: Resolution, k: int, role: str) -> str:
    """The model's role, made more telling where the screen knows more."""
    if role == "hidden" and res.errno and res.errno != "ENOENT":
        return "looked at"
    if (role == "hidden" and k > engine.nlower and res.redirect is not None
            and any(f.rule == "shadowed-lowerdata" for f in res.findings)):
        return "redirect target"
    if role == "redirect target" and res.errno:
        return "redirect target (not reached)"
    return role


@dataclass
class Selection:
    """What the detail side shows: a merged path, or a raw path in one layer."""

    path: Path
    layer: int | None = None
    raw: bool = False  # a data-only layer's own path, not a merged one


def kind_line(node: Node) -> Text:
    t = Text()
    if node.is_whiteout_dev:
        t.append("chardev 0/0", "bold")
        t.append(" = whiteout", "#af87ff")
    elif node.is_reg:
        t.append("file ", "bold")
        t.append(size_text(node.size))
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


class LayerColumns(Horizontal):
    """One :class:`LayerColumn` per layer, in the stack's order."""

    def __init__(self, engine: Engine, palette: LayerPalette, **kwargs) -> None:
        super().__init__(**kwargs)
        self.engine = engine
        self.palette = palette
        self.targets: dict[int, Ref] = {}

    def compose(self) -> ComposeResult:
        for k, layer in enumerate(self.engine.klayers):
            if layer is not None:
                yield LayerColumn(k, id=f"layer-col-{k}", classes="layer-col")

    def on_resize(self) -> None:
        # fr widths do not divide a scrolling container: share the width out by hand, and
        # scroll sideways when the columns would be narrower than their minimum
        cols = list(self.query(LayerColumn))
        if not cols:
            return
        total = self.size.width
        each = total // len(cols)
        if each < 24:
            for col in cols:
                col.styles.width = 28
            return
        for i, col in enumerate(cols):
            col.styles.width = each if i < len(cols) - 1 else total - each * (len(cols) - 1)

    def column(self, k: int) -> LayerColumn:
        return self.query_one(f"#layer-col-{k}", LayerColumn)

    def show(self, engine: Engine, palette: LayerPalette, sel: Selection, res: Resolution | None) -> None:
        self.engine = engine
        self.palette = palette
        self.targets = {}
        for col in self.query(LayerColumn):
            col.remove_class("-target")
            col.remove_class("-focus")
        if sel.raw:
            self._show_raw(sel)
            return
        assert res is not None
        view = engine.layer_view(res)
        on_path: set[int] = set()
        if res.errno:
            view, on_path = failed_view(engine, res, view)
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
            role = ui_role(engine, res, k, role)
            col = self.column(k)
            col.border_title = palette.chip(k)  # type: ignore[assignment]
            col.border_subtitle = Text(role, style=ROLE_STYLE.get(role, ""))  # type: ignore[assignment]
            col.set_class(role in ("metadata", "data", "metadata+data", "intercepting"), "-used")
            col.set_class(role in ("intercepting", "cause", "refused here", "invalid here"), "-intercepting")
            col.set_class(role in ("absent", "hidden", "data-only (never merged)"), "-idle")
            col.styles.border = ("round" if role not in ("metadata", "metadata+data") else "heavy",
                                 palette.color(k))
            col.update(self._column_text(engine, palette, res, k, p, node, decoded.get(k, []), role,
                                         redirects.get(k, None), k in redirects, sources.get(k)))
            if sel.layer == k:
                col.add_class("-focus")

    def _column_text(self, engine: Engine, pal: LayerPalette, res: Resolution, k: int, p: Path,
                     node: Node | None, decoded: list[Decoded], role: str, target: Ref | None,
                     has_redirect: bool, source: int | None) -> Text:
        t = Text()
        t.append(role.upper(), ROLE_STYLE.get(role, "") or pal.style(k, bold=True))
        if role in ("metadata", "data", "metadata+data"):
            t.stylize(pal.style(k, bold=True))
        t.append("\n")
        t.append(ROLE_HELP.get(role, ""), "dim italic")
        if source is not None:
            t.append("\n⤷ ", "bold #5fafff")
            t.append("redirect from ", "#5fafff")
            t.append_text(pal.tag(source))
        t.append("\n")
        if p != res.path or role == "absent":
            t.append("at ", "dim")
            t.append_text(path_text(p, "bold" if p != res.path else "dim"))
            t.append("\n")
        if node is None:
            return t
        t.append_text(kind_line(node))
        if node.verity is not None:
            algo, digest = node.verity
            t.append("\nfs-verity ", "dim")
            t.append(digest.hex()[:32] + "…", "#d7af5f")
        for d in decoded:
            t.append("\n")
            t.append_text(d.text)
            if d.redirect is not None and has_redirect:
                t.append("\n")
                if target is not None:
                    link = Style(color="#5fafff", bold=True, underline=True) + Style.from_meta(
                        {"@click": f"app.follow_redirect({k})"})
                    t.append("⤳ leads to ", Style(color="#5fafff"))
                    t.append_text(esc_str(engine.label(target.layer), link))
                    t.append(" at ", "#5fafff")
                    t.append_text(path_text(target.path, "#5fafff"))
                    t.append("  [r]", "dim")
                elif res.lowerdata_redirect is not None and res.open_errno:
                    t.append(f"⤳ found in no data-only layer: open {res.open_errno}", "bold red")
                else:
                    t.append("⤳ leads nowhere here", "dim")
        if not decoded and role != "absent":
            t.append("\nno overlay xattrs", "dim")
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
                t.append_text(kind_line(node))
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
        self.scroll_to_widget(col, animate=False)
        return tgt


class Explanation(VerticalScroll):
    """The prediction for the selected path, and why."""

    def compose(self) -> ComposeResult:
        yield Static(id="explain-text")

    def show_text(self, t: Text) -> None:
        self.query_one("#explain-text", Static).update(t)
        self.scroll_home(animate=False)


def explanation(engine: Engine, pal: LayerPalette, res: Resolution, extra_findings: list,
                observed: tuple[str, list[str]] | None = None, whatif: bool = False) -> Text:
    """The explanation text for one resolution."""
    t = Text()
    t.append_text(path_text(res.path, "bold"))
    if res.via_symlink:
        t.append("  (through a symlink)", "dim")
    if whatif:
        t.append("  what-if prediction", Style(color="black", bgcolor="#ff87ff"))
    t.append("\n")
    if engine.mount_errno:
        t.append(f"mount  ✖ {engine.mount_errno}", "bold #ff5f5f")
        t.append(": the kernel refuses these options; below, what lookup would do if it did not\n",
                 "#ff8787")
    # lstat
    t.append("lstat  ", "bold")
    if res.errno:
        t.append(f"✖ {res.errno}", "bold #ff5f5f")
    else:
        t.append("✔ ", "bold #87d787")
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
    if res.errno is None and res.kind == "file":
        t.append("open   ", "bold")
        if res.open_errno:
            t.append(f"✖ {res.open_errno}", "bold #ff5f5f")
        else:
            t.append("✔ ", "bold #87d787")
            if res.data is not None:
                t.append("bytes from ", "dim")
                t.append_text(pal.tag(res.data.layer))
                t.append(" ")
                t.append_text(path_text(res.data.path))
                if any(f.rule == "shadowed-lowerdata" for f in res.findings):
                    t.append("  SHADOWED", "bold #d75f00")
        t.append("\n")
    logs = res.kernel_log + res.open_log
    for line in logs:
        t.append("dmesg  ", "bold")
        t.append_text(esc_str(line, "#ff8787"))
        t.append("\n")
    if observed is not None:
        summary, mismatches = observed
        t.append("real   ", "bold")
        t.append_text(esc_str(summary))
        if mismatches:
            t.append("  ✖ MISMATCH", "bold white on #d70000")
            for m in mismatches:
                t.append("\n       ")
                t.append_text(esc_str(m, "#ff8787"))
        else:
            t.append("  ✔ matches the prediction", "bold #87d787")
        t.append("\n")
    findings = list(res.findings)
    seen = {(f.rule, f.path) for f in findings}
    findings += [f for f in extra_findings if (f.rule, f.path) not in seen]
    if findings:
        t.append("\n")
        for f in findings:
            sev = severity_of(f)
            t.append(f"{SEVERITY_MARK[sev]} {f.rule}", SEVERITY_STYLE[sev])
            t.append("  ")
            t.append_text(pal.colorize(esc_str(f.message)))
            t.append("\n  fix: ", "dim")
            t.append_text(esc_str(f.hint, "italic"))
            t.append("\n")
    if res.trace:
        t.append("\nlookup, step by step\n", "bold underline")
        for n, step in enumerate(res.trace, 1):
            style = ""
            if step.startswith("=>"):
                style = "bold"
            elif step.startswith("!"):
                style = "bold #ff8787"
            line = esc_str(step, style)
            pal.colorize(line)
            t.append(f"{n:>2}. ", "dim")
            t.append_text(line)
            t.append("\n")
    return t


def raw_explanation(engine: Engine, pal: LayerPalette, k: int, path: Path) -> Text:
    layer = engine.klayers[k]
    node = layer.node(path) if layer is not None else None
    t = Text()
    t.append_text(pal.tag(k))
    t.append(" ")
    t.append_text(path_text(path, "bold"))
    t.append("\n")
    if node is not None:
        t.append_text(kind_line(node))
        t.append("\n")
    t.append("\nThis is a path inside a data-only layer. Data-only layers never appear in the merged "
             "view: their files are reached only by the absolute redirect of a metacopy file, and "
             "only when no regular layer holds that path first.", "italic")
    return t
