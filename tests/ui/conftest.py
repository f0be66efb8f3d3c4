"""Fixtures for the interactive view's tests (helpers live in ui_helpers.py)."""

from __future__ import annotations

import pytest
from textual.widgets import Input


@pytest.fixture(autouse=True)
def _no_cursor_blink(monkeypatch):
    # a blinking cursor makes screenshots depend on timing
    monkeypatch.setattr(Input, "_toggle_cursor", lambda self: None)
