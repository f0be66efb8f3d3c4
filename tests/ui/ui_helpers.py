"""Helpers for the interactive view's tests: deterministic apps, settling, reading the screen."""

from __future__ import annotations

from ovlinspect.rules.engine import Engine
from ovlinspect.sources.target import demo_stack
from ovlinspect.ui.app import OvlInspectApp

KERNEL = "6.18.0"


def demo_app(name: str, **kwargs) -> OvlInspectApp:
    # no time limit on the first error opening by itself: a slow machine must not change the screen
    kwargs.setdefault("auto_jump_window", None)
    return OvlInspectApp(Engine(demo_stack(name), kernel=KERNEL), **kwargs)


async def settle(pilot, rounds: int = 4) -> None:
    """Wait until every worker is done and every message handled (never sleep)."""
    app = pilot.app
    for _ in range(rounds):
        await app.workers.wait_for_complete()
        await pilot.pause()


def tree_lines(app) -> list[str]:
    """The merged tree's lines as plain text (what the user reads)."""
    tree = app.tree
    out = []

    def visit(node, depth):
        out.append("  " * depth + tree.entry_text(node, node.data).plain)
        if node.is_expanded:
            for c in node.children:
                visit(c, depth + 1)

    visit(tree.root, 0)
    return out


def screen_text(app) -> str:
    """Everything on screen, line by line, as the terminal would show it (from the SVG export)."""
    import html
    import re

    svg = app.export_screenshot()
    rows: dict[float, list[tuple[float, str]]] = {}
    for x, y, text in re.findall(r'<text[^>]*?x="([\d.]+)" y="([\d.]+)"[^>]*>(.*?)</text>', svg, flags=re.S):
        rows.setdefault(float(y), []).append((float(x), html.unescape(text).replace("\xa0", " ")))
    lines = []
    for y in sorted(rows):
        line = ""
        for x, text in sorted(rows[y]):
            col = round(x / 12.2)
            line = line.ljust(col) + text
        lines.append(line.rstrip())
    return "\n".join(lines)
