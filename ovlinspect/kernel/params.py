"""Overlay mount options: the ``lowerdir=`` syntax, option strings, and effective values.

What a user types is not what the kernel uses.  Module parameters supply the defaults,
``redirect_dir=off`` is translated while parsing, a lower-only mount turns ``follow`` into
``on``, and ``metacopy``, ``userxattr``, ``nfs_export``, ``index`` and ``uuid`` adjust each other
before the superblock is built.  :func:`effective_options` predicts the result for Linux 6.16
and later (checked on 6.18): the values the kernel ends up using, whether the mount fails and
with which errno, and the lines it writes to the kernel log.

Everything here is pure: no mounting and no file access, apart from
:meth:`ModuleDefaults.read`, which reads ``/sys/module/overlay/parameters``.

The behaviour is paraphrased from ``fs/overlayfs/params.c`` and ``super.c`` and was
checked by mounting real overlays (see ``tests/test_options.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace

from .profile import KernelProfile, newest

__all__ = [
    "MAX_LAYERS",
    "ModuleDefaults",
    "OptionError",
    "Options",
    "effective_options",
    "escape_lowerdir_element",
    "join_lowerdir",
    "options_from_shown",
    "options_string",
    "shown_options",
    "split_lowerdir",
    "split_options",
    "unescape_lowerdir_element",
]

#: Most layers one overlay may stack (``OVL_MAX_STACK``), data-only layers included.
MAX_LAYERS = 500

#: Prefix of messages overlayfs itself prints (``pr_err``/``pr_info``/``pr_warn``).
_OVL = "overlayfs: "
#: Prefix of messages the generic mount-option parser prints for the ``overlay`` type.
_FC = "overlay: "

#: Options that name layers.  :func:`effective_options` refuses them: pass layers separately.
LAYER_OPTIONS = frozenset({"lowerdir", "lowerdir+", "datadir+", "upperdir", "workdir"})

#: Superblock flags the VFS takes out of the option string before overlayfs sees it.
_VFS_SB_FLAGS = frozenset(
    {"ro", "rw", "sync", "async", "dirsync", "lazytime", "nolazytime", "mand", "nomand"}
)
#: Options that ``mount(8)`` turns into mount flags, or keeps for itself, so overlayfs never
#: sees them; plus the LSM labels (``context=`` ...) the security module consumes.
_USERSPACE_OPTIONS = frozenset(
    {
        "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group",
        "nofail", "_netdev", "suid", "nosuid", "dev", "nodev", "exec", "noexec",
        "atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime",
        "strictatime", "nostrictatime", "silent", "loud", "remount", "bind", "rbind",
        "move", "shared", "rshared", "slave", "rslave", "private", "rprivate",
        "unbindable", "runbindable", "symfollow", "nosymfollow", "iversion",
        "noiversion", "context", "fscontext", "defcontext", "rootcontext", "seclabel",
        "comment",
    }
)  # fmt: skip

_BOOL = ("on", "off")
_ENUMS: dict[str, tuple[str, ...]] = {
    "redirect_dir": ("off", "follow", "nofollow", "on"),
    "index": _BOOL,
    "uuid": ("off", "null", "auto", "on"),
    "nfs_export": _BOOL,
    "xino": ("off", "auto", "on"),
    "metacopy": _BOOL,
    "verity": ("off", "on", "require"),
    "fsync": ("volatile", "auto", "strict"),
}
_FLAGS = frozenset({"default_permissions", "userxattr", "volatile"})
#: Flags that also accept a ``no`` prefix.
_NEGATABLE_FLAGS = frozenset({"override_creds"})


class OptionError(ValueError):
    """An option string the kernel rejects while parsing it.

    ``str(err)`` is one line for a human.  ``errno`` is the error name the mount call would
    return (``"EINVAL"``), and ``kernel_log`` the line the kernel logs, prefix included (e.g.
    ``"overlay: Unknown parameter 'bogus'"``), or ``None`` when it logs nothing.
    """

    def __init__(self, message: str, *, errno: str = "EINVAL", kernel_log: str | None = None,
                 newer: bool = False):
        super().__init__(message)
        self.errno = errno
        self.kernel_log = kernel_log
        #: an option of a newer kernel than the one predicted for (a refusal to predict, not bad
        #: input: "will this work on 6.1?" gets "the mount fails")
        self.newer = newer


def _show(s: str) -> str:
    """Quote ``s`` for a one-line message (control characters become escapes)."""
    return repr(s)


# ---------------------------------------------------------------------------------------------
# lowerdir= syntax


def unescape_lowerdir_element(element: str) -> str:
    """Undo backslash escapes as the kernel does before looking a layer path up.

    Each backslash is dropped and the character after it kept; a final lone backslash vanishes.
    The kernel applies this to ``lowerdir=`` elements and to ``upperdir=``/``workdir=`` values.
    """
    out: list[str] = []
    i = 0
    while i < len(element):
        ch = element[i]
        if ch == "\\":
            i += 1
            if i < len(element):
                out.append(element[i])
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _lowerdir_error(s: str, why: str) -> OptionError:
    return OptionError(f"bad lowerdir {_show(s)}: {why}", kernel_log=_OVL + why)


def _scan_lowerdir(s: str) -> list[tuple[str, bool]]:
    """Cut a non-empty lowerdir string at its separators: (raw element, follows "::") pairs.

    Raises for the errors the kernel finds while scanning, before it looks any layer up.
    """
    if s[0] == ":":
        raise _lowerdir_error(s, "cannot append lower layer")

    elements: list[str] = []
    data_flags: list[bool] = []  # is elements[i] preceded by "::"?
    current: list[str] = []
    colons = 0  # unescaped colons seen since the last other character
    before = False  # did the separator before `current` have two colons?

    def end_element() -> None:
        """Close `current` when a run of colons is followed by something else."""
        nonlocal current, before
        elements.append("".join(current))
        data_flags.append(before)
        before = colons == 2
        current = []

    i, n = 0, len(s)
    while i < n:
        ch = s[i]
        if ch == ":":
            colons += 1
            if colons == 2 and i + 1 < n and s[i + 1] == ":":
                raise _lowerdir_error(
                    s,
                    "only single ':' or double '::' sequences of unescaped colons in lowerdir"
                    " mount option allowed.",
                )
            i += 1
            continue
        # A backslash and the character after it stay together in the element.
        unit = s[i : i + 2] if ch == "\\" else ch
        if unit == "\\" and colons:
            # A lone final backslash right after colons: the kernel looks for pending colons
            # before it notices the escape, so this is a trailing-colon error, not an empty
            # element.
            break
        if colons:
            end_element()
        current.append(unit)
        colons = 0
        i += len(unit)
    if colons:
        raise _lowerdir_error(s, "unescaped trailing colons in lowerdir mount option.")
    end_element()

    return list(zip(elements, data_flags, strict=True))


def split_lowerdir(s: str, profile: KernelProfile | None = None) -> tuple[list[str], list[str]]:
    """Split a legacy ``lowerdir=`` value into (regular layers, data-only layers), top first.

    A single unescaped ``:`` separates regular layers and ``::`` separates data-only layers;
    once ``::`` appeared, every later separator must be ``::`` too.  A backslash escapes the
    next character: splitting keeps backslash pairs, then each element is unescaped.  The empty
    string gives no layers at all (the kernel then reports "missing 'lowerdir'" at mount time).

    Raises :class:`OptionError` carrying the kernel's message for every form the kernel rejects:
    a leading colon, three or more colons in a row, trailing colons, an element that unescapes
    to nothing, a regular layer after a data layer, and more than :data:`MAX_LAYERS` layers.
    """
    if "\0" in s:
        raise OptionError(f"bad lowerdir {_show(s)}: a path cannot contain a NUL character")
    if not s:
        return [], []
    if profile is not None and not profile.data_only_layers:
        return _split_lowerdir_before_data_layers(s), []
    elements = _scan_lowerdir(s)
    if len(elements) > MAX_LAYERS:
        raise _lowerdir_error(s, f"too many lower directories, limit is {MAX_LAYERS}")

    regular: list[str] = []
    data: list[str] = []
    # Then, element by element (the kernel looks each one up in between):
    for index, (raw, is_data) in enumerate(elements):
        path = unescape_lowerdir_element(raw)
        if not path:
            raise _lowerdir_error(s, "empty lowerdir")
        (data if is_data else regular).append(path)
        follows_regular = index + 1 < len(elements) and not elements[index + 1][1]
        if data and follows_regular:
            raise _lowerdir_error(s, "regular lower layers cannot follow data lower layers")
    return regular, data


def _split_lowerdir_before_data_layers(s: str) -> list[str]:
    """Before 6.5 every unescaped ``:`` separates two layers, and no layer may be empty."""
    elements: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(s):
        if s[i] == "\\":
            current.append(s[i : i + 2])
            i += 2
            continue
        if s[i] == ":":
            elements.append("".join(current))
            current = []
        else:
            current.append(s[i])
        i += 1
    elements.append("".join(current))
    if len(elements) > MAX_LAYERS:
        raise _lowerdir_error(s, f"too many lower directories, limit is {MAX_LAYERS}")
    paths = [unescape_lowerdir_element(e) for e in elements]
    if len(paths) == 1 and not paths[0]:
        # one (empty) layer: the kernel counts layers before it looks at them (observed on 6.1
        # for "\\" without an upper layer)
        raise _lowerdir_error(s, "at least 2 lowerdir are needed while upperdir nonexistent")
    if not all(paths):
        raise _lowerdir_error(s, "empty lowerdir")
    return paths


def escape_lowerdir_element(path: str) -> str:
    """Escape one layer path for a ``lowerdir=`` string: ``\\``, ``:`` and ``,`` get a backslash.

    Escaping the comma keeps the whole string safe inside a ``mount(2)`` option string too.
    """
    if not path:
        raise OptionError("a layer path cannot be empty")
    if "\0" in path:
        raise OptionError(f"layer path {_show(path)} contains a NUL character")
    return "".join("\\" + ch if ch in "\\:," else ch for ch in path)


def join_lowerdir(regular: Sequence[str], data: Sequence[str] = ()) -> str:
    """Build a ``lowerdir=`` value from layer paths (top first); the inverse of split_lowerdir."""
    if not regular:
        raise OptionError("a lowerdir string needs at least one regular layer")
    text = ":".join(escape_lowerdir_element(p) for p in regular)
    if data:
        text += "::" + "::".join(escape_lowerdir_element(p) for p in data)
    return text


# ---------------------------------------------------------------------------------------------
# option strings


def split_options(s: str) -> list[tuple[str, str | None]]:
    """Split a ``mount -o`` string into ``(key, value)`` pairs, as the kernel does.

    Commas separate options unless escaped with a backslash.  Backslashes stay in the values
    (``lowerdir=`` and ``upperdir=`` unescape later).  The key ends at the first ``=``; an
    option without ``=`` has the value ``None``.  Empty options and options with an empty key
    (``,,`` or ``=x``) are skipped, as the kernel skips them.
    """
    out: list[tuple[str, str | None]] = []
    current: list[str] = []

    def flush() -> None:
        part = "".join(current)
        current.clear()
        if not part:
            return
        key, eq, value = part.partition("=")
        if not key:
            return
        out.append((key, value if eq else None))

    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "\\":
            current.append(s[i : i + 2])
            i += 2
            continue
        if ch == ",":
            flush()
        else:
            current.append(ch)
        i += 1
    flush()
    return out


def _join_options(pairs: Iterable[tuple[str, str | None]]) -> str:
    return ",".join(key if value is None else f"{key}={value}" for key, value in pairs)


# ---------------------------------------------------------------------------------------------
# module defaults


def _parse_bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("y", "1", "on", "true", "yes"):
        return True
    if value in ("n", "0", "off", "false", "no"):
        return False
    raise ValueError(f"overlay module parameter {name}: expected Y or N, got {text.strip()!r}")


@dataclass(frozen=True, slots=True)
class ModuleDefaults:
    """The overlay module parameters that supply option defaults.

    The field defaults are the values of a kernel built without the optional overlay features
    (``CONFIG_OVERLAY_FS_REDIRECT_ALWAYS_FOLLOW=y`` only), which is also what the machines of
    this project use.
    """

    metacopy: bool = False
    redirect_dir: bool = False
    redirect_always_follow: bool = True
    index: bool = False
    nfs_export: bool = False
    xino_auto: bool = False
    redirect_max: int = 256

    @classmethod
    def read(cls, root: str = "/sys/module/overlay/parameters") -> ModuleDefaults:
        """Read the running kernel's parameters; a missing file keeps the built-in default."""
        values: dict[str, str] = {}
        for f in fields(cls):
            try:
                with open(os.path.join(root, f.name), encoding="ascii") as fh:
                    values[f.name] = fh.read()
            except OSError:
                continue
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> ModuleDefaults:
        """Build from ``{"metacopy": "Y", "redirect_max": "256", ...}``; missing keys default.

        Booleans accept ``Y``/``N`` (as sysfs shows them), ``1``/``0`` and ``on``/``off``.
        ``check_copy_up`` (a parameter without effect) is ignored; other unknown names raise
        :class:`ValueError`.
        """
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, bool | int] = {}
        for name, text in values.items():
            if name == "check_copy_up":
                continue
            if name not in known:
                raise ValueError(f"unknown overlay module parameter {name!r}")
            if name == "redirect_max":
                try:
                    kwargs[name] = int(text.strip())
                except ValueError:
                    raise ValueError(
                        f"overlay module parameter redirect_max: expected a number, got {text.strip()!r}"
                    ) from None
            else:
                kwargs[name] = _parse_bool(name, text)
        return cls(**kwargs)  # type: ignore[arg-type]

    @property
    def redirect_mode(self) -> str:
        """The ``redirect_dir`` mode a mount gets when none is typed."""
        if self.redirect_dir:
            return "on"
        return "follow" if self.redirect_always_follow else "nofollow"

    @property
    def xino(self) -> str:
        """The ``xino`` mode a mount gets when none is typed."""
        return "auto" if self.xino_auto else "off"


