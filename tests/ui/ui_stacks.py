"""Memory stacks for the UI tests (no root, no mount, deterministic)."""

from __future__ import annotations

from ovlinspect.rules.engine import Engine
from ovlinspect.model.layers import MemoryLayer, Node, split_path
from ovlinspect.model.stack import Stack

PARAMS = {"metacopy": "N", "redirect_dir": "N", "redirect_always_follow": "Y",
          "index": "N", "nfs_export": "N", "xino_auto": "N"}
KERNEL = "6.18.0"
T = b"trusted.overlay."

#: Names no terminal should ever interpret.
HOSTILE = [
    b"[red]x",
    b"[blink]x",
    b"esc\x1b[31mred\x1b[0m",
    b"bad\xff\xfeutf8",
    b"bidi\xe2\x80\xaeevil",
    b"bell\x07and\ttab",
]


def _layer(label: str, entries: list[tuple]) -> MemoryLayer:
    m = MemoryLayer(label=label)
    for path, node, *content in entries:
        p = split_path(path) if isinstance(path, (str, bytes)) else path
        m.add(p, node, content[0] if content else None)
    return m


def f(data: bytes, mode: int = 0o644, **kw) -> Node:
    return Node("file", mode, len(data), **kw)


def seed_stack() -> Stack:
    """The seed thread's shadowing: lowerdir=A:B::C, A/foo metacopy + redirect /1e/abcdef,
    B/1e/abcdef intercepts the data meant for C."""
    a = _layer("A", [
        ("/foo", Node("file", 0o644, 18, xattrs=((T + b"metacopy", b""), (T + b"redirect", b"/1e/abcdef")))),
        ("/etc/os-release", f(b"NAME=demo\n"), b"NAME=demo\n"),
        ("/etc/hostname", Node("chardev", 0o600, rdev=(0, 0))),
    ])
    b = _layer("B", [
        ("/1e/abcdef", f(b"wrong bytes here!\n"), b"wrong bytes here!\n"),
        ("/etc/hostname", f(b"old-host\n"), b"old-host\n"),
        ("/etc/passwd", f(b"root:x:0:0::/root:/bin/sh\n"), b"root:x:0:0::/root:/bin/sh\n"),
    ])
    c = _layer("C", [
        ("/1e/abcdef", f(b"the real data 18b\n"), b"the real data 18b\n"),
    ])
    return Stack(lowers=[a, b], data=[c], options="metacopy=on,redirect_dir=on",
                 source="test:seed", description="The seed thread's redirect shadowing.",
                 params=PARAMS)


def hostile_stack() -> Stack:
    entries = [(b"/" + n, f(b"x\n"), b"x\n") for n in HOSTILE]
    entries.append((b"/dir[bold]", Node("dir", 0o755)))
    entries.append((b"/dir[bold]/inner\x1b]0;title\x07", f(b"hi\n"), b"hi\n"))
    entries.append((b"/link", Node("symlink", 0o777, target=b"\x1b[2J[red]target")))
    entries.append((b"/red", Node("file", 0o644, 3, xattrs=((T + b"metacopy", b""),
                                                        (T + b"redirect", b"/obj/\x1b[5m[blink]")))))
    a = _layer("top[red]", entries)
    b = _layer("B\x1b[0m", [(b"/red", f(b"lower\n"), b"lower\n")])
    return Stack(lowers=[a, b], options="metacopy=on,redirect_dir=on",
                 source="test:hostile[blink]", params=PARAMS)


def engine(stack: Stack) -> Engine:
    return Engine(stack, kernel=KERNEL)


def many_layers_stack(n: int) -> Stack:
    """``n`` layers, composefs style: ``meta`` on top with two metacopy files redirected into
    the data-only ``objects``; ``base3`` holds ``/ab`` as a plain directory with ``cdef`` in it,
    so ``/usr/bin/tool`` is shadowed (wrong bytes) and ``/usr/lib/libx.so`` ends in EIO (the
    walk through the plain directory cancels the data-only lookup); every layer holds /usr/bin."""
    digest = bytes(range(32))
    mc = T + b"metacopy"
    meta = _layer("meta", [
        ("/usr/bin/tool", Node("file", 0o755, 9, xattrs=((mc, bytes([0, 36, 0, 1]) + digest),
                                                         (T + b"redirect", b"/ab/cdef")))),
        ("/usr/lib/libx.so", Node("file", 0o644, 7, xattrs=((mc, b""), (T + b"redirect", b"/ab/zz99")))),
    ])
    lowers = [meta]
    for i in range(1, n - 1):
        entries = [(f"/usr/bin/b{i}", f(b"b\n"), b"b\n")]
        if i == 3:
            entries.append(("/ab/cdef", f(b"intruder\n"), b"intruder\n"))
        lowers.append(_layer(f"base{i}", entries))
    objects = _layer("objects", [("/ab/cdef", f(b"the tool\n"), b"the tool\n"),
                                 ("/ab/zz99", f(b"libx.so"), b"libx.so")])
    return Stack(lowers=lowers, data=[objects], options="metacopy=on,redirect_dir=on",
                 source=f"test:{n}-layers", params=PARAMS)


def filled_layer(label: str, entries: dict) -> MemoryLayer:
    """A memory layer filled directly from {path: node} (``MemoryLayer.add`` is quadratic in a
    directory's size): for the big-directory stacks."""
    m = MemoryLayer(label=label)
    kids: dict = {}
    for path, node in entries.items():
        m.nodes[path] = node
        if path:
            kids.setdefault(path[:-1], []).append(path[-1])
    m.children = {k: list(dict.fromkeys(v)) for k, v in kids.items()}
    return m
