"""The view's problems scan (ovlinspect/ui/scanproc.py, ProblemsPanel._scan): the same findings
and causes as ``check``, in a child process and in a thread; cancelled promptly when the user
switches what-if or quits; never a child left behind, even when the view dies hard.

The reference is ``check``'s own result (report.causes.check_causes, what ``ovlinspect check``
prints) on a fresh engine of the same stack: the stack with every kind of problem of
tests/test_scan.py (memory layers, and the same built on disk as root)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from ui_helpers import settle

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "kernel"))

from test_scan import _problems_stack  # noqa: E402

from ovlinspect.kernel.profile import parse_version, profile_for  # noqa: E402
from ovlinspect.model.layers import MemoryLayer, Node  # noqa: E402
from ovlinspect.model.stack import Stack  # noqa: E402
from ovlinspect.report.causes import check_causes  # noqa: E402
from ovlinspect.rules.engine import Engine  # noqa: E402
from ovlinspect.ui.app import OvlInspectApp  # noqa: E402
from ui_stacks import PARAMS, T  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _engine(stack: Stack) -> Engine:
    return Engine(stack, profile=profile_for(parse_version("6.18"), chosen_by="test"))


def _causes(causes) -> list[tuple]:
    return [(c.severity, c.rule, c.where, c.message, c.fix, sorted(c.paths), dict(c.effects))
            for c in causes]


def _findings(findings) -> list[tuple]:
    return [(f.rule, f.path, f.message, list(f.layers)) for f in findings]


async def _view_scan(stack: Stack, how: str, monkeypatch) -> tuple[list, list, int, int | None]:
    monkeypatch.setenv("OVLINSPECT_SCAN", how)
    app = OvlInspectApp(_engine(stack), auto_jump=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        p = app.problems
        assert p.done and "scan failed" not in p.note, p.note
        return _findings(p.findings), _causes(p.causes()), p.scanned, p.child_pid


def _expected(make) -> tuple[list, list, int]:
    result = check_causes(_engine(make()))
    return _findings(result.findings), _causes(result.causes), result.paths_checked


@pytest.mark.parametrize("how", ["process", "thread"])
@pytest.mark.parametrize("options,upper", [("metacopy=on,verity=on", True),
                                           ("metacopy=on,redirect_dir=on", False)])
async def test_the_view_finds_what_check_finds(how, options, upper, monkeypatch):
    make = lambda: _problems_stack(options, upper)  # noqa: E731
    findings, causes, count = _expected(make)
    assert len(causes) >= 10 and count > 40  # the stack's problems were met
    got = await _view_scan(make(), how, monkeypatch)
    assert got[:3] == (findings, causes, count)
    assert (got[3] is not None) == (how == "process")


@pytest.mark.kernel
def test_on_disk_the_child_finds_what_check_finds(tmp_path, monkeypatch):
    """Disk layers go to the child as descriptors of their roots (opened there through
    /proc/self/fd): the same findings, the same words (layer paths included)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: trusted.overlay.* xattrs and 0/0 whiteouts in the built layers")
    import asyncio

    from ovlinspect.live.build import build_stack
    from ovlinspect.sources.target import stack_from_args

    options = "metacopy=on,verity=on"
    built = build_stack(_problems_stack(options, True), str(tmp_path / "s"), exact=True)

    def make() -> Stack:
        stack = stack_from_args(built.lowerdir_string(), built.upper, built.workdir, options)
        stack.params = dict(PARAMS)
        return stack

    findings, causes, count = _expected(make)
    assert len(causes) >= 10
    # no scan of ours may fall back to a thread here: every disk layer moves
    got = asyncio.run(_view_scan(make(), "", monkeypatch))
    assert got[:3] == (findings, causes, count)
    assert got[3] is not None


# ------------------------------------------------------------------------- cancel, no orphan


