"""`ovlinspect MNT/path` and `ovlinspect [flags] TARGET PATH` in a real terminal (tmux): the view
opens on the path named, also when the kernel's lookup of it fails."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
from test_tmux import Tmux

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def tmux(request):
    t = Tmux(request.node.name.replace("[", "-").replace("]", ""))
    yield t
    t.kill()


def _kernel():
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "kernel"))
    try:
        import harness
        import test_paths_in_hand as paths
    finally:
        sys.path.pop(0)
    return harness, paths


def test_failing_path_opens_selected_in_a_real_terminal(tmux):
    harness, paths = _kernel()
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
            full = os.path.join(target, "usr", "lib", "foo")
            with pytest.raises(OSError, match="Input/output error"):
                os.lstat(full)  # the kernel's answer, which the screen must show
            tmux.start(full)
            screen = tmux.wait_for("lstat fails: EIO", "real ", "scanned")
            assert "matches the prediction" in screen
            assert "metacopy with no lower data found" in screen  # the kernel log line
            # the tree is open down to the failing name, on its row
            rows = [l for l in screen.splitlines() if "foo EIO" in l]
            assert rows, screen
            tmux.send("q")
            assert tmux.wait_exit() == 0
            tmux.tmux("kill-session", "-t", "t")
            # the stack flags of the commands, and a PATH the listing does not show
            tmux.start("--lowerdir", built.lowerdir_string(), "-o", "metacopy=on", "/usr/lib/gone")
            screen = tmux.wait_for("asked for", "scanned")
            assert "gone ENOENT" in screen
            tmux.send("q")
            assert tmux.wait_exit() == 0
        finally:
            built.umount_all()
