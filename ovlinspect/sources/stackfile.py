"""Stack files: a whole overlay stack described in one TOML file.

A stack file names the layers in kernel order (upper first, then the regular lower layers top
first, then the data-only layers) and, for each layer, either a directory on disk, a composefs
dump, or inline entries::

    version = 1
    description = "one paragraph"
    options = "metacopy=on"            # mount -o string, optional
    [params]                           # module parameter overrides, optional
    metacopy = "N"

    [[layer]]
    role = "lower"                     # upper | lower | data
    name = "A"
    [[layer.entry]]
    path = "/foo"
    type = "file"                      # file dir symlink whiteout chardev blockdev fifo socket
    mode = "0644"
    size = 18
    xattrs = { "trusted.overlay.redirect" = "/1e/abcdef", "trusted.overlay.metacopy" = "" }

Entry keys: ``path`` (or ``path_hex``), ``type``, ``mode`` (octal string or integer),
``size``, ``content`` (or ``content_hex``), ``target`` (or ``target_hex``), ``rdev``
(``"maj:min"``), ``uid``, ``gid``, ``xattrs`` / ``xattrs_hex`` (name to value; in
``xattrs_hex`` the value is hex, and a name that is not valid UTF-8 is written
``"hex:<hex of the name>"``), and ``verity = { algo = 1, digest_hex = "..." }``.

A file whose ``size`` is larger than its content is sparse: the rest reads as zeros.
An entry at ``/`` sets the layer root's own mode, owner and xattrs.

:func:`load_stack` / :func:`loads_stack` read a stack file into a :class:`~ovlinspect.model.stack.Stack`;
:func:`dump_stack` writes any stack (disk layers included) back as one self-contained file with
inline entries, so a bug report can carry the whole stack.
"""

from __future__ import annotations

import os
import pathlib
import tomllib
from typing import Any

from ..model.layers import (
    DiskLayer,
    Layer,
    LayerError,
    MemoryLayer,
    Node,
    Path,
    join_path,
    layer_entries,
    split_path,
)
from ..model.stack import Stack
from .mountinfo import overlay_dirs
from ..model.xattrs import safe
from . import composefs

__all__ = ["StackFileError", "load_stack", "loads_stack", "stack_from_dict", "dump_stack", "INLINE_LIMIT"]

VERSION = 1

#: Largest stack file read (bytes): a bigger one is refused with one line, not parsed.
MAX_STACK_FILE = 256 << 20

#: Largest size, uid/gid and device numbers an entry may give (what the kernel can hold:
#: loff_t, uid_t/gid_t, and the kernel's dev_t: a 12-bit major and a 20-bit minor).
MAX_SIZE = 2**63 - 1
MAX_ID = 2**32 - 1
MAX_MAJOR = 2**12 - 1
MAX_MINOR = 2**20 - 1

#: Files up to this size are written inline by :func:`dump_stack`; sparse contents are padded
#: with zeros up to this size when loaded.
INLINE_LIMIT = 64 * 1024

ROLES = ("upper", "lower", "data")
ENTRY_TYPES = ("file", "dir", "symlink", "whiteout", "chardev", "blockdev", "fifo", "socket")
DEFAULT_MODES = {"file": 0o644, "dir": 0o755, "symlink": 0o777}

_TOP_KEYS = {"version", "description", "options", "params", "layer", "workdir"}
_LAYER_KEYS = {"role", "name", "path", "dump", "entry"}
_ENTRY_KEYS = {
    "path", "path_hex", "type", "mode", "size", "content", "content_hex", "target",
    "target_hex", "rdev", "uid", "gid", "xattrs", "xattrs_hex", "verity",
}


class StackFileError(ValueError):
    """A stack file cannot be loaded; the message is one line naming the file and the problem."""


# ------------------------------------------------------------------------------ loading


