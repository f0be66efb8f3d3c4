"""Fuzz suite (issue 8): stack files, composefs dumps, inspect JSON, option strings, mountinfo
lines, xattr values, CLI argv.

Hypothesis runs derandomized (a fixed seed, the same examples on every run) with
``OVLINSPECT_FUZZ_EXAMPLES`` examples per target (40 by default; ``bench/fuzz.py`` runs 10x).
Every input goes through the real command line in this process and must end as
:func:`fuzzing.check_outcome` says.
"""

from __future__ import annotations

import json
import os
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

import fuzzing
from fuzzing import call, check_outcome, settings_kw, tree_state

SETTINGS = settings(**settings_kw())

# ------------------------------------------------------------------------------ building blocks

#: Bytes that break parsers and terminals: separators, escapes, controls, invalid UTF-8.
NASTY = ["\0", "\n", "\r", "\t", "\x1b", "\x7f", "\x85", "\u2028", "\u202e", "\\", "\"", "'", ":",
         "::", ",", "=", "/", "//", "..", ".", " ", "-", "@", "#", "[", "]", "{", "}", "%",
         "\udcff", "é", "\\x", "\\040", "0", "9" * 30, "-1"]
nasty_text = st.lists(st.one_of(st.sampled_from(NASTY), st.text(max_size=4)), max_size=8).map("".join)
names = st.one_of(st.sampled_from(["a", "b", "foo", "1e", "abcdef", "..", ".", "d"]), nasty_text.filter(bool))
paths = st.lists(names, min_size=0, max_size=4).map(lambda xs: "/" + "/".join(xs))
numbers = st.one_of(st.integers(-3, 70000), st.sampled_from([2**31, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63)]),
                    st.integers())
XATTR_NAMES = ["trusted.overlay.metacopy", "trusted.overlay.redirect", "trusted.overlay.opaque",
               "trusted.overlay.whiteout", "trusted.overlay.origin", "trusted.overlay.overlay.opaque",
               "user.overlay.metacopy", "user.overlay.redirect", "user.overlay.opaque",
               "user.overlay.whiteout", "trusted.overlay.uuid", "trusted.overlay.impure", "security.x"]
xattr_values = st.one_of(st.sampled_from(["", "y", "x", "/", "/1e/abcdef", "a/b", "//", "\0"]),
                         nasty_text, st.binary(max_size=80).map(lambda b: b.decode("latin-1")))


def toml_str(s: str) -> str:
    out = []
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif o < 0x20 or o == 0x7F or 0xD800 <= o <= 0xDFFF:
            out.append(f"\\u{o:04x}" if not 0xD800 <= o <= 0xDFFF else "\\\\x")  # invalid \u escape in TOML
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{ " + ", ".join(f"{toml_str(k)} = {toml_value(x)}" for k, x in v.items()) + " }"


entry = st.fixed_dictionaries(
    {"path": paths, "type": st.sampled_from(["file", "dir", "symlink", "whiteout", "chardev", "fifo", "blockdev",
                                             "socket", "bogus"])},
    optional={
        "mode": st.one_of(st.sampled_from(["0644", "0755", "0000", "4755", "7777", "0o17", "9", ""]), numbers),
        "size": numbers, "content": nasty_text, "content_hex": st.sampled_from(["00ff", "zz", "0"]),
        "target": nasty_text, "rdev": st.one_of(st.sampled_from(["0:0", "1:3", "-1:0", "4096:0", "a:b", "1"]),
                                                st.lists(numbers, max_size=3)),
        "uid": numbers, "gid": numbers,
        "xattrs": st.dictionaries(st.one_of(st.sampled_from(XATTR_NAMES), nasty_text), xattr_values, max_size=4),
        "xattrs_hex": st.dictionaries(st.sampled_from(XATTR_NAMES + ["hex:ff00", "hex:zz"]),
                                      st.sampled_from(["", "00", "0004000100", "zz", "7", "2f6131"]), max_size=2),
        "verity": st.sampled_from([{"algo": 1, "digest_hex": "00" * 32}, {"algo": 99, "digest_hex": ""}, {}]),
        "path_hex": st.sampled_from(["2fff", "2f00", "", "2f2e2e"]),
    })
