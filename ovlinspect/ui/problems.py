"""The problems panel: the stack's findings grouped by cause, the one to fix first first.

A plain directory on a redirect path that turns 79 lookups into EIO is one line here
("``lower 3 (base3):/ab`` is a plain directory on the redirect path → 79 paths fail with EIO"),
with its fix once and its paths below it (the first few, then "… N more").  Findings arrive in
batches from the background scan and go into a :class:`~ovlinspect.report.causes.CauseIndex`
as they come (the grouping ``check`` prints); once the scan is done the causes take their final
order: by severity, then by how many paths they break.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from rich.style import Style
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import ProgressBar, Static, Tree
from textual.widgets.tree import TreeNode
from textual.worker import get_current_worker

from humanize import intcomma, precisedelta

from ..kernel.entry import Resolution
from ..report.causes import Cause, CauseFacts, CauseIndex
from ..rules.engine import Engine
from ..rules.scan import check_findings
from ..rules.catalogue import Finding, Severity
from .messages import ScanUpdate
from .merged_tree import SEVERITY_MARK
from .palette import LayerPalette
from .render import esc, esc_str
from .scanproc import CannotMove, ChildScan, Started, wants_child
from .session import EngineClone, Pacer
from .style import themed

#: severity colours from the theme (readable on light themes too)
SEVERITY_THEMED = {"error": "bold $text-error", "warning": "bold $text-warning", "info": "$text-primary"}

#: paths listed under a cause before its "… N more" row, and how many more each Enter adds
FEW = 5
PAGE = 200
#: causes given a row of their own: while the scan runs, the first of each severity; once it
#: is done, the first in order.  The rest wait behind one "… N more causes" row (enter shows
#: PAGE more).  A missing object store is one cause per object: 80,544 of them once kept the
#: view busy for a minute after the scan, keys waiting tens of seconds.
SHOWN = 500


@dataclass(eq=False)
class Row:
    """What the panel shows of one cause: its tree node, the path rows shown, the "more" row."""

    cause: Cause
    node: TreeNode | None = None
    #: the paths listed as rows so far (in the order shown)
    shown: list[bytes] = field(default_factory=list)
    more: TreeNode | None = None
    fix: TreeNode | None = None
    #: the distinct paths of the cause so far (its count, without a pass over them per batch)
    distinct: set[bytes] = field(default_factory=set)


@dataclass(eq=False)
class ProblemRef:
    """Tree data: a cause (``path`` None), its fix line, one of its paths, or its "more" row."""

    row: Row | None  # None: the "more causes" row
    path: bytes | None = None
    more: bool = False
    fix: bool = False

    @property
    def cause(self) -> Cause:
        assert self.row is not None
        return self.row.cause


class ProblemTree(Tree[ProblemRef]):
    """Causes, the worst first; under each, its fix once and the paths it breaks.

    Highlighting a cause opens it (its fix and first paths below it) and shows its first path;
    highlighting a path shows it; enter on a path jumps the merged tree to it."""

    class Chosen(Message):
        """A merged path was highlighted (``jump`` False) or selected (``jump`` True)."""

        def __init__(self, path: bytes, jump: bool) -> None:
            super().__init__()
            self.path = path
            self.jump = jump

    def __init__(self, **kwargs) -> None:
        super().__init__("problems", **kwargs)
        self.show_root = False
        self.guide_depth = 2
        self.auto_expand = False

    def render_label(self, node: TreeNode[ProblemRef], base_style: Style, style: Style) -> Text:
        """A cause too wide for the panel keeps its end (``→ 79 paths fail with EIO``) and its
        start (the layer and path at fault): the middle of the message gives way; other rows
        end in ``…`` when cut."""
        label = super().render_label(node, base_style, style)
        d = node.data
        room = self.scrollable_content_region.width - (self.guide_depth if d is not None and
                                                         (d.path is not None or d.more or d.fix) else 0)
        if room <= 0 or label.cell_len <= room:
            return label
        plain = label.plain
        arrow = plain.rfind(" → ")
        if d is not None and d.path is None and not d.more and not d.fix and arrow > 0:
            tail = label[arrow:]
            keep = room - tail.cell_len - 1
            if keep >= max(12, room // 2):
                head = label[:keep]
                head.append("…")
                return Text.assemble(head, tail)
        label.truncate(room, overflow="ellipsis")
        return label

    def watch_show_vertical_scrollbar(self, shown: bool) -> None:
        # the labels are fitted to the width the scrollbar leaves (render_label): fit them again
        self._clear_line_cache()
        self.refresh()

    def _panel(self) -> "ProblemsPanel | None":
        panel = self.parent
        while panel is not None and not isinstance(panel, ProblemsPanel):
            panel = panel.parent
        return panel

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted[ProblemRef]) -> None:
        event.stop()
        d = event.node.data
        if d is None:
            return
        if d.path is not None:
            self.post_message(self.Chosen(d.path, jump=False))
        elif not d.more and not d.fix:
            # a cause: open it below the cursor (nothing above moves) and show its first path
            if not event.node.is_expanded:
                event.node.expand()
            if self.has_focus:
                panel = self._panel()
                if panel is not None:
                    panel.opened.add(id(d.cause))
            if d.cause.paths:
                self.post_message(self.Chosen(min(d.cause.paths), jump=False))

    def on_tree_node_selected(self, event: Tree.NodeSelected[ProblemRef]) -> None:
        event.stop()
        d = event.node.data
        if d is None:
            return
        if d.path is not None:
            self.post_message(self.Chosen(d.path, jump=True))
        elif d.more:
            panel = self._panel()
            if panel is not None:
                panel.show_more(d.row)
        elif d.fix:
            pass
        elif d.cause.paths:
            # enter on a cause: to its first path (the one the fix is about)
            self.post_message(self.Chosen(min(d.cause.paths), jump=True))


class ProblemsPanel(Vertical):
    """Status line, progress bar and the findings grouped by cause (:class:`CauseIndex`)."""

    def __init__(self, palette: LayerPalette, **kwargs) -> None:
        super().__init__(**kwargs)
        self.palette = palette
        self.findings: list[Finding] = []
        self.index: CauseIndex | None = None
        self.rows: dict[int, Row] = {}  # id(cause) -> its row
        #: the causes the user opened (by id): they stay open when the scan ends
        self.opened: set[int] = set()
        #: severity rank -> the tree node of the first cause of that severity (during the scan)
        self._first: dict[int, TreeNode] = {}
        self.scanned = 0
        self.done = False
        #: seconds from the scan's start to its results all shown
        self.elapsed: float | None = None
        self._t0 = time.monotonic()
        #: causes by severity, and the distinct paths of the findings, counted as they come
        self._counts = {"error": 0, "warning": 0, "info": 0}
        self._paths: set[bytes] = set()
        #: severity rank -> causes with a row so far (during the scan)
        self._shown_by_rank: dict[int, int] = {}
        #: causes without a row of their own, and the row that says how many
        self._unshown = 0
        self.more_causes: TreeNode | None = None
        #: the rows in their final order (once the scan is done)
        self._order: list[Row] = []
        self.note = ""
        #: the current scan: messages of an earlier one are dropped
        self.gen = 0
        #: the process running the current scan (None: a thread of ours)
        self.child_pid: int | None = None

    # ------------------------------------------------------------------ the scan
    def scan(self, engine: Engine, palette: LayerPalette, note: str = "",
             started: Started | None = None) -> None:
        """Start over: scan every path of ``engine`` in a thread, showing causes as they come
        (in the child process ``started`` ahead for it, if the scan goes to a child).

        Each batch is posted as a :class:`ScanUpdate` to this panel, which groups it (one
        :class:`CauseIndex` per scan, fed as the batches come: no second walk) and lets it
        bubble on (the app marks the tree)."""
        self.gen += 1
        self.index = CauseIndex(engine)
        self.restart(palette, note)
        self._t0 = time.monotonic()
        self._scan(engine, self.gen, started)

    @work(thread=True, exclusive=True, group="scan", exit_on_error=False)
    def _scan(self, engine: Engine, gen: int, started: Started | None = None) -> None:
        """The scan in a child process (:mod:`.scanproc` says why, with the figures); in this
        thread for a small memory stack, when the stack cannot be handed over, or with
        ``OVLINSPECT_SCAN=thread`` (``=process``: a child whatever the size)."""
        worker = get_current_worker()
        child = None
        if wants_child(engine):
            try:
                child = ChildScan(engine, started)
            except (CannotMove, OSError):
                child = None  # a layer kind that does not move, no fork possible: the thread
        elif started is not None:
            started.stop()
        self.child_pid = child.pid if child is not None else None
        if child is None:
            self._scan_here(engine, gen, worker)
            return
        count = 0
        try:
            frames = child.frames(lambda: worker.is_cancelled)
            first = next(frames, None)
        except CannotMove:  # a field of the stack does not pickle: it was killed; the thread
            self.child_pid = None
            self._scan_here(engine, gen, worker)
            return
        if first is None:
            return  # cancelled before the first frame
        for kind, count, data in itertools.chain([first], frames):
            if kind == "batch":
                self.post_message(ScanUpdate(gen, [f for _, f in data], count,
                                             resolutions=[r for r, _ in data]))
            elif kind == "done":
                self.post_message(ScanUpdate(gen, [], count, done=True))
            else:
                self.post_message(ScanUpdate(gen, [], count, done=True, error=data))

    def _scan_here(self, engine: Engine, gen: int, worker) -> None:
        """The scan in this thread: check's lean walk over a clone with its own layers."""
        pacer = Pacer()
        clone = None
        count = 0
        batch: list[Finding] = []
        sources: list[Resolution | None] = []

        def progress(n: int) -> None:  # once per directory: the count shows without findings too
            nonlocal count, batch, sources
            count = n
            if pacer.due():
                self.post_message(ScanUpdate(gen, batch, count, resolutions=sources))
                batch, sources = [], []

        try:
            clone = EngineClone(engine)  # its layers opened again (out of descriptors: reported)
            # check's own lean walk (rules/scan.py): the same findings as `ovlinspect check`
            for res, f in check_findings(clone.engine, progress, lambda: worker.is_cancelled):
                batch.append(f)
                sources.append(res)
                if pacer.due():
                    self.post_message(ScanUpdate(gen, batch, count, resolutions=sources))
                    batch, sources = [], []
            if worker.is_cancelled:
                return
            self.post_message(ScanUpdate(gen, batch, count, done=True, resolutions=sources))
        except Exception as err:  # a layer vanished, a permission changed: report, don't crash
            self.post_message(ScanUpdate(gen, [], count, done=True,
                                         error=f"{type(err).__name__}: {err}"))
        finally:
            if clone is not None:
                clone.close()

    def on_scan_update(self, msg: ScanUpdate) -> None:
        if msg.gen != self.gen:
            msg.stop()  # a run replaced since: nobody shows it
            return
        self.add(msg.findings, msg.scanned, msg.resolutions)
        if msg.done:
            self.finish(msg.scanned, msg.error)

    def compose(self) -> ComposeResult:
        with Horizontal(id="problems-status-row"):
            yield Static(id="problems-status")
            yield ProgressBar(total=None, show_eta=False, show_percentage=False, id="scan-progress")
        yield ProblemTree(id="problem-tree")

    @property
    def tree(self) -> ProblemTree:
        return self.query_one(ProblemTree)

    def on_mount(self) -> None:
        self.update_status()

    def restart(self, palette: LayerPalette, note: str = "") -> None:
        self.palette = palette
        self.findings = []
        self.rows = {}
        self._first = {}
        self.opened = set()
        self.scanned = 0
        self.done = False
        self.elapsed = None
        self._counts = {"error": 0, "warning": 0, "info": 0}
        self._paths = set()
        self._shown_by_rank = {}
        self._unshown = 0
        self.more_causes = None
        self._order = []
        self.note = note
        self.tree.clear()
        self.query_one("#scan-progress", ProgressBar).display = True
        self.update_status()

    # ------------------------------------------------------------------ causes as they come
    def add(self, findings: list[Finding], scanned: int,
            resolutions: list[Resolution | CauseFacts | None] | None = None) -> None:
        self.scanned = scanned
        index = self.index
        if index is None:
            return
        touched: dict[int, Row] = {}
        for i, f in enumerate(findings):
            self.findings.append(f)
            self._paths.add(f.path)
            res = resolutions[i] if resolutions and i < len(resolutions) else None
            cause = index.add(f, res)
            row = self.rows.get(id(cause))
            if row is None:
                row = self.rows[id(cause)] = Row(cause)
                self._counts[Severity(cause.severity).value] += 1
                # meanwhile by severity, then as found (reach still grows): after the last
                # cause of its severity, before the first of a milder one; sorted at the end
                rank = Severity(cause.severity).rank
                if self._shown_by_rank.get(rank, 0) < SHOWN:
                    self._shown_by_rank[rank] = self._shown_by_rank.get(rank, 0) + 1
                    before = next((self._first[r] for r in range(rank + 1, 3) if r in self._first),
                                  self.more_causes)
                    self._make_row(row, before=before, expand=len(self.rows) == 1, keep=0)
                    self._first.setdefault(rank, row.node)
                else:
                    self._unshown += 1
            row.distinct.add(f.path)
            if row.node is None:
                continue
            if len(row.shown) < FEW and f.path not in row.shown:
                self._add_path(row, f.path)
            touched[id(cause)] = row
        # labels once per batch: each set_label repaints the visible lines
        for row in touched.values():
            self._update_more(row)
            assert row.node is not None
            row.node.set_label(self._cause_label(row.cause))
            if row.fix is not None:
                row.fix.set_label(self._fix_label(row.cause))  # one finding's own fix, or the cause's
        self._update_more_causes()
        self.update_status()

    def _add_path(self, row: Row, path: bytes) -> None:
        assert row.node is not None
        row.shown.append(path)
        label = self._path_label(path)
        if row.more is not None:
            row.node.add_leaf(label, ProblemRef(row, path), before=row.more)
        else:
            row.node.add_leaf(label, ProblemRef(row, path))

    def _update_more(self, row: Row) -> None:
        assert row.node is not None
        rest = len(row.distinct) - len(row.shown)
        if rest <= 0:
            if row.more is not None:
                row.more.remove()
                row.more = None
            return
        label = Text(f"… {intcomma(rest)} more (enter to show {intcomma(min(rest, PAGE))})",
                     style=themed(self, "italic $text-primary"))
        if row.more is None:
            row.more = row.node.add_leaf(label, ProblemRef(row, more=True))
        else:
            row.more.set_label(label)

    def _update_more_causes(self) -> None:
        """The row after the last cause shown: how many more there are."""
        n = self._unshown
        if n <= 0:
            if self.more_causes is not None:
                self.more_causes.remove()
                self.more_causes = None
            return
        word = "cause" if n == 1 else "causes"
        how = (f"enter to show {intcomma(min(n, PAGE))}" if self.done
               else "in order once the scan is done")
        label = Text(f"… {intcomma(n)} more {word} ({how})", style=themed(self, "italic $text-primary"))
        if self.more_causes is None:
            self.more_causes = self.tree.root.add_leaf(label, ProblemRef(None, more=True))
        else:
            self.more_causes.set_label(label)

    def show_more_causes(self) -> None:
        """Rows for the next :data:`PAGE` causes in order (once the scan is done)."""
        if not self.done or not self._unshown:
            return
        start = len(self._order) - self._unshown
        for row in self._order[start:start + PAGE]:
            self._make_row(row, before=self.more_causes)
            self._unshown -= 1
        self._update_more_causes()

    def _make_row(self, row: Row, before: TreeNode | None = None, expand: bool = False,
                  keep: int = FEW) -> None:
        """The cause's row, its fix and its first ``keep`` paths (sorted)."""
        cause = row.cause
        row.node = self.tree.root.add(self._cause_label(cause), ProblemRef(row), before=before,
                                      expand=expand)
        row.fix = row.node.add_leaf(self._fix_label(cause), ProblemRef(row, fix=True))
        row.shown, row.more = [], None
        for p in sorted(row.distinct)[:keep]:
            self._add_path(row, p)
        self._update_more(row)

    def show_more(self, row: Row | None) -> None:
        if row is None:
            self.show_more_causes()
            return
        shown = set(row.shown)
        added = 0
        for p in sorted(row.distinct):
            if added >= PAGE:
                break
            if p not in shown:
                self._add_path(row, p)
                added += 1
        self._update_more(row)

    def finish(self, scanned: int, error: str | None = None) -> None:
        """The scan is over: its time is the user's, up to the results all shown."""
        self.scanned = scanned
        self.done = True
        self.elapsed = time.monotonic() - self._t0
        if error:
            self.note = f"scan failed: {error}"
        self.query_one("#scan-progress", ProgressBar).display = False
        self._sort_rows()
        self.update_status()

    def _sort_rows(self) -> None:
        """The scan meets causes and paths in walk order: once it is done, the causes go in
        their final order (severity, then reach) and each lists its first paths sorted."""
        tree = self.tree
        at = tree.cursor_node.data if tree.cursor_node is not None else None
        at_key = ((id(at.cause), at.path, at.more, at.fix) if at is not None and at.row is not None
                  else None)
        expanded = {key for key, row in self.rows.items()
                    if row.node is not None and row.node.is_expanded and key in self.opened}
        first = True
        tree.clear()
        self.more_causes = None
        found = None
        self._order = self.ordered_rows()
        for n, row in enumerate(self._order):
            cause = row.cause
            key = id(cause)
            if n >= SHOWN:
                row.node = row.fix = row.more = None
                row.shown = []
                continue
            # as many paths as were listed (enter on "more")
            self._make_row(row, expand=first or key in expanded, keep=max(FEW, len(row.shown)))
            first = False
            if at_key is not None and at_key[0] == key:
                found = row.node
                for child in row.node.children:
                    d = child.data
                    if d is not None and (d.path, d.more, d.fix) == at_key[1:]:
                        found = child
        self._unshown = max(0, len(self._order) - SHOWN)
        self._update_more_causes()
        if found is not None:
            tree.call_after_refresh(tree.move_cursor, found)

    # ------------------------------------------------------------------ labels
    def _cause_label(self, c: Cause) -> Text:
        sev = Severity(c.severity).value
        t = Text()
        t.append(f"{SEVERITY_MARK[sev]} ", themed(self, SEVERITY_THEMED[sev]))
        t.append_text(self.palette.colorize(esc_str(self.headline(c), "bold", limit=400)))
        return t

    @staticmethod
    def headline(c: Cause) -> str:
        """The cause's headline, naming the layer and path at fault first: a cause of one
        path has its finding's own message as headline, which names them late (cut at 80
        columns); here the short summary goes first."""
        text = c.headline()
        if c.where and c.message != c.summary and text.startswith(c.message):
            text = c.summary + text[len(c.message):]
        return text

    def _fix_label(self, c: Cause) -> Text:
        t = Text("fix: ", style="bold")
        t.append_text(esc_str(c.fix, "italic", limit=400))
        return t

    def _path_label(self, path: bytes) -> Text:
        return esc(path, "", limit=160)

    # ------------------------------------------------------------------ what the app asks
    def causes(self) -> list[Cause]:
        """The causes found so far, the one to fix first first."""
        return self.index.causes() if self.index is not None else []

    def ordered_rows(self) -> list[Row]:
        """The rows in the order shown: by severity, then reach (the scan's order meanwhile)."""
        return sorted(self.rows.values(),
                      key=lambda r: (Severity(r.cause.severity).rank, -r.cause.reach, r.cause.rule,
                                     r.cause.where or ""))

    def counts(self) -> dict[str, int]:
        """Causes by severity."""
        return dict(self._counts)

    def update_status(self) -> None:
        c = self.counts()
        t = Text()
        for sev in ("error", "warning", "info"):
            n = c[sev]
            if not n and sev != "error":
                continue
            word = sev if sev == "info" else (sev if n == 1 else sev + "s")
            t.append(f"{SEVERITY_MARK[sev]} {intcomma(n)} {word}",
                     themed(self, SEVERITY_THEMED[sev]) if n else "dim")
            t.append("  ")
        if self.findings:
            paths = len(self._paths)
            t.append(f"({intcomma(paths)} {'path' if paths == 1 else 'paths'})  ", "dim")
        t.append("· ", "dim")
        if self.done:
            t.append(f"scanned {intcomma(self.scanned)} {'path' if self.scanned == 1 else 'paths'}", "dim")
            if self.elapsed is not None and self.elapsed >= 1:
                t.append(f" in {precisedelta(self.elapsed, format='%0.1f')}", "dim")
        else:
            t.append(f"scanning… {intcomma(self.scanned)} paths", themed(self, "$text-primary"))
        if self.note:
            t.append("  ")
            t.append_text(esc_str(self.note, themed(self, "$text-warning")))
        if self.done and not self.findings:
            t.append("  no problems found", themed(self, "bold $text-success"))
        self.set_class(self.done and not self.findings, "-quiet")
        self.query_one("#problems-status", Static).update(t)

    def first_error(self) -> Finding | None:
        """The first finding of the first cause (the path the cause's fix is about)."""
        rows = self.ordered_rows()
        if not rows or not rows[0].cause.findings:
            return None
        return min(rows[0].cause.findings, key=lambda f: f.path)

    def walk_order(self) -> list[Finding]:
        """What ``n`` walks: the first path of each cause first (so the one odd cause among many
        paths of another is a key or two away), then the rest of each cause's paths."""
        heads: list[Finding] = []
        rest: list[Finding] = []
        seen: set[bytes] = set()
        for cause in self.causes():
            head = True
            for f in sorted(cause.findings, key=lambda f: f.path):
                if f.path in seen:
                    continue
                seen.add(f.path)
                (heads if head else rest).append(f)
                head = False
        return heads + rest
