"""composefs dump files (composefs-dump(5)) as the lower layer the overlay really sees.

A composefs image is an EROFS metadata tree mounted as the top lower layer of an overlay whose
data-only layers (``lowerdir=<erofs>::<objects>``) hold the file contents.  The dump format
describes the *logical* tree and hides the overlay xattrs the image writer adds.
:func:`load_dump` parses a dump and rebuilds what the EROFS image carries, so the engine can
resolve a dump-described stack exactly like a mounted one.

Dump format (one inode per line, fields separated by one space)::

    PATH SIZE MODE NLINK UID GID RDEV MTIME PAYLOAD CONTENT DIGEST [KEY=VALUE ...]

* ``PATH`` is absolute, and every parent directory must be on an earlier line.  ``/`` comes
  first and is a directory.
* ``MODE`` is the octal ``st_mode``, type bits included.  A leading ``@`` makes the line a hard
  link: ``PAYLOAD`` names the target path (which may come later in the file), and the other
  fields are ignored.  Directories cannot be hard links.
* ``MTIME`` is ``sec.nsec``, two integers, not a float.
* ``PAYLOAD`` is the symlink target, or for a regular file the path of its backing object,
  relative to the object store (``ab/cdef...``).
* ``CONTENT`` is the inline content of a small file; its length must equal ``SIZE``.
* ``DIGEST`` is the hex fs-verity digest of the backing object (64 hex digits for SHA-256,
  128 for SHA-512).
* Escapes: ``\\xHH`` for any byte, plus ``\\\\``, ``\\n``, ``\\r``, ``\\t``.  In the three
  optional fields a lone ``-`` means "unset"; a literal ``-`` is written ``\\x2d``.  In an
  xattr the first unescaped ``=`` separates the key from the value.

What the EROFS image holds for each dump line (composefs's image writer, format version 1,
which it selects by itself as soon as the tree holds a whiteout).  Only names starting with
``trusted.overlay.`` / ``user.overlay.`` end up in :attr:`Node.xattrs`; :attr:`DumpLayer.image_xattrs`
keeps every xattr of the image:

============================================  ===============================================
dump line                                     EROFS image (what the overlay reads)
============================================  ===============================================
any xattr ``trusted.overlay.X=V``             renamed ``trusted.overlay.overlay.X=V`` (escaped:
                                              this overlay ignores it and shows it as
                                              ``trusted.overlay.X`` through the mount)
any other xattr (``user.overlay.*`` too)      kept as is
regular file, ``SIZE`` > 0, no ``CONTENT``    regular file of ``SIZE`` bytes (holes) with
                                              ``trusted.overlay.metacopy`` = empty, or with
                                              ``DIGEST``: 4-byte header ``00 len 00 algo`` +
                                              digest (``len`` 36, algo 1 for SHA-256; 68 and
                                              2 for SHA-512); and, when ``PAYLOAD`` is set,
                                              ``trusted.overlay.redirect`` = ``/`` + PAYLOAD
regular file with ``CONTENT``                 regular file holding the content, no overlay
                                              xattrs (``PAYLOAD``/``DIGEST`` are unused)
regular file, ``SIZE`` 0                      empty regular file, no overlay xattrs
char device with RDEV 0 (a whiteout)          *escaped* whiteout: zero-size regular file,
                                              same permission bits, with
                                              ``trusted.overlay.overlay.whiteout`` = "" and
                                              ``user.overlay.whiteout`` = ""
directory holding such a whiteout             adds ``trusted.overlay.overlay.whiteouts`` = "",
                                              ``user.overlay.whiteouts`` = "",
                                              ``trusted.overlay.overlay.opaque`` = ``x`` and
                                              ``user.overlay.opaque`` = ``x`` (over any
                                              value the dump gave these names)
the root directory                            adds ``trusted.overlay.opaque`` = ``y`` (real,
                                              not escaped)
root names ``00`` .. ``ff`` not in the dump   256 real whiteouts: char device 0/0, mode 0644,
                                              the root's uid/gid (and its security.selinux),
                                              so an object store mounted as a *regular* lower
                                              stays hidden
symlink                                       symlink, size = length of the target
hard link (``@`` mode)                        the same inode as its target
============================================  ===============================================

Not modelled: directory sizes (EROFS computes them from its directory blocks; the node keeps
the dump's ``SIZE``), mtimes and nlink (kept in :class:`DumpEntry` only).
"""

