"""The search and what-if panels (bottom tabs, beside the problems)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Checkbox, Input, OptionList, Static
from textual.widgets.option_list import Option

from ..model.layers import Path
from .render import esc_str, path_text
from .session import Change

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
            t.append_text(esc_str(c.before, "#9e9e9e"))
            t.append("  →  ", "bold #ff87ff")
            t.append_text(esc_str(c.after, "bold"))
            rows.append((c.path, t))
        self.query_one(PathList).add_paths(rows)
