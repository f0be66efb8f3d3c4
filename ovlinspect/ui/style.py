"""Colours from the theme: ``themed(widget, "bold $text-error")`` -> a Rich style.

Rich text does not know Textual's ``$variables``; this resolves them against the running
theme, so a light theme gets its own dark-on-light colours instead of ones picked for dark.
Besides the theme's own variables (``$text-error``, ``$text-warning``, ``$text-success``,
``$text-primary``, ...) a few of the view's own are known, with a value for dark themes and one
for light ones: ``$whiteout`` (whiteouts, opaque directories), ``$metacopy``, ``$intercept``
(a layer that intercepts data meant for a data-only layer), ``$whatif``.

:class:`Ink` captures the variables once (a label drawn per row must not ask the theme each
time); :func:`ink_of` gives the app's for its current theme, made once per theme (the theme's
variables take 0.3 ms to make: a scan's labels asked for them 1,500 times, a fifth of the
view's CPU time while it scanned); :func:`themed` is the one-off form.
"""

from __future__ import annotations

import re
import weakref

from rich.style import Style
from textual.dom import DOMNode

_VAR = re.compile(r"\$([a-z][a-z0-9-]*)")

#: the view's own colours: (on a dark theme, on a light theme)
OWN = {
    "whiteout": ("#af87ff", "#6f42c1"),
    "metacopy": ("#5fd7d7", "#0a6e6e"),
    "intercept": ("#d75f00", "#b34700"),
    "whatif": ("#ff87ff", "#a0307a"),
}
#: the theme variables used here, as textual-dark has them (before a theme is there to ask)
DARK = {"text-error": "#D17E92", "text-warning": "#FFC473", "text-success": "#8AD4A1",
        "text-primary": "#57A5E2", "text-secondary": "#5684A5", "text-accent": "#FFC473"}


class Ink:
    """The running theme's colours, captured from ``node`` (textual-dark's when it has none)."""

    def __init__(self, node: DOMNode | None = None) -> None:
        variables: dict[str, str] = {}
        dark = True
        if node is not None:
            try:
                variables = node.app.get_css_variables()
                dark = node.app.current_theme.dark
            except Exception:  # not mounted yet: no theme to ask
                variables = {}
        self.dark = dark
        self.variables = dict(DARK) if not variables else dict(variables)
        for name, (on_dark, on_light) in OWN.items():
            self.variables[name] = on_dark if dark else on_light
        self._cache: dict[str, Style] = {}

    def __call__(self, spec: str) -> Style:
        style = self._cache.get(spec)
        if style is None:
            def colour(m: re.Match[str]) -> str:
                value = self.variables.get(m.group(1), "")
                return value if value.startswith("#") else "default"

            style = self._cache[spec] = Style.parse(_VAR.sub(colour, spec))
        return style


#: app -> (its theme's name, the Ink made for it)
_INKS: "weakref.WeakKeyDictionary[object, tuple[str, Ink]]" = weakref.WeakKeyDictionary()


def ink_of(node: DOMNode) -> Ink:
    """The :class:`Ink` of ``node``'s app in its current theme (textual-dark's colours for a
    node not in an app yet)."""
    try:
        app = node.app
        theme = app.theme
    except Exception:  # not mounted yet: no theme to ask
        return Ink()
    got = _INKS.get(app)
    if got is None or got[0] != theme:
        got = _INKS[app] = (theme, Ink(node))
    return got[1]


def themed(node: DOMNode, spec: str) -> Style:
    """``spec`` (a Rich style string) with each ``$name`` replaced by the theme's colour."""
    return ink_of(node)(spec)
