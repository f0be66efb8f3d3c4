"""The engine on in-memory stacks: the seed thread's cases and the reference's tables."""

import pytest

from memstack import T, engine, layer, metacopy
from ovlinspect.report.document import path_json

DATA = b"hello data from C\n"


def seed(b_entries, options="metacopy=on", c_entries=None):
    a = layer("A", {"/foo": metacopy()})
    b = layer("B", b_entries)
    c = layer("C", c_entries if c_entries is not None else {"/1e": "dir", "/1e/abcdef": DATA})
    return engine([a, b], [c], options=options)


def rules(res):
    return {f.rule for f in res.findings}


def test_seed_clean_serves_data_layer():
    e = seed({})
    r = e.explain("/foo")
    assert r.errno is None and r.size == 18
    assert (r.data.layer, r.data.path) == (3, (b"1e", b"abcdef"))
    assert path_json(e, r)["data"] == {"layer": 2, "path": "/1e/abcdef"}
    assert rules(r) == set()


def test_seed_shadowed_by_regular_file():
    e = seed({"/1e": "dir", "/1e/abcdef": b"B's 19 bytes here!\n"})
    r = e.explain("/foo")
    assert r.errno is None
    assert path_json(e, r)["data"] == {"layer": 1, "path": "/1e/abcdef"}
    assert "shadowed-lowerdata" in rules(r)


@pytest.mark.parametrize("b", [
    {"/1e": "dir"},
    {"/1e": "dir", "/1e/abcdef": "dir"},
    {"/1e": "dir", "/1e/abcdef": "wh"},
    {"/1e": "dir", "/1e/abcdef": ("symlink", {}, {"target": b"x"})},
    {"/1e": "dir", "/1e/abcdef": metacopy(None)},
])
def test_seed_directory_on_redirect_path_is_eio(b):
    r = seed(b).explain("/foo")
    assert r.errno == "EIO"
    assert r.kernel_log == ["overlayfs: metacopy with no lower data found - abort lookup (/foo)"]
    assert "lowerdata-redirect-broken" in rules(r)


@pytest.mark.parametrize("b", [
    {"/1e": b"file"},
    {"/1e": "wh"},
    {"/1e": ("symlink", {}, {"target": b"/"})},
    {"/1e": ("dir", {T + b"opaque": b"y"})},
])
def test_seed_things_that_keep_the_redirect(b):
    e = seed(b)
    r = e.resolve("/foo")
    assert r.errno is None and r.data.layer == 3


def test_redirected_b_dir_makes_open_fail():
    e = seed({"/1e": ("dir", {T + b"redirect": b"/zz"}), "/zz": "dir", "/zz/abcdef": b"zz"})
    r = e.resolve("/foo")
    assert r.errno is None and r.open_errno == "ENOENT"
    assert r.open_log == ["overlayfs: lazy lowerdata lookup failed (/foo, err=-2)"]


@pytest.mark.parametrize("c, err", [
    ({}, "ENOENT"),
    ({"/1e": "dir", "/1e/abcdef": "dir"}, "ENOENT"),
    ({"/1e": ("symlink", {}, {"target": b"x"})}, "ELOOP"),
])
def test_missing_data(c, err):
    r = seed({}, c_entries=c).explain("/foo")
    assert r.errno is None and r.open_errno == err
    assert "lowerdata-missing" in rules(r)


def test_defaults_refuse_metacopy_in_upper_regular_layer():
    r = seed({}, options="").explain("/foo")
    assert r.errno == "EPERM"
    assert r.kernel_log == ["overlayfs: refusing to follow metacopy origin for (/foo)"]
    assert "metacopy-refused" in rules(r)


def test_single_regular_layer_relaxation():
    a = layer("A", {"/foo": metacopy()})
    c = layer("C", {"/1e": "dir", "/1e/abcdef": DATA})
    r = engine([a], [c]).resolve("/foo")
    assert r.errno is None and r.data.layer == 2


def test_mount_conflict():
    e = engine([layer("A", {}), layer("B", {})], options="metacopy=on,redirect_dir=nofollow")
    assert e.mount_errno == "EINVAL"


@pytest.mark.parametrize("value", [b"1e/abcdef", b"//1e", b"/1e/abcdef/"])
def test_invalid_redirect(value):
    a = layer("A", {"/foo": metacopy(value)})
    c = layer("C", {})
    r = engine([a], [c]).explain("/foo")
    assert r.errno == "EINVAL" and "invalid-redirect" in rules(r)