# ---------------------------------------------------------------------------------------------
# effective options


@dataclass(frozen=True, slots=True)
class Options:
    """The options an overlay mount really uses, after the kernel's adjustments.

    ``mount_errno`` is set (e.g. ``"EINVAL"``) when the kernel would refuse the mount; the other
    values then show the state reached when it gave up.  ``mount_log`` holds the lines the
    kernel logs while mounting (with their ``overlayfs: `` or ``overlay: `` prefix), ``given``
    the options as typed.  The defaults describe a lower-only mount on a kernel with the
    built-in :class:`ModuleDefaults`.
    """

    metacopy: bool = False
    redirect_dir: str = "on"
    userxattr: bool = False
    verity: str = "off"
    index: bool = False
    nfs_export: bool = False
    xino: str = "off"
    uuid: str = "auto"
    fsync: str = "auto"
    default_permissions: bool = False
    override_creds: bool = True
    has_upper: bool = False
    mount_errno: str | None = None
    mount_log: tuple[str, ...] = ()
    given: tuple[tuple[str, str | None], ...] = ()
    #: the refusal in plain words where the kernel's line does not say it (``empty lowerdir``
    #: for a ``::`` that a kernel before 6.5 does not know), else ""
    mount_why: str = ""

    @property
    def redirect_follow(self) -> bool:
        """Whether lookups follow ``overlay.redirect`` xattrs on directories."""
        return self.redirect_dir in ("on", "follow")

    @property
    def xattr_prefix(self) -> bytes:
        """The namespace of the overlay's own xattrs on the layers."""
        return b"user.overlay." if self.userxattr else b"trusted.overlay."

    def as_json(self) -> dict[str, bool | str]:
        """The values that change path resolution, for machine-readable output."""
        return {
            "metacopy": self.metacopy,
            "redirect_dir": self.redirect_dir,
            "userxattr": self.userxattr,
            "verity": self.verity,
        }

    def semantics(self) -> tuple[object, ...]:
        """Every effective value, without the log and the typed options (for comparisons)."""
        return (
            self.metacopy, self.redirect_dir, self.userxattr, self.verity, self.index,
            self.nfs_export, self.xino, self.uuid, self.fsync, self.default_permissions,
            self.override_creds, self.has_upper, self.mount_errno,
        )  # fmt: skip