layer = st.fixed_dictionaries(
    {"role": st.sampled_from(["upper", "lower", "lower", "data", "middle"])},
    optional={"name": st.one_of(nasty_text, st.integers()), "entry": st.lists(entry, max_size=5)})
stack_doc = st.fixed_dictionaries(
    {"layer": st.lists(layer, min_size=0, max_size=4)},
    optional={"version": st.sampled_from([1, 1, 1, 2, 1.0, True, "1"]),
              "options": st.one_of(st.sampled_from(["metacopy=on", "metacopy=on,redirect_dir=on", "userxattr",
                                                    "verity=require", "redirect_dir=nofollow"]), nasty_text),
              "description": nasty_text,
              "params": st.dictionaries(st.sampled_from(["metacopy", "redirect_dir", "xino_auto", "bogus"]),
                                        st.one_of(st.sampled_from(["Y", "N", "on"]), st.booleans(), numbers),
                                        max_size=2)})


def doc_toml(doc: dict) -> str:
    lines = []
    for k in ("version", "options", "description"):
        if k in doc:
            lines.append(f"{k} = {toml_value(doc[k])}")
    if "params" in doc:
        lines.append("[params]")
        lines += [f"{toml_str(k)} = {toml_value(v)}" for k, v in doc["params"].items()]
    for lay in doc["layer"]:
        lines.append("[[layer]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in lay.items() if k != "entry"]
        for e in lay.get("entry", []):
            lines.append("[[layer.entry]]")
            lines += [f"{toml_str(k)} = {toml_value(v)}" for k, v in e.items()]
    return "\n".join(lines) + "\n"


def mutate(text: str, cuts: list[tuple[int, str]]) -> str:
    for pos, ins in cuts:
        pos %= len(text) + 1
        text = text[:pos] + ins + text[pos + 1:]
    return text


mutations = st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(NASTY + ["", "[[layer]]", "\n["])),
                     max_size=3)


def run_in_dir(files: dict[str, bytes], argvs: list[list[str]], kind: str, stdin: bytes = b"") -> None:
    """Write ``files`` in a fresh directory, run every argv there ({d} is the directory),
    check each outcome and that nothing in the directory changed (build: outside its dest)."""
    with tempfile.TemporaryDirectory(prefix="ovlfuzz-") as d:
        for name, data in files.items():
            p = os.path.join(d, name)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(data.replace(b"{d}", os.fsencode(d)))
        dest = os.path.join(d, "built")
        cwd = os.getcwd()
        os.chdir(d)  # a relative path in an argv lands here, where a write would be seen
        try:
            _run_all(d, dest, argvs, kind, stdin.replace(b"{d}", os.fsencode(d)))
        finally:
            os.chdir(cwd)


def _run_all(d: str, dest: str, argvs: list[list[str]], kind: str, stdin: bytes) -> None:
    for argv in argvs:
        argv = [a.replace("{d}", d) for a in argv]
        before = tree_state(d, skip=dest)
        rc, out, err, took = call(argv, stdin)
        check_outcome(argv, rc, out, err, took, kind)
        assert tree_state(d, skip=dest) == before, f"{argv}: wrote outside its target"


# ------------------------------------------------------------------------------ targets


@SETTINGS
@given(doc=stack_doc, cuts=mutations)
def test_fuzz_stack_files(doc, cuts):
    text = mutate(doc_toml(doc), cuts)
    run_in_dir({"s.toml": text.encode("utf-8", "surrogateescape"), "A/f": b"x"}, [
        ["check", "{d}/s.toml"],
        ["explain", "--json", "{d}/s.toml", "/", "/a", "/foo", "/1e/abcdef"],
        ["explain", "{d}/s.toml", "/", "/a/b"],
        ["export", "{d}/s.toml"],
        ["build", "{d}/s.toml", "{d}/built"],
    ], "stackfile")


