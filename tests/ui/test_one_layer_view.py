"""The CLI's ``explain`` and the view's layer columns name the same role for every layer, on
every path of every demo (one per-layer view, :mod:`ovlinspect.report.view`)."""

from __future__ import annotations

import pytest
from rich.text import Text
from ui_helpers import KERNEL, demo_app, settle

from ovlinspect.cli import main
from ovlinspect.kernel.entry import show_path
from ovlinspect.rules.engine import Engine
from ovlinspect.report.view import Role
from ovlinspect.sources.target import demo_names, demo_stack
from ovlinspect.ui.details import LayerColumn, Selection
from ovlinspect.ui.session import ordered_walk

ROLES = sorted((r.value for r in Role), key=len, reverse=True)


def demo_paths(name: str) -> list[tuple[bytes, ...]]:
    """Every listed path, the paths the findings name (failing ones too), and one absent name."""
    e = Engine(demo_stack(name), kernel=KERNEL)
    paths = {()} | {r.path for r in ordered_walk(e)}
    paths |= {tuple(p for p in f.path.split(b"/") if p) for f in e.check()}
    paths.add((b"no-such-name",))
    return sorted(paths)


def cli_roles(capsys, name: str, path: tuple[bytes, ...]) -> list[str]:
    """The role column of ``explain``'s ``layers`` table, top layer first."""
    rc = main(["explain", "--kernel", KERNEL.rsplit(".", 1)[0], f"demo:{name}", show_path(path)])
    out = capsys.readouterr().out
    assert rc in (0, 1), out
    lines = out.splitlines()
    start = lines.index("  layers") + 1
    end = lines.index("  why")
    roles = []
    for line in lines[start:end]:
        if line.startswith("      "):  # an xattr under the layer's row
            continue
        role = next((r for r in ROLES if line.endswith("  " + r)), None)
        assert role is not None, line
        roles.append(role)
    return roles


@pytest.mark.parametrize("name", [n for n in demo_names() if not Engine(demo_stack(n), kernel=KERNEL).mount_errno])
async def test_cli_and_view_name_the_same_roles(capsys, name):
    paths = demo_paths(name)
    expected = {p: cli_roles(capsys, name, p) for p in paths}
    app = demo_app(name, auto_jump=False)
    async with app.run_test(size=(200, 50)) as pilot:
        await settle(pilot)
        for p in paths:
            app.select(Selection(p))
            cols = sorted(app.query(LayerColumn), key=lambda c: c.k)
            shown = [Text.from_markup(str(c.border_subtitle)).plain for c in cols]
            assert shown == expected[p], (name, show_path(p))


def test_seed_foo_names_the_data_only_copy_the_redirect_target(capsys):
    """The case that disagreed: B intercepts, and C's copy is what the redirect meant."""
    assert cli_roles(capsys, "seed", (b"foo",)) == ["metadata", "intercepting", "redirect target"]