def load_stack(path: str | os.PathLike) -> Stack:
    """Load the stack file at ``path``; relative layer paths are relative to its directory."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_STACK_FILE + 1)
    except OSError as e:
        raise StackFileError(f"{p}: cannot read stack file: {e.strerror}") from None
    except ValueError as e:  # a NUL in the path
        raise StackFileError(f"{p}: cannot read stack file: {e}") from None
    if len(raw) > MAX_STACK_FILE:
        raise StackFileError(f"{p}: stack file larger than {MAX_STACK_FILE >> 20} MiB; refused")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StackFileError(f"{p}: not UTF-8 text (byte {e.start})") from None
    base = os.path.dirname(os.path.abspath(p))
    return loads_stack(text, base, source=p)


def loads_stack(text: str, base_dir: str | os.PathLike = ".", source: str | None = None) -> Stack:
    """Load a stack from the text of a stack file; ``base_dir`` anchors relative layer paths."""
    return _Loader(os.path.abspath(os.fspath(base_dir)), source or "<stack file>").load(text)


def stack_from_dict(doc: dict, base_dir: str | os.PathLike = ".", source: str | None = None) -> Stack:
    """Load a stack from an already parsed stack-file document (what ``tomllib`` returns)."""
    return _Loader(os.path.abspath(os.fspath(base_dir)), source or "<stack file>").load_doc(doc)


def _one_line(s: str) -> str:
    return " ".join(str(s).split())


class _Loader:
    def __init__(self, base: str, source: str):
        self.base = base
        self.source = source

    def fail(self, where: str, msg: str) -> StackFileError:
        prefix = f"{self.source}: {where}: " if where else f"{self.source}: "
        return StackFileError(_one_line(prefix + msg))

    def load(self, text: str) -> Stack:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise self.fail("", f"malformed TOML: {e}") from None
        except RecursionError:
            raise self.fail("", "malformed TOML: nested too deeply") from None
        except ValueError as e:  # an integer of more than 4300 digits, ...
            raise self.fail("", f"malformed TOML: {e}") from None
        return self.load_doc(doc)

    def load_doc(self, doc: dict) -> Stack:
        if not isinstance(doc, dict):
            raise self.fail("", "a stack file is a table")
        unknown = set(doc) - _TOP_KEYS
        if unknown:
            raise self.fail("", f"unknown key {sorted(unknown)[0]!r}")
        version = doc.get("version", VERSION)
        if type(version) is not int or version != VERSION:  # not true, not 1.0
            raise self.fail("", f"unsupported version {version!r} (this ovlinspect reads version {VERSION})")
        description = doc.get("description", "")
        if not isinstance(description, str):
            raise self.fail("", "description must be a string")
        options = doc.get("options", "")
        if not isinstance(options, str):
            raise self.fail("", "options must be a mount -o string such as \"metacopy=on\"")
        params = self._params(doc.get("params"))
        layers = doc.get("layer", [])
        if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
            raise self.fail("", "layer must be an array of tables ([[layer]])")

        upper: Layer | None = None
        lowers: list[Layer] = []
        data: list[Layer] = []
        built: list[Layer] = []
        try:
            for i, spec in enumerate(layers):
                role, layer = self._layer(i, spec)
                built.append(layer)
                where = f"layer {i + 1} ({layer.label})"
                if role == "upper":
                    if upper is not None:
                        raise self.fail(where, "a stack has at most one upper layer")
                    if lowers or data:
                        raise self.fail(where, "the upper layer must come first")
                    upper = layer
                elif role == "lower":
                    if data:
                        raise self.fail(where, "regular lower layers cannot follow data layers")
                    lowers.append(layer)
                else:
                    data.append(layer)
            if not lowers and not data:
                raise self.fail("", "no lower layer (a stack needs at least one role = \"lower\" layer)")
            workdir = doc.get("workdir")
            if workdir is not None:
                if not isinstance(workdir, str):
                    raise self.fail("", "workdir must be a path string")
                workdir = os.path.join(self.base, workdir)
        except BaseException:
            for layer in built:
                layer.close()
            raise
        return Stack(
            lowers=lowers,
            data=data,
            upper=upper,
            workdir=workdir,
            options=options,
            source=self.source,
            description=description,
            params=params,
            overlays_mounted=overlay_dirs,
        )

    def _params(self, params: Any) -> dict[str, str] | None:
        if params is None:
            return None
        if not isinstance(params, dict):
            raise self.fail("params", "must be a table of module parameters")
        out = {}
        for k, v in params.items():
            if isinstance(v, bool):
                v = "Y" if v else "N"
            elif isinstance(v, int):
                v = str(v)
            elif not isinstance(v, str):
                raise self.fail("params", f"{k}: value must be a string such as \"N\"")
            out[k] = v
        return out

    # -- layers
    def _layer(self, i: int, spec: dict) -> tuple[str, Layer]:
        name = spec.get("name")
        role = spec.get("role")
        where = f"layer {i + 1}" + (f" ({name})" if isinstance(name, str) else "")
        unknown = set(spec) - _LAYER_KEYS
        if unknown:
            raise self.fail(where, f"unknown key {sorted(unknown)[0]!r}")
        if role not in ROLES:
            raise self.fail(where, f"unknown role {role!r} (expected upper, lower or data)")
        if name is None:
            name = f"{role}{i}"
        if not isinstance(name, str) or not name:
            raise self.fail(where, "name must be a non-empty string")
        sources = [k for k in ("path", "dump", "entry") if k in spec]
        if len(sources) > 1:
            raise self.fail(where, f"give only one of path, dump or entries (got {' and '.join(sources)})")
        if "path" in spec:
            p = spec["path"]
            if not isinstance(p, str) or not p:
                raise self.fail(where, "path must be a directory path string")
            full = os.path.normpath(os.path.join(self.base, p))
            try:
                return role, DiskLayer(full, label=name)
            except LayerError as e:
                raise self.fail(where, str(e)) from None
        if "dump" in spec:
            return role, self._dump_layer(where, name, spec["dump"])
        entries = spec.get("entry", [])
        if not isinstance(entries, list) or not all(isinstance(x, dict) for x in entries):
            raise self.fail(where, "entry must be an array of tables ([[layer.entry]])")
        return role, self._memory_layer(where, name, entries)

    def _dump_layer(self, where: str, name: str, dump: Any) -> Layer:
        if not isinstance(dump, str) or not dump:
            raise self.fail(where, "dump must be a file path string")
        full = os.path.normpath(os.path.join(self.base, dump))
        if not os.path.isfile(full):
            raise self.fail(where, f"dump file does not exist: {full}")
        try:
            layer = composefs.load_dump(pathlib.Path(full))  # a path, even one holding "\n"
        except Exception as e:  # the dump parser reports its own problems
            raise self.fail(where, f"cannot load composefs dump {full}: {e}") from None
        layer.label = name
        layer.path = os.path.abspath(full)  # shown where the layer came from
        return layer

    def _memory_layer(self, where: str, name: str, entries: list[dict]) -> MemoryLayer:
        layer = MemoryLayer(label=name)
        explicit: dict[Path, str] = {}
        for j, e in enumerate(entries):
            path = self._entry_path(f"{where} entry {j + 1}", e)
            ewhere = f"{where} entry {os.fsdecode(join_path(path))}"
            node, content = self._entry(ewhere, e)
            if path in explicit:
                raise self.fail(ewhere, "duplicate entry")
            if not path and node.kind != "dir":
                raise self.fail(ewhere, "the layer root must be a directory")
            # Parents: an explicit parent must be a directory.
            for k in range(1, len(path)):
                kind = explicit.get(path[:k])
                if kind is not None and kind != "dir":
                    raise self.fail(
                        ewhere,
                        f"parent {os.fsdecode(join_path(path[:k]))} is a {kind}, not a directory",
                    )
            # A later entry for an implicitly created parent must be a directory.
            if path in layer.nodes and path not in explicit and path and node.kind != "dir":
                raise self.fail(ewhere, f"is a {node.kind} but earlier entries put files below it")
            explicit[path] = node.kind
            layer.add(path, node, content)
        return layer

    def _entry_path(self, where: str, e: dict) -> Path:
        raw = self._text_or_hex(where, e, "path")
        if raw is None:
            raise self.fail(where, "entry has no path")
        if not raw.startswith(b"/"):
            raise self.fail(where, f"path must be absolute (start with /): {os.fsdecode(raw)!r}")
        parts = [x for x in raw.split(b"/") if x not in (b"", b".")]
        if b".." in parts:
            raise self.fail(where, f"path must not contain '..': {os.fsdecode(raw)!r}")
        if b"\0" in raw:
            raise self.fail(where, "path contains a NUL byte")
        long = [x for x in parts if len(x) > 255]
        if long:
            raise self.fail(where, f"a name of {len(long[0])} bytes: no filesystem takes more than 255")
        return split_path(raw)

    def _text_or_hex(self, where: str, e: dict, key: str) -> bytes | None:
        """``key`` as text or ``key_hex`` as hex bytes (not both), or None when neither."""
        if key in e and f"{key}_hex" in e:
            raise self.fail(where, f"give {key} or {key}_hex, not both")
        if key in e:
            if not isinstance(e[key], str):
                raise self.fail(where, f"{key} must be a string")
            return e[key].encode("utf-8", "surrogateescape")
        if f"{key}_hex" in e:
            return self._hex(where, f"{key}_hex", e[f"{key}_hex"])
        return None

    def _hex(self, where: str, key: str, value: Any) -> bytes:
        if not isinstance(value, str):
            raise self.fail(where, f"{key} must be a hex string")
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise self.fail(where, f"{key} is not valid hex: {value!r}") from None

    def _int(self, where: str, key: str, value: Any, lo: int = 0, hi: int = MAX_SIZE) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"{key} must be an integer, got {value!r}")
        if not lo <= value <= hi:
            raise self.fail(where, f"{key} out of range: {value}")
        return value

    def _entry(self, where: str, e: dict) -> tuple[Node, bytes | None]:
        unknown = set(e) - _ENTRY_KEYS
        if unknown:
            raise self.fail(where, f"unknown key {sorted(unknown)[0]!r}")
        etype = e.get("type")
        if etype not in ENTRY_TYPES:
            raise self.fail(where, f"unknown type {etype!r} (expected one of {', '.join(ENTRY_TYPES)})")
        kind = "chardev" if etype == "whiteout" else etype

        # mode
        mode = e.get("mode", DEFAULT_MODES.get(kind, 0o644))
        if isinstance(mode, str):
            m = mode.strip().lower()
            if m.startswith("0o"):
                m = m[2:]
            try:
                mode = int(m, 8)
            except ValueError:
                raise self.fail(where, f"bad mode {e['mode']!r} (expected octal such as \"0644\")") from None
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise self.fail(where, f"bad mode {e.get('mode')!r} (permission bits 0 to 07777)")

        # content
        content = self._text_or_hex(where, e, "content")
        if content is not None and kind != "file":
            raise self.fail(where, f"content given for a {etype}")

        # size
        if "size" in e:
            size = self._int(where, "size", e["size"])
            if kind not in ("file", "dir", "symlink") and size:
                raise self.fail(where, f"size given for a {etype}")
        else:
            size = len(content) if content is not None else 0
        if content is not None and size < len(content):
            raise self.fail(where, f"size {size} is smaller than the content ({len(content)} bytes)")
        if content is not None and len(content) < size:
            # Sparse tail: keep zeros in memory up to INLINE_LIMIT so reads match the disk file.
            content = content + b"\0" * (_padded_length(len(content), size) - len(content))

        # target
        target = self._text_or_hex(where, e, "target")
        if kind == "symlink":
            if not target:
                raise self.fail(where, "a symlink needs a non-empty target")
            if "size" not in e:
                size = len(target)
        elif target is not None:
            raise self.fail(where, f"target given for a {etype}")
        if kind == "dir" and "size" not in e:
            size = 0

        # rdev
        rdev = (0, 0)
        if "rdev" in e:
            if kind not in ("chardev", "blockdev"):
                raise self.fail(where, f"rdev given for a {etype}")
            rdev = self._rdev(where, e["rdev"])
            if etype == "whiteout" and rdev != (0, 0):
                raise self.fail(where, "a whiteout is a character device 0:0")

        uid = self._int(where, "uid", e.get("uid", 0), 0, MAX_ID)
        gid = self._int(where, "gid", e.get("gid", 0), 0, MAX_ID)
        xattrs = self._xattrs(where, e)
        verity = self._verity(where, e.get("verity"), kind)
        node = Node(kind, mode, size, uid, gid, rdev, target, xattrs, verity)
        return node, content  # a file without content is sparse/empty: reads as zeros

    def _rdev(self, where: str, value: Any) -> tuple[int, int]:
        if isinstance(value, list) and len(value) == 2:
            return (self._int(where, "rdev major", value[0], 0, MAX_MAJOR),
                    self._int(where, "rdev minor", value[1], 0, MAX_MINOR))
        if isinstance(value, str) and value.count(":") == 1:
            a, b = value.split(":")
            if a.isascii() and a.isdigit() and b.isascii() and b.isdigit() and len(a) + len(b) <= 40:
                return (self._int(where, "rdev major", int(a), 0, MAX_MAJOR),
                        self._int(where, "rdev minor", int(b), 0, MAX_MINOR))
        raise self.fail(where, f"bad rdev {value!r} (expected \"major:minor\")")

    def _xattrs(self, where: str, e: dict) -> tuple[tuple[bytes, bytes], ...]:
        out: dict[bytes, bytes] = {}
        for key, is_hex in (("xattrs", False), ("xattrs_hex", True)):
            table = e.get(key)
            if table is None:
                continue
            if not isinstance(table, dict):
                raise self.fail(where, f"{key} must be a table of name = value")
            for name, value in table.items():
                if name.startswith("hex:"):
                    bname = self._hex(where, f"{key} name", name[4:])
                else:
                    bname = name.encode("utf-8", "surrogateescape")
                if not bname or b"\0" in bname:
                    raise self.fail(where, f"bad xattr name {name!r}")
                if not isinstance(value, str):
                    raise self.fail(where, f"xattr {name} value must be a string")
                bvalue = self._hex(where, f"xattr {name}", value) if is_hex else value.encode("utf-8", "surrogateescape")
                if bname in out:
                    raise self.fail(where, f"xattr {name} given twice")
                out[bname] = bvalue
        return tuple(out.items())

    def _verity(self, where: str, v: Any, kind: str) -> tuple[int, bytes] | None:
        if v is None:
            return None
        if kind != "file":
            raise self.fail(where, "verity given for something that is not a file")
        if not isinstance(v, dict) or set(v) - {"algo", "digest_hex"} or "digest_hex" not in v:
            raise self.fail(where, "verity must be { algo = 1, digest_hex = \"...\" }")
        return (self._int(where, "verity algo", v.get("algo", 1), 0, 255), self._hex(where, "verity digest_hex", v["digest_hex"]))


# ------------------------------------------------------------------------------ writing


def _toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        elif not ch.isprintable() and not 0xD800 <= o <= 0xDFFF:  # C1, U+2028, bidi, ...:
            out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")  # same value, inert text
        elif 0xD800 <= o <= 0xDFFF:  # a byte that is not UTF-8 (surrogateescape): TOML cannot
            out.append(safe(ch).replace("\\", "\\\\"))  # hold it; its \\xNN text instead
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _utf8(b: bytes) -> str | None:
    """``b`` as text when it is valid UTF-8 (and has no surrogates), else None."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _text_ok(b: bytes) -> str | None:
    """Text form for a value: valid UTF-8 without NULs or other awkward control bytes."""
    s = _utf8(b)
    if s is None:
        return None
    if any((ord(c) < 0x20 and c not in "\n\t") or ord(c) == 0x7F for c in s):
        return None
    return s


