"""Every row of the experiment tables (overlayfs-semantics.md section 7), plus classic
xfstests-style scenarios rebuilt in our own words, checked two ways:

1. the row's own claim (EIO at lstat of /foo, C's bytes, ...) against the running kernel, so
   the reference table itself stays true;
2. the engine's prediction for every path of the stack against what the kernel shows.
"""

from __future__ import annotations

import os

import pytest

from cases import TO, UO, d, f, fifo, mc, opq, rdir, sl, wh, xwh
from harness import (
    Case,
    PredictionUnavailable,
    case_toml,
    check_expectations,
    compare,
    format_disagreements,
    predict_live,
    prediction_disagreements,
    refresh_stale,
    settle_for_live,
    run_kernel,
)

from ovlinspect.kernel.profile import profile_for_release

pytestmark = pytest.mark.kernel
#: the kernel running the tests (the host, or a VM): its behaviours are the ones predicted
RUNNING = profile_for_release(os.uname().release)

ON = "metacopy=on"
SHA256_36 = "00240001" + "ab" * 32  # version 0, len 36, flags 0, algo 1 (SHA-256), 32 bytes

# The base of 7.1 / 7.2: A/foo is a metacopy redirected to /1e/abcdef, C holds the data.
A_FOO = [mc("/foo", "/1e/abcdef")]
C_DATA = [f("/1e/abcdef", size=18)]


def ok_data(src: str, size: int = 18) -> dict:
    return {"errno": None, "type": "file", "size": size, "open_errno": None, "data_from": src}


def lookup_err(err: str) -> dict:
    return {"errno": err}


def open_err(err: str, size: int = 18) -> dict:
    return {"errno": None, "size": size, "open_errno": err}


CASES: list[Case] = []


def case(name: str, layers, options: str = "", expect=None, mount_errno=None, paths=None, note=""):
    CASES.append(Case(name, layers, options, expect or {}, mount_errno, paths, note))


# --------------------------------------------------------------------------- table 7.1

SHADOW_ROWS = [
    # (name, B entries, C entries, metacopy=on expectation for /foo)
    ("B-empty", [], C_DATA, ok_data("C:/1e/abcdef")),
    ("B-1e-file", [f("/1e")], C_DATA, ok_data("C:/1e/abcdef")),
    ("B-abcdef-file-19", [f("/1e/abcdef", size=19)], C_DATA, ok_data("B:/1e/abcdef")),
    ("B-abcdef-empty-file", [f("/1e/abcdef", size=0)], C_DATA, {**ok_data("B:/1e/abcdef"), "data": b""}),
    ("B-abcdef-dir", [d("/1e/abcdef")], C_DATA, lookup_err("EIO")),
    ("B-1e-dir-without-abcdef", [d("/1e")], C_DATA, lookup_err("EIO")),
    ("B-abcdef-whiteout", [wh("/1e/abcdef")], C_DATA, lookup_err("EIO")),
    ("B-abcdef-xattr-whiteout", [xwh("/1e/abcdef")], C_DATA, lookup_err("EIO")),
    ("B-abcdef-symlink", [sl("/1e/abcdef", "elsewhere")], C_DATA, lookup_err("EIO")),
    ("B-abcdef-metacopy", [mc("/1e/abcdef")], C_DATA, lookup_err("EIO")),
    ("B-1e-opaque-empty", [opq("/1e")], C_DATA, ok_data("C:/1e/abcdef")),
    ("B-1e-opaque-with-abcdef", [opq("/1e"), f("/1e/abcdef")], C_DATA, ok_data("B:/1e/abcdef")),
    ("B-1e-whiteout", [wh("/1e")], C_DATA, ok_data("C:/1e/abcdef")),
    ("B-1e-symlink-to-dir", [sl("/1e", "d"), d("/d")], C_DATA, ok_data("C:/1e/abcdef")),
    ("B-1e-redirect-zz", [rdir("/1e", "/zz"), f("/zz/abcdef")], C_DATA, open_err("ENOENT")),
    ("C-lacks-target", [], [f("/other")], open_err("ENOENT")),
    ("C-target-dir", [], [d("/1e/abcdef")], open_err("ENOENT")),
    ("C-target-symlink", [], [sl("/1e/abcdef", "x"), f("/1e/x")], open_err("ENOENT")),
    ("C-1e-symlink-to-dir", [], [sl("/1e", "d"), f("/d/abcdef")], open_err("ELOOP")),
]

for _name, _b, _c, _exp in SHADOW_ROWS:
    _layers = [("lower", "A", A_FOO), ("lower", "B", _b), ("data", "C", _c)]
    case(f"7.1-{_name}-metacopy=on", _layers, ON, {"/foo": _exp})
    case(f"7.1-{_name}-defaults", _layers, "", {"/foo": lookup_err("EPERM")})


# --------------------------------------------------------------------------- table 7.2

ABC = [("lower", "A", A_FOO), ("lower", "B", []), ("data", "C", C_DATA)]
for _o in ("redirect_dir=off", "redirect_dir=follow", "redirect_dir=on"):
    case(f"7.2-ABC-metacopy=on,{_o}", ABC, f"{ON},{_o}", {"/foo": ok_data("C:/1e/abcdef")})
case("7.2-ABC-metacopy=on,redirect_dir=nofollow", ABC, f"{ON},redirect_dir=nofollow", mount_errno="EINVAL")
for _o in ("redirect_dir=follow", "redirect_dir=nofollow", "metacopy=off"):
    case(f"7.2-ABC-{_o}", ABC, _o, {"/foo": lookup_err("EPERM")})
case("7.2-ABC-metacopy=on,userxattr", ABC, f"{ON},userxattr", mount_errno="EINVAL")

