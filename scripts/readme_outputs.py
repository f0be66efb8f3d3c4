#!/usr/bin/env python3
"""Refresh the command outputs shown in README.md.

Every fenced block that starts with a line ``$ ovlinspect ...`` is replaced by that command
and its real output (run in-process on the built-in demos, which need no root).

    python scripts/readme_outputs.py [--check]
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ovlinspect.cli import main  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"```\n\$ (ovlinspect [^\n]*)\n.*?```", re.S)


def run(command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(shlex.split(command)[1:])
    return out.getvalue().rstrip("\n")


def refresh(text: str) -> str:
    return BLOCK.sub(lambda m: f"```\n$ {m.group(1)}\n{run(m.group(1))}\n```", text)


if __name__ == "__main__":
    old = README.read_text()
    new = refresh(old)
    if "--check" in sys.argv:
        # the running kernel's release is part of the output: compare without it
        def norm(t: str) -> str:
            return re.sub(r"kernel [^;)\s]+(, [0-9.]+ rules)?", "kernel K", t)
        sys.exit(0 if norm(new) == norm(old) else 1)
    README.write_text(new)
