"""The command palette provider: every action, what-if values, problems and paths."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Callable

from rich.text import Text
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.markup import escape

from ..model.layers import split_path
from .render import esc, esc_str, plain
from .session import choice_values

if TYPE_CHECKING:
    from .app import OvlInspectApp


class OvlCommands(Provider):
    """ovlinspect's commands (Textual's own stay in the palette too)."""

    @property
    def oapp(self) -> "OvlInspectApp":
        return self.app  # type: ignore[return-value]

    def _commands(self) -> list[tuple[str, str, Callable[[], object]]]:
        app = self.oapp
        cmds: list[tuple[str, str, Callable[[], object]]] = [
            ("Toggle hidden entries", "show what the merged view hides (h)", app.action_toggle_hidden),
            ("Follow redirect", "highlight the column the selected path's redirect leads to (r)",
             app.action_follow_redirect),
            ("Go to the redirect target in the merged tree",
             "jump to the absolute redirect path of the selected entry", app.action_goto_redirect),
            ("Preview content", "first bytes of the metadata and data sources (p)", app.action_preview),
            ("Search paths", "substring search over the merged tree (/)", app.action_search),
            ("Next problem", "jump to the next finding (n)", app.action_next_problem),
            ("Previous problem", "jump to the previous finding (N)", app.action_prev_problem),
            ("What-if: choose options", "mount options dialog (w)", app.action_whatif),
            ("What-if: back to the real options", "(W)", app.action_reset_whatif),
            ("Rescan problems", "run the background scan again", app.action_rescan),
            ("Show keys", "help screen (?)", app.action_help),
        ]
        for key, values in choice_values(app.base).items():
            for v in values:
                what = f"on kernel {v}" if key == "kernel" else f"mounted with {key}={v}"
                cmds.append((f"What-if: {key}={v}", f"predict the stack {what}",
                             partial(app.set_whatif_option, key, v)))
        return cmds

    async def discover(self) -> Hits:
        for title, help_text, cb in self._commands():
            yield DiscoveryHit(title, cb, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        app = self.oapp
        if query.startswith("/"):
            path = split_path(query)
            # Textual parses str prompts and help as markup: user text goes in as Text
            prompt = Text("Go to ")
            prompt.append_text(esc_str(query))
            yield Hit(1.0, prompt, partial(app.goto_path, path), text=f"Go to {plain(query.encode())}",
                      help="jump to this merged path")
        for title, help_text, cb in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), cb, help=help_text)
        seen = 0
        for f in app.problem_list():
            text = f"Problem: {f.rule} {plain(f.path)}"
            score = matcher.match(text)
            if score > 0:
                prompt = Text(f"Problem: {f.rule} ")
                prompt.append_text(esc(f.path))
                yield Hit(score * 0.9, prompt, partial(app.goto_path, split_path(f.path)), text=text,
                          help=escape(esc_str(f.message[:200]).plain))
                seen += 1
                if seen >= 50:
                    break
