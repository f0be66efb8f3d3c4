"""Issue 12 in the view: the Problems panel by cause, the first screen at 80x24, and the rest of
the list (tab to the layer columns, the search moving the tree, the light theme, hidden mode).

Expected values come from the stacks' own definitions (which files redirect through ``/ab``),
never from the grouping under test."""

from __future__ import annotations

import pytest
from rich.color import Color
from textual.widgets import Checkbox, Input
from ui_helpers import demo_app, screen_text, settle, tree_lines

from ovlinspect.model.layers import Node
from ovlinspect.model.stack import Stack
from ovlinspect.rules.engine import Engine
from ovlinspect.sources.target import demo_stack
from ovlinspect.ui.app import OvlInspectApp
from ovlinspect.ui.details import Explanation, LayerColumn, LayerColumns
from ovlinspect.ui.problems import FEW, ProblemTree
from ui_stacks import PARAMS, _layer, engine, f, many_layers_stack

KERNEL = "6.18.0"


def _redirected_through(stack: Stack, prefix: bytes) -> list[bytes]:
    """The merged paths of the top layer's metacopy files whose redirect starts with prefix."""
    top = stack.lowers[0]
    out = []

    def walk(path):
        node = top.node(path)
        if node is None:
            return
        if node.is_dir:
            for name in sorted(top.listdir(path)):
                walk(path + (name,))
            return
        xattrs = dict(node.xattrs)
        redirect = xattrs.get(b"trusted.overlay.redirect")
        if redirect is not None and redirect.startswith(prefix):
            out.append(b"/" + b"/".join(path))

    walk(())
    return out


def _rows(ptree: ProblemTree):
    """(label, data) of every line the problems tree shows, in order."""
    out = []

    def visit(node):
        for c in node.children:
            out.append((str(c.label.plain if hasattr(c.label, "plain") else c.label), c.data))
            if c.is_expanded:
                visit(c)

    visit(ptree.root)
    return out


# ------------------------------------------------------------------------- by cause


