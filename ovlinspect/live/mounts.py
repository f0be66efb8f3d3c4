"""``ovlinspect mounts``: every overlay mount of every mount namespace, with the process that
holds it, the container an engine knows it as, its layer counts and a one-word health."""

from __future__ import annotations

import os
import time
from collections import Counter

from ..sources.mountinfo import (Namespace, NotOverlayError, _comm, find_overlay_mount,
                                 layer_path_problem, mount_namespaces, overlay_mounts,
                                 read_mountinfo)
from ..rules.catalogue import RULES
from ..sources.containers import known_containers
from ..sources.target import InputError, live_stack
from ..rules.engine import Engine
from ..model.layers import LayerError

#: how long the quick mode checks the paths of one mount (a small image is checked whole)
QUICK_SECONDS = 1.0

#: health words that make ``mounts`` exit 1
BAD_HEALTH = ("error", "unresolved", "unreadable", "needs-root")


def _own_ns() -> int:
    try:
        return os.stat("/proc/self/ns/mnt").st_ino
    except OSError:
        return -1


def _container_names(want: bool) -> tuple[dict[int, str], dict[str, str]]:
    """(mount namespace inode -> "engine: name", upper layer dir -> "engine: name")."""
    by_ns: dict[int, str] = {}
    by_upper: dict[str, str] = {}
    if not want:
        return by_ns, by_upper

    for c in known_containers():
        name = f"{c.engine}: {c.name}"
        if c.pid > 0:
            try:
                by_ns[os.stat(f"/proc/{c.pid}/ns/mnt").st_ino] = name
            except OSError:
                pass
        for upper in c.labels:
            by_upper[upper] = name
    return by_ns, by_upper


def list_mounts(pid: int | None = None, deep: bool = False, engines: bool = True,
                check=None) -> list[dict]:
    """One row per overlay mount: a mount seen at the same place in several mount namespaces
    (copies of one namespace) is one row, the other namespaces in its ``also_in``.

    Without ``pid`` every mount namespace with a process in it is read (one process each);
    with ``pid`` only that process's.  health: ``ok`` (layers readable, no problem found),
    ``warning`` (a shadowing hazard or similar), ``error`` (the stack has errors),
    ``unresolved`` (layer paths cannot be used: relative or fd-based), ``unreadable`` (a layer
    cannot be opened), ``needs-root`` (not root and not a ``userxattr`` mount: the
    ``trusted.overlay.*`` xattrs that decide the answer are invisible).  Without ``deep`` the
    paths of each mount are checked for :data:`QUICK_SECONDS` (the detail says when that did not
    reach every path); ``deep`` checks every path of every mount.  A mount that goes away while
    it is looked at is left out.

    ``check(engine, on_finding, progress, cancel)``, when given, checks each mount instead of
    ``engine.check``, gives each finding to ``on_finding`` and returns an object with
    ``causes`` (as :func:`ovlinspect.report.causes.check_stream` does: no finding is kept):
    each row then has ``causes``, the JSON of each cause, the one to fix first first.
    """

    own = _own_ns()
    if pid is not None:
        if pid <= 0 or not os.path.isdir(f"/proc/{pid}"):

            raise InputError(f"--pid {pid}: no such process")
        try:
            ino = os.stat(f"/proc/{pid}/ns/mnt").st_ino
        except OSError as e:

            raise InputError(f"--pid {pid}: cannot read its mount namespace: {e.strerror}") from None
        spaces = [Namespace(ino, pid, _comm(pid))]
    else:
        spaces, _ = mount_namespaces()
    found: list[tuple[Namespace, object]] = []
    for space in spaces:
        proc = "/proc/self" if space.ns == own and pid is None else f"/proc/{space.pid}"
        try:
            found += [(space, m) for m in overlay_mounts(read_mountinfo(proc))]
        except (OSError, ValueError):
            continue
    by_ns, by_upper = _container_names(engines and bool(found))
    rows = []
    #: one row per mount as a program sees it: a namespace copied from another (unshare -m,
    #: systemd's PrivateTmp) holds the same mount at the same place; it is named in also_in
    seen: dict[tuple, dict] = {}
    health_of: dict[tuple, tuple[str, str, list]] = {}
    for space, m in found:
        here = space.ns == own and pid is None
        row = {"mountpoint": m.mountpoint, "pid": space.pid, "comm": space.comm,
               "mnt_ns": space.ns, "own_namespace": space.ns == own, "mount_id": m.mount_id,
               "container": by_ns.get(space.ns) or by_upper.get(m.upperdir or "") or None,
               "upper": m.upperdir is not None, "lowers": len(m.lowers), "datas": len(m.datas),
               "health": "ok", "detail": ""}
        if check is not None:
            row["causes"] = []
        key = (m.major_minor, m.super_options)  # one superblock seen in several namespaces
        if key not in health_of:
            causes: list = []
            health_of[key] = _health(m, None if here else space.pid, deep, check, causes) + (causes,)
        row["health"], row["detail"], causes = health_of[key]
        if check is not None:
            row["causes"] = [c.as_json() for c in causes]
        if row["health"] in ("unreadable", "unresolved") and _gone(m, space, here):
            continue
        same = (m.major_minor, m.root, m.mountpoint)
        if same in seen:
            first = seen[same]
            first["also_in"].append({"pid": space.pid, "comm": space.comm, "mnt_ns": space.ns})
            first["container"] = first["container"] or row["container"]
            continue
        row["also_in"] = []
        seen[same] = row
        rows.append(row)
    return rows