def test_phantom_whiteout_in_non_merged_dir():
    a = layer("A", {"/solo": "dir", "/solo/f": b"f", "/solo/wh": "wh"})
    b = layer("B", {})
    e = engine([a, b])
    r = e.explain("/solo")
    assert e.entries(r) == [b"f", b"wh"]
    assert "phantom-whiteout" in rules(r)


def test_whiteout_hides_in_merged_dir():
    a = layer("A", {"/d": "dir", "/d/wh": "wh"})
    b = layer("B", {"/d": "dir", "/d/wh": b"x", "/d/f": b"f"})
    e = engine([a, b])
    r = e.explain("/d")
    assert e.entries(r) == [b"f"]
    assert e.resolve("/d/wh").errno == "ENOENT"


def test_user_namespace_xattrs_are_ignored():
    a = layer("A", {"/foo": ("file", {b"user.overlay.metacopy": b"", b"user.overlay.redirect": b"/x"},
                             {"size": 18})})
    c = layer("C", {"/x": DATA})
    r = engine([a], [c]).explain("/foo")
    assert r.errno is None and r.data.layer == 1
    # the ignored metacopy means silently wrong data (the file's own zeros): an error
    assert rules(r) == {"metacopy-ignored"}
    assert r.findings[0].severity == "error" and "read() returns its own 18 bytes (zeros" in r.findings[0].message


def test_shadowing_hazard():
    a = layer("A", {"/foo": metacopy()})
    b = layer("B", {"/1e": "dir"})
    c = layer("C", {"/1e": "dir", "/1e/abcdef": DATA})
    e = engine([a, b], [c], options="metacopy=on")
    assert {f.rule for f in e.stack_findings()} == {"shadowing-hazard"}


def test_check_walks_everything():
    e = seed({"/1e": "dir", "/1e/abcdef": b"B"})
    found = {(f.rule, f.path) for f in e.check()}
    assert ("shadowed-lowerdata", b"/foo") in found
    assert ("shadowing-hazard", b"/1e") in found


def test_inode_alias_after_rename():
    up = layer("U", {"/foo": ("file", {T + b"metacopy": b"", T + b"redirect": b"/bar"}, {"size": 3})})
    a = layer("A", {"/bar": b"A:bar"})
    e = engine([a], upper=up, options="metacopy=on")
    r = e.explain("/foo")
    assert r.errno is None and path_json(e, r)["data"] == {"layer": 1, "path": "/bar"}
    assert "inode-alias" in rules(r)
    # the safe shape: a whiteout at the redirect source hides the alias
    up2 = layer("U", {"/foo": ("file", {T + b"metacopy": b"", T + b"redirect": b"/bar"}, {"size": 3}),
                      "/bar": "wh"})
    e2 = engine([a], upper=up2, options="metacopy=on")
    assert "inode-alias" not in rules(e2.explain("/foo"))


# ---------------------------------------------------------------- one test per remaining rule


def test_rule_redirect_refused():
    a = layer("A", {"/newdir": ("dir", {T + b"redirect": b"/old/dir"})})
    b = layer("B", {"/old/dir/b": b"b"})
    assert engine([a, b]).resolve("/newdir").errno is None  # lower-only: follow becomes on
    up = layer("U", {"/newdir": ("dir", {T + b"redirect": b"/old/dir"})})
    e = engine([b], upper=up, options="redirect_dir=nofollow")
    r = e.explain("/newdir")
    assert r.errno == "EPERM" and "redirect-refused" in rules(r)
    assert r.kernel_log == ["overlayfs: refusing to follow redirect for (/newdir)"]


def test_rule_metacopy_without_data():
    a = layer("A", {"/foo": metacopy(None)})
    b = layer("B", {})
    r = engine([a, b], options="metacopy=on").explain("/foo")
    assert r.errno == "EIO" and "metacopy-without-data" in rules(r)


def test_rule_metacopy_invalid_too_small():
    a = layer("A", {"/foo": metacopy(value=b"\0\0")})
    r = engine([a], [layer("C", {"/1e/abcdef": DATA})]).explain("/foo")
    assert r.errno == "EIO" and "metacopy-invalid" in rules(r)
    assert r.kernel_log == ["overlayfs: metacopy file 'foo' has too small xattr"]


def test_rule_metacopy_size_mismatch():
    a = layer("A", {"/foo": metacopy(size=100)})
    r = engine([a], [layer("C", {"/1e/abcdef": DATA})]).explain("/foo")
    assert r.size == 100 and "metacopy-size-mismatch" in rules(r)


SHA = bytes([0, 36, 0, 1]) + b"\xcd" * 32