async def test_problems_open_on_the_cause_its_fix_and_its_paths():
    stack = demo_stack("one-cause")
    eio = _redirected_through(stack, b"/ab/")
    assert len(eio) == 79  # the demo's own story: one plain /ab, 79 files through it
    app = OvlInspectApp(Engine(stack, kernel=KERNEL), auto_jump=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        ptree = app.query_one(ProblemTree)
        causes = [c for c in ptree.root.children]
        first = causes[0].label.plain
        assert "lower 3 (base3):/ab is a plain directory on the redirect path" in first
        assert first.endswith("→ 79 paths fail with EIO")
        # the shadowed file is a cause of its own, second (an error, one path); warnings last
        assert "/bin/shadowed reads the wrong bytes" in causes[1].label.plain
        assert all(c.label.plain.startswith("▲") for c in causes[2:])
        # the first cause is open: its fix once, the first paths, then a count
        rows = [c for c in causes[0].children]
        assert rows[0].label.plain.startswith("fix: remove or rename the directory")
        shown = [r.data.path for r in rows[1:] if r.data.path is not None]
        assert shown == sorted(eio)[:FEW]
        assert rows[-1].label.plain.startswith(f"… {79 - FEW} more")
        assert sum("fix:" in r.label.plain for r in rows) == 1
        # one line per cause, the others closed
        assert not any(c.is_expanded for c in causes[1:])
        # enter on "more" lists the rest, all of them
        ptree.focus()
        ptree.move_cursor(rows[-1])
        await pilot.press("enter")
        await settle(pilot)
        listed = [r.data.path for r in causes[0].children if r.data.path is not None]
        assert listed == sorted(eio)
        assert not any(r.data.more for r in causes[0].children)


async def test_enter_on_a_cause_path_selects_the_failing_path_itself():
    app = demo_app("one-cause", auto_jump=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        ptree = app.query_one(ProblemTree)
        ptree.focus()
        third = ptree.root.children[0].children[3]  # fix, /bin/f00, /bin/f01, /bin/f02
        assert third.data.path == b"/bin/f02"
        ptree.move_cursor(third)
        await pilot.press("enter")
        await settle(pilot)
        assert app.tree.cursor_node.data.path == (b"bin", b"f02") == app.selection.path
        assert app.res is not None and app.res.errno == "EIO"
        assert app.focused is app.tree


async def test_highlighting_a_cause_opens_it_and_shows_its_first_path():
    app = demo_app("one-cause", auto_jump=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        ptree = app.query_one(ProblemTree)
        ptree.focus()
        second = ptree.root.children[1]
        assert not second.is_expanded
        ptree.move_cursor(second)
        await settle(pilot)
        assert second.is_expanded
        assert second.children[0].label.plain.startswith("fix: remove the file from the regular layer")
        assert app.selection.path == (b"bin", b"shadowed")
        assert app.tree.cursor_line == 0  # highlighting shows; only enter moves the tree


async def test_n_reaches_the_one_shadowed_file_among_79_eio_in_one_key():
    app = demo_app("one-cause")  # opens on the first problem by itself
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await settle(pilot)
        assert app.selection.path == (b"bin", b"f00")
        await pilot.press("n")
        await settle(pilot)
        assert app.selection.path == (b"bin", b"shadowed")
        assert app.tree.cursor_node.data.path == (b"bin", b"shadowed")
        await pilot.press("N")
        await settle(pilot)
        assert app.selection.path == (b"bin", b"f00")
        # every problem path is still reached by n, each once
        seen = set()
        for _ in range(len(app.problem_list())):
            await pilot.press("n")
            await pilot.pause()
            seen.add(app.problem_list()[app.problem_index].path)
        assert {p for p in _redirected_through(app.engine.stack, b"/ab/")} <= seen


@pytest.mark.parametrize("how", ["process", "thread"])
async def test_the_scan_walks_the_stack_once(monkeypatch, how):
    """One walk for the findings and their causes (check's own), in the child process or,
    where the stack cannot move, in a thread; the view's general walk is not used."""
    import ovlinspect.ui.problems as problems

    monkeypatch.setenv("OVLINSPECT_SCAN", how)
    walks = []
    real_walk, real_check, real_child = Engine.walk, problems.check_findings, problems.ChildScan

    def counted(self, *a, **kw):
        import sys

        caller = sys._getframe(1).f_code.co_filename
        if "ovlinspect/rules/" not in caller and "ovlinspect/kernel/" not in caller:
            walks.append(("Engine.walk", caller))  # a walk started by the view
        return real_walk(self, *a, **kw)

    def checked(*a, **kw):
        walks.append(("check_findings", "thread"))
        return real_check(*a, **kw)

    def child(*a, **kw):
        walks.append(("check_findings", "process"))
        return real_child(*a, **kw)

    monkeypatch.setattr(Engine, "walk", counted)
    monkeypatch.setattr(problems, "check_findings", checked)
    monkeypatch.setattr(problems, "ChildScan", child)
    app = demo_app("one-cause", auto_jump=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert app.problems.done and len(app.problems.causes()) == 4
        assert walks == [("check_findings", how)], walks


# ------------------------------------------------------------------------- 80x24


def _bottom_height(app) -> int:
    return app.query_one("#bottom").outer_size.height


@pytest.mark.parametrize("name,where,step", [
    ("seed-eio", "lower 1 (B):/1e", "lstat  ✖ EIO"),
    ("one-cause", "lower 3 (base3):/ab", "lstat  ✖ EIO"),
])
async def test_80x24_the_first_screen_carries_the_failing_step_the_cause_and_the_fix(name, where, step):
    app = demo_app(name)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await settle(pilot)
        text = screen_text(app)
        assert step in text
        cause_line = next(line for line in text.splitlines() if "✖ " + where in line)
        assert "→" in cause_line and "EIO" in cause_line  # the effect survives the cut
        assert any(line.startswith("├ fix: ") for line in text.splitlines())
        assert _bottom_height(app) <= 24 // 4
        _assert_columns_start_at_an_edge(app)


async def test_80x24_on_seven_layers_the_shadowed_row_shows_its_mark_and_the_cause():
    app = OvlInspectApp(engine(many_layers_stack(7)), auto_jump=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.goto_path((b"usr", b"bin", b"tool"))
        await settle(pilot)
        text = screen_text(app)
        row = next(line for line in text.splitlines() if " tool " in line)
        assert "SHADOWED" in row  # before the dots, which give way
        assert "open   ▲ WRONG bytes from base3" in text
        assert "lower 3 (base3):/ab is a plain directory" in text
        assert _bottom_height(app) <= 24 // 4
        _assert_columns_start_at_an_edge(app)


def _assert_columns_start_at_an_edge(app) -> None:
    """No layer column is cut on its left (its title would read "er 0 meta")."""
    columns = app.query_one(LayerColumns)
    x = round(columns.scroll_x)
    shown = [c for c in columns.children if c.display]
    for col in shown:
        v = col.virtual_region
        assert v.right <= x or v.x >= x, (col.id, v, x)  # off to the left, or whole
    assert x in {c.virtual_region.x for c in shown}


async def test_no_problems_takes_one_line():
    a = _layer("A", [("/etc/hostname", f(b"h\n"), b"h\n")])
    b = _layer("B", [("/etc/passwd", f(b"p\n"), b"p\n"), ("/bin", Node("dir", 0o755))])
    app = OvlInspectApp(engine(Stack(lowers=[a, b], options="", source="test:clean", params=PARAMS)))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.problems.done and not app.problems.findings
        text = screen_text(app)
        status = next(line for line in text.splitlines() if "no problems found" in line)
        assert "scanned" in status
        assert _bottom_height(app) == 3  # the tabs and that line
        # another tab gets its room back
        await pilot.press("slash")
        await settle(pilot)
        assert _bottom_height(app) >= 6


# ------------------------------------------------------------------------- the rest of the list


async def test_tab_reaches_the_layer_columns_and_arrows_scroll_them():
    app = OvlInspectApp(engine(many_layers_stack(25)), auto_jump=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.goto_path((b"usr", b"bin"))  # a directory of 25 layers: wider than the screen
        await settle(pilot)
        columns = app.query_one(LayerColumns)
        assert columns.max_scroll_x > 0
        columns.scroll_to(x=0, animate=False, immediate=True)
        await pilot.pause()
        await pilot.press("tab")
        assert app.focused is columns
        before = columns.scroll_x
        await pilot.press("right", "right", "right")
        await settle(pilot)
        assert columns.scroll_x > before
        await pilot.press("left", "left", "left")
        await settle(pilot)
        assert columns.scroll_x == before
        await pilot.press("tab")
        assert isinstance(app.focused, Explanation)


async def test_search_enter_moves_the_tree_cursor():
    app = demo_app("one-cause", auto_jump=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("slash")
        await pilot.press(*"shadowed")
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        assert app.tree.cursor_node.data.path == (b"bin", b"shadowed") == app.selection.path
        # the list keeps the keys: down goes to the next match (none here) without leaving it
        assert app.focused is app.query_one("#search-results")


async def test_the_problem_paths_only_box_reads_differently_on_and_off():
    app = demo_app("one-cause", auto_jump=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("slash")
        await settle(pilot)
        box = app.query_one("#search-problems", Checkbox)
        off_text, off_style = str(box.label), box.rich_style
        app.query_one("#search-input", Input).focus()
        await pilot.press("ctrl+t")
        await settle(pilot)
        assert box.value
        on_text, on_style = str(box.label), box.rich_style
        assert off_text != on_text and "ON" in on_text
        assert off_style.bgcolor != on_style.bgcolor or off_style.color != on_style.color


def _contrast(a: Color, b: Color) -> float:
    def lum(c: Color) -> float:
        r, g, bl = c.get_truecolor()

        def ch(v):
            v /= 255
            return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

        return 0.2126 * ch(r) + 0.7152 * ch(g) + 0.0722 * ch(bl)

    la, lb = sorted((lum(a), lum(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


@pytest.mark.parametrize("name,path", [("whiteouts", (b"etc",)), ("seed", (b"foo",)),
                                       ("one-cause", (b"bin", b"shadowed"))])
async def test_on_the_light_theme_every_label_stands_out(name, path):
    app = demo_app(name, auto_jump=False)
    async with app.run_test(size=(130, 40)) as pilot:
        await settle(pilot)
        app.theme = "textual-light"
        await settle(pilot)
        await pilot.press("h")
        await settle(pilot)
        app.goto_path(path)
        await settle(pilot)
        tree = app.tree
        background = Color.parse(app.get_css_variables()["surface"])
        texts = []

        def visit(node):
            if node.data is not None:
                texts.append(tree.entry_text(node, node.data))
            if node.is_expanded:
                for c in node.children:
                    visit(c)

        visit(tree.root)
        texts.append(app.query_one("#explain-text").content)
        texts += [c.content for c in app.query(LayerColumn) if c.display]
        assert all(hasattr(t, "spans") for t in texts)
        checked = 0
        for t in texts:
            for span in t.spans:
                style = span.style if not isinstance(span.style, str) else None
                if style is None or style.color is None or style.bgcolor is not None:
                    continue  # chips carry their own background
                if style.color.is_default:
                    continue
                words = t.plain[span.start:span.end].strip()
                if not words:
                    continue
                checked += 1
                assert _contrast(style.color, background) >= 2.5, (words, style)
        assert checked > 5


async def test_hidden_mode_rows_fit_the_pane():
    app = demo_app("whiteouts", auto_jump=False)
    async with app.run_test(size=(130, 40)) as pilot:
        await settle(pilot)
        app.goto_path((b"etc",))
        await settle(pilot)
        await pilot.press("right", "h")
        await settle(pilot)
        width = app.tree.scrollable_content_region.width
        lines = tree_lines(app)
        motd = next(line for line in lines if line.strip().startswith("motd"))
        assert "whiteout in upper" in motd
        assert len(motd) + 2 <= width  # indent is two per level here, plus the "  " prefix
        assert app.query_one("#left").border_title == "merged tree + hidden (h)"


async def test_counts_in_the_problems_status_are_proper_plurals():
    app = demo_app("seed-eio", auto_jump=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        status = next(line for line in screen_text(app).splitlines() if "scanned" in line)
        assert "✖ 1 error " in status and "▲ 1 warning " in status
        assert "1 errors" not in status and "1 paths" not in status


async def test_the_theme_colours_are_made_once_per_theme():
    """Labels ask for the theme's colours (``themed``, ``ink_of``) each time they are drawn:
    the app's theme variables are made once per theme, and a new theme gets its own."""
    from ovlinspect.ui.style import ink_of, themed

    app = demo_app("one-cause", auto_jump=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        made = []
        real = type(app).get_css_variables

        def counted(self):
            made.append(self.theme)
            return real(self)

        type(app).get_css_variables = counted
        try:
            dark = ink_of(app.problems)
            assert ink_of(app.tree) is dark and dark.dark
            error_on_dark = themed(app.problems, "$text-error")
            app.theme = "textual-light"
            await pilot.pause()
            made.clear()
            light = ink_of(app.problems)
            assert light is not dark and not light.dark
            assert themed(app.problems, "$text-error") != error_on_dark
            made.clear()
            for _ in range(50):
                themed(app.problems, "bold $text-success")
                ink_of(app.tree)
            assert made == []  # (Textual asks for them itself when the theme changes)
        finally:
            type(app).get_css_variables = real


def _many_causes_stack(n: int) -> Stack:
    """n metacopy files each redirected to its own missing object: n causes, one path each."""
    from ovlinspect.model.layers import MemoryLayer

    meta, objects = MemoryLayer(label="meta"), MemoryLayer(label="objects")
    meta.add((), Node("dir", 0o755))
    meta.add((b"d",), Node("dir", 0o755))
    objects.add((), Node("dir", 0o755))
    for i in range(n):
        meta.add((b"d", b"f%04d" % i), Node("file", 0o644, 10, xattrs=(
            (b"trusted.overlay.metacopy", b""), (b"trusted.overlay.redirect", b"/ob/%04d" % i))))
    return Stack(lowers=[meta], data=[objects], options="metacopy=on", params=PARAMS)


async def test_a_scan_of_thousands_of_causes_gives_rows_to_the_first_and_counts_the_rest(monkeypatch):
    """A missing object store is a cause per object: the tree holds rows for the first SHOWN
    causes (the worst first, once the scan is done) and one "… N more causes" row, which enter
    turns into PAGE more rows; the status line counts them all."""
    import ovlinspect.ui.problems as problems

    monkeypatch.setattr(problems, "SHOWN", 4)
    monkeypatch.setattr(problems, "PAGE", 3)
    monkeypatch.setenv("OVLINSPECT_SCAN", "thread")
    app = OvlInspectApp(Engine(_many_causes_stack(9)), auto_jump=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        panel = app.problems
        assert panel.done and panel.counts() == {"error": 9, "warning": 0, "info": 0}
        status = str(panel.query_one("#problems-status").render())
        assert "9 errors" in status and "(9 paths)" in status
        roots = panel.tree.root.children
        heads = [n.data.row.cause for n in roots if n.data.row is not None]
        assert heads == [r.cause for r in panel.ordered_rows()[:4]]
        assert str(roots[-1].label) == "… 5 more causes (enter to show 3)"
        panel.tree.focus()
        panel.tree.move_cursor(roots[-1])
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        roots = panel.tree.root.children
        assert [n.data.row.cause for n in roots if n.data.row is not None] == [
            r.cause for r in panel.ordered_rows()[:7]]
        assert str(roots[-1].label) == "… 2 more causes (enter to show 2)"
        panel.show_more_causes()
        await pilot.pause()
        assert all(n.data.row is not None for n in panel.tree.root.children)
        assert len(panel.tree.root.children) == 9 and panel.more_causes is None
