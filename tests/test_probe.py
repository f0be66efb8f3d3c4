"""The probes ask the running kernel's option parser, mount nothing and log nothing."""

from __future__ import annotations

import os

import pytest

from ovlinspect.kernel.profile import profile_for, profile_for_release
from ovlinspect.live.probe import probe_options, probed_profile
from ovlinspect.mountapi import KernelLog, cannot_mount_overlay

needs_root = pytest.mark.skipif(os.geteuid() != 0 or cannot_mount_overlay() is not None,
                                reason="probing needs root and an overlay-capable kernel")


def _mountinfo() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


@needs_root
def test_probes_agree_with_the_release_and_leave_no_trace():
    running = profile_for_release(os.uname().release)
    before = _mountinfo()
    with KernelLog() as log:
        found = probe_options()
        lines = [x for x in log.new_lines() if "overlay" in x]
    assert _mountinfo() == before
    assert lines == []
    # on a stock kernel the probes confirm what the release says
    if found["fs_context_parser"]:
        assert found == {k: getattr(running, k) for k in found}


@needs_root
def test_a_backport_is_found_and_named():
    """A 6.12 profile on a kernel that has 6.15's override_creds and 6.18's fsync= (as this
    machine does, and as Debian's 6.12.118 has fsync=) is corrected, and says how."""
    running = profile_for_release(os.uname().release)
    if not (running.fsync_option and running.override_creds_option):
        pytest.skip("the running kernel lacks fsync= or override_creds")
    p = probed_profile(profile_for((6, 12)))
    assert p.fsync_option and p.override_creds_option and p.name == "6.12"
    assert p.chosen_by == "release + probe: fsync_option=yes, override_creds_option=yes"
    assert "probe: fsync_option=yes" in p.summary("6.12.118")


def test_without_root_the_release_is_kept(monkeypatch):
    import ovlinspect.live.probe as probe

    def refuse():
        raise PermissionError(1, "fsopen overlay")

    monkeypatch.setattr(probe, "probe_options", refuse)
    p = probed_profile(profile_for((6, 12)))
    assert p == profile_for((6, 12), chosen_by="release (not probed: Operation not permitted)")
