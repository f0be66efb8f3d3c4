"""The eager composefs dump loader as it was before the indexed one (commit 696da04), kept
only as the reference the differential tests in test_composefs_index.py compare against."""
from __future__ import annotations

import io
import zlib
import os
import stat as _stat
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO

from ovlinspect.model.layers import OVERLAY_PREFIXES, DiskLayer, MemoryLayer, Node, Path

__all__ = [
    "DumpEntry",
    "DumpError",
    "DumpLayer",
    "escape",
    "load_dump",
    "load_object_store",
    "metacopy_value",
    "parse_dump",
]


class DumpError(ValueError):
    """A dump file cannot be parsed; the message is one line and names the dump line."""

    def __init__(self, line: int, message: str):
        self.line = line
        self.reason = message
        super().__init__(f"dump line {line}: {message}" if line else f"dump: {message}")


FIELDS = ("PATH", "SIZE", "MODE", "NLINK", "UID", "GID", "RDEV", "MTIME", "PAYLOAD", "CONTENT", "DIGEST")

TRUSTED_OVL = b"trusted.overlay."
ESCAPED_OVL = b"trusted.overlay.overlay."
XATTR_METACOPY = b"trusted.overlay.metacopy"
XATTR_REDIRECT = b"trusted.overlay.redirect"
XATTR_OPAQUE = b"trusted.overlay.opaque"
XATTR_ESC_WHITEOUT = b"trusted.overlay.overlay.whiteout"
XATTR_ESC_WHITEOUTS = b"trusted.overlay.overlay.whiteouts"
XATTR_ESC_OPAQUE = b"trusted.overlay.overlay.opaque"
XATTR_USER_WHITEOUT = b"user.overlay.whiteout"
XATTR_USER_WHITEOUTS = b"user.overlay.whiteouts"
XATTR_USER_OPAQUE = b"user.overlay.opaque"

#: fs-verity algorithm ids (FS_VERITY_HASH_ALG_*) by digest length.
VERITY_ALGO = {32: 1, 64: 2}

#: Names of the 256 whiteouts composefs puts in every image root.
ROOT_WHITEOUTS = tuple(b"%02x" % i for i in range(256))

_TYPES = {
    _stat.S_IFREG: "file",
    _stat.S_IFDIR: "dir",
    _stat.S_IFLNK: "symlink",
    _stat.S_IFCHR: "chardev",
    _stat.S_IFBLK: "blockdev",
    _stat.S_IFIFO: "fifo",
    _stat.S_IFSOCK: "socket",
}

#: Largest dump read, after decompression (bytes): beyond it, one line and no parse.  A real
#: image of a million files writes about 200 MB.
MAX_DUMP = 384 << 20

#: Field bounds: what the kernel can hold (st_mode 16 bits, loff_t, uid_t, dev_t 12:20 bits).
MAX_MODE = 0o177777
MAX_SIZE = 2**63 - 1
MAX_ID = 2**32 - 1
MAX_MAJOR = 2**12 - 1
MAX_MINOR = 2**20 - 1

_SIMPLE_ESCAPES = {ord("\\"): 0x5C, ord("n"): 0x0A, ord("r"): 0x0D, ord("t"): 0x09}
_HEX = b"0123456789abcdefABCDEF"


# ------------------------------------------------------------------------------- escaping


def _unescape(raw: bytes, line: int, what: str) -> bytes:
    if b"\\" not in raw:
        return raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c != 0x5C:
            out.append(c)
            i += 1
            continue
        if i + 1 >= n:
            raise DumpError(line, f"{what}: backslash at the end of the field")
        e = raw[i + 1]
        if e == ord("x"):
            hh = raw[i + 2 : i + 4]
            if len(hh) < 2 or hh[0] not in _HEX or hh[1] not in _HEX:
                raise DumpError(line, f"{what}: bad escape \\x{escape(hh)} (want \\x and two hex digits)")
            out.append(int(hh, 16))
            i += 4
        elif e in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[e])
            i += 2
        else:
            raise DumpError(line, f"{what}: unsupported escape \\{escape(bytes([e]))}")
    return bytes(out)


def _optional(raw: bytes, line: int, what: str) -> bytes | None:
    if raw == b"-":
        return None
    return _unescape(raw, line, what)


