"""Read ``/proc/<pid>/mountinfo`` and recover the layers of overlay mounts.

One line per mount (``proc(5)``)::

    36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    (1)(2)(3)   (4)   (5)         (6)       (7..)   (8)(9)   (10)      (11)

Fields are separated by single spaces; the kernel writes space, tab, newline and backslash
inside a field as octal escapes (``\\040``...), and inside superblock option values it also
escapes the comma (``\\054``), so splitting the options on ``,`` first and unescaping each one
after is exact.

For overlay mounts the superblock options carry the layers:

* ``lowerdir=<string>`` when the legacy option was used: the user's string, verbatim, with its
  ``:``/``::`` separators and backslash escapes (see :func:`ovlinspect.kernel.params.split_lowerdir`);
* otherwise one ``lowerdir+=<path>`` per regular layer, then one ``datadir+=<path>`` per
  data-only layer, never backslash-escaped (a colon stays a colon);
* ``upperdir=`` and ``workdir=`` as typed; the kernel unescapes backslashes in these before
  looking them up, so they are unescaped here too.

Layer paths are shown as they were given: a relative path stays relative to the working
directory of whoever mounted, and a layer given as a file descriptor shows the descriptor's path
(``/`` for a detached mount).  :func:`layer_path_problem` tells such paths apart.
"""

from __future__ import annotations

import errno as _errno
import os
import re
import stat as _stat
from dataclasses import dataclass, field

from ..kernel.params import OptionError, split_lowerdir, unescape_lowerdir_element

__all__ = [
    "Located",
    "MountEntry",
    "NotOverlayError",
    "find_overlay_mount",
    "mount_namespaces",
    "layer_path_problem",
    "locate",
    "overlay_mounts",
    "parse_mountinfo",
    "read_mountinfo",
    "unescape_octal",
    "visible_mount",
]

_OCTAL = re.compile(r"\\([0-7]{3})")


class NotOverlayError(ValueError):
    """The path given is not inside an overlay mount (the message says what it is on)."""


def _octal_char(match: re.Match[str]) -> str:
    value = int(match.group(1), 8)
    # Bytes above 0x7f come back as the surrogates os.fsdecode() would use for them.
    return chr(value) if value < 0x80 else chr(0xDC00 + value)


def unescape_octal(s: str) -> str:
    """Undo mountinfo's ``\\ooo`` escapes (``\\040`` is a space, ``\\134`` a backslash)."""
    if "\\" not in s:
        return s
    return _OCTAL.sub(_octal_char, s)


@dataclass(slots=True)
class MountEntry:
    """One line of mountinfo; for an overlay also its layers and options."""

    mount_id: int
    parent_id: int
    major_minor: str
    #: The path, inside its filesystem, of the directory mounted here.
    root: str
    mountpoint: str
    #: Per-mount options (``rw,nosuid,relatime``), raw.
    mount_options: str
    fstype: str
    source: str
    #: Superblock options, raw (still octal-escaped).
    super_options: str
    #: Propagation tags such as ``shared:1`` or ``master:2``.
    optional_fields: list[str] = field(default_factory=list)
    #: Regular lower layers, top first (unescaped path strings as the mounter gave them).
    lowers: list[str] = field(default_factory=list)
    #: Data-only lower layers, in order.
    datas: list[str] = field(default_factory=list)
    upperdir: str | None = None
    workdir: str | None = None
    #: Every other superblock option, unescaped, in order (``redirect_dir=on``, ``userxattr``).
    options: list[tuple[str, str | None]] = field(default_factory=list)
    #: The layers came from a legacy ``lowerdir=`` string (not ``lowerdir+``/``datadir+``).
    legacy_lowerdir: bool = False
    #: The superblock is read-only (a lower-only overlay always is).
    sb_readonly: bool = False
    #: Why the ``lowerdir=`` value could not be split, if it could not (never for real mounts).
    lowerdir_error: str | None = None

    @property
    def is_overlay(self) -> bool:
        return self.fstype == "overlay"

    def option(self, key: str) -> str | None:
        """The value of the last superblock option called ``key`` (``""`` for a bare flag)."""
        found: str | None = None
        for k, v in self.options:
            if k == key:
                found = "" if v is None else v
        return found


