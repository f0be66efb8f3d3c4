"""What each kernel version's overlayfs does: the only module that knows version numbers.

A :class:`KernelProfile` has one field per behaviour that changed since Linux 6.1.  Each field's
default is the oldest behaviour modelled (6.1); :data:`CHANGES` lists, in order, the version that
changed it and the commit that did (its title, and its id where known).  :func:`profile_for`
applies the changes up to a version, so every release from 6.1 on gets exactly the behaviours
it has, and a newcomer finds "what changed in 6.16" in one table.

Distribution kernels backport: the release number is the default, and
:mod:`ovlinspect.kernel.probe` can correct it by looking at what the running kernel does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

__all__ = [
    "CHANGES",
    "KernelProfile",
    "OLDEST",
    "UnknownKernel",
    "parse_version",
    "profile_for",
    "profile_for_release",
]

#: The oldest kernel modelled.  Older ones are refused, not guessed.
OLDEST = (6, 1)


class UnknownKernel(ValueError):
    """A kernel version ovlinspect does not model (or cannot read)."""


@dataclass(frozen=True, slots=True)
class KernelProfile:
    """The overlayfs behaviours of one kernel version (defaults: Linux 6.1)."""

    #: (major, minor) this profile was made for.
    version: tuple[int, int] = OLDEST
    #: How the profile was chosen: "release" (uname), "--kernel", "probe", ...
    chosen_by: str = "release"
    #: The kernel release string it stands for (``6.12.118+deb12-cloud-amd64``), if known.
    release: str = ""

    # --- mount options and mount-time checks (params.c, super.c) ---
    #: Options are parsed by the fs_context parser (``overlay: Unknown parameter 'x'``), not
    #: by the old match_token parser (``overlayfs: unrecognized mount option "x" ...``).
    fs_context_parser: bool = False
    #: ``lowerdir=A::B`` data-only lower layers.  Without them ``::`` is an empty element.
    data_only_layers: bool = False
    #: Data-only layers are refused unless metacopy is on.
    data_only_needs_metacopy: bool = False
    #: ``verity=off|on|require`` exists.
    verity_option: bool = False
    #: ``verity=on|require`` needs metacopy (enabled with it, or a conflict when typed off).
    verity_needs_metacopy: bool = False
    #: ``uuid=`` takes null and auto besides on and off (auto is the default).
    uuid_null_auto: bool = False
    #: ``lowerdir+`` and ``datadir+`` (new mount API only).
    lowerdir_add: bool = False
    #: A mount of data-only layers alone is refused ("at least one non-data lowerdir").
    refuses_datadir_only: bool = False
    #: the ``override_creds``/``nooverride_creds`` option.
    override_creds_option: bool = False
    #: ``redirect_dir`` is kept as an effective mode: a lower-only mount turns ``follow`` into
    #: ``on``, and mountinfo shows the effective mode when it differs from the module default.
    #: Before, mountinfo shows the mode as typed unless it is the default string (``on`` with
    #: the redirect_dir parameter, else ``off``), and ``follow`` stays ``follow``.
    redirect_mode_effective: bool = False
    #: ``fsync=auto|strict|volatile``; mountinfo then shows ``fsync=volatile``, not ``volatile``.
    fsync_option: bool = False
    #: ``uuid=off`` is kept on layers of several filesystems (and on lower-only mounts, observed
    #: on 7.2), where it used to fall back to ``uuid=null``; ``index=on`` then works with it.
    uuid_off_index_relaxed: bool = False
    #: two lower filesystems with one uuid log ``conflicting uuid in non-single lower fs '%pd2'``
    #: (was ``conflicting uuid detected in lower fs '%pd2'``)
    uuid_conflict_non_single: bool = False
    #: ``work/incompat/<name>`` refuses the mount for names starting with a dot too (before,
    #: the clean-up skipped them)
    incompat_dot_names: bool = False

    # --- lookup (namei.c, util.c) ---
    #: Redirect and metacopy refusals are checked before each lower layer and after the loop
    #: (``ovl_check_follow_redirect``), not only when a lower entry is found.
    consistent_follow_checks: bool = False
    #: Metacopy and redirect xattrs are read in every regular layer when data-only layers exist
    #: (even with redirects not followed), and a bottom-layer metacopy with an absolute redirect
    #: reaches the data-only layers with metacopy off.
    lower_data_relaxed: bool = False
    #: Zero-size regular files with ``overlay.whiteout`` are whiteouts; ``overlay.overlay.*``
    #: xattrs are escaped for nested overlays.
    xattr_whiteouts: bool = False
    #: ``overlay.opaque=x`` on a lower directory enables xattr whiteouts in it (the 6.7.0
    #: ``overlay.whiteouts`` marker it replaced in 6.7.y and 6.8 is not modelled).
    opaque_x: bool = False

    @property
    def name(self) -> str:
        """``6.12``: the version the behaviours are those of."""
        return f"{self.version[0]}.{self.version[1]}"

    def summary(self, running: str) -> str:
        """One line: whose rules the prediction follows, and how they were chosen."""
        how = self.chosen_by
        if how in ("release", "release, confirmed by probes"):
            return f"kernel {running}, {self.name} rules"
        if how.startswith("release"):
            return f"kernel {running}, {self.name} rules{how[len('release'):]}"
        return f"kernel {self.name} rules ({how}; running {running})"

    def as_json(self) -> dict:
        return {"profile": self.name, "release": self.release, "chosen_by": self.chosen_by}

    def differences(self, other: KernelProfile) -> list[str]:
        """The behaviour fields that differ from ``other``'s (for messages and tests)."""
        skip = {"version", "chosen_by", "release"}
        return [f.name for f in fields(self)
                if f.name not in skip and getattr(self, f.name) != getattr(other, f.name)]


