"""What the kernel keeps for one merged path (like ``ovl_entry.h`` and ``struct ovl_lookup_data``).

:class:`Ref` is a place in one layer, :class:`Resolution` the answer for one merged path (the
overlay dentry and inode: its layers, its attributes, the errno of lookup and open, the kernel
log and the step-by-step trace), :class:`LookupFailed` a lookup that ends in an error, and
``_LookupData`` the state carried through one lookup.  ``pd2`` prints a path as the kernel's
``%pd2`` does; ``show`` escapes hostile bytes for every text line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model.layers import Path
from ..model.xattrs import safe
from ..rules.catalogue import Finding

MAX_SYMLINK_HOPS = 40
#: the longest name the layers take (the overlay refuses longer ones with ENAMETOOLONG)
NAME_MAX = 255

#: Bytes for a trace line: decoded, undecodable bytes and control characters made visible.
show = safe


def pd2(path: Path) -> str:
    """The kernel's ``%pd2``: the last two components, ``/foo`` right under the root."""
    if not path:
        return "/"
    parent = path[-2] if len(path) > 1 else b"/"
    # the kernel prints the raw bytes: kept (surrogate-escaped) for --json, escaped by show()
    # on every text line
    if parent == b"/":
        return "/" + path[-1].decode("utf-8", "surrogateescape")
    return (parent + b"/" + path[-1]).decode("utf-8", "surrogateescape")



def show_path(path: Path) -> str:
    return show(b"/" + b"/".join(path))



def show_raw(path: Path) -> bytes:
    return b"/" + b"/".join(path)



@dataclass(frozen=True, slots=True)
class Ref:
    """A place in one layer: kernel layer number and path inside that layer."""

    layer: int
    path: Path

    def __reduce__(self):
        # a frozen dataclass with slots pickles through dataclasses' generic state functions,
        # which ask for its fields each time: the view's scan sends thousands of these
        return (Ref, (self.layer, self.path))



class LookupFailed(Exception):
    def __init__(self, errno: str, log: str | None, why: str, rule: str | None = None,
                 layers: list[int] | None = None, cause: "Ref | None" = None):
        super().__init__(why)
        #: the layer entry where the lookup fails (the refused metacopy, the bad redirect, ...)
        self.cause = cause
        self.errno = errno
        self.log = log
        self.why = why
        self.rule = rule
        self.layers = layers or []



@dataclass
class _LookupData:
    """The state the kernel carries through one lookup (``struct ovl_lookup_data``)."""

    name: bytes
    last: bool = False
    is_dir: bool = False
    opaque: bool = False
    xwhiteouts: bool = False
    stop: bool = False
    redirect: bytes | None = None
    upperredirect: bytes | None = None
    metacopy: int = 0
    absolute_redirect: bool = False
    # not kernel state: bookkeeping for explanations and findings
    cleared_by: Ref | None = None
    metacopy_at: Ref | None = None
    x_layers: set | None = None
    redirect_from: Ref | None = None
    abs_redirect_value: bytes | None = None



@dataclass
class Resolution:
    """The engine's answer for one merged path."""

    path: Path
    errno: str | None = None
    kind: str | None = None
    size: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    target: bytes | None = None
    metadata: Ref | None = None
    data: Ref | None = None
    open_errno: str | None = None
    kernel_log: list[str] = field(default_factory=list)
    open_log: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    # directory context (like the kernel's ovl_entry): used to look up children
    upper: Path | None = None
    lowers: list[Ref] = field(default_factory=list)
    merge: bool = False
    xwhiteouts: bool = False
    opaque: bool = False
    #: set when the final component was reached through a symlink in a parent
    via_symlink: bool = False
    #: the layer whose entry ended the walk down the layers (an opaque directory, a file over
    #: directories, ...): the regular layers below it are not looked at
    stopped_at: int | None = None
    #: the data lookup was deferred to open, with this absolute redirect
    lowerdata_redirect: bytes | None = None
    metacopy: bool = False
    metacopy_size: int = 0
    redirect: bytes | None = None
    whiteout: Ref | None = None
    #: overlay inodes of this directory and its ancestors: hash key (the first lower) -> upper
    inode_keys: dict | None = None
    #: layers whose copy of this directory was read with opaque=x (xattr whiteouts enabled)
    x_layers: set | None = None
    #: layers the lookups of this directory and its ancestors found opaque=x in (the kernel
    #: flags such a layer for good: ``ovl_layer_set_xwhiteouts``)
    x_seen: frozenset = frozenset()
    readdir_errno: str | None = None
    #: for a failed lookup: where it fails, and the entry whose metacopy/redirect led there
    cause: Ref | None = None
    looked_at: Ref | None = None
    readdir_log: list[str] = field(default_factory=list)
    _entries: list[bytes] | None = None
    _hidden: dict[bytes, str] | None = None
    #: names readdir does not show although a layer holds them and their lookup fails with an
    #: error (not ENOENT): impure directories leave them out, or fail the whole listing
    unlisted_failures: list[bytes] | None = None
    #: the path as asked (:meth:`Engine.walk_path`), when it differs from ``path``: with its
    #: ``..``, its trailing ``/`` or the symlinks the walk followed
    asked: bytes | None = None
    #: the walk needed ``path`` as a directory (a trailing ``/``, or a ``..`` or more
    #: components after it): what a program sees is ``lstat("path/")``
    slash: bool = False

    @property
    def ok(self) -> bool:
        return self.errno is None

    @property
    def is_dir(self) -> bool:
        return self.errno is None and self.kind == "dir"

