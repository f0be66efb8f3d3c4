"""Known kernel regressions that change what users of an overlay see.

:mod:`ovlinspect.kernel.profile` says what a kernel version *means* to do; this table says
where released kernels did something else by mistake.  Each :class:`KernelBug` has the
releases it affects (the first bad release, and the first fixed release of every line that
got the fix, stable sublevels included), the commits that introduced and fixed it, what the
user sees, and a predicate on the stack: a bug is reported only when the kernel is in range
*and* the stack has what triggers it.

Releases are compared exactly: ``6.19-rc7`` < ``6.19-rc8`` < ``6.19`` (= ``6.19.0``) <
``6.19.1``.  Distribution release strings keep their upstream version in front
(``6.12.118+deb12-cloud-amd64``, ``7.0.3-200.fc44.x86_64``); where the sublevel is an ABI
number instead (Debian 12's ``6.1.0-28-amd64``, Ubuntu's ``7.0.0-16-generic``, RHEL's
``6.12.0-55.el10``) the sublevel is unknown and the verdict is "possibly".  Distribution
kernels also backport fixes, so every finding names the fix commit to look for.

Left out on purpose: the 6.19 credential regression ("ovl: pass original credentials...",
Brauner, 2025-12-05) passed the mounter's credentials to LSM hooks when *creating* files;
a read-only inspection creates nothing, and the lookup, readdir and open of existing files
are unchanged by it, so no stack ovlinspect can read meets it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from ..model.layers import Layer, Node, Path, iter_tree
from ..model.xattrs import safe
from ..rules.catalogue import Finding

__all__ = [
    "BUGS",
    "FUSE_SUPER_MAGIC",
    "OVERLAYFS_SUPER_MAGIC",
    "KernelBug",
    "Release",
    "bug_findings",
    "kernel_release",
    "matching_bugs",
    "parse_release",
]

#: statfs f_type of FUSE filesystems and of overlayfs (include/uapi/linux/magic.h).
FUSE_SUPER_MAGIC = 0x65735546
OVERLAYFS_SUPER_MAGIC = 0x794C7630

#: Entries looked at per layer when searching a trigger (whiteout, metacopy with digest).
SCAN_LIMIT = 200_000


# ---------------------------------------------------------------------------------- releases

_RELEASE = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?(?:-rc(\d+))?(.*?)\s*$")
#: A sublevel 0 followed by a distribution ABI/build number: Debian 12 ``6.1.0-28-amd64``,
#: Ubuntu ``6.8.0-45-generic``, RHEL ``6.12.0-55.el10.x86_64``.
_ABI_SUFFIX = re.compile(r"^-\d+(?:-|\.\d*\.?el\d|\.el\d)")


@dataclass(frozen=True)
class Release:
    """A kernel release, exact to the -rc and the stable sublevel where known."""

    major: int
    minor: int
    #: None: unknown (``7.0`` as typed with --kernel, or a distribution ABI number)
    sublevel: int | None = 0
    #: the -rc number of a mainline release candidate, None for a release
    rc: int | None = None
    #: what follows the upstream version (``-200.fc44.x86_64``, ``+deb12-cloud-amd64``)
    suffix: str = ""
    text: str = ""

    @property
    def line(self) -> tuple[int, int]:
        return self.major, self.minor

    def key(self, sublevel: int | None = None) -> tuple[int, int, int, int]:
        """Sort key: an -rc comes before its release, the release before its sublevels."""
        sub = self.sublevel if sublevel is None else sublevel
        if self.rc is not None:
            return self.major, self.minor, -1, self.rc
        return self.major, self.minor, sub or 0, 0

    @property
    def distro(self) -> bool:
        """A distribution build (it may carry fixes its version number does not show)."""
        return bool(self.suffix)

    def __str__(self) -> str:
        if self.rc is not None:
            return f"{self.major}.{self.minor}-rc{self.rc}"
        if self.sublevel:
            return f"{self.major}.{self.minor}.{self.sublevel}"
        return f"{self.major}.{self.minor}"


def parse_release(text: str) -> Release:
    """``6.19-rc8``, ``6.19.0-rc7``, ``7.0.3``, ``6.12.118+deb12-cloud-amd64``, ``7.0``.

    Raises ValueError for text that does not start with a kernel version.
    """
    m = _RELEASE.match(text)
    if not m:
        raise ValueError(f"not a kernel release: {text!r}")
    major, minor = int(m.group(1)), int(m.group(2))
    sub = int(m.group(3)) if m.group(3) is not None else None
    rc = int(m.group(4)) if m.group(4) is not None else None
    suffix = m.group(5)
    if rc is not None:
        sub = 0
    elif sub == 0 and _ABI_SUFFIX.match(suffix):
        sub = None  # 6.1.0-28-amd64: "0" is not the stable sublevel
    return Release(major, minor, sub, rc, suffix, text.strip())


def kernel_release(engine) -> tuple[str, str]:
    """(release, why) of the kernel whose bugs apply to ``engine``'s prediction: the one
    named with --kernel (or chosen as a what-if), else the running kernel."""
    profile = engine.profile
    if profile.chosen_by in ("--kernel", "what-if"):
        return (profile.release or profile.name), f"asked about with {profile.chosen_by}"
    return engine.kernel, "the running kernel"


# ------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class KernelBug:
    id: str
    title: str
    #: first release with the bug (an -rc where it came with a merge window)
    introduced: str
    introduced_by: str
    #: first fixed release of each line that got the fix (stable sublevels and the mainline rc)
    fixed_in: tuple[str, ...]
    fixed_by: str
    #: what users see
    symptom: str
    #: what to do, besides upgrading
    workaround: str
    sources: tuple[str, ...]
    #: the stack predicate: None when the stack does not meet the bug, else what it has
    trigger: Callable[..., str | None]

    def verdict(self, release: str | Release) -> str:
        """``affected``, ``possibly`` (sublevel unknown), or ``fixed``/``unaffected``."""
        r = release if isinstance(release, Release) else parse_release(release)
        first = parse_release(self.introduced)
        fixes = [parse_release(f) for f in self.fixed_in]

        def bad(sub: int) -> bool:
            k = r.key(sub)
            if k < first.key():
                return False
            for f in fixes:
                if f.line == r.line and k >= f.key():
                    return False
                # a fix in a mainline release (or -rc) is in every later line
                if f.line < r.line and (f.rc is not None or not f.sublevel):
                    return False
            return True

        if r.sublevel is not None:
            return "affected" if bad(r.sublevel) else "unaffected"
        # unknown sublevel: X.Y.0 and the last sublevel before the line's fix
        line_fix = [f.sublevel for f in fixes if f.line == r.line and f.rc is None and f.sublevel]
        if bad(0):
            return "possibly" if line_fix else "affected"
        return "unaffected"

    def fixed_text(self) -> str:
        return ", ".join(self.fixed_in)

    def upgrade_text(self, release: Release) -> str:
        same = [f for f in self.fixed_in if parse_release(f).line == release.line]
        if same:
            return f"upgrade to {same[0]} or later"
        later = [f for f in self.fixed_in if parse_release(f).line > release.line]
        return f"upgrade to {later[0] if later else self.fixed_in[-1]} or later"


# ------------------------------------------------------------------------------- predicates


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _LIBC


_LIBC = None


def statfs_type(path: str) -> int | None:
    """``f_type`` of the filesystem holding ``path`` (statfs(2); the layer path is resolved
    as the kernel resolves it at mount time), or None when it cannot be read."""
    buf = ctypes.create_string_buffer(256)
    try:
        if _libc().statfs(os.fsencode(path), buf) != 0:
            return None
    except (OSError, AttributeError):
        return None
    # struct statfs starts with f_type: a long (__fsword_t) on every 64-bit ABI but s390x
    size = ctypes.sizeof(ctypes.c_long)
    value = int.from_bytes(buf.raw[:size], sys.byteorder,
                           signed=True)
    return value & 0xFFFFFFFF


def layer_fs_type(layer: Layer) -> int | None:
    """The statfs magic of a layer: ``fs_magic`` when set (in-memory layers of a described
    stack), else statfs of its directory."""
    magic = getattr(layer, "fs_magic", None)
    if magic is not None:
        return magic
    if layer.path:
        return statfs_type(layer.path)
    return None


def _scan(layer: Layer, want: Callable[[Node], bool]) -> tuple[Path | None, bool]:
    """The first entry of ``layer`` that ``want`` accepts (bounded), and whether the whole
    layer was looked at."""
    for i, (path, node) in enumerate(iter_tree(layer)):
        if i >= SCAN_LIMIT:
            return None, False
        if want(node):
            return path, True
    return None, True


def _show(path: Path) -> str:
    """A layer path for display, hostile bytes escaped (as the engine's show_path)."""
    return safe(b"/" + b"/".join(path))


def _regular(engine) -> Iterator[int]:
    """Kernel layer numbers readdir merges: the upper layer and the regular lower layers."""
    return iter(([0] if engine.has_upper else []) + list(range(1, engine.nlower + 1)))


def fuse_whiteouts(engine, fs_type: Callable[[Layer], int | None] = layer_fs_type) -> str | None:
    """A layer readdir merges is on FUSE and holds whiteouts (chardev 0/0, or xattr ones)."""
    for li in _regular(engine):
        layer = engine.layer(li)
        if fs_type(layer) != FUSE_SUPER_MAGIC:
            continue
        path, _ = _scan(layer, engine.is_whiteout)
        if path is not None:
            return (f"{engine.label(li)} is on FUSE and holds whiteouts (first: {_show(path)})")
    return None


def verity_digests(engine, fs_type: Callable[[Layer], int | None] = layer_fs_type) -> str | None:
    """verity=on|require and a metacopy file whose metacopy xattr carries a digest."""
    if engine.options.verity == "off" or engine.mount_errno:
        return None
    key = engine.prefix + b"metacopy"

    def with_digest(node: Node) -> bool:
        value = node.xattr(key) if node.is_reg else None
        return value is not None and len(value) > 4 and value[3:4] != b"\x00"

    for li in _regular(engine):
        path, _ = _scan(engine.layer(li), with_digest)
        if path is not None:
            return (f"verity={engine.options.verity} and metacopy files with fs-verity digests "
                    f"(first: {engine.label(li)}:{_show(path)})")
    return None


def nested_overlay(engine, fs_type: Callable[[Layer], int | None] = layer_fs_type) -> str | None:
    """A layer readdir merges is itself on an overlay filesystem (overlay on overlay)."""
    for li in _regular(engine):
        if fs_type(engine.layer(li)) == OVERLAYFS_SUPER_MAGIC:
            return f"{engine.label(li)} is itself on an overlay filesystem (overlay on overlay)"
    return None


BUGS: tuple[KernelBug, ...] = (
    KernelBug(
        id="fuse-dtype-whiteouts",
        title="FUSE lower layers: whiteouts listed as c????????? entries",
        introduced="6.16-rc1",
        introduced_by="c31f91c6af96 fuse: don't allow signals to interrupt getdents copying "
                      "(6.16: FUSE sets a flag in the high bits of d_type)",
        fixed_in=("6.18.9", "6.19-rc8"),
        fixed_by="c644bce62b9c readdir: require opt-in for d_type flags (Amir Goldstein; "
                 "vfs-6.19-rc8.fixes, backported to 6.18.9; 6.16.y and 6.17.y ended without it)",
        symptom="overlay readdir no longer recognises whiteouts on a FUSE layer (it compares "
                "d_type with DT_CHR): deleted files are listed as 'c?????????' entries whose "
                "lstat fails with ENOENT",
        workaround="use a kernel with the fix, or unpack the FUSE layer onto a local filesystem",
        sources=("containerd/stargz-snapshotter#2214",
                 "lore: [PATCH v2] readdir: require opt-in for d_type flags (2026-01-08)",
                 "Linux 6.18.9 announcement (fs/readdir.c)"),
        trigger=fuse_whiteouts,
    ),
    KernelBug(
        id="verity-not-loaded",
        title="verity: 'lower file ... has no fs-verity digest' on 7.0",
        introduced="7.0-rc1",
        introduced_by="f77f281b6118 fsverity: use a hashtable to find the fsverity_info "
                      "(7.0: fsverity_active() no longer means the info is loaded, so "
                      "ovl_ensure_verity_loaded() skips loading it)",
        fixed_in=("7.0.7", "7.1-rc3"),
        fixed_by="0c8c88b8eb82 ovl: fix verity lazy-load guard broken by fsverity_active() "
                 "semantic change (Colin Walters; 7.1-rc3, backported to 7.0.7)",
        symptom="open of a metacopy file whose metacopy names an fs-verity digest fails with "
                "EIO and \"overlayfs: lower file '...' has no fs-verity digest\" when its data "
                "file was not opened before (composefs/bootc systems fail to boot)",
        workaround="use a kernel with the fix (6.19.y is not affected); verity=off avoids the "
                   "failure but drops the integrity check",
        sources=("bootc-dev/bootc#2174", "projectbluefin/dakota#435",
                 "stable review [PATCH 7.0 123/307] (2026-05-12)"),
        trigger=verity_digests,
    ),
    KernelBug(
        id="nested-readdir-errno",
        title="overlay on overlay: readdir fails with a bogus error",
        introduced="6.19-rc1",
        introduced_by="d25e4b739f83 ovl: refactor ovl_iterate() and port to cred guard "
                      "(6.19: ovl_iterate_merged() keeps PTR_ERR() of its cache pointer in err)",
        fixed_in=("7.0.13", "7.1-rc4"),
        fixed_by="1711b6ed6953 ovl: keep err zero after successful ovl_cache_get() (Nirmoy Das; "
                 "7.1-rc4, backported to 7.0.13; 6.19.y ended without it; CVE-2026-53174)",
        symptom="readdir of a merged directory may return the truncated cache pointer as an "
                "error: an inner overlay's readdir hands it to the outer one, so getdents on the "
                "outer overlay fails with a meaningless errno (rsync and installers abort)",
        workaround="use a kernel with the fix, or give the outer overlay a lower layer that is "
                   "not itself an overlay (copy or unpack the inner tree)",
        sources=("syzbot a16fb0cce329a320661c",
                 "lore: [PATCH v2] ovl: keep err zero after successful ovl_cache_get() "
                 "(2026-05-14)", "NVIDIA/NV-Kernels#423", "OSV CVE-2026-53174 (>=6.19.0 <7.0.13)"),
        trigger=nested_overlay,
    ),
)


def matching_bugs(engine, release: str | None = None,
                  fs_type: Callable[[Layer], int | None] = layer_fs_type
                  ) -> list[tuple[KernelBug, str, Release, str]]:
    """(bug, verdict, release, what the stack has) for every bug this kernel and stack meet."""
    if release is None:
        release, _ = kernel_release(engine)
    try:
        rel = parse_release(release)
    except ValueError:
        return []
    out = []
    for bug in BUGS:
        verdict = bug.verdict(rel)
        if verdict == "unaffected":
            continue
        has = bug.trigger(engine, fs_type)
        if has:
            out.append((bug, verdict, rel, has))
    return out


def describe(bug: KernelBug, verdict: str, rel: Release, has: str, why: str = "") -> str:
    """The finding's message: the bug, the range, what the stack has, and the fix."""
    who = f"kernel {rel.text or rel}" + (f" ({why})" if why else "")
    if verdict == "possibly":
        head = (f"{who} may have the overlayfs regression '{bug.title}' (its stable sublevel "
                "cannot be read from the release string)")
    else:
        head = f"{who} has the overlayfs regression '{bug.title}'"
    distro = (f"; a distribution kernel may carry the fix: look for '{bug.fixed_by.split(' (')[0]}'"
              " in its changelog" if rel.distro else "")
    return (f"{head}: {bug.symptom}. This stack meets it: {has}. Range: from {bug.introduced} "
            f"({bug.introduced_by}) until {bug.fixed_text()} ({bug.fixed_by}). "
            f"Fix: {bug.upgrade_text(rel)}; {bug.workaround}{distro}")


def bug_findings(engine, fs_type: Callable[[Layer], int | None] = layer_fs_type) -> list:
    """``kernel-bug`` findings for :meth:`Engine.stack_findings`."""

    release, why = kernel_release(engine)
    return [Finding("kernel-bug", b"/", describe(bug, verdict, rel, has, why))
            for bug, verdict, rel, has in matching_bugs(engine, release, fs_type)]


def observed_bug(engine, diffs: Iterable[tuple[str, object, object]], ob) -> str | None:
    """The evidence line when a disagreement between prediction and observation fits a known
    bug of the *running* kernel (observations are always made on it)."""
    names = {d[0] for d in diffs}
    for bug, verdict, rel, has in matching_bugs(engine, engine.kernel):
        fits = ((bug.id == "fuse-dtype-whiteouts" and "entries" in names)
                or (bug.id == "verity-not-loaded" and "EIO" in (ob.open_errno, ob.read_errno))
                or (bug.id == "nested-readdir-errno" and "readdir" in names))
        if fits:
            may = "may be" if verdict == "possibly" else "is"
            return (f"evidence: a known kernel bug {may} the cause: '{bug.title}' "
                    f"(kernel {rel.text}; from {bug.introduced} until {bug.fixed_text()}; "
                    f"fix {bug.fixed_by.split(' (')[0]}); this stack meets it: {has}; "
                    f"{bug.upgrade_text(rel)}")
    return None
