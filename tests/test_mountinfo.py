"""Tests for ovlinspect.sources.mountinfo (and the mount helpers in ovlinspect.live.mountapi).

The literal mountinfo lines below were copied from /proc/self/mountinfo on Linux 6.18.44 after
mounting the stacks described next to them; the ``kernel`` tests at the end make such mounts
again and check that the exact layer paths come back.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ovlinspect.live.mountapi import (
    cannot_mount_overlay,
    mount_overlay_fsconfig,
    mount_overlay_legacy,
    open_tree_clone,
    private_tmpfs,
    umount,
)
from ovlinspect.sources.mountinfo import (
    MountEntry,
    NotOverlayError,
    _resolve_in_root,
    find_overlay_mount,
    layer_path_problem,
    overlay_mounts,
    parse_mountinfo,
    read_mountinfo,
    unescape_octal,
    visible_mount,
)
from ovlinspect.kernel.params import join_lowerdir

# lowerdir=a\,b:c d:e\:f:g\\h::t<TAB>ab::n<NL>l::x=y::oct\\054 with upper and work directories
# named "U,1 x:\" and "W,1 x:\" (escaped by the mount helper), mounted from the stack directory.
LEGACY = (
    r"73 63 0:40 / /tmp/exp/t/s1/mnt rw,relatime - overlay overlay rw,"
    r"lowerdir=a\134\054b:c\040d:e\134:f:g\134\134h::t\011ab::n\012l::x=y::oct\134\134054,"
    r"upperdir=/tmp/exp/t/s1/U\134\0541\040x\134:\134\134,"
    r"workdir=/tmp/exp/t/s1/W\134\0541\040x\134:\134\134,uuid=on"
)
# The same layers through fsconfig: one lowerdir+/datadir+ each, never backslash-escaped.
NEW_API = (
    r"83 63 0:42 / /tmp/exp/t/s2/mnt rw,relatime - overlay overlay rw,"
    r"lowerdir+=a\054b,lowerdir+=c\040d,lowerdir+=e:f,lowerdir+=g\134h,"
    r"datadir+=t\011ab,datadir+=n\012l,datadir+=x=y,datadir+=oct\134054,"
    r"upperdir=/tmp/exp/t/s2/U\134\0541\040x\134:\134\134,"
    r"workdir=/tmp/exp/t/s2/W\134\0541\040x\134:\134\134,uuid=on"
)
# fsconfig with absolute paths, "./" and "//" kept as typed, no source given.
NEW_API_ABSOLUTE = (
    r"87 63 0:44 / /tmp/exp/t/s3/mnt rw,relatime - overlay none ro,"
    r"lowerdir+=/tmp/exp/t/s3/a\054b,lowerdir+=/tmp/exp/t/s3/./c\040d//,"
    r"datadir+=/tmp/exp/t/s3/e:f,redirect_dir=on"
)
# First layer passed as an open_tree(OPEN_TREE_CLONE) fd: d_path() of a detached mount is "/".
FD_LAYER = (
    r"94 63 0:50 / /tmp/exp/t/s5/mnt rw,relatime - overlay composefs ro,"
    r"lowerdir+=/,lowerdir+=/tmp/exp/t/s4/plain,redirect_dir=on"
)
# Legacy string with relative paths, mounted from the stack directory.
RELATIVE = (
    r"97 63 0:53 / /tmp/exp/t/s6/mnt rw,relatime - overlay overlay ro,"
    r"lowerdir=./a\134\054b//:/tmp/exp/t/s6//plain,redirect_dir=on"
)
# A mount point with a space, comma, backslash and tab in its name.
ODD_MOUNTPOINT = (
    r"66 63 0:40 / /tmp/exp/t/s1/m\040p,\134x\011y rw,relatime - overlay overlay ro,"
    r"lowerdir=plain:x,redirect_dir=on"
)
SYSTEM = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
28 27 0:30 / /tmp rw,nosuid,nodev shared:5 master:2 - tmpfs tmpfs rw,size=1024k,mode=1777
"""


