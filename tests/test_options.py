"""Tests for ovlinspect.kernel.params.

Expected values marked "observed" were checked on Linux 6.18.44 (module parameters
metacopy=N redirect_dir=N redirect_always_follow=Y index=N nfs_export=N xino_auto=N) by mounting
overlays of tmpfs directories with mount(2) and reading /proc/self/mountinfo and /dev/kmsg.
The ``kernel`` tests at the end repeat those checks on the machine running the tests.
"""

from __future__ import annotations

import errno as errno_mod
import itertools
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovlinspect.live.mountapi import (
    KernelLog,
    MountError,
    cannot_mount_overlay,
    mount_overlay_legacy,
    private_tmpfs,
    umount,
)
from ovlinspect.kernel.profile import profile_for, profile_for_release
from ovlinspect.live.probe import probed_profile
from ovlinspect.sources.mountinfo import find_overlay_mount
from ovlinspect.kernel.params import (
    MAX_LAYERS,
    ModuleDefaults,
    OptionError,
    Options,
    _scan_lowerdir,
    effective_options,
    escape_lowerdir_element,
    join_lowerdir,
    options_from_shown,
    options_string,
    shown_options,
    split_lowerdir,
    split_options,
    unescape_lowerdir_element,
)

DEFAULTS = ModuleDefaults()

# --------------------------------------------------------------------------------------------
# lowerdir syntax


@pytest.mark.parametrize(
    ("text", "regular", "data"),
    [
        ("A", ["A"], []),
        ("A:B", ["A", "B"], []),
        ("A:B::C", ["A", "B"], ["C"]),
        ("A::C::D", ["A"], ["C", "D"]),
        ("/abs/a:rel/b", ["/abs/a", "rel/b"], []),
        # observed: directories named a,b  e:f  g\h  mounted with these escapes
        (r"a\,b:c d:e\:f:g\\h", ["a,b", "c d", "e:f", "g\\h"], []),
        ("t\tab::n\nl::x=y", ["t\tab"], ["n\nl", "x=y"]),
        (r"A\::B", ["A:", "B"], []),
        (r"\:A", [":A"], []),  # observed: the kernel looked up ":A" (ENOENT)
        (r"A:B\\", ["A", "B\\"], []),
        # observed: a final lone backslash is dropped; "A:B\" mounted A and B
        ("A:B\\", ["A", "B"], []),
        ("", [], []),
    ],
)
def test_split_lowerdir(text: str, regular: list[str], data: list[str]) -> None:
    assert split_lowerdir(text) == (regular, data)


# Every message below was observed in dmesg for the same lowerdir string (EINVAL).
@pytest.mark.parametrize(
    ("text", "log"),
    [
        (
            "A:::B",
            "only single ':' or double '::' sequences of unescaped colons in lowerdir mount option allowed.",
        ),
        (
            "A::::B",
            "only single ':' or double '::' sequences of unescaped colons in lowerdir mount option allowed.",
        ),
        ("A:B:", "unescaped trailing colons in lowerdir mount option."),
        ("A::", "unescaped trailing colons in lowerdir mount option."),
        ("A:B::C:", "unescaped trailing colons in lowerdir mount option."),
        # The kernel looks for pending colons before handling the escape at the very end.
        ("A:\\", "unescaped trailing colons in lowerdir mount option."),
        (":A:B", "cannot append lower layer"),
        ("::A", "cannot append lower layer"),
        ("A::C:B", "regular lower layers cannot follow data lower layers"),
        ("\\", "empty lowerdir"),
        (":".join(["A"] * (MAX_LAYERS + 1)), "too many lower directories, limit is 500"),
        (
            ":".join(["A"] * 250) + "::" + "::".join(["B"] * 251),
            "too many lower directories, limit is 500",
        ),
    ],
)
def test_split_lowerdir_errors(text: str, log: str) -> None:
    with pytest.raises(OptionError) as info:
        split_lowerdir(text)
    assert info.value.errno == "EINVAL"
    assert info.value.kernel_log == "overlayfs: " + log
    assert "\n" not in str(info.value)


def test_split_lowerdir_500_layers_is_fine() -> None:
    regular, data = split_lowerdir(":".join(["A"] * MAX_LAYERS))
    assert len(regular) == MAX_LAYERS and data == []


def test_escape_and_join() -> None:
    assert escape_lowerdir_element("a,b:c\\d e") == "a\\,b\\:c\\\\d e"
    assert join_lowerdir(["a:1", "b"], ["c,2", "d"]) == "a\\:1:b::c\\,2::d"
    assert join_lowerdir(["a"]) == "a"
    with pytest.raises(OptionError):
        join_lowerdir([], ["data"])
    with pytest.raises(OptionError):
        escape_lowerdir_element("")


def test_unescape_element() -> None:
    assert unescape_lowerdir_element("a\\,b\\\\c\\") == "a,b\\c"


