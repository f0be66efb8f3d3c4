"""The indexed dump layer against the eager loader it replaced (tests/cfs_reference.py).

Random dumps, valid and broken in every way the parser knows, go through both: the same
error message (so the same first bad line), or layers that answer every question the same
(nodes, listings in order, contents, image xattrs, dump entries, object paths).
"""

from __future__ import annotations

import random

import pytest

import cfs_reference as ref
from ovlinspect.sources import composefs
from ovlinspect.sources.composefs import DumpError, load_dump

DIG64 = "ab" * 32
DIG128 = "cd" * 64

NAMES = ["a", "b", "lib", ".hidden", "..x", "a\\x20b", "x" * 255, "t\\tab", "back\\\\slash",
         "00", "0a", "ff", "e=q", "dash-", "\\x2d", "\\xe9t\\xc3\\xa9"]
BAD_NAMES = ["sl\\x2fash", "y" * 256, ".", "..", "\\x00", "\\q", "\\x4"]


def _name(rng: random.Random, broken: float) -> str:
    if rng.random() < broken / 3:
        return rng.choice(BAD_NAMES)
    return rng.choice(NAMES) if rng.random() < 0.3 else rng.choice("abcdefgh") + str(rng.randrange(5))


def _field(rng: random.Random, choices: list[str]) -> str:
    return rng.choice(choices)


def random_dump(rng: random.Random, n: int, broken: float) -> str:
    dirs = ["/"]
    paths = ["/"]
    lines = ["/ 4096 40755 2 0 0 0 1.0 - - -" + rng.choice(["", " security.selinux=ctx\\x00", " trusted.overlay.opaque=z"])]
    for _ in range(n):
        parent = rng.choice(dirs)
        if rng.random() < broken / 3:
            parent = rng.choice(paths)  # maybe a file
        path = (parent.rstrip("/") + "/" + _name(rng, broken)) if rng.random() > broken / 4 else rng.choice(paths + ["/zz/top", "rel", "//a", "/a/"])
        if path in paths and rng.random() >= broken:
            path += f"-{len(paths)}"
        kind = rng.choices(["dir", "file", "inline", "link", "hard", "wh", "dev", "fifo"], [3, 6, 3, 2, 2, 1, 1, 1])[0]
        size, mode, rdev, payload, content, digest = "0", "100644", "0", "-", "-", "-"
        if kind == "dir":
            mode, size = rng.choice(["40755", "40700", "41777"]), "4096"
        elif kind == "file":
            size = str(rng.choice([1, 4096, 10**6]))
            payload = rng.choice(["-", "ab/cdef", "/ab/cd", "\\x61b/c"])
            digest = rng.choice(["-", DIG64, DIG128] + [DIG64[:-2], "zz" * 32] * (rng.random() < broken))
        elif kind == "inline":
            content = rng.choice(["abc", "a\\nb", "\\x00\\xff", "x\\\\y", "\\x2d", "-x", "\\\\x41"])
            size = str(len(ref._unescape(content.encode(), 1, "c")) + (rng.random() < broken))
        elif kind == "link":
            mode, payload, size = "120777", rng.choice(["target", "/abs/t", "-", "a\\x20b"]), "6"
        elif kind == "hard":
            mode = "@" + rng.choice(["100644", "100644", "40755", "20000"])
            payload = rng.choice(paths)
            if rng.random() < broken:
                payload = rng.choice(["/nowhere", "-", path])
        elif kind == "wh":
            mode = "20000"
        elif kind == "dev":
            mode, rdev = rng.choice(["20666", "60660"]), rng.choice(["259", "0"] + [str(2**40)] * (rng.random() < broken))
        elif kind == "fifo":
            mode = "10644"
        if rng.random() < broken:  # break one field
            which = rng.randrange(8)
            if which == 0:
                size = rng.choice(["-1", "x", "9" * 20, "99999999999999999999999"])
            elif which == 1:
                mode = rng.choice(["8", "170000", "777777", "0", "@"])
            elif which == 2:
                rdev = rng.choice(["4294967295000", "-3"])
            elif which == 3:
                payload = rng.choice(["\\z", "a\\x", "a b"])
            elif which == 4:
                digest = rng.choice(["abc", "x" * 64])
            elif which == 5:
                content = "\\xZZ"
        mtime = rng.choice(["1.0", "-5.999999999", "1695372970.944925700"])
        if rng.random() < broken / 5:
            mtime = rng.choice(["1", "1.1000000000", "99999999999999999999.0"])
        nums = " ".join(rng.choice(["1", "0", "1000", "4294967295", "4294967296"]) if rng.random() < broken else "1"
                        for _ in range(3))
        line = f"{path} {size} {mode} {nums} {rdev} {mtime} {payload} {content} {digest}"
        for _ in range(rng.choice([0, 0, 1, 2])):
            line += " " + rng.choice(["user.a=b", "trusted.overlay.redirect=/x", "user.overlay.opaque=y",
                                      "user.k\\x3d=v=w", "user.e=", "security.selinux=s\\x00",
                                      "trusted.overlay.overlay.whiteouts="]
                                     + ["=novalue", "user.bad=\\x", "user.flag"] * (rng.random() < broken))
        if rng.random() < broken / 5:
            line += rng.choice([" ", "\r", ""])
        if rng.random() < 0.03:
            lines.append("")
        lines.append(line)
        paths.append(path)
        if kind == "dir":
            dirs.append(path)
    return "\n".join(lines) + rng.choice(["\n", ""])


