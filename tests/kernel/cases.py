"""Shorthands for writing kernel-test cases (stack-file entries)."""

from __future__ import annotations

from harness import E

TO = "trusted.overlay."
UO = "user.overlay."


def f(path: str, **kw) -> dict:
    """A regular file (content defaults to "<layer>:<path>\\n")."""
    return E(path, "file", **kw)


def d(path: str, **kw) -> dict:
    return E(path, "dir", **kw)


def wh(path: str) -> dict:
    """A 0/0 character-device whiteout."""
    return E(path, "whiteout")


def xwh(path: str, prefix: str = TO) -> dict:
    """An xattr whiteout: a zero-size regular file carrying <prefix>whiteout."""
    return E(path, "file", size=0, xattrs={prefix + "whiteout": ""})


def sl(path: str, target: str) -> dict:
    return E(path, "symlink", target=target)


def fifo(path: str) -> dict:
    return E(path, "fifo")


def opq(path: str, value: str = "y", prefix: str = TO, **xattrs) -> dict:
    return E(path, "dir", xattrs={prefix + "opaque": value, **xattrs})


def rdir(path: str, redirect: str, prefix: str = TO) -> dict:
    """A directory with a redirect xattr."""
    return E(path, "dir", xattrs={prefix + "redirect": redirect})


def mc(path: str, redirect: str | None = None, size: int = 18, metacopy: str = "", prefix: str = TO,
       metacopy_hex: str | None = None) -> dict:
    """A metacopy file (sparse, ``size`` bytes) with an optional redirect."""
    x = {}
    xh = {}
    if metacopy_hex is not None:
        xh[prefix + "metacopy"] = metacopy_hex
    else:
        x[prefix + "metacopy"] = metacopy
    if redirect is not None:
        x[prefix + "redirect"] = redirect
    e = E(path, "file", size=size, xattrs=x)
    if xh:
        e["xattrs_hex"] = xh
    return e
