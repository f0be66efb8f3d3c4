"""Containers: ``docker:NAME``, ``podman:NAME``, ``nerdctl:NAME``, ``crictl:ID`` targets, the
layer names of container engines' storage layouts, and the merged tree of a mount that lives in
another mount namespace.

A container TARGET is answered by the engine's own CLI (``docker inspect``, honouring
``DOCKER_HOST``; ``podman container inspect``, honouring ``CONTAINERS_STORAGE_CONF`` and the
other variables podman reads), which gives the container's process; its root overlay is then
read from ``/proc/PID/mountinfo`` (the mount at the container's ``/``).  That works for every
overlay-based storage, including Docker's containerd snapshotter whose ``GraphDriver`` is empty.

Nothing here writes anything: the engines are only asked ``inspect``/``ps`` questions, layer
links (``overlay/l/XXXX``) are read with ``readlink``, and the merged tree of another namespace
is reached through a detached copy of that one mount (``open_tree(OPEN_TREE_CLONE)`` made from
inside the namespace by a short-lived child), which nobody else can see and which disappears
with its descriptor.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from ..kernel.params import OptionError, split_lowerdir
from ..live.mountapi import MountError, open_tree_clone

__all__ = ["ENGINES", "ContainerError", "Container", "split_target", "inspect_container",
           "engine_layer", "clone_mount_of", "known_containers", "merged_root"]

ENGINES = ("docker", "podman", "nerdctl", "crictl")

#: storage directories of the engines' overlay drivers
_OVERLAY_DIRS = ("overlay", "overlay2")


class ContainerError(Exception):
    """The container cannot be reached (one line for the user)."""


@dataclass
class Container:
    engine: str
    name: str
    id: str
    pid: int
    #: layer directory (as the engine reports it) -> label (image layer digest, layer id)
    labels: dict[str, str] = field(default_factory=dict)
    #: the engine's inspect object, when there is one
    inspect: dict | None = None

    @property
    def target(self) -> str:
        return f"{self.engine}:{self.name}"


def split_target(target: str) -> tuple[str, str] | None:
    """``("docker", "web")`` for ``docker:web``; None when ``target`` is no container target."""
    engine, sep, name = target.partition(":")
    if sep and engine in ENGINES:
        return engine, name
    return None


def _run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, errors="surrogateescape")


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _inspect_argv(engine: str, name: str) -> list[str]:
    if engine == "podman":
        return ["podman", "container", "inspect", "--", name]
    if engine == "crictl":
        return ["crictl", "inspect", "--output", "json", name]
    return [engine, "inspect", "--type", "container", "--", name]


def inspect_container(engine: str, name: str) -> Container:
    """Ask ``engine`` for the running container ``name``; raises :class:`ContainerError`."""
    if not name:
        raise ContainerError(f"{engine}: name a container ({engine}:NAME)")
    if shutil.which(engine) is None:
        raise ContainerError(
            f"{engine}:{name}: the {engine} command is not on PATH; install it or put it on PATH, "
            f"or give the container's process with --pid PID and its root, e.g. `explain --pid PID / PATH`")
    try:
        proc = _run(_inspect_argv(engine, name))
    except subprocess.TimeoutExpired:
        raise ContainerError(f"{engine}:{name}: `{engine} inspect` did not answer in 30 s") from None
    except OSError as e:
        raise ContainerError(f"{engine}:{name}: cannot run {engine}: {e.strerror}") from None
    if proc.returncode != 0:
        why = _first_line(proc.stderr) or f"exit status {proc.returncode}"
        low = why.lower()
        if "no such" in low or "not found" in low or "no container" in low:
            raise ContainerError(f"{engine}:{name}: no such container ({why}); `{engine} ps -a` lists them")
        raise ContainerError(f"{engine}:{name}: `{engine} inspect` failed: {why}")
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise ContainerError(f"{engine}:{name}: `{engine} inspect` did not print JSON") from None
    if isinstance(doc, list):
        if not doc:
            raise ContainerError(f"{engine}:{name}: no such container; `{engine} ps -a` lists them")
        doc = doc[0]
    if not isinstance(doc, dict):
        raise ContainerError(f"{engine}:{name}: `{engine} inspect` printed no object")
    if engine == "crictl":
        return _crictl(name, doc)
    state = doc.get("State") if isinstance(doc.get("State"), dict) else {}
    cname = doc.get("Name") if isinstance(doc.get("Name"), str) else ""
    cname = cname.lstrip("/") or name
    cid = doc.get("Id") if isinstance(doc.get("Id"), str) else ""
    pid = state.get("Pid")
    if not state.get("Running") or not isinstance(pid, int) or pid <= 0:
        status = state.get("Status") or "not running"
        raise ContainerError(
            f"{engine}:{name} is not running ({status}); start it (`{engine} start {name}`), or check "
            f"its layers without a mount: `{engine} inspect {name} | ovlinspect check --from-inspect -`")
    c = Container(engine, cname, cid, pid, inspect=doc)
    c.labels = _inspect_labels(engine, doc)
    return c


def _crictl(name: str, doc: dict) -> Container:
    status = doc.get("status") if isinstance(doc.get("status"), dict) else {}
    info = doc.get("info") if isinstance(doc.get("info"), dict) else {}
    state = status.get("state", "")
    pid = info.get("pid")
    if state != "CONTAINER_RUNNING" or not isinstance(pid, int) or pid <= 0:
        raise ContainerError(f"crictl:{name} is not running ({state or 'unknown state'}); start it first")
    meta = status.get("metadata") if isinstance(status.get("metadata"), dict) else {}
    return Container("crictl", meta.get("name") or name, status.get("id") or name, pid, inspect=None)


def _image_layers(engine: str, image: str) -> list[str]:
    """The image's layer digests (``RootFS.Layers``), bottom first; [] when not known."""
    if not image:
        return []
    argv = ["podman", "image", "inspect", "--", image] if engine == "podman" else \
        [engine, "image", "inspect", "--", image]
    try:
        proc = _run(argv)
        doc = json.loads(proc.stdout) if proc.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
        return []
    if isinstance(doc, list) and doc:
        doc = doc[0]
    layers = (doc or {}).get("RootFS", {}).get("Layers") if isinstance(doc, dict) else None
    return [x for x in layers if isinstance(x, str)] if isinstance(layers, list) else []