_path = st.text(
    st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1, max_size=12
)


@given(st.lists(_path, min_size=1, max_size=6), st.lists(_path, max_size=4))
def test_join_split_roundtrip(regular: list[str], data: list[str]) -> None:
    joined = join_lowerdir(regular, data)
    assert split_lowerdir(joined) == (regular, data)
    # The escaped string also survives the kernel's comma splitting of mount(2) options.
    assert split_options("lowerdir=" + joined + ",ro") == [("lowerdir", joined), ("ro", None)]


@given(_path)
def test_escape_unescape_roundtrip(path: str) -> None:
    assert unescape_lowerdir_element(escape_lowerdir_element(path)) == path


# --------------------------------------------------------------------------------------------
# option strings


@pytest.mark.parametrize(
    ("text", "pairs"),
    [
        ("", []),
        ("ro", [("ro", None)]),
        ("lowerdir=a\\,b:c,upperdir=/u", [("lowerdir", "a\\,b:c"), ("upperdir", "/u")]),
        ("a=b=c", [("a", "b=c")]),
        # observed: ",," and "=x" are skipped by the kernel (the mount succeeded)
        ("metacopy=on,,=x,userxattr", [("metacopy", "on"), ("userxattr", None)]),
        ("x=", [("x", "")]),
        # observed: "redirect_dir=on\,x" is one option whose value is "on\,x" (Bad value)
        ("redirect_dir=on\\,x", [("redirect_dir", "on\\,x")]),
        ("lowerdir=a\\", [("lowerdir", "a\\")]),
    ],
)
def test_split_options(text: str, pairs: list[tuple[str, str | None]]) -> None:
    assert split_options(text) == pairs


# --------------------------------------------------------------------------------------------
# module defaults


def test_module_defaults_read(tmp_path: Path) -> None:
    assert ModuleDefaults.read(str(tmp_path / "missing")) == ModuleDefaults()
    (tmp_path / "metacopy").write_text("Y\n")
    (tmp_path / "redirect_dir").write_text("Y\n")
    (tmp_path / "redirect_max").write_text("1024\n")
    (tmp_path / "check_copy_up").write_text("N\n")
    got = ModuleDefaults.read(str(tmp_path))
    assert got == ModuleDefaults(metacopy=True, redirect_dir=True, redirect_max=1024)
    assert got.redirect_mode == "on"


def test_module_defaults_builtin() -> None:
    d = ModuleDefaults()
    assert (d.metacopy, d.redirect_dir, d.redirect_always_follow, d.index) == (
        False,
        False,
        True,
        False,
    )
    assert (d.nfs_export, d.xino_auto, d.redirect_max) == (False, False, 256)
    assert d.redirect_mode == "follow" and d.xino == "off"
    assert ModuleDefaults(redirect_always_follow=False).redirect_mode == "nofollow"


def test_module_defaults_from_mapping() -> None:
    got = ModuleDefaults.from_mapping(
        {"index": "Y", "xino_auto": "1", "redirect_always_follow": "N"}
    )
    assert got == ModuleDefaults(index=True, xino_auto=True, redirect_always_follow=False)
    with pytest.raises(ValueError, match="unknown overlay module parameter"):
        ModuleDefaults.from_mapping({"metacoppy": "Y"})
    with pytest.raises(ValueError, match="expected Y or N"):
        ModuleDefaults.from_mapping({"metacopy": "maybe"})


def test_module_defaults_of_this_machine() -> None:
    if not os.path.isdir("/sys/module/overlay/parameters"):
        pytest.skip("no overlay module parameters in /sys")
    got = ModuleDefaults.read()
    assert isinstance(got.redirect_max, int)


# --------------------------------------------------------------------------------------------
# effective options