def _split_super_options(raw: str) -> list[tuple[str, str | None]]:
    pairs: list[tuple[str, str | None]] = []
    for part in raw.split(","):
        if not part:
            continue
        key, eq, value = part.partition("=")
        pairs.append((unescape_octal(key), unescape_octal(value) if eq else None))
    return pairs


def _fill_overlay(entry: MountEntry, pairs: list[tuple[str, str | None]]) -> None:
    for key, value in pairs:
        if key == "lowerdir" and value is not None:
            entry.legacy_lowerdir = True
            try:
                entry.lowers, entry.datas = split_lowerdir(value)
            except OptionError as exc:
                entry.lowers, entry.datas = [], []
                entry.lowerdir_error = str(exc)
        elif key == "lowerdir+" and value is not None:
            entry.lowers.append(value)
        elif key == "datadir+" and value is not None:
            entry.datas.append(value)
        elif key == "upperdir" and value is not None:
            entry.upperdir = unescape_lowerdir_element(value)
        elif key == "workdir" and value is not None:
            entry.workdir = unescape_lowerdir_element(value)
        else:
            entry.options.append((key, value))


def _parse_line(line: str, number: int) -> MountEntry:
    parts = line.split(" ")
    try:
        sep = parts.index("-", 6)
    except ValueError:
        raise ValueError(f"mountinfo line {number}: no ' - ' separator: {line!r}") from None
    if len(parts) < sep + 4 or len(parts) < 7:
        raise ValueError(f"mountinfo line {number}: too few fields: {line!r}")
    try:
        mount_id, parent_id = int(parts[0]), int(parts[1])
    except ValueError:
        raise ValueError(f"mountinfo line {number}: bad mount ids: {line!r}") from None
    entry = MountEntry(
        mount_id=mount_id,
        parent_id=parent_id,
        major_minor=parts[2],
        root=unescape_octal(parts[3]),
        mountpoint=unescape_octal(parts[4]),
        mount_options=parts[5],
        optional_fields=parts[6:sep],
        fstype=unescape_octal(parts[sep + 1]),
        source=unescape_octal(parts[sep + 2]),
        # Anything after the options field would be a newer kernel's extra field; keep it
        # out of the options.
        super_options=parts[sep + 3],
    )
    pairs = _split_super_options(entry.super_options)
    kept: list[tuple[str, str | None]] = []
    for key, value in pairs:
        if key in ("ro", "rw") and value is None:
            entry.sb_readonly = key == "ro"
        else:
            kept.append((key, value))
    if entry.is_overlay:
        _fill_overlay(entry, kept)
    else:
        entry.options = kept
    return entry


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse mountinfo text into entries, in file order (later entries are mounted on top).

    Raises :class:`ValueError` naming the line for a line that is not mountinfo.
    """
    entries: list[MountEntry] = []
    # Lines end with "\n" only: the kernel escapes space, tab, newline and backslash in a
    # field and nothing else, so \r, \f, \v, \x1c-\x1e, U+0085, U+2028, U+2029 (which
    # str.splitlines() would split on) are bytes of a name, and so is a trailing \r.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        entries.append(_parse_line(line, number))
    return entries


def overlay_mounts(text: str) -> list[MountEntry]:
    """Only the overlay mounts of a mountinfo text."""
    return [entry for entry in parse_mountinfo(text) if entry.is_overlay]


def read_mountinfo(proc_root: str = "/proc/self") -> str:
    """The mountinfo text of a process (``/proc/self`` or ``/proc/PID``)."""
    with open(
        os.path.join(proc_root, "mountinfo"), encoding="utf-8", errors="surrogateescape",
        newline="",  # no newline translation: a \r is a byte of a mountpoint
    ) as f:
        return f.read()


def _resolve_in_root(root: str, path: str, max_links: int = 40) -> str:
    """Resolve symlinks in absolute ``path`` as seen from the directory ``root``.

    ``root`` is e.g. ``/proc/PID/root``; absolute link targets restart at it.  Components that
    do not exist are kept as they are.
    """
    pending = [c for c in path.split("/") if c]
    done: list[str] = []
    links = 0
    while pending:
        comp = pending.pop(0)
        if comp == ".":
            continue
        if comp == "..":
            if done:
                done.pop()
            continue
        candidate = "/" + "/".join([*done, comp])
        try:
            target = os.readlink(root.rstrip("/") + candidate)
        except OSError:
            done.append(comp)
            continue
        links += 1
        if links > max_links:
            raise NotOverlayError(f"{path}: too many levels of symbolic links")
        if target.startswith("/"):
            done = []
        pending = [c for c in target.split("/") if c] + pending
    return "/" + "/".join(done)


def _contains(mountpoint: str, path: str) -> bool:
    if mountpoint == "/":
        return True
    mp = mountpoint.rstrip("/")
    return path == mp or path.startswith(mp + "/")


def _pick(entries: list[MountEntry], longest: bool) -> MountEntry:
    """The entry with the longest (or shortest) mount point; of equal ones the last."""
    best = entries[0]
    for entry in entries[1:]:
        a, b = len(entry.mountpoint.rstrip("/")), len(best.mountpoint.rstrip("/"))
        if a == b or (a > b) == longest:
            best = entry
    return best


def visible_mount(entries: list[MountEntry], path: str) -> MountEntry | None:
    """The mount a lookup of absolute, resolved ``path`` ends on, or None if none contains it.

    Walks the mount tree like a path lookup: from the root mount, step into the child mounted
    closest to the root along the path (a mount on ``/a`` hides one made earlier on ``/a/b``),
    and of mounts stacked on one point take the later.  For partial text, where parents are
    missing, the deepest top-level mount containing the path is the start.
    """
    ids = {e.mount_id for e in entries}
    children: dict[int, list[MountEntry]] = {}
    tops: list[MountEntry] = []
    for entry in entries:
        if entry.parent_id in ids and entry.parent_id != entry.mount_id:
            children.setdefault(entry.parent_id, []).append(entry)
        else:
            tops.append(entry)
    start = [e for e in tops if _contains(e.mountpoint, path)]
    if not start:
        return None
    current = _pick(start, longest=True)
    seen = {current.mount_id}
    while True:
        inner = [
            c
            for c in children.get(current.mount_id, [])
            if _contains(c.mountpoint, path) and c.mount_id not in seen
        ]
        if not inner:
            return current
        current = _pick(inner, longest=False)
        seen.add(current.mount_id)


def _display(p: str) -> str:
    return p if p.isprintable() else repr(p)


@dataclass(slots=True)
class Located:
    """Where a path given on the command line lies: its overlay mount, and its place inside."""

    entry: MountEntry
    #: The path inside the merged tree, raw bytes: the part the host walk resolved (physical)
    #: followed by the part it left to the merged tree's own walk (a symlink inside the
    #: overlay, a component whose lookup fails, a non-directory), with any ``..`` and a
    #: trailing ``/`` kept as given.
    inside: bytes


def _walk_host(path: str, root: str, entries: list[MountEntry],
               max_links: int = 40) -> tuple[str, list[str], bool, str | None]:
    """Walk absolute ``path`` as far as the host's path walk settles it.

    Returns (the deepest directory reached, physical; the components left; whether the path
    ends with ``/``; the errno name that stopped the walk outside any overlay, if one did).
    Outside overlay mounts, symlinks are followed as the kernel follows them (absolute
    targets from ``root``: ``""`` or ``/proc/PID/root``).  Inside an overlay, the walk only
    descends through real directories: a symlink, a name whose lookup fails (EIO, ENOENT,
    EPERM, ESTALE, ...) or a non-directory stops it, and the rest is the merged tree's to
    resolve.  Nothing but ``lstat`` and ``readlink`` is done.
    """
    pending = [c for c in path.split("/") if c not in ("", ".")]
    trailing = bool(pending) and (path.endswith("/") or path.endswith("/."))
    done: list[str] = []
    links = 0
    while pending:
        here = "/" + "/".join(done)
        comp = pending[0]
        if comp == "..":
            pending.pop(0)
            if done:
                done.pop()
            continue
        mount = visible_mount(entries, here)
        in_overlay = mount is not None and mount.is_overlay
        full = root + ("/" + "/".join([*done, comp]))
        try:
            st = os.lstat(full)
        except OSError as e:
            if in_overlay:
                break
            return here, pending, trailing, _errno.errorcode.get(e.errno or 0, "ENOENT")
        if _stat.S_ISDIR(st.st_mode):
            done.append(pending.pop(0))
            continue
        if _stat.S_ISLNK(st.st_mode) and not in_overlay:
            links += 1
            if links > max_links:
                raise NotOverlayError(f"{_display(path)}: too many levels of symbolic links")
            try:
                target = os.readlink(full)
            except OSError:
                break
            pending.pop(0)
            if target.startswith("/"):
                done = []
            pending = [c for c in target.split("/") if c not in ("", ".")] + pending
            continue
        if not in_overlay and pending[1:]:
            return here, pending, trailing, "ENOTDIR"
        break
    return "/" + "/".join(done), pending, trailing, None


def locate(path: str, mountinfo_text: str | None = None, proc_root: str = "/proc/self") -> Located:
    """The overlay mount ``path`` lies in, and its place in the merged tree.

    ``path`` need not exist: the mount is found through its deepest existing ancestor, so a
    path whose own ``lstat`` fails (EIO, ENOENT, EPERM, ESTALE, ELOOP, ...) is located all
    the same, and a final symlink inside the overlay is not followed.  ``path`` is walked in
    the root of the process ``proc_root`` names (``/proc/self`` or ``/proc/PID``); a relative
    path is taken from this process's working directory.  Raises :class:`NotOverlayError`
    when the mount reached is not an overlay, or nothing contains the path.
    """
    given = mountinfo_text is not None
    if mountinfo_text is None:
        mountinfo_text = read_mountinfo(proc_root)
    entries = parse_mountinfo(mountinfo_text)
    absolute = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
    root = "" if os.path.normpath(proc_root) == "/proc/self" else os.path.join(proc_root, "root")
    here, rest, trailing, failed = _walk_host(absolute, root, entries)
    missing = os.path.join(here, rest[0]) if failed and rest else here
    if failed:
        # a host directory that is not there (or not one): go on by name, as realpath does,
        # in case the rest names a mount all the same (mountinfo text from elsewhere)
        here, rest = (os.path.normpath(os.path.join(here, *rest)) if rest else here), []
    found = visible_mount(entries, here)
    if found is None:
        raise NotOverlayError(f"{_display(path)} is not on an overlay mount (no mount contains it)")
    if not found.is_overlay:
        if failed and not given:
            err = os.strerror(getattr(_errno, failed, _errno.ENOENT)).lower()
            raise NotOverlayError(
                f"{_display(path)}: {_display(missing)}: {err} (on {_display(found.fstype)} "
                f"mounted at {_display(found.mountpoint)}, not on an overlay mount)")
        raise NotOverlayError(
            f"{_display(path)} is not on an overlay mount"
            f" (it is on {_display(found.fstype)} mounted at {_display(found.mountpoint)})"
        )
    mp = found.mountpoint.rstrip("/")
    inside = here[len(mp):] if found.mountpoint != "/" else here
    tail = "/".join(rest)
    text = (inside.rstrip("/") + "/" + tail) if tail else (inside or "/")
    if trailing and tail:
        text += "/"
    return Located(found, os.fsencode(text if text.startswith("/") else "/" + text))


def find_overlay_mount(
    path: str, mountinfo_text: str | None = None, proc_root: str = "/proc/self"
) -> MountEntry:
    """The overlay mount that ``path`` lies in (see :func:`locate`, which also says where).

    Raises :class:`NotOverlayError` when that mount is not an overlay, or nothing contains
    the path.
    """
    return locate(path, mountinfo_text, proc_root).entry


def layer_path_problem(p: str) -> str | None:
    """Why a layer path taken from mountinfo cannot be used to reach the layer, or None."""
    if not p:
        return "the layer path is empty"
    if not p.startswith("/"):
        return (
            f"{p!r} is relative to the working directory of the process that mounted it,"
            " which mountinfo does not record"
        )
    if p == "/":
        return (
            "'/' is what mountinfo shows for a layer passed as a file descriptor of a detached"
            " mount; the real directory cannot be known"
        )
    if p.endswith(" (deleted)"):
        return f"{p!r}: the layer directory was deleted after the mount was made"
    return None


@dataclass(slots=True)
class Namespace:
    """A mount namespace and one process in it (the lowest pid seen)."""

    #: the namespace's inode number (``mnt:[N]``)
    ns: int
    pid: int
    comm: str


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read(64).decode("utf-8", "surrogateescape").strip()
    except OSError:
        return "?"


def mount_namespaces(proc: str = "/proc") -> tuple[list[Namespace], int]:
    """Every mount namespace with a process in it, one process each (ours first), and how
    many processes' namespaces could not be read (not root, or the process went away)."""
    found: dict[int, Namespace] = {}
    denied = 0
    try:
        own = os.stat(f"{proc}/self/ns/mnt").st_ino
    except OSError:
        own = -1
    pids = sorted(int(n) for n in os.listdir(proc) if n.isdigit())
    for pid in pids:
        try:
            ino = os.stat(f"{proc}/{pid}/ns/mnt").st_ino
        except PermissionError:
            denied += 1
            continue
        except OSError:
            continue
        if ino not in found:
            found[ino] = Namespace(ino, pid, _comm(pid))
    spaces = sorted(found.values(), key=lambda n: (n.ns != own, n.pid))
    return spaces, denied


