"""composefs dump parsing, and the mapping to what the EROFS image carries."""

from __future__ import annotations

import gzip
import io

import pytest

from ovlinspect.sources.composefs import (
    ROOT_WHITEOUTS,
    DumpError,
    DumpLayer,
    escape,
    load_dump,
    load_object_store,
    metacopy_value,
    parse_dump,
)
from ovlinspect.model.layers import DiskLayer, MemoryLayer, iter_tree

DIGEST = "35d02f81325122d77ec1d11baba655bc9bf8a891ab26119a41c50fa03ddfb408"

ROOT = "/ 4096 40755 3 0 0 0 1695372970.944925700 - - -"

SAMPLE = "\n".join(
    [
        ROOT + r" security.selinux=system_u:object_r:root_t:s0\x00",
        "/a\\x20dir 27 40755 2 1000 1000 0 1694598852.869646118 - - -",
        f"/a\\x20dir/a-file 259 100644 1 1000 1000 0 1695368732.385062094 35/d02f81 - {DIGEST} user.note=hello",
        "/a\\x20dir/plain 12 100600 1 0 0 0 1.0 ab/cdef - -",
        f"/a-hardlink 259 @100644 1 1000 1000 0 1695368732.385062094 /a\\x20dir/a-file - {DIGEST}",
        "/inline.txt 10 100644 1 1000 1000 0 1697019909.446146440 - some-text\\n -",
        "/empty 0 100644 1 0 0 0 1.0 - - -",
        "/link 12 120777 1 0 0 0 1.0 /inline.txt - -",
        "/null 0 20666 1 0 0 259 1.0 - - -",
        "/fifo 0 10644 1 0 0 0 1.0 - - -",
        "/etc 0 40755 2 0 0 0 1.0 - - - trusted.overlay.redirect=/x user.overlay.opaque=y",
        "/etc/gone 0 20000 1 0 0 0 1.0 - - -",
        "/0a 0 40700 2 0 0 0 1.0 - - -",
    ]
) + "\n"


def x(node, name):
    return node.xattr(name)


# ------------------------------------------------------------------------------- parsing


def test_parse_fields_and_escapes():
    entries = parse_dump(SAMPLE)
    assert [e.line for e in entries] == list(range(1, 14))
    root, adir, afile = entries[:3]
    assert root.path == () and root.kind == "dir" and root.mode == 0o40755
    assert root.xattrs == ((b"security.selinux", b"system_u:object_r:root_t:s0\x00"),)
    assert root.mtime == (1695372970, 944925700)
    assert adir.path == (b"a dir",) and adir.uid == 1000
    assert afile.path == (b"a dir", b"a-file")
    assert afile.payload == b"35/d02f81" and afile.content is None
    assert afile.digest == bytes.fromhex(DIGEST)
    assert afile.xattrs == ((b"user.note", b"hello"),)
    inline = next(e for e in entries if e.path == (b"inline.txt",))
    assert inline.content == b"some-text\n" and inline.size == 10
    hl = next(e for e in entries if e.path == (b"a-hardlink",))
    assert hl.hardlink == (b"a dir", b"a-file") and hl.mode == 0o100644
    null = next(e for e in entries if e.path == (b"null",))
    assert null.kind == "chardev" and null.rdev == 259


@pytest.mark.parametrize(
    "raw, want",
    [
        (r"a\\b", b"a\\b"),
        (r"\n\r\t", b"\n\r\t"),
        (r"\x00\xff\x3D", b"\x00\xff="),
        ("plain", b"plain"),
    ],
)
def test_escapes_in_content(raw, want):
    text = f"{ROOT}\n/f {len(want)} 100644 1 0 0 0 0.0 - {raw} -\n"
    layer = load_dump(text)
    assert layer.read((b"f",)) == want


def test_dash_means_unset_and_escaped_dash_is_literal():
    text = f"{ROOT}\n/f 1 100644 1 0 0 0 0.0 - \\x2d -\n/g 1 100644 1 0 0 0 0.0 - - -\n"
    a, b = parse_dump(text)[1:]
    assert a.content == b"-"
    assert b.content is None and b.payload is None and b.digest is None


