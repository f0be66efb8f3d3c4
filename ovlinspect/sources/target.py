"""Where stacks come from: kernel-syntax arguments, live mounts, stack files, demos, inspect JSON."""

from __future__ import annotations

import os
import pathlib
from importlib import resources

from ..kernel.params import ModuleDefaults, OptionError, options_from_shown, split_lowerdir
from ..model.layers import DiskLayer, Layer, LayerError
from ..model.stack import Stack
from .cfsimage import ImageError, erofs_file, image_layers, open_image
from .composefs import DumpError, load_dump
from .mountinfo import (NotOverlayError, layer_path_problem, locate, mount_namespaces,
                        overlay_dirs, parse_mountinfo, read_mountinfo)
from .stackfile import StackFileError, load_stack, loads_stack


class InputError(Exception):
    """Bad input: the message is one line for the user; the CLI exits 2."""


class NotOnOverlay(InputError):
    """TARGET is not on an overlay mount of this mount namespace; the front end may say which
    other namespace has it (:func:`ovlinspect.live.mounts.elsewhere_hint`)."""

    def __init__(self, message: str, target: str):
        super().__init__(message)
        self.target = target


def _disk(path: str, label: str, base: str | None = None, want_verity: bool = False,
          data: bool = False) -> Layer:
    """A layer directory, or a composefs dump file standing for one."""
    p = path
    if not os.path.isabs(p):
        if base is None:
            raise InputError(f"layer path {p!r} is relative and cannot be resolved; give an absolute path")
        p = os.path.join(base, p)
    if not os.path.lexists(p):
        raise InputError(f"layer does not exist: {p} (a layer is a directory, a composefs dump "
                         "or an EROFS image)")
    if os.path.isfile(p) and erofs_file(p):  # an EROFS image (mkfs.erofs, mkcomposefs)
        if os.geteuid() != 0:
            raise InputError(f"{p} is an EROFS image: reading it needs a mount, and so "
                             "root; or give its mount directory or its composefs dump instead")
        try:
            return open_image(p, p, label, "an EROFS image named as a layer, mounted detached "
                              "and read-only")
        except ImageError as e:
            raise InputError(str(e)) from None
    if os.path.isfile(p):  # a composefs dump file describes a layer

        try:
            layer = load_dump(pathlib.Path(p), label)  # a path, even one holding "\n" or "/ "
            layer.path = p
            return layer
        except DumpError as e:
            raise InputError(f"{p}: {e}") from None
        except OSError as e:
            raise InputError(f"{p}: {e.strerror}") from None
    try:
        # the kernel ignores overlay xattrs on data-only layers: do not read them there
        return DiskLayer(p, label, want_verity=want_verity, want_xattrs=not data)
    except LayerError as e:
        raise InputError(str(e)) from None


def _verity_wanted(options: str) -> bool:
    return "verity=on" in options or "verity=require" in options


def stack_from_args(lowerdir: str, upperdir: str | None = None, workdir: str | None = None,
                    options: str = "", source: str = "") -> Stack:
    """A stack given the way ``mount -t overlay`` takes it (relative paths: from the cwd)."""

    try:
        regular, data = split_lowerdir(lowerdir)
    except OptionError as e:
        raise InputError(f"bad --lowerdir: {e}") from None
    cwd = os.getcwd()
    verity = _verity_wanted(options)
    lowers = [_disk(p, os.path.basename(p.rstrip("/")) or p, cwd) for p in regular]
    datas = [_disk(p, os.path.basename(p.rstrip("/")) or p, cwd, verity, data=True) for p in data]
    upper = _disk(upperdir, "upper", cwd) if upperdir else None
    desc = f"lowerdir={lowerdir}" + (f",upperdir={upperdir}" if upperdir else "") + (
        f",workdir={workdir}" if workdir else "")
    return Stack(lowers=lowers, data=datas, upper=upper,
                 workdir=os.path.abspath(workdir) if workdir else None,
                 options=options, source=source or desc,
                 refusal=_workdir_refusal(upperdir, workdir) if upperdir else None,
                 overlays_mounted=overlay_dirs)


def _workdir_refusal(upperdir: str, workdir: str | None) -> tuple[str, str] | None:
    """What the kernel says of the work directory of an upper layer, when it refuses it."""
    if not workdir:
        return "EINVAL", "overlayfs: missing 'workdir'"
    try:
        work = os.path.realpath(workdir, strict=True)
        up = os.path.realpath(upperdir, strict=True)
        st_work, st_up = os.stat(work), os.stat(up)
    except OSError as e:
        return "ENOENT", f"overlay: failed to resolve '{workdir}': -{e.errno}"
    if not os.path.isdir(work):
        return "ENOTDIR", f"overlay: {workdir} is not a directory"
    if work == up or work.startswith(up + "/") or up.startswith(work + "/"):
        return "EINVAL", "overlayfs: workdir and upperdir must be separate subtrees"
    if st_work.st_dev != st_up.st_dev:
        return "EINVAL", "overlayfs: workdir and upperdir must reside under the same mount"
    return None


