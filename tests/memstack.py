"""Small in-memory stacks for model tests (no root, no mount)."""

from __future__ import annotations

from ovlinspect.rules.engine import Engine
from ovlinspect.model.layers import MemoryLayer, Node, split_path
from ovlinspect.model.stack import Stack

DEFAULT_PARAMS = {"metacopy": "N", "redirect_dir": "N", "redirect_always_follow": "Y",
                  "index": "N", "nfs_export": "N", "xino_auto": "N"}

T = b"trusted.overlay."


def layer(label: str, entries: dict) -> MemoryLayer:
    """entries: path -> "dir" | bytes content | ("kind", {xattrs}, extra) shorthand."""
    m = MemoryLayer(label=label)
    for p, spec in entries.items():
        path = split_path(p)
        if spec == "dir":
            m.add(path, Node("dir", 0o755))
        elif spec == "wh":
            m.add(path, Node("chardev", 0o600, rdev=(0, 0)))
        elif isinstance(spec, bytes):
            m.add(path, Node("file", 0o644, len(spec)), spec)
        else:
            kind, xattrs, *rest = spec
            extra = rest[0] if rest else {}
            xs = tuple((k if isinstance(k, bytes) else k.encode(), v) for k, v in xattrs.items())
            m.add(path, Node(kind, extra.get("mode", 0o755 if kind == "dir" else 0o644),
                             extra.get("size", 0), xattrs=xs, target=extra.get("target")),
                  extra.get("content"))
    return m


def engine(lowers, data=(), upper=None, options="") -> Engine:
    return Engine(Stack(lowers=list(lowers), data=list(data), upper=upper, options=options,
                        params=DEFAULT_PARAMS), kernel="6.18.0")


def metacopy(redirect: bytes | None = b"/1e/abcdef", size: int = 18, value: bytes = b"") -> tuple:
    xs = {T + b"metacopy": value}
    if redirect is not None:
        xs[T + b"redirect"] = redirect
    return ("file", xs, {"size": size})
