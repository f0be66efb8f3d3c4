"""Write SVG screenshots of the interactive view's main states, from the demo stacks.

    python -m ovlinspect.ui.screenshots [--out screenshots] [--size 130x40]

Each state is reached the way a user reaches it (the same keys), headless, after every
background worker has finished, so the files only change when the screen does.  The kernel
version shown is fixed (``--kernel``) for the same reason.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass, field
from typing import Sequence

from ..rules.engine import Engine
from ..model.layers import Path
from ..sources.target import demo_stack
from .app import OvlInspectApp


@dataclass
class Shot:
    name: str
    demo: str
    what: str
    goto: Path | None = None
    keys: tuple[str, ...] = ()
    auto_jump: bool = True
    expand: list[Path] = field(default_factory=list)
    #: what-if options set as the palette sets them (a value R skips because it is refused)
    whatif: dict[str, str] = field(default_factory=dict)


SHOTS = [
    Shot("overview", "seed", "The seed stack opens on its error: A/foo's redirect is served by B, not C."),
    Shot("redirect", "seed", "r: the column the redirect leads to (B intercepts).", keys=("r",)),
    Shot("preview", "seed", "p: the bytes read() returns (B) beside those the redirect meant (C).", keys=("p",)),
    Shot("eio", "seed-eio", "A plain directory on the redirect path: stat fails with EIO."),
    Shot("composefs", "composefs", "A composefs-style stack: problems counted below each directory."),
    Shot("hidden", "whiteouts", "h: whiteouts, hidden copies and opaque directories.",
         goto=(b"etc", b"motd"), keys=("h",), auto_jump=False, expand=[(b"etc",), (b"cache",)]),
    Shot("data-only", "seed", "h: a data-only layer's own contents.", keys=("h", "end", "right", "down",
                                                                           "right", "down")),
    Shot("whatif", "seed", "M: the stack with metacopy=off, and the paths that change.", keys=("M",)),
    Shot("whatif-refused", "seed", "redirect_dir=nofollow (palette or w) conflicts with metacopy=on.",
         whatif={"redirect_dir": "nofollow"}),
    Shot("search", "composefs", "/: substring search over the merged tree.", keys=("slash", "o", "s"),
         auto_jump=False),
    Shot("help", "seed", "?: the keys.", keys=("question_mark",), auto_jump=False),
]


async def _settle(pilot) -> None:
    for _ in range(4):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


async def take(shot: Shot, out: str, size: tuple[int, int], kernel: str) -> str:
    app = OvlInspectApp(Engine(demo_stack(shot.demo), kernel=kernel), auto_jump=shot.auto_jump,
                        auto_jump_window=None)
    async with app.run_test(size=size) as pilot:
        await _settle(pilot)
        for p in shot.expand:
            app.goto_path(p)
            await _settle(pilot)
            await pilot.press("right")
            await _settle(pilot)
        if shot.goto is not None:
            app.goto_path(shot.goto)
            await _settle(pilot)
        for key, value in shot.whatif.items():
            app.set_whatif_option(key, value)
            await _settle(pilot)
        for key in shot.keys:
            await pilot.press(key)
            await _settle(pilot)
        return app.save_screenshot(f"{shot.name}.svg", out)


async def take_all(out: str, size: tuple[int, int], kernel: str, names: Sequence[str] = ()) -> list[str]:
    os.makedirs(out, exist_ok=True)
    done = []
    for shot in SHOTS:
        if names and shot.name not in names:
            continue
        done.append(await take(shot, out, size, kernel))
    return done


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ovlinspect.ui.screenshots", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="screenshots", help="directory to write the SVG files to")
    p.add_argument("--size", default="130x40", help="terminal size, COLUMNSxLINES")
    p.add_argument("--kernel", default="6.18.0", help="kernel version shown in the header")
    p.add_argument("names", nargs="*", help=f"only these ({', '.join(s.name for s in SHOTS)})")
    ns = p.parse_args(argv)
    cols, _, lines = ns.size.partition("x")
    files = asyncio.run(take_all(ns.out, (int(cols), int(lines)), ns.kernel, ns.names))
    for f in files:
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