_rel = [("lower", "A", [mc("/foo", "abcdef")])]
case("7.2-ABC-relative-redirect-B-lacks-it", _rel + [("lower", "B", []), ("data", "C", [f("/abcdef")])], ON,
     {"/foo": lookup_err("EIO")})
case("7.2-ABC-relative-redirect-B-has-it", _rel + [("lower", "B", [f("/abcdef")]), ("data", "C", [f("/abcdef")])],
     ON, {"/foo": ok_data("B:/abcdef")})
case("7.2-ABC-relative-redirect-defaults", _rel + [("lower", "B", [f("/abcdef")]), ("data", "C", [f("/abcdef")])],
     "", {"/foo": lookup_err("EPERM")})

AC = [("lower", "A", A_FOO), ("data", "C", C_DATA)]
for _o in ("", "metacopy=off", "redirect_dir=nofollow", "redirect_dir=off", "redirect_dir=follow"):
    case(f"7.2-AC-{_o or 'defaults'}", AC, _o, {"/foo": ok_data("C:/1e/abcdef")})
case("7.2-ABC-metacopy-in-bottom-regular-B-defaults",
     [("lower", "A", []), ("lower", "B", A_FOO), ("data", "C", C_DATA)], "", {"/foo": ok_data("C:/1e/abcdef")})
case("7.2-ABDC-metacopy=on", [("lower", "A", A_FOO), ("lower", "B", []), ("lower", "D", []), ("data", "C", C_DATA)],
     ON, {"/foo": ok_data("C:/1e/abcdef")})
for _o, _err in ((ON, "EIO"), ("", "EPERM")):
    case(f"7.2-AC-relative-redirect-{_o or 'defaults'}",
         [("lower", "A", [mc("/foo", "abcdef")]), ("data", "C", [f("/abcdef")])], _o, {"/foo": lookup_err(_err)})
    case(f"7.2-AC-no-redirect-{_o or 'defaults'}",
         [("lower", "A", [mc("/foo")]), ("data", "C", [f("/foo")])], _o, {"/foo": lookup_err(_err)})
for _r in ("1e/abcdef", "//1e", "/1e/abcdef/"):
    case(f"7.2-AC-invalid-redirect-{_r}", [("lower", "A", [mc("/foo", _r)]), ("data", "C", C_DATA)], "",
         {"/foo": lookup_err("EINVAL")})
case("7.2-AC-redirect-escaping-layer", [("lower", "A", [mc("/foo", "/../x")]), ("data", "C", C_DATA)], "",
     {"/foo": open_err("EXDEV")})
case("7.2-AC-metacopy-2-bytes", [("lower", "A", [mc("/foo", "/1e/abcdef", metacopy_hex="0000")]),
                                 ("data", "C", C_DATA)], "", {"/foo": lookup_err("EIO")})
case("7.2-AC-metacopy-header-version-7", [("lower", "A", [mc("/foo", "/1e/abcdef", metacopy_hex="07040000")]),
                                          ("data", "C", C_DATA)], "", {"/foo": ok_data("C:/1e/abcdef")})
_verity = [("lower", "A", [mc("/foo", "/1e/abcdef", metacopy_hex=SHA256_36)]), ("data", "C", C_DATA)]
case("7.2-AC-verity=on-digest-no-fsverity", _verity, "verity=on", {"/foo": open_err("EIO")})
case("7.2-AC-verity=off-digest", _verity, "verity=off", {"/foo": ok_data("C:/1e/abcdef")})
case("7.2-AC-verity=require-empty-xattr", AC, "verity=require", {"/foo": open_err("EIO")})
for _size in (100, 5):
    case(f"7.2-AC-st_size-{_size}", [("lower", "A", [mc("/foo", "/1e/abcdef", size=_size)]), ("data", "C", C_DATA)],
         "", {"/foo": ok_data("C:/1e/abcdef", size=_size)})
case("7.2-AC-redirect-without-metacopy",
     [("lower", "A", [f("/foo", size=18, xattrs={TO + "redirect": "/1e/abcdef"})]), ("data", "C", C_DATA)], "",
     {"/foo": ok_data("A:/foo")})
_user = [("lower", "A", [mc("/foo", "/1e/abcdef", prefix=UO)]), ("data", "C", C_DATA)]
case("7.2-AC-user.overlay-without-userxattr", _user, "", {"/foo": ok_data("A:/foo")})
case("7.2-AC-user.overlay-with-userxattr", _user, "userxattr", {"/foo": ok_data("C:/1e/abcdef")})
case("7.2-AC-trusted-with-userxattr", AC, "userxattr", {"/foo": ok_data("A:/foo")})
case("7.2-AC-escaped-trusted.overlay.overlay",
     [("lower", "A", [mc("/foo", "/1e/abcdef", prefix=TO + "overlay.")]), ("data", "C", C_DATA)], "",
     {"/foo": ok_data("A:/foo")})
case("7.2-ACD-target-only-in-D", [("lower", "A", A_FOO), ("data", "C", []), ("data", "D", C_DATA)], "",
     {"/foo": ok_data("D:/1e/abcdef")})
case("7.2-ACD-C-dir-D-file", [("lower", "A", A_FOO), ("data", "C", [d("/1e/abcdef")]), ("data", "D", C_DATA)], "",
     {"/foo": ok_data("D:/1e/abcdef")})
case("7.2-ACD-C-whiteout-D-file", [("lower", "A", A_FOO), ("data", "C", [wh("/1e/abcdef")]), ("data", "D", C_DATA)],
     "", {"/foo": ok_data("D:/1e/abcdef")})
case("7.2-ACD-target-in-both", [("lower", "A", A_FOO), ("data", "C", C_DATA), ("data", "D", C_DATA)], "",
     {"/foo": ok_data("C:/1e/abcdef")})