def live_stack(target: str, pid: int | None = None, layer_root: str | None = None,
               labels: dict[str, str] | None = None, images: list[str] | None = None) -> Stack:
    """The stack of the overlay mount that contains ``target`` (read from mountinfo).

    With ``pid``, ``target`` is a path in that process's mount namespace and root, and each
    layer path is looked up on the host first, then under ``/proc/PID/root`` (container engines
    mount from the host, a process inside a container mounts from its own root).  Layer paths
    of the engines' storage layouts are resolved and labelled as the engine names the layer
    (:func:`ovlinspect.sources.containers.engine_layer`); ``labels`` (layer path -> label, from inspect
    data) names them better still.  A lower layer whose path is gone (composefs's detached EROFS
    mount) is read from its image: ``images`` (``--image``) or one found by
    :mod:`ovlinspect.sources.cfsimage`.
    """
    from .containers import engine_layer

    if pid is not None and (pid <= 0 or not os.path.isdir(f"/proc/{pid}")):
        raise InputError(f"--pid {pid}: no such process")
    proc = f"/proc/{pid}" if pid else "/proc/self"
    root = f"/proc/{pid}/root" if pid else ""
    try:
        located = locate(target, proc_root=proc)
        entry = located.entry
    except NotOverlayError as e:
        if pid is None:
            raise NotOnOverlay(str(e), target) from None
        raise InputError(str(e)) from None
    except OSError as e:
        raise InputError(f"cannot read {proc}/mountinfo: {e.strerror}") from None
    notes = []
    if not layer_root:
        layer_root = _docker_root(entry, root, tuple(labels or ()))
        if layer_root:
            notes.append(f"relative layer paths resolved against {layer_root} (docker's overlay2 "
                         "layout: it mounts relative l/... paths from its overlay2 directory, the "
                         "grandparent of <id>/merged); use --layer-root to choose another")
    if layer_root:
        def rel(p: str) -> str:
            return p if os.path.isabs(p) and p != "/" else os.path.join(layer_root, p.lstrip("/"))

        entry.lowers = [rel(p) for p in entry.lowers]
        entry.datas = [rel(p) for p in entry.datas]
        entry.upperdir = rel(entry.upperdir) if entry.upperdir else None
    given = {p: p for p in [*entry.lowers, *entry.datas, *([entry.upperdir] if entry.upperdir else [])]}
    names: dict[str, str] = {}
    for p in given:
        if layer_path_problem(p):
            continue
        prefix = ""  # the host first, then the process's root
        used, label, note = engine_layer(p)
        if root and not os.path.exists(used):
            there = engine_layer(p, root)
            if os.path.exists(root + there[0]):
                prefix, (used, label, note) = root, there
        given[p] = prefix + used
        names[p] = (labels or {}).get(p) or (labels or {}).get(used) or label
        if note and note not in notes:
            notes.append(note)
    replaced, cfs_note = _image_layers(entry, root, images, given)
    notes += [cfs_note] if cfs_note else []
    for p in given:
        problem = None if p in {entry.lowers[i] for i in replaced} else layer_path_problem(p)
        if problem:
            raise InputError(
                f"{entry.mountpoint}: {problem}; name the layers yourself with --lowerdir "
                "(and --upperdir/--workdir) or --layer-root")
    opts = ",".join(k if v is None else f"{k}={v}" for k, v in entry.options)
    verity = _verity_wanted(opts)

    def name(p: str) -> str:
        return names.get(p) or os.path.basename(p.rstrip("/")) or p

    lowers = [replaced.get(i) or _disk(given[p], name(p)) for i, p in enumerate(entry.lowers)]
    datas = [_disk(given[p], name(p), want_verity=verity, data=True) for p in entry.datas]
    upper = _disk(given[entry.upperdir], names.get(entry.upperdir) or "upper") if entry.upperdir else None

    effective = options_from_shown(entry.options, has_upper=upper is not None,
                                   defaults=ModuleDefaults.read())
    stack = Stack(lowers=lowers, data=datas, upper=upper, workdir=entry.workdir, options=opts,
                  source=entry.mountpoint if not pid else f"{entry.mountpoint} (pid {pid})",
                  mountpoint=entry.mountpoint, effective=effective, description="; ".join(notes),
                  target_path=located.inside)
    stack.pid = pid
    return stack


def _image_layers(entry, root: str, images: list[str] | None,
                  given: dict[str, str]) -> tuple[dict[int, Layer], str]:
    """EROFS images standing for gone lower layers (composefs), see :mod:`ovlinspect.sources.cfsimage`."""

    try:
        found = image_layers(entry, root, images, resolve=lambda p: given.get(p, root + p))
    except ImageError as e:
        raise InputError(str(e)) from None
    return found  # type: ignore[return-value]