def test_xattr_key_with_escaped_equals_and_value_with_equals():
    text = ROOT + r" user.a\x3db=c=d user.empty=" + "\n"
    (root,) = parse_dump(text)
    assert root.xattrs == ((b"user.a=b", b"c=d"), (b"user.empty", b""))


def test_sources_bytes_file_textio_gzip(tmp_path):
    p = tmp_path / "img.dump"
    p.write_text(SAMPLE)
    g = tmp_path / "img.dump.gz"
    g.write_bytes(gzip.compress(SAMPLE.encode()))
    want = [(e.path, e.mode) for e in parse_dump(SAMPLE)]
    for src in (SAMPLE.encode(), str(p), p, io.StringIO(SAMPLE), io.BytesIO(SAMPLE.encode()), g):
        assert [(e.path, e.mode) for e in parse_dump(src)] == want
    layer = load_dump(p, label="image")
    assert layer.label == "image" and layer.source == str(p)
    assert load_dump(p).label == "img.dump"


def test_no_trailing_newline_and_blank_lines_ok():
    assert len(parse_dump(SAMPLE.rstrip("\n"))) == 13
    assert len(parse_dump(SAMPLE.replace("\n/etc ", "\n\n/etc "))) == 13


def test_hardlink_may_point_forward():
    text = f"{ROOT}\n/h 0 @100644 0 0 0 0 0.0 /f - -\n/f 3 100644 2 0 0 0 0.0 - abc -\n"
    layer = load_dump(text)
    assert layer.node((b"h",)) == layer.node((b"f",))
    assert layer.read((b"h",)) == b"abc"


# -------------------------------------------------------------------------------- errors


def err(text):
    with pytest.raises(DumpError) as ei:
        load_dump(text)
    msg = str(ei.value)
    assert "\n" not in msg
    return ei.value


def test_parent_missing_before_child():
    e = err(f"{ROOT}\n/a/b 0 100644 1 0 0 0 0.0 - - -\n/a 0 40755 2 0 0 0 0.0 - - -\n")
    assert str(e) == "dump line 2: parent /a of /a/b is not defined before it"
    assert e.line == 2 and isinstance(e, ValueError)


def test_parent_not_a_directory():
    e = err(f"{ROOT}\n/a 0 100644 1 0 0 0 0.0 - - -\n/a/b 0 100644 1 0 0 0 0.0 - - -\n")
    assert str(e) == "dump line 3: parent /a of /a/b is a file, not a directory (line 2)"


@pytest.mark.parametrize(
    "line, needle",
    [
        ("/f 0 100644 1 0 0 0 0.0 - -", "10 fields, want at least 11"),
        ("/f 0 100644 1 0 0 0 0.0 - \\q -", "unsupported escape \\q"),
        ("/f 0 100644 1 0 0 0 0.0 - \\x4 -", "bad escape"),
        ("/f 0 100644 1 0 0 0 0.0 - \\x4g -", "bad escape"),
        ("/f 0 100644 1 0 0 0 0.0 - abc\\ -", "backslash at the end"),
        ("/f 2 100644 1 0 0 0 0.0 - abc -", "CONTENT is 3 bytes but SIZE is 2"),
        ("/f 0 100648 1 0 0 0 0.0 - - -", "MODE 100648 is not an octal number"),
        ("/f 0 644 1 0 0 0 0.0 - - -", "has no valid file type"),
        ("/f x 100644 1 0 0 0 0.0 - - -", "SIZE x is not a decimal number"),
        ("/f 0 100644 1 0 0 0 12 - - -", "MTIME 12 is not sec.nsec"),
        ("/f 0 100644 1 0 0 0 0.0 - - abcd", "DIGEST has 4 hex digits"),
        ("/f 0 100644 1 0 0 0 0.0 - - zz", "DIGEST zz is not hex"),
        ("f 0 100644 1 0 0 0 0.0 - - -", "PATH f is not absolute"),
        ("/a/../f 0 100644 1 0 0 0 0.0 - - -", "has a '..' component"),
        ("/f 0 100644 1 0 0 0 0.0 - - - =v", "empty name"),
        ("/f 0 100644 1 0 0 0 0.0 - - - user.a=1 noeq", "xattr noeq has no '=' (NAME=VALUE)"),
        ("/d 0 @40755 1 0 0 0 0.0 /x - -", "a directory cannot be a hard link"),
        ("/h 0 @100644 1 0 0 0 0.0 - - -", "has no target"),
        ("/h 0 @100644 1 0 0 0 0.0 /nowhere - -", "hard link /h points to /nowhere, which the dump does not define"),
        ("/ 0 40755 1 0 0 0 0.0 - - -", "root / is defined again (first on line 1)"),
    ],
)
def test_bad_lines(line, needle):
    e = err(f"{ROOT}\n{line}\n")
    assert str(e).startswith("dump line 2: ")
    assert needle in str(e)


