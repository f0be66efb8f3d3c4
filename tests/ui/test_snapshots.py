"""SVG snapshots of the main states, on the demo stacks (pytest --snapshot-update to accept)."""

from __future__ import annotations

from ui_helpers import demo_app, settle

from ovlinspect.ui.app import OvlInspectApp
from ui_stacks import engine, hostile_stack

SIZE = (130, 40)


def _keys(*keys: str):
    async def run_before(pilot) -> None:
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot)

    return run_before


def _goto(path: tuple[bytes, ...], *keys: str):
    async def run_before(pilot) -> None:
        await settle(pilot)
        pilot.app.goto_path(path)
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot)

    return run_before


class TestFirstScreen:
    def test_seed(self, snap_compare):
        """The seed stack opens on its error: B intercepts the data meant for C."""
        assert snap_compare(demo_app("seed"), terminal_size=SIZE, run_before=_keys())

    def test_seed_eio(self, snap_compare):
        """A plain directory on the redirect path turns lookup into EIO."""
        assert snap_compare(demo_app("seed-eio"), terminal_size=SIZE, run_before=_keys())

    def test_composefs(self, snap_compare):
        """A composefs-style stack: the first error opened, directories count problems below."""
        assert snap_compare(demo_app("composefs"), terminal_size=SIZE, run_before=_keys())

    def test_whiteouts(self, snap_compare):
        """Only warnings: the cursor stays on the root."""
        assert snap_compare(demo_app("whiteouts"), terminal_size=SIZE, run_before=_keys())


class TestStates:
    def test_hidden_entries(self, snap_compare):
        """h shows whiteouts and lower copies (here in /etc)."""
        assert snap_compare(demo_app("whiteouts"), terminal_size=SIZE,
                            run_before=_goto((b"etc",), "right", "h"))

    def test_data_only_layer_contents(self, snap_compare):
        """h adds the data-only layers' own contents to the tree."""
        assert snap_compare(demo_app("seed"), terminal_size=SIZE, run_before=_keys("h", "end", "right"))

    def test_follow_redirect(self, snap_compare):
        """r highlights the column the redirect leads to."""
        assert snap_compare(demo_app("seed"), terminal_size=SIZE, run_before=_keys("r"))

    def test_preview(self, snap_compare):
        """p shows the bytes of every file the lookup touches, side by side."""
        assert snap_compare(demo_app("seed"), terminal_size=SIZE, run_before=_keys("p"))

    def test_whatif_metacopy_off(self, snap_compare):
        """M: the stack under metacopy=off, and which paths change."""
        assert snap_compare(demo_app("seed"), terminal_size=SIZE, run_before=_keys("M"))

    def test_whatif_refused(self, snap_compare):
        """redirect_dir=nofollow (palette or w) conflicts with metacopy=on: the kernel refuses."""
        async def run_before(pilot) -> None:
            await settle(pilot)
            pilot.app.set_whatif_option("redirect_dir", "nofollow")
            await settle(pilot)

        assert snap_compare(demo_app("seed"), terminal_size=SIZE, run_before=run_before)

    def test_light_theme(self, snap_compare):
        """The light theme: every label readable (theme colours, none picked for dark only)."""
        async def run_before(pilot) -> None:
            pilot.app.theme = "textual-light"
            await settle(pilot)

        assert snap_compare(demo_app("seed"), terminal_size=SIZE, run_before=run_before)

    def test_whatif_kernel(self, snap_compare):
        """M then K to 6.12: without metacopy=on, 6.12 refuses the data-only layer at mount."""
        assert snap_compare(demo_app("seed"), terminal_size=SIZE, run_before=_keys("M", "K", "K", "K"))

    def test_search(self, snap_compare):
        """/ searches the merged tree."""
        assert snap_compare(demo_app("composefs", auto_jump=False), terminal_size=SIZE,
                            run_before=_keys("slash", "o", "s"))

    def test_help(self, snap_compare):
        assert snap_compare(demo_app("seed", auto_jump=False), terminal_size=SIZE,
                            run_before=_keys("question_mark"))

    def test_hostile_names(self, snap_compare):
        """Markup and escape sequences in names, labels and xattrs are shown literally."""
        app = OvlInspectApp(engine(hostile_stack()), auto_jump=False)
        assert snap_compare(app, terminal_size=SIZE, run_before=_goto((b"red",)))


class TestManyLayers:
    """7 and 25 layers at 80x24 and 200x50, on the shadowed file: the header names every layer,
    layers that play no part are stubs, the intercepting one is in view, open says WRONG bytes."""

    @staticmethod
    def _app(n: int) -> OvlInspectApp:
        from ui_stacks import many_layers_stack

        return OvlInspectApp(engine(many_layers_stack(n)), auto_jump=False)

    def test_7_layers_80x24(self, snap_compare):
        assert snap_compare(self._app(7), terminal_size=(80, 24), run_before=_goto((b"usr", b"bin", b"tool")))

    def test_7_layers_200x50(self, snap_compare):
        assert snap_compare(self._app(7), terminal_size=(200, 50), run_before=_goto((b"usr", b"bin", b"tool")))

    def test_25_layers_80x24(self, snap_compare):
        assert snap_compare(self._app(25), terminal_size=(80, 24), run_before=_goto((b"usr", b"lib", b"libx.so")))

    def test_25_layers_200x50(self, snap_compare):
        assert snap_compare(self._app(25), terminal_size=(200, 50), run_before=_goto((b"usr", b"bin", b"tool")))