def _known(key: str, profile: KernelProfile) -> bool:
    """Whether the kernel of ``profile`` has the option ``key`` at all."""
    if key == "verity":
        return profile.verity_option
    if key == "fsync":
        return profile.fsync_option
    if key in ("override_creds", "nooverride_creds"):
        return profile.override_creds_option
    return True


def _parse_one(key: str, value: str | None, state: dict[str, object], was_set: set[str],
               profile: KernelProfile) -> None:
    """Apply one typed option to ``state``, or raise OptionError as the kernel's parser would."""
    try:
        _parse_checked(key, value, state, was_set, profile)
    except OptionError as e:
        if e.kernel_log and e.kernel_log.startswith(_FC) and not profile.fs_context_parser:
            # before 6.5 the option table matched whole "key=value" tokens, and said so
            typed = key if value is None else f"{key}={value}"
            e.kernel_log = f'{_OVL}unrecognized mount option "{typed}" or missing value'
        raise


def _parse_checked(key: str, value: str | None, state: dict[str, object], was_set: set[str],
                   profile: KernelProfile) -> None:
    if not _known(key, profile):
        raise OptionError(
            f"unknown overlay option {key!r} (kernel {profile.name} does not have it)",
            kernel_log=f"{_FC}Unknown parameter '{key}'", newer=True,
        )
    if key in LAYER_OPTIONS:
        raise OptionError(
            f"option {key!r} names a layer; pass the layers separately",
            kernel_log=None,
        )
    if key in _VFS_SB_FLAGS and not profile.fs_context_parser:
        # before 6.5 the VFS passed the whole string on: "ro" is one option too many
        raise OptionError(f"{key} in the option string: kernel {profile.name} refuses it",
                          kernel_log=f"{_FC}Unknown parameter '{key}'", newer=True)
    if key in _VFS_SB_FLAGS or key in _USERSPACE_OPTIONS or key.lower().startswith("x-"):
        return
    if key in _ENUMS:
        allowed = _ENUMS[key]
        if key == "uuid" and not profile.uuid_null_auto:
            allowed = _BOOL
            if value in _ENUMS["uuid"] and value not in allowed:
                raise OptionError(f"uuid={value} needs a newer kernel than {profile.name}",
                                  kernel_log=f"{_FC}Bad value for 'uuid'", newer=True)
        if value is None or value not in allowed:
            shown = "no value" if value is None else f"{value!r}"
            raise OptionError(
                f"bad value for overlay option {key!r}: {shown} (expected {'|'.join(allowed)})",
                kernel_log=f"{_FC}Bad value for '{key}'",
            )
        if key == "redirect_dir":
            state["typed_redirect"] = value
            if value == "off":
                # Translated while parsing: "off" only stops creating redirects.
                value = "follow" if state["always_follow"] else "nofollow"
            state["redirect_dir"] = value
            was_set.add("redirect")
        elif key in ("index", "nfs_export", "metacopy"):
            state[key] = value == "on"
            was_set.add(key)
        else:
            state[key] = value
        return
    base = key[2:] if key.startswith("no") and key[2:] in _NEGATABLE_FLAGS else key
    if key in _FLAGS or base in _NEGATABLE_FLAGS:
        if value is not None:
            raise OptionError(
                f"overlay option {base!r} takes no value (got {key}={value})",
                kernel_log=f"{_FC}Unexpected value for '{key}'",
            )
        if key == "volatile":
            state["fsync"] = "volatile"
        elif base == "override_creds":
            state["override_creds"] = key == base
        else:
            state[key] = True
        return
    raise OptionError(
        f"unknown overlay option {key!r}",
        kernel_log=f"{_FC}Unknown parameter '{key}'",
    )