@pytest.fixture(autouse=True)
def _rules_of_618(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tables of this file were observed on 6.18: a prediction that names no kernel follows
    6.18's rules here (7.0 changed uuid=off).  The kernel tests name the running kernel."""
    import ovlinspect.kernel.params

    monkeypatch.setattr(ovlinspect.kernel.params, "newest", lambda: profile_for((6, 18)))
#
# Each row: typed options -> (errno, mountinfo options after the layers, kernel log lines).
# All observed on 6.18.44 with the built-in module defaults.

LOWER_ONLY_CASES: list[tuple[str, str | None, str, list[str]]] = [
    ("", None, "redirect_dir=on", []),
    ("redirect_dir=off", None, "redirect_dir=on", []),
    ("redirect_dir=follow", None, "redirect_dir=on", []),
    ("redirect_dir=nofollow", None, "redirect_dir=nofollow", []),
    ("redirect_dir=on", None, "redirect_dir=on", []),
    ("metacopy=on", None, "redirect_dir=on,metacopy=on", []),
    ("metacopy=on,redirect_dir=off", None, "redirect_dir=on,metacopy=on", []),
    (
        "metacopy=on,redirect_dir=nofollow",
        "EINVAL",
        "",
        ["conflicting options: metacopy=on,redirect_dir=nofollow"],
    ),
    (
        "redirect_dir=nofollow,metacopy=on",
        "EINVAL",
        "",
        ["conflicting options: metacopy=on,redirect_dir=nofollow"],
    ),
    ("metacopy=on,metacopy=off", None, "redirect_dir=on", []),
    ("userxattr", None, "redirect_dir=nofollow,userxattr", []),
    ("userxattr,metacopy=off", None, "redirect_dir=nofollow,userxattr", []),
    ("userxattr,redirect_dir=nofollow", None, "redirect_dir=nofollow,userxattr", []),
    # follow (and off, which parses as follow) become "on" before the userxattr check
    ("userxattr,redirect_dir=on", "EINVAL", "", ["conflicting options: userxattr,redirect_dir=on"]),
    (
        "userxattr,redirect_dir=follow",
        "EINVAL",
        "",
        ["conflicting options: userxattr,redirect_dir=on"],
    ),
    (
        "userxattr,redirect_dir=off",
        "EINVAL",
        "",
        ["conflicting options: userxattr,redirect_dir=on"],
    ),
    ("userxattr,metacopy=on", "EINVAL", "", ["conflicting options: userxattr,metacopy=on"]),
    ("verity=on", None, "redirect_dir=on,verity=on", []),
    ("verity=require", None, "redirect_dir=on,verity=require", []),
    ("verity=off", None, "redirect_dir=on", []),
    (
        "uuid=on",
        None,
        "redirect_dir=on,uuid=null",
        ['option "uuid=on" requires an upper fs, falling back to uuid=null.'],
    ),
    (
        "uuid=off",
        None,
        "redirect_dir=on,uuid=null",
        ["The uuid=off requires a single fs for lower and upper, falling back to uuid=null."],
    ),
    ("uuid=null", None, "redirect_dir=on,uuid=null", []),
    ("uuid=auto", None, "redirect_dir=on", []),
    (
        "index=on",
        None,
        "redirect_dir=on",
        ['option "index=on" is useless in a non-upper mount, ignore'],
    ),
    ("index=off", None, "redirect_dir=on", []),
    (
        "volatile",
        None,
        "redirect_dir=on",
        ['option "volatile" is meaningless in a non-upper mount, ignoring it.'],
    ),
    (
        "fsync=volatile",
        None,
        "redirect_dir=on",
        ['option "volatile" is meaningless in a non-upper mount, ignoring it.'],
    ),
    ("fsync=strict", None, "redirect_dir=on,fsync=strict", []),
    ("fsync=auto", None, "redirect_dir=on", []),
    (
        "nfs_export=on",
        None,
        "redirect_dir=on",
        [
            'NFS export requires "redirect_dir=nofollow" on non-upper mount, falling back to nfs_export=off.'
        ],
    ),
    ("nfs_export=on,redirect_dir=nofollow", None, "redirect_dir=nofollow,nfs_export=on", []),
    (
        "xino=on",
        None,
        "redirect_dir=on",
        ['"xino=on" is useless with all layers on same fs, ignore.'],
    ),
    ("xino=auto", None, "redirect_dir=on", []),
    ("default_permissions", None, "default_permissions,redirect_dir=on", []),
    ("ro", None, "redirect_dir=on", []),
    ("rw", None, "redirect_dir=on", []),
    ("override_creds", None, "redirect_dir=on", []),
    ("nooverride_creds", None, "redirect_dir=on", []),
]

UPPER_CASES: list[tuple[str, str | None, str, list[str]]] = [
    ("", None, "uuid=on", []),
    ("redirect_dir=off", None, "uuid=on", []),
    ("redirect_dir=follow", None, "uuid=on", []),
    ("redirect_dir=nofollow", None, "redirect_dir=nofollow,uuid=on", []),
    ("redirect_dir=on", None, "redirect_dir=on,uuid=on", []),
    ("metacopy=on", None, "redirect_dir=on,uuid=on,metacopy=on", []),
    # with an upper layer "follow" stays "follow", so it conflicts with metacopy=on
    (
        "metacopy=on,redirect_dir=follow",
        "EINVAL",
        "",
        ["conflicting options: metacopy=on,redirect_dir=follow"],
    ),
    (
        "metacopy=on,redirect_dir=off",
        "EINVAL",
        "",
        ["conflicting options: metacopy=on,redirect_dir=follow"],
    ),
    ("userxattr", None, "redirect_dir=nofollow,uuid=on,userxattr", []),
    (
        "userxattr,redirect_dir=off",
        "EINVAL",
        "",
        ["conflicting options: userxattr,redirect_dir=follow"],
    ),
    ("uuid=off", None, "uuid=off", []),
    ("uuid=null", None, "uuid=null", []),
    ("uuid=auto", None, "uuid=on", []),
    ("index=on", None, "index=on,uuid=on", []),
    ("volatile", None, "uuid=on,fsync=volatile", []),
    ("fsync=strict", None, "uuid=on,fsync=strict", []),
    ("nfs_export=on", None, "index=on,uuid=on,nfs_export=on", []),
    ("nfs_export=on,index=off", "EINVAL", "", ["conflicting options: nfs_export=on,index=off"]),
    ("nfs_export=on,metacopy=on", "EINVAL", "", ["conflicting options: nfs_export=on,metacopy=on"]),
    ("nfs_export=on,verity=on", None, "index=on,uuid=on,nfs_export=on,verity=on", []),
    ("index=on,metacopy=on", None, "redirect_dir=on,index=on,uuid=on,metacopy=on", []),
    ("verity=require,metacopy=off", None, "uuid=on,verity=require", []),
]


def _expect(opts: str, has_upper: bool) -> Options:
    return effective_options(opts, has_upper=has_upper, n_lower=2, n_data=0, defaults=DEFAULTS)


def _shown(o: Options) -> str:
    return ",".join(k if v is None else f"{k}={v}" for k, v in shown_options(o, DEFAULTS))


@pytest.mark.parametrize(("opts", "errno", "shown", "log"), LOWER_ONLY_CASES)
def test_effective_lower_only(opts: str, errno: str | None, shown: str, log: list[str]) -> None:
    o = _expect(opts, has_upper=False)
    assert o.mount_errno == errno
    assert list(o.mount_log) == ["overlayfs: " + line for line in log]
    if errno is None:
        assert _shown(o) == shown
    assert o.given == tuple(split_options(opts))


@pytest.mark.parametrize(("opts", "errno", "shown", "log"), UPPER_CASES)
def test_effective_upper(opts: str, errno: str | None, shown: str, log: list[str]) -> None:
    o = _expect(opts, has_upper=True)
    assert o.mount_errno == errno
    assert list(o.mount_log) == ["overlayfs: " + line for line in log]
    if errno is None:
        assert _shown(o) == shown


def test_effective_values() -> None:
    o = _expect("", has_upper=False)
    assert (o.redirect_dir, o.metacopy, o.userxattr, o.verity) == ("on", False, False, "off")
    assert o.redirect_follow and o.xattr_prefix == b"trusted.overlay."
    assert o.as_json() == {
        "metacopy": False,
        "redirect_dir": "on",
        "userxattr": False,
        "verity": "off",
    }
    o = _expect("userxattr", has_upper=False)
    assert not o.redirect_follow and o.xattr_prefix == b"user.overlay."
    assert _expect("", has_upper=True).redirect_dir == "follow"
    assert _expect("volatile", has_upper=True).fsync == "volatile"


def test_effective_accepts_pairs() -> None:
    o = effective_options(
        [("metacopy", "on"), ("ro", None)], has_upper=False, n_lower=1, n_data=1, defaults=DEFAULTS
    )
    assert o.metacopy and o.redirect_dir == "on" and o.mount_errno is None
    assert o.given == (("metacopy", "on"), ("ro", None))


@pytest.mark.parametrize(
    ("opts", "message", "log"),
    [
        ("bogus", "unknown overlay option 'bogus'", "overlay: Unknown parameter 'bogus'"),
        (
            "nometacopy",
            "unknown overlay option 'nometacopy'",
            "overlay: Unknown parameter 'nometacopy'",
        ),
        (
            "Metacopy=on",
            "unknown overlay option 'Metacopy'",
            "overlay: Unknown parameter 'Metacopy'",
        ),
        ("metacopy=yes", "bad value", "overlay: Bad value for 'metacopy'"),
        ("metacopy", "bad value", "overlay: Bad value for 'metacopy'"),
        ("metacopy=", "bad value", "overlay: Bad value for 'metacopy'"),
        ("metacopy=ON", "bad value", "overlay: Bad value for 'metacopy'"),
        ("metacopy=on=off", "bad value", "overlay: Bad value for 'metacopy'"),
        ("verity=bad", "bad value", "overlay: Bad value for 'verity'"),
        ("redirect_dir=on\\,x", "bad value", "overlay: Bad value for 'redirect_dir'"),
        ("userxattr=1", "takes no value", "overlay: Unexpected value for 'userxattr'"),
        ("userxattr=", "takes no value", "overlay: Unexpected value for 'userxattr'"),
    ],
)
def test_effective_parse_errors(opts: str, message: str, log: str) -> None:
    # all observed in dmesg after mount(2) failed with EINVAL
    with pytest.raises(OptionError, match=message) as info:
        _expect(opts, has_upper=False)
    assert info.value.errno == "EINVAL"
    assert info.value.kernel_log == log


@pytest.mark.parametrize("key", ["lowerdir", "upperdir", "workdir", "lowerdir+", "datadir+"])
def test_effective_refuses_layer_options(key: str) -> None:
    with pytest.raises(OptionError, match="names a layer"):
        _expect(f"{key}=/x", has_upper=False)


def test_generic_flags_ignored() -> None:
    # "sync" was observed to be accepted (and shown as a superblock flag); mount(8) turns
    # nosuid, noatime, ... into mount flags, so they never reach overlayfs.
    o = _expect(
        "ro,rw,sync,nosuid,nodev,noatime,relatime,defaults,x-systemd.automount,context=foo",
        has_upper=False,
    )
    assert o.mount_errno is None and o.redirect_dir == "on"


@pytest.mark.parametrize(
    ("has_upper", "n_lower", "n_data", "errno", "log"),
    [
        # all observed (legacy lowerdir= or lowerdir+/datadir+)
        (False, 1, 0, "EINVAL", "at least 2 lowerdir are needed while upperdir nonexistent"),
        (False, 0, 1, "EINVAL", "at least 2 lowerdir are needed while upperdir nonexistent"),
        (False, 0, 2, "EINVAL", "at least one non-data lowerdir is required"),
        (True, 0, 1, "EINVAL", "at least one non-data lowerdir is required"),
        (False, 0, 0, "EINVAL", "missing 'lowerdir'"),
        (True, 0, 0, "EINVAL", "missing 'lowerdir'"),
        (False, 501, 0, "EINVAL", "too many lower directories, limit is 500"),
        (False, 250, 251, "EINVAL", "too many lower directories, limit is 500"),
        (False, 1, 1, None, None),
        (True, 1, 0, None, None),
        (True, 1, 1, None, None),
        (False, 300, 200, None, None),
    ],
)
def test_stack_shape(
    has_upper: bool, n_lower: int, n_data: int, errno: str | None, log: str | None
) -> None:
    o = effective_options(
        "", has_upper=has_upper, n_lower=n_lower, n_data=n_data, defaults=DEFAULTS
    )
    assert o.mount_errno == errno
    if log is not None:
        assert o.mount_log[-1] == "overlayfs: " + log


def test_option_conflict_comes_before_stack_shape() -> None:
    # The options are verified before the layers are counted.
    o = effective_options(
        "metacopy=on,redirect_dir=nofollow", has_upper=False, n_lower=1, n_data=0, defaults=DEFAULTS
    )
    assert o.mount_log == ("overlayfs: conflicting options: metacopy=on,redirect_dir=nofollow",)


# Rows below follow the kernel source (params.c, ovl_fs_params_verify); they need module
# parameters this machine does not have, so they are not observed.


def test_module_default_metacopy_and_explicit_redirect() -> None:
    d = ModuleDefaults(metacopy=True)
    o = effective_options("redirect_dir=nofollow", has_upper=True, n_lower=1, n_data=0, defaults=d)
    assert o.mount_errno is None and not o.metacopy
    assert o.mount_log == ("overlayfs: disabling metacopy due to redirect_dir=nofollow",)
    o = effective_options("", has_upper=True, n_lower=1, n_data=0, defaults=d)
    assert o.metacopy and o.redirect_dir == "on" and o.mount_log == ()
    assert shown_options(o, d) == [("redirect_dir", "on"), ("uuid", "on")]


def test_module_default_redirect_on() -> None:
    d = ModuleDefaults(redirect_dir=True)
    o = effective_options("", has_upper=True, n_lower=1, n_data=0, defaults=d)
    assert o.redirect_dir == "on" and shown_options(o, d) == [("uuid", "on")]
    o = effective_options("redirect_dir=off", has_upper=True, n_lower=1, n_data=0, defaults=d)
    assert o.redirect_dir == "follow"
    assert ("redirect_dir", "follow") in shown_options(o, d)


def test_redirect_off_without_always_follow() -> None:
    d = ModuleDefaults(redirect_always_follow=False)
    o = effective_options("redirect_dir=off", has_upper=False, n_lower=2, n_data=0, defaults=d)
    assert o.redirect_dir == "nofollow" and not o.redirect_follow


def test_module_default_nfs_export() -> None:
    d = ModuleDefaults(nfs_export=True, metacopy=True)
    o = effective_options("", has_upper=True, n_lower=1, n_data=0, defaults=d)
    # nfs_export auto-enables the index, then metacopy (not typed) gives way
    assert o.nfs_export and o.index and not o.metacopy
    assert o.mount_log == ("overlayfs: disabling metacopy due to nfs_export=on",)
    o = effective_options("metacopy=on", has_upper=True, n_lower=1, n_data=0, defaults=d)
    assert o.metacopy and not o.nfs_export
    o = effective_options("index=off", has_upper=True, n_lower=1, n_data=0, defaults=d)
    assert not o.nfs_export and o.mount_log[0] == "overlayfs: disabling nfs_export due to index=off"


def test_unprivileged() -> None:
    for opts, why in [
        ("redirect_dir=on", "redirect_dir requires permission to access trusted xattrs"),
        ("metacopy=on", "metacopy requires permission to access trusted xattrs"),
        ("verity=on", "verity requires permission to access trusted xattrs"),
    ]:
        o = effective_options(
            opts, has_upper=True, n_lower=1, n_data=0, defaults=DEFAULTS, privileged=False
        )
        assert o.mount_errno == "EPERM" and o.mount_log[-1] == "overlayfs: " + why
    o = effective_options(
        "", has_upper=True, n_lower=1, n_data=1, defaults=DEFAULTS, privileged=False
    )
    assert o.mount_errno == "EPERM"
    o = effective_options(
        "userxattr", has_upper=True, n_lower=1, n_data=1, defaults=DEFAULTS, privileged=False
    )
    assert o.mount_errno is None
    o = effective_options(
        "redirect_dir=nofollow",
        has_upper=True,
        n_lower=1,
        n_data=0,
        defaults=DEFAULTS,
        privileged=False,
    )
    assert o.mount_errno is None


def test_uuid_off_across_filesystems() -> None:
    o = effective_options(
        "uuid=off", has_upper=True, n_lower=1, n_data=0, defaults=DEFAULTS, same_fs=False
    )
    assert o.uuid == "null"
    o = effective_options(
        "xino=on", has_upper=True, n_lower=1, n_data=0, defaults=DEFAULTS, same_fs=False
    )
    assert o.mount_log == () and ("xino", "on") in shown_options(o, DEFAULTS, same_fs=False)


# --------------------------------------------------------------------------------------------
# options_string

_OPTION_VALUES: dict[str, list[str | None]] = {
    "redirect_dir": ["off", "follow", "nofollow", "on"],
    "metacopy": ["on", "off"],
    "index": ["on", "off"],
    "nfs_export": ["on", "off"],
    "uuid": ["off", "null", "auto", "on"],
    "xino": ["off", "auto", "on"],
    "verity": ["off", "on", "require"],
    "fsync": ["volatile", "auto", "strict"],
    "userxattr": [None],
    "volatile": [None],
    "default_permissions": [None],
    "nooverride_creds": [None],
}

_option = st.sampled_from(sorted(_OPTION_VALUES)).flatmap(
    lambda key: st.tuples(st.just(key), st.sampled_from(_OPTION_VALUES[key]))
)
_defaults = st.builds(
    ModuleDefaults,
    metacopy=st.booleans(),
    redirect_dir=st.booleans(),
    redirect_always_follow=st.booleans(),
    index=st.booleans(),
    nfs_export=st.booleans(),
    xino_auto=st.booleans(),
)


@settings(max_examples=400)
@given(st.lists(_option, max_size=6), st.booleans(), _defaults, _defaults)
def test_options_string_reproduces(
    typed: list[tuple[str, str | None]], has_upper: bool, d1: ModuleDefaults, d2: ModuleDefaults
) -> None:
    o = effective_options(typed, has_upper=has_upper, n_lower=2, n_data=0, defaults=d1)
    if o.mount_errno is not None:
        assert options_string(o) == ",".join(k if v is None else f"{k}={v}" for k, v in typed)
        return
    # The explicit form works whatever the module parameters are ...
    again = effective_options(
        options_string(o), has_upper=has_upper, n_lower=2, n_data=0, defaults=d2
    )
    assert again.semantics() == o.semantics()
    # ... and the minimal form under the parameters it was minimised for.
    short = options_string(o, d1)
    again = effective_options(short, has_upper=has_upper, n_lower=2, n_data=0, defaults=d1)
    assert again.semantics() == o.semantics()
    assert len(split_options(short)) <= len(split_options(options_string(o)))


@settings(max_examples=300)
@given(st.lists(_option, max_size=6), st.booleans(), _defaults, st.booleans())
def test_options_from_shown_roundtrip(
    typed: list[tuple[str, str | None]], has_upper: bool, d: ModuleDefaults, same_fs: bool
) -> None:
    """Reading back what mountinfo shows gives the effective options (how live mounts are read)."""
    o = effective_options(
        typed, has_upper=has_upper, n_lower=2, n_data=0, defaults=d, same_fs=same_fs
    )
    if o.mount_errno is not None:
        return
    back = options_from_shown(shown_options(o, d, same_fs=same_fs), has_upper=has_upper, defaults=d)
    # mountinfo never shows override_creds (observed: nooverride_creds leaves no trace), nor
    # xino when every layer is on one filesystem.
    expected = replace(o, override_creds=True, xino=o.xino if not same_fs else d.xino)
    assert back.semantics() == expected.semantics()


def test_shown_options_are_not_typed_options() -> None:
    """Typing back what mountinfo shows is not always the same mount (source-derived quirk)."""
    d = ModuleDefaults(index=True, nfs_export=True, redirect_always_follow=False)
    o = effective_options("", has_upper=False, n_lower=2, n_data=0, defaults=d)
    assert o.nfs_export and not o.index
    shown = shown_options(o, d)
    assert shown == [("index", "off")]
    assert (
        effective_options(shown, has_upper=False, n_lower=2, n_data=0, defaults=d).nfs_export
        is False
    )
    assert options_from_shown(shown, has_upper=False, defaults=d).nfs_export is True


def test_options_from_shown_examples() -> None:
    o = options_from_shown("sync,redirect_dir=nofollow,uuid=on,userxattr", has_upper=True)
    assert (o.redirect_dir, o.uuid, o.userxattr, o.metacopy) == ("nofollow", "on", True, False)
    assert options_from_shown("volatile", has_upper=True).fsync == "volatile"
    assert options_from_shown("", has_upper=False).redirect_dir == "follow"
    with pytest.raises(OptionError):
        options_from_shown("metacopy=maybe", has_upper=False)


def test_options_string_examples() -> None:
    o = _expect("metacopy=on", has_upper=False)
    assert options_string(o, DEFAULTS) == "metacopy=on"
    assert options_string(_expect("", has_upper=False), DEFAULTS) == ""
    assert options_string(_expect("userxattr", has_upper=False), DEFAULTS) == "userxattr"
    explicit = options_string(_expect("userxattr", has_upper=False))
    assert "userxattr" in explicit and "redirect_dir=nofollow" in explicit


# --------------------------------------------------------------------------------------------
# the real kernel

_SKIP = cannot_mount_overlay()
#: the kernel-agreement tests below predict for the kernel that runs them (the host, or a VM),
#: its release corrected by the probes as the CLI does (Debian's 6.12 has 6.18's fsync=)
RUNNING = (probed_profile(profile_for_release(os.uname().release)) if os.geteuid() == 0
           else profile_for_release(os.uname().release))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if _SKIP:
        pytest.skip(_SKIP)
    base = tmp_path_factory.mktemp("ovl-options")
    with private_tmpfs(base) as root:
        yield Path(root)


_case_numbers = itertools.count()


def _predict_or_refusal(opts: str, has_upper: bool, defaults: ModuleDefaults) -> Options | OptionError:
    """The running kernel's predicted options, or the parse refusal predicted for them."""
    try:
        return effective_options(opts, has_upper=has_upper, n_lower=2, n_data=0, defaults=defaults,
                                 profile=RUNNING)
    except OptionError as e:
        return e


def _kernel_case(scratch: Path, opts: str, has_upper: bool) -> tuple[str | None, str, list[str]]:
    case = scratch / f"case{next(_case_numbers)}"
    for sub in ("A", "B", "U", "W", "mnt"):
        (case / sub).mkdir(parents=True)
    mnt = case / "mnt"
    with KernelLog() as klog:
        try:
            mount_overlay_legacy(
                mnt,
                join_lowerdir([str(case / "A"), str(case / "B")]),
                upper=case / "U" if has_upper else None,
                work=case / "W" if has_upper else None,
                options=opts,
            )
        except MountError as exc:
            return errno_mod.errorcode[exc.errno], "", klog.new_lines()
        try:
            entry = find_overlay_mount(str(mnt))
            shown = ",".join(k if v is None else f"{k}={v}" for k, v in entry.options)
        finally:
            umount(mnt)
        return None, shown, klog.new_lines()


@pytest.mark.kernel
@pytest.mark.parametrize(
    ("opts", "has_upper"),
    [(row[0], False) for row in LOWER_ONLY_CASES] + [(row[0], True) for row in UPPER_CASES],
)
def test_kernel_agrees(scratch: Path, opts: str, has_upper: bool) -> None:
    """Mount with the typed options and compare errno, mountinfo and dmesg with the prediction."""
    defaults = ModuleDefaults.read()
    errno, shown, log = _kernel_case(scratch, opts, has_upper)
    predicted = _predict_or_refusal(opts, has_upper, defaults)
    if isinstance(predicted, OptionError):  # an option this kernel does not have
        assert errno == predicted.errno and predicted.kernel_log in log
        return
    assert errno == predicted.mount_errno
    if errno is None:
        # "sync" and other superblock flags are shown before the layers; ignore them here
        expected = ",".join(
            k if v is None else f"{k}={v}" for k, v in shown_options(predicted, defaults, profile=RUNNING)
        )
        assert shown == expected
    # Other activity may log too: every predicted line must be there.
    for line in predicted.mount_log:
        assert line in log, f"{line!r} not in {log!r}"


@pytest.mark.kernel
@pytest.mark.parametrize(
    "opts", ["bogus", "metacopy=yes", "metacopy", "userxattr=1", "verity=bad", "nometacopy"]
)
def test_kernel_agrees_on_parse_errors(scratch: Path, opts: str) -> None:
    """Refused by the option parser: bad input where no kernel has the option, the mount's
    refusal where only a later kernel has it (verity=bad on 6.1); the kernel says the same."""
    predicted = _predict_or_refusal(opts, False, ModuleDefaults.read())
    errno, _, log = _kernel_case(scratch, opts, False)
    if isinstance(predicted, OptionError):
        assert errno == predicted.errno and predicted.kernel_log in log
    else:
        assert errno == predicted.mount_errno and predicted.mount_log and predicted.mount_log[-1] in log


@pytest.mark.kernel
@pytest.mark.parametrize("text", ["A:::B", "A:B:", "A::", ":A", "A::C:B", "A:\\", "\\"])
def test_kernel_agrees_on_lowerdir_errors(scratch: Path, text: str) -> None:
    with pytest.raises(OptionError) as info:
        split_lowerdir(text, RUNNING)
    case = scratch / f"case{next(_case_numbers)}"
    for sub in ("A", "B", "C", "mnt"):
        (case / sub).mkdir(parents=True)
    cwd = os.getcwd()
    os.chdir(case)
    try:
        with KernelLog() as klog:
            with pytest.raises(MountError) as failed:
                mount_overlay_legacy(case / "mnt", text)
            log = klog.new_lines()
    finally:
        os.chdir(cwd)
    assert failed.value.errno == errno_mod.EINVAL
    assert info.value.kernel_log in log


@pytest.mark.kernel
@settings(max_examples=150, deadline=None)
@given(st.text(st.sampled_from("AB:\\"), min_size=1, max_size=9))
def test_kernel_agrees_on_random_lowerdir(scratch: Path, text: str) -> None:
    """Differential test: random lowerdir strings, split here and by the kernel."""
    try:
        regular, data = split_lowerdir(text, RUNNING)
        refused: OptionError | None = None
    except OptionError as exc:
        refused = exc
    case = scratch / f"case{next(_case_numbers)}"
    for sub in ("U", "W", "mnt"):
        (case / sub).mkdir(parents=True)
    # Create every layer the string names, so that only the syntax can fail: the kernel looks
    # each element up before it checks what follows it.
    try:
        names = [unescape_lowerdir_element(raw) for raw, _ in _scan_lowerdir(text)]
    except OptionError:
        names = []
    for name in names:
        if name:
            (case / name).mkdir(exist_ok=True)
    cwd = os.getcwd()
    os.chdir(case)
    try:
        with KernelLog() as klog:
            try:
                # before 6.16 data-only layers need metacopy: ask for it, so only syntax fails
                needs = refused is None and data and RUNNING.data_only_needs_metacopy
                mount_overlay_legacy(case / "mnt", text, upper=case / "U", work=case / "W",
                                     options="metacopy=on" if needs else "")
                failure: MountError | None = None
            except MountError as exc:
                failure = exc
            log = klog.new_lines()
    finally:
        os.chdir(cwd)
    if refused is not None:
        assert failure is not None and failure.errno == errno_mod.EINVAL
        assert refused.kernel_log in log
        return
    if len(set(regular + data)) < len(regular + data):
        # the same directory twice: the kernel refuses overlapping layers
        assert failure is not None and failure.errno == errno_mod.ELOOP
        return
    assert failure is None, f"{text!r}: {failure} {log}"
    try:
        entry = find_overlay_mount(str(case / "mnt"))
        assert (entry.lowers, entry.datas) == (regular, data)
    finally:
        umount(case / "mnt")


@pytest.mark.kernel
@settings(max_examples=100, deadline=None)
@given(st.lists(_option, max_size=5), st.booleans())
def test_kernel_agrees_on_random_options(
    scratch: Path, typed: list[tuple[str, str | None]], has_upper: bool
) -> None:
    """Differential test: random option sets, predicted here and mounted for real."""
    opts = ",".join(k if v is None else f"{k}={v}" for k, v in typed)
    defaults = ModuleDefaults.read()
    predicted = _predict_or_refusal(opts, has_upper, defaults)
    errno, shown, log = _kernel_case(scratch, opts, has_upper)
    if isinstance(predicted, OptionError):  # an option this kernel does not have
        assert errno == predicted.errno and predicted.kernel_log in log, f"{opts!r}: {log}"
        return
    assert errno == predicted.mount_errno, f"{opts!r}: {log}"
    if errno is None:
        expected = shown_options(predicted, defaults, profile=RUNNING)
        assert shown == ",".join(k if v is None else f"{k}={v}" for k, v in expected)
    for line in predicted.mount_log:
        assert line in log, f"{opts!r}: {line!r} not in {log!r}"