def _gone(m, space, here: bool) -> bool:
    """Whether mount ``m`` was unmounted meanwhile (a short-lived mount of someone else's)."""
    try:
        text = read_mountinfo("/proc/self" if here else f"/proc/{space.pid}")
    except OSError:
        return True
    return all(e.mount_id != m.mount_id for e in overlay_mounts(text))


def _health(m, pid: int | None, deep: bool, check=None, causes: list | None = None) -> tuple[str, str]:

    problems = [layer_path_problem(p) for p in [*m.lowers, *m.datas, *([m.upperdir] if m.upperdir else [])]]
    problems = [p for p in problems if p]
    relative_only = all(p and not p.startswith("/") for p in [*m.lowers, *m.datas]
                        if layer_path_problem(p))
    if problems and not (relative_only and m.upperdir):
        return "unresolved", problems[0]
    if os.geteuid() != 0 and m.option("userxattr") is None:
        return "needs-root", ("the trusted.overlay.* xattrs that decide what this mount shows are "
                              "invisible without root (CAP_SYS_ADMIN); run as root")
    try:
        stack = live_stack(m.mountpoint, pid)
    except (InputError, LayerError, ValueError, OSError) as e:
        return ("unresolved" if problems else "unreadable"), str(e)
    checked = 0
    stopped = False

    def progress(n: int) -> None:
        nonlocal checked
        checked = n

    def cancel() -> bool:
        nonlocal stopped
        stopped = stopped or (not deep and time.monotonic() > deadline)
        return stopped

    # findings counted by severity and rule as they come, none kept: a mount checked --deep may
    # have hundreds of thousands (the causes keep a few paths each)
    tally: Counter = Counter()

    def count(f) -> None:
        tally[f.severity, f.rule] += 1

    try:
        engine = Engine(stack)
        deadline = time.monotonic() + QUICK_SECONDS
        if check is None:
            for f in engine.check(progress, cancel):
                count(f)
        else:
            result = check(engine, count, progress, cancel)
            if causes is not None:
                causes.extend(result.causes)
    except (InputError, LayerError, ValueError, OSError) as e:
        stack.close()
        return "unreadable", str(e)
    stack.close()
    errors = _by_rule(tally, "error")
    warnings = _by_rule(tally, "warning")
    partial = (f" (quick: the first {checked} paths, in {QUICK_SECONDS:g} s; --deep checks all)"
               if stopped else "")
    if errors:
        return "error", _counted(errors, "error(s)") + partial
    if warnings:
        return "warning", _counted(warnings, "warning(s)") + partial
    return "ok", partial.strip()


def elsewhere_hint(target: str) -> str | None:
    """When ``target`` is an overlay only in another mount namespace (one whose processes share
    our root, such as rootless podman's), the one line that says which ``--pid`` reaches it."""

    try:
        root = os.stat("/")
        spaces, _ = mount_namespaces()
    except OSError:
        return None
    own = _own_ns()
    for space in spaces:
        if space.ns == own:
            continue
        try:
            st = os.stat(f"/proc/{space.pid}/root")
            if (st.st_dev, st.st_ino) != (root.st_dev, root.st_ino):
                continue  # another root: its paths are not ours
            entry = find_overlay_mount(target, proc_root=f"/proc/{space.pid}")
        except (OSError, NotOverlayError, ValueError):
            continue
        if entry.mountpoint == "/":
            continue
        by_ns, by_upper = _container_names(True)
        name = by_ns.get(space.ns) or by_upper.get(entry.upperdir or "")
        who = space.comm + (f"/{name}" if name else "")
        use = f"--pid {space.pid}" + (f" or {name.replace(': ', ':')}" if name else "")
        shown = target if target.isprintable() else repr(target)
        return (f"{shown} is not on an overlay mount in this mount namespace; it is an overlay in "
                f"the mount namespace of pid {space.pid} ({who}); use {use}")
    return None


def _by_rule(tally: Counter, severity: str) -> list[tuple[str, int]]:
    """(rule, count) of one severity, the most important rule first."""
    order = list(RULES)
    return sorted(((rule, n) for (sev, rule), n in tally.items() if sev == severity),
                  key=lambda rn: order.index(rn[0]))


def _counted(counts: list[tuple[str, int]], what: str) -> str:
    """``3 error(s): lowerdata-redirect-broken ×2, lowerdata-missing ×1`` (most important rule
    first)."""
    return f"{sum(n for _, n in counts)} {what}: " + ", ".join(f"{rule} ×{n}" for rule, n in counts)
