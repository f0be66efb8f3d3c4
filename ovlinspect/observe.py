"""Observed beside predicted: what a program sees through the merged path of a live mount.

Only read-only operations: ``lstat``, ``open(O_RDONLY)`` of regular files (closed without
reading), ``readlink`` and ``readdir``.  Nothing is written, and fifos and devices are never
opened.
"""

from __future__ import annotations

import errno as _errno
import os
import stat as _stat
from dataclasses import dataclass

from .engine import show
from .layers import Path, _kind_of


def _err(e: OSError) -> str:
    return _errno.errorcode.get(e.errno or 0, str(e.errno))


@dataclass
class Observation:
    path: Path
    errno: str | None = None
    kind: str | None = None
    size: int | None = None
    mode: int | None = None
    target: bytes | None = None
    open_errno: str | None = None
    entries: list[bytes] | None = None

    def as_json(self) -> dict:
        return {
            "errno": self.errno,
            "type": self.kind,
            "size": self.size,
            "mode": self.mode,
            "target": self.target.decode("utf-8", "surrogateescape") if self.target is not None else None,
            "open_errno": self.open_errno,
            "entries": [n.decode("utf-8", "surrogateescape") for n in self.entries]
            if self.entries is not None else None,
        }

    def summary(self) -> str:
        if self.errno:
            return f"lstat fails: {self.errno}"
        text = f"{self.kind}, {self.size} bytes, mode {self.mode:04o}"
        if self.kind == "file":
            text += ", open " + (f"fails: {self.open_errno}" if self.open_errno else "ok")
        if self.entries is not None:
            text += f", readdir lists {len(self.entries)}"
        return text


def observe(mountpoint: str, path: Path) -> Observation:
    full = os.fsencode(mountpoint.rstrip("/")) + b"/" + b"/".join(path)
    ob = Observation(path)
    try:
        st = os.lstat(full)
    except OSError as e:
        ob.errno = _err(e)
        return ob
    ob.kind = _kind_of(st.st_mode)
    ob.size = st.st_size
    ob.mode = _stat.S_IMODE(st.st_mode)
    if ob.kind == "symlink":
        try:
            ob.target = os.readlink(full)
        except OSError:
            ob.target = None
    elif ob.kind == "file":
        try:
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as e:
            ob.open_errno = _err(e)
        else:
            os.close(fd)
    elif ob.kind == "dir":
        try:
            ob.entries = sorted(os.listdir(full))
        except OSError:
            ob.entries = None
    return ob


def compare(engine, res, ob: Observation) -> list[str]:
    """Disagreements between a prediction and an observation, each with what it points to."""
    out: list[str] = []
    pj = engine.to_json(res)

    def fmt(name: str, v) -> str:
        if v is None:
            return "-"
        if name == "mode":
            return f"{v:04o}"
        if isinstance(v, bytes):
            return "'" + show(v) + "'"
        if isinstance(v, list):
            return "[" + ", ".join(fmt(name, x) for x in v) + "]"
        return str(v)

    def diff(name: str, predicted, observed) -> None:
        if predicted != observed:
            out.append(f"{name}: predicted {fmt(name, predicted)}, observed {fmt(name, observed)}")

    diff("errno", res.errno, ob.errno)
    if res.errno is None and ob.errno is None:
        diff("type", res.kind, ob.kind)
        if res.kind != "dir":
            diff("size", res.size, ob.size)
        diff("mode", res.mode, ob.mode)
        if res.kind == "symlink":
            diff("target", res.target, ob.target)
        if res.kind == "file":
            diff("open", pj["open_errno"], ob.open_errno)
        if res.kind == "dir" and ob.entries is not None:
            diff("readdir", engine.entries(res), ob.entries)
    if out:
        out.append(_evidence(engine, res, ob))
    return out


def _evidence(engine, res, ob: Observation) -> str:
    """What a disagreement points to: access order, an unmodelled feature, changed layers, us."""
    rules = {f.rule for f in res.findings} | {f.rule for f in engine.stack_findings()}
    if "inode-alias" in rules or "ESTALE" in (ob.errno, ob.open_errno):
        return ("evidence: inode aliasing: two paths share one lower inode, and the kernel answers "
                "for the one looked up first since the mount (see the inode-alias finding); the "
                "prediction is that of a fresh mount looking this path up first")
    if "not-modelled" in rules:
        return ("evidence: the mount uses a feature ovlinspect does not model (see the "
                "not-modelled note); that is the likely cause")
    fresh = engine.__class__(_reopen(engine.stack), options=engine.options, kernel=engine.kernel,
                             profile=engine.profile)
    again = fresh.resolve(res.path)
    if fresh.to_json(again) != engine.to_json(res):
        return ("evidence: the layers changed while ovlinspect looked (a fresh read predicts "
                "differently); changing layers under a mounted overlay is undefined, remount")
    return ("evidence: the layers read the same twice, so this is likely an ovlinspect bug, "
            "unless they were changed after the overlay cached the path (the kernel caches "
            "lookups); please report it with `ovlinspect export`")


def _reopen(stack):
    from .stack import Stack

    return Stack(lowers=[l.reopen() for l in stack.lowers], data=[l.reopen() for l in stack.data],
                 upper=stack.upper.reopen() if stack.upper is not None else None,
                 workdir=stack.workdir, options=stack.options, source=stack.source,
                 params=stack.params, mountpoint=stack.mountpoint, effective=stack.effective)
