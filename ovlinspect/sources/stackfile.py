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

A file whose ``size`` is larger than its content is sparse: the rest reads as zeros.  A file
whose content is kept in an object store says ``object = "sha256:<hex>"`` instead of
``content`` (``export --objects DIR`` writes them, ``build --objects DIR`` reads them back);
a file that could not be exported in full says ``incomplete = "why"`` (``build`` reports it).
An entry at ``/`` sets the layer root's own mode, owner and xattrs.

:func:`load_stack` / :func:`loads_stack` read a stack file into a :class:`~ovlinspect.model.stack.Stack`;
:func:`write_stack` (streaming) and :func:`dump_stack` write any stack (disk layers included)
back as one self-contained file with inline entries, so a bug report can carry the whole stack;
files larger than :data:`INLINE_LIMIT` go out in full (``content_hex``, or an object store).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import pathlib
import re
import stat as _stat
import tomllib
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any

from ..model.layers import (
    DiskLayer,
    Layer,
    LayerError,
    MemoryLayer,
    Node,
    Path,
    iter_tree,
    join_path,
    split_path,
)
from ..model.stack import Stack
from .mountinfo import overlay_dirs
from ..model.xattrs import safe
from . import composefs

__all__ = ["StackFileError", "StackLayer", "load_stack", "loads_stack", "stack_from_dict", "dump_stack", "write_stack",
           "INLINE_LIMIT"]

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
    "target_hex", "rdev", "uid", "gid", "xattrs", "xattrs_hex", "verity", "object", "incomplete",
}

_OBJECT = re.compile(r"sha256:([0-9a-f]{64})")


@dataclass
class StackLayer(MemoryLayer):
    """A layer of inline entries, with what the entries say about contents kept elsewhere."""

    #: path -> SHA-256 (hex) of a file whose content is in an object store (``object = ...``);
    #: ``build --objects DIR`` copies it from ``DIR/ab/cdef...``
    objects: dict[Path, str] = field(default_factory=dict)
    #: path -> why a file's content was not exported in full (``incomplete = ...``)
    incomplete: dict[Path, str] = field(default_factory=dict)


class StackFileError(ValueError):
    """A stack file cannot be loaded; the message is one line naming the file and the problem."""


# ------------------------------------------------------------------------------ loading


def load_stack(path: str | os.PathLike, lazy: bool = False) -> Stack:
    """Load the stack file at ``path``; relative layer paths are relative to its directory.

    ``lazy``: the file is read one table at a time and file contents stay in the file (read
    again when asked for): memory follows the number of entries and the largest single
    entry, not the file's size, and the file may be larger than :data:`MAX_STACK_FILE`.  A
    file whose tables cannot be cut apart that way (hand-written TOML using other forms) is
    read whole, as without ``lazy``.  Same checks, same errors.
    """
    p = os.fspath(path)
    if lazy:
        try:
            got = _load_lazy(p)
        except StackFileError:
            raise
        except OSError as e:
            raise StackFileError(f"{p}: cannot read stack file: {e.strerror}") from None
        except ValueError as e:  # a NUL in the path
            raise StackFileError(f"{p}: cannot read stack file: {e}") from None
        if got is not None:
            return got
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
        if isinstance(layers, _LazyTables):
            pass
        elif not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
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
        if isinstance(entries, _LazyTables):
            return role, self._memory_layer(where, name, entries, entries.refs)
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

    def _memory_layer(self, where: str, name: str, entries, refs=None) -> MemoryLayer:
        layer = StackLayer(label=name)
        if refs is not None:  # lazy: contents stay in the file, read again when asked for
            layer.contents = _FileContents(self, where, refs.path)
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
            if refs is not None:
                layer.add(path, node, None)
                if content is not None:
                    layer.contents.refs[path] = refs.last
            else:
                layer.add(path, node, content)
            self._elsewhere(ewhere, e, layer, path, node, content)
        return layer

    def _elsewhere(self, where: str, e: dict, layer: StackLayer, path: Path, node: Node,
                   content: bytes | None) -> None:
        """``object`` and ``incomplete``: a file's content is in an object store, or was not
        exported in full."""
        if "object" in e:
            ref = e["object"]
            if node.kind != "file":
                raise self.fail(where, f"object given for a {e.get('type')}")
            if content is not None:
                raise self.fail(where, "give content or object, not both")
            m = _OBJECT.fullmatch(ref) if isinstance(ref, str) else None
            if m is None:
                raise self.fail(where, f"object must be \"sha256:<64 lowercase hex digits>\", got {ref!r}")
            layer.objects[path] = m.group(1)
        if "incomplete" in e:
            why = e["incomplete"]
            if node.kind != "file":
                raise self.fail(where, f"incomplete given for a {e.get('type')}")
            if not isinstance(why, str):
                raise self.fail(where, "incomplete must be a string saying why")
            layer.incomplete[path] = why

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


