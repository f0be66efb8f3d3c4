"""Known kernel regressions (ovlinspect/kernel/bugs.py): release parsing, ranges, the stack
predicates on in-memory stacks, and what check and --observe say.

The expected verdicts are written from the sources (stable announcements, the stable review
mail, the bug reports), not from the table: e.g. Linux 6.18.9 carries "readdir: require opt-in
for d_type flags" (its announcement lists fs/readdir.c), 7.0.6 does not carry the verity fix
(projectbluefin/dakota#435) and 6.19.14 boots (bootc#2174).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from memstack import DEFAULT_PARAMS, T, layer
from ovlinspect.rules.engine import Engine
from ovlinspect.kernel.bugs import (BUGS, FUSE_SUPER_MAGIC, OVERLAYFS_SUPER_MAGIC, bug_findings,
                                    observed_bug, parse_release)
from ovlinspect.kernel.profile import profile_for_release
from ovlinspect.model.layers import MemoryLayer, Node
from ovlinspect.live.observe import Observation
from ovlinspect.rules.catalogue import RULES
from ovlinspect.model.stack import Stack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUSE = {b.id: b for b in BUGS}["fuse-dtype-whiteouts"]
VERITY = {b.id: b for b in BUGS}["verity-not-loaded"]
NESTED = {b.id: b for b in BUGS}["nested-readdir-errno"]
TMPFS_MAGIC = 0x01021994


# ------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text,expected", [
    ("7.0.3", (7, 0, 3, None, "")),
    ("6.19-rc8", (6, 19, 0, 8, "")),
    ("6.19.0-rc7", (6, 19, 0, 7, "")),
    ("6.12.118+deb12-cloud-amd64", (6, 12, 118, None, "+deb12-cloud-amd64")),
    ("7.0.3-200.fc44.x86_64", (7, 0, 3, None, "-200.fc44.x86_64")),
    ("7.0.0-200.fc44.x86_64", (7, 0, 0, None, "-200.fc44.x86_64")),  # Fedora's 0 is real
    ("6.1.0-28-amd64", (6, 1, None, None, "-28-amd64")),  # Debian 12: an ABI number
    ("6.8.0-45-generic", (6, 8, None, None, "-45-generic")),  # Ubuntu
    ("6.12.0-55.el10.x86_64", (6, 12, None, None, "-55.el10.x86_64")),  # RHEL
    ("7.0", (7, 0, None, None, "")),  # --kernel 7.0: which 7.0.y is not said
    ("6.18.44-fc-v1252", (6, 18, 44, None, "-fc-v1252")),
])
def test_parse_release(text, expected):
    r = parse_release(text)
    assert (r.major, r.minor, r.sublevel, r.rc, r.suffix) == expected
    assert r.text == text


@pytest.mark.parametrize("bad", ["", "linux", "7", "v7.0.3", "7.x"])
def test_parse_release_refuses(bad):
    with pytest.raises(ValueError):
        parse_release(bad)


def test_release_order():
    order = ["6.19-rc7", "6.19-rc8", "6.19", "6.19.1", "6.19.14", "7.0-rc1", "7.0", "7.0.7"]
    keys = [parse_release(t).key() for t in order]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert parse_release("6.19.0").key() == parse_release("6.19").key()
    assert parse_release("6.19-rc10").key() > parse_release("6.19-rc9").key()


# ------------------------------------------------------------------------------- ranges


@pytest.mark.parametrize("release,verdict", [
    ("6.12.118+deb12-cloud-amd64", "unaffected"),  # before c31f91c6af96
    ("6.15.11", "unaffected"),
    ("6.16-rc1", "affected"),
    ("6.16.0", "affected"),
    ("6.17.13", "affected"),  # 6.17.y ended without the fix
    ("6.18.0", "affected"),
    ("6.18.8", "affected"),
    ("6.18.9", "unaffected"),  # the stable backport
    ("6.18.44-fc-v1252", "unaffected"),
    ("6.19.0-rc7", "affected"),
    ("6.19-rc8", "unaffected"),  # vfs-6.19-rc8.fixes
    ("6.19.3", "unaffected"),
    ("7.0.3-200.fc44.x86_64", "unaffected"),
    ("6.18", "possibly"),  # some 6.18.y have it
    ("6.17", "affected"),  # every 6.17.y has it
    ("6.12", "unaffected"),
])
def test_fuse_range(release, verdict):
    assert FUSE.verdict(release) == verdict


@pytest.mark.parametrize("release,verdict", [
    ("6.19.14", "unaffected"),  # bootc#2174: boots
    ("7.0-rc1", "affected"),
    ("7.0.0", "affected"),
    ("7.0.1", "affected"),
    ("7.0.3-arch1-2", "affected"),  # composefs-rs#288's CI kernel
    ("7.0.3-200.fc44.x86_64", "affected"),
    ("7.0.6", "affected"),  # dakota#435: "has NOT landed in v7.0.6"
    ("7.0.7", "unaffected"),
    ("7.0.9", "unaffected"),
    ("7.1-rc2", "affected"),
    ("7.1-rc3", "unaffected"),
    ("7.1.8", "unaffected"),
    ("7.2.2-1-cachyos", "unaffected"),
    ("7.0", "possibly"),  # --kernel 7.0
    ("7.0.0-16-generic", "possibly"),  # Ubuntu 26.04: the ABI number hides the sublevel
])
def test_verity_range(release, verdict):
    assert VERITY.verdict(release) == verdict


@pytest.mark.parametrize("release,verdict", [
    ("6.18.44-fc-v1252", "unaffected"),  # before d25e4b739f83
    ("6.19-rc1", "affected"),
    ("6.19.14", "affected"),  # OSV: >=6.19.0 <7.0.13
    ("7.0.12", "affected"),
    ("7.0.13", "unaffected"),
    ("7.1-rc3", "affected"),
    ("7.1-rc4", "unaffected"),
    ("7.2.2-1-cachyos", "unaffected"),
    ("7.0.0-2005-nvidia-bos", "possibly"),  # the kernel of NVIDIA/NV-Kernels#423
])
def test_nested_range(release, verdict):
    assert NESTED.verdict(release) == verdict


def test_upgrade_advice_names_the_fixed_release_of_the_line():
    assert VERITY.upgrade_text(parse_release("7.0.3")) == "upgrade to 7.0.7 or later"
    assert VERITY.upgrade_text(parse_release("7.1-rc2")) == "upgrade to 7.1-rc3 or later"
    assert FUSE.upgrade_text(parse_release("6.17.2")) == "upgrade to 6.18.9 or later"
    assert FUSE.upgrade_text(parse_release("6.16.0")) == "upgrade to 6.18.9 or later"
    assert FUSE.upgrade_text(parse_release("6.19-rc5")) == "upgrade to 6.19-rc8 or later"


def test_every_entry_is_sourced():
    for bug in BUGS:
        assert bug.introduced_by[:12].strip() and bug.fixed_by[:12].strip()
        assert all(c in "0123456789abcdef" for c in bug.introduced_by[:12])
        assert all(c in "0123456789abcdef" for c in bug.fixed_by[:12])
        assert bug.sources
        parse_release(bug.introduced)
        for f in bug.fixed_in:
            parse_release(f)
    assert RULES["kernel-bug"].severity == "error"


# ------------------------------------------------------------------------------- predicates


def _engine(lowers, upper=None, options="", kernel="6.18.3", data=()):
    return Engine(Stack(lowers=list(lowers), upper=upper, data=list(data), options=options,
                        params=DEFAULT_PARAMS), kernel=kernel)


def _fuse(m: MemoryLayer) -> MemoryLayer:
    m.fs_magic = FUSE_SUPER_MAGIC
    return m


def _whiteout_stack(kernel="6.18.3", fuse=True, whiteout=True):
    top = layer("top", {"/etc": "dir", "/etc/gone": "wh"} if whiteout else {"/etc": "dir"})
    base = layer("base", {"/etc": "dir", "/etc/gone": b"old\n", "/etc/kept": b"x\n"})
    if fuse:
        _fuse(top)
    return _engine([top, base], kernel=kernel)


def test_fuse_predicate_needs_fuse_and_whiteouts():
    assert FUSE.trigger(_whiteout_stack()) == "lower 0 (top) is on FUSE and holds whiteouts (first: /etc/gone)"
    assert FUSE.trigger(_whiteout_stack(fuse=False)) is None
    assert FUSE.trigger(_whiteout_stack(whiteout=False)) is None
    # a FUSE layer whose whiteouts are xattr whiteouts (zero-size file + overlay.whiteout)
    top = _fuse(layer("top", {"/d": ("dir", {T + b"opaque": b"x"}),
                              "/d/gone": ("file", {T + b"whiteout": b""})}))
    assert "holds whiteouts (first: /d/gone)" in FUSE.trigger(_engine([top, layer("b", {"/d": "dir"})]))


def test_fuse_predicate_looks_at_the_layers_readdir_merges_only():
    # data-only layers are never listed by readdir
    data = _fuse(layer("objects", {"/x": "wh"}))
    lower = layer("image", {"/f": b"1"})
    assert FUSE.trigger(_engine([lower], data=[data], options="metacopy=on")) is None


def test_fuse_predicate_reads_statfs_of_disk_layers(tmp_path):
    from ovlinspect.kernel.bugs import layer_fs_type, statfs_type

    # whatever holds tmp_path is not FUSE; /proc is procfs (0x9fa0)
    assert statfs_type("/proc") == 0x9FA0
    assert statfs_type(str(tmp_path / "missing")) is None
    from ovlinspect.model.layers import DiskLayer

    d = DiskLayer(str(tmp_path))
    assert layer_fs_type(d) not in (None, FUSE_SUPER_MAGIC)


def _verity_stack(kernel="7.0.3", verity="on", digest=True):
    value = bytes([0, 36, 0, 1]) + b"\x11" * 32 if digest else b""
    image = layer("image", {"/usr": "dir", "/usr/bin": "dir",
                            "/usr/bin/sh": ("file", {T + b"metacopy": value,
                                                     T + b"redirect": b"/ab/cdef"}, {"size": 5})})
    objects = layer("objects", {"/ab": "dir", "/ab/cdef": b"data\n"})
    return _engine([image], data=[objects], options=f"metacopy=on,verity={verity}", kernel=kernel)


def test_verity_predicate():
    assert VERITY.trigger(_verity_stack()) == ("verity=on and metacopy files with fs-verity "
                                               "digests (first: lower 0 (image):/usr/bin/sh)")
    assert "verity=require" in VERITY.trigger(_verity_stack(verity="require"))
    assert VERITY.trigger(_verity_stack(verity="off")) is None
    assert VERITY.trigger(_verity_stack(digest=False)) is None


def test_nested_predicate():
    inner = layer("inner", {"/d": "dir", "/d/a": b"1"})
    inner.fs_magic = OVERLAYFS_SUPER_MAGIC
    assert NESTED.trigger(_engine([inner, layer("b", {})], kernel="7.0.3")) == (
        "lower 0 (inner) is itself on an overlay filesystem (overlay on overlay)")
    assert NESTED.trigger(_engine([layer("a", {}), layer("b", {})], kernel="7.0.3")) is None
    up = layer("up", {})
    up.fs_magic = OVERLAYFS_SUPER_MAGIC
    assert "upper" in NESTED.trigger(_engine([layer("a", {})], upper=up, kernel="7.0.3"))


# ------------------------------------------------------------------------------- findings


def test_findings_need_both_the_range_and_the_stack():
    hit = bug_findings(_whiteout_stack("6.18.3"))
    assert [f.rule for f in hit] == ["kernel-bug"]
    msg = hit[0].message
    assert "kernel 6.18.3 (the running kernel) has the overlayfs regression" in msg
    assert "c31f91c6af96" in msg and "c644bce62b9c" in msg
    assert "upgrade to 6.18.9 or later" in msg
    assert bug_findings(_whiteout_stack("6.18.9")) == []
    assert bug_findings(_whiteout_stack("6.18.3", fuse=False)) == []
    v = bug_findings(_verity_stack("7.0.3"))
    assert len(v) == 1 and "upgrade to 7.0.7 or later" in v[0].message
    assert "f77f281b6118" in v[0].message and "0c8c88b8eb82" in v[0].message
    assert bug_findings(_verity_stack("6.19.14")) == []
    assert bug_findings(_verity_stack("7.0.7")) == []


def test_possibly_and_distro_wording():
    msg = bug_findings(_verity_stack("7.0.0-16-generic"))[0].message
    assert "may have the overlayfs regression" in msg
    assert "a distribution kernel may carry the fix: look for '0c8c88b8eb82" in msg
    exact = bug_findings(_verity_stack("7.0.3"))[0].message
    assert " has the overlayfs regression" in exact and "distribution" not in exact


def test_the_kernel_asked_about_wins_over_the_running_one():
    from ovlinspect.kernel.profile import profile_for

    e = _verity_stack("6.18.44")  # a running kernel without the bug
    assert bug_findings(e) == []
    asked = Engine(e.stack, kernel="6.18.44",
                   profile=profile_for((7, 0), chosen_by="--kernel", release="7.0.3"))
    f = bug_findings(asked)
    assert len(f) == 1 and "kernel 7.0.3 (asked about with --kernel)" in f[0].message


def test_stack_findings_and_check_report_it():
    e = _verity_stack("7.0.3")
    assert "kernel-bug" in [f.rule for f in e.stack_findings()]
    assert "kernel-bug" in [f.rule for f in e.check()]
    # a refused mount has no kernel-bug finding (nothing is read)
    import dataclasses

    stack = dataclasses.replace(e.stack, refusal=("EINVAL", "overlayfs: workdir is in-use"))
    refused = Engine(stack, kernel="7.0.3")
    assert refused.mount_errno == "EINVAL"
    assert "kernel-bug" not in [f.rule for f in refused.stack_findings()]


def _cli(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "ovlinspect", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


STACK_TOML = """version = 1
options = "metacopy=on,verity=require"
[params]
metacopy = "N"
redirect_dir = "N"
[[layer]]
role = "lower"
name = "image"
[[layer.entry]]
path = "/bin/sh"
type = "file"
size = 5
xattrs = {{ "trusted.overlay.metacopy" = "{mc}", "trusted.overlay.redirect" = "/ab/cdef" }}
[[layer]]
role = "data"
name = "objects"
[[layer.entry]]
path = "/ab/cdef"
type = "file"
content = "data\\n"
"""


def test_check_cli_with_kernel(tmp_path):
    # the metacopy xattr written as the stack file format escapes bytes
    mc = "\\\\x00\\\\x24\\\\x00\\\\x01" + "\\\\x11" * 32
    p = tmp_path / "stack.toml"
    p.write_text(STACK_TOML.format(mc=mc))
    r = _cli(["check", str(p), "--kernel", "7.0.3"], tmp_path)
    assert r.returncode == 1, r.stderr
    assert "error   kernel-bug" in r.stdout, r.stdout
    assert "upgrade to 7.0.7 or later" in r.stdout
    r2 = _cli(["check", str(p), "--kernel", "7.0.7"], tmp_path)
    assert "kernel-bug" not in r2.stdout, r2.stdout
    r3 = _cli(["check", str(p), "--kernel", "7.0", "--json"], tmp_path)
    assert "may have the overlayfs regression" in r3.stdout, r3.stdout + r3.stderr


# ------------------------------------------------------------------------------- --observe


def test_observe_evidence_names_the_bug():
    e = _whiteout_stack("6.17.4")
    ob = Observation(path=(b"etc",), kind="dir", entries=[b"gone", b"kept"])
    line = observed_bug(e, [("entries", [b"kept"], [b"gone", b"kept"])], ob)
    assert line and line.startswith("evidence: a known kernel bug is the cause: "
                                    "'FUSE lower layers: whiteouts listed as c????????? entries'")
    assert "upgrade to 6.18.9 or later" in line
    # a mismatch of another shape does not fit it
    assert observed_bug(e, [("mode", 0o644, 0o600)], ob) is None
    # nor does a kernel with the fix
    assert observed_bug(_whiteout_stack("6.18.9"), [("entries", [], [b"gone"])], ob) is None


def test_observe_evidence_verity():
    e = _verity_stack("7.0.2")
    ob = Observation(path=(b"usr", b"bin", b"sh"), kind="file", open_errno="EIO")
    line = observed_bug(e, [("open", None, "EIO")], ob)
    assert line and "verity" in line and "upgrade to 7.0.7 or later" in line
    ok = Observation(path=(b"usr", b"bin", b"sh"), kind="file")
    assert observed_bug(e, [("size", 5, 6)], ok) is None


def test_observe_evidence_nested_readdir():
    inner = layer("inner", {"/d": "dir"})
    inner.fs_magic = OVERLAYFS_SUPER_MAGIC
    e = _engine([inner, layer("b", {"/d": "dir"})], kernel="7.0.5")
    ob = Observation(path=(b"d",), kind="dir", readdir_errno="E2BIG")
    line = observed_bug(e, [("readdir", None, "E2BIG")], ob)
    assert line and "overlay on overlay" in line and "upgrade to 7.0.13 or later" in line
    assert observed_bug(e, [("mode", 0o755, 0o700)], ob) is None


def test_observe_evidence_uses_the_running_kernel_not_the_asked_one():
    from ovlinspect.kernel.profile import profile_for

    base = _verity_stack("6.19.14")
    asked = Engine(base.stack, kernel="6.19.14",
                   profile=profile_for((7, 0), chosen_by="--kernel", release="7.0.3"))
    ob = Observation(path=(b"usr", b"bin", b"sh"), kind="file", open_errno="EIO")
    assert observed_bug(asked, [("open", None, "EIO")], ob) is None


def test_hostile_names_are_escaped_in_the_message():
    top = _fuse(layer("top", {}))
    top.add((b"d\xff\n",), Node("dir", 0o755))
    top.add((b"d\xff\n", b"x\x1b[2J"), Node("chardev", 0o600, rdev=(0, 0)))
    msg = bug_findings(_engine([top, layer("b", {})], kernel="6.17.1"))[0].message
    assert "\n" not in msg and "\x1b" not in msg and "\udcff" not in msg
    assert "(first: /d" in msg
