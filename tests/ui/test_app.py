"""Behaviour of the interactive view, driven headless with Pilot."""

from __future__ import annotations

import pytest
from ui_helpers import demo_app, screen_text, settle, tree_lines
from textual.color import Color
from textual.widgets import Input, TabbedContent

from ovlinspect.sources.target import demo_names
from ovlinspect.ui.app import OvlInspectApp
from ovlinspect.ui.details import LayerColumns
from ovlinspect.ui.panels import PathList
from ovlinspect.ui.problems import ProblemTree
from ovlinspect.ui.screens import HelpScreen, PreviewScreen, WhatIfScreen
from ui_stacks import engine, seed_stack

SIZE = (130, 40)


# ------------------------------------------------------------------------- first screen


async def test_first_screen_shows_the_problem_without_a_keypress():
    app = demo_app("seed")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        text = screen_text(app)
        assert "1 error" in text
        assert "shadowed-lowerdata" in text
        # the first error is opened by itself: tree cursor, columns and explanation on /foo
        assert app.selection.path == (b"foo",)
        assert app.tree.cursor_node.data.path == (b"foo",)
        assert "SHADOWED" in text
        assert "INTERCEPTING" in text


async def test_no_auto_jump_when_disabled_or_only_warnings():
    app = demo_app("whiteouts")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.selection.path == ()
        assert "2 warnings" in screen_text(app)
    app = demo_app("seed", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.selection.path == ()


async def test_header_shows_source_kernel_options_and_layer_chips():
    app = demo_app("seed", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        text = screen_text(app)
        assert "demo:seed" in text and "kernel 6.18.0" in text
        assert "metacopy=on" in text
        assert "lower 0 A" in text and "lower 1 B" in text and "data 2 C" in text
        # one colour per layer, used for the chips and the columns alike
        pal = app.palette
        assert len(set(pal.colors.values())) == 3
        cols = app.query_one(LayerColumns)
        for k in (1, 2, 3):
            assert cols.column(k).styles.border.top[1] == Color.parse(pal.color(k))


# ------------------------------------------------------------------------- navigation


async def test_navigation_expands_lazily_and_updates_the_details():
    app = demo_app("seed", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        tree = app.tree
        etc = tree.find_loaded((b"etc",))
        assert etc is not None and not etc.data.loaded  # not listed before it is opened
        lines = tree_lines(app)
        assert any(line.strip().startswith("foo") for line in lines)
        # move to etc/ and expand it with the right arrow
        while tree.cursor_node is None or tree.cursor_node.data.path != (b"etc",):
            await pilot.press("down")
        assert app.selection.path == (b"etc",)
        await pilot.press("right")
        await settle(pilot)
        assert etc.data.loaded and etc.is_expanded
        names = [c.data.path[-1] for c in etc.children]
        assert names == [b"hostname", b"os-release"]
        await pilot.press("down")
        assert app.selection.path == (b"etc", b"hostname")
        text = screen_text(app)
        assert "/etc/hostname" in text
        assert "METADATA+DATA" in text  # B gives stat and bytes
        await pilot.press("left")  # to the parent
        assert app.selection.path == (b"etc",)
        await pilot.press("left")  # collapse
        assert not etc.is_expanded


async def test_goto_path_loads_every_directory_on_the_way():
    app = demo_app("composefs", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.goto_path((b"usr", b"share", b"doc", b"README"))
        await settle(pilot)
        assert app.tree.cursor_node.data.path == (b"usr", b"share", b"doc", b"README")
        assert app.res is not None and app.res.open_errno == "ENOENT"
        assert "lazy lowerdata lookup failed" in screen_text(app)


# ------------------------------------------------------------------------- problems


async def test_selecting_a_problem_jumps_to_its_path():
    app = demo_app("composefs", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        ptree = app.query_one(ProblemTree)
        ptree.focus()
        await pilot.pause()
        # down to the first finding (line 0 is the first group)
        ptree.move_cursor_to_line(1)
        await pilot.pause()
        finding = ptree.cursor_node.data.finding
        assert finding is not None
        await pilot.press("enter")
        await settle(pilot)
        want = tuple(finding.path.split(b"/")[1:])
        assert app.tree.cursor_node.data.path == want
        assert app.selection.path == want
        assert app.focused is app.tree


async def test_highlighting_a_problem_shows_it_without_moving_the_tree():
    app = demo_app("seed-eio", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        ptree = app.query_one(ProblemTree)
        ptree.focus()
        ptree.move_cursor_to_line(1)
        await settle(pilot)
        assert app.selection.path == (b"foo",)
        assert app.tree.cursor_line == 0
        text = screen_text(app)
        assert "EIO" in text
        assert "metacopy with no lower data found" in text


async def test_next_problem_key_cycles_through_findings():
    app = demo_app("composefs", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        seen = []
        for _ in range(len(app.problem_list())):
            await pilot.press("n")
            await settle(pilot)
            seen.append(app.selection.path)
        assert len(set(seen)) == len(seen) >= 3
        await pilot.press("n")
        await settle(pilot)
        assert app.selection.path == seen[0]


async def test_directories_count_the_problems_below_them():
    app = demo_app("composefs", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        usr = [line for line in tree_lines(app) if line.strip().startswith("usr/")]
        assert usr and "below" in usr[0]


# ------------------------------------------------------------------------- what-if


async def test_whatif_toggle_shows_the_resolutions_that_change():
    app = demo_app("seed", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.engine.options.metacopy is True
        await pilot.press("M")  # metacopy: on -> off
        await settle(pilot)
        assert app.engine is not app.base
        assert app.engine.options.metacopy is False
        assert app.query_one("#bottom", TabbedContent).active == "tab-whatif"
        changes = app.query_one("#whatif-results", PathList).paths
        assert set(changes) == {(b"foo",), (b"bar",)}
        assert (b"foo",) in app.tree.changed
        text = screen_text(app)
        assert "WHAT-IF" in text and "metacopy=off" in text
        assert "2 paths resolve differently" in text
        assert "EPERM" in text
        # the tree is rebuilt on the new engine and marks what changed
        assert any("what-if" in line for line in tree_lines(app))
        # the problems are rescanned under the what-if options
        rules = {f.rule for f in app.problems.findings}
        assert "metacopy-refused" in rules and "shadowed-lowerdata" not in rules
        await pilot.press("W")
        await settle(pilot)
        assert app.engine is app.base
        assert "WHAT-IF" not in screen_text(app)
        assert "shadowed-lowerdata" in {f.rule for f in app.problems.findings}
        assert not app.tree.changed


async def test_whatif_dialog_applies_the_chosen_options():
    app = demo_app("seed", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("w")
        await pilot.pause()
        assert isinstance(app.screen, WhatIfScreen)
        app.screen.query_one("#whatif-verity").value = "require"
        await pilot.click("#whatif-apply")
        await settle(pilot)
        assert not isinstance(app.screen, WhatIfScreen)
        assert app.engine.options.verity == "require"
        # every metacopy without a digest now fails at open
        assert (b"foo",) in app.tree.changed or (b"bar",) in app.tree.changed


async def test_whatif_that_the_kernel_refuses_to_mount():
    app = demo_app("seed", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.set_whatif_option("redirect_dir", "nofollow")  # conflicts with metacopy=on
        await settle(pilot)
        assert app.engine.options.redirect_dir == "nofollow"
        assert app.engine.mount_errno == "EINVAL"
        text = screen_text(app)
        assert "mount fails: EINVAL" in text
        assert "conflicting options" in text
        assert "mount-refused" in {f.rule for f in app.problems.findings}


# ------------------------------------------------------------------------- search


async def test_search_is_a_substring_over_the_merged_tree():
    app = demo_app("composefs", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("slash")
        assert app.focused is app.query_one("#search-input", Input)
        for ch in "read":
            await pilot.press(ch)
        await settle(pilot)
        results = app.query_one("#search-results", PathList)
        assert (b"usr", b"share", b"doc", b"README") in results.paths
        assert all(b"read" in b"/".join(p).lower() for p in results.paths)
        await pilot.press("enter")  # to the results
        await pilot.press("enter")  # jump to the first one
        await settle(pilot)
        assert app.tree.cursor_node.data.path == results.paths[0]
        assert app.focused is app.tree


async def test_search_filtered_to_problem_paths():
    app = demo_app("composefs", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("slash")
        await pilot.press("u", "s", "r")
        await settle(pilot)
        every = list(app.query_one("#search-results", PathList).paths)
        await pilot.press("ctrl+t")
        await settle(pilot)
        problems = app.query_one("#search-results", PathList).paths
        problem_paths = {tuple(f.path.split(b"/")[1:]) for f in app.problems.findings}
        assert problems and set(problems) <= problem_paths
        assert len(problems) < len(every)


async def test_search_never_blocks_the_keys():
    """Every keystroke restarts the search in a worker; the UI answers meanwhile."""
    app = demo_app("composefs", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("slash", "e", "t", "c")
        assert app.query_one("#search-input", Input).value == "etc"
        await settle(pilot)
        assert (b"etc",) in app.query_one("#search-results", PathList).paths


# ------------------------------------------------------------------------- the rest


async def test_hidden_toggle_shows_whiteouts_copies_and_data_layers():
    app = demo_app("whiteouts", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.goto_path((b"etc",))
        await settle(pilot)
        await pilot.press("right")
        await settle(pilot)
        assert not any("motd" in line for line in tree_lines(app))
        await pilot.press("h")
        await settle(pilot)
        lines = tree_lines(app)
        motd = [line for line in lines if "motd" in line]
        assert motd and "whiteout" in motd[0]
        assert any("hidden copy" in line for line in lines) or any("+1 hidden" in line for line in lines)
        await pilot.press("h")
        await settle(pilot)
        assert not any("motd" in line for line in tree_lines(app))
    app = demo_app("seed", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("h")
        await settle(pilot)
        assert any("data-only layer contents" in line for line in tree_lines(app))


async def test_follow_redirect_highlights_the_target_column():
    app = demo_app("seed")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.selection.path == (b"foo",)
        await pilot.press("r")
        await pilot.pause()
        cols = app.query_one(LayerColumns)
        assert cols.column(2).has_class("-target")  # B holds /1e/abcdef
        assert not cols.column(3).has_class("-target")


async def test_preview_shows_every_source_literally():
    app = demo_app("seed")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("p")
        await pilot.pause()
        assert isinstance(app.screen, PreviewScreen)
        text = screen_text(app)
        assert "B:/1e/abcdef (an unrelated" in text  # what read() returns (B)
        assert "hello data from C" in text  # what the redirect meant (C)
        await pilot.press("x")
        await pilot.pause()
        assert "68 65 6c 6c 6f" in screen_text(app)  # "hello" in hex
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, PreviewScreen)


async def test_help_lists_the_keys_and_q_quits():
    app = demo_app("seed", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        for key in ("search", "what-if", "quit", "redirect"):
            assert key in text.lower()
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


async def test_command_palette_has_our_commands():
    app = demo_app("seed", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+p")
        await pilot.pause()
        for ch in "metacopy=off":
            await pilot.press(ch)
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        assert app.engine.options.metacopy is False


async def test_memory_stack_fixture_works_without_demos():
    app = OvlInspectApp(engine(seed_stack()), auto_jump_window=None)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.selection.path == (b"foo",)


@pytest.mark.parametrize("name", demo_names())
async def test_every_demo_opens_and_scans(name):
    app = demo_app(name)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.problems.done
        assert "scan failed" not in screen_text(app)
