"""Fixtures for the interactive view's tests (helpers live in ui_helpers.py)."""

from __future__ import annotations

import types

import pytest
from textual.widgets import Input


@pytest.fixture(autouse=True)
def _no_cursor_blink(monkeypatch):
    # a blinking cursor makes screenshots depend on timing
    monkeypatch.setattr(Input, "_toggle_cursor", lambda self: None)


@pytest.fixture(autouse=True)
def _scan_time_not_in_snapshots(request, monkeypatch):
    """The status line says how long the scan took once that is a second or more (up to the
    results all shown): on a loaded machine a demo's can be, and a snapshot must not change."""
    if "snap_compare" in request.fixturenames:
        import ovlinspect.ui.problems as problems

        monkeypatch.setattr(problems, "time", types.SimpleNamespace(monotonic=lambda: 0.0))
