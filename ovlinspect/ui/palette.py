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
#: the same hues, dark enough to read on a light theme's background
UPPER_LIGHT = "#8a5a00"
LOWERS_LIGHT = ("#0550ae", "#116329", "#8250df", "#0a6e6e", "#953800", "#3b6363", "#556300",
                "#2f4fd0", "#7a4a7a", "#1b6380")
DATAS_LIGHT = ("#b34700", "#a0307a", "#b3127a", "#8a4040")


def spread(i: int, n: int, start: float, end: float, dark: bool = True) -> str:
    """The ``i``-th of ``n`` distinct colours (more layers than the fixed lists hold): hues
    spread over ``start``..``end`` degrees (a range without red, which means an error), every
    other one lighter, so that neighbours differ in two ways."""
    import colorsys

    hue = (start + (end - start) * (i / max(1, n - 1))) % 360
    # light hues on a dark theme, dark ones on a light theme
    light = (0.62 if i % 2 == 0 else 0.78) if dark else (0.30 if i % 2 == 0 else 0.40)
    r, g, b = colorsys.hls_to_rgb(hue / 360, light, 0.65)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


class LayerPalette:
    """Colours, short names and chips of an engine's layers (by kernel layer number)."""

    def __init__(self, engine: Engine, dark: bool = True):
        self.engine = engine
        self.dark = dark
        upper, lowers, datas = (UPPER, LOWERS, DATAS) if dark else (UPPER_LIGHT, LOWERS_LIGHT, DATAS_LIGHT)
        #: text on a chip: black on the light hues of a dark theme, white on the dark ones
        self.chip_text = "black" if dark else "white"
        self.colors: dict[int, str] = {}
        for k, layer in enumerate(engine.klayers):
            if layer is None:
                continue
            role = engine.role(k)
            if role == "upper":
                self.colors[k] = upper
            elif role == "lower":
                self.colors[k] = (lowers[k - 1] if engine.nlower <= len(lowers)
                                  else spread(k - 1, engine.nlower, 45, 320, dark))
            else:
                n = len(engine.klayers) - 1 - engine.nlower
                i = k - 1 - engine.nlower
                self.colors[k] = datas[i] if n <= len(datas) else spread(i, n, 18, 40, dark)

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
        t.append(f" {e.role(k)} {e.json_index(k)}", Style(color=self.chip_text, bgcolor=self.color(k), bold=True))
        if label:
            t.append(" ", Style(bgcolor=self.color(k)))
            # labels are user data (directory names): render them literally
            t.append_text(esc_str(label[:40], Style(color=self.chip_text, bgcolor=self.color(k))))
        t.append(" ", Style(bgcolor=self.color(k)))
        return t

    def mini(self, k: int, width: int) -> Text:
        """A compact chip of at most ``width`` cells: `` 3 lab… `` (the layer number as JSON
        counts it, then what fits of its label), on the layer's colour."""
        e = self.engine
        layer = e.klayers[k]
        label = layer.label if layer is not None and layer.label else ""
        num = ("U" if e.role(k) == "upper" else ("D" if e.role(k) == "data" else "")) + str(e.json_index(k))
        bg = self.color(k)
        t = Text(f" {num}", Style(color="black", bgcolor=bg, bold=True))
        room = width - len(num) - 3
        if label and room >= 2:
            shown = label if len(label) <= room else label[: room - 1] + "…"
            t.append(" ", Style(bgcolor=bg))
            t.append_text(esc_str(shown, Style(color="black", bgcolor=bg)))
        t.append(" ", Style(bgcolor=bg))
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