def escape(data: bytes, extra: bytes = b"") -> str:
    """``data`` the way a dump writes it (printable ASCII kept, the rest as ``\\xHH``)."""
    out = []
    for c in data:
        if c == 0x5C:
            out.append("\\\\")
        elif 0x21 <= c <= 0x7E and c not in extra:
            out.append(chr(c))
        else:
            out.append(f"\\x{c:02x}")
    return "".join(out)


def _show(path: Path) -> str:
    return "/" + "/".join(escape(p) for p in path)


# -------------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class DumpEntry:
    """One dump line, parsed and unescaped."""

    path: Path
    line: int
    size: int
    #: Full st_mode, type bits included.
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    mtime: tuple[int, int]
    payload: bytes | None = None
    content: bytes | None = None
    #: Raw fs-verity digest bytes (32 or 64), if the line has one.
    digest: bytes | None = None
    #: Every xattr of the line, in dump order, unescaped and *not* overlay-escaped.
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    #: For ``@`` lines, the path of the entry this one is a hard link to.
    hardlink: Path | None = None

    @property
    def kind(self) -> str:
        return _TYPES.get(_stat.S_IFMT(self.mode), "unknown")

    @property
    def is_whiteout(self) -> bool:
        return self.kind == "chardev" and self.rdev == 0

    @property
    def is_external(self) -> bool:
        """A regular file whose data lives in the object store (metacopy in the image)."""
        return self.kind == "file" and self.size > 0 and self.content is None


def _int(raw: bytes, line: int, name: str, base: int = 10, signed: bool = False,
         hi: int = 2**64 - 1) -> int:
    text = raw.decode("ascii", "replace")
    body = text[1:] if signed and text.startswith("-") else text
    digits = "01234567" if base == 8 else "0123456789"
    if not body or any(ch not in digits for ch in body):
        kind = "an octal" if base == 8 else "a decimal"
        raise DumpError(line, f"{name} {escape(raw[:40])}{'...' if len(raw) > 40 else ''} is not {kind} number")
    if len(body.lstrip("0")) > 40:  # far beyond any field (and int() refuses 4300 digits)
        raise DumpError(line, f"{name} has {len(body)} digits: out of range")
    value = int(text, base)
    if not (-hi - 1 if signed else 0) <= value <= hi:
        raise DumpError(line, f"{name} {text} is out of range (0 to {hi})")
    return value


def _path(raw: bytes, line: int) -> Path:
    p = _unescape(raw, line, "PATH")
    if not p.startswith(b"/"):
        raise DumpError(line, f"PATH {escape(p)} is not absolute")
    parts = tuple(c for c in p.split(b"/") if c)
    for c in parts:
        if c in (b".", b".."):
            raise DumpError(line, f"PATH {escape(p)} has a '{c.decode()}' component")
        if b"\0" in c:
            raise DumpError(line, f"PATH {escape(p)} has a NUL byte")
        if len(c) > 255:
            raise DumpError(line, f"PATH {escape(p)} has a name longer than 255 bytes")
    return parts