_ab = [("lower", "A", [mc("/foo")]), ("lower", "B", [f("/foo")])]
case("7.2-AB-metacopy-over-B-foo-metacopy=on", _ab, ON, {"/foo": ok_data("B:/foo")})
case("7.2-AB-metacopy-over-B-foo-defaults", _ab, "", {"/foo": lookup_err("EPERM")})
case("7.2-AB-metacopy-B-lacks-foo", [("lower", "A", [mc("/foo")]), ("lower", "B", [f("/bar")])], ON,
     {"/foo": lookup_err("EIO")})
_stray = [("lower", "A", [f("/a")]), ("lower", "B", [mc("/foo")])]
case("7.2-AB-stray-metacopy-lowest-defaults", _stray, "", {"/foo": lookup_err("EPERM")})
case("7.2-AB-stray-metacopy-lowest-metacopy=on", _stray, ON, {"/foo": lookup_err("EIO")})
case("7.2-upper-metacopy-into-data-layer", [("upper", "U", A_FOO), ("lower", "A", []), ("data", "C", C_DATA)], ON,
     {"/foo": lookup_err("EIO")})
case("7.2-upper-metacopy-into-regular-lower",
     [("upper", "U", A_FOO), ("lower", "A", [f("/1e/abcdef", size=18)]), ("data", "C", [f("/c")])], ON,
     {"/foo": ok_data("A:/1e/abcdef")})
case("7.2-redirect-on-plain-file-ignored",
     [("lower", "A", [f("/foo", xattrs={TO + "redirect": "/1e/abcdef"})]), ("data", "C", C_DATA)], "",
     {"/foo": ok_data("A:/foo", size=len("A:/foo\n"))})


# --------------------------------------------------------------------------- table 7.3

case("7.3-root-listing-ABC",
     [("lower", "A", [wh("/gone"), f("/a_only")]), ("lower", "B", [f("/b_only")]),
      ("data", "C", [f("/c_only"), f("/1e/abcdef")])], "",
     {"/": {"entries": ["a_only", "b_only"]}, "/gone": lookup_err("ENOENT"), "/c_only": lookup_err("ENOENT"),
      "/1e": lookup_err("ENOENT")})
case("7.3-non-merged-dir-phantom-whiteout", [("lower", "A", [f("/solo/f"), wh("/solo/wh")]), ("lower", "B", [f("/b")])],
     "", {"/solo": {"entries": ["f", "wh"]}, "/solo/wh": lookup_err("ENOENT")})
case("7.3-merged-dir-whiteout-hidden", [("lower", "A", [f("/solo/f"), wh("/solo/wh")]), ("lower", "B", [d("/solo")])],
     "", {"/solo": {"entries": ["f"]}, "/solo/wh": lookup_err("ENOENT")})
case("7.3-xattr-whiteout-merged-no-opaque-x", [("lower", "A", [xwh("/m/xw")]), ("lower", "B", [f("/m/b")])], "",
     {"/m": {"entries": ["b", "xw"]}, "/m/xw": lookup_err("ENOENT")})
case("7.3-xattr-whiteout-merged-opaque-x", [("lower", "A", [opq("/m", "x"), xwh("/m/xw")]),
                                            ("lower", "B", [f("/m/b"), f("/m/xw")])], "",
     {"/m": {"entries": ["b"]}, "/m/xw": lookup_err("ENOENT")})
case("7.3-xattr-whiteout-opaque-y", [("lower", "A", [opq("/m", "y"), xwh("/m/xw")]), ("lower", "B", [f("/m/b")])], "",
     {"/m": {"entries": ["xw"]}, "/m/xw": lookup_err("ENOENT")})
case("7.3-xattr-whiteout-upper-opaque-x", [("upper", "U", [opq("/m", "x"), xwh("/m/xw")]), ("lower", "A", [f("/m/a")])],
     "", {"/m": {"entries": ["a", "xw"]}, "/m/xw": lookup_err("ENOENT")})
case("7.3-opaque-y-dir", [("lower", "A", [opq("/op"), f("/op/a")]), ("lower", "B", [f("/op/b")])], "",
     {"/op": {"entries": ["a"]}})
case("7.3-opaque-z-ignored", [("lower", "A", [opq("/op", "z"), f("/op/a")]), ("lower", "B", [f("/op/b")])], "",
     {"/op": {"entries": ["a", "b"]}})
case("7.3-dir-file-dir", [("lower", "A", [f("/x/a")]), ("lower", "B", [f("/x")]), ("lower", "D", [f("/x/d")])], "",
     {"/x": {"entries": ["a"]}})
case("7.3-file-over-dir", [("lower", "A", [f("/x")]), ("lower", "B", [f("/x/b")])], "",
     {"/x": ok_data("A:/x", size=len("A:/x\n"))})
case("7.3-dir-whiteout-dir", [("lower", "A", [f("/x/a")]), ("lower", "B", [wh("/x")]), ("lower", "D", [f("/x/d")])],
     "", {"/x": {"entries": ["a"]}})
case("7.3-dir-opaque-dir", [("lower", "A", [f("/x/a")]), ("lower", "B", [opq("/x"), f("/x/b")]),
                            ("lower", "D", [f("/x/d")])], "", {"/x": {"entries": ["a", "b"]}})
_redir = [("lower", "A", [rdir("/newdir", "/old/dir"), f("/newdir/a"), rdir("/newdir2", "olddir2")]),
          ("lower", "B", [f("/old/dir/b"), f("/olddir2/b2")])]
for _o in ("", "redirect_dir=follow", "redirect_dir=off"):
    case(f"7.3-dir-redirects-{_o or 'defaults'}", _redir, _o,
         {"/newdir": {"entries": ["a", "b"]}, "/newdir2": {"entries": ["b2"]},
          "/": {"entries": ["newdir", "newdir2", "old", "olddir2"]}})
