"""Overlay layer directories from ``docker inspect`` / ``podman inspect`` JSON.

Both engines report an overlay-backed container or image under ``GraphDriver``::

    "GraphDriver": {
        "Name": "overlay2",                       # docker; podman says "overlay"
        "Data": {
            "LowerDir": "/var/lib/docker/overlay2/<id>-init/diff:/var/lib/docker/overlay2/<id2>/diff",
            "UpperDir": ".../diff", "WorkDir": ".../work", "MergedDir": ".../merged"
        }
    }

``LowerDir`` uses the kernel's ``lowerdir=`` syntax: top layer first, ``:`` between layers,
``\\:`` for a literal colon, and, in podman's composefs mode, ``::`` before the data-only
object directories.  It is split with :func:`ovlinspect.kernel.params.split_lowerdir`.  An image
with a single layer has no ``LowerDir`` (its one layer is ``UpperDir``); ``MergedDir`` only
exists while the container is mounted.

The input may be one object or a list of them (what ``inspect`` prints).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from ..kernel.params import OptionError, split_lowerdir
from .containers import layout_label
from .mountinfo import NotOverlayError, find_overlay_mount

__all__ = ["InspectError", "InspectStack", "layer_labels", "load_inspect", "load_inspect_all",
           "merged_mount"]

#: Graph driver names that mean "the kernel's overlayfs" (docker's containerd snapshotter
#: reports "overlayfs").
OVERLAY_DRIVERS = ("overlay", "overlay2", "overlayfs")


class InspectError(ValueError):
    """The JSON is not inspect output for an overlay-backed container or image (one line)."""


@dataclass
class InspectStack:
    """The overlay layer directories of one container or image, as the engine reports them."""

    #: Regular lower layers, top first.
    lowers: list[str] = field(default_factory=list)
    #: Data-only lower layers (after ``::``), in order.
    datas: list[str] = field(default_factory=list)
    upper: str | None = None
    work: str | None = None
    merged: str | None = None
    #: Container name (without docker's leading ``/``), image tag, or short id.
    name: str = ""
    id: str = ""
    #: The graph driver name as reported (``overlay2``, ``overlay``).
    driver: str = ""
    #: "container" or "image".
    kind: str = "container"

    def mount_layers(self) -> tuple[list[str], list[str], str | None, str | None]:
        """(lowers, datas, upper, work) as a mount takes them.

        An image of a single layer reports only ``UpperDir``: that read-only layer is then the
        one lower layer, and there is no upper or work directory.
        """
        if not self.lowers and not self.datas and self.upper is not None:
            return [self.upper], [], None, None
        return list(self.lowers), list(self.datas), self.upper, self.work


def _type_name(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(v), type(v).__name__)


def _dir(data: dict, key: str, where: str) -> str | None:
    v = data.get(key)
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise InspectError(f"{where}GraphDriver.Data.{key} is {_type_name(v)}, not a string")
    if "\0" in v:
        raise InspectError(f"{where}GraphDriver.Data.{key} contains a NUL character")
    return v


def _tags(obj: dict) -> list[str]:
    """``RepoTags`` when it is a list (the strings in it); anything else holds no tag."""
    tags = obj.get("RepoTags")
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def _label(obj: dict) -> tuple[str, str, str]:
    """(name, id, kind) of one inspect object."""
    oid = obj.get("Id") or obj.get("ID") or ""
    oid = oid if isinstance(oid, str) else ""
    is_image = "State" not in obj and ("RepoTags" in obj or "RootFS" in obj)
    if is_image:
        name = next((t for t in _tags(obj) if t), "")
        return name or oid.removeprefix("sha256:")[:12], oid, "image"
    name = obj.get("Name")
    if isinstance(name, str) and name.strip("/"):
        return name.lstrip("/"), oid, "container"
    return oid[:12], oid, "container"


def _one(obj: Any, where: str = "") -> InspectStack:
    if not isinstance(obj, dict):
        raise InspectError(f"{where}inspect JSON entry is {_type_name(obj)}, not an object")
    name, oid, kind = _label(obj)
    gd = obj.get("GraphDriver")
    if gd is None:
        hint = (" (docker's containerd image store does not report layer directories;"
                " use `ctr snapshots mounts` or the live mount instead)") if "Storage" in obj or "Driver" in obj else ""
        raise InspectError(f"{where}inspect JSON has no GraphDriver{hint}")
    if not isinstance(gd, dict):
        raise InspectError(f"{where}GraphDriver is {_type_name(gd)}, not an object")
    driver = gd.get("Name") or obj.get("Driver") or ""
    if not isinstance(driver, str):
        raise InspectError(f"{where}GraphDriver.Name is {_type_name(driver)}, not a string")
    if driver and driver not in OVERLAY_DRIVERS:
        raise InspectError(f"{where}graph driver is {driver}, not overlay")
    data = gd.get("Data")
    if data is None:
        raise InspectError(f"{where}inspect JSON has no GraphDriver.Data")
    if not isinstance(data, dict):
        raise InspectError(f"{where}GraphDriver.Data is {_type_name(data)}, not an object")

    lowers: list[str] = []
    datas: list[str] = []
    lower = _dir(data, "LowerDir", where)
    if lower is not None:

        try:
            lowers, datas = split_lowerdir(lower)
        except OptionError as e:
            raise InspectError(f"{where}GraphDriver.Data.LowerDir: {e}") from None
    upper = _dir(data, "UpperDir", where)
    if not lowers and not datas and upper is None:
        raise InspectError(f"{where}GraphDriver.Data has neither LowerDir nor UpperDir")
    return InspectStack(
        lowers=list(lowers),
        datas=list(datas),
        upper=upper,
        work=_dir(data, "WorkDir", where),
        merged=_dir(data, "MergedDir", where),
        name=name,
        id=oid,
        driver=driver,
        kind=kind,
    )


#: Largest inspect JSON read (bytes).
MAX_INSPECT = 64 << 20


def _parse(text: str | bytes) -> list[Any]:
    if len(text) > MAX_INSPECT:
        raise InspectError(f"inspect JSON larger than {MAX_INSPECT >> 20} MiB; refused")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise InspectError(f"inspect JSON is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise InspectError("inspect JSON is not UTF-8 text") from None
    except RecursionError:
        raise InspectError("inspect JSON is nested too deeply") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise InspectError(f"inspect JSON: {e}") from None
    if isinstance(doc, dict):
        return [doc]
    if isinstance(doc, list):
        if not doc:
            raise InspectError("inspect JSON is an empty list")
        return doc
    raise InspectError(f"inspect JSON is {_type_name(doc)}, not an object or a list of objects")


def load_inspect_all(text: str | bytes) -> list[InspectStack]:
    """Every object of the inspect output, in order (any bad one raises :class:`InspectError`)."""
    objs = _parse(text)
    many = len(objs) > 1
    return [_one(o, f"entry {i}: " if many else "") for i, o in enumerate(objs)]


def load_inspect(text: str | bytes, select: str | int | None = None) -> InspectStack:
    """The overlay directories of the container or image in ``docker``/``podman inspect`` output.

    ``text`` holds one object or a list.  A list of several needs ``select``: an index, or a
    name, tag or id (prefix) of one entry.  Raises :class:`InspectError` (a ``ValueError``)
    with a one-line message.
    """
    objs = _parse(text)
    if select is None:
        if len(objs) > 1:
            raise InspectError(f"inspect JSON holds {len(objs)} objects ({_choices(objs)}); pick one "
                               "with --container NAME|INDEX")
        return _one(objs[0])
    if isinstance(select, int):
        if not -len(objs) <= select < len(objs):
            raise InspectError(f"inspect JSON has {len(objs)} objects ({_choices(objs)}), no entry {select}")
        return _one(objs[select])
    for o in objs:
        if not isinstance(o, dict):
            continue
        name, oid, _ = _label(o)
        tags = _tags(o)
        bare = oid.removeprefix("sha256:")
        if select in (name, oid) or select in tags or (len(select) >= 4 and bare.startswith(select.removeprefix("sha256:"))):
            return _one(o)
    raise InspectError(f"inspect JSON has no object named {select} (it has {_choices(objs)})")


def _choices(objs: list) -> str:
    return ", ".join(f"{i}: {_label(o)[0] if isinstance(o, dict) else '?'}" for i, o in enumerate(objs))


def layer_labels(info: InspectStack) -> dict[str, str]:
    """Layer directory -> what the engine calls it (its layer id; docker's ``-init`` kept)."""

    out = {}
    for d in [*info.lowers, *info.datas, *([info.upper] if info.upper else [])]:
        label = layout_label(d)
        if label:
            out[d] = label
    return out


def merged_mount(info: InspectStack) -> bool:
    """MergedDir is an overlay mounted in this mount namespace."""
    if not info.merged:
        return False

    try:
        entry = find_overlay_mount(info.merged)
    except (NotOverlayError, OSError, ValueError):
        return False
    return entry.mountpoint.rstrip("/") == info.merged.rstrip("/")