def _digest(raw: bytes, line: int) -> bytes | None:
    d = _optional(raw, line, "DIGEST")
    if d is None:
        return None
    try:
        value = bytes.fromhex(d.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise DumpError(line, f"DIGEST {escape(d)} is not hex") from None
    if len(value) not in VERITY_ALGO:
        raise DumpError(line, f"DIGEST has {len(d)} hex digits, want 64 (SHA-256) or 128 (SHA-512)")
    return value


def _parse_line(raw: bytes, line: int) -> DumpEntry:
    fields = raw.split(b" ")
    if len(fields) < len(FIELDS):
        raise DumpError(
            line,
            f"{len(fields)} fields, want at least {len(FIELDS)} ({' '.join(FIELDS)} then xattrs)",
        )
    path = _path(fields[0], line)
    mode_raw = fields[2]
    hardlink = mode_raw.startswith(b"@")
    if hardlink:
        mode_raw = mode_raw[1:]
    mode = _int(mode_raw, line, "MODE", 8, hi=MAX_MODE)
    if _stat.S_IFMT(mode) not in _TYPES:
        raise DumpError(line, f"MODE {mode:o} has no valid file type")
    if hardlink:
        if _stat.S_ISDIR(mode):
            raise DumpError(line, f"{_show(path)}: a directory cannot be a hard link")
        target = _optional(fields[8], line, "PAYLOAD")
        if not target:
            raise DumpError(line, f"hard link {_show(path)} has no target in PAYLOAD")
        return DumpEntry(path, line, 0, mode, 1, 0, 0, 0, (0, 0),
                         hardlink=tuple(c for c in target.split(b"/") if c))
    size = _int(fields[1], line, "SIZE", hi=MAX_SIZE)
    nlink = _int(fields[3], line, "NLINK", hi=MAX_ID)
    uid = _int(fields[4], line, "UID", hi=MAX_ID)
    gid = _int(fields[5], line, "GID", hi=MAX_ID)
    rdev = _int(fields[6], line, "RDEV")
    if os.major(rdev) > MAX_MAJOR or os.minor(rdev) > MAX_MINOR:
        raise DumpError(line, f"RDEV {rdev} is {os.major(rdev)}:{os.minor(rdev)}, beyond the kernel's "
                              f"{MAX_MAJOR}:{MAX_MINOR}")
    sec, dot, nsec = fields[7].partition(b".")
    if not dot:
        raise DumpError(line, f"MTIME {escape(fields[7])} is not sec.nsec")
    mtime = (_int(sec, line, "MTIME seconds", signed=True, hi=2**63 - 1),
             _int(nsec, line, "MTIME nanoseconds", hi=999_999_999))
    payload = _optional(fields[8], line, "PAYLOAD")
    content = _optional(fields[9], line, "CONTENT")
    if content is not None and _stat.S_ISREG(mode) and len(content) != size:
        raise DumpError(line, f"CONTENT is {len(content)} bytes but SIZE is {size}")
    digest = _digest(fields[10], line)
    xattrs = []
    for f in fields[len(FIELDS):]:
        key_raw, eq, value_raw = f.partition(b"=")
        if not eq:  # composefs's own parsers refuse it too ("Missing = in xattrs")
            raise DumpError(line, f"xattr {escape(f)} has no '=' (NAME=VALUE)")
        key = _unescape(key_raw, line, "xattr name")
        if not key:
            raise DumpError(line, f"xattr {escape(f)} has an empty name")
        xattrs.append((key, _unescape(value_raw, line, f"xattr {escape(key)}")))
    return DumpEntry(path, line, size, mode, nlink, uid, gid, rdev, mtime, payload, content,
                     digest, tuple(xattrs))


def _read_source(source: str | bytes | os.PathLike | TextIO | BinaryIO) -> tuple[bytes, str | None]:
    if isinstance(source, bytes):
        data, name = source, None
    elif isinstance(source, str) and (not source or "\n" in source or source.startswith("/ ")):
        data, name = source.encode("utf-8", "surrogateescape"), None
    elif isinstance(source, (str, os.PathLike)):
        name = os.fsdecode(source)
        try:
            f = open(name, "rb")
        except ValueError as e:  # a NUL in the name
            raise DumpError(0, f"cannot open: {e}") from None
        with f:
            data = f.read(MAX_DUMP + 1)
    elif hasattr(source, "read"):
        got = source.read(MAX_DUMP + 1)
        data = got.encode("utf-8", "surrogateescape") if isinstance(got, str) else bytes(got)
        name = getattr(source, "name", None)
        name = name if isinstance(name, str) else None
    else:
        raise TypeError(f"cannot read a dump from {type(source).__name__}")
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, MAX_DUMP)
    elif len(data) > MAX_DUMP:
        raise DumpError(0, f"larger than {MAX_DUMP >> 20} MiB; refused")
    return data, name


def _gunzip(data: bytes, limit: int) -> bytes:
    """Every gzip member of ``data``, inflated a piece at a time and never past ``limit`` bytes
    (memory stays about ``limit``: the pieces go to one growing buffer, returned uncopied)."""
    out = io.BytesIO()
    size = 0
    rest = data
    while rest:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            while rest:
                piece = d.decompress(rest, min(limit + 1 - size, 16 << 20))
                rest = d.unconsumed_tail
                size += len(piece)
                if size > limit:
                    raise DumpError(0, f"gzip data inflates past {limit >> 20} MiB; refused")
                out.write(piece)
                if d.eof:
                    break
        except zlib.error as e:
            raise DumpError(0, f"bad gzip data: {e}") from None
        if not d.eof:
            raise DumpError(0, "bad gzip data: truncated")
        rest = d.unused_data
        if rest and rest[:2] != b"\x1f\x8b":
            if rest.strip(b"\0"):  # trailing zeros (padding) are ignored, as gzip does
                raise DumpError(0, "bad gzip data: trailing garbage after the last member")
            break
    return out.getvalue()