case("7.3-dir-redirects-nofollow", _redir, "redirect_dir=nofollow",
     {"/newdir": lookup_err("EPERM"), "/newdir2": lookup_err("EPERM")})
case("7.3-lower-root-opaque-y", [("lower", "A", [opq("/"), f("/a")]), ("lower", "B", [f("/b")])], "",
     {"/": {"entries": ["a", "b"]}})
case("7.3-lower-root-opaque-x", [("lower", "A", [opq("/", "x"), xwh("/xw"), f("/a")]), ("lower", "B", [f("/b")])], "",
     {"/": {"entries": ["a", "b"]}, "/xw": lookup_err("ENOENT")})


# --------------------------------------------------------------------------- table 7.5
# Inode aliasing: the answer for /foo depends on access order; predictions are the fresh-mount
# answer with /foo looked up first.

_alias = [("upper", "U", [mc("/foo", "/bar")]), ("lower", "A", [f("/bar", size=18)]), ("lower", "B", [])]
case("7.5-alias-foo-first", _alias, ON, {"/foo": ok_data("A:/bar"), "/bar": ok_data("A:/bar")},
     paths=["/", "/foo", "/bar"])
case("7.5-alias-bar-first", _alias, ON, {"/bar": ok_data("A:/bar"), "/foo": lookup_err("ESTALE")},
     paths=["/", "/bar", "/foo"], note="fresh")


# --------------------------------------------------------------- xfstests-style scenarios

# 011: private overlay xattrs are not visible through the merged view.
case("xfs011-private-xattrs-hidden",
     [("lower", "A", [d("/d", xattrs={TO + "private": "1", "user.visible": "1"}),
                      f("/d/f", xattrs={TO + "private": "1", "user.visible": "1"})]),
      ("lower", "B", [f("/d/g")])], "",
     {"/d": {"xattrs": ["user.visible"]}, "/d/f": {"xattrs": ["user.visible"]}})
case("xfs011-private-xattrs-hidden-upper",
     [("upper", "U", [d("/d", xattrs={TO + "private": "1", "user.visible": "1"}),
                      f("/d/f", xattrs={TO + "private": "1", "user.visible": "1"})]),
      ("lower", "A", [f("/d/g")])], "",
     {"/d": {"xattrs": ["user.visible"], "entries": ["f", "g"]}, "/d/f": {"xattrs": ["user.visible"]}})
# 014: opaqueness belongs to one layer: it hides the layers below it, never the layers above.
case("xfs014-opaque-in-upper-hides-lowers",
     [("upper", "U", [opq("/d"), f("/d/u")]), ("lower", "A", [f("/d/a")]), ("lower", "B", [f("/d/b")])], "",
     {"/d": {"entries": ["u"]}})
case("xfs014-opaque-in-middle-keeps-upper",
     [("upper", "U", [f("/d/u")]), ("lower", "A", [opq("/d"), f("/d/a")]), ("lower", "B", [f("/d/b")])], "",
     {"/d": {"entries": ["a", "u"]}})
# 031: whiteouts over nothing are never listed in a merged directory.
case("xfs031-whiteouts-over-nothing",
     [("upper", "U", [wh("/d/w1"), wh("/w2"), f("/d/u")]), ("lower", "A", [wh("/d/w3"), d("/e"), wh("/e/w4")]),
      ("lower", "B", [d("/d"), d("/e")])], "",
     {"/d": {"entries": ["u"]}, "/e": {"entries": []}, "/": {"entries": ["d", "e"]}, "/d/w1": lookup_err("ENOENT")})
# 057: an absolute redirect below an opaque ancestor still reaches the lower layers.
case("xfs057-absolute-redirect-through-opaque-lower",
     [("lower", "A", [opq("/a"), rdir("/a/b", "/c"), f("/a/b/x")]), ("lower", "B", [f("/c/y"), f("/a/z")])], "",
     {"/a": {"entries": ["b"]}, "/a/b": {"entries": ["x", "y"]}})
case("xfs057-absolute-redirect-through-opaque-upper",
     [("upper", "U", [opq("/a"), rdir("/a/b", "/c"), f("/a/b/x")]), ("lower", "A", [f("/c/y"), f("/a/z")]),
      ("lower", "B", [])], "redirect_dir=on",
     {"/a": {"entries": ["b"]}, "/a/b": {"entries": ["x", "y"]}},
     paths=["/", "/a", "/a/b", "/a/b/x", "/a/b/y", "/a/z", "/c", "/c/y"],
     note="/c is still visible under its own name: looked up first, it aliases /a/b (ESTALE)")
case("xfs057-absolute-redirect-through-opaque-upper-source-whited-out",
     [("upper", "U", [opq("/a"), rdir("/a/b", "/c"), f("/a/b/x"), wh("/c")]), ("lower", "A", [f("/c/y"), f("/a/z")]),
      ("lower", "B", [])], "redirect_dir=on",
     {"/a": {"entries": ["b"]}, "/a/b": {"entries": ["x", "y"]}, "/c": lookup_err("ENOENT"), "/": {"entries": ["a"]}})
case("alias-redirected-dir-source-visible-looked-up-first",
     [("upper", "U", [rdir("/new", "/old"), f("/new/u")]), ("lower", "A", [f("/old/a")]), ("lower", "B", [])], "",
     {"/old": {"entries": ["a"]}, "/new": lookup_err("ESTALE")}, paths=["/", "/old", "/new", "/new/u", "/old/a"],
     note="fresh")