def _default_values(defaults: ModuleDefaults) -> dict[str, object]:
    """Every option's value before anything is typed: the module defaults, or fixed ones."""
    return {
        "redirect_dir": defaults.redirect_mode,
        "index": defaults.index,
        "uuid": "auto",
        "nfs_export": defaults.nfs_export,
        "xino": defaults.xino,
        "metacopy": defaults.metacopy,
        "verity": "off",
        "fsync": "auto",
        "userxattr": False,
        "default_permissions": False,
    }


def effective_options(
    opts: str | Iterable[tuple[str, str | None]],
    *,
    has_upper: bool,
    n_lower: int,
    n_data: int,
    defaults: ModuleDefaults | None = None,
    same_fs: bool = True,
    privileged: bool = True,
    profile: KernelProfile | None = None,
) -> Options:
    """Predict the options an overlay mount really uses, on the kernel of ``profile``.

    ``opts`` is a ``mount -o`` string or ``(key, value)`` pairs, without the layer options
    (``lowerdir``, ``lowerdir+``, ``datadir+``, ``upperdir``, ``workdir``).  ``n_lower`` counts
    the regular lower layers, ``n_data`` the data-only ones.  ``same_fs`` says whether the upper
    and every regular lower layer live on one filesystem (it decides ``uuid=off`` on upper
    mounts and the ``xino=on`` notice); ``privileged`` whether the mounter has CAP_SYS_ADMIN.

    Parse errors (an unknown option, a bad value) raise :class:`OptionError`, as the kernel
    refuses those before anything else.  Refusals that come later (conflicting options, too few
    layers) are returned in ``mount_errno``/``mount_log``.  An upper layer is assumed fresh or
    already carrying ``overlay.uuid``, and its filesystem to support the needed xattrs.
    """
    defaults = defaults if defaults is not None else ModuleDefaults()
    profile = profile if profile is not None else newest()
    pairs = split_options(opts) if isinstance(opts, str) else list(opts)

    state: dict[str, object] = {
        "always_follow": defaults.redirect_always_follow,
        **_default_values(defaults),
        "override_creds": True,
    }
    was_set: set[str] = set()
    if not profile.uuid_null_auto:
        state["uuid"] = "on"  # before uuid=null/auto: on unless typed off
    newer: OptionError | None = None
    for key, value in pairs:
        try:
            _parse_one(key, value, state, was_set, profile)
        except OptionError as e:
            if not e.newer:
                raise
            newer = e
            break

    log: list[str] = []
    redirect = str(state["redirect_dir"])
    metacopy = bool(state["metacopy"])
    index = bool(state["index"])
    nfs_export = bool(state["nfs_export"])
    uuid = str(state["uuid"])
    verity = str(state["verity"])
    fsync = str(state["fsync"])
    userxattr = bool(state["userxattr"])

    def result(errno: str | None = None, why: str = "") -> Options:
        return Options(
            metacopy=metacopy,
            redirect_dir=redirect,
            userxattr=userxattr,
            verity=verity,
            index=index,
            nfs_export=nfs_export,
            xino=str(state["xino"]),
            uuid=uuid,
            fsync=fsync,
            default_permissions=bool(state["default_permissions"]),
            override_creds=bool(state["override_creds"]),
            has_upper=has_upper,
            mount_errno=errno,
            mount_log=tuple(log),
            given=tuple(pairs),
            mount_why=why,
        )

    def shown_redirect() -> str:
        """The redirect mode as the kernel names it in a message: before 6.5, as typed."""
        return redirect if profile.redirect_mode_effective else str(state.get("typed_redirect", redirect))

    def fail(errno: str, message: str, why: str = "") -> Options:
        log.append(_OVL + message)
        return result(errno, why)

    if newer is not None:  # the kernel's parser refuses the mount
        log.append(str(newer.kernel_log))
        return result(newer.errno)

    if n_lower + n_data > MAX_LAYERS:
        return fail("EINVAL", f"too many lower directories, limit is {MAX_LAYERS}")

    # --- checks and adjustments made before the superblock is set up ---
    if not has_upper:
        if index and "index" in was_set:
            log.append(_OVL + 'option "index=on" is useless in a non-upper mount, ignore')
            was_set.discard("index")  # the kernel forgets it was typed
        index = False
        if fsync == "volatile":
            log.append(_OVL + 'option "volatile" is meaningless in a non-upper mount, ignoring it.')
            fsync = "auto"
        if uuid == "on" and profile.uuid_null_auto:
            log.append(_OVL + 'option "uuid=on" requires an upper fs, falling back to uuid=null.')
            uuid = "null"
        # Only the upper layer creates redirects, so without one "follow" means "on".
        if redirect == "follow":
            redirect = "on"  # (before 6.5 too, though mountinfo then shows the mode as typed)

    # Before 6.16 verity needs metacopy: it is turned on with it, unless typed off.
    if profile.verity_needs_metacopy and verity != "off" and not metacopy:
        if "metacopy" in was_set:
            return fail("EINVAL", f"conflicting options: metacopy=off,verity={verity}")
        metacopy = True

    # metacopy needs redirects to be followed and created.
    if metacopy and redirect != "on":
        if "metacopy" in was_set and "redirect" in was_set:
            return fail("EINVAL", f"conflicting options: metacopy=on,redirect_dir={shown_redirect()}")
        if "redirect" in was_set:
            log.append(_OVL + f"disabling metacopy due to redirect_dir={redirect}")
            metacopy = False
        else:
            redirect = "on"

    # nfs_export needs the index.
    if nfs_export and not index:
        if not has_upper and redirect != "nofollow":
            log.append(
                _OVL + 'NFS export requires "redirect_dir=nofollow" on non-upper mount,'
                " falling back to nfs_export=off."
            )
            nfs_export = False
        elif "nfs_export" in was_set and "index" in was_set:
            return fail("EINVAL", "conflicting options: nfs_export=on,index=off")
        elif "index" in was_set:
            log.append(_OVL + "disabling nfs_export due to index=off")
            nfs_export = False
        else:
            index = True

    # nfs_export rules out metacopy (and verity).
    if nfs_export and metacopy:
        if "nfs_export" in was_set and "metacopy" in was_set:
            return fail("EINVAL", "conflicting options: nfs_export=on,metacopy=on")
        if "metacopy" in was_set:
            log.append(_OVL + "disabling nfs_export due to metacopy=on")
            nfs_export = False
        elif verity != "off":
            log.append(_OVL + f"disabling nfs_export due to verity={verity}")
            nfs_export = False
        else:
            log.append(_OVL + "disabling metacopy due to nfs_export=on")
            metacopy = False

    # user.overlay.* xattrs cannot carry redirects or metacopy.
    if userxattr:
        if "redirect" in was_set and redirect != "nofollow":
            return fail("EINVAL", f"conflicting options: userxattr,redirect_dir={shown_redirect()}")
        if metacopy and "metacopy" in was_set:
            return fail("EINVAL", "conflicting options: userxattr,metacopy=on")
        redirect = "nofollow"
        metacopy = False

    if not userxattr and not privileged:
        if "redirect" in was_set and redirect != "nofollow":
            return fail("EPERM", "redirect_dir requires permission to access trusted xattrs")
        if metacopy and "metacopy" in was_set:
            return fail("EPERM", "metacopy requires permission to access trusted xattrs")
        if verity != "off":
            return fail("EPERM", "verity requires permission to access trusted xattrs")
        if n_data > 0:
            return fail("EPERM", "lower data-only dirs require permission to access trusted xattrs")

    # Before 6.16 data-only layers need metacopy.
    if profile.data_only_needs_metacopy and n_data > 0 and not metacopy:
        return fail("EINVAL", "lower data-only dirs require metacopy support.",
                    "before 6.16 a stack with data-only layers (lowerdir=A::B) mounts only with "
                    "metacopy=on")

    # --- checks made while setting up the superblock ---
    if n_data > 0 and not profile.data_only_layers:
        # before 6.5 "::" is no separator: it leaves an empty layer path between two colons
        return fail("EINVAL", "empty lowerdir",
                    f"data-only layers (lowerdir=A::B) came with 6.5; {profile.name}'s overlayfs "
                    "reads '::' as an empty layer path between two colons")
    if n_lower + n_data == 0:
        return fail("EINVAL", "missing 'lowerdir'")
    if not has_upper and n_lower + n_data == 1:
        return fail("EINVAL", "at least 2 lowerdir are needed while upperdir nonexistent")
    if n_lower == 0 and profile.refuses_datadir_only:
        return fail("EINVAL", "at least one non-data lowerdir is required")
    if state["xino"] == "on" and same_fs:
        log.append(_OVL + '"xino=on" is useless with all layers on same fs, ignore.')

    # Lower-only mounts always span two "filesystems": slot 0 is kept for the absent upper.
    if uuid == "off" and (not has_upper or not same_fs) and not profile.uuid_off_index_relaxed:
        # before uuid=null existed, the fallback was uuid=on
        fallback = "null" if profile.uuid_null_auto else "on"
        log.append(
            _OVL + "The uuid=off requires a single fs for lower and upper,"
            f" falling back to uuid={fallback}."
        )
        uuid = fallback
    elif uuid == "auto" and has_upper:
        # A fresh upper gets a persistent overlay.uuid xattr, which turns "auto" into "on".
        uuid = "on"
    if not has_upper:
        index = False  # lower-only mounts have no index directory

    return result()