from __future__ import annotations

import functools
import io
from itertools import accumulate
import os
import re
import stat as _stat
import threading
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO, TextIO

from ..model.layers import OVERLAY_PREFIXES, DiskLayer, MemoryLayer, Node, Path

__all__ = [
    "DumpEntry",
    "DumpError",
    "DumpIndex",
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
    Raises :class:`DumpError` naming the first bad line.  (This builds every entry; the layer
    :func:`load_dump` returns keeps only an index and parses lines when asked.)
    """
    data, _ = _read_source(source)
    index = DumpIndex(data)
    return [index.entry_at(i) for i in range(len(index))]


# One dump line in its common form, checked by one regular expression: no backslash in PATH
# (so PATH is its own unescaped bytes), no "." / ".." / empty component, names of at most 255
# bytes, numbers short enough to be in range whatever their digits, RDEV 0, no CONTENT, a
# DIGEST of 64 or 128 hex digits, xattrs with a non-empty name and valid escapes.  A line
# that does not match is not wrong: it goes through :func:`_parse_line`, which decides (and
# words the error).  The test suite compares both paths against the eager parser.
_ESC = rb"\\(?:x[0-9a-fA-F]{2}|[\\nrt])"
# Possessive quantifiers (``*+``): every repeat below stops at a byte its successor must start
# with, so giving bytes back could never make a line match; not trying saves a sixth of the time.
_TOK0 = rb"[^\\ \n]*+(?:" + _ESC + rb"[^\\ \n]*+)*+"            # a field, maybe empty
_TOK = rb"(?=[^ \n])" + _TOK0                                # a non-empty field
_KEY = rb"(?=[^ \n=])[^\\ \n=]*+(?:" + _ESC + rb"[^\\ \n=]*+)*+"  # a non-empty xattr name
_NAME = rb"(?!\.\.?[/ ])[^/ \n\\\x00]{1,255}+"
_FAST_LINE = re.compile(
    rb"(/(?:" + _NAME + rb"(?:/" + _NAME + rb")*+)?)"  # PATH
    rb" (\d{1,18}+)"                                    # SIZE
    rb" (@?)([0-7]{1,6}+)"                               # MODE
    rb" \d{1,9}+ \d{1,9}+ \d{1,9}+"                     # NLINK UID GID
    rb" 0"                                              # RDEV
    rb" -?\d{1,18}+\.\d{1,9}+"                          # MTIME
    rb" (" + _TOK + rb")"                               # PAYLOAD
    rb" (" + _TOK + rb")"                               # CONTENT
    rb" (?:-|[0-9a-fA-F]{64}+(?:[0-9a-fA-F]{64})?+)"    # DIGEST
    rb"(?: " + _KEY + rb"=" + _TOK0 + rb")*+"           # xattrs
)

_FAST_MODES = frozenset(_TYPES)

_F_DIR = 1
_F_LINK = 2
_F_WHITEOUT = 4  # a (non-hard-link) whiteout line
_F_REG = 8  # only while building: a regular file (its CONTENT is checked against SIZE)


def _mode_flag(mode_raw: bytes) -> int:
    """The index flag of a MODE field the line expression accepted (-1: the full parser
    decides, and words the error)."""
    mode = int(mode_raw, 8)
    fmt = mode & 0o170000
    if mode > MAX_MODE or fmt not in _FAST_MODES:
        return -1
    return {_stat.S_IFDIR: _F_DIR, _stat.S_IFCHR: _F_WHITEOUT, _stat.S_IFREG: _F_REG}.get(fmt, 0)


class _Lines:
    """The line numbers of a dump without blank lines: entry ``i`` is on line ``i + 1``."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: int) -> int:
        if not -self.n <= idx < self.n:
            raise IndexError(idx)
        return idx % self.n + 1


def _unescaped_len(raw: bytes) -> int:
    """Length of a field the line expression accepted, once unescaped (-1: count it properly)."""
    if b"\\" not in raw:
        return len(raw)
    if b"\\\\" in raw:
        return -1
    hexes = raw.count(b"\\x")
    return len(raw) - 3 * hexes - (raw.count(b"\\") - hexes)


def _key_path(key: bytes) -> Path:
    return tuple(c for c in key.split(b"/") if c)


class DumpIndex:
    """A checked dump kept as its bytes plus an index: where each line starts, its line
    number and a few flags, and the children of each directory (about 25
    bytes a line besides the text).  Lines are parsed again when asked for.

    Building it checks every line (in the order and with the messages of the eager parser)
    in one pass that keeps nothing but the index: the common form of a line by one regular
    expression, any other through the full field parser.
    """

    def __init__(self, data: bytes):
        self.data = data
        #: where each line starts (4 bytes a line: a dump is at most MAX_DUMP bytes)
        self.starts = array("I" if len(data) < 2**32 else "Q")
        #: the line number of each entry, kept only when the dump has blank lines (else
        #: entry ``i`` is on line ``i + 1``)
        self._linenos: array | None = None
        self.flags = bytearray()
        #: every directory's children's indexes (in dump order), one directory after the
        #: other, and where each line's children start in it (``_kid_off[i]`` to
        #: ``_kid_off[i + 1]``): 8 bytes a line, no object per directory
        self._kids = array("I")
        self._kid_off = array("I")
        #: directories holding a (non-hard-link) whiteout
        self.whiteout_parents: set[int] = set()
        self._build()

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def linenos(self) -> "array | _Lines":
        return self._linenos if self._linenos is not None else _Lines(len(self.starts))

    def lineno(self, idx: int) -> int:
        return self._linenos[idx] if self._linenos is not None else idx + 1

    # -- the checking pass
    def _build(self) -> None:
        # the loop is the cost of every command on a dump: one regular expression per line
        # and a handful of operations; anything rarer (an error, an unusual line) leaves it.
        # (Whole-slice operations instead, findall and maps over a megabyte of lines, were
        # tried: 15% faster for a second way to build the index; the expression is 0.15 s of
        # the 0.43 on 141,000 lines, the bookkeeping in C-level maps hardly cheaper than here.)
        data = self.data
        fast = _FAST_LINE.fullmatch
        find = data.find
        starts, flags = self.starts, self.flags
        kids: dict[int, array] = {}  # while building: directory index -> its children
        blanks = data.startswith(b"\n") or b"\n\n" in data
        linenos = self._linenos = array("I") if blanks else None
        add_start, add_flag = starts.append, flags.append
        modes: dict[bytes, int] = {}  # MODE field -> its flag (-1: for the full parser)
        #: directory path -> (its index, its children)
        dirs: dict[bytes, tuple[int, array]] = {}
        # the hash of every path so far, in an open-addressing table of 8-byte slots (a set of
        # ints would take ten times that: 80 bytes a line at the peak of every command)
        bits = max(10, (2 * (data.count(b"\n") + 1)).bit_length())
        table = array("q", bytes(8 << bits))
        mask = (1 << bits) - 1
        self._paths = (table, mask)
        links: list[int] = []
        link_keys: set[int] = set()
        pos, lineno, size, idx = 0, 0, len(data), 0
        last_pkey, last_kids, parent = None, None, None
        F_DIR, F_REG, F_WHITEOUT = _F_DIR, _F_REG, _F_WHITEOUT
        while pos < size:
            end = find(b"\n", pos)
            if end < 0:
                end = size
            lineno += 1
            if end == pos:
                pos = end + 1
                continue
            m = fast(data, pos, end)
            flag = -1
            if m is not None:
                key, at, mode_raw, content = m.group(1, 3, 4, 6)
                flag = modes.get(mode_raw)
                if flag is None:
                    flag = modes[mode_raw] = _mode_flag(mode_raw)
                if at:
                    if flag == _F_DIR or flag < 0 or m.group(5) == b"-" or b"\\" in m.group(5):
                        flag = -1
                    else:
                        flag = _F_LINK
                        links.append(idx)
                        link_keys.add(hash(key))
                elif flag == F_REG:
                    flag = 0 if content == b"-" or _unescaped_len(content) == int(m.group(2)) else -1
            if flag < 0:
                e = _parse_line(data[pos:end], lineno)
                key = b"/" + b"/".join(e.path)
                if e.hardlink is not None:
                    flag = _F_LINK
                    links.append(idx)
                    link_keys.add(hash(key))
                else:
                    flag = _F_DIR if e.kind == "dir" else _F_WHITEOUT if e.is_whiteout else 0
            if idx:
                h = hash(key) or 1
                i = h & mask
                v = table[i]
                while v and v != h:  # open addressing, linear probing
                    i = (i + 1) & mask
                    v = table[i]
                if not v:
                    table[i] = h
                else:  # a path hashed like this one before (directories too)
                    if key == b"/":
                        raise DumpError(lineno, f"root / is defined again (first on line {self.lineno(0)})")
                    first = self._find(key, idx)
                    if first is not None:
                        raise DumpError(lineno, f"{_show(_key_path(key))} is already defined on line "
                                                f"{self.lineno(first)}")
                pkey = key[:key.rfind(b"/")] or b"/"
                if pkey != last_pkey:  # a dump lists a directory's entries together
                    parent = dirs.get(pkey)
                    if parent is None:
                        self._bad_parent(pkey, key, idx, lineno)
                    last_pkey, last_kids = pkey, parent[1].append
                last_kids(idx)
                if flag == F_WHITEOUT:
                    self.whiteout_parents.add(parent[0])
            else:
                if key != b"/":
                    raise DumpError(lineno, f"the first entry must be the root /, not {_show(_key_path(key))}")
                if flag != _F_DIR:
                    raise DumpError(lineno, "root / must be a directory")
                h = hash(key) or 1
                table[h & mask] = h
            if flag == F_DIR:
                kids_of = array("I")
                dirs[key] = (idx, kids_of)
                kids[idx] = kids_of
            add_start(pos)
            if linenos is not None:
                linenos.append(lineno)
            add_flag(flag)
            idx += 1
            pos = end + 1
        counts = array("I", bytes(4 * len(starts)))
        for d, arr in kids.items():  # in line order
            counts[d] = len(arr)
            self._kids.extend(arr)
        kids.clear()
        self._kid_off = array("I", accumulate(counts, initial=0))
        del counts
        if not starts:
            raise DumpError(0, "no entries (a dump starts with the root /)")
        # Hard links may point forward; check their targets now that every path is known.  A
        # target that is a directory, or whose path hashes like no line's, or like a hard link's,
        # is looked up for real; the others are lines that are neither (the hash of every path
        # is in the table).
        tables = functools.lru_cache(maxsize=64)(self.names)
        for idx in links:
            tkey = b"/" + b"/".join(self._link_target(idx))
            if tkey not in dirs and self._known(hash(tkey) or 1) and hash(tkey) not in link_keys:
                continue
            if self.is_dir(self.resolve(idx, tables)):
                e = self.entry_at(idx)
                raise DumpError(e.line, f"hard link {_show(e.path)} points to directory "
                                        f"{_show(self.entry_at(self.resolve(idx)).path)}")
        del self._paths

    def _known(self, h: int) -> bool:
        """Whether a line's path hashes to ``h`` (while building)."""
        table, mask = self._paths
        i = h & mask
        while True:
            v = table[i]
            if v == h:
                return True
            if not v:
                return False
            i = (i + 1) & mask

    def _find(self, key: bytes, before: int) -> int | None:
        """The first line before ``before`` whose path is ``key`` (slow: errors only)."""
        want = _key_path(key)
        for i in range(before):
            if self.path_at(i) == want:
                return i
        return None

    def _bad_parent(self, pkey: bytes, key: bytes, idx: int, lineno: int) -> None:
        parent, path = _key_path(pkey), _key_path(key)
        first = self._find(pkey, idx)
        if first is None:
            raise DumpError(lineno, f"parent {_show(parent)} of {_show(path)} is not defined before it")
        raise DumpError(lineno, f"parent {_show(parent)} of {_show(path)} is a {self.kind_at(first)}, "
                                f"not a directory (line {self.lineno(first)})")

    # -- reading lines
    def raw(self, idx: int) -> bytes:
        start = self.starts[idx]
        end = self.data.find(b"\n", start)
        return self.data[start:end if end >= 0 else len(self.data)]

    def entry_at(self, idx: int) -> DumpEntry:
        return _parse_line(self.raw(idx), self.lineno(idx))

    def path_at(self, idx: int) -> Path:
        start = self.starts[idx]
        raw = self.data[start:self.data.find(b" ", start)]
        if b"\\" in raw or b"//" in raw or raw.endswith(b"/") and raw != b"/":
            return _path(raw, self.lineno(idx))
        return tuple(raw.split(b"/")[1:]) if raw != b"/" else ()

    def name_at(self, idx: int) -> bytes:
        path = self.path_at(idx)
        return path[-1] if path else b""

    def kind_at(self, idx: int) -> str:
        if self.flags[idx] & _F_DIR:
            return "dir"
        return self.entry_at(idx).kind

    def is_dir(self, idx: int) -> bool:
        return bool(self.flags[idx] & _F_DIR)

    def children(self, idx: int) -> array:
        off = self._kid_off
        return self._kids[off[idx]:off[idx + 1]]

    def resolve(self, idx: int, names=None) -> int:
        """The index a hard link line finally points to (``idx`` itself for other lines)."""
        if not self.flags[idx] & _F_LINK:
            return idx
        seen = {idx}
        cur = idx
        while True:
            target = self._link_target(cur)
            nxt = self.lookup(target, names)
            if nxt is None:
                first = self.entry_at(idx)
                raise DumpError(first.line, f"hard link {_show(first.path)} points to {_show(target)}, "
                                            "which the dump does not define")
            if nxt in seen:
                first = self.entry_at(idx)
                raise DumpError(first.line, f"hard link {_show(first.path)} is part of a loop of hard links")
            seen.add(nxt)
            if not self.flags[nxt] & _F_LINK:
                return nxt
            cur = nxt

    def _link_target(self, idx: int) -> Path:
        """The path a hard link line names (its PAYLOAD), as :func:`_parse_line` reads it."""
        payload = self.raw(idx).split(b" ", 9)[8]
        return tuple(c for c in _unescape(payload, self.lineno(idx), "PAYLOAD").split(b"/") if c)

    def lookup(self, path: Path, names=None) -> int | None:
        """The index of the line of ``path``, or None (``names(idx)`` gives a directory's
        name table; by default one is built for each directory on the way)."""
        names = names or self.names
        idx = 0
        for comp in path:
            if not self.flags[idx] & _F_DIR:
                return None
            found = names(idx).get(comp)
            if found is None:
                return None
            idx = found
        return idx

    def names(self, idx: int) -> dict[bytes, int]:
        return {self.name_at(k): k for k in self.children(idx)}




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


class _View(Mapping):
    """A read-only mapping computed from the dump on demand (the old layer's eager dicts)."""

    def __init__(self, layer: "DumpLayer", get, paths):
        self._layer, self._get, self._paths = layer, get, paths

    def __getitem__(self, path):
        value = self._get(path) if isinstance(path, tuple) else None
        if value is None:
            raise KeyError(path)
        return value

    def __iter__(self):
        for p in self._paths():
            if self._get(p) is not None:
                yield p

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._layer.label!r}>"