def _docker_root(entry, root: str, hints: tuple[str, ...] = ()) -> str | None:
    """Where relative layer paths live when docker mounted them (``l/ABC`` from its root).

    Docker's overlay2 driver switches to relative paths (``lowerdir=l/<short id>:...``,
    ``upperdir=<id>/diff``) when the option string would pass a page, mounting from its
    ``overlay2`` directory (``/var/lib/docker/overlay2``) onto ``<root>/<id>/merged``.  The
    root is found from an absolute upper layer (``<root>/<id>/diff``), from the mountpoint
    (``<root>/<id>/merged``), from ``hints`` (layer directories an engine reported), or from
    where the same superblock is mounted in another namespace sharing our root (a container's
    ``/`` is dockerd's ``<root>/<id>/merged``).  Taken only when every relative layer exists
    there (looked up on the host first, then under ``root``, the ``/proc/PID/root`` of the
    process whose mount it is).
    """
    layers = [*entry.lowers, *entry.datas, *([entry.upperdir] if entry.upperdir else [])]
    relative = [p for p in layers if p and not os.path.isabs(p)]
    if not relative:
        return None

    def grand(p: str) -> str:
        return os.path.dirname(os.path.dirname(p.rstrip("/")))

    def candidates():
        if entry.upperdir and os.path.isabs(entry.upperdir):
            yield grand(entry.upperdir)
        if entry.mountpoint.rstrip("/").endswith("/merged"):
            yield grand(entry.mountpoint)
        yield from (grand(h) for h in hints if os.path.isabs(h) and h.rstrip("/").endswith("/diff"))
        yield from (grand(mp) for mp in _same_superblock(entry) if mp.rstrip("/").endswith("/merged"))

    for base in candidates():
        for prefix in dict.fromkeys(["", root]):
            if all(os.path.isdir(prefix + os.path.join(base, p)) for p in relative):
                return base
    return None


def _same_superblock(entry):
    """Mountpoints of the same overlay superblock in namespaces whose root is ours."""

    try:
        me = os.stat("/")
        spaces, _ = mount_namespaces()
    except OSError:
        return
    for space in spaces:
        try:
            st = os.stat(f"/proc/{space.pid}/root")
            if (st.st_dev, st.st_ino) != (me.st_dev, me.st_ino):
                continue
            text = read_mountinfo(f"/proc/{space.pid}")
            for e in parse_mountinfo(text):
                if e.is_overlay and e.major_minor == entry.major_minor and e.root == "/":
                    yield e.mountpoint
        except (OSError, ValueError):
            continue


def demo_names() -> list[str]:
    base = resources.files("ovlinspect") / "demos"
    return sorted(p.name[:-5] for p in base.iterdir() if p.name.endswith(".toml"))


def demo_stack(name: str) -> Stack:

    base = resources.files("ovlinspect") / "demos"
    f = base / f"{name}.toml"
    if not f.is_file():
        raise InputError(f"no demo named {name!r}; `ovlinspect demo --list` shows them")
    stack = loads_stack(f.read_text(), str(base))
    stack.source = f"demo:{name}"
    return stack


def load_target(target: str, pid: int | None = None, layer_root: str | None = None,
                images: list[str] | None = None) -> Stack:
    """``demo:NAME``, a stack file (``.toml``), ``docker:NAME`` and the like, or a path on a
    mounted overlay (``images``: ``--image``, for a composefs layer that is gone)."""
    from .containers import split_target

    if split_target(target):
        from .containers import container_stack

        if images:
            raise InputError("--image goes with a mount path as TARGET, not a container name")
        return container_stack(target, pid, layer_root)
    if target.startswith("demo:"):
        return demo_stack(target[5:])
    if target.endswith(".toml") and os.path.isfile(target):

        try:
            stack = load_stack(target)
        except StackFileError as e:
            raise InputError(str(e)) from None
        stack.source = target
        if images:
            raise InputError("--image is for a live mount whose EROFS layer is gone, not a stack file")
        return stack
    # a path need not exist: one whose lstat fails inside an overlay is the one to explain
    return live_stack(target, pid, layer_root, images=images)


def check_privileges(stack: Stack, userxattr: bool) -> None:
    """trusted.overlay.* xattrs are invisible without CAP_SYS_ADMIN: refuse to guess."""
    if userxattr or os.geteuid() == 0:
        return
    if any(isinstance(l, DiskLayer) for _, l in stack.layers):
        raise InputError("reading trusted.overlay.* xattrs needs root (CAP_SYS_ADMIN); run "
                         "ovlinspect as root, or inspect a userxattr mount")
