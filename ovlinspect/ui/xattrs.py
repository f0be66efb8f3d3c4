"""Overlay xattrs of one layer entry, styled for the layer columns.

What each attribute means comes from the model (:func:`ovlinspect.model.xattrs.decode_xattrs`: the
metacopy header, redirects up to the first NUL, ``opaque`` kinds, xattr whiteouts, escaped and
other-namespace attributes the mount ignores); this module only turns that into styled text.
Values are hostile bytes: they are rendered from the raw bytes with
:func:`~ovlinspect.ui.render.esc`, never from pre-formatted strings.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text

from ..model.layers import Node
from ..model.xattrs import DIGEST_SIZES, VERITY_ALGOS, Metacopy, OverlayXattr, decode_metacopy as _decode
from ..model.xattrs import decode_xattrs
from .render import esc

REDIRECT_STYLE = "#5fafff"
DIGEST_STYLE = "#d7af5f"


@dataclass
class Decoded:
    """One overlay xattr: the model's reading of it, and its styled text."""

    x: OverlayXattr
    text: Text

    @property
    def key(self) -> str:
        return self.x.key

    @property
    def active(self) -> bool:
        return self.x.active

    @property
    def redirect(self) -> bytes | None:
        return self.x.redirect


def metacopy_text(mc: Metacopy) -> Text:
    """``metacopy v0 len 36 flags 0x00 algo sha256`` and the digest in hex on its own line."""
    t = Text()
    t.append("metacopy", "bold")
    if mc.size == 0:
        t.append(" (empty: no digest)", "dim")
        return t
    if mc.size < 4:
        t.append(f" {mc.size} bytes: too small", "bold red")
        return t
    t.append(" v", "dim")
    t.append(str(mc.version), "bold red" if mc.version != 0 else "")
    t.append(" len ", "dim")
    t.append(str(mc.length), "bold red" if mc.length != mc.size else "")
    t.append(" flags ", "dim")
    t.append(f"0x{mc.flags:02x}")
    t.append(" algo ", "dim")
    if mc.algo == 0:
        t.append("none")
    else:
        t.append(VERITY_ALGOS.get(mc.algo, f"unknown({mc.algo})"), "" if mc.algo in VERITY_ALGOS else "red")
    if mc.digest:
        want = DIGEST_SIZES.get(mc.algo)
        t.append("\ndigest ", "dim")
        # in groups of 8 hex digits: a narrow column wraps between groups, not mid-digest-word
        h = mc.digest.hex()
        t.append(" ".join(h[i:i + 8] for i in range(0, len(h), 8)),
                 DIGEST_STYLE if want is None or want == len(mc.digest) else "red")
    return t


def decode_metacopy(value: bytes) -> Text:
    mc = _decode(value)
    t = metacopy_text(mc)
    for p in mc.problems:
        t.append("\n" + p, "red")
    return t


def _render(x: OverlayXattr) -> Text:
    t = Text()
    if x.key in ("escaped", "other-namespace"):
        t.append_text(esc(x.name, "strike dim"))
        if x.value:
            t.append("=", "dim")
            t.append_text(esc(x.value, "dim", limit=60))
    elif x.key == "metacopy" and x.metacopy is not None:
        t.append_text(metacopy_text(x.metacopy))
    elif x.key == "redirect" and x.redirect is not None:
        t.append("redirect ", "bold")
        t.append("⇒ ", "bold " + REDIRECT_STYLE)
        t.append_text(esc(x.redirect, REDIRECT_STYLE))
        t.append("  absolute" if x.redirect.startswith(b"/") else "  relative", "dim")
        if x.redirect != x.value:
            t.append(" (cut at NUL)", "dim")
    elif x.key == "opaque":
        t.append("opaque ", "bold")
        if x.value == b"y":
            t.append("y", "bold")
            if x.active:
                t.append(": hides the lower layers", "dim")
        elif x.value == b"x":
            t.append("x", "bold")
            t.append(": holds xattr whiteouts (not opaque)", "dim")
        else:
            t.append_text(esc(x.value, limit=20))
    elif x.key == "whiteout":
        t.append("whiteout", "bold")
        t.append(" (xattr whiteout)", "dim")
    elif x.key == "uuid":
        t.append("uuid ", "bold")
        t.append(x.summary.removeprefix("uuid "), "dim")  # hex digits from the model: safe
    elif x.key in ("origin", "upper"):
        t.append(x.key, "bold")
        t.append(x.summary[len(x.key):] if x.summary.startswith(x.key) else f" {x.summary}", "dim")
    else:
        t.append_text(esc(x.key.encode(), "bold"))
        if x.value:
            t.append(" ")
            t.append_text(esc(x.value, limit=60))
    if x.note:
        serious = any(e in x.note for e in ("EIO", "EINVAL", "ERANGE", "EPERM"))
        t.append("\n  " + x.note, "red" if serious else "yellow")
    return t


def decode(node: Node, prefix: bytes, root: bool = False) -> list[Decoded]:
    """Every overlay xattr of ``node``, read as a mount with xattr ``prefix`` reads it."""
    return [Decoded(x, _render(x)) for x in decode_xattrs(node, prefix, root)]
