"""One colour per layer, used for that layer everywhere on screen.

The upper layer is gold, regular lower layers cycle through blues, greens and violets, data-only
layers through pinks.  Red is never a layer colour: it means an error.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text

from ..rules.engine import Engine
from .render import esc_str

UPPER = "#e5c07b"
LOWERS = ("#61afef", "#98c379", "#c678dd", "#56b6c2", "#d19a66", "#8fbcbb", "#a9b665",
          "#7aa2f7", "#b48ead", "#88c0d0")
DATAS = ("#f5a97f", "#f4b8e4", "#ea76cb", "#eebebe")


class LayerPalette:
    """Colours, short names and chips of an engine's layers (by kernel layer number)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.colors: dict[int, str] = {}
        for k, layer in enumerate(engine.klayers):
            if layer is None:
                continue
            role = engine.role(k)
            if role == "upper":
                self.colors[k] = UPPER
            elif role == "lower":
                self.colors[k] = LOWERS[(k - 1) % len(LOWERS)]
            else:
                self.colors[k] = DATAS[(k - 1 - engine.nlower) % len(DATAS)]

    def color(self, k: int | None) -> str:
        if k is None:
            return "white"
        return self.colors.get(k, "white")

    def style(self, k: int | None, bold: bool = False) -> Style:
        return Style(color=self.color(k), bold=bold)

    def short(self, k: int) -> str:
        """``A`` (the layer's label) or ``lower 1`` when it has none."""
        layer = self.engine.klayers[k]
        label = layer.label if layer is not None and layer.label else ""
        if label and len(label) <= 24:
            return label
        return f"{self.engine.role(k)} {self.engine.json_index(k)}"

    def chip(self, k: int) -> Text:
        """`` lower 0 · A `` on the layer's colour."""
        e = self.engine
        layer = e.klayers[k]
        label = layer.label if layer is not None and layer.label else ""
        t = Text()
        t.append(f" {e.role(k)} {e.json_index(k)}", Style(color="black", bgcolor=self.color(k), bold=True))
        if label:
            t.append(" ", Style(bgcolor=self.color(k)))
            # labels are user data (directory names): render them literally
            t.append_text(esc_str(label[:40], Style(color="black", bgcolor=self.color(k))))
        t.append(" ", Style(bgcolor=self.color(k)))
        return t

    def tag(self, k: int) -> Text:
        """The layer's short name in its colour (for inline mentions)."""
        return esc_str(self.short(k), self.style(k, bold=True))

    def colorize(self, text: Text) -> Text:
        """Colour every mention of a layer label (``lower 1 (B)``) in ``text``."""
        for k in self.colors:
            # labels are matched as the text shows them (escaped)
            text.highlight_words([esc_str(self.engine.label(k)).plain], self.style(k, bold=True))
        return text