def test_root_rules():
    assert "first entry must be the root" in str(err("/a 0 40755 1 0 0 0 0.0 - - -\n"))
    assert "root / must be a directory" in str(err("/ 0 100644 1 0 0 0 0.0 - - -\n"))
    assert str(err("")) == "dump: no entries (a dump starts with the root /)"


def test_duplicate_path():
    e = err(f"{ROOT}\n/a 0 100644 1 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -\n")
    assert str(e) == "dump line 3: /a is already defined on line 2"


def test_hardlink_to_directory_and_loop():
    e = err(f"{ROOT}\n/d 0 40755 1 0 0 0 0.0 - - -\n/h 0 @100644 1 0 0 0 0.0 /d - -\n")
    assert str(e) == "dump line 3: hard link /h points to directory /d"
    e = err(f"{ROOT}\n/a 0 @100644 1 0 0 0 0.0 /b - -\n/b 0 @100644 1 0 0 0 0.0 /a - -\n")
    assert "loop of hard links" in str(e)


def test_error_shows_escaped_path():
    e = err(f"{ROOT}\n/a\\x20b/c\\xff 0 100644 1 0 0 0 0.0 - - -\n")
    assert str(e) == "dump line 2: parent /a\\x20b of /a\\x20b/c\\xff is not defined before it"


# ------------------------------------------------------------------------------- mapping


@pytest.fixture(scope="module")
def layer() -> DumpLayer:
    return load_dump(SAMPLE, label="cfs")


def test_is_a_memory_layer(layer):
    assert isinstance(layer, MemoryLayer) and layer.label == "cfs"


def test_external_file_gets_metacopy_with_digest_and_redirect(layer):
    n = layer.node((b"a dir", b"a-file"))
    assert n.kind == "file" and n.size == 259 and n.mode == 0o644 and n.uid == 1000
    mc = x(n, b"trusted.overlay.metacopy")
    assert mc[:4] == bytes([0, 36, 0, 1]) and len(mc) == 36
    assert mc[4:] == bytes.fromhex(DIGEST)
    assert x(n, b"trusted.overlay.redirect") == b"/35/d02f81"
    # user.* xattrs are not overlay xattrs: kept in image_xattrs only
    assert x(n, b"user.note") is None
    assert (b"user.note", b"hello") in layer.image_xattrs[(b"a dir", b"a-file")]
    assert layer.object_path((b"a dir", b"a-file")) == b"35/d02f81"


def test_external_file_without_digest_gets_empty_metacopy(layer):
    n = layer.node((b"a dir", b"plain"))
    assert x(n, b"trusted.overlay.metacopy") == b""
    assert x(n, b"trusted.overlay.redirect") == b"/ab/cdef"
    assert n.mode == 0o600


def test_metacopy_value_header():
    assert metacopy_value(None) == b""
    d = bytes(range(32))
    assert metacopy_value(d) == b"\x00\x24\x00\x01" + d
    d64 = bytes(64)
    assert metacopy_value(d64) == b"\x00\x44\x00\x02" + d64


def test_sha512_digest():
    text = f"{ROOT}\n/f 5 100644 1 0 0 0 0.0 ab/cd - {'ab' * 64}\n"
    n = load_dump(text).node((b"f",))
    assert x(n, b"trusted.overlay.metacopy")[:4] == bytes([0, 68, 0, 2])