def test_unescape_octal() -> None:
    assert unescape_octal(r"a\040b\011c\012d\134e\054f") == "a b\tc\nd\\e,f"
    assert unescape_octal("plain") == "plain"
    assert unescape_octal(r"\134040") == "\\040"  # an escaped backslash is not a new escape
    assert unescape_octal(r"x\9") == r"x\9"
    # bytes above 0x7f come back as os.fsdecode() would give them
    assert os.fsencode(unescape_octal(r"\377")) == b"\xff"


def test_legacy_line() -> None:
    (entry,) = parse_mountinfo(LEGACY)
    assert entry.is_overlay and entry.legacy_lowerdir
    assert entry.lowers == ["a,b", "c d", "e:f", "g\\h"]
    assert entry.datas == ["t\tab", "n\nl", "x=y", "oct\\054"]
    assert entry.upperdir == "/tmp/exp/t/s1/U,1 x:\\"
    assert entry.workdir == "/tmp/exp/t/s1/W,1 x:\\"
    assert entry.options == [("uuid", "on")]
    assert not entry.sb_readonly
    assert (entry.mount_id, entry.parent_id, entry.major_minor) == (73, 63, "0:40")
    assert (entry.root, entry.mountpoint, entry.mount_options) == (
        "/",
        "/tmp/exp/t/s1/mnt",
        "rw,relatime",
    )
    assert (entry.fstype, entry.source) == ("overlay", "overlay")
    assert entry.super_options.startswith("rw,lowerdir=a\\134")


def test_new_api_line() -> None:
    (entry,) = parse_mountinfo(NEW_API)
    assert not entry.legacy_lowerdir
    assert entry.lowers == ["a,b", "c d", "e:f", "g\\h"]
    assert entry.datas == ["t\tab", "n\nl", "x=y", "oct\\054"]
    assert entry.upperdir == "/tmp/exp/t/s2/U,1 x:\\"


def test_new_api_absolute_line() -> None:
    (entry,) = parse_mountinfo(NEW_API_ABSOLUTE)
    assert entry.lowers == ["/tmp/exp/t/s3/a,b", "/tmp/exp/t/s3/./c d//"]
    assert entry.datas == ["/tmp/exp/t/s3/e:f"]
    assert entry.source == "none" and entry.sb_readonly
    assert entry.upperdir is None and entry.workdir is None
    assert entry.options == [("redirect_dir", "on")]
    assert entry.option("redirect_dir") == "on" and entry.option("userxattr") is None


def test_fd_layer_line() -> None:
    (entry,) = parse_mountinfo(FD_LAYER)
    assert entry.lowers == ["/", "/tmp/exp/t/s4/plain"]
    assert layer_path_problem(entry.lowers[0]) is not None
    assert layer_path_problem(entry.lowers[1]) is None


def test_relative_line() -> None:
    (entry,) = parse_mountinfo(RELATIVE)
    assert entry.lowers == ["./a,b//", "/tmp/exp/t/s6//plain"]
    assert "relative" in (layer_path_problem(entry.lowers[0]) or "")


def test_odd_mountpoint() -> None:
    (entry,) = parse_mountinfo(ODD_MOUNTPOINT)
    assert entry.mountpoint == "/tmp/exp/t/s1/m p,\\x\ty"
    assert entry.lowers == ["plain", "x"]


def test_system_lines() -> None:
    proc, root, tmp = parse_mountinfo(SYSTEM)
    assert (proc.fstype, proc.mountpoint, proc.optional_fields) == ("proc", "/proc", [])
    assert root.optional_fields == ["shared:1"] and root.source == "/dev/vda"
    assert tmp.optional_fields == ["shared:5", "master:2"]
    assert tmp.options == [("size", "1024k"), ("mode", "1777")]
    assert not any(e.is_overlay for e in (proc, root, tmp))
    assert tmp.lowers == [] and tmp.upperdir is None


def test_overlay_mounts() -> None:
    text = SYSTEM + LEGACY + "\n" + NEW_API + "\n"
    assert [e.mount_id for e in overlay_mounts(text)] == [73, 83]
    assert overlay_mounts(SYSTEM) == []


