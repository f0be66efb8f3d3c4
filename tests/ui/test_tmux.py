"""The interactive view in a real terminal: tmux runs it, keys go in with ``send-keys``, the
screen comes back with ``capture-pane``.

Each test starts its own tmux server (its own socket) as a child of this process, so the app
runs in this process's mount namespace: the mounted-stack test mounts in a private namespace
(the kernel suite's harness) and the app sees that mount.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLS, LINES = 130, 40

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

# Names that would do something to a terminal if they were written to it raw.
HOSTILE_ENTRIES = [
    (b"/esc\x1b[31mred\x1b[0m", b"red\n"),
    (b"/osc\x1b]0;pwned\x07", b"title\n"),
    (b"/[blink]x", b"markup\n"),
    (b"/clear\x1b[2J\x1b[H", b"clear\n"),
]


def hostile_toml() -> str:
    lines = ['version = 1', 'description = "names with escape sequences"', "",
             "[[layer]]", 'role = "lower"', 'name = "A"']
    for path, content in HOSTILE_ENTRIES:
        lines += ["[[layer.entry]]", f'path_hex = "{path.hex()}"', 'type = "file"',
                  f'content_hex = "{content.hex()}"']
    lines += ["[[layer]]", 'role = "lower"', 'name = "B"',
              "[[layer.entry]]", 'path = "/plain"', 'type = "file"', 'content = "plain\\n"']
    return "\n".join(lines) + "\n"


class Tmux:
    """One tmux server on a private socket, running one command in a fixed-size pane."""

    def __init__(self, name: str):
        self.sock = f"ovlinspect-test-{os.getpid()}-{name}"

    def tmux(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(["tmux", "-L", self.sock, "-f", "/dev/null", *args],
                             capture_output=True, text=True, timeout=20)
        if check and out.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {out.stderr}")
        return out.stdout

    def start(self, *argv: str) -> None:
        env = {"PYTHONPATH": REPO, "TERM": "tmux-256color", "COLORTERM": "truecolor",
               "TEXTUAL_ANIMATIONS": "none"}
        # -u: a COLUMNS/LINES inherited from pytest would override the pane's real size
        cmd = " ".join(["env", "-u", "COLUMNS", "-u", "LINES"] + [f"{k}={v}" for k, v in env.items()]
                       + [_quote(sys.executable), "-m", "ovlinspect"] + [_quote(a) for a in argv])
        self.tmux("new-session", "-d", "-s", "t", "-x", str(COLS), "-y", str(LINES), "-c", REPO, cmd)
        self.tmux("set-option", "-t", "t", "remain-on-exit", "on", check=False)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def show(self, fmt: str) -> str:
        return self.tmux("display-message", "-p", "-t", "t", fmt).strip()

    def send(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)
        if "Escape" in keys:
            # an escape followed at once by a key reads as alt+key: let the escape stand alone
            time.sleep(0.5)

    def wait_for(self, *texts: str, timeout: float = 30) -> str:
        """The screen once it shows every one of ``texts`` and has stopped changing."""
        deadline = time.monotonic() + timeout
        screen = previous = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if all(t in screen for t in texts) and screen == previous:
                return screen
            if self.show("#{pane_dead}") == "1":
                break
            previous = screen
            time.sleep(0.3)
        raise AssertionError(f"{texts} not on screen after {timeout}s:\n{screen}")

    def wait_exit(self, timeout: float = 15) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.show("#{pane_dead}") == "1":
                return int(self.show("#{pane_dead_status}") or 0)
            time.sleep(0.2)
        raise AssertionError(f"the app did not exit:\n{self.screen()}")

    def kill(self) -> None:
        self.tmux("kill-server", check=False)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


@pytest.fixture
def tmux(request):
    t = Tmux(request.node.name.replace("[", "-").replace("]", ""))
    yield t
    t.kill()


def test_demo_seed_in_a_real_terminal(tmux):
    tmux.start("demo", "seed")
    screen = tmux.wait_for("shadowed-lowerdata", "INTERCEPTING")
    # the first screen: header, tree on the error, columns, problems, without a keypress
    assert "demo:seed" in screen
    assert "SHADOWED" in screen
    assert "1 error" in screen
    tmux.send("p")
    screen = tmux.wait_for("hello data from C")
    assert "B:/1e/abcdef" in screen  # what read() really returns, beside what was meant
    tmux.send("Escape")
    tmux.wait_for("explanation")
    tmux.send("/")
    tmux.send("-l", "os-rel")
    screen = tmux.wait_for("/etc/os-release", "1 match")
    tmux.send("Escape")
    tmux.send("q")
    assert tmux.wait_exit() == 0


def _assert_hostile_screen(tmux: Tmux, screen: str) -> None:
    assert "esc\\x1b[31mred\\x1b[0m" in screen
    assert "osc\\x1b]0;pwned\\x07" in screen
    assert "[blink]x" in screen
    assert "clear\\x1b[2J\\x1b[H" in screen
    # nothing reached the terminal as a control sequence: the title was not set, the screen
    # was not cleared (the header is still on the first line)
    assert "pwned" not in tmux.show("#{pane_title}")
    assert screen.splitlines()[0].lstrip().startswith("ovlinspect")


def test_names_with_escape_sequences_in_a_real_terminal(tmux, tmp_path):
    stack = tmp_path / "hostile.toml"
    stack.write_text(hostile_toml())
    tmux.start(str(stack))
    screen = tmux.wait_for("esc\\x1b[31mred", "scanned")
    _assert_hostile_screen(tmux, screen)
    # select each hostile entry: the columns and the explanation show the name too
    for _ in range(len(HOSTILE_ENTRIES)):
        tmux.send("Down")
    screen = tmux.wait_for("lstat")
    _assert_hostile_screen(tmux, screen)
    tmux.send("q")
    assert tmux.wait_exit() == 0


def _kernel_harness():
    sys.path.insert(0, os.path.join(REPO, "tests", "kernel"))
    try:
        import harness
    finally:
        sys.path.pop(0)
    return harness


def test_mounted_stack_in_a_real_terminal(tmux, tmp_path):
    """The hostile stack, built and mounted: the app reads the live mount and observes it."""
    harness = _kernel_harness()
    reason = harness.kernel_unavailable_reason()
    if reason:
        pytest.skip(reason)
    from ovlinspect.live.build import build_stack
    from ovlinspect.sources.stackfile import loads_stack

    with harness.private_tmpfs() as root:
        built = build_stack(loads_stack(hostile_toml(), str(tmp_path)), os.path.join(root, "layers"))
        target = os.path.join(root, "merged")
        os.mkdir(target)
        built.mount(target)
        tmux.start(target)
        screen = tmux.wait_for("esc\\x1b[31mred", "scanned")
        assert target in screen
        _assert_hostile_screen(tmux, screen)
        tmux.send("Down")
        # a live mount: what the mount really returns, beside the prediction
        screen = tmux.wait_for("real ")
        assert "matches the prediction" in screen
        tmux.send("q")
        assert tmux.wait_exit() == 0


def test_sigterm_gives_the_terminal_back(tmux):
    """``kill`` (SIGTERM) quits as ``q`` does: the view's screen is left (the pane shows
    the terminal as it was, not the view) and the exit status says SIGTERM."""
    tmux.start("demo", "seed")
    tmux.wait_for("shadowed-lowerdata", "INTERCEPTING")
    pid = int(tmux.show("#{pane_pid}"))
    os.kill(pid, 15)
    assert tmux.wait_exit() == 143
    screen = tmux.screen()
    assert "INTERCEPTING" not in screen and "explanation" not in screen, screen
