"""A described overlay stack: its layers, in kernel order, and its mount options."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .layers import Layer

if TYPE_CHECKING:  # the model holds what the kernel package computes, never imports it
    from ..kernel.params import Options
    from ..kernel.profile import KernelProfile


@dataclass
class Stack:
    """Layers top first, the way the kernel numbers them.

    ``upper`` is kernel layer 0 when present; ``lowers`` are the regular lower layers (top
    first); ``data`` the data-only lower layers, in order.  ``options`` is the mount option
    string as typed (``metacopy=on,redirect_dir=on``), without the layer options.
    """

    lowers: list[Layer]
    data: list[Layer] = field(default_factory=list)
    upper: Layer | None = None
    workdir: str | None = None
    options: str = ""
    #: Where the stack came from, for display: "demo:seed", "/mnt/merged", "stack.toml", ...
    source: str = ""
    #: A one-paragraph description (demos and stack files carry one).
    description: str = ""
    #: Module parameter overrides (name -> value as in /sys/module/overlay/parameters);
    #: None reads the running kernel's.
    params: dict[str, str] | None = None
    #: The mountpoint when the stack is a live mount.
    mountpoint: str | None = None
    #: Effective options already known (a live mount's, read back from mountinfo); when None
    #: the engine computes them from ``options`` as the kernel would at mount time.
    effective: Options | None = None
    #: a refusal of the mount found while reading the layer options, as (errno, kernel log
    #: line): the workdir missing or inside the upper layer, ...
    refusal: tuple[str, str] | None = None
    #: The kernel whose behaviours to predict (``--kernel``); None: the running kernel's.
    profile: KernelProfile | None = None
    #: For a live mount named by a path inside it: that path's place in the merged tree, raw
    #: (it may fail to resolve: that is the path to explain).
    target_path: bytes | None = None
    #: The process whose mount namespace holds the live mount (``--pid``, containers).
    pid: int | None = None
    #: A descriptor of a detached copy of that mount, made for ``--observe`` (see
    #: :func:`ovlinspect.sources.containers.merged_root`).
    observe_fd: int | None = None
    #: The options were not read from a mount nor given: module defaults (``--from-inspect``
    #: of an unmounted container).
    options_guessed: bool = False
    #: The mountpoint, upper and work directories of the overlays mounted on this system, as a function
    #: (the source that knows the system sets it: :func:`ovlinspect.sources.mountinfo.overlay_dirs`);
    #: the kernel refuses or warns when this stack's directories are among them.  None: not checked.
    overlays_mounted: Callable[[], list[tuple[str, str | None, str | None]]] | None = None

    @property
    def layers(self) -> list[tuple[str, Layer]]:
        """(role, layer) in the order of the JSON contract: upper, lower..., data..."""
        out: list[tuple[str, Layer]] = []
        if self.upper is not None:
            out.append(("upper", self.upper))
        out += [("lower", l) for l in self.lowers]
        out += [("data", l) for l in self.data]
        return out

    def close(self) -> None:
        for _, layer in self.layers:
            layer.close()
        if self.observe_fd is not None:
            import os

            os.close(self.observe_fd)
            self.observe_fd = None

    def reopened(self) -> "Stack":
        """The same stack, every field kept, with fresh handles on its layers (their own
        caches and descriptors: for another thread, or to read the layers again)."""
        return dataclasses.replace(
            self, lowers=[l.reopen() for l in self.lowers], data=[l.reopen() for l in self.data],
            upper=self.upper.reopen() if self.upper is not None else None)

