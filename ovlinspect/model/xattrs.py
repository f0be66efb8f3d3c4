"""What each overlay xattr on a layer entry means to a given mount, decoded into plain data.

The decoding follows the kernel's reading: the metacopy header (``struct ovl_metacopy``:
version, len, flags, fs-verity algorithm, digest), redirects (used up to the first NUL,
absolute or one relative name), ``opaque`` (``y`` opaque, ``x`` holds xattr whiteouts, any
other value ignored), xattr whiteouts (only on zero-size regular files), and the attributes
the mount ignores (the other namespace, or the escaped ``overlay.overlay.*`` form).  Text
fields are already made safe for display (control bytes and invalid UTF-8 escaped).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .layers import Node

VERITY_ALGOS = {1: "sha256", 2: "sha512"}
DIGEST_SIZES = {1: 32, 2: 64}
METACOPY_MIN = 4
METACOPY_MAX = 68


def safe(b: bytes | str | None, limit: int | None = None) -> str:
    """Bytes (or text from outside) as display text: THE escaping of ovlinspect.

    Every line that shows bytes from outside (names, paths, labels, xattr values, log lines,
    error messages) goes through here: undecodable bytes become ``\\xNN``, and every character
    that is not printable (C0/C1 controls, DEL, \\r, \\n, line and paragraph separators, bidi
    overrides, ...) its ``repr`` escape, so nothing from outside moves the cursor, splits a line
    or starts an escape sequence.  Text (``str``) is taken with its surrogate escapes
    (``os.fsdecode``) as the bytes they stand for.  Idempotent on its own output.
    """
    if b is None:
        return ""
    if isinstance(b, str):
        try:
            b = b.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate that does not stand for a byte
            b = b.encode("utf-8", "backslashreplace")
    cut = b[:limit] if limit is not None else b
    text = cut.decode("utf-8", "backslashreplace")
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text + ("…" if limit is not None and len(b) > limit else "")



def redirect_valid(raw: bytes) -> bool:
    """Whether the kernel accepts a redirect xattr (``ovl_check_redirect``): used up to the
    first NUL, it is an absolute path without empty components, or one relative name."""
    buf = raw.split(b"\0", 1)[0]
    if not raw:
        return False
    if buf.startswith(b"/"):
        return all(buf.split(b"/")[1:])
    return b"/" not in buf

@dataclass(frozen=True)
class Metacopy:
    """A decoded metacopy xattr."""

    size: int
    version: int = 0
    length: int = METACOPY_MIN
    flags: int = 0
    algo: int = 0
    digest: bytes = b""

    @property
    def problems(self) -> list[str]:
        """What the kernel refuses: at lookup (too small) or at open with verity on."""
        out = []
        if 0 < self.size < METACOPY_MIN:
            out.append(f"{self.size} bytes, less than 4: EIO at lookup")
            return out
        if self.size > METACOPY_MAX:
            out.append(f"{self.size} bytes, more than 68: ERANGE at open with verity")
        if self.size and self.version != 0:
            out.append(f"version {self.version}, not 0: EIO at open with verity")
        if self.size and self.length != self.size:
            out.append(f"header len {self.length} but {self.size} bytes: EIO at open with verity")
        want = DIGEST_SIZES.get(self.algo)
        if self.algo and want is None:
            out.append(f"unknown digest algorithm {self.algo}")
        elif want is not None and len(self.digest) != want:
            out.append(f"{len(self.digest)}-byte digest, {VERITY_ALGOS[self.algo]} has {want}")
        return out

    def summary(self) -> str:
        if self.size == 0:
            return "metacopy (empty: no digest)"
        if self.size < METACOPY_MIN:
            return f"metacopy ({self.size} bytes: too small)"
        text = f"metacopy v{self.version} len {self.length} flags 0x{self.flags:02x}"
        if self.algo:
            text += f" {VERITY_ALGOS.get(self.algo, f'algo {self.algo}')} {self.digest.hex()}"
        else:
            text += " no digest"
        return text


#: ``struct ovl_fb`` (overlayfs.h): version, magic, len, flags, type, the filesystem UUID, then
#: the exportfs file handle.  ``len`` counts the whole structure.
FB_HEADER = 21
FH_VERSION = 0
FH_MAGIC = 0xFB
FH_FLAG_BIG_ENDIAN = 1 << 0
FH_FLAG_ANY_ENDIAN = 1 << 1
FH_FLAG_PATH_UPPER = 1 << 2
FH_FLAG_ALL = FH_FLAG_BIG_ENDIAN | FH_FLAG_ANY_ENDIAN | FH_FLAG_PATH_UPPER
#: the kernel's own byte order bit (``OVL_FH_FLAG_CPU_ENDIAN``)
FH_FLAG_CPU_ENDIAN = FH_FLAG_BIG_ENDIAN if sys.byteorder == "big" else 0
NULL_UUID = bytes(16)


def uuid_text(b: bytes) -> str:
    h = b.hex()
    if len(b) != 16:
        return h
    return "-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))


@dataclass(frozen=True)
class FileHandle:
    """A decoded overlay file handle (``overlay.origin``, ``overlay.upper``, an index name)."""

    size: int
    version: int = 0
    magic: int = 0
    length: int = 0
    flags: int = 0
    type: int = 0
    uuid: bytes = b""
    fid: bytes = b""
    #: "" usable; "unknown" the kernel treats it as "origin unknown" (a newer version, unknown
    #: flags, the other byte order); "invalid" it warns ``invalid origin (...)`` and ignores it;
    #: "empty" a zero-size value ("copied up, origin unknown")
    status: str = ""
    why: str = ""

    @property
    def usable(self) -> bool:
        return self.status == ""

    @property
    def wire(self) -> bytes:
        """The bytes the kernel compares (the first ``len`` bytes)."""
        return (bytes([self.version, self.magic, self.length, self.flags, self.type]) + self.uuid
                + self.fid)[: self.length]

    @property
    def path_upper(self) -> bool:
        return bool(self.flags & FH_FLAG_PATH_UPPER)

    def summary(self, key: str = "origin") -> str:
        if self.status == "empty":
            return f"{key}: empty (copied up, origin unknown)"
        if self.status == "invalid":
            return f"{key}: invalid file handle ({self.why})"
        uuid = "null" if self.uuid == NULL_UUID else uuid_text(self.uuid)
        text = (f"{key}: fs uuid {uuid}, handle type 0x{self.type:x}, len {len(self.fid)}"
                + (", upper" if self.path_upper else ""))
        if self.status == "unknown":
            text += f" (ignored: {self.why})"
        return text


def decode_fh(value: bytes) -> FileHandle:
    """``value`` as the kernel reads it (``ovl_check_fb_len``)."""
    n = len(value)
    if n == 0:
        return FileHandle(0, status="empty")
    if n < FB_HEADER:
        return FileHandle(n, status="invalid", why=f"{n} bytes, less than the {FB_HEADER}-byte header")
    version, magic, length, flags, ftype = value[:5]
    fh = FileHandle(n, version, magic, length, flags, ftype, bytes(value[5:21]),
                    bytes(value[21:max(length, 21)]))
    if n < length:
        return FileHandle(**{**fh.__dict__, "status": "invalid",
                             "why": f"header len {length} but {n} bytes"})
    if length < FB_HEADER:
        return FileHandle(**{**fh.__dict__, "status": "invalid",
                             "why": f"header len {length}, less than the header"})
    if magic != FH_MAGIC:
        return FileHandle(**{**fh.__dict__, "status": "invalid", "why": f"magic 0x{magic:02x}, not 0xfb"})
    if version > FH_VERSION or flags & ~FH_FLAG_ALL:
        return FileHandle(**{**fh.__dict__, "status": "unknown",
                             "why": f"version {version}, flags 0x{flags:02x}"})
    if not flags & FH_FLAG_ANY_ENDIAN and (flags & FH_FLAG_BIG_ENDIAN) != FH_FLAG_CPU_ENDIAN:
        return FileHandle(**{**fh.__dict__, "status": "unknown", "why": "written on the other byte order"})
    return fh


def encode_fh(ftype: int, fid: bytes, uuid: bytes | None, upper: bool = False) -> bytes:
    """The handle the kernel writes for an object (``ovl_encode_real_fh``); ``uuid`` None: null."""
    flags = FH_FLAG_CPU_ENDIAN | (FH_FLAG_PATH_UPPER if upper else 0)
    return (bytes([FH_VERSION, FH_MAGIC, FB_HEADER + len(fid), flags, ftype])
            + (uuid if uuid is not None else NULL_UUID) + fid)


def decode_metacopy(value: bytes) -> Metacopy:
    if len(value) < METACOPY_MIN:
        return Metacopy(size=len(value))
    return Metacopy(size=len(value), version=value[0], length=value[1], flags=value[2],
                    algo=value[3], digest=bytes(value[4:]))


@dataclass(frozen=True)
class OverlayXattr:
    """One overlay xattr of a layer entry, as a given mount reads it."""

    name: bytes
    value: bytes
    #: metacopy, redirect, opaque, whiteout, origin, impure, ... or "escaped" / "other-namespace"
    key: str
    #: whether the mount acts on it
    active: bool
    #: one line, safe for display
    summary: str
    #: why the kernel refuses or ignores it, if it does
    note: str = ""
    metacopy: Metacopy | None = None
    #: a redirect as the kernel uses it (up to the first NUL)
    redirect: bytes | None = None
    #: a decoded file handle (origin, upper)
    handle: FileHandle | None = None


def decode_xattrs(node: Node, prefix: bytes, root: bool = False) -> list[OverlayXattr]:
    """Every overlay xattr of ``node``; ``prefix`` is the namespace the mount reads.

    ``root``: the node is a layer root, where opaque=y has no effect (the root is always merged).
    """
    out: list[OverlayXattr] = []
    for name, value in node.xattrs:
        if name.startswith(prefix + b"overlay"):
            out.append(OverlayXattr(name, value, "escaped", False,
                                    f"{safe(name)}={safe(value, 60)}",
                                    "escaped: meant for a nested overlay, ignored by this one"))
            continue
        if not name.startswith(prefix):
            out.append(OverlayXattr(name, value, "other-namespace", False,
                                    f"{safe(name)}={safe(value, 60)}",
                                    f"ignored: this mount reads {safe(prefix)}*"))
            continue
        key = safe(name[len(prefix):])
        if key == "metacopy":
            mc = decode_metacopy(value)
            note = "; ".join(mc.problems)
            if not node.is_reg:
                note = "ignored: not a regular file"
            out.append(OverlayXattr(name, value, key, node.is_reg, mc.summary(), note, metacopy=mc))
        elif key == "redirect":
            used = value.split(b"\0", 1)[0]
            kind = "absolute" if used.startswith(b"/") else "relative"
            valid = redirect_valid(value)
            note = "" if valid else "invalid: EINVAL at lookup"
            if node.is_reg and valid and node.xattr(prefix + b"metacopy") is None:
                note = "ignored: the file is not a metacopy"
            out.append(OverlayXattr(name, value, key, valid, f"redirect → {safe(used)} ({kind})",
                                    note, redirect=used))
        elif key == "opaque":
            if value == b"y" and root:
                out.append(OverlayXattr(name, value, key, False, "opaque=y",
                                        "no effect on a layer root: the root is always merged"))
            elif value == b"y":
                out.append(OverlayXattr(name, value, key, node.is_dir, "opaque=y: hides the lower layers"))
            elif value == b"x":
                out.append(OverlayXattr(name, value, key, node.is_dir,
                                        "opaque=x: holds xattr whiteouts (not opaque)",
                                        "honoured on lower layers only"))
            else:
                out.append(OverlayXattr(name, value, key, False, f"opaque={safe(value, 20)}",
                                        "ignored: only y and x mean something"))
        elif key == "whiteout":
            ok = node.is_reg and node.size == 0
            out.append(OverlayXattr(name, value, key, ok, "xattr whiteout",
                                    "" if ok else "ignored: not a zero-size regular file"))
        elif key == "uuid":
            out.append(OverlayXattr(name, value, key, True, f"uuid {uuid_text(value)}"))
        elif key in ("origin", "upper"):
            fh = decode_fh(value)
            note = {"invalid": "invalid: the kernel warns 'invalid origin' and ignores it",
                    "unknown": "treated as origin unknown"}.get(fh.status, "")
            out.append(OverlayXattr(name, value, key, fh.usable, fh.summary(key), note, handle=fh))
        else:
            out.append(OverlayXattr(name, value, key, True, f"{key}={safe(value, 60)}"))
    return out