def covering_mounts(mountpoint: str, proc_root: str = "/proc/self") -> list[MountEntry]:
    """The mounts stacked inside the overlay mounted at ``mountpoint`` (in the mount namespace
    of ``proc_root``): a container's volumes, bind-mounted ``/etc/hosts``, ``/proc``, ...

    A program there sees those filesystems at their paths, not the overlay's entries.  Found
    by walking the mount tree from the overlay's mount to its descendants; the overlay itself is
    the last overlay mounted on ``mountpoint``.
    """
    entries = parse_mountinfo(read_mountinfo(proc_root))
    here = [e for e in entries if e.mountpoint == mountpoint and e.is_overlay]
    if not here:
        return []
    top = here[-1].mount_id
    children: dict[int, list[MountEntry]] = {}
    for e in entries:
        if e.mount_id != e.parent_id:
            children.setdefault(e.parent_id, []).append(e)
    out: list[MountEntry] = []
    pending = list(children.get(top, []))
    while pending:
        e = pending.pop()
        out.append(e)
        pending += children.get(e.mount_id, [])
    return out


def overlay_dirs() -> list[tuple[str, str | None, str | None]]:
    """(mountpoint, upperdir, workdir) of each overlay mounted in this mount namespace: what
    the kernel checks a new mount's directories against (``Stack.overlays_mounted``)."""
    return [(e.mountpoint, e.upperdir, e.workdir)
            for e in parse_mountinfo(read_mountinfo("/proc/self")) if e.is_overlay]
