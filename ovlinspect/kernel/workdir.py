"""The state of an overlay's work directory that decides a mount, read-only.

* ``work/incompat/<feature>``: a ``volatile`` mount creates ``work/incompat/volatile/dirty``
  and never removes it; the next mount's clean-up of ``work/`` (``readdir.c:
  ovl_workdir_cleanup_recurse``) finds a non-empty ``incompat`` directory and refuses with
  EINVAL, ``overlayfs: overlay with incompat feature 'volatile' cannot be mounted``.  Names
  starting with a dot are not features (the kernel skips them and cleans them up).
* in use: the kernel marks the upper and work directories of every live overlay
  (``ovl_inuse_trylock``); a second mount using one of them as upper, work or lower directory
  fails with EBUSY under ``index=on`` and only warns otherwise (``ovl_report_in_use``).
* ``index/``: entries must be named by a file handle in hex (``ovl_verify_index``); a
  ``#``-named leftover of an interrupted update is deleted at mount.

Everything is read through descriptors opened with ``O_NOFOLLOW``; listings are bounded.
"""

from __future__ import annotations

import os

from ..model.xattrs import decode_fh

_OVL = "overlayfs: "
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_ENTRIES = 4096


def _open_dir(base: str, *names: str) -> int | None:
    try:
        fd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    for name in names:
        try:
            nfd = os.open(name, _DIR, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = nfd
    return fd


def _list(fd: int) -> list[bytes]:
    out: list[bytes] = []
    with os.scandir(fd) as it:
        for e in it:
            out.append(os.fsencode(e.name))
            if len(out) >= MAX_ENTRIES:
                break
    return out


def incompat_features(workdir: str, dot_names: bool = False) -> bytes | None:
    """The first incompatible feature recorded in ``workdir/work/incompat``, or None
    (``dot_names``: names starting with a dot count too, as on 7.x)."""
    fd = _open_dir(workdir, "work", "incompat")
    if fd is None:
        return None
    try:
        for name in _list(fd):
            if dot_names and name not in (b".", b".."):
                return name
            if not name.startswith(b"."):
                return name
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def work_leftovers(workdir: str) -> int:
    """How many entries ``workdir/work`` holds besides ``incompat`` (leftovers of interrupted
    copy-ups, renames and whiteouts, named ``#<hex>``): the kernel deletes them at mount."""
    fd = _open_dir(workdir, "work")
    if fd is None:
        return 0
    try:
        return sum(1 for n in _list(fd) if n != b"incompat")
    except OSError:
        return 0
    finally:
        os.close(fd)


def _in_use_paths(stack) -> dict[tuple[int, int], tuple[str, tuple]]:
    """(dev, ino) of the upper and work directories of the overlays mounted here -> (what it
    is, the (dev, ino) pair of that mount's upper and work directories)."""
    out: dict[tuple[int, int], tuple[str, tuple]] = {}
    if stack.overlays_mounted is None:
        return out
    try:
        entries = stack.overlays_mounted()
    except (OSError, ValueError):
        return out
    for mountpoint, upperdir, workdir in entries:
        ids = []
        for p in (upperdir, workdir):
            try:
                st = os.stat(p) if p and os.path.isabs(p) else None
            except OSError:
                st = None
            ids.append((st.st_dev, st.st_ino) if st is not None else None)
        for role, key in zip(("upperdir", "workdir"), ids):
            if key is not None:
                out.setdefault(key, (f"{role} of the overlay on {mountpoint}", tuple(ids)))
    return out


def _key(path: str | None) -> tuple[int, int] | None:
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st is not None else None


def in_use_checks(stack, index: bool) -> list[tuple[str | None, list[str], str]]:
    """(errno or None, log lines, message) for each layer directory another mount uses.

    Only the mounts of this mount namespace are seen.  A mount of this very stack (same upper
    and work directories) counts too: mounting it again is what a runtime does after leaking
    the first mount.  In kernel order: upperdir, workdir, then the lower directories; with
    ``index=on`` the first one refuses the mount (EBUSY).
    """
    used = _in_use_paths(stack)
    if not used:
        return []
    upper = getattr(stack.upper, "path", None) if stack.upper is not None else None
    mine = (_key(upper), _key(stack.workdir))
    named: list[tuple[str, str]] = []
    if upper:
        named.append(("upperdir", upper))
    if stack.workdir:
        named.append(("workdir", stack.workdir))
    named += [("lowerdir", l.path) for l in stack.lowers if getattr(l, "path", None)]
    out: list[tuple[str | None, list[str], str]] = []
    for role, path in named:
        found = used.get(_key(path)) if _key(path) is not None else None  # type: ignore[arg-type]
        if found is None:
            continue
        other = found[0] + (" (this same stack, already mounted: a leaked mount?)"
                            if found[1] == mine else "")
        if index:
            line = (_OVL + f"{role} is in-use as upperdir/workdir of another mount, mount with "
                    "'-o index=off' to override exclusive upperdir protection.")
            out.append(("EBUSY", [line], f"{role} {path} is the {other}: with index=on the "
                        "mount fails with EBUSY. Fix: unmount the other overlay (a leaked mount "
                        "of a container runtime?), or give this mount its own directories; "
                        "index=off only turns the refusal into a warning, and using the "
                        "directories from two mounts gives undefined results"))
            return out
        line = (_OVL + f"{role} is in-use as upperdir/workdir of another mount, accessing files "
                "from both mounts will result in undefined behavior.")
        out.append((None, [line], f"{role} {path} is the {other}: the kernel mounts with a "
                    "warning, and files changed through both mounts give undefined results"))
    return out


def index_entries(index_dir: str) -> list[tuple[bytes, int, str]]:
    """(name, mode, problem) of the index entries the mount would object to.

    problem: "invalid" (not a file handle in hex: the mount fails with EINVAL), "temp" (a
    ``#`` leftover the kernel deletes).
    """
    parent, leaf = os.path.split(index_dir.rstrip("/"))
    fd = _open_dir(parent, leaf)
    if fd is None:
        return []
    out: list[tuple[bytes, int, str]] = []
    try:
        for name in _list(fd):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if name.startswith(b"#"):
                out.append((name, st.st_mode, "temp"))
                continue
            if not _valid_index_name(name):
                out.append((name, st.st_mode, "invalid"))
    except OSError:
        pass
    finally:
        os.close(fd)
    return out


def _valid_index_name(name: bytes) -> bool:
    """The name is the hex of a usable ``ovl_fb`` (``ovl_verify_index``: length, hex2bin,
    ``ovl_check_fb_len``)."""
    if len(name) < 42:
        return False
    half = name[: len(name) // 2 * 2]
    if any(c not in b"0123456789abcdefABCDEF" for c in half):
        return False
    # a newer version or unknown flags ("unknown") fails differently: not predicted here
    return decode_fh(bytes.fromhex(half.decode("ascii"))).status != "invalid"
