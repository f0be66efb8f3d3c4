"""Rendering helpers: literal text with visible escapes, xattr decoding, previews."""

from __future__ import annotations

from ovlinspect.model.layers import Node
from ovlinspect.ui.render import esc, esc_str, hex_preview, looks_textual, text_preview
from ovlinspect.ui.xattrs import decode, decode_metacopy

T = b"trusted.overlay."


def test_markup_is_literal():
    t = esc(b"[blink]x[/blink] [@click=app.quit]y[/]")
    assert t.plain == "[blink]x[/blink] [@click=app.quit]y[/]"
    assert not t.spans


def test_controls_become_visible_escapes():
    assert esc(b"a\x1b[31mb").plain == "a\\x1b[31mb"
    assert esc(b"\x00\x07\x08\t\n\r\x7f").plain == "\\x00\\x07\\x08\\x09\\x0a\\x0d\\x7f"
    assert esc("\u009b".encode()).plain == "\\x9b"  # C1 CSI
    assert esc("a\u202eb\u200bc".encode()).plain == "a\\u202eb\\u200bc"  # bidi, zero width
    # the escapes are styled, so they cannot be mistaken for a literal backslash
    t = esc(b"a\x1bb")
    assert t.spans and t.spans[0].start == 1


def test_invalid_utf8_is_shown_byte_by_byte():
    assert esc(b"bad\xff\xfe").plain == "bad\\xff\\xfe"
    assert esc("été".encode()).plain == "été"
    assert esc(b"\xe2\x82").plain == "\\xe2\\x82"  # a cut multi-byte character


def test_long_values_are_cut():
    assert esc(b"x" * 10000, limit=10).plain == "x" * 10 + "…"
    assert esc_str("abc").plain == "abc"


def test_metacopy_header_decoding():
    digest = bytes(range(32))
    value = bytes([0, 36, 0, 1]) + digest
    t = decode_metacopy(value).plain
    assert "v0" in t and "len 36" in t and "flags 0x00" in t and "sha256" in t
    assert digest.hex() in t.replace(" ", "")  # in groups of 8: wraps between groups
    assert "empty" in decode_metacopy(b"").plain
    assert "too small" in decode_metacopy(b"\0\0").plain
    bad = decode_metacopy(bytes([1, 40, 0, 1]) + digest).plain
    assert "v1" in bad and "len 40" in bad and "36 bytes" in bad


def test_overlay_xattrs_decoding():
    n = Node("file", 0o644, 0, xattrs=((T + b"redirect", b"/1e/ab\x1bcd\0junk"), (T + b"whiteout", b""),
                                        (b"user.overlay.metacopy", b""),
                                        (T + b"overlay.opaque", b"y")))
    d = {x.key: x for x in decode(n, T)}
    assert d["redirect"].redirect == b"/1e/ab\x1bcd"
    assert "\\x1bcd" in d["redirect"].text.plain and "absolute" in d["redirect"].text.plain
    assert "xattr whiteout" in d["whiteout"].text.plain and d["whiteout"].active
    assert not d["other-namespace"].active and "ignored" in d["other-namespace"].text.plain
    assert not d["escaped"].active and "nested" in d["escaped"].text.plain
    dirn = Node("dir", 0o755, xattrs=((T + b"opaque", b"y"),))
    assert "hides the lower layers" in decode(dirn, T)[0].text.plain
    dirx = Node("dir", 0o755, xattrs=((T + b"opaque", b"x"),))
    assert "xattr whiteouts" in decode(dirx, T)[0].text.plain
    odd = Node("dir", 0o755, xattrs=((T + b"opaque", b"[red]z"),))
    assert "[red]z" in decode(odd, T)[0].text.plain and not decode(odd, T)[0].active


def test_previews_never_interpret():
    assert looks_textual(b"hello\nworld\n")
    assert not looks_textual(b"\0\0\0")
    assert not looks_textual(b"\xff\xfe\xfd" * 10)
    t = text_preview(b"line1\n\x1b[2Jline2").plain
    assert t == "line1\n\\x1b[2Jline2"
    h = hex_preview(b"hi\x1b\x00").plain
    assert "68 69 1b 00" in h and "hi.." in h


def test_uuid_is_decoded_as_explain_decodes_it():
    """The view showed overlay.uuid as escaped raw bytes where `explain` shows the UUID (QA)."""
    node = Node("dir", 0o755, xattrs=((T + b"uuid", bytes.fromhex("959720d3edb3498b955d1e1350af117d")),))
    (d,) = decode(node, T, root=True)
    assert d.text.plain == "uuid 959720d3-edb3-498b-955d-1e1350af117d"


def test_sizes_in_a_column():
    from ovlinspect.ui.render import size_text

    assert size_text(None) == "?"
    assert size_text(0) == "0 B"
    assert size_text(1023) == "1023 B"
    assert size_text(1024) == "1.0 KiB"
    assert size_text(1536) == "1.5 KiB"
    assert size_text(10 * 1024 * 1024 - 1) == "10.0 MiB"
    assert size_text(5 * 1024**4) == "5.0 TiB"
    assert size_text(3 * 1024**5) == "3.0 PiB"  # past TiB, a unit of its own
    assert size_text(2**63 - 1) == "8.0 EiB"  # the largest st_size


def test_a_columns_kind_line_gives_the_exact_size_beside_the_rounded_one():
    """A metacopy file and its data file one byte apart both round to 1.0 MiB: the column
    says the bytes too."""
    from ovlinspect.ui.details import kind_line

    assert kind_line(Node("file", 0o644, 1048575)).plain.startswith("file 1.0 MiB (1,048,575 B)  0644")
    assert kind_line(Node("file", 0o644, 1048576)).plain.startswith("file 1.0 MiB (1,048,576 B)  0644")
    assert kind_line(Node("file", 0o644, 18)).plain.startswith("file 18 B  0644")
