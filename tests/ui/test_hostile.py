"""Names, targets, labels and xattr values are hostile bytes: shown literally, never interpreted."""

from __future__ import annotations

from ui_helpers import screen_text, settle, tree_lines

from ovlinspect.ui.app import OvlInspectApp
from ovlinspect.ui.panels import PathList
from ui_stacks import engine, hostile_stack

SIZE = (140, 44)

SHOWN = [
    "[red]x",
    "[blink]x",
    "esc\\x1b[31mred\\x1b[0m",
    "bad\\xff\\xfeutf8",
    "bidi\\u202eevil",
    "bell\\x07and\\x09tab",
    "dir[bold]/",
]


def _no_controls(text: str) -> None:
    bad = sorted({repr(c) for c in text if (ord(c) < 32 and c != "\n") or 0x7F <= ord(c) < 0xA0
                  or c in "\u202e\u202d\u200f\u2066\u2067\u2068\u2069"})
    assert not bad, f"control characters reached the screen: {bad}"


async def test_hostile_names_in_the_tree_read_literally():
    app = OvlInspectApp(engine(hostile_stack()), auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        lines = "\n".join(tree_lines(app))
        for name in SHOWN:
            assert name in lines, name
        text = screen_text(app)
        _no_controls(text)
        for name in SHOWN:
            assert name in text, name
        # the header: the source and the layer labels are user data too
        assert "test:hostile[blink]" in text
        assert "top[red]" in text
        assert "B\\x1b[0m" in text


async def test_hostile_xattr_values_and_targets_read_literally():
    app = OvlInspectApp(engine(hostile_stack()), auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.goto_path((b"red",))
        await settle(pilot)
        text = screen_text(app)
        _no_controls(text)
        assert "/obj/\\x1b[5m[blink]" in text  # the redirect xattr, in the column and the tree
        app.goto_path((b"link",))
        await settle(pilot)
        text = screen_text(app)
        _no_controls(text)
        assert "\\x1b[2J[red]target" in text
        app.goto_path((b"dir[bold]", b"inner\x1b]0;title\x07"))
        await settle(pilot)
        text = screen_text(app)
        _no_controls(text)
        assert "inner\\x1b]0;title\\x07" in text


async def test_hostile_names_in_search_problems_and_preview():
    app = OvlInspectApp(engine(hostile_stack()), auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("slash", "[", "r", "e", "d", "]")
        await settle(pilot)
        assert (b"[red]x",) in app.query_one("#search-results", PathList).paths
        text = screen_text(app)
        _no_controls(text)
        assert "/[red]x" in text
        await pilot.press("escape")
        app.goto_path((b"esc\x1b[31mred\x1b[0m",))
        await settle(pilot)
        await pilot.press("p")
        await pilot.pause()
        _no_controls(screen_text(app))


async def test_hostile_names_in_the_command_palette():
    app = OvlInspectApp(engine(hostile_stack()), auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+p")
        await pilot.pause()
        for ch in "/[blink]x":
            await pilot.press(ch)
        await settle(pilot)
        text = screen_text(app)
        _no_controls(text)
        assert "Go to /[blink]x" in text
        await pilot.press("enter")
        await settle(pilot)
        assert app.selection.path == (b"[blink]x",)