def big_stack(n: int) -> Stack:
    """n composefs metacopy files in directories of 1000 redirected into the data-only layer,
    one in 1000 to an object a regular layer intercepts: a scan of a second or two."""
    meta, objects, base = (MemoryLayer(label=x) for x in ("meta", "objects", "base"))
    dir_node = Node("dir", 0o755)
    ok, bad = (Node("file", 0o644, 16, xattrs=((T + b"metacopy", b""), (T + b"redirect", red)))
               for red in (b"/ob/x", b"/ib/x"))
    for d in (b"ob", b"ib"):
        objects.nodes[(d,)] = dir_node
        objects.nodes[(d, b"x")] = Node("file", 0o644, 16)
    objects.children = {(): [b"ob", b"ib"], (b"ob",): [b"x"], (b"ib",): [b"x"]}
    base.nodes[(b"ib",)] = dir_node
    base.nodes[(b"ib", b"x")] = Node("file", 0o644, 99)
    base.children = {(): [b"ib"], (b"ib",): [b"x"]}
    kids: dict = {(): []}
    for i in range(n):
        d = b"d%04d" % (i // 1000)
        if i % 1000 == 0:
            meta.nodes[(d,)] = dir_node
            kids[()].append(d)
            kids[(d,)] = []
        meta.nodes[(d, b"f%06d" % i)] = bad if i % 1000 == 999 else ok
        kids[(d,)].append(b"f%06d" % i)
    meta.children = kids
    return Stack(lowers=[meta, base], data=[objects], options="metacopy=on", params=PARAMS)


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie waiting for a reaper that is not us counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        # The entry can go between open and read (ESRCH from read) once the process is reaped.
        return False


def _gone_within(pid: int, seconds: float) -> float | None:
    t = time.monotonic()
    while time.monotonic() - t < seconds:
        if not _alive(pid):
            return time.monotonic() - t
        time.sleep(0.01)
    return None


async def _running_child(app, pilot, other: int | None = None) -> int:
    """The pid of the scan's child once it is started (another than ``other``)."""
    deadline = time.monotonic() + 30
    while not (app.problems.child_pid and app.problems.child_pid != other):
        assert time.monotonic() < deadline, "no child for the scan"
        await pilot.pause(0.02)
    return app.problems.child_pid


async def test_a_what_if_and_quitting_stop_the_scans_child_at_once():
    stack = big_stack(300_000)
    app = OvlInspectApp(_engine(stack), auto_jump=False)
    async with app.run_test(size=(120, 40)) as pilot:
        first = await _running_child(app, pilot)
        while not app.problems.scanned:  # under way: the stack went over, the walk reports
            await pilot.pause(0.02)
        assert not app.problems.done  # still scanning: the test cancels a running scan
        spare = app.spare.pid  # started for the next scan
        await pilot.press("V")  # a what-if: the scan starts over on the new engine
        took = _gone_within(first, 2.0)
        assert took is not None, "the first scan's child outlived its scan"
        assert took < 0.5  # the cancel flag is polled every 50 ms: prompt
        second = await _running_child(app, pilot, other=first)
        assert second == spare  # the what-if's scan took the child started ahead
        third = app.spare.pid
        assert _alive(third)
    # quit (while it scans, or just after): no child left, the one started ahead included
    assert _gone_within(second, 2.0) is not None
    assert _gone_within(third, 2.0) is not None


async def test_the_first_scan_takes_the_child_started_at_load(monkeypatch):
    """The child for the first scan is started before the first screen (Python and the imports
    take 0.13 s): the scan takes it, and starts no other."""
    import ovlinspect.ui.scanproc as scanproc

    started = []
    real = scanproc.Started.__init__

    def counted(self):
        real(self)
        started.append(self.pid)

    monkeypatch.setattr(scanproc.Started, "__init__", counted)
    monkeypatch.setenv("OVLINSPECT_SCAN", "process")
    app = OvlInspectApp(_engine(_problems_stack("metacopy=on", False)), auto_jump=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert app.problems.done and "scan failed" not in app.problems.note
        # one at load, taken by the first scan; one started then for the next scan
        assert started == [app.problems.child_pid, app.spare.pid]
    assert _gone_within(started[1], 2.0) is not None


async def test_a_child_started_ahead_that_died_is_replaced(monkeypatch):
    """The child waiting for the next scan is killed meanwhile: the next scan starts another
    and finishes, instead of reporting that its process ended."""
    import signal

    monkeypatch.setenv("OVLINSPECT_SCAN", "process")
    app = OvlInspectApp(_engine(_problems_stack("metacopy=on", False)), auto_jump=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert app.problems.done
        dead = app.spare.pid
        os.kill(dead, signal.SIGKILL)
        while app.spare.proc.poll() is None:
            await pilot.pause(0.01)
        await pilot.press("V")  # a what-if: a new scan
        await pilot.pause(0.1)
        await settle(pilot)
        p = app.problems
        assert p.done and "scan failed" not in p.note and "ended" not in p.note, p.note
        assert p.child_pid not in (None, dead) and p.scanned > 40


def test_500_layers_under_a_soft_limit_of_1024_descriptors(tmp_path):
    """The overlay maximum of 500 layers, in a process allowed 1,024 descriptors (the view
    is not started by the CLI here, which would raise the limit): the layers' roots go to the
    child as they are (no copy each) and the scan finishes with every path; it once stayed
    at "scanning… 0 paths" for good."""
    for i in range(500):
        (tmp_path / f"l{i:03d}" / "d").mkdir(parents=True)
        (tmp_path / f"l{i:03d}" / "d" / f"f{i}").write_bytes(b"x")
    script = tmp_path / "many.py"
    script.write_text(
        "import asyncio, os, resource, sys, time\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
        f"sys.path[:0] = [{os.path.abspath(os.path.dirname(__file__))!r}, {os.path.abspath(ROOT)!r}]\n"
        "from ovlinspect.rules.engine import Engine\n"
        "from ovlinspect.sources.target import stack_from_args\n"
        "from ovlinspect.ui.app import OvlInspectApp\n"
        f"top = {str(tmp_path)!r}\n"
        "stack = stack_from_args(':'.join(f'{top}/l{i:03d}' for i in range(500)))\n"
        "async def main():\n"
        "    app = OvlInspectApp(Engine(stack), auto_jump=False)\n"
        "    async with app.run_test(size=(120, 40)) as pilot:\n"
        "        t = time.monotonic()\n"
        "        while not app.problems.done and time.monotonic() - t < 60:\n"
        "            await pilot.pause(0.05)\n"
        "        print(app.problems.done, app.problems.scanned, app.problems.child_pid is not None,\n"
        "              repr(app.problems.note))\n"
        "asyncio.run(main())\n")
    env = dict(os.environ, OVLINSPECT_SCAN="process")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "501", "True", "''"], out.stdout


def test_a_thread_scan_starts_no_child(monkeypatch):
    """A small memory stack is scanned in a thread: no process is started ahead for it."""
    import asyncio

    import ovlinspect.ui.scanproc as scanproc

    monkeypatch.delenv("OVLINSPECT_SCAN", raising=False)
    monkeypatch.setattr(scanproc.Started, "__init__", lambda self: pytest.fail("a child was started"))
    got = asyncio.run(_view_scan(_problems_stack("metacopy=on", False), "", monkeypatch))
    assert got[3] is None


@pytest.mark.kernel
def test_more_layers_than_one_message_carries(tmp_path, monkeypatch):
    """The layer roots go over the socket at most 250 to a message (the kernel takes 253): a
    stack of 300 disk layers is scanned in the child as by check."""
    import asyncio

    from ovlinspect.sources.target import stack_from_args

    dirs = []
    for i in range(300):
        d = tmp_path / f"l{i:03d}"
        (d / "dir").mkdir(parents=True)
        (d / "dir" / f"f{i}").write_bytes(b"x" * i)
        if i % 50 == 0:
            (d / "dir" / "same").write_bytes(b"%d" % i)
        if i % 37 == 0 and os.geteuid() == 0:  # a finding naming this layer: a root sent
            os.setxattr(d / "dir" / f"f{i}", "trusted.overlay.redirect", b"no\x00")  # astray shows
        dirs.append(str(d))

    def make() -> Stack:
        stack = stack_from_args(":".join(dirs), options="")
        stack.params = dict(PARAMS)
        return stack

    findings, causes, count = _expected(make)
    assert count == 1 + 300 + 1  # /dir, its 300 files and one "same" (the root is not counted)
    if os.geteuid() == 0:
        assert len(findings) == 9 and len({tuple(f[3]) for f in findings}) == 9
    got = asyncio.run(_view_scan(make(), "process", monkeypatch))
    assert got[:3] == (findings, causes, count)
    assert got[3] is not None


def test_a_view_that_dies_hard_leaves_no_scan_behind(tmp_path):
    """The process that started the child is killed (no chance to clean up): the child goes
    with it (PR_SET_PDEATHSIG, and its own look at its parent)."""
    script = tmp_path / "dies.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path[:0] = [{os.path.abspath(os.path.dirname(__file__))!r}, {os.path.abspath(ROOT)!r}]\n"
        "from test_scan_process import big_stack, _engine\n"
        "from ovlinspect.ui.scanproc import ChildScan\n"
        "scan = ChildScan(_engine(big_stack(300_000)))\n"
        "frames = scan.frames(lambda: False)\n"
        "next(frames)\n"
        "print(scan.pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == -9, out.stderr
    pid = int(out.stdout.split()[0])
    assert _gone_within(pid, 2.0) is not None, "the scan's child outlived the view"


def test_a_child_that_dies_at_start_is_reported_with_its_last_words(monkeypatch):
    """The child's stderr goes to a file (a pipe could fill and block it); a death before the
    last frame is one line for the status bar, not a hang."""
    import ovlinspect.ui.scanproc as scanproc

    monkeypatch.setattr(scanproc, "child_command",
                        lambda: [sys.executable, "-c", "import sys; sys.stdin.buffer.read();"
                                 " sys.stderr.write('x' * 200000 + '\\nboom: the layer went away\\n');"
                                 " sys.exit(3)"])
    scan = scanproc.ChildScan(_engine(_problems_stack("metacopy=on", False)))
    frames = list(scan.frames(lambda: False))
    assert frames == [("error", 0, "the scan's process ended: boom: the layer went away")]
    assert not _alive(scan.pid)
