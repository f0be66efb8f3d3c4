"""7 and 25 layers, at 80x24 and 200x50: the failing step and its cause first, the layers that
matter in full and in view, every layer in the header, colours that do not repeat."""

from __future__ import annotations

import pytest
from ui_helpers import screen_text, settle

from ovlinspect.ui.app import OvlInspectApp
from ovlinspect.ui.details import STUB, Explanation, LayerColumn, LayerColumns
from ovlinspect.ui.palette import LayerPalette
from ui_stacks import engine, many_layers_stack

EIO = (b"usr", b"lib", b"libx.so")
SHADOWED = (b"usr", b"bin", b"tool")


def _app(n: int) -> OvlInspectApp:
    return OvlInspectApp(engine(many_layers_stack(n)), auto_jump=False)


async def _at(pilot, path):
    await settle(pilot)
    pilot.app.goto_path(path)
    await settle(pilot)


def _explanation_lines(app) -> list[str]:
    return app.query_one(Explanation).query_one("#explain-text").render().plain.splitlines()


@pytest.mark.parametrize("n", [7, 25])
async def test_at_80x24_the_failing_step_and_its_cause_come_first(n):
    app = _app(n)
    async with app.run_test(size=(80, 24)) as pilot:
        await _at(pilot, EIO)
        lines = _explanation_lines(app)
        assert lines[1].startswith("lstat  ✖ EIO")
        assert lines[2].startswith("✖ lowerdata-redirect-broken")
        await _at(pilot, SHADOWED)
        lines = _explanation_lines(app)
        # open succeeds with the wrong bytes: no green tick, and said before lstat's details end
        opened = next(line for line in lines if line.startswith("open"))
        assert "✔" not in opened and "WRONG" in opened and "base3" in opened
        assert any(line.startswith("✖ shadowed-lowerdata") for line in lines[:4])


@pytest.mark.parametrize("n,size", [(7, (80, 24)), (7, (200, 50)), (25, (80, 24)), (25, (200, 50))])
async def test_the_layers_that_matter_are_wide_and_in_view(n, size):
    app = _app(n)
    async with app.run_test(size=size) as pilot:
        await _at(pilot, SHADOWED)
        await pilot.pause()
        cols = {c.k: c for c in app.query(LayerColumn)}
        columns = app.query_one(LayerColumns)
        roles = columns.roles
        assert roles[1] == "metadata" and roles[4] == "intercepting" and roles[n] == "redirect target"
        idle = [k for k, r in roles.items() if r.idle]
        assert len(idle) >= n - 4
        others = app.query_one("#layer-others")
        if others.display:  # the stubs would not fit: one line each in the last column
            assert all(not cols[k].display for k in idle)
            listed = others.render().plain
            assert all(f"base{k - 1}" in listed for k in idle if k < n)
        else:
            assert all(cols[k].outer_size.width == STUB for k in idle)
        assert all(cols[k].outer_size.width > STUB for k in (1, 4, n))
        # the intercepting column (the one that fails) is in view; at 200 columns all three are
        region = columns.scrollable_content_region
        for k in (1, 4, n) if size[0] >= 200 else (4,):
            col = cols[k].region
            assert region.x <= col.x and col.right <= region.right, (k, region, col)


@pytest.mark.parametrize("n,size", [(7, (80, 24)), (25, (80, 24)), (25, (200, 50))])
async def test_the_header_names_every_layer(n, size):
    app = _app(n)
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        header = "\n".join(screen_text(app).splitlines()[:6])
        for k in range(n - 1):  # lowers by their json index, the data-only layer as D0
            assert f" {k} " in header or f" {k}" in header, (k, header)
        assert f"D{n - 1}" in header or f"data {n - 1}" in header


def test_colours_are_distinct_for_25_layers():
    pal = LayerPalette(engine(many_layers_stack(25)))
    colours = [pal.color(k) for k in range(1, 26)]
    assert len(set(colours)) == 25