def test_hardlink_is_the_same_inode(layer):
    assert layer.node((b"a-hardlink",)) == layer.node((b"a dir", b"a-file"))
    assert layer.object_path((b"a-hardlink",)) == b"35/d02f81"


def test_inline_empty_symlink_devices(layer):
    inline = layer.node((b"inline.txt",))
    assert inline.kind == "file" and inline.xattrs == () and inline.size == 10
    assert layer.read((b"inline.txt",)) == b"some-text\n"
    assert layer.object_path((b"inline.txt",)) is None
    empty = layer.node((b"empty",))
    assert empty.kind == "file" and empty.size == 0 and empty.xattrs == ()
    link = layer.node((b"link",))
    assert link.kind == "symlink" and link.target == b"/inline.txt" and link.size == 11
    null = layer.node((b"null",))
    assert null.kind == "chardev" and null.rdev == (1, 3) and null.mode == 0o666
    assert layer.node((b"fifo",)).kind == "fifo"


def test_whiteout_becomes_escaped_xattr_whiteout(layer):
    n = layer.node((b"etc", b"gone"))
    assert n.kind == "file" and n.size == 0 and not n.is_whiteout_dev
    assert n.xattrs == (
        (b"trusted.overlay.overlay.whiteout", b""),
        (b"user.overlay.whiteout", b""),
    )


def test_parent_of_whiteout_is_marked_and_user_overlay_xattrs_escaped(layer):
    etc = layer.node((b"etc",))
    assert dict(etc.xattrs) == {
        # the dump's own trusted.overlay.redirect, escaped
        b"trusted.overlay.overlay.redirect": b"/x",
        b"trusted.overlay.overlay.whiteouts": b"",
        b"trusted.overlay.overlay.opaque": b"x",
        b"user.overlay.whiteouts": b"",
        # the dump's user.overlay.opaque=y is overwritten by the whiteout marker
        b"user.overlay.opaque": b"x",
    }
    assert x(etc, b"trusted.overlay.redirect") is None


def test_dump_trusted_overlay_xattrs_are_escaped():
    text = ROOT + " trusted.overlay.opaque=y trusted.overlay.overlay.foo=1 user.overlay.origin=z\n"
    root = load_dump(text).node(())
    assert dict(root.xattrs) == {
        b"trusted.overlay.opaque": b"y",  # the image writer's own marker
        b"trusted.overlay.overlay.opaque": b"y",
        b"trusted.overlay.overlay.overlay.foo": b"1",
        b"user.overlay.origin": b"z",
    }


def test_root_is_opaque_with_256_whiteouts(layer):
    root = layer.node(())
    assert root.xattrs == ((b"trusted.overlay.opaque", b"y"),)
    names = set(layer.listdir(()))
    assert set(ROOT_WHITEOUTS) - {b"0a"} <= names
    assert len(layer.root_whiteouts) == 255 and b"0a" not in layer.root_whiteouts
    wh = layer.node((b"ab",))
    assert wh.is_whiteout_dev and wh.mode == 0o644 and wh.xattrs == ()
    # the dump's own /0a stays a directory
    assert layer.node((b"0a",)).kind == "dir"
    # stubs inherit the root's security.selinux in the image
    assert layer.image_xattrs[(b"ff",)] == ((b"security.selinux", b"system_u:object_r:root_t:s0\x00"),)


def test_root_whiteouts_take_root_owner():
    text = "/ 0 40755 1 7 8 0 0.0 - - -\n"
    wh = load_dump(text).node((b"00",))
    assert (wh.uid, wh.gid) == (7, 8)


def test_tree_walk_covers_every_entry(layer):
    paths = {p for p, _ in iter_tree(layer)}
    dump_paths = {e.path for e in parse_dump(SAMPLE)} - {()}
    assert dump_paths <= paths
    assert paths - dump_paths == {(w,) for w in layer.root_whiteouts}


def test_escape_roundtrip_display():
    assert escape(b"a b\\c\xff") == "a\\x20b\\\\c\\xff"


def test_load_object_store(tmp_path):
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "cd").write_bytes(b"data")
    store = load_object_store(str(tmp_path))
    assert isinstance(store, DiskLayer) and store.label == "objects"
    assert store.read((b"ab", b"cd")) == b"data"
    store.close()