def _key(k: str) -> str:
    if k and all(c.isascii() and (c.isalnum() or c in "_-") for c in k):
        return k
    return _toml_str(k)



def _padded_length(content_len: int, size: int) -> int:
    """How long the loader makes a file's in-memory content (see ``_Loader._entry``)."""
    if content_len >= size:
        return content_len
    return min(size, max(INLINE_LIMIT, content_len))


def _shortest_content(content: bytes, size: int) -> bytes:
    """``content`` without the trailing zeros the loader would add back by itself."""
    short = content.rstrip(b"\0")
    if _padded_length(len(short), size) == len(content):
        return short
    return content


def _entry_lines(layer: Layer, path: Path, node: Node) -> list[str]:
    lines = ["[[layer.entry]]"]
    raw = join_path(path)
    s = _text_ok(raw)
    if s is not None:
        lines.append(f"path = {_toml_str(s)}")
    else:
        lines.append(f"path_hex = {_toml_str(raw.hex())}")
    kind = node.kind
    if kind == "chardev" and node.rdev == (0, 0):
        lines.append('type = "whiteout"')
    else:
        lines.append(f"type = {_toml_str(kind)}")
    lines.append(f'mode = "{node.mode:04o}"')
    if kind == "symlink":
        target = node.target or b""
        t = _text_ok(target)
        lines.append(f"target = {_toml_str(t)}" if t is not None else f"target_hex = {_toml_str(target.hex())}")
        if node.size != len(target):
            lines.append(f"size = {node.size}")
    elif kind in ("file", "dir"):
        lines.append(f"size = {node.size}")
    if kind == "file":
        content: bytes | None
        if isinstance(layer, MemoryLayer):
            content = layer.contents.get(path)
        else:
            content = layer.read(path, node.size) if node.size <= INLINE_LIMIT else None
            if content is not None and not content.strip(b"\0"):
                content = None  # all zeros: sparse
        if content is not None:
            content = _shortest_content(content[: node.size], node.size)
            t = _text_ok(content)
            lines.append(f"content = {_toml_str(t)}" if t is not None else f"content_hex = {_toml_str(content.hex())}")
    if kind in ("chardev", "blockdev") and node.rdev != (0, 0):
        lines.append(f'rdev = "{node.rdev[0]}:{node.rdev[1]}"')
    if node.uid:
        lines.append(f"uid = {node.uid}")
    if node.gid:
        lines.append(f"gid = {node.gid}")
    text_x, hex_x = [], []
    # The loader reads xattrs before xattrs_hex: keep the order by writing everything in hex
    # once a text-safe xattr follows one that needs hex.
    textual = [_utf8(n) is not None and _text_ok(v) is not None for n, v in node.xattrs]
    all_hex = any(not a and b for i, a in enumerate(textual) for b in textual[i + 1:])
    for name, value in node.xattrs:
        n = _utf8(name)
        v = None if all_hex else _text_ok(value)
        if n is not None and v is not None:
            text_x.append(f"{_toml_str(n)} = {_toml_str(v)}")
        else:
            key = _toml_str(n) if n is not None else _toml_str("hex:" + name.hex())
            hex_x.append(f"{key} = {_toml_str(value.hex())}")
    if text_x:
        lines.append("xattrs = { " + ", ".join(text_x) + " }")
    if hex_x:
        lines.append("xattrs_hex = { " + ", ".join(hex_x) + " }")
    if node.verity is not None:
        lines.append(f"verity = {{ algo = {node.verity[0]}, digest_hex = {_toml_str(node.verity[1].hex())} }}")
    return lines


