"""The interactive view: ``ovlinspect /mnt/merged``, ``ovlinspect demo [NAME]``.

Layout: the stack header on top; the merged tree on the left; on the right the layer columns for
the selected path and the explanation; along the bottom the problems (filled by a background
scan), search and what-if tabs.  The app gets a ready :class:`~ovlinspect.rules.engine.Engine`; every
slow operation runs in a worker thread with its own engine (see :mod:`.session`).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Footer, Input, TabbedContent, TabPane, Tree
from textual.worker import get_current_worker

from ..kernel.entry import Resolution

from ..rules.engine import Engine
from ..model.layers import Path, join_path, split_path
from ..kernel.params import OptionError
from ..rules.catalogue import Finding
from .commands import OvlCommands
from .details import Explanation, LayerColumns, Selection, explanation, raw_explanation
from .header import StackHeader
from .merged_tree import SEVERITY_RANK, Entry, MergedTree, severity_of
from .palette import LayerPalette
from .panels import PathList, SearchPanel, WhatIfPanel
from .problems import ProblemsPanel, ProblemTree
from .render import esc_str, path_text
from .screens import HelpScreen, PreviewScreen, WhatIfScreen
from .session import (
    Change,
    EngineClone,
    Lister,
    choice_values,
    current_choices,
    diff_outcomes,
    ordered_walk,
    union_walk,
    whatif_engine,
)

#: How long after start a first error found by the scan is selected by itself.
AUTO_JUMP_WINDOW = 1.5
#: Seconds between progress messages from a worker (each one costs the UI a repaint).
BATCH_SECONDS = 0.25


# ------------------------------------------------------------------------------ messages


@dataclass
class ScanUpdate(Message):
    gen: int
    findings: list[Finding]
    scanned: int
    done: bool = False
    elapsed: float = 0.0
    error: str | None = None


@dataclass
class SearchUpdate(Message):
    gen: int
    paths: list[Path]
    scanned: int
    done: bool = False


@dataclass
class WhatIfUpdate(Message):
    gen: int
    changes: list[Change] = field(default_factory=list)
    scanned: int = 0
    done: bool = False
    error: str | None = None


class _Pacer:
    """Tells a worker when to post what it has gathered: at most every ``BATCH_SECONDS``."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < BATCH_SECONDS:
            return False
        self.last = now
        return True


def _while_on_screen(handler):
    """Worker messages can arrive while the app is closing: drop them once the widgets are gone."""

    @functools.wraps(handler)
    def wrapper(self, msg):
        try:
            return handler(self, msg)
        except NoMatches:
            if self.is_running and self.screen.is_attached:
                raise
            return None

    return wrapper


# ------------------------------------------------------------------------------ the app