def _inspect_labels(engine: str, doc: dict) -> dict[str, str]:
    """Layer directory -> label from inspect data: image layers by digest, the rest by id."""
    gd = doc.get("GraphDriver")
    data = gd.get("Data") if isinstance(gd, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("LowerDir", ""), str):
        return {}

    try:
        lowers, _ = split_lowerdir(data["LowerDir"]) if data.get("LowerDir") else ([], [])
    except OptionError:
        return {}
    labels: dict[str, str] = {}
    for d in lowers + [data.get("UpperDir") or ""]:
        if d:
            lab = layout_label(d)
            if lab:
                labels[d] = lab
    image_layers = [d for d in lowers if not layout_label(d).endswith("-init")]
    digests = _image_layers(engine, doc.get("Image") if isinstance(doc.get("Image"), str) else "")
    if digests and len(digests) == len(image_layers):
        # lowerdir is top first, RootFS.Layers bottom first: one directory per image layer
        for d, digest in zip(image_layers, reversed(digests)):
            labels[d] = f"{labels.get(d, '?')} {digest[:19]}"
    return labels


# ------------------------------------------------------------------- storage layouts

_LINK = re.compile(r"^\.\./([^/]+)/diff/?$")


def layout_label(path: str) -> str:
    """What the engine calls the layer at ``path``: its layer id (12 characters, docker's
    ``-init`` kept), ``snapshot N`` for containerd; "" when the path follows no known layout."""
    parts = path.rstrip("/").split("/")
    if len(parts) >= 3 and parts[-1] == "diff" and parts[-3] in _OVERLAY_DIRS:
        return _short(parts[-2])
    if len(parts) >= 3 and parts[-1] == "fs" and parts[-3] == "snapshots":
        return f"snapshot {parts[-2]}"
    return ""


def _short(layer_id: str) -> str:
    return layer_id[:12] + ("-init" if layer_id.endswith("-init") and len(layer_id) > 17 else "")


def engine_layer(path: str, root: str = "") -> tuple[str, str, str]:
    """(path to use, label, note) for a layer path taken from mountinfo.

    * ``<storage>/overlay[2]/l/XXXX``: the short link is read (not followed into the layer) and
      the layer directory ``<storage>/overlay[2]/<id>/diff`` it names is used;
    * podman's ``<storage>/overlay/<container>/mapped/<N>/l/XXXX`` (the idmapped copies podman
      unmounts right after mounting the overlay) falls back to the layer behind
      ``<storage>/overlay/l/XXXX``;
    * ``.../<id>/diff`` and containerd's ``snapshots/<N>/fs`` are labelled by their id.

    ``root`` prefixes every lookup (``/proc/PID/root`` for a layer seen only by that process).
    Paths of no known layout come back unchanged with an empty label.
    """
    note = ""
    parts = path.rstrip("/").split("/")
    if (len(parts) >= 7 and parts[-2] == "l" and parts[-4] == "mapped" and parts[-6] in _OVERLAY_DIRS
            and not os.path.exists(root + path)):
        base = "/".join(parts[:-5])
        shared = f"{base}/l/{parts[-1]}"
        if os.path.lexists(root + shared):
            note = ("podman idmapped layers (mapped/N/l/...) are gone after the mount: read the "
                    "layers behind overlay/l/ instead; owners are shown as on disk, through "
                    "the mount they are shifted by the container's uid/gid map")
            path, parts = shared, shared.split("/")
    if len(parts) >= 3 and parts[-2] == "l" and parts[-3] in _OVERLAY_DIRS:
        try:
            target = os.readlink(root + path)
        except OSError:
            return path, "", note
        m = _LINK.match(target)
        if m:
            real = "/".join(parts[:-2] + [m.group(1), "diff"])
            if os.path.isdir(root + real):
                return real, _short(m.group(1)), note
        return path, "", note
    return path, layout_label(path), note


