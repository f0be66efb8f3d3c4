"""Kernel profiles: which behaviours each release has, and what the engine then predicts.

The expected values are what Debian's kernels did in the kernel VMs (``../shared/tools/
kernel-vm``: 6.1.0-57, 6.12.118, 7.2.13) and what this machine's 6.18 does; the kernel-agreement
tests re-check them when they run inside those kernels.
"""

from __future__ import annotations

import pytest

from ovlinspect.rules.engine import Engine
from ovlinspect.kernel.profile import (
    CHANGES,
    KernelProfile,
    UnknownKernel,
    parse_version,
    profile_for,
    profile_for_release,
)
from ovlinspect.kernel.params import OptionError, effective_options, shown_options, split_lowerdir
from ovlinspect.sources.target import demo_stack


@pytest.mark.parametrize(("release", "version"), [
    ("6.12.118+deb12-cloud-amd64", (6, 12)),
    ("7.0.3-200.fc44.x86_64", (7, 0)),
    ("6.19.0-rc7", (6, 19)),
    ("5.14.0-503.el9.x86_64", (5, 14)),
    ("6.1", (6, 1)),
])
def test_parse_version(release, version):
    assert parse_version(release) == version


def test_unknown_versions_are_refused_not_guessed():
    with pytest.raises(UnknownKernel, match="older than 6.1"):
        profile_for_release("5.15.0-105-generic")
    with pytest.raises(UnknownKernel, match="not a kernel version"):
        parse_version("latest")


def test_every_change_names_a_field_and_a_commit_in_order():
    fields = set(KernelProfile.__dataclass_fields__)
    assert all(c.field in fields and c.commit for c in CHANGES)
    assert [c.since for c in CHANGES] == sorted(c.since for c in CHANGES)


@pytest.mark.parametrize(("version", "data_only", "needs_metacopy", "consistent"), [
    ((6, 1), False, False, False),
    ((6, 5), True, True, False),
    ((6, 12), True, True, False),
    ((6, 15), True, True, False),
    ((6, 16), True, False, True),
    ((7, 2), True, False, True),
])
def test_data_only_layers_by_version(version, data_only, needs_metacopy, consistent):
    p = profile_for(version)
    assert (p.data_only_layers, p.data_only_needs_metacopy, p.consistent_follow_checks) == (
        data_only, needs_metacopy, consistent)


def _seed(version, options=""):
    stack = demo_stack("seed")
    stack.options = options
    return Engine(stack, profile=profile_for(version, chosen_by="--kernel"))


def test_seed_without_metacopy_by_kernel():
    """lowerdir=A:B::C, metacopy off: 6.1 has no data-only layers ("::" is an empty layer);
    6.12 refuses data-only layers without metacopy; 6.16+ mounts and refuses the metacopy at
    lookup (the kernel-vm README's table)."""
    e61 = _seed((6, 1), "metacopy=off")
    assert e61.mount_errno == "EINVAL" and e61.options.mount_log[-1] == "overlayfs: empty lowerdir"
    e612 = _seed((6, 12), "metacopy=off")
    assert e612.mount_errno == "EINVAL"
    assert e612.options.mount_log[-1] == "overlayfs: lower data-only dirs require metacopy support."
    e618 = _seed((6, 18), "metacopy=off")
    assert e618.mount_errno is None
    res = e618.explain("/foo")
    assert res.errno == "EPERM"
    assert res.kernel_log == ["overlayfs: refusing to follow metacopy origin for (/foo)"]


def test_seed_with_metacopy_shadows_on_every_kernel_with_data_layers():
    for version in ((6, 12), (6, 18), (7, 2)):
        res = _seed(version, "metacopy=on").explain("/foo")
        assert res.errno is None and res.data is not None and res.data.layer == 2  # B intercepts