# ------------------------------------------------------------------------- lazy loading


class _LazyTables:
    """The ``[[layer]]`` or ``[[layer.entry]]`` tables of a stack file, parsed one at a time as
    they are iterated (each entry's place in the file is kept in ``last`` meanwhile)."""

    def __init__(self, path: str, blocks: list[tuple[int, int]]):
        self.path = path
        self.blocks = blocks
        self.last: tuple[int, int] = (0, 0)
        self.refs = self

    def __iter__(self):
        with open(self.path, "rb") as f:
            for off, length in self.blocks:
                self.last = (off, length)
                f.seek(off)
                yield _parse_table(f.read(length))

    def __len__(self) -> int:
        return len(self.blocks)


class _NotLazy(Exception):
    """The file does not cut into tables line by line: read it whole."""


def _parse_table(raw: bytes) -> dict:
    """One ``[[...]]`` table: its key lines (the header line dropped), parsed as TOML."""
    try:
        return tomllib.loads(raw.split(b"\n", 1)[1].decode("utf-8") if b"\n" in raw else "")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError, RecursionError):
        raise _NotLazy from None


class _FileContents(Mapping):
    """File contents of a lazily loaded layer: path -> the entry's place in the stack file;
    the content is parsed again (with the loader's checks and padding) when asked for."""

    def __init__(self, loader: "_Loader", where: str, path: str):
        self.loader, self.where, self.path = loader, where, path
        self.refs: dict[Path, tuple[int, int]] = {}

    def __getitem__(self, key: Path) -> bytes:
        off, length = self.refs[key]
        with open(self.path, "rb") as f:
            f.seek(off)
            raw = f.read(length)
        try:
            _, content = self.loader._entry(self.where, _parse_table(raw))
        except (_NotLazy, StackFileError):
            content = None
        if content is None:
            raise OSError(0, f"{self.path} changed since it was loaded")
        return content

    def get(self, key, default=None):
        return self[key] if key in self.refs else default

    def __contains__(self, key) -> bool:
        return key in self.refs

    def __iter__(self):
        return iter(self.refs)

    def __len__(self) -> int:
        return len(self.refs)


