"""Materialize a stack (memory or disk layers) as real directories, ready to mount.

:func:`build_stack` writes every layer to ``dest/<index>-<name>`` (index in the order of the
JSON contract: upper first, then the regular lowers top first, then the data-only layers),
with directories, files (content, and sparse size by truncation), symlinks, 0/0 whiteouts and
other device nodes, fifos, sockets, owners, permission bits and xattrs, plus ``dest/work``
when there is an upper layer.  :class:`BuiltStack` then mounts the result with ``mount(2)`` or
the new mount API (:mod:`ovlinspect.live.mountapi`).

Creating ``trusted.*`` xattrs and device nodes needs root (CAP_SYS_ADMIN / CAP_MKNOD):
:class:`BuildError` says so instead of failing half-way with a bare EPERM.

A stack file is untrusted input (it comes with bug reports), and built as root it could plant
a setuid-root shell, a world-writable ``/dev/sda`` or file capabilities.  So the build is
safe by default (:class:`Safety`): no device node other than the 0/0 whiteout, no setuid or
setgid bit, no ``security.*`` xattr, no world-writable directory; each kind skipped or
stripped is counted and reported.  ``exact=True`` (``ovlinspect build --unsafe-exact``)
reproduces them.  None of these change what overlayfs does with a path except the device
nodes themselves (absent instead of present).
"""

from __future__ import annotations

import dataclasses
import errno as _errno
import hashlib
import itertools
import os
import re
import stat as _stat
from dataclasses import dataclass, field

import xattr as _xattr

from ..model.layers import Layer, MemoryLayer, Node, Path, iter_tree, join_path, layer_entries
from ..kernel.params import join_lowerdir, split_options
from ..model.stack import Stack
from . import mountapi

__all__ = ["BuildError", "BuiltStack", "build_stack", "split_options", "join_lowerdir"]

#: Bytes copied at a time (from a disk layer's file or an object store).
CHUNK = 1 << 20


class BuildError(Exception):
    """The stack cannot be materialized here (not root, destination not empty, ...)."""


@dataclass
class Safety:
    """What a safe build left out, counted per kind (see the module docstring)."""

    devices: int = 0
    setid: int = 0
    security_xattrs: int = 0
    world_writable_dirs: int = 0

    def lines(self) -> list[str]:
        """One line per kind that was skipped or stripped."""
        def n(count: int, one: str, many: str) -> str:
            return f"{count} {one if count == 1 else many}"

        out = []
        if self.devices:
            out.append(f"skipped {n(self.devices, 'device node', 'device nodes')} other than the 0/0 whiteout")
        if self.setid:
            out.append(f"stripped the setuid/setgid bits of {n(self.setid, 'entry', 'entries')}")
        if self.security_xattrs:
            out.append(f"skipped {n(self.security_xattrs, 'security.* xattr', 'security.* xattrs')}")
        if self.world_writable_dirs:
            out.append(f"removed world write permission from {n(self.world_writable_dirs, 'directory', 'directories')}")
        return out


@dataclass
class BuiltStack:
    """Directories of a materialized stack, and how to mount them."""

    dest: str
    #: (role, label, directory) in JSON-contract order: upper, lowers, data.
    dirs: list[tuple[str, str, str]]
    upper: str | None
    lowers: list[str]
    data: list[str]
    workdir: str | None
    options: str = ""
    mounts: list[str] = field(default_factory=list)
    #: what the safe build left out (all zero for an exact build)
    safety: Safety = field(default_factory=Safety)
    #: files the stack file says were not exported in full: (layer label, path, why); they
    #: are built with what the file holds (zeros past it)
    incomplete: list[tuple[str, bytes, str]] = field(default_factory=list)
    #: files copied from the object store
    objects_copied: int = 0

    def dir_of(self, label: str) -> str:
        for _, name, d in self.dirs:
            if name == label:
                return d
        raise KeyError(label)

    @property
    def layer_dirs(self) -> list[str]:
        """Directories indexed like the ``layers`` list of ``explain --json``."""
        return [d for _, _, d in self.dirs]

    def lowerdir_string(self) -> str:
        return join_lowerdir(self.lowers, self.data)

    def mount(self, target: str, api: str = "legacy", options: str | None = None) -> None:
        """Mount the stack at ``target``; raises ``mountapi.MountError`` when the kernel refuses."""

        opts = self.options if options is None else options
        if api == "legacy":
            mountapi.mount_overlay_legacy(target, self.lowerdir_string(), self.upper, self.workdir, opts)
        elif api == "fsconfig":
            mountapi.mount_overlay_fsconfig(target, self.lowers, self.data, self.upper, self.workdir,
                                            split_options(opts))
        else:
            raise ValueError(f"unknown mount api {api!r} (legacy or fsconfig)")
        self.mounts.append(target)

    def umount_all(self) -> None:

        while self.mounts:
            mountapi.umount(self.mounts.pop(), detach=True)


