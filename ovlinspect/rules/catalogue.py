"""The diagnostics ovlinspect reports: stable ids, severities, and what to do about each."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Severity(StrEnum):
    """How bad a finding is; compares and prints as its name ("error")."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """0 for the worst: sort by it."""
        return _RANK[self]


_RANK = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}


@dataclass(frozen=True)
class Rule:
    id: str
    severity: Severity
    title: str
    hint: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "severity", Severity(self.severity))


RULES: dict[str, Rule] = {
    r.id: r
    for r in [
        Rule(
            "shadowed-lowerdata",
            "error",
            "a regular layer's file serves the bytes meant for a data-only layer",
            "remove the file from the regular layer, or give the object store a prefix no "
            "regular layer uses (for example /.cfs/...) and rewrite the redirects",
        ),
        Rule(
            "lowerdata-redirect-broken",
            "error",
            "a regular layer's directory on the redirect path turns lookup into EIO",
            "remove or rename the directory in the regular layer, or move the object store "
            "under a prefix no regular layer uses (the /.cfs workaround)",
        ),
        Rule(
            "lowerdata-missing",
            "error",
            "open fails: the redirect target is not a regular file in any data-only layer",
            "add the object to the data-only layer (or fix the redirect xattr)",
        ),
        Rule(
            "metacopy-refused",
            "error",
            "a metacopy file is refused (EPERM) because metacopy is off",
            "mount with metacopy=on, or make the file a full copy",
        ),
        Rule(
            "redirect-refused",
            "error",
            "a redirect is refused (EPERM) because redirects are not followed",
            "mount with redirect_dir=on (or follow), or remove the redirect xattr",
        ),
        Rule(
            "invalid-redirect",
            "error",
            "the redirect xattr is malformed (EINVAL), or leads to '.' or '..' (EACCES)",
            "a redirect is an absolute path without empty, '.' or '..' components, or one "
            "relative name",
        ),
        Rule(
            "metacopy-without-data",
            "error",
            "a metacopy file finds no data below it (EIO)",
            "add the data file to a lower layer, fix the redirect, or drop the metacopy xattr",
        ),
        Rule(
            "metacopy-invalid",
            "error",
            "the metacopy xattr cannot be used (EIO/ERANGE)",
            "rewrite the metacopy xattr: empty, or a 4-byte header (version 0, len) plus digest",
        ),
        Rule(
            "metacopy-ignored",
            "error",
            "a metacopy file whose metacopy xattr this mount ignores: read() returns the "
            "file's own bytes (zeros), not the data",
            "write the overlay xattrs in the namespace the mount reads (user.overlay.* for a "
            "userxattr mount, trusted.overlay.* otherwise), or mount without/with userxattr to "
            "match the layers",
        ),
        Rule(
            "verity-failure",
            "error",
            "fs-verity validation fails at open (EIO)",
            "enable fs-verity on the data file with the digest the metacopy names, or mount "
            "with verity=off",
        ),
        Rule(
            "xattr-namespace-mismatch",
            "warning",
            "overlay xattrs this mount ignores (other namespace or escaped)",
            "write the xattrs in the namespace the mount reads (trusted.overlay. or, with "
            "userxattr, user.overlay.)",
        ),
        Rule(
            "phantom-whiteout",
            "warning",
            "readdir lists an entry that lookup reports as ENOENT",
            "see the message: a whiteout only hides entries in a merged directory, and an "
            "xattr whiteout only in a lower directory marked opaque=x",
        ),
        Rule(
            "metacopy-size-mismatch",
            "warning",
            "stat reports a size different from the bytes read returns",
            "set the metacopy file's size to the data file's size",
        ),
        Rule(
            "shadowing-hazard",
            "warning",
            "a regular layer holds a directory named like a top-level directory of a "
            "data-only layer; a future file there will intercept redirects",
            "give the object store a unique prefix (the /.cfs workaround from the lazy "
            "lowerdata thread)",
        ),
        Rule(
            "inode-alias",
            "warning",
            "two merged paths share one lower inode; the second looked up fails with ESTALE",
            "put a whiteout at the redirect source in the upper layer",
        ),
        Rule(
            "redirect-ignored",
            "info",
            "a redirect xattr on a file that is not a metacopy is ignored",
            "remove the stray redirect xattr",
        ),
        Rule(
            "stale-origin",
            "error",
            "index=on: the file handles recorded in the upper layer or the index no longer "
            "match the layers (ESTALE at mount)",
            "mount with index=off, or the layers the upper was made with; to adopt the new "
            "layers remove the upper root's overlay.origin and the index directory",
        ),
        Rule(
            "incompat-workdir",
            "error",
            "the work directory records an incompatible feature (work/incompat/volatile): "
            "the mount fails with EINVAL",
            "throw away the upper and work directories (a volatile mount may have lost "
            "writes), or delete work/incompat if the upper was synced",
        ),
        Rule(
            "workdir-in-use",
            "error",
            "the upper or work directory is in use by another overlay mount (EBUSY with "
            "index=on, a warning otherwise)",
            "unmount the other overlay, or give each mount its own upper and work directories",
        ),
        Rule(
            "workdir-shared",
            "warning",
            "the upper or work directory is also used by another overlay mount (index=off: "
            "the kernel only warns)",
            "unmount the other overlay, or give each mount its own upper and work directories",
        ),
        Rule(
            "index-entry-invalid",
            "error",
            "the index directory holds an entry that is not a file handle: the mount fails "
            "with EINVAL",
            "remove the entry or the index directory, or mount with index=off",
        ),
        Rule(
            "index-entry-stale",
            "info",
            "the kernel deletes a leftover index entry at mount",
            "nothing to do: the mount cleans it up (a write to the work directory)",
        ),
        Rule(
            "stale-origin-lookup",
            "error",
            "index=on: a copied-up object's overlay.origin names another lower object than "
            "the one found by name (ESTALE for a metacopy; a directory left unmerged with "
            "nfs_export)",
            "restore the lower layer the upper was made on, or mount with index=off (and "
            "nfs_export=off); a metacopy can also be made a full copy",
        ),
        Rule(
            "index-entry-bad",
            "error",
            "index=on: the index entry of a file's origin is a whiteout or of another type: "
            "lookup fails with EIO",
            "delete the work directory's index/ (or that entry) with the overlay unmounted, "
            "or mount with index=off",
        ),
        Rule(
            "index-served",
            "info",
            "index=on: a lower hard link whose alias was copied up is served from the index "
            "(the copied-up bytes), not from the lower file",
            "nothing to fix: this is how index=on keeps hard links together; with index=off "
            "the lower file shows again",
        ),
        Rule(
            "workdir-leftovers",
            "info",
            "the work directory holds leftovers of interrupted operations: the kernel deletes "
            "them at mount",
            "nothing to do: the next mount cleans them up",
        ),
        Rule(
            "index-fallback",
            "warning",
            "index=on is asked for but the kernel turns it off at mount",
            "see the message: layers without file handles, or two lower filesystems with the "
            "same UUID (use distinct UUIDs, or mount with index=off to say so)",
        ),
        Rule(
            "not-modelled",
            "info",
            "the mount uses a feature whose checks ovlinspect does not model",
            "treat predictions for copied-up files with care; compare with explain --observe",
        ),
        Rule(
            "kernel-bug",
            "error",
            "the kernel has a known overlayfs regression that this stack meets",
            "upgrade to the fixed release the message names (or apply the workaround it names); "
            "a distribution kernel may carry the fix under an older version number",
        ),
        Rule(
            "mount-refused",
            "error",
            "the kernel refuses to mount this stack",
            "fix the options or layers named in the message",
        ),
        Rule(
            "inode-collision",
            "warning",
            "two merged paths report the same st_ino and st_dev but are different files",
            "with the overlay unmounted, remove the overlay.origin xattr from the upper file "
            "that is not the copy-up of that origin (it then shows its own inode number); "
            "until then tar, rsync -H, du and cp -a treat the two as hard links of one file",
        ),
        Rule(
            "fsck-orphan-whiteout",
            "info",
            "a whiteout hides nothing (fsck.overlay would remove it)",
            "with the overlay unmounted, remove the whiteout from its layer (lookup and "
            "readdir do not change)",
        ),
        Rule(
            "fsck-redirect-dangling",
            "warning",
            "a redirected directory's origin is in no lower layer any more: its lower "
            "content is gone",
            "restore the lower directory the redirect names, or (accepting the loss) remove "
            "the overlay.redirect xattr and mark the directory opaque",
        ),
        Rule(
            "fsck-redirect-duplicate",
            "warning",
            "a redirected directory's origin is still visible under its old name: one lower "
            "directory is merged into two places",
            "with the overlay unmounted, put back the whiteout at the old name in the layer "
            "that holds the redirect (mknod NAME c 0 0)",
        ),
        Rule(
            "fsck-impure-missing",
            "warning",
            "an upper directory lacks overlay.impure: readdir's d_ino differs from st_ino",
            "with the overlay unmounted, set trusted.overlay.impure=y (user.overlay.impure "
            "with userxattr) on the upper directory",
        ),
        Rule(
            "fsck-impure-stale",
            "info",
            "an upper directory is marked impure without copied-up entries",
            "remove the overlay.impure xattr (only readdir speed changes)",
        ),
        Rule(
            "fsck-origin-stale",
            "info",
            "an upper file's overlay.origin names no lower object any more (ignored)",
            "remove the overlay.origin xattr, or mount the lower layer it was made on",
        ),
        Rule(
            "fsck-index-stale",
            "info",
            "an index entry's origin is gone: the next index=on mount deletes it",
            "nothing to do (the kernel cleans it up at mount), or remove the entry from "
            "work/index yourself",
        ),
    ]
}


@dataclass
class Finding:
    rule: str
    path: bytes
    message: str
    layers: list[int] = field(default_factory=list)

    @property
    def severity(self) -> Severity:
        return RULES[self.rule].severity

    @property
    def hint(self) -> str:
        return RULES[self.rule].hint

    def as_json(self) -> dict:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
            "path": self.path.decode("utf-8", "surrogateescape"),
            "layers": list(self.layers),
            "hint": self.hint,
        }
