"""Engine plumbing for the interactive view (no Textual here: plain, testable Python).

The screen reads one engine from the UI thread.  Work that may be slow (listing a large
directory, search, the what-if comparison; the problems scan when it does not run in a child
process, see :mod:`.scanproc`) runs in threads, and each thread
gets its **own** engine over freshly opened layers (:func:`clone_engine`): an :class:`Engine`
keeps caches, and a :class:`~ovlinspect.model.layers.DiskLayer` an LRU of directory descriptors,
neither of which is safe to share between threads.  Memory layers are immutable once loaded
and are shared.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..kernel.entry import Ref, Resolution

from ..rules.engine import Engine
from ..kernel.profile import FLEET, parse_version, profile_for
from ..model.layers import Layer, Node, Path
from ..kernel.params import split_options
from ..report.view import Role, layer_view

#: Children resolved per directory chunk: a larger directory shows a "more" entry.
CHUNK = 500

#: The mount options the what-if view can change, with the values each can take.
WHATIF_CHOICES: dict[str, tuple[str, ...]] = {
    "metacopy": ("on", "off"),
    "redirect_dir": ("on", "follow", "nofollow", "off"),
    "userxattr": ("on", "off"),
    "verity": ("off", "on", "require"),
}


class EngineClone:
    """An engine for another thread: same layers (reopened when on disk), same options."""

    def __init__(self, engine: Engine):
        stack = engine.stack.reopened()  # every field kept: the refusal, the profile, ...
        old = {id(l) for _, l in engine.stack.layers}
        self.opened: list[Layer] = [l for _, l in stack.layers if id(l) not in old]
        self.engine = Engine(stack, options=engine.options, kernel=engine.kernel, profile=engine.profile)

    def close(self) -> None:
        for layer in self.opened:
            layer.close()
        self.opened = []


def current_choices(engine: Engine) -> dict[str, str]:
    """The effective values of the what-if options for ``engine``, and its kernel."""
    o = engine.options
    return {
        "metacopy": "on" if o.metacopy else "off",
        "redirect_dir": o.redirect_dir,
        "userxattr": "on" if o.userxattr else "off",
        "verity": o.verity,
        "kernel": engine.profile.name,
    }


def choice_values(base: Engine) -> dict[str, tuple[str, ...]]:
    """What each what-if choice can be: the options' values, and the kernels fleets run
    (with the stack's own kernel among them)."""
    kernels = tuple(sorted({*FLEET, base.profile.name}, key=parse_version))
    return {**WHATIF_CHOICES, "kernel": kernels}


def whatif_engine(base: Engine, choices: dict[str, str]) -> Engine:
    """``base`` under the chosen options, on the chosen kernel (OptionError when refused)."""
    profile = base.profile
    kernel = choices.get("kernel", profile.name)
    if kernel != profile.name:
        profile = profile_for(parse_version(kernel), chosen_by="what-if")
    if not profile.verity_option and choices.get("verity") == "off":
        # a kernel without the option: "off" is what it does anyway, and typing it is refused
        choices = {k: v for k, v in choices.items() if k != "verity"}
    # an option the mount did not give, left as the kernel made it, stays untyped: the kernel
    # derives it again from the others (metacopy=on turns an untyped redirect_dir on, where a
    # typed redirect_dir=follow makes it refuse the mount)
    given = {k for k, _ in split_options(base.stack.options)}
    now = current_choices(base)
    choices = {k: v for k, v in choices.items() if k in given or v != now.get(k)}
    return base.with_options(whatif_options(base.stack.options, choices), profile=profile)


def whatif_options(base: str, choices: dict[str, str]) -> str:
    """``base`` (a mount option string) with the what-if options replaced by ``choices``."""
    pairs = [(k, v) for k, v in split_options(base) if k not in WHATIF_CHOICES]
    for key, value in choices.items():
        if key == "userxattr":
            if value == "on":
                pairs.append(("userxattr", None))
        elif key != "kernel":
            pairs.append((key, value))
    return ",".join(k if v is None else f"{k}={v}" for k, v in pairs)


#: Seconds between progress messages from a worker (each one costs the UI a repaint).
BATCH_SECONDS = 0.25


class Pacer:
    """Tells a worker when to post what it has gathered: at most every ``BATCH_SECONDS``."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < BATCH_SECONDS:
            return False
        self.last = now
        return True


# ------------------------------------------------------------------------------ listing


@dataclass
class Child:
    name: bytes
    res: Resolution
    #: (kernel layer, path, node) of copies the merged view hides (only when asked for)
    hidden_copies: list[tuple[int, Path, Node]] = field(default_factory=list)


@dataclass
class Listing:
    path: Path
    names: list[bytes] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)
    hidden: dict[bytes, str] = field(default_factory=dict)
    error: str | None = None


class Lister:
    """Lists merged directories in a worker thread, one call at a time."""

    def __init__(self, engine: Engine):
        self.clone = EngineClone(engine)
        self.lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        return self.clone.engine

    def close(self) -> None:
        with self.lock:
            self.clone.close()

    def list_dir(self, path: Path, count: int = CHUNK, with_hidden: bool = False) -> Listing:
        with self.lock:
            e = self.engine
            res = e.resolve(path)
            if not res.is_dir:
                return Listing(path, error=res.errno or f"not a directory ({res.kind})")
            names = list(e.entries(res))
            hidden = dict(e.hidden_entries(res)) if with_hidden else {}
            children = [self._child(path, n, with_hidden) for n in names[:count]]
            return Listing(path, names, children, hidden)

    def resolve_children(self, path: Path, names: list[bytes], with_hidden: bool = False) -> list[Child]:
        with self.lock:
            return [self._child(path, n, with_hidden) for n in names]

    def _child(self, path: Path, name: bytes, with_hidden: bool) -> Child:
        e = self.engine
        res = e.resolve(path + (name,))
        copies: list[tuple[int, Path, Node]] = []
        if with_hidden:
            for k, p, node, role in layer_view(e, res):
                if role is Role.HIDDEN and node is not None:
                    copies.append((k, p, node))
        return Child(name, res, copies)

    def list_layer(self, k: int, path: Path) -> list[tuple[bytes, Node]]:
        """A raw layer directory (for data-only layers, which the merged view never lists)."""
        with self.lock:
            layer = self.engine.klayers[k]
            if layer is None:
                return []
            return sorted(layer.scan(path).items())


# ------------------------------------------------------------------------------ walking


def ordered_walk(engine: Engine, cancel: Callable[[], bool] = lambda: False) -> Iterator[Resolution]:
    """Every path of the merged tree in the order the tree shows them (pre-order, sorted).

    Only the directories on the current branch hold their listings.
    """
    root = engine.resolve(())
    stack: list[tuple[Path, Iterator[bytes]]] = []
    if root.is_dir:
        stack.append(((), iter(list(engine.entries(root)))))
    while stack:
        if cancel():
            return
        path, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        res = engine.resolve(path + (name,))
        yield res
        if res.is_dir:
            listing = list(engine.entries(res))
            res._entries = None  # do not keep every listing on the engine's cached resolutions
            res._hidden = None
            stack.append((res.path, iter(listing)))


def union_walk(a: Engine, b: Engine, cancel: Callable[[], bool] = lambda: False
               ) -> Iterator[tuple[Path, Resolution, Resolution]]:
    """Every path listed by either engine's merged tree, with both resolutions (depth first)."""
    stack: list[Path] = [()]
    while stack:
        if cancel():
            return
        p = stack.pop()
        ra, rb = a.resolve(p), b.resolve(p)
        names: set[bytes] = set()
        for eng, r in ((a, ra), (b, rb)):
            if r.is_dir:
                names.update(eng.entries(r))
                # entries are cached on the (cached) directory resolution: drop them, as
                # Engine.walk does, so a long walk does not hold every listing
                r._entries = None
                r._hidden = None
        dirs = []
        for n in sorted(names):
            cp = p + (n,)
            ca, cb = a.resolve(cp), b.resolve(cp)
            yield cp, ca, cb
            if ca.is_dir or cb.is_dir:
                dirs.append(cp)
        stack.extend(reversed(dirs))


def outcome(res: Resolution) -> tuple:
    """What a program sees at a path: the part of a resolution that a what-if may change."""
    return (res.errno, res.kind if res.errno is None else None,
            res.size if res.errno is None and res.kind != "dir" else None,
            res.metadata if res.errno is None else None,
            res.data if res.errno is None and res.kind == "file" else None,
            res.open_errno if res.errno is None else None)


def describe_outcome(engine: Engine, res: Resolution) -> str:
    """One short phrase: ``EIO``, ``file from lower 0 (A), data lower 1 (B):/1e/abcdef``."""
    if res.errno:
        return res.errno
    out = res.kind or "?"
    if res.metadata is not None:
        out += f" from {engine.label(res.metadata.layer)}"
    if res.kind == "file":
        if res.open_errno:
            out += f", open {res.open_errno}"
        elif res.data is not None and res.data != res.metadata:
            out += f", bytes from {engine.where(res.data)}"
    return out


@dataclass
class Change:
    path: Path
    before: str
    after: str


def diff_outcomes(a: Engine, b: Engine, ra: Resolution, rb: Resolution, path: Path) -> Change | None:
    if outcome(ra) == outcome(rb):
        return None
    return Change(path, describe_outcome(a, ra), describe_outcome(b, rb))


def ref_chain(res: Resolution) -> list[Ref]:
    """The layers a resolution goes through, top first (upper, lower stack, data)."""
    chain: list[Ref] = []
    if res.upper is not None:
        chain.append(Ref(0, res.upper))
    chain += list(res.lowers)
    if res.data is not None and res.data not in chain:
        chain.append(res.data)
    return chain


def redirect_target(res: Resolution, k: int) -> Ref | None:
    """Where the redirect on layer ``k``'s entry leads: the next layer of the chain."""
    chain = ref_chain(res)
    for i, ref in enumerate(chain):
        if ref.layer == k and i + 1 < len(chain):
            return chain[i + 1]
    return None
