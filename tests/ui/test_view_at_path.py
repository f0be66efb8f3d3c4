"""The view opened at a path (`ovlinspect MNT/some/path`, `ovlinspect [flags] TARGET [PATH]`),
driven headless with Pilot: the same argument parsing as the command line
(:func:`ovlinspect.cli.view_app_args`), on in-memory demos and on a real mount."""

from __future__ import annotations

import os
import sys

import pytest
from ui_helpers import KERNEL, screen_text, settle, tree_lines

from ovlinspect.cli import view_app_args
from ovlinspect.sources.target import InputError
from ovlinspect.ui.app import OvlInspectApp

SIZE = (130, 40)
HERE = os.path.dirname(os.path.abspath(__file__))


def app_for(*argv: str) -> OvlInspectApp:
    engine, start = view_app_args(list(argv))
    engine.kernel = KERNEL
    return OvlInspectApp(engine, start=start, auto_jump_window=None)


def cursor_path(app: OvlInspectApp):
    node = app.tree.cursor_node
    return None if node is None or node.data is None else node.data.path


async def test_demo_opened_at_a_failing_path():
    # demo:seed-eio /foo: lookup fails with EIO (tests/kernel/test_demos checks it on a mount)
    app = app_for("demo:seed-eio", "/foo")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.selection.path == (b"foo",) and cursor_path(app) == (b"foo",)
        text = screen_text(app)
        assert "lstat fails: EIO" in text or "EIO" in text.split("explanation", 1)[1]


async def test_demo_opened_at_a_name_the_tree_does_not_list():
    app = app_for("demo:seed-eio", "/1e/nope/deeper")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        # a row for the first name not listed, under its directory, expanded on the way
        assert cursor_path(app) == (b"1e", b"nope")
        assert app.selection.path == (b"1e", b"nope", b"deeper")
        lines = tree_lines(app)
        row = next(l for l in lines if "nope/deeper" in l)
        assert "ENOENT" in row and "asked for" in row
        assert lines.index(row) > next(i for i, l in enumerate(lines) if l.strip().startswith("1e/"))
        # moving away and back selects the asked path again
        await pilot.press("up")
        await settle(pilot)
        await pilot.press("down")
        await settle(pilot)
        assert app.selection.path == (b"1e", b"nope", b"deeper")


async def test_stack_flags_and_a_path_open_the_view_there(tmp_path):
    # --lowerdir and -o as the commands take them, with the PATH to open at
    from ovlinspect.live.build import build_stack
    from ovlinspect.sources.target import demo_stack

    if os.geteuid() != 0:
        pytest.skip("building trusted.* xattrs needs root")
    built = build_stack(demo_stack("seed-eio"), str(tmp_path / "layers"))
    app = app_for("--lowerdir", built.lowerdir_string(), "-o", "metacopy=on", "/ok")
    assert app.engine.options.metacopy
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert cursor_path(app) == (b"ok",) and app.selection.path == (b"ok",)
        # the same stack with metacopy off (what the flag changes): /ok is refused with EPERM
    app = app_for("--lowerdir", built.lowerdir_string(), "-o", "metacopy=off", "/ok")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.res is not None and app.res.errno == "EPERM"


def test_bad_view_arguments_are_input_errors():
    with pytest.raises(InputError, match="no --json"):
        view_app_args(["--json", "demo:seed"])
    with pytest.raises(InputError, match="unknown command"):
        view_app_args(["frobnicate", "x"])
    with pytest.raises(InputError, match="not on an overlay mount"):
        view_app_args(["/proc/self/status"])


def _mounted():
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "kernel"))
    try:
        import harness
        import test_paths_in_hand as paths
    finally:
        sys.path.pop(0)
    return harness, paths


@pytest.fixture
def mnt():
    harness, paths = _mounted()
    reason = harness.kernel_unavailable_reason()
    if reason:
        pytest.skip(reason)
    from ovlinspect.live.build import build_stack
    from ovlinspect.sources.stackfile import stack_from_dict

    with harness.private_tmpfs() as root:
        built = build_stack(stack_from_dict(paths._doc(), "."), os.path.join(root, "layers"))
        target = os.path.join(root, "m")
        os.mkdir(target)
        built.mount(target)
        try:
            yield target
        finally:
            built.umount_all()


async def test_live_mount_opened_at_the_failing_path(mnt):
    full = os.path.join(mnt, "usr", "lib", "foo")
    with pytest.raises(OSError) as err:
        os.lstat(full)
    assert err.value.strerror == "Input/output error"  # the kernel: EIO
    app = app_for(full)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert cursor_path(app) == (b"usr", b"lib", b"foo")
        assert app.selection.path == (b"usr", b"lib", b"foo")
        assert app.res is not None and app.res.errno == "EIO"
        text = screen_text(app)
        assert "matches the prediction" in text  # observed through the mount: EIO as predicted
        lines = tree_lines(app)
        assert any(l.strip().startswith("usr/") for l in lines)
        assert any(l.strip().startswith("foo EIO") for l in lines)


async def test_live_mount_opened_at_a_missing_name_and_a_dotdot(mnt):
    app = app_for(os.path.join(mnt, "usr", "link", "..", "lib", "gone"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        # link -> lib, so link/.. is /usr (as lstat walks it): /usr/lib/gone, not listed
        assert not os.path.lexists(os.path.join(mnt, "usr", "lib", "gone"))
        assert cursor_path(app) == (b"usr", b"lib", b"gone")
        assert app.res is not None and app.res.errno == "ENOENT"
        assert any("gone ENOENT" in l and "asked for" in l for l in tree_lines(app))