def parse_dump(source: str | bytes | os.PathLike | TextIO | BinaryIO) -> list[DumpEntry]:
    """Parse and check a dump: every line, in order, with hard links resolved.

    ``source`` is dump text (``bytes``, or a ``str`` that is empty, holds a newline or starts
    with ``"/ "``), a file path (``str`` or path-like; gzip is recognised), or an open file.
    Raises :class:`DumpError` naming the first bad line.
    """
    data, _ = _read_source(source)
    entries: list[DumpEntry] = []
    kinds: dict[Path, tuple[str, int]] = {}
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if not raw:
            continue
        e = _parse_line(raw, lineno)
        if not entries and e.path != ():
            raise DumpError(lineno, f"the first entry must be the root /, not {_show(e.path)}")
        if e.path == ():
            if entries:
                raise DumpError(lineno, f"root / is defined again (first on line {entries[0].line})")
            if e.kind != "dir" or e.hardlink is not None:
                raise DumpError(lineno, "root / must be a directory")
        else:
            seen = kinds.get(e.path)
            if seen is not None:
                raise DumpError(lineno, f"{_show(e.path)} is already defined on line {seen[1]}")
            parent = kinds.get(e.path[:-1])
            if parent is None:
                raise DumpError(lineno, f"parent {_show(e.path[:-1])} of {_show(e.path)} is not defined before it")
            if parent[0] != "dir":
                raise DumpError(lineno, f"parent {_show(e.path[:-1])} of {_show(e.path)} is a {parent[0]}, not a directory (line {parent[1]})")
        kinds[e.path] = (e.kind, lineno)
        entries.append(e)
    if not entries:
        raise DumpError(0, "no entries (a dump starts with the root /)")
    # Hard links may point forward; check their targets now that every path is known.
    by_path = {e.path: e for e in entries}
    for e in entries:
        if e.hardlink is not None:
            target = _resolve_link(e, by_path)
            if target.kind == "dir":
                raise DumpError(e.line, f"hard link {_show(e.path)} points to directory {_show(target.path)}")
    return entries


def _resolve_link(e: DumpEntry, by_path: dict[Path, DumpEntry]) -> DumpEntry:
    seen = {e.path}
    cur = e
    while cur.hardlink is not None:
        nxt = by_path.get(cur.hardlink)
        if nxt is None:
            raise DumpError(e.line, f"hard link {_show(e.path)} points to {_show(cur.hardlink)}, which the dump does not define")
        if nxt.path in seen:
            raise DumpError(e.line, f"hard link {_show(e.path)} is part of a loop of hard links")
        seen.add(nxt.path)
        cur = nxt
    return cur


# -------------------------------------------------------------------------------- mapping


def metacopy_value(digest: bytes | None) -> bytes:
    """The ``overlay.metacopy`` value composefs writes: empty, or header + fs-verity digest."""
    if digest is None:
        return b""
    return bytes((0, 4 + len(digest), 0, VERITY_ALGO[len(digest)])) + digest


def _image_xattrs(e: DumpEntry) -> dict[bytes, bytes]:
    """The entry's xattrs as the image stores them (overlay-escaped, markers added)."""
    out: dict[bytes, bytes] = {}
    for key, value in e.xattrs:
        if key.startswith(TRUSTED_OVL):
            key = ESCAPED_OVL + key[len(TRUSTED_OVL):]
        out[key] = value
    if e.is_external:
        out[XATTR_METACOPY] = metacopy_value(e.digest)
        if e.payload:
            out[XATTR_REDIRECT] = e.payload if e.payload.startswith(b"/") else b"/" + e.payload
    if e.is_whiteout:
        out[XATTR_ESC_WHITEOUT] = b""
        out[XATTR_USER_WHITEOUT] = b""
    return out