@dataclass(frozen=True, slots=True)
class Change:
    since: tuple[int, int]
    field: str
    value: object
    commit: str


#: Every behaviour change since 6.1, oldest first: the version it landed in, and its commit.
CHANGES: tuple[Change, ...] = (
    Change((6, 5), "fs_context_parser", True,
           "ovl: port to new mount api (Christian Brauner, Amir Goldstein, 6.5)"),
    Change((6, 5), "redirect_mode_effective", True,
           "ovl: port to new mount api (6.5): redirect_dir parsed into an enum (observed: 6.1 "
           "shows the typed mode, 6.12 the effective one)"),
    Change((6, 5), "data_only_layers", True,
           "ovl: introduce data-only lower layers (Amir Goldstein, 6.5)"),
    Change((6, 5), "data_only_needs_metacopy", True,
           "ovl: introduce data-only lower layers: 'lower data-only dirs require metacopy support'"),
    Change((6, 5), "verity_option", True,
           "ovl: add verity mount option (Alexander Larsson, 6.5)"),
    Change((6, 5), "verity_needs_metacopy", True,
           "ovl: add verity mount option: verity implies metacopy"),
    Change((6, 6), "uuid_null_auto", True,
           "ovl: add 'uuid=auto' and 'uuid=null' (6.6)"),
    Change((6, 7), "xattr_whiteouts", True,
           "ovl: support xattr whiteouts / ovl: add support for escaped overlay.* xattrs (6.7)"),
    Change((6, 7), "opaque_x", True,
           "420332b94119 ovl: mark xwhiteouts directory with overlay.opaque='x' (6.8-rc2, "
           "backported to 6.7.y)"),
    Change((6, 8), "lowerdir_add", True,
           "ovl: add support for appending lowerdirs one by one (lowerdir+, datadir+; 6.8)"),
    Change((6, 15), "refuses_datadir_only", True,
           "ovl: don't allow datadir only (6.15-rc2, stable)"),
    Change((6, 15), "override_creds_option", True,
           "ovl: add override_creds mount option (6.15)"),
    Change((6, 16), "consistent_follow_checks", True,
           "ovl: make redirect/metacopy rejection consistent (6.16)"),
    Change((6, 16), "lower_data_relaxed", True,
           "ovl: relax redirect/metacopy requirements for lower -> data redirect (6.16)"),
    Change((6, 16), "data_only_needs_metacopy", False,
           "ovl: relax redirect/metacopy requirements for lower -> data redirect (6.16)"),
    Change((6, 16), "verity_needs_metacopy", False,
           "ovl: don't require metacopy=on for verity (6.16)"),
    Change((6, 18), "fsync_option", True,
           "ovl: add fsync= mount option; volatile becomes fsync=volatile (6.18)"),
    Change((7, 0), "uuid_off_index_relaxed", True,
           "869056dbbd63 ovl: relax requirement for uuid=off,index=on (7.0)"),
    Change((7, 0), "uuid_conflict_non_single", True,
           "the uuid=off,index=on relaxation series (7.0; observed on 7.2: \"conflicting uuid in "
           "non-single lower fs '/l2'\"; 6.18 still logs \"conflicting uuid detected in lower fs\")"),
    Change((7, 0), "incompat_dot_names", True,
           "observed on 7.2: work/incompat/.hidden refuses the mount (\"overlay with incompat "
           "feature '.hidden' cannot be mounted\"), 6.18 and 6.12 skip it; the commit and the "
           "exact release between 6.19 and 7.2 are not confirmed (assumed 7.0)"),
)

