"""The probes ask the running kernel's option parser, mount nothing and log nothing."""

from __future__ import annotations

import os

import pytest

from ovlinspect.kernel.profile import profile_for, profile_for_release
from ovlinspect.live.probe import probe_options, probed_profile
from ovlinspect.live.mountapi import KernelLog, cannot_mount_overlay

needs_root = pytest.mark.skipif(os.geteuid() != 0 or cannot_mount_overlay() is not None,
                                reason="probing needs root and an overlay-capable kernel")


def _mountinfo() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


def _mounts(layers: bytes, key: bytes | None, value: bytes | None) -> bool:
    """Whether the kernel makes an overlay superblock of ``layers`` with this option (the real
    mount step, on a context that is then thrown away: nothing is attached)."""
    from ovlinspect.live import probe
    from ovlinspect.live.mountapi import FSCONFIG_CMD_CREATE, FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING

    fd = probe._fsopen(b"overlay")
    try:
        if probe._config(fd, FSCONFIG_SET_STRING, b"lowerdir", layers):
            return False
        if key is not None and probe._config(
                fd, FSCONFIG_SET_FLAG if value is None else FSCONFIG_SET_STRING, key, value):
            return False
        if key == b"lowerdir+" or b"::" in layers:
            probe._config(fd, FSCONFIG_SET_STRING, b"metacopy", b"on")
        return probe._config(fd, FSCONFIG_CMD_CREATE, None, None) == 0
    finally:
        os.close(fd)


@needs_root
def test_probes_answer_as_the_mount_does_and_leave_no_trace(tmp_path):
    """Each probe's answer is what a real mount with that option does (the probes only ask the
    parser); the probes themselves mount nothing and log nothing."""
    before = _mountinfo()
    with KernelLog() as log:
        found = probe_options()
        lines = [x for x in log.new_lines() if "overlay" in x]
    assert _mountinfo() == before
    assert lines == []
    # layers in a directory of ours (before 6.15 or so a detached mount cannot be a layer)
    for name in ("A", "C"):
        (tmp_path / name).mkdir()
    root = os.fsencode(tmp_path)
    two = root + b"/A:" + root + b"/C"
    # (which parser answers is judged by the parse-error messages in test_options)
    assert not _mounts(two, b"ovlinspect-probe", None)
    if not found["fs_context_parser"]:
        return
    for field, key, value in [("fsync_option", b"fsync", b"strict"),
                              ("override_creds_option", b"nooverride_creds", None),
                              ("uuid_null_auto", b"uuid", b"null"),
                              ("verity_option", b"verity", b"off")]:
        assert found[field] == _mounts(two, key, value), field
    assert found["data_only_layers"] == _mounts(root + b"/A::" + root + b"/C", None, None)


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