def _node(e: DumpEntry, xattrs: dict[bytes, bytes]) -> Node:
    kind = e.kind
    size = e.size
    target = None
    rdev = (0, 0)
    if e.is_whiteout:
        kind, size = "file", 0
    elif kind == "symlink":
        target = e.payload or b""
        size = len(target)
    elif kind in ("chardev", "blockdev"):
        rdev = (os.major(e.rdev), os.minor(e.rdev))
        size = 0
    elif kind in ("fifo", "socket"):
        size = 0
    ovl = tuple(sorted((k, v) for k, v in xattrs.items() if k.startswith(OVERLAY_PREFIXES)))
    return Node(kind, _stat.S_IMODE(e.mode), size, e.uid, e.gid, rdev, target, ovl)


@dataclass
class DumpLayer(MemoryLayer):
    """The EROFS layer a composefs dump describes (see the module docstring for the mapping)."""

    #: The dump lines by path (hard links keep their own ``@`` entry).
    entries: dict[Path, DumpEntry] = field(default_factory=dict)
    #: Every xattr of every inode as the image stores it, sorted by name.
    image_xattrs: dict[Path, tuple[tuple[bytes, bytes], ...]] = field(default_factory=dict)
    #: Root names of the 256 whiteouts the image writer added (those the dump did not use).
    root_whiteouts: tuple[bytes, ...] = ()
    #: The dump file, when read from one.
    source: str | None = None

    def entry(self, path: Path) -> DumpEntry | None:
        return self.entries.get(path)

    def object_path(self, path: Path) -> bytes | None:
        """The object-store path (``ab/cdef...``) a regular file's data comes from, if any."""
        e = self.entries.get(path)
        if e is not None and e.hardlink is not None:
            e = _resolve_link(e, self.entries)
        if e is None or not e.is_external or not e.payload:
            return None
        return e.payload.lstrip(b"/")


def load_dump(source: str | bytes | os.PathLike | TextIO | BinaryIO, label: str = "") -> DumpLayer:
    """Parse a composefs dump into the :class:`MemoryLayer` its EROFS image is to the overlay.

    ``source``: see :func:`parse_dump`.  Raises :class:`DumpError` (a ``ValueError``) with a
    one-line message naming the dump line.
    """
    data, name = _read_source(source)
    entries = parse_dump(data)
    by_path = {e.path: e for e in entries}

    xattrs: dict[Path, dict[bytes, bytes]] = {}
    for e in entries:
        if e.hardlink is None:
            xattrs[e.path] = _image_xattrs(e)
    # Parents of (escaped) whiteouts are marked, the way format version 1 does.
    for e in entries:
        if e.hardlink is None and e.is_whiteout:
            px = xattrs[e.path[:-1]]
            px[XATTR_ESC_WHITEOUTS] = b""
            px[XATTR_USER_WHITEOUTS] = b""
            px[XATTR_ESC_OPAQUE] = b"x"
            px[XATTR_USER_OPAQUE] = b"x"
    xattrs[()][XATTR_OPAQUE] = b"y"

    nodes: dict[Path, Node] = {}
    contents: dict[Path, bytes] = {}
    image: dict[Path, tuple[tuple[bytes, bytes], ...]] = {}
    for e in entries:
        real = _resolve_link(e, by_path) if e.hardlink is not None else e
        nodes[e.path] = _node(real, xattrs[real.path])
        image[e.path] = tuple(sorted(xattrs[real.path].items()))
        if real.kind == "file" and real.content is not None:
            contents[e.path] = real.content

    root = by_path[()]
    root_children = {e.path[0] for e in entries if len(e.path) == 1}
    selinux = dict(root.xattrs).get(b"security.selinux")
    stub_xattrs = ((b"security.selinux", selinux),) if selinux is not None else ()
    added = []
    for wh in ROOT_WHITEOUTS:
        if wh in root_children:
            continue
        nodes[(wh,)] = Node("chardev", 0o644, 0, root.uid, root.gid, (0, 0))
        image[(wh,)] = stub_xattrs
        added.append(wh)

    return DumpLayer(
        label=label or (os.path.basename(name) if name else "dump"),
        nodes=nodes,
        contents=contents,
        entries=by_path,
        image_xattrs=image,
        root_whiteouts=tuple(added),
        source=name,
    )


def load_object_store(path: str | os.PathLike, label: str = "objects") -> DiskLayer:
    """A composefs object store (``ab/cdef...`` files) as a data-only layer, with fs-verity."""
    return DiskLayer(os.fspath(path), label, want_verity=True)