def shown_options(
    o: Options, defaults: ModuleDefaults | None = None, *, same_fs: bool = True,
    profile: KernelProfile | None = None,
) -> list[tuple[str, str | None]]:
    """The overlay options ``/proc/self/mountinfo`` shows for ``o``, after the layers.

    Values equal to their default are left out, as the kernel leaves them out; ``xino`` is
    shown only when the layers span several filesystems.  Superblock flags (``ro``, ``sync``)
    and layer options are not included.
    """
    defaults = defaults if defaults is not None else ModuleDefaults()
    profile = profile if profile is not None else newest()
    out: list[tuple[str, str | None]] = []
    if o.default_permissions:
        out.append(("default_permissions", None))
    if profile.redirect_mode_effective:
        if o.redirect_dir != defaults.redirect_mode:
            out.append(("redirect_dir", o.redirect_dir))
    else:
        typed = [v for k, v in o.given if k == "redirect_dir"]
        if typed and typed[-1] != ("on" if defaults.redirect_dir else "off"):
            out.append(("redirect_dir", typed[-1]))
    if o.index != defaults.index:
        out.append(("index", "on" if o.index else "off"))
    if o.uuid != ("auto" if profile.uuid_null_auto else "on"):
        out.append(("uuid", o.uuid))
    if o.nfs_export != defaults.nfs_export:
        out.append(("nfs_export", "on" if o.nfs_export else "off"))
    if o.xino != defaults.xino and not same_fs:
        out.append(("xino", o.xino))
    if o.metacopy != defaults.metacopy:
        out.append(("metacopy", "on" if o.metacopy else "off"))
    if o.fsync != "auto":
        # before 6.18 the only other value was volatile, shown as a flag
        out.append(("fsync", o.fsync) if profile.fsync_option else ("volatile", None))
    if o.userxattr:
        out.append(("userxattr", None))
    if o.verity != "off":
        out.append(("verity", o.verity))
    return out