def _load_lazy(p: str) -> Stack | None:
    """:func:`load_stack` one table at a time, or None when the file must be read whole."""
    head: list[bytes] = []
    layers: list[tuple[int, int, list[tuple[int, int]]]] = []  # (offset, length, entry blocks)
    cur: tuple[str, int] | None = None  # the open table: kind, offset
    pos = 0

    def close(end: int) -> None:
        if cur is None:
            return
        kind, off = cur
        if kind == "layer":
            layers.append((off, end - off, []))
        else:
            layers[-1][2].append((off, end - off))

    with open(p, "rb") as f:
        for line in f:
            stripped = line.rstrip(b"\r\n")
            if stripped.startswith(b"["):
                if stripped == b"[[layer]]":
                    close(pos)
                    cur = ("layer", pos)
                elif stripped == b"[[layer.entry]]" and layers or stripped == b"[[layer.entry]]" and cur:
                    close(pos)
                    cur = ("entry", pos)
                elif stripped == b"[params]" and cur is None:
                    head.append(line)
                else:
                    return None  # another table form: read whole
            elif cur is None:
                if len(head) > 100_000:
                    return None
                head.append(line)
            if len(line) > MAX_STACK_FILE:
                raise OSError(0, f"a line longer than {MAX_STACK_FILE >> 20} MiB")
            pos += len(line)
        close(pos)
    try:
        doc = tomllib.loads(b"".join(head).decode("utf-8"))
        if "layer" in doc:
            return None
        specs = []
        with open(p, "rb") as f:
            for off, length, entries in layers:
                f.seek(off)
                spec = _parse_table(f.read(length))
                if "entry" in spec:
                    return None
                if entries:
                    spec["entry"] = _LazyTables(p, entries)
                specs.append(spec)
        doc["layer"] = specs
        base = os.path.dirname(os.path.abspath(p))
        return _Loader(base, p).load_doc(doc)
    except (_NotLazy, tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError):
        return None
    except ValueError as e:
        if isinstance(e, StackFileError):
            raise
        return None


# ------------------------------------------------------------------------------ writing


def _toml_str(s: str) -> str:
    if s.isprintable():  # no control character, no surrogate, nothing invisible: only " and \\
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return '"' + _TOML_SPECIAL.sub(_toml_escape, s) + '"'


#: What :func:`_toml_str` must escape: quote, backslash, and every character that is not
#: printable (ASCII controls, and whatever :func:`_toml_escape` decides among the others).
_TOML_SPECIAL = re.compile(r'["\\\x00-\x1f\x7f]|[^\x20-\x7e]')


def _toml_escape(m: re.Match) -> str:
    ch = m.group()
    o = ord(ch)
    if ch == '"':
        return '\\"'
    if ch == "\\":
        return "\\\\"
    if ch == "\n":
        return "\\n"
    if ch == "\t":
        return "\\t"
    if o < 0x20 or o == 0x7F:
        return f"\\u{o:04x}"
    if 0xD800 <= o <= 0xDFFF:  # a byte that is not UTF-8 (surrogateescape): TOML cannot
        return safe(ch).replace("\\", "\\\\")  # hold it; its \\xNN text instead
    if not ch.isprintable():  # C1, U+2028, bidi, ...: same value, inert text
        return f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}"
    return ch


