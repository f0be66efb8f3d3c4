"""The app's cut (no widget reaches into the app) and the app-level fixes of issue 12."""

from __future__ import annotations

import ast
import pathlib
import tempfile

from textual.app import App
from ui_helpers import demo_app, screen_text, settle

import ovlinspect.ui
import ovlinspect.ui.app as app_module
from ovlinspect.ui.problems import ProblemTree
from ovlinspect.ui.screens import PreviewScreen

SIZE = (130, 40)
UI = pathlib.Path(ovlinspect.ui.__file__).parent
#: the modules that are the app (or drive it): everything else is a widget or plain helpers
APP_SIDE = {"app.py", "commands.py", "screenshots.py", "__init__.py"}
APP_API = set(dir(App))


def widget_violations(root: pathlib.Path) -> list[str]:
    """Where a widget module under ``root`` imports the app or reads our app's attributes."""
    bad = []
    for path in sorted(p for p in root.rglob("*.py") if p.name not in APP_SIDE):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mod = ("." * node.level) + (node.module or "")
                names = {a.name for a in node.names}
                if mod in (".app", "ovlinspect.ui.app") or (mod == "." and "app" in names):
                    bad.append(f"{path.name}:{node.lineno} imports the app")
            elif isinstance(node, ast.Import):
                if any(a.name == "ovlinspect.ui.app" for a in node.names):
                    bad.append(f"{path.name}:{node.lineno} imports the app")
            elif isinstance(node, ast.Attribute):
                if node.attr == "oapp":
                    bad.append(f"{path.name}:{node.lineno} uses oapp")
                inner = node.value
                if (isinstance(inner, ast.Attribute) and inner.attr == "app"
                        and node.attr not in APP_API):
                    bad.append(f"{path.name}:{node.lineno} reads app.{node.attr}")
    return bad


def test_no_widget_imports_or_reaches_into_the_app():
    """import-linter style: no widget module imports ovlinspect.ui.app (not even for typing), and
    none reads our app's attributes through ``.app`` (only Textual's own App API)."""
    assert len([p for p in UI.rglob("*.py") if p.name not in APP_SIDE]) >= 8
    assert widget_violations(UI) == []


def test_the_check_catches_a_widget_that_reaches_into_the_app(tmp_path):
    (tmp_path / "w.py").write_text("from .app import OvlInspectApp\nx = self.app.engine.nlower\n"
                                   "y = self.app.notify\n")
    assert widget_violations(tmp_path) == ["w.py:1 imports the app", "w.py:2 reads app.engine"]


async def test_ctrl_c_quits_without_a_nag():
    app = demo_app("seed", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+c")
        await pilot.pause()
        assert not app.is_running
    assert app.return_code == 0


async def test_j_and_k_move_the_focused_list():
    app = demo_app("seed", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        tree = app.tree
        assert tree.cursor_line == 0
        await pilot.press("j", "j")
        assert tree.cursor_line == 2
        assert app.selection.path == tree.cursor_node.data.path
        await pilot.press("k")
        assert tree.cursor_line == 1


async def test_redirect_dir_cycles_through_every_accepted_value():
    # a stack with an upper layer and metacopy=off: every redirect_dir value is accepted
    app = demo_app("whiteouts", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        seen = [app.whatif_choices["redirect_dir"]]
        effective = [app.engine.options.redirect_dir]
        for _ in range(4):
            await pilot.press("R")
            await settle(pilot)
            assert app.engine.mount_errno is None
            seen.append(app.whatif_choices["redirect_dir"])
            effective.append(app.engine.options.redirect_dir)
            assert effective[-1] != effective[-2]  # each press changes what the kernel does
        assert set(seen) == {"on", "follow", "nofollow", "off"}
        assert seen[-1] == seen[0]  # a full cycle


async def test_redirect_dir_never_steps_onto_a_refused_value():
    # metacopy=on: nofollow and off conflict (EINVAL), follow is turned into on (lower-only)
    app = demo_app("seed", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("R")
        await settle(pilot)
        assert app.engine is app.base and app.engine.mount_errno is None
        assert any("no other value of redirect_dir" in n.message for n in app._notifications)


async def test_whatif_header_names_the_flip_not_the_real_options():
    app = demo_app("seed", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("M")
        await settle(pilot)
        header = screen_text(app).splitlines()[:4]
        text = "\n".join(header)
        assert "WHAT-IF" in text and "metacopy on→off" in text
        assert "real:" not in text and "metacopy=on" not in text


async def test_preview_of_a_directory_is_one_line_not_a_modal():
    app = demo_app("seed", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.goto_path((b"etc",))
        await settle(pilot)
        await pilot.press("p")
        await settle(pilot)
        assert not isinstance(app.screen, PreviewScreen)
        assert [n.message for n in app._notifications] == ["/etc: a directory, no file content to preview"]
        app.goto_path((b"foo",))  # a file still opens the side-by-side preview
        await settle(pilot)
        await pilot.press("p")
        await pilot.pause()
        assert isinstance(app.screen, PreviewScreen)


async def test_palette_screenshot_without_downloads_writes_to_the_cwd(tmp_path, monkeypatch):
    missing = tmp_path / "no-Downloads"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setattr(app_module, "user_downloads_path", lambda: missing)
    monkeypatch.chdir(cwd)
    app = demo_app("seed", auto_jump=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+p")
        await pilot.pause()
        for ch in "screenshot":
            await pilot.press(ch)
        await settle(pilot)
        await pilot.press("enter")
        for _ in range(20):
            await pilot.pause(0.1)
            if list(cwd.glob("*.svg")):
                break
        await settle(pilot)
        shots = list(cwd.glob("*.svg"))
        assert len(shots) == 1 and "<svg" in shots[0].read_text()[:2000]
        assert not missing.exists()
        assert any(str(cwd) in n.message for n in app._notifications)  # says where


def test_screenshot_dir_falls_back_to_the_temporary_directory(tmp_path, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.setattr(app_module, "user_downloads_path", lambda: tmp_path / "no-Downloads")
    monkeypatch.chdir(gone)
    assert app_module.screenshot_dir() == gone
    gone.rmdir()  # the cwd vanished: neither it nor ~/Downloads can take the file
    assert app_module.screenshot_dir() == pathlib.Path(tempfile.gettempdir())


async def test_zoom_on_problems_fills_the_screen():
    app = demo_app("seed")
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        app.query_one(ProblemTree).focus()
        await pilot.press("z")
        await settle(pilot)
        bottom = app.query_one("#bottom")
        assert app.screen.maximized is bottom
        assert bottom.region.height == 30 - 1  # all but the footer: no hatched gap
        await pilot.press("z")
        await settle(pilot)
        assert app.screen.maximized is None