def dump_stack(stack: Stack) -> str:
    """The whole stack as one self-contained stack file with inline entries.

    Disk layers are walked (never following symlinks); regular files up to
    :data:`INLINE_LIMIT` bytes are written inline, larger ones by size only (read back as
    zeros).  Names and values that are not valid UTF-8 are written in ``*_hex`` form.
    """
    out = [f"version = {VERSION}"]
    if stack.description:
        out.append(f"description = {_toml_str(stack.description)}")
    if stack.options:
        out.append(f"options = {_toml_str(stack.options)}")
    if stack.params:
        out.append("")
        out.append("[params]")
        for k, v in stack.params.items():
            out.append(f"{_key(k)} = {_toml_str(str(v))}")
    used: set[str] = set()
    for i, (role, layer) in enumerate(stack.layers):
        name = layer.label or f"{role}{i}"
        if isinstance(layer, DiskLayer) and name == layer.path:
            name = os.path.basename(layer.path.rstrip("/")) or name
        base, n = name, 2
        while name in used:
            name, n = f"{base}-{n}", n + 1
        used.add(name)
        out.append("")
        out.append("[[layer]]")
        out.append(f"role = {_toml_str(role)}")
        out.append(f"name = {_toml_str(name)}")
        if isinstance(layer, DiskLayer):
            out.append(f"# from {safe(layer.path)}")  # escaped: one comment line, valid TOML
        for path, node in layer_entries(layer):
            out.append("")
            out.extend(_entry_lines(layer, path, node))
    return "\n".join(out) + "\n"