def _utf8(b: bytes) -> str | None:
    """``b`` as text when it is valid UTF-8 (and has no surrogates), else None."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return None


#: Control bytes that make a value hex rather than text (newline and tab are fine).
_AWKWARD = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


def _text_ok(b: bytes) -> str | None:
    """Text form for a value: valid UTF-8 without NULs or other awkward control bytes."""
    s = _utf8(b)
    if s is None or _AWKWARD.search(s):
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


def _entry_lines(layer: Layer, path: Path, node: Node, big: "_BigFiles | None" = None) -> list[str]:
    """The ``[[layer.entry]]`` table of one entry.  A regular file of a disk layer larger than
    :data:`INLINE_LIMIT` is handed to ``big`` (its lines come out of ``big.lines``)."""
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
        elif node.size > INLINE_LIMIT and big is not None:
            content = None
            lines += big.lines(layer, path, node)
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


# -------------------------------------------------------------------- files too big to inline

#: Bytes read at a time from a large file.
CHUNK = 1 << 20


class _Hex:
    """A large file's full content, written as one ``content_hex`` string a chunk at a time
    (the line is produced lazily by :meth:`_BigFiles.lines` and streamed by the writer)."""

    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, size


class ObjectStoreError(OSError):
    """The ``--objects`` directory cannot be written."""


class _BigFiles:
    """How files larger than :data:`INLINE_LIMIT` go out: in full, never as zeros.

    Without an object store, as ``content_hex`` in the stack file (streamed, a chunk at a
    time).  With one (``objects``), each file is copied to ``objects/ab/cdef...`` (its SHA-256,
    the way composefs stores objects) and the entry says ``object = "sha256:<hex>"``.  A file
    that is all zeros is written by size only (sparse, exact).  A file that cannot be read in
    full (unreadable, changed while read) gets ``incomplete = "why"``, which ``build`` reports.
    """

    def __init__(self, objects: str | None):
        self.objects = os.path.abspath(objects) if objects else None
        self.incomplete = 0
        self.stored = 0
        if self.objects:
            try:
                os.makedirs(self.objects, exist_ok=True)
            except OSError as e:
                raise ObjectStoreError(e.errno, f"--objects {self.objects}: {e.strerror}") from None

    def lines(self, layer: Layer, path: Path, node: Node) -> list:
        try:
            fd = open_layer_file(layer, path)
        except OSError as e:
            return self._incomplete(f"cannot open: {e.strerror or e}")
        try:
            zeros, digest, got = self._scan(fd, node.size)
            if got != node.size:
                return self._incomplete(f"read {got} of {node.size} bytes (the file changed while it was read)")
            if zeros:
                return []  # all zeros: sparse, size only
            if self.objects is None:
                os.lseek(fd, 0, os.SEEK_SET)
                fd2, fd = fd, -1
                return [_Hex(fd2, node.size)]
            os.lseek(fd, 0, os.SEEK_SET)
            self._store(fd, digest, node.size)
            self.stored += 1
            return [f"object = \"sha256:{digest}\""]
        except OSError as e:
            if isinstance(e, ObjectStoreError):
                raise
            return self._incomplete(f"read error: {e.strerror or e}")
        finally:
            if fd >= 0:
                os.close(fd)

    def _incomplete(self, why: str) -> list[str]:
        self.incomplete += 1
        return [f"incomplete = {_toml_str(why)}"]

    @staticmethod
    def _scan(fd: int, size: int) -> tuple[bool, str, int]:
        """(all zeros, SHA-256 hex, bytes read) of the file, read a chunk at a time."""
        h = hashlib.sha256()
        zeros = True
        got = 0
        while True:
            chunk = os.read(fd, CHUNK)
            if not chunk:
                break
            got += len(chunk)
            if got > size:
                break
            h.update(chunk)
            if zeros and chunk.count(0) != len(chunk):
                zeros = False
        return zeros, h.hexdigest(), got

    def _store(self, fd: int, digest: str, size: int) -> None:
        assert self.objects is not None
        d = os.path.join(self.objects, digest[:2])
        final = os.path.join(d, digest[2:])
        if os.path.isfile(final) and os.path.getsize(final) == size:
            return  # content-addressed: the same bytes are there already
        try:
            os.makedirs(d, exist_ok=True)
            tmp = f"{final}.tmp{os.getpid()}"
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise ObjectStoreError(e.errno, f"--objects {self.objects}: {e.strerror}") from None
        try:
            h = hashlib.sha256()
            while True:
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    break
                h.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
        except OSError as e:
            os.close(out)
            os.unlink(tmp)
            if e.filename is None and e.errno is not None:
                raise
            raise ObjectStoreError(e.errno, f"--objects {self.objects}: {e.strerror}") from None
        os.close(out)
        if h.hexdigest() != digest:
            os.unlink(tmp)
            raise OSError(0, "the file changed while it was copied")
        os.replace(tmp, final)


def open_layer_file(layer: Layer, path: Path) -> int:
    """A read-only descriptor of the regular file at ``path`` in a disk layer, reached one
    component at a time without following any symlink (the layer root is resolved as the
    kernel resolves it); fifos and devices are never opened."""
    root = getattr(layer, "path", None)
    if not root or not path:
        raise OSError(0, "not a file of a disk layer")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for comp in path[:-1]:
            nxt = os.open(comp, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        st = os.stat(path[-1], dir_fd=fd, follow_symlinks=False)
        if not _stat.S_ISREG(st.st_mode):
            raise OSError(0, "not a regular file any more")
        f = os.open(path[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)
    if not _stat.S_ISREG(os.fstat(f).st_mode):
        os.close(f)
        raise OSError(0, "not a regular file any more")
    return f


def write_stack(stack: Stack, write, objects: str | None = None) -> tuple[int, int]:
    """Write the whole stack as one self-contained stack file, a piece at a time, through
    ``write(str)``; memory stays bounded whatever the stack's size (the largest directory's
    listing, one chunk of one file).

    Disk layers are walked (never following symlinks); regular files up to
    :data:`INLINE_LIMIT` bytes are written inline, larger ones in full as ``content_hex``, or,
    with ``objects``, copied to that directory by SHA-256 and named by ``object =
    "sha256:<hex>"`` (see :class:`_BigFiles`).  Names and values that are not valid UTF-8 are
    written in ``*_hex`` form.  Returns (files stored in ``objects``, files marked
    ``incomplete``).
    """
    big = _BigFiles(objects)
    head = [f"version = {VERSION}"]
    if stack.description:
        head.append(f"description = {_toml_str(stack.description)}")
    if stack.options:
        head.append(f"options = {_toml_str(stack.options)}")
    if stack.params:
        head.append("")
        head.append("[params]")
        for k, v in stack.params.items():
            head.append(f"{_key(k)} = {_toml_str(str(v))}")
    write("\n".join(head))
    used: set[str] = set()
    for i, (role, layer) in enumerate(stack.layers):
        name = layer.label or f"{role}{i}"
        if isinstance(layer, DiskLayer) and name == layer.path:
            name = os.path.basename(layer.path.rstrip("/")) or name
        base, n = name, 2
        while name in used:
            name, n = f"{base}-{n}", n + 1
        used.add(name)
        out = ["", "[[layer]]", f"role = {_toml_str(role)}", f"name = {_toml_str(name)}"]
        if isinstance(layer, DiskLayer):
            out.append(f"# from {safe(layer.path)}")  # escaped: one comment line, valid TOML
        write("\n" + "\n".join(out))
        root = layer.node(())
        entries = itertools.chain([((), root if root is not None else Node("dir", 0o755))], iter_tree(layer))
        for path, node in entries:
            lines = _entry_lines(layer, path, node, big if isinstance(layer, DiskLayer) else None)
            write("\n\n")
            for k, line in enumerate(lines):
                if k:
                    write("\n")
                if isinstance(line, _Hex):
                    _write_hex(line, write, big)
                else:
                    write(line)
    write("\n")
    return big.stored, big.incomplete


def _write_hex(h: _Hex, write, big: _BigFiles) -> None:
    """The file's bytes as one ``content_hex`` string, a chunk at a time; a file that shrank
    since it was measured ends the string early and is marked ``incomplete``."""
    why = None
    try:
        write('content_hex = "')
        left = h.size
        while left > 0:
            try:
                chunk = os.read(h.fd, min(CHUNK, left))
            except OSError as e:
                why = f"read error after {h.size - left} of {h.size} bytes: {e.strerror or e}"
                break
            if not chunk:
                why = f"read {h.size - left} of {h.size} bytes (the file changed while it was read)"
                break
            left -= len(chunk)
            write(chunk.hex())
        write('"')
    finally:
        os.close(h.fd)
    if why is not None:
        big.incomplete += 1
        write(f"\nincomplete = {_toml_str(why)}")


def dump_stack(stack: Stack, objects: str | None = None) -> str:
    """The whole stack as one self-contained stack file with inline entries (the text
    :func:`write_stack` writes, as one string)."""
    parts: list[str] = []
    write_stack(stack, parts.append, objects)
    return "".join(parts)