def test_rule_verity_failure_no_digest_on_data():
    a = layer("A", {"/foo": metacopy(value=SHA)})
    c = layer("C", {"/1e/abcdef": DATA})
    r = engine([a], [c], options="verity=on").explain("/foo")
    assert r.errno is None and r.open_errno == "EIO" and "verity-failure" in rules(r)
    assert r.open_log == ["overlayfs: lower file 'abcdef' has no fs-verity digest"]
    assert engine([a], [c], options="verity=off").resolve("/foo").open_errno is None


def test_rule_verity_require_without_digest():
    a = layer("A", {"/foo": metacopy()})
    c = layer("C", {"/1e/abcdef": DATA})
    r = engine([a], [c], options="verity=require").explain("/foo")
    assert r.open_errno == "EIO"
    assert r.open_log == ["overlayfs: metacopy file 'foo' has no digest specified"]


def test_verity_matching_digest_opens():
    from ovlinspect.model.layers import Node
    a = layer("A", {"/foo": metacopy(value=SHA)})
    c = layer("C", {})
    c.add((b"1e", b"abcdef"), Node("file", 0o644, 18, verity=(1, b"\xcd" * 32)), DATA)
    assert engine([a], [c], options="verity=on").resolve("/foo").open_errno is None


def test_rule_redirect_ignored():
    a = layer("A", {"/foo": ("file", {T + b"redirect": b"/x"}, {"size": 3, "content": b"abc"})})
    r = engine([a], [layer("C", {"/x": b"x"})]).explain("/foo")
    assert r.errno is None and r.data.layer == 1 and "redirect-ignored" in rules(r)


def test_rule_mount_refused():
    e = engine([layer("A", {})], options="")  # one lower layer and no upper
    assert e.mount_errno == "EINVAL"
    assert [f.rule for f in e.check()] == ["mount-refused"]


def test_rule_kernel_bug():
    # verity on with a digest on 7.0.3 (bootc#2174); more in tests/test_kernel_bugs.py
    from ovlinspect.rules.engine import Engine

    digest = bytes([0, 36, 0, 1]) + b"\x11" * 32
    image = layer("image", {"/f": metacopy(b"/ab/cd", 5, digest)})
    objects = layer("objects", {"/ab": "dir", "/ab/cd": b"data\n"})
    stack = engine([image], data=[objects], options="metacopy=on,verity=on").stack
    assert "kernel-bug" in [f.rule for f in Engine(stack, kernel="7.0.3").check()]
    assert "kernel-bug" not in [f.rule for f in Engine(stack, kernel="7.0.7").check()]


def test_every_rule_has_a_test():
    import pathlib

    from ovlinspect.rules.catalogue import RULES

    here = pathlib.Path(__file__).read_text()
    for rule in RULES:
        assert f'"{rule}"' in here, rule


def test_rule_not_modelled():
    a = layer("A", {})
    e = engine([a], upper=layer("U", {}), options="index=on")
    assert "not-modelled" in {f.rule for f in e.stack_findings()}
    assert "not-modelled" not in {f.rule for f in engine([a], upper=layer("U", {})).stack_findings()}


def test_phantom_messages_say_which_case():
    a = layer("A", {"/solo": "dir", "/solo/wh": "wh", "/d": "dir",
                    "/d/xw": ("file", {T + b"whiteout": b""})})
    b = layer("B", {"/d": "dir", "/d/xw": b"b"})
    e = engine([a, b])
    solo = [f.message for f in e.explain("/solo").findings if f.rule == "phantom-whiteout"]
    assert solo and "one layer only" in solo[0]
    d = [f.message for f in e.explain("/d").findings if f.rule == "phantom-whiteout"]
    assert d and "lacks opaque=x" in d[0]
    up = layer("U", {"/d": ("dir", {T + b"opaque": b"x"}), "/d/xw": ("file", {T + b"whiteout": b""})})
    e2 = engine([b], upper=up)
    msgs = [f.message for f in e2.explain("/d").findings if f.rule == "phantom-whiteout"]
    assert msgs and "upper layer" in msgs[0]


def test_stray_metacopy_in_the_lowest_layer_is_explained():
    a = layer("A", {})
    b = layer("B", {"/stray": metacopy(None)})
    r = engine([a, b]).explain("/stray")
    assert r.errno == "EPERM"
    assert any("remove the stray xattr" in f.message for f in r.findings)
    assert engine([a, b], options="metacopy=on").resolve("/stray").errno == "EIO"


