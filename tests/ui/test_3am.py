"""Issue 12's stack, all at once: 25 layers, a 20,000-entry directory (/var) and one cause behind 79
EIO paths (a plain directory ``base3:/ab`` on the redirect path), at 80x24, 120x35 and 200x50.

The first screen carries the cause and its fix without a key; any entry of the big directory is
one jump away; the cursor never moves after a key; the search moves the tree cursor.  Expected
values come from the stack's definition below, not from the code under test.
"""

from __future__ import annotations

import pytest
from ui_helpers import screen_text, settle

from ovlinspect.model.layers import Node
from ovlinspect.model.stack import Stack
from ovlinspect.rules.engine import Engine
from ovlinspect.ui.app import OvlInspectApp
from ui_stacks import KERNEL, PARAMS, T, filled_layer

LAYERS = 25      # 24 regular lower layers and one data-only layer
BIG = 20_000     # entries of /var, the last name at the root
EIO = 79         # metacopy files whose redirect walks through lower 3 (base3):/ab
CAUSE_LAYER = 3  # base3, kernel layer 4


def stack_3am() -> Stack:
    d = Node("dir", 0o755)
    top = {(): d, (b"var",): d, (b"bin",): d}
    for i in range(BIG):
        top[(b"var", b"f%05d" % i)] = Node("file", 0o644, 1)
    objects = {(): d, (b"ab",): d}
    for i in range(EIO):
        obj = b"o%03d" % i
        top[(b"bin", b"e%03d" % i)] = Node("file", 0o755, 7, xattrs=((T + b"metacopy", b""),
                                                                     (T + b"redirect", b"/ab/" + obj)))
        objects[(b"ab", obj)] = Node("file", 0o755, 7)
    lowers = [filled_layer("top", top)]
    for k in range(1, LAYERS - 1):
        entries = {(): d, (b"etc",): d, (b"etc", b"base%d" % k): Node("file", 0o644, 3)}
        if k == CAUSE_LAYER:
            entries[(b"ab",)] = d  # the one cause: a plain directory on the redirect path
        lowers.append(filled_layer(f"base{k}", entries))
    return Stack(lowers=lowers, data=[filled_layer("objects", objects)], options="metacopy=on",
                 params=PARAMS, source="test:3am")


@pytest.fixture(scope="module")
def stack() -> Stack:
    return stack_3am()


def _app(stack: Stack, **kw) -> OvlInspectApp:
    kw.setdefault("auto_jump_window", None)
    return OvlInspectApp(Engine(stack, kernel=KERNEL), **kw)


def test_the_stack_is_what_it_says(stack):
    e = Engine(stack, kernel=KERNEL)
    assert len(e.klayers) == LAYERS + 1  # and the upper slot
    failing = [e.resolve((b"bin", b"e%03d" % i)) for i in range(EIO)]
    assert {r.errno for r in failing} == {"EIO"}
    assert e.resolve((b"var", b"f%05d" % (BIG - 1))).errno is None


SIZES = [(80, 24), (120, 35), (200, 50)]


async def _scanned(pilot) -> None:
    """Until the background scan is over and its last results are on screen."""
    for _ in range(400):
        await settle(pilot)
        if pilot.app.problems.done:
            break
    await settle(pilot)
    assert pilot.app.problems.done


@pytest.mark.parametrize("size", SIZES)
async def test_the_first_screen_carries_the_cause_and_the_fix(stack, size):
    app = _app(stack, auto_jump=True)
    async with app.run_test(size=size) as pilot:
        await _scanned(pilot)
        text = " ".join(screen_text(app).split())
        assert app.selection.path[:1] == (b"bin",) and app.res is not None and app.res.errno == "EIO"
        assert "base3" in text and "/ab" in text  # the layer and the path at fault
        assert f"{EIO} paths fail with EIO" in text
        assert "fix:" in text or "fix " in text
        assert "remove or rename the directory" in text  # the rule's fix, on screen


@pytest.mark.parametrize("size", SIZES)
async def test_any_entry_of_the_big_directory_is_one_jump_away(stack, size):
    app = _app(stack, auto_jump=False)
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        app.goto_path((b"var",))
        await settle(pilot)
        await pilot.press("right")
        await settle(pilot)
        big = app.tree.find_loaded((b"var",))
        assert big is not None and len(big.children) == BIG
        await pilot.press("end")  # /var is the last name at the root: its last entry is the last line
        await pilot.pause()
        assert app.tree.cursor_node.data.path == (b"var", b"f%05d" % (BIG - 1)) == app.selection.path
        app.goto_path((b"var", b"f%05d" % (BIG // 2)))  # any entry: one jump
        await settle(pilot)
        assert app.tree.cursor_node.data.path == (b"var", b"f%05d" % (BIG // 2))
        app.goto_path((b"var", b"f%05d" % (BIG - 1)))
        await settle(pilot)
        assert app.tree.cursor_node.data.path == (b"var", b"f%05d" % (BIG - 1)) == app.selection.path


@pytest.mark.parametrize("size", SIZES)
async def test_the_cursor_never_moves_after_a_key(stack, size):
    app = _app(stack, auto_jump=True)
    async with app.run_test(size=size) as pilot:
        await pilot.press("down")  # before the scan has found anything
        here = app.tree.cursor_node.data.path if app.tree.cursor_node.data else ()
        await _scanned(pilot)
        now = app.tree.cursor_node.data.path if app.tree.cursor_node.data else ()
        assert now == here  # the scan's first error did not take the cursor away


@pytest.mark.parametrize("size", SIZES)
async def test_the_search_moves_the_tree_cursor(stack, size):
    app = _app(stack, auto_jump=False)
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        await pilot.press("slash")
        await pilot.press(*"e078")
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        want = (b"bin", b"e078")
        assert app.tree.cursor_node.data.path == want == app.selection.path
        assert app.res is not None and app.res.errno == "EIO"  # the failing path itself