def test_sb_flags_and_bad_lowerdir() -> None:
    line = "90 1 0:1 / /m rw - overlay overlay ro,sync,lowerdir=A:::B,redirect_dir=on"
    (entry,) = parse_mountinfo(line)
    assert entry.sb_readonly and entry.options == [("sync", None), ("redirect_dir", "on")]
    assert entry.lowers == [] and entry.lowerdir_error is not None


@pytest.mark.parametrize(
    "line",
    ["garbage", "1 2 3 4 5 6 7", "x y 0:1 / / rw - ext4 /dev/x rw", "1 2 0:1 / / rw -"],
)
def test_malformed(line: str) -> None:
    with pytest.raises(ValueError, match="mountinfo line 1"):
        parse_mountinfo(line)


def test_blank_lines_ignored() -> None:
    assert len(parse_mountinfo("\n" + SYSTEM + "\n\n")) == 3


# --------------------------------------------------------------------------------------------
# find_overlay_mount (on text; the paths need not exist)

MOUNTS = """\
1 0 254:0 / / rw - ext4 /dev/vda rw
2 1 0:30 / /nonexistent-ovl rw - tmpfs tmpfs rw
3 2 0:40 / /nonexistent-ovl/merged rw - overlay overlay ro,lowerdir=/nonexistent-ovl/A:/nonexistent-ovl/B
4 2 0:41 / /nonexistent-ovl/merged2 rw - overlay overlay ro,lowerdir=/x:/y
5 4 0:31 / /nonexistent-ovl/merged2 rw - tmpfs tmpfs rw
6 3 0:32 / /nonexistent-ovl/merged/sub rw - tmpfs tmpfs rw
"""


def test_find_overlay_mount() -> None:
    entry = find_overlay_mount("/nonexistent-ovl/merged/some/file", MOUNTS)
    assert entry.mount_id == 3 and entry.lowers == ["/nonexistent-ovl/A", "/nonexistent-ovl/B"]
    assert find_overlay_mount("/nonexistent-ovl/merged", MOUNTS).mount_id == 3
    assert find_overlay_mount("/nonexistent-ovl/merged/", MOUNTS).mount_id == 3
    assert find_overlay_mount("/nonexistent-ovl/merged/x/../y", MOUNTS).mount_id == 3


def test_not_overlay() -> None:
    with pytest.raises(NotOverlayError) as info:
        find_overlay_mount("/nonexistent-ovl/other", MOUNTS)
    assert (
        str(info.value)
        == "/nonexistent-ovl/other is not on an overlay mount (it is on tmpfs mounted at /nonexistent-ovl)"
    )
    with pytest.raises(NotOverlayError, match="it is on ext4 mounted at /\\)"):
        find_overlay_mount("/nonexistent-elsewhere", MOUNTS)
    # a prefix of a name is not a parent directory
    with pytest.raises(NotOverlayError, match="tmpfs mounted at /nonexistent-ovl\\)"):
        find_overlay_mount("/nonexistent-ovl/merged-not", MOUNTS)
    # a mount below the overlay's mount point hides it
    with pytest.raises(NotOverlayError, match="tmpfs mounted at /nonexistent-ovl/merged/sub"):
        find_overlay_mount("/nonexistent-ovl/merged/sub/f", MOUNTS)
    # of two mounts on one mount point, the later one is on top
    with pytest.raises(NotOverlayError):
        find_overlay_mount("/nonexistent-ovl/merged2/f", MOUNTS)
    with pytest.raises(NotOverlayError, match="no mount contains it"):
        find_overlay_mount("/x", "")


def test_covering_mount_hides_deeper_one() -> None:
    # tmpfs 7 was mounted on /nonexistent-ovl after the overlay on /nonexistent-ovl/merged
    # (whose parent is 2), so a lookup never reaches the overlay any more.
    text = MOUNTS + "7 1 0:33 / /nonexistent-ovl rw - tmpfs tmpfs rw\n"
    with pytest.raises(NotOverlayError, match="tmpfs mounted at /nonexistent-ovl\\)"):
        find_overlay_mount("/nonexistent-ovl/merged/f", text)


