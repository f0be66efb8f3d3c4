"""A big directory in the view (5,000 entries here for speed; bench/bench_ui.py measures 20,000): listed whole at once, resolved only where drawn, any
entry one jump away, failing entries selected as themselves, no cursor moving after a key."""

from __future__ import annotations

import threading

import pytest
from ui_helpers import settle

from ovlinspect.rules.engine import Engine
from ovlinspect.model.layers import Node
from ovlinspect.model.stack import Stack
from ovlinspect.ui.app import OvlInspectApp
from ui_stacks import KERNEL, PARAMS, T, filled_layer

N = 5_000
#: every FAIL-th entry is a metacopy whose redirect walks through B's plain /1e: EIO
FAIL = 1_000


def big_stack() -> Stack:
    d = Node("dir", 0o755)
    a = {(): d, (b"big",): d, (b"a-small",): Node("file", 0o644, 1)}
    c = {(): d, (b"1e",): d}
    for i in range(N):
        name = b"f%05d" % i
        if i % FAIL == FAIL - 1:
            obj = b"o%05d" % i
            a[(b"big", name)] = Node("file", 0o644, 5, xattrs=((T + b"metacopy", b""),
                                                               (T + b"redirect", b"/1e/" + obj)))
            c[(b"1e", obj)] = Node("file", 0o644, 5)
        else:
            a[(b"big", name)] = Node("file", 0o644, 1)
    b = {(): d, (b"1e",): d, (b"1e", b"unrelated"): Node("file", 0o644, 1)}
    return Stack(lowers=[filled_layer("A", a), filled_layer("B", b)], data=[filled_layer("C", c)], options="metacopy=on",
                 params=PARAMS, source="test:big")


FAILING = [(b"big", b"f%05d" % i) for i in range(N) if i % FAIL == FAIL - 1]


@pytest.fixture(scope="module")
def stack() -> Stack:
    return big_stack()


def _app(stack, **kw) -> OvlInspectApp:
    kw.setdefault("auto_jump", False)
    kw.setdefault("auto_jump_window", None)
    return OvlInspectApp(Engine(stack, kernel=KERNEL), **kw)


def test_the_stack_fails_where_meant(stack):
    e = Engine(stack, kernel=KERNEL)
    assert [e.resolve(p).errno for p in FAILING] == ["EIO"] * len(FAILING)
    assert e.resolve((b"big", b"f00000")).errno is None


async def test_a_big_directory_is_listed_whole_and_resolved_only_where_drawn(stack):
    app = _app(stack)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        app.goto_path((b"big",))
        await settle(pilot)
        await pilot.press("right")
        await settle(pilot)
        big = app.tree.find_loaded((b"big",))
        assert big is not None and len(big.children) == N
        assert all(c.data.kind == "merged" for c in big.children)  # no "more" row
        resolved = sum(1 for c in big.children if c.data.res is not None)
        assert 0 < resolved <= 36, resolved  # the rows on screen, not all of them
        await pilot.press("end")  # /big is the last name at the root: its last entry is the last line
        await pilot.pause()
        last = (b"big", b"f%05d" % (N - 1))
        assert app.tree.cursor_node.data.path == last
        assert app.selection.path == last and app.res is not None and app.res.errno == "EIO"
        assert sum(1 for c in big.children if c.data.res is not None) <= 2 * 36


async def test_jumping_to_a_failing_path_selects_it_not_its_parent(stack):
    app = _app(stack)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        want = FAILING[-1]
        app.goto_path(want)
        await settle(pilot)
        assert app.tree.cursor_node.data.path == want
        assert app.selection.path == want and app.res.errno == "EIO"


async def test_the_auto_jump_selects_the_first_failing_entry_and_N_the_last_problem(stack):
    app = _app(stack, auto_jump=True, auto_jump_window=None)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        await settle(pilot)
        assert app.problems.done
        assert app.tree.cursor_node.data.path == FAILING[0] == app.selection.path
        last = app.problem_list()[-1].path
        await pilot.press("N")  # the previous problem from the first: the last one
        await settle(pilot)
        want = tuple(p for p in last.split(b"/") if p)
        assert app.tree.cursor_node.data.path == want == app.selection.path


async def test_a_key_pressed_while_a_jump_loads_keeps_the_cursor(stack):
    app = _app(stack)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        tree = app.tree
        assert tree.cursor_node is tree.root
        # hold the listing of /big until the key is in (a slow disk), so the order is certain
        release = threading.Event()
        list_dir = app.lister.list_dir

        def slow_list_dir(path, *a, **kw):
            if path == (b"big",):
                release.wait(10)
            return list_dir(path, *a, **kw)

        app.lister.list_dir = slow_list_dir
        app.goto_path(FAILING[-1])  # /big is not listed yet: the jump waits for its listing
        await pilot.pause()
        await pilot.press("down")  # the user moves on meanwhile
        release.set()
        await settle(pilot)
        assert tree.reveal_abandoned
        assert tree.cursor_node.data.path == (b"1e",)  # the first name under /
        assert app.selection.path == (b"1e",)


async def test_the_startup_jump_does_not_come_after_a_key(stack):
    """The scan's first error opens by itself only if the user has not pressed a key."""
    for keys, expected in (((), FAILING[0]), (("down", "up"), ())):
        app = _app(stack)  # no jump while the scan runs: the test decides when it is offered
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            if keys:
                await pilot.press(*keys)  # back on the root
            assert app.tree.cursor_node is app.tree.root and app.problems.done
            app.auto_jump = True
            app._maybe_auto_jump()  # what each scan update does
            await settle(pilot)
            assert app.selection.path == expected
            assert (app.tree.cursor_node.data.path or ()) == expected


async def test_search_finds_failing_paths(stack):
    app = _app(stack)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        await pilot.press("slash", *"f04999")
        await settle(pilot)
        results = app.query_one("#search-results")
        assert FAILING[-1] in results.paths