# 060: metacopy with relative and absolute redirects, and metacopy in a middle layer.
case("xfs060-relative-redirect",
     [("upper", "U", [mc("/d/foo", "bar")]), ("lower", "A", [f("/d/bar", size=18)]), ("lower", "B", [])], ON,
     {"/d/foo": ok_data("A:/d/bar")}, paths=["/", "/d", "/d/foo", "/d/bar"])
case("xfs060-absolute-redirect",
     [("upper", "U", [mc("/x/foo", "/y/bar")]), ("lower", "A", [f("/y/bar", size=18), d("/x")]), ("lower", "B", [])],
     ON, {"/x/foo": ok_data("A:/y/bar")}, paths=["/", "/x", "/x/foo", "/y", "/y/bar"])
case("xfs060-metacopy-in-middle-layer",
     [("upper", "U", [mc("/foo")]), ("lower", "A", [mc("/foo")]), ("lower", "B", [f("/foo", size=18)])], ON,
     {"/foo": ok_data("B:/foo")})
case("xfs060-metacopy-chain-with-redirects",
     [("lower", "A", [mc("/foo", "/mid")]), ("lower", "B", [mc("/mid", "/bot")]), ("lower", "D", [f("/bot", size=18)])],
     ON, {"/foo": ok_data("D:/bot")}, paths=["/", "/foo", "/mid", "/bot"])
# 079/085/088: data-only layers.
_objs = [f("/ab/cdef", size=18), f("/ab/0123", size=18)]
case("xfs079-data-layer-no-redirect",
     [("lower", "A", [mc("/dir/ab")]), ("data", "O", [f("/dir/ab", size=18)])], ON, {"/dir/ab": lookup_err("EIO")})
case("xfs085-data-layer-relative-redirect",
     [("lower", "A", [mc("/dir/x", "cdef")]), ("data", "O", _objs)], ON, {"/dir/x": lookup_err("EIO")})
case("xfs088-data-layer-absolute-redirect",
     [("lower", "A", [mc("/dir/x", "/ab/cdef"), mc("/dir/y", "/ab/0123")]), ("data", "O", _objs)], "",
     {"/dir/x": ok_data("O:/ab/cdef"), "/dir/y": ok_data("O:/ab/0123"), "/dir": {"entries": ["x", "y"]},
      "/": {"entries": ["dir"]}, "/ab": lookup_err("ENOENT")})
case("xfs088-first-data-layer-wins",
     [("lower", "A", [mc("/dir/x", "/ab/cdef")]), ("data", "O1", _objs), ("data", "O2", _objs)], ON,
     {"/dir/x": ok_data("O1:/ab/cdef")})
case("xfs088-lazy-lookup-fails-at-open",
     [("lower", "A", [mc("/dir/x", "/ab/missing")]), ("data", "O", _objs)], ON, {"/dir/x": open_err("ENOENT")})
# 084: escaped overlay xattrs and xattr whiteouts marked by opaque=x.
case("xfs084-escaped-whiteout-is-a-file",
     [("lower", "A", [f("/d/w", size=0, xattrs={TO + "overlay.whiteout": ""})]), ("lower", "B", [f("/d/w")])], "",
     {"/d/w": {"errno": None, "size": 0, "xattrs": ["trusted.overlay.whiteout"]}, "/d": {"entries": ["w"]}})
case("xfs084-escaped-opaque-is-not-opaque",
     [("lower", "A", [d("/d", xattrs={TO + "overlay.opaque": "y"}), f("/d/a")]), ("lower", "B", [f("/d/b")])], "",
     {"/d": {"entries": ["a", "b"]}})
case("xfs084-xattr-whiteouts-with-opaque-x",
     [("lower", "A", [opq("/d", "x"), xwh("/d/w1"), xwh("/d/w2"), f("/d/a")]),
      ("lower", "B", [f("/d/w1"), f("/d/b")])], "",
     {"/d": {"entries": ["a", "b"]}, "/d/w1": lookup_err("ENOENT"), "/d/w2": lookup_err("ENOENT")})
case("xfs084-user-xattr-whiteouts-userxattr",
     [("lower", "A", [opq("/d", "x", prefix=UO), xwh("/d/w1", prefix=UO), f("/d/a")]),
      ("lower", "B", [f("/d/w1"), f("/d/b")])], "userxattr",
     {"/d": {"entries": ["a", "b"]}, "/d/w1": lookup_err("ENOENT")})
case("xfs084-escaped-xattr-whiteout-nested",
     [("lower", "A", [opq("/d", "x"), f("/d/w1", size=0, xattrs={TO + "overlay.whiteout": ""})]),
      ("lower", "B", [f("/d/w1"), f("/d/b")])], "",
     {"/d": {"entries": ["b", "w1"]}, "/d/w1": {"errno": None, "size": 0}})
# Other entry kinds through the merge.
case("kinds-fifo-symlink-upper-over-lower",
     [("upper", "U", [fifo("/p"), sl("/s", "../t"), d("/dd")]), ("lower", "A", [f("/p"), f("/s"), fifo("/dd")]),
      ("lower", "B", [])], "",
     {"/p": {"type": "fifo"}, "/s": {"type": "symlink", "target": "../t"}, "/dd": {"type": "dir"}})

# Redirects with a "." or ".." component: the kernel's per-layer lookup of such a name fails
# with EACCES, which aborts the whole lookup (found by the random test).
for _where, _layers in (
    ("upper-dir", lambda r: [("upper", "U", [rdir("/d", r)]), ("lower", "A", [f("/a/x")]), ("lower", "B", [])]),
    ("lower-dir", lambda r: [("lower", "A", [rdir("/d", r)]), ("lower", "B", [f("/a/x")])]),
):
    for _r in ("/../a", "..", ".", "/./a"):
        case(f"dot-redirect-{_where}-{_r}", _layers(_r), "", {"/d": lookup_err("EACCES")}, paths=["/", "/d", "/a"])