#: Kernels fleets run in 2026, for "will this work on ..." questions: Debian 12 and AL2023's
#: default (6.1), Debian 13, RHEL 10, Flatcar and EKS 1.33-1.35 (6.12), EKS 1.36+ (6.18),
#: Ubuntu 26.04 and Fedora (7.0).
FLEET = ("6.1", "6.12", "6.18", "7.0")

_VERSION = re.compile(r"^\s*(\d+)\.(\d+)")
#: a release as a user types it: X.Y, X.Y.Z, then a suffix after a separator (-rc3, +deb12, ...)
_RELEASE = re.compile(r"^(\d{1,3})\.(\d{1,3})(\.\d{1,5})?([-+~_.][0-9A-Za-z.+~_-]*)?$")


def parse_version(text: str, strict: bool = False) -> tuple[int, int]:
    """``(major, minor)`` of ``6.12``, ``6.12.118+deb12-cloud-amd64`` or ``7.0-rc3``.

    ``strict`` (a version a user typed) refuses what a release string would not hold:
    ``6.12abc``, an empty string, absurd numbers.
    """
    m = _RELEASE.match(text.strip()) if strict else _VERSION.match(text)
    if not m:
        raise UnknownKernel(f"not a kernel version: {text!r} (expected X.Y, e.g. 6.12, or a "
                            "release such as 6.12.118+deb12-amd64)")
    return int(m.group(1)), int(m.group(2))


def profile_for(version: tuple[int, int], *, chosen_by: str = "release",
                release: str = "") -> KernelProfile:
    """The behaviours of kernel ``version``; :class:`UnknownKernel` below :data:`OLDEST`."""
    if version < OLDEST:
        raise UnknownKernel(
            f"kernel {version[0]}.{version[1]} is older than {OLDEST[0]}.{OLDEST[1]}, the oldest "
            "overlayfs ovlinspect models; its predictions would be guesses")
    newest_known = CHANGES[-1].since
    if version > newest_known:
        chosen_by += (f"; newer than any change ovlinspect knows of: "
                      f"{newest_known[0]}.{newest_known[1]}'s rules")
    profile = KernelProfile(version=version, chosen_by=chosen_by, release=release)
    for change in CHANGES:
        if change.since <= version:
            profile = replace(profile, **{change.field: change.value})
    return profile


def profile_for_release(release: str, chosen_by: str = "release") -> KernelProfile:
    """The profile of a kernel release string (``os.uname().release``)."""
    return profile_for(parse_version(release), chosen_by=chosen_by, release=release)


def newest() -> KernelProfile:
    """The newest behaviours known (used for releases that cannot be read)."""
    return profile_for(CHANGES[-1].since, chosen_by="newest known")