class DumpLayer(MemoryLayer):
    """The EROFS layer a composefs dump describes (see the module docstring for the mapping).

    Holds the dump's bytes and a :class:`DumpIndex`; a line is parsed when its path, its
    directory or its content is asked for (a few thousand recent answers are cached).  The
    mappings of the eager layer (``nodes``, ``contents``, ``entries``, ``image_xattrs``,
    ``children``) are views computed on demand.
    """

    #: answers kept (nodes) and directory name tables kept
    MAX_CACHED = 4096
    MAX_TABLES = 64
    #: names in all kept tables together (a few huge directories do not pile up)
    MAX_TABLE_NAMES = 100_000

    def __init__(self, index: DumpIndex, label: str = "", source: str | None = None):
        # MemoryLayer's own fields, as views; its __post_init__ (which links every node) is not run
        self.label = label
        self.path = None
        self.source = source
        self.index = index
        self._lock = threading.RLock()
        self._answers: OrderedDict[int, tuple[Node, tuple, bytes | None]] = OrderedDict()
        self._tables: OrderedDict[int, dict[bytes, int]] = OrderedDict()
        self._table_names = 0
        root = index.entry_at(0)
        self._root_uid_gid = (root.uid, root.gid)
        selinux = dict(root.xattrs).get(b"security.selinux")
        self._stub_xattrs = ((b"security.selinux", selinux),) if selinux is not None else ()
        present = {index.name_at(k) for k in index.children(0)}
        self.root_whiteouts: tuple[bytes, ...] = tuple(w for w in ROOT_WHITEOUTS if w not in present)
        self._stubs = frozenset(self.root_whiteouts)
        self.nodes = _View(self, self.node, self._all_paths)
        self.contents = _View(self, self._content, self._all_paths)
        self.entries = _View(self, self.entry, self._dump_paths)
        self.image_xattrs = _View(self, self._image, self._all_paths)
        self.children = _View(self, self._children, self._all_paths)

    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"DumpLayer(label={self.label!r}, source={self.source!r}, lines={len(self.index)})"

    # -- index access
    def _names(self, idx: int) -> dict[bytes, int]:
        table = self._tables.get(idx)
        if table is None:
            table = self.index.names(idx)
            self._tables[idx] = table
            self._table_names += len(table)
            while len(self._tables) > 1 and (len(self._tables) > self.MAX_TABLES
                                             or self._table_names > self.MAX_TABLE_NAMES):
                _, old = self._tables.popitem(last=False)
                self._table_names -= len(old)
        else:
            self._tables.move_to_end(idx)
        return table

    def _lookup(self, path: Path) -> int | None:
        return self.index.lookup(path, self._names)

    def _answer(self, idx: int) -> tuple[Node, tuple, bytes | None]:
        """(node, every image xattr sorted, inline content) of the line ``idx``."""
        got = self._answers.get(idx)
        if got is not None:
            self._answers.move_to_end(idx)
            return got
        index = self.index
        real_idx = index.resolve(idx, self._names)
        real = index.entry_at(real_idx)
        xattrs = _image_xattrs(real)
        if real_idx in index.whiteout_parents:  # parents of whiteouts, as format version 1 marks them
            xattrs[XATTR_ESC_WHITEOUTS] = b""
            xattrs[XATTR_USER_WHITEOUTS] = b""
            xattrs[XATTR_ESC_OPAQUE] = b"x"
            xattrs[XATTR_USER_OPAQUE] = b"x"
        if real_idx == 0:
            xattrs[XATTR_OPAQUE] = b"y"
        content = real.content if real.kind == "file" and real.content is not None else None
        got = (_node(real, xattrs), tuple(sorted(xattrs.items())), content)
        self._answers[idx] = got
        if len(self._answers) > self.MAX_CACHED:
            self._answers.popitem(last=False)
        return got

    def _stub(self, path: Path) -> bool:
        return len(path) == 1 and path[0] in self._stubs

    def _stub_node(self) -> Node:
        return Node("chardev", 0o644, 0, *self._root_uid_gid, (0, 0))

    def _dump_paths(self):
        for i in range(len(self.index)):
            yield self.index.path_at(i)

    def _all_paths(self):
        yield from self._dump_paths()
        for w in self.root_whiteouts:
            yield (w,)

    # -- the eager layer's mappings
    def _content(self, path: Path) -> bytes | None:
        with self._lock:
            idx = self._lookup(path)
            return None if idx is None else self._answer(idx)[2]

    def _image(self, path: Path) -> tuple | None:
        if self._stub(path):
            return self._stub_xattrs
        with self._lock:
            idx = self._lookup(path)
            return None if idx is None else self._answer(idx)[1]

    def _children(self, path: Path) -> list[bytes] | None:
        names = self.listdir(path)
        return names or None

    # -- Layer interface
    def node(self, path: Path) -> Node | None:
        if self._stub(path):
            return self._stub_node()
        with self._lock:
            idx = self._lookup(path)
            return None if idx is None else self._answer(idx)[0]

    def listdir(self, path: Path) -> list[bytes]:
        with self._lock:
            idx = self._lookup(path)
            if idx is None or not self.index.is_dir(idx):
                return []
            names = list(self._names(idx))
        if not path:
            names += self.root_whiteouts
        return names

    def scan(self, path: Path) -> dict[bytes, Node]:
        with self._lock:
            idx = self._lookup(path)
            if idx is None or not self.index.is_dir(idx):
                return {}
            out = {name: self._answer(k)[0] for name, k in self._names(idx).items()}
        if not path:
            stub = self._stub_node()
            for w in self.root_whiteouts:
                out[w] = stub
        return out

    def read(self, path: Path, limit: int = 4096) -> bytes:
        n = self.node(path)
        if n is None or not n.is_reg:
            return b""
        data = self._content(path)
        if data is None:
            return b"\0" * min(n.size, limit)
        return data[:limit]

    def add(self, path: Path, node: Node, content: bytes | None = None) -> None:
        raise TypeError("a composefs dump layer is read-only")

    # -- dump specifics
    def entry(self, path: Path) -> DumpEntry | None:
        """The dump line of ``path`` (a hard link keeps its own ``@`` entry), parsed."""
        with self._lock:
            idx = self._lookup(path)
        return None if idx is None else self.index.entry_at(idx)

    def object_path(self, path: Path) -> bytes | None:
        """The object-store path (``ab/cdef...``) a regular file's data comes from, if any."""
        with self._lock:
            idx = self._lookup(path)
        if idx is None:
            return None
        with self._lock:
            e = self.index.entry_at(self.index.resolve(idx, self._names))
        if not e.is_external or not e.payload:
            return None
        return e.payload.lstrip(b"/")


def load_dump(source: str | bytes | os.PathLike | TextIO | BinaryIO, label: str = "") -> DumpLayer:
    """A composefs dump as the :class:`MemoryLayer` its EROFS image is to the overlay.

    ``source``: see :func:`parse_dump`.  Every line is checked here; raises :class:`DumpError`
    (a ``ValueError``) with a one-line message naming the dump line.  The layer keeps the
    dump's bytes and an index, and parses a line when it is asked for.
    """
    data, name = _read_source(source)
    return DumpLayer(DumpIndex(data), label or (os.path.basename(name) if name else "dump"), name)


def load_object_store(path: str | os.PathLike, label: str = "objects") -> DiskLayer:
    """A composefs object store (``ab/cdef...`` files) as a data-only layer, with fs-verity."""
    return DiskLayer(os.fspath(path), label, want_verity=True)
