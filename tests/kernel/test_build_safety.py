"""`ovlinspect build` as root is safe by default: a stack file from a bug report cannot plant
device nodes (other than 0/0 whiteouts), setuid/setgid files, security.* xattrs (file
capabilities) or world-writable directories; each kind is counted on one line, and
`--unsafe-exact` reproduces them all."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct

import pytest

from ovlinspect.cli import main

pytestmark = pytest.mark.kernel

# struct vfs_cap_data, revision 2, effective, permitted = CAP_SYS_ADMIN (21)
CAP = struct.pack("<IIIII", 0x02000001, 1 << 21, 0, 0, 0).hex()

STACK = f'''version = 1
[[layer]]
role = "lower"
name = "evil"
[[layer.entry]]
path = "/dev"
type = "dir"
[[layer.entry]]
path = "/dev/sda"
type = "blockdev"
rdev = "8:0"
mode = "0666"
[[layer.entry]]
path = "/dev/mem"
type = "chardev"
rdev = "1:1"
mode = "0666"
[[layer.entry]]
path = "/gone"
type = "whiteout"
[[layer.entry]]
path = "/sh"
type = "file"
mode = "4755"
content = "#!/bin/sh\\n"
[[layer.entry]]
path = "/sg"
type = "file"
mode = "2711"
[[layer.entry]]
path = "/tmp"
type = "dir"
mode = "1777"
[[layer.entry]]
path = "/cap"
type = "file"
mode = "0755"
xattrs_hex = {{ "security.capability" = "{CAP}", "user.note" = "{b'kept'.hex()}" }}
[[layer.entry]]
path = "/plain"
type = "file"
mode = "0644"
[[layer]]
role = "lower"
name = "base"
[[layer.entry]]
path = "/gone"
type = "file"
'''


def build(tmpfs: str, *flags: str) -> tuple[int, str, str, str]:
    src = os.path.join(tmpfs, "evil.toml")
    with open(src, "w") as f:
        f.write(STACK)
    dest = os.path.join(tmpfs, "out" + "".join(flags).replace("-", ""))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["build", src, dest, *flags])
    layer = next(os.path.join(dest, d) for d in os.listdir(dest) if d.endswith("-evil"))
    return rc, out.getvalue(), err.getvalue(), layer


def mode(path: str) -> int:
    return os.lstat(path).st_mode


def test_safe_build_skips_and_counts_each_kind(tmpfs: str) -> None:
    rc, out, err, layer = build(tmpfs)
    assert rc == 0, err
    lines = out.splitlines()
    assert "skipped 2 device nodes other than the 0/0 whiteout (safe build; --unsafe-exact reproduces them)" in lines
    assert "stripped the setuid/setgid bits of 2 entries (safe build; --unsafe-exact reproduces them)" in lines
    assert "skipped 1 security.* xattr (safe build; --unsafe-exact reproduces them)" in lines
    assert "removed world write permission from 1 directory (safe build; --unsafe-exact reproduces them)" in lines
    assert not os.path.lexists(os.path.join(layer, "dev", "sda"))
    assert not os.path.lexists(os.path.join(layer, "dev", "mem"))
    gone = os.lstat(os.path.join(layer, "gone"))  # the whiteout is kept: it is what overlay needs
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert stat.S_IMODE(mode(os.path.join(layer, "sh"))) == 0o755
    assert stat.S_IMODE(mode(os.path.join(layer, "sg"))) == 0o711
    assert stat.S_IMODE(mode(os.path.join(layer, "tmp"))) == 0o1775
    names = os.listxattr(os.path.join(layer, "cap"), follow_symlinks=False)
    assert "security.capability" not in names and "user.note" in names
    assert stat.S_IMODE(mode(os.path.join(layer, "plain"))) == 0o644


def test_unsafe_exact_reproduces_everything(tmpfs: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("device nodes and file capabilities need root")
    rc, out, err, layer = build(tmpfs, "--unsafe-exact")
    assert rc == 0, err
    assert "skipped" not in out and "stripped" not in out and "removed" not in out
    sda = os.lstat(os.path.join(layer, "dev", "sda"))
    assert stat.S_ISBLK(sda.st_mode) and (os.major(sda.st_rdev), os.minor(sda.st_rdev)) == (8, 0)
    assert stat.S_IMODE(sda.st_mode) == 0o666
    assert stat.S_ISCHR(mode(os.path.join(layer, "dev", "mem")))
    assert stat.S_IMODE(mode(os.path.join(layer, "sh"))) == 0o4755
    assert stat.S_IMODE(mode(os.path.join(layer, "sg"))) == 0o2711
    assert stat.S_IMODE(mode(os.path.join(layer, "tmp"))) == 0o1777
    assert os.getxattr(os.path.join(layer, "cap"), "security.capability").hex() == CAP
