"""Colours from the theme: ``themed(widget, "bold $text-error")`` -> a Rich style.

Rich text does not know Textual's ``$variables``; this resolves them against the running
theme, so a light theme gets its own dark-on-light colours instead of ones picked for dark.
"""

from __future__ import annotations

import re

from rich.style import Style
from textual.dom import DOMNode

_VAR = re.compile(r"\$([a-z][a-z0-9-]*)")


def themed(node: DOMNode, spec: str) -> Style:
    """``spec`` (a Rich style string) with each ``$name`` replaced by the theme's colour."""
    try:
        variables = node.app.get_css_variables()
    except Exception:  # not mounted yet: no theme to ask
        variables = {}

    def colour(m: re.Match[str]) -> str:
        value = variables.get(m.group(1), "")
        return value if value.startswith("#") else "default"

    return Style.parse(_VAR.sub(colour, spec))