class OvlInspectApp(App[int]):
    """ovlinspect's interactive view of one stack."""

    CSS_PATH = "app.tcss"
    TITLE = "ovlinspect"
    COMMANDS = App.COMMANDS | {OvlCommands}

    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark,f1", "help", "Help", key_display="?"),
        Binding("slash", "search", "Search", key_display="/"),
        Binding("h", "toggle_hidden", "Hidden"),
        Binding("r", "follow_redirect", "Redirect"),
        Binding("p", "preview", "Preview"),
        Binding("w", "whatif", "What-if"),
        Binding("n", "next_problem", "Next problem"),
        Binding("N", "prev_problem", "Prev problem", show=False),
        Binding("M", "whatif_toggle('metacopy')", "metacopy", show=False),
        Binding("R", "whatif_toggle('redirect_dir')", "redirect_dir", show=False),
        Binding("U", "whatif_toggle('userxattr')", "userxattr", show=False),
        Binding("V", "whatif_toggle('verity')", "verity", show=False),
        Binding("K", "whatif_toggle('kernel')", "kernel", show=False),
        Binding("W", "reset_whatif", "Real options", show=False),
        Binding("z", "maximize_panel", "Zoom", show=False),
        Binding("escape", "escape", "Back", show=False),
    ]

    def __init__(self, engine: Engine, *, auto_jump: bool = True,
                 auto_jump_window: float | None = AUTO_JUMP_WINDOW, observe: bool = True,
                 start: Path | None = None) -> None:
        super().__init__()
        #: the merged path to open at (the path the user named), instead of the root
        self.start = start
        self.base = engine
        self.engine = engine
        self.palette = LayerPalette(engine)
        self.lister = Lister(engine)
        self.selection = Selection(())
        self.res: Resolution | None = None
        self.auto_jump = auto_jump
        self.auto_jump_window = auto_jump_window
        self.observe_live = observe
        self.started = time.monotonic()
        self.scan_gen = 0
        self.search_gen = 0
        self.whatif_gen = 0
        self.findings_at: dict[Path, list[Finding]] = {}
        self.problem_index = -1
        self.theme = "textual-dark"

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield StackHeader(id="header")
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield MergedTree(self.lister, self.palette, id="tree")
            with Vertical(id="right"):
                yield LayerColumns(self.engine, self.palette, id="columns")
                yield Explanation(id="explain")
        with TabbedContent(id="bottom", initial="tab-problems"):
            with TabPane("Problems", id="tab-problems"):
                yield ProblemsPanel(self.palette, id="problems")
            with TabPane("Search", id="tab-search"):
                yield SearchPanel(id="search")
            with TabPane("What-if", id="tab-whatif"):
                yield WhatIfPanel(id="whatif")
        yield Footer()

    @property
    def tree(self) -> MergedTree:
        return self.query_one("#tree", MergedTree)

    @property
    def problems(self) -> ProblemsPanel:
        return self.query_one("#problems", ProblemsPanel)

    def on_mount(self) -> None:
        self.started = time.monotonic()
        self.query_one("#left").border_title = "merged tree"
        self.query_one("#explain").border_title = "explanation"
        self.query_one("#columns").border_title = "layers at this path"
        self.query_one(StackHeader).show(self.engine, self.palette, self.base)
        self.tree.focus()
        self.select(Selection(()))
        if self.start:
            self.auto_jump = False  # the user named a path: stay there
            self.goto_path(self.start)
        self.start_scan()

    def on_unmount(self) -> None:
        self.workers.cancel_all()
        self.lister.close()

    # ------------------------------------------------------------------ selection
    def select(self, sel: Selection) -> None:
        """Show ``sel`` in the layer columns and the explanation."""
        self.selection = sel
        columns = self.query_one(LayerColumns)
        explain = self.query_one(Explanation)
        if sel.raw:
            assert sel.layer is not None
            self.res = None
            columns.show(self.engine, self.palette, sel, None)
            explain.show_text(raw_explanation(self.engine, self.palette, sel.layer, sel.path))
            return
        res = self.engine.resolve(sel.path)
        self.res = res
        columns.show(self.engine, self.palette, sel, res)
        explain.show_text(explanation(self.engine, self.palette, res, self.findings_at.get(sel.path, []),
                                      self._observed(res), whatif=self.engine is not self.base))

    def _observed(self, res: Resolution) -> tuple[str, list[str]] | None:
        mp = self.engine.stack.mountpoint
        if not (mp and self.observe_live) or self.engine is not self.base:
            return None
        try:
            from ..live.observe import compare, observe
        except ImportError:
            return None
        try:
            from ..sources.containers import merged_root  # another namespace's mount: through a copy

            ob = observe(merged_root(self.engine.stack), res.path)
            return ob.summary(), compare(self.engine, res, ob)
        except OSError as e:
            return f"cannot observe: {e.strerror}", []

    @on(Tree.NodeHighlighted, "#tree")
    def _tree_highlighted(self, event: Tree.NodeHighlighted[Entry]) -> None:
        e = event.node.data
        if e is None:
            return
        if e.kind in ("merged", "whiteout"):
            self.select(Selection(e.path))
        elif e.kind == "asked":
            self.select(Selection(e.path + tuple(e.rest)))
        elif e.kind == "copy":
            self.select(Selection(e.path, layer=e.layer))
        elif e.kind in ("layerpath", "datalayer"):
            self.select(Selection(e.path, layer=e.layer, raw=True))

    def goto_path(self, path: Path, focus: bool = True) -> None:
        """Reveal ``path`` in the merged tree (loading directories on the way) and select it."""
        self.run_worker(self._goto(path, focus), group="goto", exclusive=True, exit_on_error=False)

    async def _goto(self, path: Path, focus: bool) -> None:
        tree = self.tree
        node = await tree.reveal(path)
        if node is None or node.data is None or node.data.path != path:
            # not listed (absent, hidden by a whiteout, or below a failing directory): a row
            # for the name the lookup fails on, under the deepest directory listed
            if node is not None and node.data is not None and (node.data.is_dir or node is tree.root):
                row = tree.add_asked(node, path)
                if row is not None:
                    tree.build_lines()
                    tree.move_cursor(row)
            self.select(Selection(path))
        if focus:
            tree.focus()

    # ------------------------------------------------------------------ problems scan
    def start_scan(self) -> None:
        self.scan_gen += 1
        self.findings_at = {}
        tree = self.tree
        tree.problems_at = {}
        tree.problems_below = {}
        self.problem_index = -1
        self._scan(self.engine, self.scan_gen)

    @work(thread=True, exclusive=True, group="scan", exit_on_error=False)
    def _scan(self, engine: Engine, gen: int) -> None:
        worker = get_current_worker()
        pacer = _Pacer()
        t0 = pacer.last
        clone = EngineClone(engine)
        count = 0
        try:
            e = clone.engine
            batch: list[Finding] = list(e.stack_findings())
            if not e.mount_errno:
                for res in e.walk(cancel=lambda: worker.is_cancelled):
                    if worker.is_cancelled:
                        return
                    count += 1
                    if res.findings:
                        batch.extend(res.findings)
                    if pacer.due():
                        self.post_message(ScanUpdate(gen, batch, count))
                        batch = []
            self.post_message(ScanUpdate(gen, batch, count, done=True, elapsed=time.monotonic() - t0))
        except Exception as err:  # a layer vanished, a permission changed: report, don't crash
            self.post_message(ScanUpdate(gen, [], count, done=True, elapsed=time.monotonic() - t0,
                                         error=f"{type(err).__name__}: {err}"))
        finally:
            clone.close()

    @_while_on_screen
    def on_scan_update(self, msg: ScanUpdate) -> None:
        if msg.gen != self.scan_gen:
            return
        panel = self.problems
        tree = self.tree
        touched: set[Path] = set()
        exact: set[Path] = set()
        for f in msg.findings:
            path = split_path(f.path)
            exact.add(path)
            self.findings_at.setdefault(path, []).append(f)
            rank = SEVERITY_RANK[severity_of(f)]
            tree.problems_at.setdefault(path, [0, 0, 0])[rank] += 1
            touched.add(path)
            for i in range(len(path)):
                tree.problems_below.setdefault(path[:i], [0, 0, 0])[rank] += 1
                touched.add(path[:i])
        panel.add(msg.findings, msg.scanned)
        if msg.done:
            panel.finish(msg.scanned, msg.elapsed, msg.error)
        if touched:
            tree.repaint_paths(touched)
            if self.selection.path in exact and not self.selection.raw:
                self.select(self.selection)
        self._maybe_auto_jump()

    def _maybe_auto_jump(self) -> None:
        """On a stack with errors, open on the first one (unless the user has moved)."""
        if not self.auto_jump:
            return
        if self.auto_jump_window is not None and time.monotonic() - self.started > self.auto_jump_window:
            return
        if self.selection.path != () or self.tree.cursor_line > 0 or self.focused is not self.tree:
            return
        first = self.problems.first_error()
        if first is None or first.severity != "error":
            return
        self.auto_jump = False
        self.problem_index = 0
        self.goto_path(split_path(first.path), focus=True)

    @on(ProblemTree.Chosen)
    def _problem_chosen(self, msg: ProblemTree.Chosen) -> None:
        path = split_path(msg.finding.path)
        if msg.jump:
            self.goto_path(path)
        else:
            self.select(Selection(path))

    def problem_list(self) -> list[Finding]:
        return [f for g in self.problems.ordered_groups() for f in g.findings]

    def _step_problem(self, step: int) -> None:
        findings = self.problem_list()
        if not findings:
            self.notify("no problems found" if self.problems.done else "no problems found yet",
                        timeout=2)
            return
        self.problem_index = (self.problem_index + step) % len(findings)
        self.goto_path(split_path(findings[self.problem_index].path))

    def action_next_problem(self) -> None:
        self._step_problem(1)

    def action_prev_problem(self) -> None:
        self._step_problem(-1)

    def action_rescan(self) -> None:
        self.problems.restart(self.palette)
        self.start_scan()

    # ------------------------------------------------------------------ search
    def action_search(self) -> None:
        self.query_one("#bottom", TabbedContent).active = "tab-search"
        self.query_one("#search-input", Input).focus()

    @on(SearchPanel.Query)
    def _search_query(self, msg: SearchPanel.Query) -> None:
        self.search_gen += 1
        results = self.query_one("#search-results", PathList)
        results.reset()
        panel = self.query_one(SearchPanel)
        if not msg.text:
            self.workers.cancel_group(self, "search")
            panel.set_status(Text("type to search the merged tree", style="dim"))
            return
        needle = msg.text.encode("utf-8", "surrogateescape").lower()
        if msg.problems_only:
            self._search_problems(needle, self.problem_list(), self.search_gen)
        else:
            self._search_tree(self.engine, needle, self.search_gen)

    @work(thread=True, exclusive=True, group="search", exit_on_error=False)
    def _search_tree(self, engine: Engine, needle: bytes, gen: int) -> None:
        worker = get_current_worker()
        clone = EngineClone(engine)
        try:
            found: list[Path] = []
            count = 0
            pacer = _Pacer()
            for res in ordered_walk(clone.engine, cancel=lambda: worker.is_cancelled):
                if worker.is_cancelled:
                    return
                count += 1
                if needle in join_path(res.path).lower():
                    found.append(res.path)
                if pacer.due():
                    self.post_message(SearchUpdate(gen, found, count))
                    found = []
            self.post_message(SearchUpdate(gen, found, count, done=True))
        finally:
            clone.close()

    @work(thread=True, exclusive=True, group="search", exit_on_error=False)
    def _search_problems(self, needle: bytes, findings: list[Finding], gen: int) -> None:
        seen: set[bytes] = set()
        found: list[Path] = []
        for f in findings:
            if f.path in seen:
                continue
            seen.add(f.path)
            if needle in f.path.lower():
                found.append(split_path(f.path))
        self.post_message(SearchUpdate(gen, found, len(seen), done=True))

    @_while_on_screen
    def on_search_update(self, msg: SearchUpdate) -> None:
        if msg.gen != self.search_gen:
            return
        results = self.query_one("#search-results", PathList)
        rows = []
        for p in msg.paths:
            t = path_text(p, "bold")
            fs = self.findings_at.get(p)
            if fs:
                t.append("  " + ", ".join(sorted({f.rule for f in fs})), "#ff8787")
            rows.append((p, t))
        results.add_paths(rows)
        status = Text()
        n = len(results.paths)
        status.append(f"{n}{'+' if n >= 1000 else ''} match{'es' if n != 1 else ''}", "bold")
        status.append(f" in {msg.scanned:,} paths", "dim")
        status.append("" if msg.done else "  searching…", "#87afd7")
        self.query_one(SearchPanel).set_status(status)

    @on(PathList.Chosen)
    def _path_chosen(self, msg: PathList.Chosen) -> None:
        if msg.jump:
            self.goto_path(msg.path)
        else:
            self.select(Selection(msg.path))

    # ------------------------------------------------------------------ hidden entries
    def action_toggle_hidden(self) -> None:
        tree = self.tree
        tree.show_hidden = not tree.show_hidden
        self.query_one("#left").border_title = (
            "merged tree + what it hides (h)" if tree.show_hidden else "merged tree")
        self.reload_tree()

    def reload_tree(self) -> None:
        tree = self.tree
        expanded = tree.expanded_paths()
        cursor = self.selection.path
        tree.restart(self.lister, self.palette)
        self.run_worker(self._restore(expanded, cursor), group="goto", exclusive=True, exit_on_error=False)

    async def _restore(self, expanded: list[Path], cursor: Path) -> None:
        tree = self.tree
        await tree.ensure_loaded(tree.root)
        for p in sorted(expanded, key=len):
            node = tree.find_loaded(p)
            if node is not None:
                node.expand()
                await tree.ensure_loaded(node)
        await tree.reveal(cursor)
        self.select(Selection(cursor) if not self.selection.raw else self.selection)

    # ------------------------------------------------------------------ redirects, preview
    def action_follow_redirect(self, k: int | None = None) -> None:
        columns = self.query_one(LayerColumns)
        if not columns.targets:
            self.notify("the selected path has no redirect", timeout=2)
            return
        if k is None or k not in columns.targets:
            k = min(columns.targets)
        columns.follow(k)

    def action_goto_redirect(self) -> None:
        res = self.res
        if res is None or res.redirect is None or not res.redirect.startswith(b"/"):
            self.notify("the selected path has no absolute redirect", timeout=2)
            return
        self.goto_path(split_path(res.redirect))

    def action_preview(self) -> None:
        if self.res is None:
            self.notify("select a merged path to preview", timeout=2)
            return
        self.push_screen(PreviewScreen(self.engine, self.palette, self.res))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_maximize_panel(self) -> None:
        if self.screen.maximized is not None:
            self.screen.minimize()
            return
        w = self.focused
        while w is not None and w.parent is not None and w.id not in ("left", "columns", "explain", "bottom"):
            w = w.parent  # type: ignore[assignment]
        if w is not None:
            self.screen.maximize(w, container=False)

    def action_escape(self) -> None:
        if self.screen.maximized is not None:
            self.screen.minimize()
        elif self.focused is not self.tree:
            self.tree.focus()

    # ------------------------------------------------------------------ what-if
    def action_whatif(self) -> None:
        def done(choices: dict | None) -> None:
            if choices is not None:
                self.apply_whatif(choices)

        self.push_screen(WhatIfScreen(self.engine, self.base), done)

    def action_whatif_toggle(self, key: str) -> None:
        values = choice_values(self.base)[key]
        current = current_choices(self.engine)
        now = current[key]
        start = values.index(now) if now in values else -1
        # the kernel adjusts some values (a lower-only mount turns redirect_dir=follow into on):
        # step on to the next value that makes a difference
        for i in range(1, len(values) + 1):
            choices = {**current, key: values[(start + i) % len(values)]}
            try:
                trial = whatif_engine(self.base, choices)
            except OptionError:
                continue
            if current_choices(trial)[key] != now:
                self.apply_whatif(choices)
                return
        self.notify(f"no other value of {key} changes this stack's mount", timeout=2)

    def set_whatif_option(self, key: str, value: str) -> None:
        choices = current_choices(self.engine)
        choices[key] = value
        self.apply_whatif(choices)

    def action_reset_whatif(self) -> None:
        self.apply_whatif(current_choices(self.base))

    def apply_whatif(self, choices: dict[str, str]) -> None:
        if choices == current_choices(self.base):
            self.set_engine(self.base)
            return
        try:
            engine = whatif_engine(self.base, choices)
        except OptionError as e:
            self.notify(esc_str(str(e)).plain, severity="error", title="what-if", markup=False)
            return
        self.set_engine(engine)

    def set_engine(self, engine: Engine) -> None:
        if engine is self.engine:
            return
        # stop the old engine's background work first: the new tree's listing comes first
        self.workers.cancel_group(self, "scan")
        self.workers.cancel_group(self, "whatif")
        self.workers.cancel_group(self, "search")
        self.search_gen += 1
        self.scan_gen += 1
        self.whatif_gen += 1
        self.engine = engine
        self.palette = LayerPalette(engine)
        self.lister = Lister(engine)
        self.query_one(StackHeader).show(engine, self.palette, self.base)
        self.query_one(LayerColumns).engine = engine
        self.tree.changed = set()
        self.problems.restart(self.palette, note="what-if options" if engine is not self.base else "")
        self.reload_tree()
        panel = self.query_one(WhatIfPanel)
        if engine is self.base:
            panel.idle()
        else:
            panel.query_one(PathList).reset()
            self.query_one("#bottom", TabbedContent).active = "tab-whatif"
            if engine.mount_errno:
                t = Text()
                t.append(f"The kernel would refuse this mount: {engine.mount_errno}. ", "bold #ff5f5f")
                t.append_text(esc_str("; ".join(engine.options.mount_log)))
                panel.set_status(t)
            else:
                t = Text("comparing every path with the real options…", style="#87afd7")
                panel.set_status(t)
        self.run_worker(self._after_root(engine), group="after-root", exclusive=True, exit_on_error=False)

    async def _after_root(self, engine: Engine) -> None:
        """The scan and the what-if comparison, once the new tree's root is on screen."""
        tree = self.tree
        await tree.ensure_loaded(tree.root)
        if engine is not self.engine:
            return
        self.start_scan()
        if engine is not self.base and not engine.mount_errno:
            self._whatif_diff(self.base, engine, self.whatif_gen)
        search = self.query_one(SearchPanel)
        if self.query_one("#search-input", Input).value:
            search.run_again()  # the same query on the new engine

    @work(thread=True, exclusive=True, group="whatif", exit_on_error=False)
    def _whatif_diff(self, base: Engine, engine: Engine, gen: int) -> None:
        worker = get_current_worker()
        a, b = EngineClone(base), EngineClone(engine)
        count = 0
        try:
            batch: list[Change] = []
            pacer = _Pacer()
            for path, ra, rb in union_walk(a.engine, b.engine, cancel=lambda: worker.is_cancelled):
                if worker.is_cancelled:
                    return
                count += 1
                c = diff_outcomes(a.engine, b.engine, ra, rb, path)
                if c is not None:
                    batch.append(c)
                if pacer.due():
                    self.post_message(WhatIfUpdate(gen, batch, count))
                    batch = []
            self.post_message(WhatIfUpdate(gen, batch, count, done=True))
        except Exception as err:
            self.post_message(WhatIfUpdate(gen, [], count, done=True, error=f"{type(err).__name__}: {err}"))
        finally:
            a.close()
            b.close()

    @_while_on_screen
    def on_what_if_update(self, msg: WhatIfUpdate) -> None:
        if msg.gen != self.whatif_gen:
            return
        panel = self.query_one(WhatIfPanel)
        panel.add_changes(msg.changes)
        tree = self.tree
        if msg.changes:
            tree.changed.update(c.path for c in msg.changes)
            tree.repaint_paths({c.path for c in msg.changes})
        n = len(tree.changed)
        t = Text()
        t.append("what-if ", "bold")
        real = current_choices(self.base)
        changed = [f"{k}={v}" for k, v in current_choices(self.engine).items() if v != real[k]]
        t.append(", ".join(changed), "bold #ff87ff")
        t.append(f": {n:,} path{'s' if n != 1 else ''} resolve differently", "bold")
        t.append(f"  (compared {msg.scanned:,} paths{'' if msg.done else ', comparing…'})", "dim")
        if msg.error:
            t.append(f"  comparison failed: {msg.error}", "red")
        if msg.done and n == 0:
            t.append("  nothing changes", "#87d787")
        panel.set_status(t)


def run_app(engine: Engine, start: Path | None = None) -> int:
    """Run the interactive view on ``engine`` until the user quits; the exit status.

    ``start``: a merged path to open at, selected with its ancestors expanded."""
    app = OvlInspectApp(engine, start=start)
    result = app.run()
    return result if isinstance(result, int) else 0


__all__ = ["OvlInspectApp", "run_app"]
