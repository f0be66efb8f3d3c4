"""The stack header: where the stack comes from, the kernel, the options, and the layer chips."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widgets import Static

from ..rules.engine import Engine
from .palette import LayerPalette
from .render import esc_str
from .session import current_choices

WHATIF_STYLE = Style(color="black", bgcolor="#ff87ff", bold=True)


def header_text(engine: Engine, pal: LayerPalette, base: Engine, width: int = 200) -> Text:
    s = engine.stack
    whatif = engine is not base
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append("ovlinspect ", "bold #5fafff")
    t.append_text(esc_str(s.source or "stack", "bold"))
    if s.mountpoint and s.mountpoint != s.source:
        t.append("  on ", "dim")
        t.append_text(esc_str(s.mountpoint))
    t.append(f"   {engine.profile.summary(engine.kernel)}", "dim")
    if s.description:
        first = s.description.strip().split("\n\n")[0].replace("\n", " ")
        t.append("   ")
        t.append_text(esc_str(first, "italic #9e9e9e", limit=160))
    t.append("\n")
    # options: the four what-if ones, then the rest of the effective set
    t.append("options ", "bold")
    now = current_choices(engine)
    was = current_choices(base)
    for key, value in now.items():
        shown = key if key == "userxattr" and value == "on" else (
            f"{key}=off" if key == "userxattr" else f"{key}={value}")
        if value != was[key]:
            t.append(f" {shown} ", WHATIF_STYLE)
        else:
            t.append(shown)
        t.append("  ")
    extra = {k: v for k, v in engine.options.as_json().items() if k not in now}
    for k, v in extra.items():
        t.append(f"{k}={_fmt(v)}  ", "dim")
    if whatif:
        t.append(" WHAT-IF ", WHATIF_STYLE)
        # name what the flip changed, not the real option string (which read as in effect)
        flips = [f"{k} {was[k]}→{v}" for k, v in now.items() if v != was[k]]
        t.append(f" {', '.join(flips)}  (W: back to the real options)", "dim")
    if engine.mount_errno:
        t.append("\n")
        t.append(f" mount fails: {engine.mount_errno} ", Style(color="white", bgcolor="#d70000", bold=True))
        t.append(" ")
        t.append_text(esc_str("; ".join(engine.options.mount_log) or "the kernel refuses these options",
                              "#ff8787"))
    t.append("\n")
    # layers as chips, joined the way lowerdir= joins them; with many layers, compact chips
    # (number, then as much of the label as fits) over as many lines as they need: every layer
    # stays on screen, whatever the width
    t.append_text(layers_text(engine, pal, width))
    return t


def layers_text(engine: Engine, pal: LayerPalette, width: int) -> Text:
    """``layers  `` and a chip per layer: full chips when they fit on the line, else compact
    ones on up to three lines."""
    ks = [k for k, layer in enumerate(engine.klayers) if layer is not None]

    def sep(k: int) -> str:
        role = engine.role(k)
        return " :: " if role == "data" else (" : " if role == "lower" and k > 1 else " │ ")

    full = Text("layers  ", style="bold")
    for i, k in enumerate(ks):
        if i:
            full.append(sep(k), "dim")
        full.append_text(pal.chip(k))
    if full.cell_len <= width - 2 or not ks:
        return full
    # compact: " 3 label " chips, separators of one cell, wrapped under "layers  "
    avail = max(20, width - 2 - 8)
    rows = 2 if engine.mount_errno else 3  # the header holds five lines
    per_row = -(-len(ks) // rows)
    each = max(4, min(18, avail // per_row - 1))
    lines: list[Text] = [Text("layers  ", style="bold")]
    used = 8
    for i, k in enumerate(ks):
        chip = pal.mini(k, each)
        s = Text(":" if engine.role(k) == "lower" and k > 1 else ("‖" if engine.role(k) == "data" else "│"),
                 style="dim") if i else Text()
        if used + s.cell_len + chip.cell_len > width - 2 and used > 8:
            lines.append(Text("        "))
            used = 8
            s = Text()
        lines[-1].append_text(s)
        lines[-1].append_text(chip)
        used += s.cell_len + chip.cell_len
    return Text("\n").join(lines)


def _fmt(v: object) -> str:
    if v is True:
        return "on"
    if v is False:
        return "off"
    return str(v)


class StackHeader(Static):
    """Three lines at the top of the screen (four when the mount would fail)."""

    def show(self, engine: Engine, pal: LayerPalette, base: Engine) -> None:
        self._shown = (engine, pal, base)
        self.update(header_text(engine, pal, base, self._width()))

    def _width(self) -> int:
        return (self.size.width or self.app.size.width or 200) - 2  # padding

    def on_resize(self) -> None:
        shown = getattr(self, "_shown", None)
        if shown is not None:
            self.update(header_text(*shown, self._width()))
