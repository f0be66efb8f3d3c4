#!/usr/bin/env python3
"""Benchmark: the interactive view on a generated stack of a million entries.

Builds in memory (no root, no disk) a composefs-like stack ``lowerdir=meta:base::objects``:
``meta`` holds N metacopy files in directories of 1000 (each an absolute redirect into the
data-only layer ``objects``), plus one flat directory of ``--flat`` entries; ``base`` a regular
layer that shadows some objects.  Then, headless:

* **first screen**: from creating the app to the first frame with the root listed;
* **key latency** while the background scan walks the whole stack: ``down`` (move the cursor:
  resolve, columns, explanation), ``right`` on a 1000-entry directory (list it in a worker and
  show it), a what-if toggle (new engine, tree rebuilt), typing in the search box;
* a flat directory of ``--flat`` entries: ``right`` to list it (whole, at once), ``End`` to its
  last entry, ``up`` inside it;
* the scan's progress (paths per second) while keys are being pressed, and every key's
  latency pooled (median, p90) with whether the scan was still running when the keys ended;
* with ``--full-scan``: the whole problems scan in the view (nothing else happening) against
  ``check``'s own walk on the same stack (``rules.scan.check`` on a fresh engine), paths/s.

``--scan process|thread|both`` runs the view with its scan in a child process (the default
for a stack this size), in a thread (``OVLINSPECT_SCAN=thread``), or each in turn.

Each latency is the time from the key event to its effect in the app (the cursor moved and the
detail panels filled, the directory listed in its worker and shown, ...), polled every 0.5 ms;
and how long the event loop is ever kept from running (a 5 ms ticker).  With ``--tmux``, the
app also runs in a real terminal and the latency is measured from ``send-keys`` to the changed
``capture-pane`` output.

    python bench/bench_ui.py [--entries 1000000] [--flat 100000] [--keys 30] [--tmux] [--full-scan]
                             [--scan process|thread|both]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ovlinspect.rules.engine import Engine  # noqa: E402
from ovlinspect.model.layers import MemoryLayer, Node  # noqa: E402
from ovlinspect.model.stack import Stack  # noqa: E402

T = b"trusted.overlay."
PARAMS = {"metacopy": "N", "redirect_dir": "N", "redirect_always_follow": "Y",
          "index": "N", "nfs_export": "N", "xino_auto": "N"}


class _Builder:
    """Fills a MemoryLayer's tables directly (``MemoryLayer.add`` checks each new name against
    its directory's list, which is quadratic in the directory size)."""

    def __init__(self, label: str):
        self.layer = MemoryLayer(label=label)
        self.kids: dict = {}

    def add(self, path: tuple, node: Node) -> None:
        self.layer.nodes[path] = node
        self.kids.setdefault(path[:-1], []).append(path[-1])

    def done(self) -> MemoryLayer:
        self.layer.children = {k: list(dict.fromkeys(v)) for k, v in self.kids.items()}
        return self.layer


