"""The messages of the interactive view, in one place (as toolong and harlequin do).

Workers run in threads inside the panel that shows their results (:class:`.problems.ProblemsPanel`,
:class:`.panels.SearchPanel`, :class:`.panels.WhatIfPanel`) and post these to it; the panel
takes what it shows and lets the message bubble on to the app, which marks the tree.  ``gen``
ties a message to the run that sent it: a panel drops (and stops) messages of a run it has
since replaced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.message import Message

from ..kernel.entry import Resolution
from ..model.layers import Path
from ..report.causes import CauseFacts
from ..rules.catalogue import Finding
from .session import Change


@dataclass
class ScanUpdate(Message):
    """A batch of findings from the problems scan (``done``: the last one)."""

    gen: int
    findings: list[Finding]
    scanned: int
    done: bool = False
    error: str | None = None
    #: the resolution each finding came from (None for the stack's own findings), in step with
    #: ``findings``: the panel groups findings by cause with it (from the scan's child process,
    #: only what it groups by: :class:`~ovlinspect.report.causes.CauseFacts`)
    resolutions: list[Resolution | CauseFacts | None] = field(default_factory=list)


@dataclass
class SearchUpdate(Message):
    """A batch of paths matching the search."""

    gen: int
    paths: list[Path]
    scanned: int
    done: bool = False


@dataclass
class WhatIfUpdate(Message):
    """A batch of paths whose outcome changes under the what-if options."""

    gen: int
    changes: list[Change] = field(default_factory=list)
    scanned: int = 0
    done: bool = False
    error: str | None = None


__all__ = ["ScanUpdate", "SearchUpdate", "WhatIfUpdate"]