def _outcome(load, text: str):
    try:
        return load(text)
    except (DumpError, ref.DumpError) as e:
        return str(e)


def _same_layer(old, new) -> None:
    assert new.root_whiteouts == old.root_whiteouts
    assert list(new.nodes) == list(old.nodes)
    for path, node in old.nodes.items():
        assert new.node(path) == node, path
        assert new.image_xattrs[path] == old.image_xattrs[path], path
        assert new.listdir(path) == old.listdir(path), path
        assert new.scan(path) == old.scan(path), path
        assert new.read(path, 1 << 20) == old.read(path, 1 << 20), path
        assert new.contents.get(path) == old.contents.get(path), path
        assert new.object_path(path) == old.object_path(path), path
        assert repr(new.entry(path)) == repr(old.entry(path)), path
        for missing in (path + (b"nope",), path + (b"..",)):
            assert new.node(missing) is None and old.node(missing) is None
    assert list(new.entries) == list(old.entries)


@pytest.mark.parametrize("seed", range(300))
def test_random_dumps_same_as_eager_loader(seed):
    rng = random.Random(seed)
    text = random_dump(rng, rng.choice([3, 10, 40]), broken=rng.choice([0.0, 0.0, 0.05, 0.3]))
    old, new = _outcome(ref.load_dump, text), _outcome(load_dump, text)
    if isinstance(old, str) or isinstance(new, str):
        assert new == old
    else:
        _same_layer(old, new)


def test_random_dumps_reach_both_outcomes():
    """The generator is no straw man: it makes loadable dumps and every kind of error."""
    outcomes = [_outcome(ref.load_dump, random_dump(random.Random(s), 20, (0.0, 0.3)[s % 2])) for s in range(200)]
    errors = {o.split(": ", 1)[1].split(" ")[0] for o in outcomes if isinstance(o, str)}
    assert sum(not isinstance(o, str) for o in outcomes) > 20
    assert len(errors) > 8


def test_parse_dump_same_entries_as_eager_parser():
    for seed in range(50):
        rng = random.Random(1000 + seed)
        text = random_dump(rng, 30, 0.0)
        old, new = _outcome(ref.parse_dump, text), _outcome(composefs.parse_dump, text)
        assert repr(new) == repr(old)


def test_layer_keeps_no_parsed_line():
    """What the layer holds is the text and the index, not one object per line."""
    lines = ["/ 4096 40755 2 0 0 0 1.0 - - -", "/d 4096 40755 2 0 0 0 1.0 - - -"]
    lines += [f"/d/f{i} 12 100644 1 0 0 0 1.0 ab/{i:06d} - {DIG64}" for i in range(5000)]
    layer = load_dump("\n".join(lines) + "\n")
    assert len(layer.index) == 5002 and len(layer._answers) == 0
    assert len(layer.listdir((b"d",))) == 5000
    assert layer.node((b"d", b"f4999")).xattr(b"trusted.overlay.redirect") == b"/ab/004999"
    assert len(layer._answers) == 1 and len(layer._tables) <= 2
    for i in range(5000):
        layer.node((b"d", b"f%d" % i))
    assert len(layer._answers) <= layer.MAX_CACHED  # a bounded cache, not a copy


def test_fast_line_expression_keeps_path_bytes():
    """A line the one-expression check accepts has a PATH that is its own unescaped,
    normalized bytes (what the index uses as the key), as the field parser reads it."""
    matched = 0
    for seed in range(1500):
        text = random_dump(random.Random(seed), 3, 0.2)
        for i, line in enumerate(text.split("\n")[1:], 2):
            raw = line.encode()
            m = composefs._FAST_LINE.fullmatch(raw)
            if m is None:
                continue
            try:
                e = composefs._parse_line(raw, i)
            except DumpError as err:  # only what the index checks after the expression
                assert any(w in str(err) for w in ("MODE", "CONTENT is", "directory cannot be a hard link", "no target in PAYLOAD")), err
                continue
            matched += 1
            assert b"/" + b"/".join(e.path) == m.group(1)
    assert matched > 1000


def test_name_tables_bounded_by_names():
    """Tables of huge directories are dropped past MAX_TABLE_NAMES (the last one kept)."""
    lines = ["/ 4096 40755 2 0 0 0 1.0 - - -"]
    for d in range(4):
        lines.append(f"/d{d} 4096 40755 2 0 0 0 1.0 - - -")
        lines += [f"/d{d}/f{i} 0 100644 1 0 0 0 1.0 - - -" for i in range(3000)]
    layer = load_dump("\n".join(lines) + "\n")
    layer.MAX_TABLE_NAMES = 5000
    for d in range(4):
        assert layer.node((b"d%d" % d, b"f2999")).kind == "file"
        assert layer._table_names <= 5000 + 3000 and len(layer._tables) <= 2
    assert layer._table_names == sum(len(t) for t in layer._tables.values())
