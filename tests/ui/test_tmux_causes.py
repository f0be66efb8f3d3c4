"""Issue 12 in a real terminal: at 80x24, a live mount of the one-cause stack (79 files whose
redirect walks through a plain directory) opens with the cause, its fix and the failing step
on the first screen; the kernel's own lstat gives the EIO the view predicts."""

from __future__ import annotations

import os
import shutil

import pytest

import test_tmux
from test_tmux import Tmux, _kernel_harness

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


@pytest.fixture
def tmux80(request, monkeypatch):
    monkeypatch.setattr(test_tmux, "COLS", 80)
    monkeypatch.setattr(test_tmux, "LINES", 24)
    t = Tmux(request.node.name.replace("[", "-").replace("]", ""))
    yield t
    t.kill()


def test_one_cause_live_mount_at_80x24(tmux80, tmp_path):
    harness = _kernel_harness()
    reason = harness.kernel_unavailable_reason()
    if reason:
        pytest.skip(reason)
    from ovlinspect.live.build import build_stack
    from ovlinspect.sources.target import demo_stack

    with harness.private_tmpfs() as root:
        built = build_stack(demo_stack("one-cause"), os.path.join(root, "layers"))
        target = os.path.join(root, "merged")
        os.mkdir(target)
        built.mount(target)
        # the kernel's own answer for one of the 79 paths, and for the shadowed one
        with pytest.raises(OSError) as err:
            os.lstat(os.path.join(target, "bin", "f00"))
        assert err.value.errno == 5  # EIO
        tmux80.start(target)
        # the built layers are directories named after their labels: 3-base3
        screen = tmux80.wait_for("(3-base3):/ab is a plain directory", "scanned")
        lines = screen.splitlines()
        assert len(lines) <= 24
        cause = next(line for line in lines if "✖ lower 3 (3-base3):/ab is a plain directory" in line)
        assert "79 paths fail with EIO" in cause
        assert any(line.startswith("├ fix: remove or rename the directory") for line in lines)
        assert any("lstat  ✖ EIO" in line for line in lines)  # the failing step, selected at start
        # n: the one shadowed file, among the 79 EIO ones, in one key
        tmux80.send("n")
        screen = tmux80.wait_for("/bin/shadowed", "WRONG bytes")
        tmux80.send("q")
        assert tmux80.wait_exit() == 0