def _safe_name(label: str, fallback: str) -> str:
    name = os.path.basename(label.rstrip("/")) if "/" in label else label
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", name)[:64]
    return name or fallback


def _needs_root(stack: Stack, exact: bool = True) -> str | None:
    for _, layer in stack.layers:
        for path, node in layer_entries(layer):
            if not exact:
                node = _safe_node(node, Safety())
                if node is None:
                    continue
            for name, _ in node.xattrs:
                if name.startswith(b"trusted."):
                    return f"the trusted.* xattr {name.decode('utf-8', 'replace')} on {os.fsdecode(join_path(path))}"
            if node.kind in ("chardev", "blockdev"):
                return f"the device node {os.fsdecode(join_path(path))}"
    return None



def _safe_node(node: Node, counts: Safety) -> Node | None:
    """The node as a safe build creates it, or None to skip it; counts what was changed."""
    if node.kind in ("chardev", "blockdev") and not node.is_whiteout_dev:
        counts.devices += 1
        return None
    mode = node.mode
    if mode & 0o6000:
        counts.setid += 1
        mode &= ~0o6000
    if node.kind == "dir" and mode & 0o002:
        counts.world_writable_dirs += 1
        mode &= ~0o002
    xattrs = tuple((k, v) for k, v in node.xattrs if not k.startswith(b"security."))
    counts.security_xattrs += len(node.xattrs) - len(xattrs)
    if mode == node.mode and len(xattrs) == len(node.xattrs):
        return node
    return dataclasses.replace(node, mode=mode, xattrs=xattrs)


def build_stack(stack: Stack, dest: str, *, exact: bool = False, objects: str | None = None) -> BuiltStack:
    """Write every layer of ``stack`` below ``dest`` (created if missing, must be empty).

    Safe unless ``exact``: see :class:`Safety` for what is left out (``BuiltStack.safety``).
    Files whose content the stack file keeps in an object store (``object = "sha256:..."``)
    are copied from ``objects`` (``ab/cdef...``) and checked against their hash; without
    ``objects`` such a stack is refused before anything is written.  Files marked
    ``incomplete`` are listed in ``BuiltStack.incomplete``.
    """
    dest = os.path.abspath(dest)
    safety = Safety()
    _check_objects(stack, objects)
    if os.geteuid() != 0:
        why = _needs_root(stack, exact)
        if why is not None:
            raise BuildError(f"building this stack needs root: {why} cannot be created by uid {os.geteuid()}")
    os.makedirs(dest, exist_ok=True)
    if os.listdir(dest):
        raise BuildError(f"destination is not empty: {dest}")
    dirs: list[tuple[str, str, str]] = []
    upper = None
    lowers: list[str] = []
    data: list[str] = []
    copier = _Copier(objects)
    for index, (role, layer) in enumerate(stack.layers):
        name = _safe_name(layer.label, role)
        d = os.path.join(dest, f"{index}-{name}")
        os.mkdir(d, 0o755)
        _write_layer(layer, d, None if exact else safety, copier)
        dirs.append((role, layer.label or name, d))
        if role == "upper":
            upper = d
        elif role == "lower":
            lowers.append(d)
        else:
            data.append(d)
    workdir = None
    if upper is not None:
        workdir = os.path.join(dest, "work")
        os.mkdir(workdir, 0o755)
    built = BuiltStack(dest, dirs, upper, lowers, data, workdir, stack.options, safety=safety)
    built.objects_copied = copier.copied
    for _, layer in stack.layers:
        for path, why in sorted(getattr(layer, "incomplete", {}).items()):
            built.incomplete.append((layer.label, join_path(path), why))
    return built


def _check_objects(stack: Stack, objects: str | None) -> None:
    """Refuse, before writing anything, a stack whose objects cannot all be found."""
    wanted = [(layer.label, path, digest) for _, layer in stack.layers
              for path, digest in getattr(layer, "objects", {}).items()]
    if not wanted:
        return
    if objects is None:
        raise BuildError(f"the stack file keeps the content of {len(wanted)} large file(s) in an object "
                         f"store (object = \"sha256:...\", first {os.fsdecode(join_path(wanted[0][1]))}); "
                         "give the directory export wrote them to: --objects DIR")
    missing = [w for w in wanted if not os.path.isfile(_object_path(objects, w[2]))]
    if missing:
        label, path, digest = missing[0]
        raise BuildError(f"--objects {objects}: {len(missing)} of {len(wanted)} object(s) missing, first "
                         f"{digest[:2]}/{digest[2:]} for {os.fsdecode(join_path(path))} in layer {label}")


def _object_path(objects: str, digest: str) -> str:
    return os.path.join(objects, digest[:2], digest[2:])