# ------------------------------------------------------------ mounts of another namespace

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_CLONE_NEWNS = 0x00020000


def clone_mount_of(pid: int, mountpoint: str) -> int:
    """A descriptor of a detached copy of the mount at ``mountpoint`` in the mount namespace of
    ``pid`` (that mount alone, without what is mounted below it, such as a container's
    ``/etc/hosts``).  Made by a child that joins the namespace; raises OSError."""

    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    nsfd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:  # the process's root: mountinfo names its mount points relative to it
        rootfd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        rootfd = -1
    try:
        kid = os.fork()
        if kid == 0:  # the child: join, clone, send, exit; never returns
            code = 1
            try:
                parent.close()
                if _libc.setns(nsfd, _CLONE_NEWNS) != 0:
                    err = ctypes.get_errno()
                    child.sendall(f"E{err}".encode())
                else:
                    if rootfd >= 0:  # setns put us at the namespace's root, not the process's
                        try:
                            os.fchdir(rootfd)
                            os.chroot(".")
                        except OSError:
                            pass
                    try:
                        fd = open_tree_clone(mountpoint)
                    except MountError as e:
                        child.sendall(f"E{e.errno}".encode())
                    else:
                        socket.send_fds(child, [b"K"], [fd])
                        code = 0
            except BaseException:
                pass
            finally:
                os._exit(code)
        child.close()
        try:
            msg, fds, _, _ = socket.recv_fds(parent, 64, 1)
        finally:
            os.waitpid(kid, 0)
            parent.close()
    finally:
        os.close(nsfd)
        if rootfd >= 0:
            os.close(rootfd)
    if fds:
        os.set_inheritable(fds[0], False)
        return fds[0]
    err = int(msg[1:] or b"0") if msg.startswith(b"E") else 0
    raise OSError(err or 5, os.strerror(err or 5))


def merged_root(stack) -> str:
    """The path through which this process reaches the merged tree of a live stack.

    For a mount of another namespace (``--pid``, container targets) that is a detached copy of
    that one mount, made once and kept with the stack (closed by ``stack.close()``), so what is
    mounted below it there (``/etc/hosts``, ``/proc``) is not seen and our own ``/`` is never
    taken for the container's.  Raises OSError when the copy cannot be made.
    """
    if not stack.pid:
        return stack.mountpoint
    if stack.observe_fd is None:
        stack.observe_fd = clone_mount_of(stack.pid, stack.mountpoint)
    return f"/proc/self/fd/{stack.observe_fd}"


# ------------------------------------------------------------------- who runs what

def known_containers(timeout: float = 10) -> list[Container]:
    """Running containers of the engines whose CLI is on PATH (docker honours DOCKER_HOST,
    podman its usual variables); engines that do not answer are skipped."""
    out: list[Container] = []
    for engine in ("docker", "podman", "nerdctl"):
        if shutil.which(engine) is None:
            continue
        try:
            ps = _run([engine, "ps", "-q", "--no-trunc"], timeout)
            ids = ps.stdout.split() if ps.returncode == 0 else []
            if not ids:
                continue
            argv = ["podman", "container", "inspect", *ids] if engine == "podman" else \
                [engine, "inspect", "--type", "container", *ids]
            res = _run(argv, timeout)
            docs = json.loads(res.stdout) if res.returncode == 0 else []
        except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
            continue
        for doc in docs if isinstance(docs, list) else []:
            if not isinstance(doc, dict):
                continue
            state = doc.get("State") if isinstance(doc.get("State"), dict) else {}
            pid = state.get("Pid")
            name = doc.get("Name") if isinstance(doc.get("Name"), str) else ""
            gd = doc.get("GraphDriver") if isinstance(doc.get("GraphDriver"), dict) else {}
            data = gd.get("Data") if isinstance(gd.get("Data"), dict) else {}
            c = Container(engine, name.lstrip("/"), str(doc.get("Id") or ""),
                          pid if isinstance(pid, int) else 0, inspect=doc)
            if isinstance(data.get("UpperDir"), str):
                c.labels[data["UpperDir"]] = "upper"
            out.append(c)
    return out


def container_stack(target: str, pid: int | None = None, layer_root: str | None = None):
    """The stack of the root overlay of the running container ``engine:NAME``."""
    from .target import InputError, live_stack

    engine, name = split_target(target) or ("", "")
    if pid is not None:
        raise InputError(f"{target}: give either a container or --pid, not both")
    try:
        c = inspect_container(engine, name)
    except ContainerError as e:
        raise InputError(str(e)) from None
    try:
        stack = live_stack("/", c.pid, layer_root, labels=c.labels)
    except InputError as e:
        raise InputError(f"{c.target} (pid {c.pid}): {e}") from None
    stack.source = c.target
    return stack
