"""Origin, index and impure state in the layer columns (issue 10): the same words as the CLI's
``explain`` layers table, on a stack with stale origin state (report/state.py)."""

from __future__ import annotations

import contextlib
import io

import pytest
from rich.text import Text
from stale_state import OPTIONS, stale_stack
from ui_helpers import KERNEL, settle

from ovlinspect.cli import main
from ovlinspect.rules.engine import Engine
from ovlinspect.sources.target import stack_from_args
from ovlinspect.ui.app import OvlInspectApp
from ovlinspect.ui.details import LayerColumn, Selection

SIZE = (130, 40)


@pytest.fixture
def stale():
    with stale_stack() as dirs:
        yield dirs


def _app(dirs) -> OvlInspectApp:
    u, l, w = dirs
    return OvlInspectApp(Engine(stack_from_args(l, u, w, OPTIONS), kernel=KERNEL), auto_jump=False,
                         auto_jump_window=None)


def _cli_states(dirs, path: str) -> list[str]:
    """The '→' lines under the layers of ``explain``'s layers table."""
    u, l, w = dirs
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["explain", "--color", "never", "--kernel", KERNEL.rsplit(".", 1)[0], "--lowerdir", l,
                   "--upperdir", u, "--workdir", w, "-o", OPTIONS, path])
    assert rc in (0, 1), out.getvalue()
    text = out.getvalue()
    table = text[text.index("\n  layers\n"):text.index("\n  why\n")]
    return [ln.split("→ ", 1)[1] for ln in table.splitlines() if "→ " in ln]


def _column_states(app, k: int) -> list[str]:
    col = next(c for c in app.query(LayerColumn) if c.k == k)
    plain = col.render().plain if hasattr(col.render(), "plain") else Text.from_markup(str(col.render())).plain
    return [ln.split("→ ", 1)[1] for ln in plain.splitlines() if ln.startswith("→ ")]


@pytest.mark.parametrize("path, words", [
    ("/usr/lib", ["origin: points to a filesystem that is not in this stack (uuid 5eed0000-1111-2222-3333-444455556666)",
                  "index: no work/index directory"]),
    ("/usr", ["impure: marked, and needed ('lib'"]),
    ("/etc", ["impure: marked, but no entry is copied up or redirected any more"]),
])
async def test_columns_and_cli_say_the_same_state(stale, path, words):
    cli = _cli_states(stale, path)
    for w in words:
        assert any(line.startswith(w) for line in cli), (w, cli)
    app = _app(stale)
    async with app.run_test(size=(200, 50)) as pilot:
        await settle(pilot)
        app.select(Selection(tuple(p.encode() for p in path.strip("/").split("/"))))
        await settle(pilot)
        assert _column_states(app, 0) == cli
        assert _column_states(app, 1) == []  # the lower has no origin/impure state


def test_snapshot_stale_origin(stale, snap_compare):
    """/usr/lib: an origin on a filesystem not in the stack; nfs_export then does not merge it."""

    async def run_before(pilot) -> None:
        await settle(pilot)
        pilot.app.goto_path((b"usr", b"lib"))
        await settle(pilot)

    assert snap_compare(_app(stale), terminal_size=SIZE, run_before=run_before)
