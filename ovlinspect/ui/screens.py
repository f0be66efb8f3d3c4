"""Modal screens: help, what-if options, and content preview."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, HorizontalScroll, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Select, Static

from ..kernel.entry import Resolution

from ..rules.engine import Engine
from ..model.layers import Path
from ..report.glossary import TERMS
from ..report.view import layer_view
from .palette import LayerPalette
from .render import hex_preview, looks_textual, path_text, size_text, text_preview
from .session import choice_values, current_choices

PREVIEW_LIMIT = 4096

KEYS = [
    ("Moving", [
        ("↑ ↓  pgup pgdn  home end", "move in the focused panel"),
        ("→ / ←", "expand a directory / collapse, go to the parent"),
        ("enter", "expand; in Problems, Search and What-if: jump to the path (Search: the first match)"),
        ("tab / shift+tab", "next / previous panel: tree, layer columns (← → scroll them), explanation, bottom"),
        ("n / N", "next / previous problem: the first path of each cause first, then the rest"),
        ("z", "maximize the focused panel (again to restore)"),
    ]),
    ("Looking", [
        ("h", "show what the merged view hides: whiteouts, lower copies, data-only layers"),
        ("r", "follow the redirect of the selected path to its column"),
        ("p", "preview the content of the metadata and data sources"),
        ("/", "search paths (substring); ctrl+t: problem paths only"),
    ]),
    ("What-if", [
        ("w", "choose mount options or a kernel, and see which resolutions change"),
        ("M  R  U  V", "toggle metacopy, cycle redirect_dir, toggle userxattr, cycle verity"),
        ("K", "cycle the kernel: 6.1, 6.12, 6.18, 7.0 (will this stack work on RHEL 10?)"),
        ("W", "back to the real options and kernel"),
    ]),
    ("Other", [
        ("ctrl+p", "command palette"),
        ("? or f1", "this help"),
        ("q", "quit"),
    ]),
]

LEGEND = [
    ("●", "a layer the merged entry is made of, in its colour (a directory's merged copies; a file's metadata and data layers; ●×N: N layers); a name is coloured by the layer giving its metadata"),
    ("⇒/path", "redirect (the path the lookup continues with)"),
    ("metacopy", "metadata only: the data comes from a lower layer"),
    ("opaque", "directory hides the layers below"),
    ("EIO EPERM …", "lookup fails (lstat returns this error)"),
    ("open EIO", "lstat works, open fails"),
    ("SHADOWED", "a regular layer intercepts bytes meant for a data-only layer"),
    ("phantom", "readdir lists a name that lookup cannot find"),
    ("✖ ▲ ℹ", "error, warning, note found by the scan (counts below a directory)"),
    ("whiteout", "a name hidden from the merged view (shown with h)"),
    ("Δ what-if", "the outcome changes under the what-if options"),
]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Static(Text("ovlinspect: what overlayfs does with every path, and why",
                              style="bold #5fafff"))
            for title, rows in KEYS:
                yield Static(_table(title, [(Text(k, style="bold"), Text(w)) for k, w in rows]))
            yield Static(_table("Markers in the tree", [(Text(m, style="bold"), Text(w)) for m, w in LEGEND]))
            yield Static(_table("Terms", [(Text(term, style="bold"), Text(gloss))
                                          for term, gloss in TERMS.items()]))
            yield Static(Text("Layer columns: one per layer, with its role for the selected path: metadata, "
                              "data, intercepting, whiteout, stack (merged directory), hidden, absent. The "
                              "heavy border is the layer that gives the inode.", style="dim"))
        yield Label(Text("escape closes", style="dim"), id="help-foot")


def _table(title: str, rows: list[tuple[Text, Text]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.title = Text(title, style="bold #ffd75f")
    table.title_justify = "left"
    table.add_column(width=24, no_wrap=True)
    table.add_column(ratio=1)
    for a, b in rows:
        table.add_row(a, b)
    return table


class WhatIfScreen(ModalScreen[dict | None]):
    """Pick the four options; dismisses with the choices, or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, engine: Engine, base: Engine) -> None:
        super().__init__()
        self.engine = engine
        self.base = base

    def compose(self) -> ComposeResult:
        now = current_choices(self.engine)
        real = current_choices(self.base)
        with Vertical(id="whatif-box"):
            yield Static(Text("What if the stack were mounted with… (or on another kernel)", style="bold"),
                         id="whatif-title")
            with Grid(id="whatif-grid"):
                for key, values in choice_values(self.base).items():
                    yield Label(Text(key, style="bold"))
                    yield Select([(v, v) for v in values], value=now[key], allow_blank=False,
                                 id=f"whatif-{key}")
                    yield Label(Text(f"real: {real[key]}", style="dim"))
            with Horizontal(id="whatif-buttons"):
                yield Button("Apply", variant="primary", id="whatif-apply")
                yield Button("Real options", id="whatif-reset")
                yield Button("Cancel", id="whatif-cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "whatif-apply":
            self.dismiss({key: str(self.query_one(f"#whatif-{key}", Select).value)
                          for key in choice_values(self.base)})
        elif event.button.id == "whatif-reset":
            self.dismiss(current_choices(self.base))
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class PreviewScreen(ModalScreen[None]):
    """The first bytes of every regular file the lookup of a path touches, side by side."""

    BINDINGS = [
        Binding("escape,q,p", "dismiss", "Close"),
        Binding("x", "toggle_hex", "Hex/text"),
    ]

    def __init__(self, engine: Engine, pal: LayerPalette, res: Resolution) -> None:
        super().__init__()
        self.engine = engine
        self.pal = pal
        self.res = res
        self.hex: bool | None = None  # None: decide per file
        self.sources = self._sources()

    def _sources(self) -> list[tuple[int, Path, str, bytes, int]]:
        """(layer, path, role, first bytes, size) of each regular file of the lookup."""
        out = []
        for k, p, node, role in layer_view(self.engine, self.res):
            if node is None or not node.is_reg or role == "whiteout":
                continue
            layer = self.engine.klayers[k]
            assert layer is not None
            try:
                data = layer.read(p, PREVIEW_LIMIT)
            except OSError as e:
                data = f"cannot read: {e.strerror}".encode()
            out.append((k, p, role, data, node.size))
        return out

    def compose(self) -> ComposeResult:
        with Vertical(id="preview-box"):
            title = Text("content of ", style="bold")
            title.append_text(path_text(self.res.path, "bold"))
            title.append(f"   first {PREVIEW_LIMIT} bytes of each file; shown, never interpreted;"
                         " x: hex/text", style="dim")
            yield Static(title, id="preview-title")
            with HorizontalScroll(id="preview-cols"):
                if not self.sources:
                    yield Static(Text("no regular file in any layer at this path", style="dim"))
                for i, (k, p, role, data, size) in enumerate(self.sources):
                    col = VerticalScroll(classes="preview-col", id=f"preview-col-{i}")
                    col.border_title = self.pal.chip(k)  # type: ignore[assignment]
                    col.border_subtitle = Text(f"{role} · {size_text(size)}")  # type: ignore[assignment]
                    col.styles.border = ("heavy" if role in ("data", "metadata+data", "intercepting")
                                         else "round", self.pal.color(k))
                    with col:
                        yield Static(self._body(i), id=f"preview-body-{i}")

    def _body(self, i: int) -> Text:
        k, p, role, data, size = self.sources[i]
        t = Text()
        t.append_text(path_text(p, "dim"))
        meaning = {
            "metadata": "metadata only (a metacopy: read() does not return these bytes)",
            "data": "read() returns these bytes",
            "metadata+data": "stat and read() both come from here",
            "intercepting": "read() returns these bytes instead of the data-only layer's",
            "hidden": "hidden: no program sees these bytes through the mount",
            "stack": "in the lookup's stack",
        }.get(role, role)
        t.append("\n" + meaning + "\n\n", "italic")
        if not data:
            t.append("(empty)" if size == 0 else "(sparse: reads as zeros)", "dim")
            return t
        as_hex = self.hex if self.hex is not None else not looks_textual(data)
        t.append_text(hex_preview(data) if as_hex else text_preview(data))
        if size > len(data):
            t.append(f"\n… {size - len(data)} more bytes", "dim")
        return t

    def action_toggle_hex(self) -> None:
        if self.hex is None:
            self.hex = True
        else:
            self.hex = not self.hex
        for i in range(len(self.sources)):
            self.query_one(f"#preview-body-{i}", Static).update(self._body(i))