def options_from_shown(
    shown: str | Iterable[tuple[str, str | None]],
    *,
    has_upper: bool,
    defaults: ModuleDefaults | None = None,
) -> Options:
    """The effective options of a live mount, from the options its mountinfo line shows.

    The inverse of :func:`shown_options`.  mountinfo shows effective values and leaves out
    those equal to their default, so each value is taken as shown, or as the default when
    absent; the options are *not* run through the kernel's checks again.  (Typing them again
    can give another result: a lower-only mount with module parameters ``index=Y
    nfs_export=Y`` shows ``index=off``, and ``index=off`` typed turns nfs_export off.)

    ``override_creds`` is never shown and is assumed on; ``xino`` is not shown when all layers
    share one filesystem, and is then taken as the default.  Superblock flags (``ro``, ``sync``)
    and unknown names are ignored; a value the kernel would not print raises
    :class:`OptionError`.  The result's ``given`` holds the shown options.
    """
    defaults = defaults if defaults is not None else ModuleDefaults()
    pairs = split_options(shown) if isinstance(shown, str) else list(shown)
    values: dict[str, object] = _default_values(defaults)
    for key, value in pairs:
        if key in _ENUMS:
            if value not in _ENUMS[key]:
                raise OptionError(
                    f"mountinfo shows an unexpected value for {key!r}: {value!r}",
                    kernel_log=None,
                )
            values[key] = value == "on" if _ENUMS[key] is _BOOL else value
        elif key == "volatile":  # how kernels before 6.18 show fsync=volatile
            values["fsync"] = "volatile"
        elif key in ("userxattr", "default_permissions"):
            values[key] = True
    return Options(
        metacopy=bool(values["metacopy"]),
        redirect_dir=str(values["redirect_dir"]),
        userxattr=bool(values["userxattr"]),
        verity=str(values["verity"]),
        index=bool(values["index"]),
        nfs_export=bool(values["nfs_export"]),
        xino=str(values["xino"]),
        uuid=str(values["uuid"]),
        fsync=str(values["fsync"]),
        default_permissions=bool(values["default_permissions"]),
        has_upper=has_upper,
        given=tuple(pairs),
    )