def test_name_too_long():
    r = engine([layer("A", {}), layer("B", {})]).resolve("/" + "x" * 256)
    assert r.errno == "ENAMETOOLONG"


def test_check_reports_what_an_impure_readdir_leaves_out():
    # an upper metacopy with metacopy off: EPERM, and the impure root's readdir hides it
    up = layer("U", {"/": ("dir", {T + b"impure": b"y"}), "/x": metacopy(None), "/u": b"u"})
    a = layer("A", {"/x": b"A:x", "/a": b"a"})
    e = engine([a], upper=up)
    root = e.explain("/")
    assert e.entries(root) == [b"a", b"u"]
    assert ("metacopy-refused", b"/x") in {(f.rule, f.path) for f in e.check()}
    # an impure directory in the upper layer only: readdir itself fails, check still walks it
    up2 = layer("U", {"/d": ("dir", {T + b"impure": b"y"}), "/d/x": metacopy(None), "/d/u": b"u"})
    e2 = engine([a], upper=up2)
    assert e2.resolve("/d").errno is None and path_json(e2, e2.explain("/d"))["readdir_errno"] == "EPERM"
    assert ("metacopy-refused", b"/d/x") in {(f.rule, f.path) for f in e2.check()}


def test_escaped_xattrs_are_not_a_namespace_mismatch():
    a = layer("A", {"/wh": ("file", {T + b"overlay.whiteout": b""}),
                    "/u": ("file", {b"user.overlay.redirect": b"/x", b"user.overlay.metacopy": b""})})
    e = engine([a], [layer("C", {})])
    assert {(f.rule, f.path) for f in e.check() if f.rule in ("xattr-namespace-mismatch", "metacopy-ignored")} \
        == {("metacopy-ignored", b"/u")}


def test_layer_view_names_the_path_each_layer_was_asked():
    from ovlinspect.report.view import layer_view

    a = layer("A", {"/newdir": ("dir", {T + b"redirect": b"/old/dir"})})
    b = layer("B", {"/old/dir/b": b"b"})
    e = engine([a, b])
    view = {li: (path, role) for li, path, _, role in layer_view(e, e.resolve("/newdir/b"))}
    assert view[2] == ((b"old", b"dir", b"b"), "metadata+data")
    view = {li: (path, role) for li, path, _, role in layer_view(e, e.resolve("/newdir"))}
    assert view[2] == ((b"old", b"dir"), "stack")
    up = layer("U", {"/x": "wh"})
    e2 = engine([layer("A", {}), layer("B", {"/x": b"x"})], upper=up)
    roles = {li: role for li, _, _, role in layer_view(e2, e2.resolve("/x"))}
    assert roles == {0: "whiteout", 1: "not looked at", 2: "hidden"}


def test_root_opaque_is_decoded_as_no_effect():
    from ovlinspect.model.layers import Node
    from ovlinspect.model.xattrs import decode_xattrs

    n = Node("dir", xattrs=((T + b"opaque", b"y"),))
    assert decode_xattrs(n, T)[0].active
    x = decode_xattrs(n, T, root=True)[0]
    assert not x.active and "root" in x.note


def test_estale_rules_are_tested_in_their_own_files():
    """The ESTALE/work-directory rules need real layers: their tests are the kernel's."""
    import pathlib

    here = pathlib.Path(__file__).parent
    text = (here / "test_origin.py").read_text() + (here / "kernel" / "test_estale.py").read_text()
    for rule in ("stale-origin", "incompat-workdir", "workdir-in-use", "workdir-shared",
                 "index-entry-invalid", "index-entry-stale", "index-fallback", "index-entry-bad",
                 "index-served", "stale-origin-lookup",
                 "workdir-leftovers"):
        assert f'"{rule}"' in text, rule


def test_layers_below_the_entry_that_ends_the_walk_are_not_looked_at():
    """QA: an upper file (not a metacopy) ends the lookup, so the lower layers below it are
    "not looked at", as the trace says, not "absent"; the same below an opaque directory."""
    from ovlinspect.report.view import layer_view

    u = layer("U", {"/d": "dir", "/d/f": b"upper\n"})
    a = layer("A", {"/d": "dir", "/d/g": b"a\n"})
    b = layer("B", {"/d": "dir"})
    e = engine([a, b], upper=u)
    roles = {li: role for li, _, _, role in layer_view(e, e.explain("/d/f"))}
    assert roles == {0: "metadata+data", 1: "not looked at", 2: "not looked at"}
    opaque = layer("A", {"/o": ("dir", {T + b"opaque": b"y"}), "/o/x": b"x\n"})
    below = layer("B", {"/o": "dir"})
    e = engine([opaque, below], upper=layer("U", {}))
    res = e.explain("/o/y")
    assert res.errno == "ENOENT"
    roles = {li: role for li, _, _, role in layer_view(e, res)}
    assert roles[2] == "not looked at"