def test_old_parser_messages():
    """6.1 parses options with match_token and says so in one message for every refusal
    (observed in the 6.1 VM); an option of a later kernel is a mount refusal, not bad input."""
    p61 = profile_for((6, 1))
    for typed in ("bogus", "metacopy=yes"):
        with pytest.raises(OptionError) as info:
            effective_options(typed, has_upper=False, n_lower=2, n_data=0, profile=p61)
        assert info.value.kernel_log == f'overlayfs: unrecognized mount option "{typed}" or missing value'
    for typed in ("fsync=strict", "uuid=null", "verity=on", "nooverride_creds"):
        o = effective_options(typed, has_upper=False, n_lower=2, n_data=0, profile=p61)
        assert o.mount_errno == "EINVAL"
        assert o.mount_log == (f'overlayfs: unrecognized mount option "{typed}" or missing value',)
    with pytest.raises(OptionError) as info:
        effective_options("bogus", has_upper=False, n_lower=2, n_data=0, profile=profile_for((6, 12)))
    assert info.value.kernel_log == "overlay: Unknown parameter 'bogus'"
    o = effective_options("nooverride_creds", has_upper=False, n_lower=2, n_data=0,
                          profile=profile_for((6, 12)))
    assert o.mount_errno == "EINVAL" and o.mount_log == ("overlay: Unknown parameter 'nooverride_creds'",)


def test_61_uuid_and_redirect_display():
    """Observed on 6.1: uuid=off on a lower-only mount falls back to uuid=on and nothing is
    shown; redirect_dir is shown as typed unless it is the default string "off"."""
    p61 = profile_for((6, 1))

    def mount(opts, upper=False):
        o = effective_options(opts, has_upper=upper, n_lower=2, n_data=0, profile=p61)
        return o, ",".join(k if v is None else f"{k}={v}" for k, v in shown_options(o, profile=p61))

    o, shown = mount("uuid=off")
    assert shown == "" and o.mount_log == (
        "overlayfs: The uuid=off requires a single fs for lower and upper, falling back to uuid=on.",)
    assert mount("redirect_dir=follow")[1] == "redirect_dir=follow"
    assert mount("redirect_dir=off")[1] == ""
    assert mount("redirect_dir=nofollow")[1] == "redirect_dir=nofollow"
    assert mount("")[1] == ""
    assert mount("volatile", upper=True)[1] == "volatile"
    assert mount("uuid=off", upper=True)[1] == "uuid=off"


def test_61_lowerdir_has_no_data_separator():
    p61 = profile_for((6, 1))
    with pytest.raises(OptionError) as info:
        split_lowerdir("A:B::C", p61)
    assert info.value.kernel_log == "overlayfs: empty lowerdir"
    assert split_lowerdir("A:B", p61) == (["A", "B"], [])


def test_summary_names_the_rules_and_how_they_were_chosen():
    p = profile_for_release("6.12.118+deb12-cloud-amd64")
    assert p.summary("6.12.118+deb12-cloud-amd64") == "kernel 6.12.118+deb12-cloud-amd64, 6.12 rules"
    asked = profile_for((6, 1), chosen_by="--kernel")
    assert asked.summary("6.18.44") == "kernel 6.1 rules (--kernel; running 6.18.44)"


def test_72_keeps_uuid_off_on_a_lower_only_mount():
    """Observed: 6.12 falls back to uuid=null with a log line; 7.2 keeps uuid=off silently."""
    def shown(version):
        p = profile_for(version)
        o = effective_options("uuid=off", has_upper=False, n_lower=2, n_data=0, profile=p)
        return o.mount_log, dict(shown_options(o, profile=p)).get("uuid")

    assert shown((6, 12)) == ((
        "overlayfs: The uuid=off requires a single fs for lower and upper, falling back to uuid=null.",),
        "null")
    assert shown((7, 2)) == ((), "off")


@pytest.mark.parametrize("typed", ["", "6.12abc", "6", "banana", "99999999999999999999.1", "6.12 x"])
def test_kernel_option_is_strict(typed):
    with pytest.raises(UnknownKernel, match="not a kernel version"):
        parse_version(typed, strict=True)


def test_a_kernel_newer_than_any_known_change_says_so():
    p = profile_for(parse_version("7.5", strict=True), chosen_by="--kernel")
    assert p.name == "7.5" and "newer than any change ovlinspect knows of" in p.summary("6.18.44")
    assert p.differences(profile_for(CHANGES[-1].since)) == []
