"""The search and what-if panels (bottom tabs, beside the problems)."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Checkbox, Input, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from ..rules.engine import Engine
from ..model.layers import Path, join_path, split_path
from ..rules.catalogue import Finding
from .messages import SearchUpdate, WhatIfUpdate
from .render import esc_str, path_text
from .style import themed
from .session import Change, EngineClone, Pacer, current_choices, diff_outcomes, ordered_walk, union_walk

MAX_RESULTS = 1000


class PathList(OptionList):
    """A list of merged paths: highlight shows one, enter jumps to it."""

    class Chosen(Message):
        def __init__(self, path: Path, jump: bool) -> None:
            super().__init__()
            self.path = path
            self.jump = jump

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.paths: list[Path] = []

    def reset(self) -> None:
        self.paths = []
        self.clear_options()

    def add_paths(self, rows: list[tuple[Path, Text]]) -> None:
        room = MAX_RESULTS - len(self.paths)
        rows = rows[:max(room, 0)]
        if not rows:
            return
        self.paths += [p for p, _ in rows]
        self.add_options([Option(t) for _, t in rows])

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        if 0 <= event.option_index < len(self.paths):
            self.post_message(self.Chosen(self.paths[event.option_index], jump=False))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if 0 <= event.option_index < len(self.paths):
            self.post_message(self.Chosen(self.paths[event.option_index], jump=True))


class SearchPanel(Vertical):
    """Path substring search; never blocks: each keystroke restarts a background search."""

    BINDINGS = [Binding("ctrl+t", "toggle_problems", "Problems only", show=True)]

    class Query(Message):
        def __init__(self, text: str, problems_only: bool) -> None:
            super().__init__()
            self.text = text
            self.problems_only = problems_only

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gen = 0
        #: path -> findings there, to name the rules beside a match (the app's live map)
        self.findings_at: dict[Path, list[Finding]] = {}

    # ------------------------------------------------------------------ the search
    def search(self, engine: Engine, text: str, problems_only: bool, findings: list[Finding],
               findings_at: dict[Path, list[Finding]]) -> None:
        """Start over: the paths of ``engine``'s merged tree that contain ``text`` (of the
        ``findings``' paths when ``problems_only``), in a thread."""
        self.gen += 1
        self.findings_at = findings_at
        self.query_one("#search-results", PathList).reset()
        if not text:
            self.workers.cancel_group(self, "search")
            self.set_status(Text("type to search the merged tree", style="dim"))
            return
        needle = text.encode("utf-8", "surrogateescape").lower()
        if problems_only:
            self._search_problems(needle, findings, self.gen)
        else:
            self._search_tree(engine, needle, self.gen)

    def stop(self) -> None:
        """Forget the running search (the engine it searches is gone)."""
        self.gen += 1
        self.workers.cancel_group(self, "search")

    @work(thread=True, exclusive=True, group="search", exit_on_error=False)
    def _search_tree(self, engine: Engine, needle: bytes, gen: int) -> None:
        worker = get_current_worker()
        clone = EngineClone(engine)
        try:
            found: list[Path] = []
            count = 0
            pacer = Pacer()
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

    def on_search_update(self, msg: SearchUpdate) -> None:
        msg.stop()
        if msg.gen != self.gen:
            return
        results = self.query_one("#search-results", PathList)
        rows = []
        for p in msg.paths:
            t = path_text(p, "bold")
            fs = self.findings_at.get(p)
            if fs:
                t.append("  " + ", ".join(sorted({f.rule for f in fs})), themed(self, "$text-error"))
            rows.append((p, t))
        results.add_paths(rows)
        status = Text()
        n = len(results.paths)
        status.append(f"{n}{'+' if n >= MAX_RESULTS else ''} match{'es' if n != 1 else ''}", "bold")
        status.append(f" in {msg.scanned:,} paths", "dim")
        status.append("" if msg.done else "  searching…", themed(self, "italic $text-primary"))
        self.set_status(status)

    def compose(self) -> ComposeResult:
        with Horizontal(id="search-row"):
            yield Input(placeholder="path substring (enter: first match; ctrl+t: problem paths only)",
                        id="search-input")
            yield Checkbox("problem paths only", id="search-problems")
        yield Static(id="search-status")
        yield PathList(id="search-results")

    def on_mount(self) -> None:
        self.query_one("#search-input", Input).cursor_blink = False
        self.set_status(Text("type to search the merged tree", style="dim"))

    def set_status(self, t: Text) -> None:
        self.query_one("#search-status", Static).update(t)

    def run_again(self) -> None:
        self._emit()

    def _emit(self) -> None:
        self.post_message(self.Query(self.query_one("#search-input", Input).value,
                                     self.query_one("#search-problems", Checkbox).value))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._emit()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        results = self.query_one(PathList)
        if results.paths:
            results.focus()
            results.highlighted = 0

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        event.stop()
        self._emit()

    def action_toggle_problems(self) -> None:
        box = self.query_one("#search-problems", Checkbox)
        box.value = not box.value