def test_partial_text() -> None:
    # a line pasted on its own: its parent is unknown, it still counts
    line = "3 2 0:40 / /nonexistent-ovl/merged rw - overlay overlay ro,lowerdir=/a:/b\n"
    assert find_overlay_mount("/nonexistent-ovl/merged/f", line).mount_id == 3
    assert visible_mount(parse_mountinfo(line), "/elsewhere") is None


def test_odd_path_in_message() -> None:
    with pytest.raises(NotOverlayError) as info:
        find_overlay_mount("/nonexistent\nline", MOUNTS)
    assert "\n" not in str(info.value)


def test_find_follows_symlinks(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    real = os.path.realpath(tmp_path / "real")
    text = f"1 0 254:0 / / rw - ext4 /dev/vda rw\n2 1 0:40 / {real} rw - overlay overlay ro,lowerdir=/a:/b\n"
    assert find_overlay_mount(str(tmp_path / "link" / "f"), text).mount_id == 2


def test_resolve_in_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "abs").symlink_to("/data")  # absolute targets restart at the root
    (root / "etc" / "rel").symlink_to("../data")
    (root / "loop").symlink_to("loop")
    assert _resolve_in_root(str(root), "/abs/x") == "/data/x"
    assert _resolve_in_root(str(root), "/etc/rel/y") == "/data/y"
    assert _resolve_in_root(str(root), "/missing/../data/./z") == "/data/z"
    assert _resolve_in_root(str(root), "/../..") == "/"
    with pytest.raises(NotOverlayError, match="symbolic links"):
        _resolve_in_root(str(root), "/loop/x")


def test_find_with_pid_root() -> None:
    # /proc/self spelled as a pid: the path is resolved through /proc/PID/root.
    text = "1 0 254:0 / / rw - ext4 /dev/vda rw\n2 1 0:40 / /nonexistent-ovl rw - overlay overlay ro,lowerdir=/a:/b\n"
    entry = find_overlay_mount("/nonexistent-ovl/f", text, proc_root=f"/proc/{os.getpid()}")
    assert entry.mount_id == 2


def test_layer_path_problem() -> None:
    assert layer_path_problem("/ok/layer") is None
    assert layer_path_problem("/with space, comma:colon") is None
    assert "relative" in (layer_path_problem("rel/layer") or "")
    assert "relative" in (layer_path_problem("./rel") or "")
    assert "file descriptor" in (layer_path_problem("/") or "")
    assert "deleted" in (layer_path_problem("/gone (deleted)") or "")
    assert layer_path_problem("") is not None
    for bad in ("rel", "/", "/x (deleted)", ""):
        assert "\n" not in (layer_path_problem(bad) or "")


def test_mount_entry_defaults() -> None:
    entry = MountEntry(1, 0, "0:1", "/", "/", "rw", "ext4", "/dev/x", "rw")
    assert entry.lowers == [] and entry.options == [] and entry.option("x") is None


# --------------------------------------------------------------------------------------------
# the real kernel

_SKIP = cannot_mount_overlay()

# Names that need escaping somewhere: space, comma, colon, backslash, tab, newline, "=", a
# literal "\054", a double colon, a trailing backslash, non-ASCII, and a byte that is not UTF-8.
ODD_NAMES = [
    "a,b",
    "c d",
    "e:f",
    "g\\h",
    "t\tab",
    "n\nl",
    "x=y",
    "oct\\054",
    "dc::x",
    "end\\",
    "caf\u00e9",
    "bad\udcffbyte",
]
_counter = itertools.count()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if _SKIP:
        pytest.skip(_SKIP)
    base = tmp_path_factory.mktemp("ovl-mountinfo")
    with private_tmpfs(base) as root:
        yield Path(root)


def _stack(scratch: Path, names: list[str]) -> Path:
    case = scratch / f"case{next(_counter)}"
    for name in [*names, "U,1 x:\\", "W,1 x:\\", "mnt"]:
        os.makedirs(os.path.join(case, name))
    return case


def _entry_for(mnt: Path) -> MountEntry:
    matches = [e for e in parse_mountinfo(read_mountinfo()) if e.mountpoint == str(mnt)]
    assert matches, f"{mnt} not in mountinfo"
    return matches[-1]


