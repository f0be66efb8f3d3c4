"""Decoding the overlay xattrs of one layer entry for display.

The decoding follows the kernel's reading of each attribute: the metacopy header
(``struct ovl_metacopy``: version, len, flags, digest algorithm, digest), redirects (absolute or
relative, up to the first NUL), ``opaque`` (``y``: opaque, ``x``: holds xattr whiteouts, anything
else ignored), xattr whiteouts, and escaped (``overlay.overlay.*``) or other-namespace
attributes that the mount ignores.  Values are hostile bytes: they are shown with
:func:`~ovlinspect.ui.render.esc`.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text

from ..layers import Node
from .render import esc

#: fs-verity hash algorithm ids (FS_VERITY_HASH_ALG_*).
VERITY_ALGOS = {1: "sha256", 2: "sha512"}
DIGEST_SIZES = {1: 32, 2: 64}


@dataclass
class Decoded:
    """One overlay xattr, decoded: a short key, the explanation, and whether it is in effect."""

    name: bytes
    key: str
    text: Text
    active: bool = True
    #: for redirects: the value as the kernel uses it (up to the first NUL)
    redirect: bytes | None = None


def decode_metacopy(value: bytes) -> Text:
    """``trusted.overlay.metacopy``: empty, or a header (version, len, flags, algo) + digest."""
    t = Text()
    if not value:
        t.append("metacopy", "bold")
        t.append(" (empty: no digest)", "dim")
        return t
    if len(value) < 4:
        t.append(f"metacopy: {len(value)} bytes, too small (EIO)", "bold red")
        return t
    version, length, flags, algo = value[0], value[1], value[2], value[3]
    digest = value[4:]
    t.append("metacopy", "bold")
    t.append(" v", "dim")
    t.append(str(version), "bold red" if version != 0 else "")
    t.append(" len ", "dim")
    t.append(str(length), "bold red" if length != len(value) else "")
    if length != len(value):
        t.append(f" (xattr is {len(value)})", "red")
    t.append(" flags ", "dim")
    t.append(f"0x{flags:02x}")
    t.append(" algo ", "dim")
    if algo == 0:
        t.append("none")
    else:
        t.append(VERITY_ALGOS.get(algo, f"unknown({algo})"), "" if algo in VERITY_ALGOS else "red")
    if digest:
        t.append("\ndigest ", "dim")
        want = DIGEST_SIZES.get(algo)
        t.append(digest.hex(), "#d7af5f" if want is None or want == len(digest) else "red")
        if want is not None and want != len(digest):
            t.append(f" ({len(digest)} bytes, {VERITY_ALGOS[algo]} has {want})", "red")
    if len(value) > 68:
        t.append(f"\n{len(value)} bytes: more than 68 (ERANGE)", "bold red")
    return t


def decode(node: Node, prefix: bytes) -> list[Decoded]:
    """Every overlay xattr of ``node``, decoded; ``prefix`` is the namespace the mount reads."""
    out: list[Decoded] = []
    for name, value in node.xattrs:
        if name.startswith(prefix + b"overlay."):
            out.append(Decoded(name, "escaped", _ignored(name, value,
                               "escaped: for a nested overlay, ignored here"), active=False))
            continue
        if not name.startswith(prefix):
            out.append(Decoded(name, "other-ns", _ignored(name, value,
                               f"ignored: this mount reads {prefix.decode()}*"), active=False))
            continue
        key = name[len(prefix):].decode("utf-8", "surrogateescape")
        if key == "metacopy":
            text = decode_metacopy(value)
            if not node.is_reg:
                text.append(" (ignored: not a regular file)", "dim")
            out.append(Decoded(name, key, text))
        elif key == "redirect":
            used = value.split(b"\0", 1)[0]
            t = Text()
            t.append("redirect ", "bold")
            t.append("⇒ ", "bold #5fafff")
            t.append_text(esc(used, "#5fafff"))
            t.append("  absolute" if used.startswith(b"/") else "  relative", "dim")
            if used != value:
                t.append(" (cut at NUL)", "dim")
            out.append(Decoded(name, key, t, redirect=used))
        elif key == "opaque":
            t = Text()
            if value == b"y":
                t.append("opaque", "bold")
                t.append(" y: hides the lower layers", "dim")
            elif value == b"x":
                t.append("opaque", "bold")
                t.append(" x: holds xattr whiteouts (not opaque)", "dim")
            else:
                t.append("opaque ", "bold")
                t.append_text(esc(value))
                t.append(" (ignored: not y or x)", "dim")
            out.append(Decoded(name, key, t, active=value in (b"y", b"x")))
        elif key == "whiteout":
            t = Text()
            t.append("whiteout", "bold")
            t.append(" (xattr whiteout" + (")" if node.is_reg and node.size == 0
                                            else "; not a 0-byte file: ignored)"), "dim")
            out.append(Decoded(name, key, t, active=node.is_reg and node.size == 0))
        elif key in ("origin", "upper"):
            t = Text()
            t.append(key, "bold")
            t.append(f" file handle {value[:24].hex()}" + ("…" if len(value) > 24 else ""), "dim")
            out.append(Decoded(name, key, t))
        else:
            t = Text()
            t.append(key, "bold")
            if value:
                t.append(" ")
                t.append_text(esc(value, limit=80))
            out.append(Decoded(name, key, t))
    return out


def _ignored(name: bytes, value: bytes, why: str) -> Text:
    t = Text()
    t.append_text(esc(name, "strike dim"))
    if value:
        t.append("=", "dim")
        t.append_text(esc(value, "dim", limit=60))
    t.append(f"\n  {why}", "yellow")
    return t
