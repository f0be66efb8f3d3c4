"""Overlay file handles (``struct ovl_fb``) and the work-directory readers, without mounts.

The byte strings are built by hand from the kernel's layout (overlayfs.h): version, magic 0xfb,
len (the whole structure), flags (bit 0 big endian, bit 1 any endian, bit 2 upper path),
type, a 16-byte filesystem UUID, then the exportfs handle.  The mount-time predictions are
judged by the kernel in tests/kernel/test_estale.py ("stale-origin", "incompat-workdir",
"workdir-in-use", "workdir-shared", "index-entry-invalid"); the rules without a mount here:
"index-entry-stale" (a ``#`` leftover) and "index-fallback".
"""

from __future__ import annotations

import os
import sys

import pytest

from ovlinspect.kernel.workdir import incompat_features, index_entries
from ovlinspect.model.layers import Node
from ovlinspect.model.xattrs import decode_fh, decode_xattrs, encode_fh

UUID = bytes(range(0x10, 0x20))
FID = bytes.fromhex("cac66f85" "02000000" "00000000")  # tmpfs: generation, 64-bit inode
LE = sys.byteorder == "little"


def fb(version=0, magic=0xFB, length=None, flags=0, ftype=1, uuid=UUID, fid=FID, extra=b""):
    length = 21 + len(fid) if length is None else length
    return bytes([version, magic, length, flags, ftype]) + uuid + fid + extra


def test_a_tmpfs_origin_decodes():
    fh = decode_fh(fb())
    assert (fh.version, fh.magic, fh.length, fh.type, fh.uuid, fh.fid) == (0, 0xFB, 33, 1, UUID, FID)
    assert fh.status == "" and not fh.path_upper
    assert fh.summary() == ("origin: fs uuid 10111213-1415-1617-1819-1a1b1c1d1e1f, "
                            "handle type 0x1, len 12")


def test_the_kernel_compares_len_bytes_only():
    assert decode_fh(fb(extra=b"junk")).wire == fb()


@pytest.mark.parametrize("value, status", [
    (b"", "empty"),  # copied up, origin unknown
    (fb()[:20], "invalid"),  # shorter than the header
    (fb(length=40), "invalid"),  # len says more bytes than there are
    (fb(magic=0xFA), "invalid"),
    (fb(version=1), "unknown"),  # a newer version: origin unknown
    (fb(flags=0x08), "unknown"),  # an unknown flag
    (fb(flags=0x02 | (0 if LE else 1)), ""),  # any endian
    (fb(flags=1 if LE else 0), "unknown"),  # written on the other byte order
    (fb(flags=0x04 | (0 if LE else 1)), ""),  # an upper handle
])
def test_what_the_kernel_accepts(value, status):
    assert decode_fh(value).status == status


def test_encode_as_the_kernel_writes():
    assert encode_fh(1, FID, UUID) == fb(flags=0 if LE else 1)
    assert encode_fh(1, FID, None) == fb(uuid=bytes(16), flags=0 if LE else 1)  # uuid=off
    assert decode_fh(encode_fh(1, FID, UUID, upper=True)).path_upper


def test_the_view_shows_decoded_handles():
    node = Node("file", 0o644, 3, xattrs=((b"trusted.overlay.origin", fb()),
                                          (b"trusted.overlay.upper", fb(magic=1))))
    origin, upper = decode_xattrs(node, b"trusted.overlay.")
    assert origin.summary.startswith("origin: fs uuid 10111213-") and origin.active
    assert upper.summary.startswith("upper: invalid file handle (magic 0x01")
    assert not upper.active and "invalid origin" in upper.note


def test_incompat_features(tmp_path):
    w = tmp_path / "w"
    (w / "work").mkdir(parents=True)
    assert incompat_features(str(w)) is None
    (w / "work" / "incompat").mkdir()
    assert incompat_features(str(w)) is None  # empty: cleaned up, no refusal
    (w / "work" / "incompat" / ".hidden").mkdir()
    assert incompat_features(str(w)) is None  # dot names are skipped
    (w / "work" / "incompat" / "volatile").mkdir()
    assert incompat_features(str(w)) == b"volatile"


def test_incompat_is_not_followed_through_a_symlink(tmp_path):
    real = tmp_path / "elsewhere" / "incompat" / "volatile"
    real.mkdir(parents=True)
    (tmp_path / "w" / "work").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere" / "incompat", tmp_path / "w" / "work" / "incompat")
    assert incompat_features(str(tmp_path / "w")) is None


def test_index_entries(tmp_path):
    index = tmp_path / "index"
    index.mkdir()
    (index / fb().hex()).write_bytes(b"")
    (index / ("#" + "1" * 3)).write_bytes(b"")
    (index / "notes.txt").write_bytes(b"")
    (index / ("zz" * 30)).write_bytes(b"")
    got = {name: problem for name, _, problem in index_entries(str(index))}
    assert got == {b"#111": "temp", b"notes.txt": "invalid", b"zz" * 30: "invalid"}


def test_uuid_off_across_filesystems_on_7_0():
    """6.18 falls back to uuid=null when uuid=off spans filesystems (origins carry the UUID);
    7.0 (869056dbbd63) keeps uuid=off with index=on.  On one filesystem uuid=off always holds."""
    from ovlinspect.kernel.origin import origin_uuid_used
    from ovlinspect.kernel.profile import profile_for
    from ovlinspect.kernel.params import Options

    off_index = Options(index=True, uuid="off")
    assert origin_uuid_used(off_index, profile_for((6, 18)), same_fs=False) is True
    assert origin_uuid_used(off_index, profile_for((7, 0)), same_fs=False) is False
    assert origin_uuid_used(off_index, profile_for((6, 18)), same_fs=True) is False
    assert origin_uuid_used(Options(index=True, uuid="on"), profile_for((7, 0)), same_fs=True)
