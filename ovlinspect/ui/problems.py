"""The problems panel: every finding of the stack, grouped by severity and rule.

Findings arrive in batches from the background scan; groups appear as their first finding does,
errors first.  A group shows at most ``PAGE`` findings at a time and a "more" entry (the search
panel's *problem paths only* filter finds any of them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import ProgressBar, Static, Tree
from textual.widgets.tree import TreeNode
from textual.worker import get_current_worker

from ..rules.engine import Engine
from ..rules.catalogue import RULES, Finding
from .messages import ScanUpdate
from .merged_tree import SEVERITY_MARK, SEVERITY_RANK, severity_of
from .palette import LayerPalette
from .render import esc, esc_str
from .session import EngineClone, Pacer
from .style import themed

#: severity colours from the theme (readable on light themes too)
SEVERITY_THEMED = {"error": "bold $text-error", "warning": "bold $text-warning", "info": "$text-primary"}

PAGE = 200


@dataclass(eq=False)
class Group:
    severity: str
    rule: str
    findings: list[Finding] = field(default_factory=list)
    shown: int = 0
    node: TreeNode | None = None
    more: TreeNode | None = None


@dataclass(eq=False)
class ProblemRef:
    """Tree data: a group header, a finding, or a "more" entry of a group."""

    group: Group
    finding: Finding | None = None
    more: bool = False


class ProblemTree(Tree[ProblemRef]):
    """Findings grouped by rule; highlight shows one, enter jumps to its path."""

    class Chosen(Message):
        """A finding was highlighted (``jump`` False) or selected (``jump`` True)."""

        def __init__(self, finding: Finding, jump: bool) -> None:
            super().__init__()
            self.finding = finding
            self.jump = jump

    def __init__(self, **kwargs) -> None:
        super().__init__("problems", **kwargs)
        self.show_root = False
        self.guide_depth = 2
        self.auto_expand = False

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted[ProblemRef]) -> None:
        event.stop()
        d = event.node.data
        if d is not None and d.finding is not None:
            self.post_message(self.Chosen(d.finding, jump=False))

    def on_tree_node_selected(self, event: Tree.NodeSelected[ProblemRef]) -> None:
        event.stop()
        d = event.node.data
        if d is None:
            return
        if d.finding is not None:
            self.post_message(self.Chosen(d.finding, jump=True))
        elif d.more:
            panel = self.parent
            while panel is not None and not isinstance(panel, ProblemsPanel):
                panel = panel.parent
            if panel is not None:
                panel.show_more(d.group)
        else:
            event.node.toggle()


class ProblemsPanel(Vertical):
    """Status line, progress bar and the grouped findings."""

    def __init__(self, palette: LayerPalette, **kwargs) -> None:
        super().__init__(**kwargs)
        self.palette = palette
        self.findings: list[Finding] = []
        self.groups: dict[tuple[str, str], Group] = {}
        self.scanned = 0
        self.done = False
        self.elapsed: float | None = None
        self.note = ""
        #: the current scan: messages of an earlier one are dropped
        self.gen = 0

    # ------------------------------------------------------------------ the scan
    def scan(self, engine: Engine, palette: LayerPalette, note: str = "") -> None:
        """Start over: scan every path of ``engine`` in a thread, showing findings as they come.

        Each batch is posted as a :class:`ScanUpdate` to this panel, which shows it and lets it
        bubble on (the app marks the tree)."""
        self.gen += 1
        self.restart(palette, note)
        self._scan(engine, self.gen)

    @work(thread=True, exclusive=True, group="scan", exit_on_error=False)
    def _scan(self, engine: Engine, gen: int) -> None:
        worker = get_current_worker()
        pacer = Pacer()
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

    def on_scan_update(self, msg: ScanUpdate) -> None:
        if msg.gen != self.gen:
            msg.stop()  # a run replaced since: nobody shows it
            return
        self.add(msg.findings, msg.scanned)
        if msg.done:
            self.finish(msg.scanned, msg.elapsed, msg.error)

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
        self.groups = {}
        self.scanned = 0
        self.done = False
        self.elapsed = None
        self.note = note
        self.tree.clear()
        self.query_one("#scan-progress", ProgressBar).display = True
        self.update_status()

    def add(self, findings: list[Finding], scanned: int) -> None:
        self.scanned = scanned
        tree = self.tree
        touched: set[tuple[str, str]] = set()
        for f in findings:
            self.findings.append(f)
            sev = severity_of(f)
            key = (sev, f.rule)
            g = self.groups.get(key)
            if g is None:
                g = self.groups[key] = Group(sev, f.rule)
                order = self.ordered_groups()
                idx = order.index(g)
                before = order[idx + 1].node if idx + 1 < len(order) else None
                g.node = tree.root.add(Text(), ProblemRef(g), before=before, expand=True)
            g.findings.append(f)
            touched.add(key)
            if g.shown < PAGE:
                self._add_finding(g, f)
        # labels once per batch: each set_label repaints the visible lines
        for key in touched:
            g = self.groups[key]
            if len(g.findings) > g.shown:
                self._update_more(g)
            assert g.node is not None
            g.node.set_label(self._group_label(g))
        self.update_status()

    def _add_finding(self, g: Group, f: Finding) -> None:
        assert g.node is not None
        g.shown += 1
        if g.more is not None:
            g.node.add_leaf(self._finding_label(f), ProblemRef(g, f), before=g.more)
        else:
            g.node.add_leaf(self._finding_label(f), ProblemRef(g, f))

    def _update_more(self, g: Group) -> None:
        assert g.node is not None
        rest = len(g.findings) - g.shown
        label = Text(f"… {rest} more (enter to show {min(rest, PAGE)})", style=themed(self, "italic $text-primary"))
        if g.more is None:
            g.more = g.node.add_leaf(label, ProblemRef(g, more=True))
        else:
            g.more.set_label(label)

    def show_more(self, g: Group) -> None:
        for f in g.findings[g.shown : g.shown + PAGE]:
            self._add_finding(g, f)
        if g.shown >= len(g.findings) and g.more is not None:
            g.more.remove()
            g.more = None
        elif g.more is not None:
            self._update_more(g)

    def finish(self, scanned: int, elapsed: float, error: str | None = None) -> None:
        self.scanned = scanned
        self.done = True
        self.elapsed = elapsed
        if error:
            self.note = f"scan failed: {error}"
        self.query_one("#scan-progress", ProgressBar).display = False
        self._sort_groups()
        self.update_status()

    def _sort_groups(self) -> None:
        """The scan finds problems in walk order: show each group sorted by path once it is done."""
        tree = self.tree
        cursor = tree.cursor_node.data if tree.cursor_node is not None else None
        for g in self.groups.values():
            g.findings.sort(key=lambda f: f.path)
            assert g.node is not None
            g.node.remove_children()
            g.shown = 0
            g.more = None
            for f in g.findings[:PAGE]:
                self._add_finding(g, f)
            if len(g.findings) > PAGE:
                self._update_more(g)
        if cursor is not None and cursor.finding is not None:
            for g in self.groups.values():
                assert g.node is not None
                for child in g.node.children:
                    if child.data is not None and child.data.finding is cursor.finding:
                        tree.call_after_refresh(tree.move_cursor, child)

    def _group_label(self, g: Group) -> Text:
        t = Text()
        t.append(f"{SEVERITY_MARK[g.severity]} {g.severity:<7} ", themed(self, SEVERITY_THEMED[g.severity]))
        t.append(g.rule, "bold")
        t.append(f"  ×{len(g.findings)}  ", "bold")
        rule = RULES.get(g.rule)
        if rule is not None:
            t.append(rule.title, "dim")
        return t

    def _finding_label(self, f: Finding) -> Text:
        t = Text()
        t.append_text(esc(f.path, "bold", limit=120))
        t.append("  ")
        msg = esc_str(f.message, "", limit=300)
        t.append_text(self.palette.colorize(msg))
        return t

    def counts(self) -> dict[str, int]:
        out = {"error": 0, "warning": 0, "info": 0}
        for (sev, _), g in self.groups.items():
            out[sev] += len(g.findings)
        return out

    def update_status(self) -> None:
        c = self.counts()
        t = Text()
        for sev, one, many in (("error", "error", "errors"), ("warning", "warning", "warnings"),
                               ("info", "info", "info")):
            n = c[sev]
            t.append(f"{SEVERITY_MARK[sev]} {n} {one if n == 1 else many}",
                     themed(self, SEVERITY_THEMED[sev]) if n else "dim")
            t.append("  ")
        t.append("· ", "dim")
        if self.done:
            t.append(f"scanned {self.scanned:,} paths", "dim")
            if self.elapsed is not None and self.elapsed >= 1:
                t.append(f" in {self.elapsed:.1f} s", "dim")
        else:
            t.append(f"scanning… {self.scanned:,} paths", themed(self, "$text-primary"))
        if self.note:
            t.append("  ")
            t.append_text(esc_str(self.note, themed(self, "$text-warning")))
        if self.done and not self.findings:
            t.append("  no problems found", themed(self, "bold $text-success"))
        self.query_one("#problems-status", Static).update(t)

    def ordered_groups(self) -> list[Group]:
        """The groups as the panel shows them: errors first, then by rule name."""
        return [self.groups[k] for k in sorted(self.groups, key=lambda k: (SEVERITY_RANK[k[0]], k[1]))]

    def first_error(self) -> Finding | None:
        for g in self.ordered_groups():
            if g.findings:
                return g.findings[0]
        return None