case("dot-redirect-metacopy-into-lower", [("lower", "A", [mc("/d", "/../a")]), ("lower", "B", [f("/a", size=18)])],
     ON, {"/d": lookup_err("EACCES")}, paths=["/", "/d", "/a"])

# opaque=x on the lowest layer's root never enables xattr whiteouts in that layer, even when a
# higher layer's root has opaque=x too (found by the random test).
case("xwhiteout-lowest-root-x-with-top-root-x",
     [("lower", "A", [opq("/", "x"), f("/a")]), ("lower", "B", [opq("/", "x"), xwh("/foo")])], "",
     {"/": {"entries": ["a", "foo"]}, "/foo": lookup_err("ENOENT")})
case("xwhiteout-middle-root-x",
     [("lower", "A", [f("/a")]), ("lower", "B", [opq("/", "x"), xwh("/foo")]), ("lower", "D", [f("/d")])], "",
     {"/": {"entries": ["a", "d"]}, "/foo": lookup_err("ENOENT")})

# Impure upper directories (trusted.overlay.impure=y, which the kernel itself writes on an upper
# parent once a merged directory below it has been looked up or something was copied up): on a
# stack whose layers share one filesystem, readdir looks every upper entry up to compute d_ino,
# hides the entries whose lookup fails, and fails as a whole in a non-merged upper directory.
_IMP = {TO + "impure": "y"}
case("impure-upper-root-hides-failing-entry",
     [("upper", "U", [d("/", xattrs=_IMP), mc("/x"), f("/u")]), ("lower", "A", [f("/a")]), ("lower", "B", [])], "",
     {"/": {"entries": ["a", "u"]}, "/x": lookup_err("EPERM")}, paths=["/", "/x", "/u", "/a"])
case("impure-upper-merged-dir-hides-failing-entries",
     [("upper", "U", [d("/d", xattrs=_IMP), mc("/d/x"), rdir("/d/r", "//bad"), f("/d/u")]),
      ("lower", "A", [f("/d/a")]), ("lower", "B", [])], "",
     {"/d": {"entries": ["a", "u"]}, "/d/x": lookup_err("EPERM"), "/d/r": lookup_err("EINVAL")},
     paths=["/", "/d", "/d/x", "/d/r", "/d/u", "/d/a"])
case("impure-upper-only-dir-readdir-fails",
     [("upper", "U", [d("/d", xattrs=_IMP), mc("/d/x"), f("/d/u")]), ("lower", "A", [f("/a")]), ("lower", "B", [])],
     "", {"/d": {"readdir_errno": "EPERM", "entries": None}, "/d/x": lookup_err("EPERM")},
     paths=["/", "/d", "/d/x", "/d/u", "/a"])
case("impure-upper-dir-all-entries-fine",
     [("upper", "U", [d("/d", xattrs=_IMP), f("/d/u"), d("/d/e")]), ("lower", "A", [f("/d/a")]), ("lower", "B", [])],
     "", {"/d": {"entries": ["a", "e", "u"]}})

# Found by the random stacks (issue 8, tests/kernel/test_random.py), rebuilt small ("found-"
# rather than "random-": the kernel VMs deselect "random"). Each is the kernel's observed answer.
#
# Overlay inodes are keyed by their first lower inode, whatever supplies the data: an upper
# metacopy /a redirected to the lower metacopy A/b (itself redirected to B/c) has A/b's key,
# the key of the merged /b too.  Looked up after /a, /b is /a's inode (its size, 100); looked
# up first, /b is itself and /a then fails with ESTALE.
_CHAIN = [("upper", "U", [mc("/a", "/b", size=100)]), ("lower", "A", [mc("/b", "/c", size=5)]),
          ("lower", "B", [f("/c", size=30)])]
# (/a first: test_upper_metacopy_chain_alias_a_first below, as /b's answer is not ESTALE)
case("found-upper-metacopy-chain-b-first", _CHAIN, ON,
     {"/b": ok_data("B:/c", size=5), "/a": lookup_err("ESTALE")}, paths=["/", "/b", "/a", "/c"])
# Two upper metacopy files redirected to each other's names (a loop through the lower layer):
# each reads the lower file of the other name; the engine once recursed here forever.  With
# absolute redirects and A/a a metacopy too, /b walks A/a's redirect /b into B, which lacks it.
case("found-upper-metacopy-redirect-loop",
     [("upper", "U", [mc("/a", "b"), mc("/b", "a")]), ("lower", "A", [f("/a"), f("/b")]), ("lower", "B", [])], ON,
     {"/a": ok_data("A:/b"), "/b": ok_data("A:/a")})
case("found-upper-metacopy-redirect-loop-absolute",
     [("upper", "U", [mc("/a", "/b"), mc("/b", "/a")]), ("lower", "A", [mc("/a", "/b"), f("/b")]),
      ("lower", "B", [f("/a")])], ON, {"/a": ok_data("A:/b"), "/b": lookup_err("EIO")})
# A directory redirected into its own ancestor (or the ancestor's opaque lower copy) has the
# ancestor's key with another upper: ESTALE whatever the order, since the ancestor is always
# looked up first.
case("found-redirected-dir-into-own-parent",
     [("upper", "U", [d("/b"), rdir("/b/c", "/b")]), ("lower", "A", [d("/b"), f("/b/f")]), ("lower", "B", [])], "",
     {"/b": {"entries": ["c", "f"]}, "/b/c": lookup_err("ESTALE")})
case("found-redirected-dir-into-own-grandparent",
     [("upper", "U", [d("/b/c"), rdir("/b/c/d", "/b")]), ("lower", "A", [d("/b"), f("/b/f")]), ("lower", "B", [])],
     "", {"/b/c/d": lookup_err("ESTALE")})