def _explicit_pairs(o: Options) -> list[tuple[str, str | None]]:
    """Options that give ``o`` whatever the module defaults are."""
    on_off = ("off", "on")
    pairs: list[tuple[str, str | None]] = []
    if o.default_permissions:
        pairs.append(("default_permissions", None))
    pairs.append(("redirect_dir", o.redirect_dir))
    pairs.append(("metacopy", on_off[o.metacopy]))
    if o.has_upper:
        # Lower-only mounts never have an index; typing one only earns a notice, or a conflict
        # with nfs_export=on.
        pairs.append(("index", on_off[o.index]))
    pairs.append(("nfs_export", on_off[o.nfs_export]))
    pairs.append(("uuid", o.uuid))
    pairs.append(("xino", o.xino))
    if o.verity != "off":
        pairs.append(("verity", o.verity))
    if o.fsync != "auto":
        pairs.append(("fsync", o.fsync))
    if o.userxattr:
        pairs.append(("userxattr", None))
    if not o.override_creds:
        pairs.append(("nooverride_creds", None))
    return pairs


def options_string(o: Options, defaults: ModuleDefaults | None = None) -> str:
    """The option string (without layers) a mount needs to get ``o`` again.

    Without ``defaults`` the string spells out every value, so it works whatever the module
    parameters are.  With ``defaults`` it leaves out each option the result does not depend on
    under those parameters.  For a refused mount (``o.mount_errno``) this is what was typed.
    """
    if o.mount_errno is not None:
        return _join_options(o.given)
    pairs = _explicit_pairs(o)
    if defaults is None:
        return _join_options(pairs)

    def same(candidate: list[tuple[str, str | None]]) -> bool:
        try:
            got = effective_options(
                candidate, has_upper=o.has_upper, n_lower=2, n_data=0, defaults=defaults
            )
        except OptionError:
            return False
        return got.semantics() == replace(o, mount_errno=None).semantics()

    for pair in list(pairs):
        trial = [p for p in pairs if p != pair]
        if same(trial):
            pairs = trial
    return _join_options(pairs)