DUMP_FIELDS = {
    "size": st.one_of(st.sampled_from(["0", "5", "4096"]), numbers.map(str), nasty_text),
    "mode": st.one_of(st.sampled_from(["100644", "40755", "20000", "120777", "@100644", "10644", "140755",
                                       "60644", "0", "77777777777777"]), nasty_text),
    "num": st.one_of(st.sampled_from(["0", "1", "1000"]), numbers.map(str), nasty_text),
    "mtime": st.one_of(st.sampled_from(["0.0", "-1.5", "1.999999999", "1.1000000000", "x"]), nasty_text),
    "opt": st.one_of(st.just("-"), st.sampled_from(["ab/cdef", "\\x2d", "\\xzz", "abc", "/1e/abcdef"]), nasty_text),
    "digest": st.one_of(st.just("-"), st.sampled_from(["00" * 32, "ff" * 64, "0", "zz"])),
}
dump_line = st.builds(
    lambda p, size, mode, nl, uid, gid, rdev, mt, payload, content, digest, xs: " ".join(
        [p, size, mode, nl, uid, gid, rdev, mt, payload, content, digest, *xs]),
    paths.map(lambda p: p.replace(" ", "\\x20").replace("\n", "\\n")), DUMP_FIELDS["size"], DUMP_FIELDS["mode"],
    DUMP_FIELDS["num"], DUMP_FIELDS["num"], DUMP_FIELDS["num"], DUMP_FIELDS["num"], DUMP_FIELDS["mtime"],
    DUMP_FIELDS["opt"], DUMP_FIELDS["opt"], DUMP_FIELDS["digest"],
    st.lists(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(XATTR_NAMES + ["user.x", ""]),
                       xattr_values.map(lambda v: v.replace(" ", "\\x20").replace("\n", "\\n"))), max_size=2))