@pytest.mark.kernel
def test_kernel_legacy_odd_names(scratch: Path) -> None:
    case = _stack(scratch, ODD_NAMES)
    regular = [str(case / n) for n in ODD_NAMES[:6]]
    data = [str(case / n) for n in ODD_NAMES[6:]]
    upper, work = str(case / "U,1 x:\\"), str(case / "W,1 x:\\")
    mount_overlay_legacy(case / "mnt", join_lowerdir(regular, data), upper=upper, work=work)
    try:
        entry = _entry_for(case / "mnt")
        assert entry.legacy_lowerdir
        assert (entry.lowers, entry.datas) == (regular, data)
        assert (entry.upperdir, entry.workdir) == (upper, work)
        assert all(layer_path_problem(p) is None for p in [*entry.lowers, *entry.datas])
        assert find_overlay_mount(str(case / "mnt" / "anything")).mount_id == entry.mount_id
    finally:
        umount(case / "mnt")


@pytest.mark.kernel
def test_kernel_fsconfig_odd_names(scratch: Path) -> None:
    case = _stack(scratch, ODD_NAMES)
    regular = [str(case / n) for n in ODD_NAMES[:7]]
    data = [str(case / n) for n in ODD_NAMES[7:]]
    upper, work = str(case / "U,1 x:\\"), str(case / "W,1 x:\\")
    mount_overlay_fsconfig(
        case / "mnt", regular, data, upper=upper, work=work, options=[("metacopy", "on")]
    )
    try:
        entry = _entry_for(case / "mnt")
        assert not entry.legacy_lowerdir
        assert (entry.lowers, entry.datas) == (regular, data)
        assert (entry.upperdir, entry.workdir) == (upper, work)
        assert entry.option("metacopy") == "on" and entry.option("redirect_dir") == "on"
        # colons in lowerdir+ values are shown as they are (not \072)
        assert ",lowerdir+=" + str(case / "e:f") + "," in entry.super_options
    finally:
        umount(case / "mnt")


@pytest.mark.kernel
def test_kernel_relative_legacy(scratch: Path) -> None:
    case = _stack(scratch, ["A", "B", "C"])
    cwd = os.getcwd()
    os.chdir(case)
    try:
        mount_overlay_legacy(case / "mnt", "./A//:B::C")
    finally:
        os.chdir(cwd)
    try:
        entry = _entry_for(case / "mnt")
        assert (entry.lowers, entry.datas) == (["./A//", "B"], ["C"])
        assert all(layer_path_problem(p) for p in ["./A//", "B", "C"])
        assert entry.sb_readonly
    finally:
        umount(case / "mnt")


@pytest.mark.kernel
def test_kernel_fd_layers(scratch: Path) -> None:
    case = _stack(scratch, ["A", "B"])
    a = os.open(case / "A", os.O_PATH | os.O_DIRECTORY)
    detached = open_tree_clone(case / "B")
    try:
        mount_overlay_fsconfig(case / "mnt", [a, detached], source="composefs")
    finally:
        os.close(a)
        os.close(detached)
    try:
        entry = _entry_for(case / "mnt")
        assert entry.source == "composefs"
        # an O_PATH fd shows its path; a detached mount shows "/"
        assert entry.lowers == [str(case / "A"), "/"]
        assert layer_path_problem(entry.lowers[0]) is None
        assert layer_path_problem(entry.lowers[1]) is not None
    finally:
        umount(case / "mnt")


@pytest.mark.kernel
def test_kernel_find_and_pid(scratch: Path) -> None:
    case = _stack(scratch, ["A", "B"])
    mount_overlay_fsconfig(case / "mnt", [case / "A", case / "B"])
    try:
        inside = str(case / "mnt" / "deep" / "path")
        entry = find_overlay_mount(inside)
        assert entry.lowers == [str(case / "A"), str(case / "B")]
        by_pid = find_overlay_mount(inside, proc_root=f"/proc/{os.getpid()}")
        assert by_pid.mount_id == entry.mount_id
        with pytest.raises(NotOverlayError, match=r"it is on tmpfs mounted at "):
            find_overlay_mount(str(case / "A"))
    finally:
        umount(case / "mnt")