def build(n: int, flat: int, n_objects: int = 4096) -> tuple[Stack, int]:
    """The stack and its number of merged entries."""
    dir_node = Node("dir", 0o755)
    objects = _Builder("objects")
    redirects: list[Node] = []
    for i in range(n_objects):
        h = hashlib.sha256(str(i).encode()).hexdigest()
        d, f = h[:2].encode(), h[2:].encode()
        objects.add((d,), dir_node)
        objects.add((d, f), Node("file", 0o644, 16))
        xattrs = ((T + b"metacopy", b""), (T + b"redirect", b"/" + d + b"/" + f))
        redirects.append(Node("file", 0o644, 16, xattrs=xattrs))
    meta = _Builder("meta")
    per_dir = 1000
    for i in range(n):
        d = b"d%04d" % (i // per_dir)
        if i % per_dir == 0:
            meta.add((d,), dir_node)
        meta.add((d, b"f%07d" % i), redirects[i % n_objects])
    meta.add((b"flat",), dir_node)
    for i in range(flat):
        meta.add((b"flat", b"e%07d" % i), redirects[i % n_objects])
    base = _Builder("base")
    # a regular layer holding a few object paths: every metacopy redirected there is shadowed
    for i in range(0, n_objects, 512):
        h = hashlib.sha256(str(i).encode()).hexdigest()
        base.add((h[:2].encode(),), dir_node)
        base.add((h[:2].encode(), h[2:].encode()), Node("file", 0o644, 99))
    base.add((b"base",), dir_node)
    for i in range(n // 10):
        base.add((b"base", b"b%07d" % i), Node("file", 0o644, 1))
    layers = [meta.done(), base.done(), objects.done()]
    merged = sum(1 for p in set(layers[0].nodes) | set(layers[1].nodes) if p)
    stack = Stack(lowers=layers[:2], data=layers[2:], options="metacopy=on", source="bench:generated",
                  description=f"{merged:,} merged entries", params=PARAMS)
    return stack, merged


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def show(name: str, xs: list[float]) -> None:
    ms = [x * 1000 for x in xs]
    print(f"  {name:<30} n={len(ms):<4} median {statistics.median(ms):7.1f} ms   p90 {pct(ms, 90):7.1f} ms"
          f"   max {max(ms):7.1f} ms")


async def until(cond, timeout: float = 30.0, poll: float = 0.0005) -> None:
    deadline = time.perf_counter() + timeout
    while not cond():
        if time.perf_counter() > deadline:
            raise TimeoutError
        await asyncio.sleep(poll)


async def key(app, k: str, effect) -> float:
    """Seconds from a key press to its visible effect in the app's state."""
    t = time.perf_counter()
    app.simulate_key(k)
    await until(effect)
    return time.perf_counter() - t


async def run(stack: Stack, keys: int, size: tuple[int, int]) -> None:
    from ovlinspect.ui.app import OvlInspectApp

    engine = Engine(stack, kernel="6.18.0")
    if os.environ.get("SWITCH"):
        sys.setswitchinterval(float(os.environ["SWITCH"]))
    t0 = time.perf_counter()
    app = OvlInspectApp(engine, auto_jump=False)
    async with app.run_test(size=size) as pilot:
        t_mounted = time.perf_counter() - t0
        await until(lambda: app.tree.root.data.loaded)
        t_first = time.perf_counter() - t0
        print(f"first screen: app mounted in {t_mounted * 1000:.0f} ms, root listed in {t_first * 1000:.0f} ms"
              f" ({len(app.tree.root.children)} entries at /); the scan had done {app.problems.scanned:,} paths")

        # how long the UI's event loop is ever kept from running, while the scan goes on
        stalls: list[float] = []
        running = True

        async def ticker() -> None:
            last = time.perf_counter()
            while running:
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                stalls.append(now - last - 0.005)
                last = now

        tick = asyncio.create_task(ticker())
        ts = time.perf_counter()
        scanned0 = app.problems.scanned
        lat: dict[str, list[float]] = {"down (select next path)": [], "right (open a 1000-entry dir)": [],
                                       "left (collapse)": [], "search keystroke": []}
        tree = app.tree
        for i in range(keys):
            line = tree.cursor_line
            lat["down (select next path)"].append(
                await key(app, "down", lambda: tree.cursor_line != line and app.selection.path != ()))
        app.goto_path((b"d0000",))  # the first of the 1000-entry directories
        await until(lambda: app.selection.path == (b"d0000",))
        for i in range(min(keys, 10)):
            node = tree.cursor_node
            assert node is not None and node.data.path[0].startswith(b"d0"), node
            lat["right (open a 1000-entry dir)"].append(
                await key(app, "right", lambda: node.data.loaded and node.is_expanded and
                          len(node.children) > 1))
            lat["left (collapse)"].append(await key(app, "left", lambda: not node.is_expanded))
            line = tree.cursor_line
            await key(app, "down", lambda: tree.cursor_line != line)
        app.goto_path((b"flat",))
        await until(lambda: app.selection.path == (b"flat",))
        node = tree.cursor_node
        # listed, and its rows in the tree's lines (Textual builds them when next asked: a
        # predicate without this charged the open's last step to the next key, End)
        t_flat = await key(app, "right", lambda: node.data.loaded and node.is_expanded
                           and tree.last_line >= len(node.children))
        n_flat = len(node.children)
        flat = node
        # End: the last entry of /flat (the last name at the root), selected and shown
        last = node.children[-1].data.path
        t_end = await key(app, "end", lambda: app.selection.path == last)
        in_flat = []
        for i in range(min(keys, 20)):
            line = tree.cursor_line
            in_flat.append(await key(app, "up", lambda: tree.cursor_line != line and app.selection.path != last))
            last = app.selection.path
        drawn = sum(1 for c in flat.children if c.data.res is not None)
        # search: each keystroke restarts the background search
        await key(app, "slash", lambda: app.focused is not tree)
        search = app.query_one("#search-input")
        panel = app.query_one("#search")  # the search runs in its panel (SearchPanel.gen)
        for ch in "f0001234":
            gen = panel.gen
            lat["search keystroke"].append(await key(app, ch, lambda: panel.gen != gen))
        await key(app, "escape", lambda: app.focused is tree)
        del search
        scanned_meanwhile = app.problems.scanned - scanned0
        still = not app.problems.done
        # what-if: a new engine, the header, tree, scan and comparison restarted
        base = app.engine
        t_whatif = await key(app, "V", lambda: app.engine is not base and app.tree.root.data.loaded)
        t_back = await key(app, "W", lambda: app.engine is base and app.tree.root.data.loaded)
        elapsed = time.perf_counter() - ts
        running = False
        await tick
        print("key latency while the background scan runs (key to the app's state and widgets updated):")
        for name, xs in lat.items():
            show(name, xs)
        print(f"  {f'right on /flat ({n_flat:,} entries)':<30} {t_flat * 1000:7.1f} ms (listed whole)")
        print(f"  {'End to its last entry':<30} {t_end * 1000:7.1f} ms")
        show("up inside /flat", in_flat)
        print(f"  {'':<30} rows of /flat resolved after all that: {drawn:,} of {n_flat:,} (those drawn)")
        print(f"  {'what-if toggle V / reset W':<30} {t_whatif * 1000:7.1f} ms / {t_back * 1000:.1f} ms"
              " (tree rebuilt and root listed)")
        show("event loop stalls", stalls)
        every = [x for xs in lat.values() for x in xs] + [t_flat, t_end] + in_flat
        show("every key above, pooled", every)
        print(f"scan meanwhile: {scanned_meanwhile:,} paths while the keys above were pressed"
              f" ({elapsed:.1f} s in all); the scan was {'still running' if still else 'over'}"
              " when the keys (but the what-if) ended")
        app.exit()


async def scan_only(stack: Stack) -> float:
    """The time the full problems scan takes in the app (nothing else happening): from the
    app's start (the scan starts with it) to the panel's last batch; paths/s."""
    from ovlinspect.ui.app import OvlInspectApp

    t = time.perf_counter()
    app = OvlInspectApp(Engine(stack, kernel="6.18.0"), auto_jump=False)
    async with app.run_test(size=(130, 40)):
        # polled every 10 ms (a 0.5 ms poll would take the GIL from a scan thread)
        await until(lambda: app.problems.done, timeout=3600, poll=0.01)
        dt = time.perf_counter() - t
        own = app.problems.elapsed or dt
        rate = app.problems.scanned / own
        where = "a child process" if app.problems.child_pid else "a thread"
        print(f"full scan in the view ({where}): {app.problems.scanned:,} paths in {own:.2f} s from the"
              f" scan's start, child start-up and stack hand-over included ({rate:,.0f} paths/s;"
              f" {dt:.2f} s from the app's creation), {len(app.problems.findings):,} findings")
        app.exit()
    return rate


#: ``check`` as the CLI runs it, in a fresh interpreter (cold caches, as the view's child
#: has them): the stack built there the same way, then one timed ``check``.
CHECK = r"""
import sys, time
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from bench_ui import build
from ovlinspect.rules.engine import Engine
from ovlinspect.rules.scan import check
from ovlinspect.sources.target import stack_from_args
entries, flat, lowerdir = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if lowerdir:
    stack = stack_from_args(lowerdir, options="metacopy=on")
    stack.params = dict(__import__("bench_ui").PARAMS)
else:
    stack = build(entries, flat)[0]
count = [0]
t = time.perf_counter()
findings = check(Engine(stack, kernel="6.18.0"), lambda n: count.__setitem__(0, n))
print(count[0], time.perf_counter() - t, len(findings))
"""


def check_rate(args, lowerdir: str) -> float:
    """``check``'s own walk on the same stack in a fresh process, paths/s (one run)."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", CHECK, os.path.dirname(here), here, str(args.entries),
                          str(args.flat), lowerdir], capture_output=True, text=True, check=True)
    count, dt, nf = out.stdout.split()
    print(f"check's walk (a fresh process): {int(count):,} paths in {float(dt):.2f} s"
          f" ({int(count) / float(dt):,.0f} paths/s), {int(nf):,} findings")
    return int(count) / float(dt)


def materialize(stack: Stack, root: str) -> str:
    """The generated stack as layer directories under ``root`` (a tmpfs of ours): the same
    names, sizes and overlay xattrs; the ``lowerdir=`` string."""
    dirs = []
    for role, layer in stack.layers:
        top = os.path.join(root, layer.label)
        os.mkdir(top)
        for path in sorted(p for p in layer.nodes if p):
            node = layer.nodes[path]
            where = os.path.join(top, *(c.decode() for c in path))
            if node.kind == "dir":
                os.mkdir(where)
                continue
            with open(where, "wb") as fh:
                fh.truncate(node.size)
            for key, value in node.xattrs:
                os.setxattr(where, key, value)
        dirs.append((role, top))
    lowers = [d for role, d in dirs if role == "lower"]
    data = [d for role, d in dirs if role == "data"]
    return ":".join(lowers) + "::" + "::".join(data)


def serve(stack: Stack) -> int:
    """Run the app in this terminal (for --tmux)."""
    from ovlinspect.ui.app import run_app

    return run_app(Engine(stack, kernel="6.18.0"))


def tmux_latency(args, lowerdir: str = "") -> None:
    """Key latency in a real terminal: send-keys, then poll capture-pane until the screen changes."""
    import shutil
    import subprocess

    if shutil.which("tmux") is None:
        print("tmux: not installed, skipped")
        return
    sock = f"ovlbench-{os.getpid()}"

    def tmux(*a: str) -> str:
        return subprocess.run(["tmux", "-L", sock, "-f", "/dev/null", *a], capture_output=True,
                              text=True).stdout

    cols, _, lines = args.size.partition("x")
    cmd = (f"env -u COLUMNS -u LINES TERM=tmux-256color OVLINSPECT_SCAN={os.environ.get('OVLINSPECT_SCAN', '')}"
           f" {sys.executable} {os.path.abspath(__file__)} --serve"
           + (f" --lowerdir {lowerdir}" if lowerdir else "") +
           f" --entries {args.entries} --flat {args.flat}")
    t0 = time.perf_counter()
    tmux("new-session", "-d", "-s", "b", "-x", cols, "-y", lines, cmd)
    try:
        screen = ""
        while "scanning" not in screen and "scanned" not in screen:
            screen = tmux("capture-pane", "-p", "-t", "b")
            time.sleep(0.01)
            if time.perf_counter() - t0 > 300:
                print("tmux: the app did not start")
                return
        print(f"real terminal (tmux {cols}x{lines}): screen up {time.perf_counter() - t0:.1f} s after launch"
              " (including generating the stack in that process)")
        xs = []
        for i in range(args.keys):
            before = tmux("capture-pane", "-p", "-t", "b")
            t = time.perf_counter()
            tmux("send-keys", "-t", "b", "Down")
            while tmux("capture-pane", "-p", "-t", "b") == before:
                if time.perf_counter() - t > 10:
                    break
            xs.append(time.perf_counter() - t)
            time.sleep(0.05)
        scanning = "scanning" in tmux("capture-pane", "-p", "-t", "b")
        show("Down, key to screen (tmux)", xs)
        print(f"  (each sample includes ~2 capture-pane calls; the scan was {'still' if scanning else 'no longer'}"
              " running at the end)")
        tmux("send-keys", "-t", "b", "q")
    finally:
        tmux("kill-server")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--flat", type=int, default=100_000)
    ap.add_argument("--keys", type=int, default=30)
    ap.add_argument("--size", default="130x40")
    ap.add_argument("--tmux", action="store_true", help="also measure in a real terminal (tmux)")
    ap.add_argument("--full-scan", action="store_true", help="also time the whole problems scan")
    ap.add_argument("--disk", action="store_true",
                    help="build the stack as layer directories on a tmpfs of ours (root) and view those")
    ap.add_argument("--scan", choices=("process", "thread", "both"), default="both",
                    help="where the view's scan runs (OVLINSPECT_SCAN)")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--lowerdir", help=argparse.SUPPRESS)  # --serve of a --disk stack
    args = ap.parse_args()
    t = time.perf_counter()
    stack, merged = build(args.entries, args.flat)
    if args.serve:
        if args.lowerdir:
            from ovlinspect.sources.target import stack_from_args

            stack = stack_from_args(args.lowerdir, options="metacopy=on")
            stack.params = dict(PARAMS)
        return serve(stack)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"generated {merged:,} merged entries in {time.perf_counter() - t:.1f} s (max RSS {rss:.0f} MiB)")
    cols, _, lines = args.size.partition("x")
    lowerdir = ""
    root = None
    if args.disk:
        import subprocess
        import tempfile

        from ovlinspect.sources.target import stack_from_args

        root = tempfile.mkdtemp(prefix="ovlbench-ui-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4g", "tmpfs", root], check=True)
    try:
        if root is not None:
            t = time.perf_counter()
            lowerdir = materialize(stack, root)
            stack = stack_from_args(lowerdir, options="metacopy=on")
            stack.params = dict(PARAMS)
            print(f"built on a tmpfs in {time.perf_counter() - t:.1f} s: lowerdir={lowerdir}")
        return _measure(args, stack, lowerdir, (int(cols), int(lines)))
    finally:
        if root is not None:
            import shutil
            import subprocess

            stack.close()  # our descriptors on the layers (the view's clones are closed)
            if subprocess.run(["umount", root]).returncode:
                subprocess.run(["umount", "-l", root])
            shutil.rmtree(root, ignore_errors=True)


def _measure(args, stack: Stack, lowerdir: str, size: tuple[int, int]) -> int:
    rates = {}
    for how in (("process", "thread") if args.scan == "both" else (args.scan,)):
        os.environ["OVLINSPECT_SCAN"] = how
        print(f"\n== the scan in {'a child process' if how == 'process' else 'a thread'}"
              f" (OVLINSPECT_SCAN={how})")
        asyncio.run(run(stack, args.keys, size))
        if args.full_scan:
            # interleaved with check's own walk (A B A B A B: a shared machine's load hits both)
            view, ref = [], []
            for _ in range(3):
                view.append(asyncio.run(scan_only(stack)))
                ref.append(check_rate(args, lowerdir))
            rates[how] = (statistics.median(view), statistics.median(ref))
        if args.tmux:
            tmux_latency(args, lowerdir)
    if rates:
        print()
        for how, (rate, ref) in rates.items():
            print(f"  the view's scan in a {'child process' if how == 'process' else 'thread'}:"
                  f" {rate:,.0f} paths/s against check's {ref:,.0f} (medians of 3, interleaved):"
                  f" {rate / ref:.2f}x check's pace")
    return 0


if __name__ == "__main__":
    sys.exit(main())