@SETTINGS
@given(lines=st.lists(dump_line, max_size=6), root=st.booleans(), gz=st.sampled_from(["", "gzip", "cut"]))
def test_fuzz_composefs_dumps(lines, root, gz):
    import gzip

    text = ("/ 4096 40755 2 0 0 0 0.0 - - -\n" if root else "") + "\n".join(lines) + "\n"
    data = text.encode("utf-8", "surrogateescape")
    if gz:
        data = gzip.compress(data)
        if gz == "cut":
            data = data[: len(data) // 2]
    run_in_dir({"x.dump": data, "obj/ab/cdef": b"object"}, [
        ["check", "--lowerdir", "{d}/x.dump::{d}/obj", "-o", "metacopy=on,redirect_dir=on"],
        ["explain", "--json", "--lowerdir", "{d}/x.dump::{d}/obj", "/", "/a", "/foo"],
        ["export", "--lowerdir", "{d}/x.dump:{d}/obj"],
    ], "dump")


json_leaf = st.one_of(st.none(), st.booleans(), numbers, nasty_text, st.floats(allow_nan=True))
json_any = st.recursive(json_leaf, lambda c: st.one_of(st.lists(c, max_size=3),
                                                       st.dictionaries(nasty_text, c, max_size=3)), max_leaves=8)
lowerdir_value = st.one_of(st.sampled_from(["{d}/A:{d}/B", "{d}/A::{d}/B", "{d}/A\\:x:{d}/B", "::", ":", "",
                                            "{d}/A", "relative:{d}/B", "{d}/nope:{d}/A"]), nasty_text, json_any)
inspect_obj = st.fixed_dictionaries(
    {"GraphDriver": st.one_of(
        st.fixed_dictionaries({"Name": st.sampled_from(["overlay2", "overlay", "overlayfs", "btrfs", 5]),
                               "Data": st.fixed_dictionaries({}, optional={
                                   "LowerDir": lowerdir_value, "UpperDir": st.sampled_from(["{d}/U", "", "{d}/A", 3]),
                                   "WorkDir": st.sampled_from(["{d}/W", "{d}/nope"]),
                                   "MergedDir": nasty_text})}),
        json_any)},
    optional={"Id": json_any, "Name": json_any, "RepoTags": json_any, "State": json_any, "RootFS": json_any})


@SETTINGS
@given(objs=st.one_of(inspect_obj, st.lists(inspect_obj, max_size=3), json_any), cuts=mutations)
def test_fuzz_inspect_json(objs, cuts):
    text = mutate(json.dumps(objs), cuts)
    run_in_dir({"i.json": text.encode("utf-8", "surrogatepass"), "A/f": b"a", "B/g": b"b", "U/u": b"u",
                "W/.keep": b""}, [
        ["check", "--json", "--from-inspect", "{d}/i.json"],
        ["explain", "--from-inspect", "{d}/i.json", "/f"],
        ["check", "--from-inspect", "-"],
    ], "inspect", stdin=text.encode("utf-8", "surrogatepass"))


OPTION_WORDS = ["metacopy=on", "metacopy=off", "redirect_dir=on", "redirect_dir=follow", "redirect_dir=nofollow",
                "redirect_dir=off", "redirect_dir=bogus", "userxattr", "verity=on", "verity=require", "verity=off",
                "xino=on", "index=on", "nfs_export=on", "uuid=null", "volatile", "ro", "lowerdir=x", "upperdir=",
                "default_permissions", "metacopy", ",", "=", "metacopy=on=on"]


@SETTINGS
@given(opts=st.lists(st.one_of(st.sampled_from(OPTION_WORDS), nasty_text), max_size=5).map(",".join),
       lower=st.lists(st.one_of(st.sampled_from(["{d}/A", "{d}/B", "{d}/x.dump", "{d}/A/f", "{d}/nope", "", ":",
                                                 "\\:"]), nasty_text), min_size=1, max_size=4),
       seps=st.lists(st.sampled_from([":", "::", ":::"]), max_size=4),
       upper=st.sampled_from([None, "{d}/U", "{d}/A", "{d}/nope"]),
       work=st.sampled_from([None, "{d}/W", "{d}/U/w", "{d}/nope", "{d}/A/f"]))
def test_fuzz_option_strings(opts, lower, seps, upper, work):
    lowerdir = lower[0] + "".join(s + p for s, p in zip(seps, lower[1:]))
    extra = (["--upperdir", upper] if upper else []) + (["--workdir", work] if work else [])
    run_in_dir({"A/f": b"a", "B/g": b"b", "U/u": b"u", "W/.keep": b"",
                "x.dump": b"/ 4096 40755 2 0 0 0 0.0 - - -\n"}, [
        ["check", "--json", "--lowerdir", lowerdir, *extra, "-o", opts],
        ["explain", "--lowerdir", lowerdir, *extra, "-o", opts, "/", "/f"],
    ], "options")


mi_field = st.one_of(st.sampled_from(["/", "/mnt/a", "/mnt/a\\040b", "\\134", "\\012", "\\777", "-", ""]), nasty_text)
mi_super = st.lists(st.one_of(st.sampled_from(["rw", "ro", "lowerdir=/l/A:/l/B", "lowerdir=/l/A::/l/C",
                                               "lowerdir+=/l/A", "datadir+=/l/C", "upperdir=/u", "workdir=/w",
                                               "redirect_dir=on", "metacopy=on", "userxattr", "lowerdir=\\054",
                                               "lowerdir=::", "lowerdir="]), nasty_text), max_size=5).map(",".join)
mi_line = st.builds(
    lambda a, b, mm, root, mp, mo, opt, fs, src, sup: f"{a} {b} {mm} {root} {mp} {mo} {opt}- {fs} {src} {sup}",
    numbers, numbers, st.sampled_from(["0:1", "254:0", "x"]), mi_field, mi_field, st.sampled_from(["rw", "ro,nosuid"]),
    st.sampled_from(["", "shared:1 ", "master:2 propagate_from:1 "]),
    st.sampled_from(["overlay", "ext4", "tmpfs", "over lay"]), mi_field, mi_super)


@SETTINGS
@given(lines=st.lists(st.one_of(mi_line, nasty_text), max_size=5), cuts=mutations)
def test_fuzz_mountinfo_lines(lines, cuts):
    """parse_mountinfo: entries, or a ValueError naming the line; every byte but \\n kept."""
    from ovlinspect.sources.mountinfo import parse_mountinfo, unescape_octal

    text = mutate("\n".join(lines), cuts)
    fuzzing.STATS["mountinfo"] = fuzzing.STATS.get("mountinfo", 0) + 1
    try:
        entries = parse_mountinfo(text)
    except ValueError as e:
        assert str(e).startswith("mountinfo line "), e
        return
    lines = [line for line in text.split("\n") if line]
    assert len(entries) == len(lines)  # split on \n only: every other character is kept
    for e, line in zip(entries, lines):
        assert e.mountpoint == unescape_octal(line.split(" ")[4])
        for p in e.lowers + e.datas:
            assert isinstance(p, str)


@SETTINGS
@given(xs=st.lists(st.tuples(st.one_of(st.sampled_from([n.encode() for n in XATTR_NAMES]), st.binary(max_size=30).map(
    lambda b: b"trusted.overlay." + b)), st.one_of(st.binary(max_size=100), st.sampled_from(
        [b"", b"y", b"x", b"/a/b", b"a", b"\0", bytes(4), bytes([0, 36, 0, 1]) + bytes(32),
         bytes([0, 68, 0, 2]) + bytes(64), bytes([1, 5, 0, 9, 0])]))), max_size=5),
   kind=st.sampled_from(["file", "dir", "symlink", "chardev", "fifo"]), size=st.integers(0, 2**63 - 1),
   prefix=st.sampled_from([b"trusted.overlay.", b"user.overlay."]), root=st.booleans())
def test_fuzz_xattr_values(xs, kind, size, prefix, root):
    """The decoders: every xattr value gives printable summaries and notes, never an exception;
    and a whole stack carrying them goes through explain and check."""
    from ovlinspect.model.layers import Node
    from ovlinspect.model.xattrs import decode_xattrs

    node = Node(kind, 0o644, size, xattrs=tuple(xs))
    for x in decode_xattrs(node, prefix, root=root):
        assert x.summary.isprintable() and x.note.isprintable(), x
    entries = [{"path": "/f", "type": kind if kind != "chardev" else "whiteout", "size": size if kind in ("file", "dir") else 0,
                "xattrs_hex": {("hex:" + n.hex()): v.hex() for n, v in dict(xs).items()}}]
    if kind == "symlink":
        entries[0]["target"] = "t"
    doc = {"version": 1, "options": "metacopy=on,redirect_dir=on" if prefix.startswith(b"t") else "userxattr",
           "layer": [{"role": "lower", "name": "A", "entry": entries},
                     {"role": "lower", "name": "B", "entry": [{"path": "/a/b", "type": "file"}]}]}
    run_in_dir({"s.toml": doc_toml(doc).encode()}, [
        ["explain", "--json", "{d}/s.toml", "/f", "/a/b"], ["explain", "{d}/s.toml", "/f"], ["check", "{d}/s.toml"],
    ], "xattrs")


ARGV_WORDS = ["explain", "check", "export", "build", "rules", "--json", "--lowerdir", "--upperdir", "--workdir",
              "-o", "--from-inspect", "--pid", "--layer-root", "--observe", "--help", "-h", "demo:seed",
              "demo:nope", "demo:", "{d}/s.toml", "{d}/A", "{d}/nope.toml", "/", "/foo", "-", "--", "1", "0"]


@SETTINGS
@given(argv=st.lists(st.one_of(st.sampled_from(ARGV_WORDS), nasty_text), max_size=7),
       first=st.sampled_from(["explain", "check", "export", "rules", "--help", "-h", "demo"]))
def test_fuzz_cli_argv(argv, first):
    if first == "demo":  # without --list, `demo` opens the interactive view: not a CLI outcome
        argv = ["--list"]
    argv = [first, *argv]  # (build writes by design: fuzzed with a fixed destination above)
    run_in_dir({"s.toml": b'version = 1\n[[layer]]\nrole = "lower"\n[[layer]]\nrole = "lower"\n', "A/f": b"a"},
               [argv], "argv")
