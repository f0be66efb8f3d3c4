"""Turning hostile bytes into safe, literal, styled text.

Every name, symlink target, redirect and xattr value on screen goes through :func:`esc`:
it builds a rich :class:`~rich.text.Text` (never markup), so ``[blink]x`` reads
``[blink]x``, and every byte that is not a printable character is shown as a visible escape
(``\\x1b``, ``\\xff``, ``\\u202e``) in a distinct style, so no control sequence ever reaches the
terminal.  Strings that come from the engine (trace lines, messages) go through
:func:`esc_str`, which applies the same rule to ``str``.
"""

from __future__ import annotations

import humanize
from rich.style import Style
from rich.text import Text

from ..model.layers import Node, Path, join_path

#: Style of an escape sequence standing for a byte or character that cannot be shown.
ESCAPE_STYLE = Style(color="#ff8700", bold=True)

#: Longest name/value rendered; longer ones are cut with an ellipsis (a name is at most
#: 255 bytes, but xattr values and targets can be 64 KiB).
MAX_SHOWN = 512


def _char_escape(c: str) -> str:
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:  # surrogateescape: an undecodable byte
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x100:
        return f"\\x{o:02x}"
    if o < 0x10000:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def _safe(c: str) -> bool:
    # isprintable() is False for C0/C1 controls, DEL, format characters (bidi overrides,
    # zero-width joiners), separators other than space, surrogates and unassigned code points.
    return c.isprintable()


def esc_str(s: str, style: str | Style = "", limit: int = MAX_SHOWN) -> Text:
    """``s`` as literal text, non-printable characters shown as styled escapes."""
    text = Text(style=style, no_wrap=False)
    cut = len(s) > limit
    if cut:
        s = s[:limit]
    run: list[str] = []
    for c in s:
        if _safe(c):
            run.append(c)
            continue
        if run:
            text.append("".join(run))
            run = []
        text.append(_char_escape(c), ESCAPE_STYLE)
    if run:
        text.append("".join(run))
    if cut:
        text.append("…", "dim")
    return text


def esc(b: bytes | None, style: str | Style = "", limit: int = MAX_SHOWN) -> Text:
    """Bytes (a name, a target, an xattr value) as literal text with visible escapes."""
    if b is None:
        return Text("")
    return esc_str(b.decode("utf-8", "surrogateescape"), style, limit)


def plain(b: bytes) -> str:
    """The same escaping as :func:`esc`, as a plain string (for sorting, search, notifications)."""
    return esc(b).plain


def path_text(path: Path, style: str | Style = "") -> Text:
    return esc(join_path(path), style)


def size_text(n: int | None) -> str:
    """A size in a narrow column: ``18 B``, ``1.5 KiB`` (humanize's binary units; bytes as
    ``B``, where the CLI writes ``18 bytes``)."""
    if n is None:
        return "?"
    return f"{n} B" if n < 1024 else humanize.naturalsize(n, binary=True)


def kind_short(node: Node, whiteout: str = "whiteout") -> str:
    """A node's kind in a word or two (a regular file with its size); ``whiteout`` names a
    0/0 character device."""
    if node.is_whiteout_dev:
        return whiteout
    if node.is_reg:
        return f"file {size_text(node.size)}"
    return node.kind


# ----------------------------------------------------------------------------- previews


def looks_textual(data: bytes) -> bool:
    """True when ``data`` is UTF-8 text with few controls (it is then shown as text)."""
    if not data:
        return True
    if b"\0" in data:
        return False
    try:
        s = data.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte character may be cut at the end of the bounded read
        try:
            s = data[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    bad = sum(1 for c in s if not c.isprintable() and c not in "\n\t\r")
    return bad <= len(s) // 50


def text_preview(data: bytes) -> Text:
    """File content as text: lines kept, every other control byte escaped."""
    out = Text()
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        if i:
            out.append("\n")
        out.append_text(esc(line.replace(b"\t", b"    "), limit=4096))
    return out


def hex_preview(data: bytes, width: int = 8) -> Text:
    """A classic hex dump: offset, hex bytes, and printable ASCII (everything else as ``.``)."""
    out = Text()
    for off in range(0, len(data), width):
        chunk = data[off : off + width]
        if off:
            out.append("\n")
        out.append(f"{off:08x}  ", "dim")
        hexes = " ".join(f"{b:02x}" for b in chunk)
        out.append(f"{hexes:<{width * 3 - 1}}  ")
        out.append("".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk), "cyan")
    return out
