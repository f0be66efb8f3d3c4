"""Decoding overlay xattrs as a mount reads them."""

from ovlinspect.model.layers import Node
from ovlinspect.model.xattrs import decode_metacopy, decode_xattrs, safe

T = b"trusted.overlay."


def test_metacopy_header_and_digest():
    v = bytes([0, 36, 0, 1]) + bytes(range(32))
    mc = decode_metacopy(v)
    assert (mc.version, mc.length, mc.flags, mc.algo) == (0, 36, 0, 1)
    assert mc.digest == bytes(range(32)) and mc.problems == []
    assert "sha256 000102" in mc.summary()


def test_metacopy_problems():
    assert decode_metacopy(b"").problems == [] and "empty" in decode_metacopy(b"").summary()
    assert "EIO at lookup" in decode_metacopy(b"\0\0").problems[0]
    assert any("version 7" in p for p in decode_metacopy(bytes([7, 4, 0, 0])).problems)
    assert any("header len 9" in p for p in decode_metacopy(bytes([0, 9, 0, 0])).problems)
    assert any("ERANGE" in p for p in decode_metacopy(bytes([0, 69, 0, 1]) + bytes(65)).problems)


def test_decode_kinds_and_namespaces():
    n = Node("file", size=0, xattrs=((T + b"whiteout", b""), (T + b"redirect", b"/a\0junk"),
                                      (b"user.overlay.metacopy", b""),
                                      (T + b"overlay.redirect", b"/x")))
    xs = {x.key: x for x in decode_xattrs(n, T)}
    assert xs["whiteout"].active
    assert xs["redirect"].redirect == b"/a" and "absolute" in xs["redirect"].summary
    assert xs["redirect"].note.startswith("ignored")
    assert not xs["other-namespace"].active and "trusted.overlay." in xs["other-namespace"].note
    assert not xs["escaped"].active
    d = Node("dir", xattrs=((T + b"opaque", b"x"), (T + b"redirect", b"a/b")))
    ys = {x.key: x for x in decode_xattrs(d, T)}
    assert ys["opaque"].active and "not opaque" in ys["opaque"].summary
    assert not ys["redirect"].active and "EINVAL" in ys["redirect"].note
    big = Node("file", size=5, xattrs=((T + b"whiteout", b""),))
    assert not decode_xattrs(big, T)[0].active


def test_safe_escapes_hostile_bytes():
    assert safe(b"[red]x") == "[red]x"
    assert safe(b"a\x1b[31mb") == "a\\x1b[31mb"
    assert safe(b"\xff") == "\\xff"
    assert safe(b"abcdef", 3) == "abc…"
