"""The interactive view: ``ovlinspect /mnt/merged``, ``ovlinspect demo [NAME]``.

Layout: the stack header on top; the merged tree on the left; on the right the layer columns for
the selected path and the explanation; along the bottom the problems (filled by a background
scan), search and what-if tabs.  The app gets a ready :class:`~ovlinspect.rules.engine.Engine`; every
slow operation runs in a worker thread with its own engine (see :mod:`.session`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import tempfile
import time
from pathlib import Path as FsPath

from platformdirs import user_downloads_path

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.containers import Horizontal, Vertical
from textual.reactive import var
from textual.widgets import Footer, Input, TabbedContent, TabPane, Tree

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
from .scanproc import Started, ahead
from .messages import ScanUpdate, WhatIfUpdate
from .render import esc_str, plain
from .screens import HelpScreen, PreviewScreen, WhatIfScreen
from .style import ink_of
from .session import Lister, choice_values, current_choices, whatif_engine

#: How long after start a first error found by the scan is selected by itself.
AUTO_JUMP_WINDOW = 1.5


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

    #: the engine on screen: the real one (``base``) or a what-if; watchers push it to the widgets
    engine: var[Engine] = var(None, init=False, always_update=False)  # type: ignore[arg-type]
    #: what the layer columns and the explanation show
    selection: var[Selection] = var(Selection(()), init=False, always_update=True)

    BINDINGS = [
        Binding("q", "quit", "Quit"),
        # ctrl+c quits at once (Textual's default only says how to quit)
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        Binding("j", "cursor('down')", "Down", show=False),
        Binding("k", "cursor('up')", "Up", show=False),
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
                 start: Path | None = None, sigterm: bool = False) -> None:
        super().__init__()
        #: quit as on ``q`` when sent SIGTERM (the terminal given back, the scan's children
        #: stopped), instead of dying with the terminal left in the view's screen
        self.sigterm = sigterm
        #: the merged path to open at (the path the user named), instead of the root
        self.start = start
        self.base = engine
        self.palette = LayerPalette(engine)
        self.lister = Lister(engine)
        self.set_reactive(OvlInspectApp.engine, engine)
        self.res: Resolution | None = None
        self.auto_jump = auto_jump
        self.auto_jump_window = auto_jump_window
        self.observe_live = observe
        self.started = time.monotonic()
        #: the what-if values as chosen (the engine's options show what the kernel makes of them)
        self.whatif_choices: dict[str, str] = current_choices(engine)
        self.findings_at: dict[Path, list[Finding]] = {}
        self.problem_index = -1
        self.theme = "textual-dark"
        #: the child process started ahead for the next scan (:mod:`.scanproc`)
        self.spare: Started | None = None

    def on_load(self) -> None:
        # before the first screen: the child is up by the time the first scan wants it
        self.spare = ahead(self.engine)

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield StackHeader(id="header")
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield MergedTree(self.lister, self.palette, engine=self.engine, id="tree")
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
        if self.sigterm:
            try:
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.exit, 128 + signal.SIGTERM)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread, or no signals here: SIGTERM kills as before
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

    def on_resize(self) -> None:
        """On a small terminal the layer columns give up rows to the explanation (which says
        what fails and why): their titles and roles stay, the rest scrolls."""
        try:
            columns = self.query_one(LayerColumns)
        except NoMatches:
            return
        columns.styles.max_height = 6 if self.size.height < 30 else "55%"

    def on_unmount(self) -> None:
        self.workers.cancel_all()
        if self.spare is not None:
            self.spare.stop()
            self.spare = None
        self.lister.close()

    # ------------------------------------------------------------------ selection
    def select(self, sel: Selection) -> None:
        """Show ``sel`` in the layer columns and the explanation."""
        self.selection = sel

    def watch_selection(self, sel: Selection) -> None:
        columns = self.query_one(LayerColumns)
        explain = self.query_one(Explanation)
        if sel.raw:
            assert sel.layer is not None
            self.res = None
            columns.show(self.engine, self.palette, sel, None)
            explain.show_text(raw_explanation(self.engine, self.palette, sel.layer, sel.path, ink_of(explain)))
            return
        res = self.engine.resolve(sel.path)
        self.res = res
        columns.show(self.engine, self.palette, sel, res)
        explain.show_text(explanation(self.engine, self.palette, res, self.findings_at.get(sel.path, []),
                                      self._observed(res), whatif=self.engine is not self.base,
                                      ink=ink_of(explain)))

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
        if tree.reveal_abandoned:
            return  # the user pressed a key meanwhile: the cursor stays theirs
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
        """Scan the engine on screen (in the problems panel); forget the previous scan's marks."""
        self.findings_at = {}
        tree = self.tree
        tree.problems_at = {}
        tree.problems_below = {}
        tree.repaint_labels()  # labels made meanwhile counted the previous scan's problems
        self.problem_index = -1
        started, self.spare = self.spare, None
        self.problems.scan(self.engine, self.palette,
                           note="what-if options" if self.engine is not self.base else "",
                           started=started)
        # one more for the next scan (a what-if, a rescan): ready when it is asked for
        self.spare = ahead(self.engine)

    @_while_on_screen
    def on_scan_update(self, msg: ScanUpdate) -> None:
        """The problems panel took the batch (stale ones stop there): mark the tree."""
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
        if touched:
            tree.repaint_paths(touched)
            if self.selection.path in exact and not self.selection.raw:
                self.select(self.selection)
        self._fit_bottom()
        self._maybe_auto_jump()

    @on(TabbedContent.TabActivated, "#bottom")
    def _fit_bottom(self) -> None:
        """The bottom panel takes a quarter of the screen at most, and one line when the scan
        found nothing (on the Problems tab): the room goes to the tree and the explanation."""
        problems = self.problems
        quiet = (problems.done and not problems.findings
                 and self.query_one("#bottom", TabbedContent).active == "tab-problems")
        self.query_one("#bottom").set_class(quiet, "-quiet")

    def _maybe_auto_jump(self) -> None:
        """On a stack with errors, open on the first one (unless the user has moved)."""
        if not self.auto_jump:
            return
        if self.auto_jump_window is not None and time.monotonic() - self.started > self.auto_jump_window:
            return
        if (self.selection.path != () or self.tree.cursor_line > 0 or self.focused is not self.tree
                or self.tree.user_keys):
            return
        first = self.problems.first_error()
        if first is None or first.severity != "error":
            return
        self.auto_jump = False
        self.problem_index = 0
        self.goto_path(split_path(first.path), focus=True)

    @on(ProblemTree.Chosen)
    def _problem_chosen(self, msg: ProblemTree.Chosen) -> None:
        path = split_path(msg.path)
        if msg.jump:
            self.goto_path(path)
        else:
            self.select(Selection(path))

    def problem_list(self) -> list[Finding]:
        """What n / N walk: one path per cause first, then the rest (see ProblemsPanel.walk_order)."""
        return self.problems.walk_order()

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
        self.start_scan()

    # ------------------------------------------------------------------ search
    def action_search(self) -> None:
        self.query_one("#bottom", TabbedContent).active = "tab-search"
        self.query_one("#search-input", Input).focus()

    @on(SearchPanel.Query)
    def _search_query(self, msg: SearchPanel.Query) -> None:
        self.query_one(SearchPanel).search(self.engine, msg.text, msg.problems_only, self.problem_list(),
                                           self.findings_at)

    @on(PathList.Chosen)
    def _path_chosen(self, msg: PathList.Chosen) -> None:
        if msg.jump:
            self.goto_path(msg.path, focus=msg.focus)
        else:
            self.select(Selection(msg.path))

    # ------------------------------------------------------------------ hidden entries
    def action_toggle_hidden(self) -> None:
        tree = self.tree
        tree.show_hidden = not tree.show_hidden
        self.query_one("#left").border_title = (
            "merged tree + hidden (h)" if tree.show_hidden else "merged tree")
        self.reload_tree()

    def reload_tree(self) -> None:
        tree = self.tree
        expanded = tree.expanded_paths()
        cursor = self.selection.path
        tree.restart(self.lister, self.palette, engine=self.engine)
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
        screen = PreviewScreen(self.engine, self.palette, self.res)
        if not screen.sources:
            # nothing to show side by side (a directory, a symlink, a failed lookup): say so in
            # one line where the user is, not on a full-screen modal
            what = "a directory" if self.res.is_dir else (self.res.kind or self.res.errno or "nothing")
            self.notify(f"{plain(join_path(self.res.path))}: {what}, no file content to preview",
                        title="preview", timeout=3, markup=False)
            return
        self.push_screen(screen)

    def action_cursor(self, direction: str) -> None:
        """j / k: down / up in the focused list (vi keys, as in less and dive)."""
        action = getattr(self.focused, f"action_cursor_{direction}", None)
        if action is not None:
            action()

    def deliver_screenshot(self, filename: str | None = None, path: str | None = None,
                           time_format: str | None = None) -> str | None:
        """The palette's Screenshot: to ~/Downloads when it exists, else the current directory
        (when writable), else the temporary directory; the notification says where."""
        if path is None:
            path = str(screenshot_dir())
        return super().deliver_screenshot(filename, path, time_format)

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
        # step from the value the user chose (the kernel may show another: redirect_dir=off is
        # follow with the module default), to the next one that changes the effective value
        current = dict(self.whatif_choices) if self.engine is not self.base else current_choices(self.engine)
        now = current_choices(self.engine)[key]
        chosen = current[key]
        start = values.index(chosen) if chosen in values else -1
        # the kernel adjusts some values (a lower-only mount turns redirect_dir=follow into on):
        # step on to the next value that makes a difference
        for i in range(1, len(values) + 1):
            choices = {**current, key: values[(start + i) % len(values)]}
            try:
                trial = whatif_engine(self.base, choices)
            except OptionError:
                continue
            if trial.mount_errno and key != "kernel":
                # an option value the kernel refuses with the others (w or the palette still
                # set it, to see why); a kernel that refuses the stack is an answer: keep it
                continue
            if current_choices(trial)[key] != now:
                self.apply_whatif(choices)
                return
        self.notify(f"no other value of {key} changes this stack's mount or is accepted with "
                    "these options (w: choose any)", timeout=3)

    def set_whatif_option(self, key: str, value: str) -> None:
        choices = current_choices(self.engine)
        choices[key] = value
        self.apply_whatif(choices)

    def action_reset_whatif(self) -> None:
        self.apply_whatif(current_choices(self.base))

    def apply_whatif(self, choices: dict[str, str]) -> None:
        self.whatif_choices = dict(choices)
        if choices == current_choices(self.base):
            self.set_engine(self.base)
            return
        try:
            engine = whatif_engine(self.base, choices)
        except OptionError as e:
            self.notify(esc_str(str(e)).plain, severity="error", title="what-if", markup=False)
            return
        self.set_engine(engine)

    def _palette(self, engine: Engine) -> LayerPalette:
        return LayerPalette(engine, dark=self.current_theme.dark)

    def watch_theme(self, theme: str) -> None:
        """Layer colours readable on the new theme: push a new palette to every widget."""
        if not self._views_ready():
            return
        pal = self.palette = self._palette(self.engine)
        self.query_one(StackHeader).show(self.engine, pal, self.base)
        tree = self.tree
        tree.palette = pal
        tree.repaint_labels()
        self.problems.palette = pal
        self.query_one(LayerColumns).palette = pal
        self.select(self.selection)

    def _views_ready(self) -> bool:
        try:
            self.query_one(StackHeader)
        except Exception:  # before the first screen is up, or after it is gone
            return False
        return True

    def set_engine(self, engine: Engine) -> None:
        self.engine = engine

    def watch_engine(self, old: Engine, engine: Engine) -> None:
        """Another engine (a what-if, or back to the real one): every view starts over on it."""
        # stop the old engine's background work first: the new tree's listing comes first
        self.query_one(WhatIfPanel).stop()
        self.query_one(SearchPanel).stop()
        self.workers.cancel_group(self.problems, "scan")
        self.palette = self._palette(engine)
        self.lister = Lister(engine)
        self.query_one(StackHeader).show(engine, self.palette, self.base)
        self.query_one(LayerColumns).engine = engine
        self.tree.changed = set()
        self.reload_tree()
        if engine is not self.base:
            self.query_one("#bottom", TabbedContent).active = "tab-whatif"
        self.run_worker(self._after_root(engine), group="after-root", exclusive=True, exit_on_error=False)

    async def _after_root(self, engine: Engine) -> None:
        """The scan and the what-if comparison, once the new tree's root is on screen."""
        tree = self.tree
        await tree.ensure_loaded(tree.root)
        if engine is not self.engine:
            return
        self.start_scan()
        self.query_one(WhatIfPanel).compare(self.base, engine)
        search = self.query_one(SearchPanel)
        if self.query_one("#search-input", Input).value:
            search.run_again()  # the same query on the new engine

    @_while_on_screen
    def on_what_if_update(self, msg: WhatIfUpdate) -> None:
        """The what-if panel listed the batch: mark the paths in the tree."""
        if msg.changes:
            tree = self.tree
            tree.changed.update(c.path for c in msg.changes)
            tree.repaint_paths({c.path for c in msg.changes})


def screenshot_dir() -> FsPath:
    """Where the palette's Screenshot writes: the first writable of ~/Downloads, cwd, tmp."""
    try:
        cwd: FsPath | None = FsPath.cwd()
    except OSError:  # the current directory was removed
        cwd = None
    for d in (user_downloads_path(), cwd):
        if d is not None and d.is_dir() and os.access(d, os.W_OK | os.X_OK):
            return d
    return FsPath(tempfile.gettempdir())


def run_app(engine: Engine, start: Path | None = None) -> int:
    """Run the interactive view on ``engine`` until the user quits; the exit status.

    ``start``: a merged path to open at, selected with its ancestors expanded."""
    app = OvlInspectApp(engine, start=start, sigterm=True)
    result = app.run()
    return result if isinstance(result, int) else 0


__all__ = ["OvlInspectApp", "run_app"]
