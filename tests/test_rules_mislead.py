"""Rules that used to mislead (issue 8): composefs-style user.overlay.* duplicates, a shadowing
hazard above the redirect, a metacopy in the wrong namespace, and `mounts` naming one rule."""

from __future__ import annotations

from collections import Counter

from memstack import T, engine, layer, metacopy

from ovlinspect.sources.composefs import load_dump
from ovlinspect.rules.engine import Engine
from ovlinspect.live.mounts import _by_rule, _counted
from ovlinspect.rules.catalogue import Finding
from ovlinspect.model.stack import Stack
from ovlinspect.report.document import path_json

DATA = b"hello data from C\n"
ROOT = "/ 4096 40755 3 0 0 0 1.0 - - -"


def by_rule(findings, rule):
    return sorted(f.path for f in findings if f.rule == rule)


def test_composefs_image_with_a_whiteout_gets_no_namespace_warning():
    """The image writer puts user.overlay.whiteout/whiteouts/opaque next to the escaped
    trusted copies on purpose (for an outer userxattr overlay): not a mistake."""
    dump = load_dump("\n".join([ROOT, "/etc 4096 40755 2 0 0 0 1.0 - - -",
                                "/etc/gone 0 20000 1 0 0 0 1.0 - - -",
                                "/etc/kept 5 100644 1 0 0 0 1.0 - kept\\x0a -"]) + "\n")
    e = Engine(Stack(lowers=[dump, layer("base", {"/etc/gone": b"old\n"})], options="metacopy=on",
                     params={"metacopy": "N", "redirect_dir": "N"}), kernel="6.18.0")
    etc = dict(dump.node((b"etc",)).xattrs)
    assert etc[b"user.overlay.opaque"] == etc[b"trusted.overlay.overlay.opaque"] == b"x"
    found = e.check()
    assert by_rule(found, "xattr-namespace-mismatch") == []


def test_a_lone_or_different_user_copy_is_still_flagged():
    a = layer("A", {"/d": ("dir", {b"user.overlay.opaque": b"y"}),
                    "/e": ("dir", {T + b"opaque": b"y", b"user.overlay.opaque": b"x"}),
                    "/f": ("dir", {T + b"opaque": b"y", b"user.overlay.opaque": b"y"})})
    e = engine([a, layer("B", {"/d/x": b"x"})])
    assert by_rule(e.check(), "xattr-namespace-mismatch") == [b"/d", b"/e"]


def test_shadowing_hazard_only_below_the_redirect():
    """B above A: A's redirect into /1e walks only the layers below A, never B's /1e."""
    b = layer("B", {"/1e": "dir"})
    a = layer("A", {"/foo": metacopy()})
    c = layer("C", {"/1e": "dir", "/1e/abcdef": DATA})
    e = engine([b, a], [c], options="metacopy=on")
    assert by_rule(e.stack_findings(), "shadowing-hazard") == []
    # and indeed a file there does not intercept: the data comes from C
    e2 = engine([layer("B", {"/1e": "dir", "/1e/abcdef": b"B\n"}), a], [c], options="metacopy=on")
    r = e2.explain("/foo")
    assert path_json(e2, r)["data"] == {"layer": 2, "path": "/1e/abcdef"}
    assert "shadowed-lowerdata" not in {f.rule for f in r.findings}
    # below the redirect it fires
    e3 = engine([a, b], [c], options="metacopy=on")
    assert by_rule(e3.stack_findings(), "shadowing-hazard") == [b"/1e"]


def test_shadowing_hazard_needs_a_metacopy_redirect_into_that_directory():
    a = layer("A", {"/foo": metacopy(b"/7a/0b9cd2"), "/plain": ("file", {T + b"redirect": b"/1e/x"})})
    b = layer("B", {"/1e": "dir", "/7a": "dir"})
    c = layer("C", {"/1e/abcdef": DATA, "/7a/0b9cd2": DATA})
    e = engine([a, b], [c], options="metacopy=on")
    assert by_rule(e.stack_findings(), "shadowing-hazard") == [b"/7a"]


def test_userxattr_mount_with_trusted_metacopy_is_an_error():
    a = layer("A", {"/m": metacopy(b"/d", size=16)})
    b = layer("B", {"/d": b"the real data!!\n"})
    e = engine([a, b], options="userxattr")
    r = e.explain("/m")
    assert path_json(e, r)["data"] == {"layer": 0, "path": "/m"}
    (f,) = r.findings
    assert f.rule == "metacopy-ignored" and f.severity == "error"
    assert "read() returns its own 16 bytes (zeros" in f.message
    assert "user.overlay.*" in f.hint
    errors = [f for f in e.check() if f.severity == "error"]
    assert [(f.rule, f.path) for f in errors] == [("metacopy-ignored", b"/m")]


def test_mounts_detail_counts_each_rule():
    """The findings as mounts counts them (by severity and rule, as they come): the most
    important rule first, whatever order they came in."""
    fs = [Finding("lowerdata-missing", b"/b", ""), Finding("lowerdata-redirect-broken", b"/a", ""),
          Finding("lowerdata-redirect-broken", b"/c", "")]
    tally = Counter((f.severity, f.rule) for f in fs)
    assert _counted(_by_rule(tally, "error"), "error(s)") == \
        "3 error(s): lowerdata-redirect-broken ×2, lowerdata-missing ×1"
    assert _by_rule(tally, "warning") == []
