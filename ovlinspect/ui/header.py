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
        t.append(f" (real: {base.stack.options or 'defaults'}; W resets)", "dim")
    if engine.mount_errno:
        t.append("\n")
        t.append(f" mount fails: {engine.mount_errno} ", Style(color="white", bgcolor="#d70000", bold=True))
        t.append(" ")
        t.append_text(esc_str("; ".join(engine.options.mount_log) or "the kernel refuses these options",
                              "#ff8787"))
    t.append("\n")
    # layers as chips, joined the way lowerdir= joins them
    t.append("layers  ", "bold")
    first = True
    for k, layer in enumerate(engine.klayers):
        if layer is None:
            continue
        role = engine.role(k)
        if not first:
            t.append(" :: " if role == "data" else (" : " if role == "lower" and k > 1 else " │ "), "dim")
        first = False
        t.append_text(pal.chip(k))
    return t


def _fmt(v: object) -> str:
    if v is True:
        return "on"
    if v is False:
        return "off"
    return str(v)


class StackHeader(Static):
    """Three lines at the top of the screen (four when the mount would fail)."""

    def show(self, engine: Engine, pal: LayerPalette, base: Engine) -> None:
        self.update(header_text(engine, pal, base))