def test_rule_inode_collision_needs_layers_on_disk():
    """Described layers have no inode numbers: no st_ino is predicted and no "inode-collision"
    is reported (tests/kernel/test_inode.py checks both against real mounts)."""
    from ovlinspect.kernel.inode import inode_of, xino_of

    a = layer("A", {"/f": b"a"})
    e = engine([a], upper=layer("U", {"/g": b"u"}))
    assert xino_of(e) is None and inode_of(e, e.explain("/f")) is None
    assert "inode-collision" not in {f.rule for f in e.check()}


def test_fsck_rules_on_described_layers():
    """What fsck.overlay would repair, on described layers (tests/kernel/test_fsck.py judges
    each against a real mount): a whiteout with nothing below ("fsck-orphan-whiteout"), a
    redirect to a directory no lower holds ("fsck-redirect-dangling"), and its origin still
    visible ("fsck-redirect-duplicate").  "fsck-impure-missing", "fsck-impure-stale",
    "fsck-origin-stale" and "fsck-index-stale" need inode numbers and handles: layers on disk."""
    a = layer("A", {"/d": "dir", "/d/x": b"x", "/src": "dir", "/src/y": b"y"})
    u = layer("U", {"/d": "dir", "/d/gone": "wh", "/d/x": "wh",
                    "/b": ("dir", {T + b"redirect": b"/nowhere"}),
                    "/c": ("dir", {T + b"redirect": b"/src"})})
    e = engine([a], upper=u, options="redirect_dir=on")
    found = {(f.rule, f.path) for f in e.check()}
    assert ("fsck-orphan-whiteout", b"/d/gone") in found
    assert ("fsck-orphan-whiteout", b"/d/x") not in found  # it hides A's /d/x
    assert ("fsck-redirect-dangling", b"/b") in found
    assert ("fsck-redirect-duplicate", b"/c") in found  # /src was not whited out
    assert not {r for r, _ in found} & {"fsck-impure-missing", "fsck-impure-stale",
                                         "fsck-origin-stale", "fsck-index-stale"}


def test_shadowing_hazard_only_where_a_redirect_above_walks():
    """A regular directory named like a data layer's top-level one is a hazard only below a
    layer holding a redirect into it."""
    a = layer("A", {"/foo": metacopy(b"/1e/abcdef")})
    b = layer("B", {"/1e": "dir", "/2f": "dir", "/bar": metacopy(b"/2f/ghij")})
    d = layer("D", {"/2f": "dir", "/1e": "dir"})
    c = layer("C", {"/1e": "dir", "/1e/abcdef": DATA, "/2f": "dir", "/2f/ghij": DATA})
    e = engine([a, b, d], [c], options="metacopy=on")
    got = sorted((f.path, f.message.split(" is a directory")[0]) for f in e.stack_findings()
                 if f.rule == "shadowing-hazard")
    # /1e: redirected into from A, so B's and D's /1e are walked; /2f: from B, so only D's
    assert got == [(b"/1e", "lower 1 (B):/1e"), (b"/1e", "lower 2 (D):/1e"),
                   (b"/2f", "lower 2 (D):/2f")]


def test_shadowing_hazard_reads_the_layers_above_only_as_far_as_needed():
    """A composefs metadata layer answers at its first redirect into the directory: the rest
    of it is not read before the walk (reading it whole doubled a check)."""
    a = layer("A", {"/foo": metacopy(b"/1e/abcdef"), **{f"/m/f{i}": b"x" for i in range(50)}})
    b = layer("B", {"/1e": "dir"})
    c = layer("C", {"/1e": "dir", "/1e/abcdef": DATA})
    e = engine([a, b], [c], options="metacopy=on")
    scanned = []
    real_scan = a.scan
    a.scan = lambda p: scanned.append(p) or real_scan(p)
    assert [f.rule for f in e.stack_findings()] == ["shadowing-hazard"]
    assert (b"m",) not in scanned and () in scanned
    # with no redirect into the directory, every layer above is read (to prove there is none)
    b2 = layer("B", {"/2f": "dir"})
    c2 = layer("C", {"/2f": "dir"})
    e = engine([a, b2], [c2], options="metacopy=on")
    scanned.clear()
    assert e.stack_findings() == []
    assert (b"m",) in scanned