case("found-redirected-dir-into-own-parent-opaque-lower",
     [("upper", "U", [d("/b"), rdir("/b/c", "/b")]), ("lower", "A", [opq("/b"), f("/b/f")]),
      ("lower", "B", [d("/b/g")])], "", {"/b": {"entries": ["c", "f"]}, "/b/c": lookup_err("ESTALE")})
case("found-redirected-dir-into-parent-of-opaque-upper",
     [("upper", "U", [opq("/b"), rdir("/b/c", "/b")]), ("lower", "A", [d("/b"), f("/b/f")]), ("lower", "B", [])],
     "", {"/b": {"entries": ["c"]}, "/b/c": {"errno": None, "entries": ["f"]}})
# A merged directory's listing looks some entries up as it returns them (upper entries of an
# impure directory, files of a layer with xattr whiteouts): a failing lookup hides the entry
# and ends that getdents call; the error reaches the program only when the call has returned
# nothing yet, i.e. for two failing entries in a row (or a failing first entry).
_IMP_ROOT = d("/", xattrs=_IMP)
case("found-impure-merged-two-failing-in-a-row",
     [("upper", "U", [_IMP_ROOT, f("/u"), mc("/x", "/dd"), mc("/y", "/dd")]), ("lower", "A", [d("/dd")]),
      ("lower", "B", [])], ON, {"/": {"readdir_errno": "EIO", "entries": None}, "/x": lookup_err("EIO")},
     paths=["/", "/x", "/y", "/u", "/dd"])
case("found-impure-merged-failing-apart",
     [("upper", "U", [_IMP_ROOT, mc("/a", "/dd"), f("/b"), mc("/c", "/dd")]), ("lower", "A", [d("/dd")]),
      ("lower", "B", [])], ON, {"/": {"readdir_errno": None, "entries": ["b", "dd"]}, "/a": lookup_err("EIO")},
     paths=["/", "/a", "/b", "/c", "/dd"])
# The lowest layer's names come first in the merged list (moved there when seen above): its
# "a" puts the upper's failing /a right after the dots, apart from the failing /1e.
_TWO_FAILING = [_IMP_ROOT, mc("/1e", "/b/b"), mc("/a", "a"), d("/b"), d("/foo")]
case("found-impure-merged-lowest-names-first",
     [("upper", "U", _TWO_FAILING), ("lower", "A", [d("/a"), d("/b/b")])], ON,
     {"/": {"readdir_errno": None, "entries": ["b", "foo"]}, "/a": lookup_err("EIO"), "/1e": lookup_err("EIO")},
     paths=["/", "/1e", "/a", "/b", "/foo"])
case("found-impure-merged-empty-lowest",
     [("upper", "U", _TWO_FAILING), ("lower", "A", [d("/a"), d("/b/b")]), ("lower", "B", [])], ON,
     {"/": {"readdir_errno": "EIO", "entries": None}}, paths=["/", "/1e", "/a", "/b", "/foo"])
# Two failing xattr-whiteout checks in a row fail a lower-only listing the same way.
case("found-xwhiteout-check-two-failing-in-a-row",
     [("lower", "A", [opq("/m", "x"), f("/m/a"), mc("/m/x"), mc("/m/y")]), ("lower", "B", [f("/m/b")])], "",
     {"/m": {"readdir_errno": "EPERM", "entries": None}, "/m/x": lookup_err("EPERM")})
# A layer flagged for xattr whiteouts by the lookup of an ancestor (A/p has opaque=x) is checked
# in every directory whose lower copies hold opaque=x somewhere (B/p/q): A's xattr whiteout is
# hidden from the listing of /p/q although A/p/q itself has no opaque=x.
case("found-xwhiteout-layer-flagged-by-ancestor",
     [("lower", "A", [opq("/p", "x"), d("/p/q"), xwh("/p/q/w"), f("/p/q/a")]),
      ("lower", "B", [opq("/p/q", "x"), f("/p/q/b")]), ("lower", "D", [f("/p/q/d")])], "",
     {"/p/q": {"entries": ["a", "b", "d"]}, "/p/q/w": lookup_err("ENOENT")})
case("found-xwhiteout-layer-not-flagged",
     [("lower", "A", [d("/p/q"), xwh("/p/q/w"), f("/p/q/a")]),
      ("lower", "B", [opq("/p/q", "x"), f("/p/q/b")]), ("lower", "D", [f("/p/q/d")])], "",
     {"/p/q": {"entries": ["a", "b", "d", "w"]}, "/p/q/w": lookup_err("ENOENT")})

#: Engine disagreements reported to the lead and not fixed yet: case-name prefix -> reason.
KNOWN_ENGINE_BUGS = {
    "dot-redirect-": "engine: a redirect with a '.' or '..' component must fail the lookup with EACCES",


}

_ids = [c.name for c in CASES]
assert len(set(_ids)) == len(_ids), "duplicate case names"


def _check(res, case, api):
    problems = check_expectations(res)
    assert not problems, (
        f"the kernel contradicts the reference table for {case.name} ({api}):\n  " + "\n  ".join(problems)
        + "\n\nstack file:\n" + case_toml(case)
    )