class _Copier:
    """Streams file contents into a new file: from an object store (hash checked) or from a
    disk layer (in full, never following a symlink)."""

    def __init__(self, objects: str | None):
        self.objects = objects
        self.copied = 0

    def fill(self, layer: Layer, path: Path, node: Node, fd: int) -> None:
        digest = getattr(layer, "objects", {}).get(path)
        if digest is not None:
            self._from_object(digest, path, node, fd)
        elif isinstance(layer, MemoryLayer):
            data = layer.contents.get(path)
            _write_all(fd, memoryview(b"" if data is None else data[: node.size]))
        else:
            from ..sources.stackfile import open_layer_file

            try:
                src = open_layer_file(layer, path)
            except OSError as e:
                raise BuildError(f"cannot read {os.fsdecode(join_path(path))} in layer {layer.label}: "
                                 f"{e.strerror or e}") from None
            try:
                _copy(src, fd, node.size)
            finally:
                os.close(src)
        os.ftruncate(fd, node.size)

    def _from_object(self, digest: str, path: Path, node: Node, fd: int) -> None:
        assert self.objects is not None  # _check_objects refused the build otherwise
        where = _object_path(self.objects, digest)
        try:
            src = os.open(where, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as e:
            raise BuildError(f"--objects: cannot open {where}: {e.strerror}") from None
        try:
            if not _stat.S_ISREG(os.fstat(src).st_mode):
                raise BuildError(f"--objects: {where} is not a regular file")
            h = hashlib.sha256()
            got = _copy(src, fd, node.size + 1, h.update)
        finally:
            os.close(src)
        if got != node.size or h.hexdigest() != digest:
            raise BuildError(f"--objects: {where} does not hold the {node.size} bytes of "
                             f"{os.fsdecode(join_path(path))} (sha256 {digest}): {got} bytes, sha256 {h.hexdigest()}")
        self.copied += 1


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def _copy(src: int, dst: int, limit: int, seen=None) -> int:
    """Copy up to ``limit`` bytes, a chunk at a time; returns the bytes copied."""
    done = 0
    while done < limit:
        chunk = os.read(src, min(CHUNK, limit - done))
        if not chunk:
            break
        if seen is not None:
            seen(chunk)
        _write_all(dst, memoryview(chunk))
        done += len(chunk)
    return done


def _write_layer(layer: Layer, root: str, safety: Safety | None, copier: _Copier) -> None:
    dirs_to_finish: list[tuple[bytes, Node]] = []
    broot = os.fsencode(root)
    top = layer.node(())
    for path, node in itertools.chain([((), top if top is not None else Node("dir", 0o755))], iter_tree(layer)):
        if safety is not None:
            node = _safe_node(node, safety)
            if node is None:
                continue
        where = broot + join_path(path) if path else broot
        try:
            _create(layer, path, node, where, copier)
        except PermissionError as e:
            raise BuildError(
                f"cannot create {os.fsdecode(where)} ({node.kind}): {e.strerror}"
                + ("; this needs root" if os.geteuid() != 0 else "")
            ) from None
        if node.kind == "dir":
            dirs_to_finish.append((where, node))
    # Directory modes last (deepest first), so a read-only directory can still be filled.
    for where, node in reversed(dirs_to_finish):
        os.chmod(where, node.mode)


def _create(layer: Layer, path: Path, node: Node, where: bytes, copier: _Copier) -> None:
    kind = node.kind
    if kind == "dir":
        if path:
            os.mkdir(where, 0o700)
    elif kind == "file":
        fd = os.open(where, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            copier.fill(layer, path, node, fd)
        finally:
            os.close(fd)
    elif kind == "symlink":
        os.symlink(node.target or b"", where)
    elif kind in ("chardev", "blockdev"):
        fmt = _stat.S_IFCHR if kind == "chardev" else _stat.S_IFBLK
        os.mknod(where, fmt | 0o600, os.makedev(*node.rdev))
    elif kind == "fifo":
        os.mkfifo(where, 0o600)
    elif kind == "socket":
        os.mknod(where, _stat.S_IFSOCK | 0o600)
    else:
        raise BuildError(f"unknown entry kind {kind!r} at {os.fsdecode(where)}")
    # owner before xattrs: a chown clears security.capability (and setuid bits: mode comes last)
    try:
        os.chown(where, node.uid, node.gid, follow_symlinks=False)
    except PermissionError:
        if os.geteuid() == 0:
            raise
    for name, value in node.xattrs:
        try:
            # the xattr package (a chosen dependency) where its API serves: set on the entry
            # itself, never through a symlink; not a hot path (reads use os: layers.py says why)
            _xattr.setxattr(where, name, value, options=_xattr.XATTR_NOFOLLOW)
        except OSError as e:
            hint = ""
            if e.errno == _errno.EPERM and name.startswith(b"trusted."):
                hint = " (trusted.* xattrs need root)"
            elif e.errno == _errno.EPERM and name.startswith(b"user.") and kind != "file" and kind != "dir":
                hint = " (user.* xattrs are only allowed on regular files and directories)"
            raise BuildError(
                f"cannot set xattr {name.decode('utf-8', 'replace')} on {os.fsdecode(where)}: {e.strerror}{hint}"
            ) from None
    if kind not in ("symlink", "dir"):
        os.chmod(where, node.mode)