class WhatIfPanel(Vertical):
    """The resolutions that change under the what-if options."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gen = 0
        self.base: Engine | None = None
        self.engine: Engine | None = None
        #: every path found so far whose outcome changes
        self.changed: set[Path] = set()

    # ------------------------------------------------------------------ the comparison
    def compare(self, base: Engine, engine: Engine) -> None:
        """Start over: walk both engines' merged trees in a thread and list every path whose
        outcome differs.  ``engine`` is ``base`` (no what-if) or refused by the kernel: say so."""
        self.stop()
        self.base, self.engine = base, engine
        if engine is base:
            self.idle()
            return
        self.query_one(PathList).reset()
        if engine.mount_errno:
            t = Text()
            t.append(f"The kernel would refuse this mount: {engine.mount_errno}. ", themed(self, "bold $text-error"))
            t.append_text(esc_str("; ".join(engine.options.mount_log)))
            self.set_status(t)
            return
        self.set_status(Text("comparing every path with the real options…", style="italic"))
        self._compare(base, engine, self.gen)

    def stop(self) -> None:
        self.gen += 1
        self.changed = set()
        self.workers.cancel_group(self, "whatif")

    @work(thread=True, exclusive=True, group="whatif", exit_on_error=False)
    def _compare(self, base: Engine, engine: Engine, gen: int) -> None:
        worker = get_current_worker()
        a, b = EngineClone(base), EngineClone(engine)
        count = 0
        try:
            batch: list[Change] = []
            pacer = Pacer()
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

    def on_what_if_update(self, msg: WhatIfUpdate) -> None:
        if msg.gen != self.gen or self.base is None or self.engine is None:
            msg.stop()
            return
        self.add_changes(msg.changes)
        self.changed.update(c.path for c in msg.changes)
        n = len(self.changed)
        t = Text()
        t.append("what-if ", "bold")
        real = current_choices(self.base)
        changed = [f"{k}={v}" for k, v in current_choices(self.engine).items() if v != real[k]]
        t.append(", ".join(changed), themed(self, "bold $text-accent"))
        t.append(f": {n:,} path{'s' if n != 1 else ''} resolve differently", "bold")
        t.append(f"  (compared {msg.scanned:,} paths{'' if msg.done else ', comparing…'})", "dim")
        if msg.error:
            t.append(f"  comparison failed: {msg.error}", themed(self, "$text-error"))
        if msg.done and n == 0:
            t.append("  nothing changes", themed(self, "$text-success"))
        self.set_status(t)

    def compose(self) -> ComposeResult:
        yield Static(id="whatif-status")
        yield PathList(id="whatif-results")

    def on_mount(self) -> None:
        self.idle()

    def idle(self) -> None:
        self.query_one(PathList).reset()
        self.set_status(Text("No what-if: the real options are in effect. Press w to choose options, "
                             "or M R U V to flip metacopy, redirect_dir, userxattr, verity.", style="dim"))

    def set_status(self, t: Text) -> None:
        self.query_one("#whatif-status", Static).update(t)

    def add_changes(self, changes: list[Change]) -> None:
        rows = []
        for c in changes:
            t = Text()
            t.append_text(path_text(c.path, "bold", ))
            t.append("  ")
            t.append_text(esc_str(c.before, "dim"))
            t.append("  →  ", "bold #ff87ff")
            t.append_text(esc_str(c.after, "bold"))
            rows.append((c.path, t))
        self.query_one(PathList).add_paths(rows)