@pytest.mark.parametrize("api", ["legacy", "fsconfig"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_table(case: Case, api: str, tmpfs: str) -> None:
    res = run_kernel(case, tmpfs, api)
    if RUNNING.version >= case.since:
        _check(res, case, api)
    if res.unavailable:
        pytest.skip(res.unavailable)
    refresh_stale(res, api)
    dis = prediction_disagreements(res)
    _known(case, dis)
    assert not dis, format_disagreements(f"{case.name} ({api})", dis, case_toml(case))


def _known(case: Case, dis) -> None:
    for prefix, reason in KNOWN_ENGINE_BUGS.items():
        if dis and case.name.startswith(prefix):
            pytest.xfail(reason)


@pytest.mark.parametrize("case", [c for c in CASES if c.mount_errno is None], ids=[c.name for c in CASES if c.mount_errno is None])
def test_table_live(case: Case, tmpfs: str) -> None:
    res = run_kernel(case, tmpfs, "legacy", with_prediction=False)
    refresh_stale(res)
    settle_for_live(res)
    try:
        pred = predict_live(res.target, res.paths)
    except PredictionUnavailable as e:
        pytest.skip(str(e))
    dis = compare(res.obs, pred, aliased=res.aliased)
    _known(case, dis)
    assert not dis, format_disagreements(f"{case.name} (live)", dis, case_toml(case))


@pytest.mark.parametrize("api", ["legacy", "fsconfig"])
def test_layer_directories_with_separator_characters(api: str, tmpfs: str) -> None:
    """Layer directories named with ':', ',' and '\\' go through lowerdir escaping both ways."""
    import os

    from harness import build, mount_errno, observe, paths_of_case, predict
    from ovlinspect.live.build import BuiltStack

    if not RUNNING.data_only_layers:
        pytest.skip(f"kernel {RUNNING.name} has no data-only layers (this stack has one)")
    case = Case("separators", [("upper", "U", [f("/u"), wh("/gone")]), ("lower", "A", A_FOO + [f("/gone")]),
                               ("lower", "B", [f("/b")]), ("data", "C", C_DATA)], ON)
    built = build(case, os.path.join(tmpfs, "layers"))
    renamed = []
    for (role, label, path), new in zip(built.dirs, ["up,per", "lo:wer A", "back\\slash", "da::ta,C"]):
        dest = os.path.join(os.path.dirname(path), new)
        os.rename(path, dest)
        renamed.append((role, label, dest))
    b = BuiltStack(built.dest, renamed, renamed[0][2], [renamed[1][2], renamed[2][2]], [renamed[3][2]],
                   built.workdir, built.options)
    paths = paths_of_case(case)
    pred = predict(b, paths)
    target = os.path.join(tmpfs, "merged")
    assert mount_errno(b, target, api) is None
    obs = observe(target, paths)
    assert obs["/foo"].data.startswith(b"C:/1e/abcdef")
    assert [l["path"] for l in pred["layers"]] == b.layer_dirs
    dis = compare(obs, pred, b.layer_dirs)
    assert not dis, format_disagreements(f"separators ({api})", dis, case_toml(case))
    try:
        live = predict_live(target, paths)
    except PredictionUnavailable as e:
        pytest.skip(str(e))
    assert [l["path"] for l in live["layers"]] == b.layer_dirs
    dis = compare(obs, live)
    assert not dis, format_disagreements(f"separators ({api}, live)", dis, case_toml(case))


def test_lookup_of_a_merged_directory_writes_to_the_upper_layer(tmpfs: str) -> None:
    """Observing a read-write overlay is not read-only for its layers: looking up a merged
    directory records ``origin`` on it and ``impure`` on its upper parent, and a later mount
    of the same directories then hides failing upper entries from the parent's listing."""
    import os

    from harness import build, mount_errno, observe, paths_of_case, predict

    case = Case("origin", [("upper", "U", [mc("/x"), d("/a"), f("/u")]), ("lower", "A", [d("/a")]),
                           ("lower", "B", [])], "")
    built = build(case, os.path.join(tmpfs, "layers"))
    target = os.path.join(tmpfs, "merged")
    assert mount_errno(built, target) is None
    assert sorted(os.listdir(target)) == ["a", "u", "x"]  # pristine upper: x is listed
    os.lstat(os.path.join(target, "a"))
    built.umount_all()
    assert os.getxattr(built.upper, "trusted.overlay.impure") == b"y"
    assert os.getxattr(os.path.join(built.upper, "a"), "trusted.overlay.origin")
    paths = paths_of_case(case)
    pred = predict(built, paths)  # the described stack as the kernel left it
    assert mount_errno(built, target) is None
    obs = observe(target, paths)
    assert obs["/"].entries == ["a", "u"]
    dis = compare(obs, pred, built.layer_dirs)
    if dis:
        _known(Case("impure-upper-after-lookup", case.layers), dis)
    assert not dis, format_disagreements("origin/impure written by a lookup", dis, case_toml(case))


def test_upper_metacopy_chain_alias_a_first(tmpfs: str) -> None:
    """The chain above with /a looked up first: the merged /b then is /a's overlay inode (same
    first lower, A/b) and shows /a's size; the engine flags the alias on /a, naming /b, and
    predicts /b as looked up alone (its own 5 bytes), which a fresh mount confirms."""
    case = Case("found-upper-metacopy-chain-a-first", _CHAIN, ON, paths=["/", "/a", "/b", "/c"])
    res = run_kernel(case, tmpfs)
    if res.unavailable:
        pytest.skip(res.unavailable)
    assert res.mount_errno is None
    assert (res.obs["/a"].size, res.obs["/b"].size, res.obs["/c"].size) == (100, 100, 30)
    assert res.obs["/b"].data == res.obs["/c"].data  # B/c's bytes through both names
    alias = [f["message"] for p in res.pred["paths"] if p["path"] == "/a" for f in p["findings"]
             if f["rule"] == "inode-alias"]
    assert alias and "/b" in alias[0], res.pred["paths"]
    dis = prediction_disagreements(res)  # re-observes /b alone on a fresh mount
    assert res.obs["/b"].size == 5
    assert not dis, format_disagreements(case.name, dis, case_toml(case))
