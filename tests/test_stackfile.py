"""Stack files: loading, errors, and the dump -> load round trip (no root needed)."""

from __future__ import annotations

import os

import pytest

from ovlinspect.model.layers import DiskLayer, MemoryLayer, Node, iter_tree
from ovlinspect.model.stack import Stack
from ovlinspect.sources.stackfile import (
    INLINE_LIMIT,
    StackFileError,
    dump_stack,
    write_stack,
    load_stack,
    loads_stack,
    stack_from_dict,
)

BASE = '''
version = 1
description = "metacopy shadowing"
options = "metacopy=on"

[params]
metacopy = "N"
redirect_max = 256

[[layer]]
role = "lower"
name = "A"
[[layer.entry]]
path = "/foo"
type = "file"
size = 18
xattrs = { "trusted.overlay.redirect" = "/1e/abcdef", "trusted.overlay.metacopy" = "" }

[[layer]]
role = "lower"
name = "B"
[[layer.entry]]
path = "/1e"
type = "dir"
mode = "0700"
uid = 12
gid = 34
xattrs = { "trusted.overlay.opaque" = "y" }
[[layer.entry]]
path = "/1e/wh"
type = "whiteout"
[[layer.entry]]
path = "/link"
type = "symlink"
target = "1e/../x"
[[layer.entry]]
path = "/p"
type = "fifo"
[[layer.entry]]
path = "/dev/null"
type = "chardev"
rdev = "1:3"
mode = 438

[[layer]]
role = "data"
name = "C"
[[layer.entry]]
path = "/1e/abcdef"
type = "file"
content = "hello data from C\\n"
'''


def nodes_of(layer) -> dict:
    root = layer.node(())
    return {(): root, **dict(iter_tree(layer))}


def reads_of(layer) -> dict:
    return {p: layer.read(p, 1 << 20) for p, n in iter_tree(layer) if n.is_reg}


def test_load_inline_layers() -> None:
    s = loads_stack(BASE, "/nonexistent")
    assert s.description == "metacopy shadowing"
    assert s.options == "metacopy=on"
    assert s.params == {"metacopy": "N", "redirect_max": "256"}
    assert [r for r, _ in s.layers] == ["lower", "lower", "data"]
    a, b, c = (l for _, l in s.layers)
    assert isinstance(a, MemoryLayer) and a.label == "A"
    foo = a.node((b"foo",))
    assert foo == Node("file", 0o644, 18, xattrs=((b"trusted.overlay.redirect", b"/1e/abcdef"),
                                                  (b"trusted.overlay.metacopy", b"")))
    assert a.read((b"foo",)) == b"\0" * 18
    d = b.node((b"1e",))
    assert (d.kind, d.mode, d.uid, d.gid) == ("dir", 0o700, 12, 34)
    assert d.xattr(b"trusted.overlay.opaque") == b"y"
    wh = b.node((b"1e", b"wh"))
    assert wh.is_whiteout_dev and wh.mode == 0o644
    assert b.node((b"link",)) == Node("symlink", 0o777, 7, target=b"1e/../x")
    assert b.node((b"p",)).kind == "fifo"
    assert b.node((b"dev", b"null")) == Node("chardev", 0o666, 0, rdev=(1, 3))
    assert b.node((b"dev",)) == Node("dir", 0o755)  # missing parents become plain directories
    assert c.read((b"1e", b"abcdef")) == b"hello data from C\n"
    assert c.node((b"1e", b"abcdef")).size == 18


def test_sparse_content_and_hex_forms() -> None:
    s = loads_stack('''
[[layer]]
role = "lower"
[[layer.entry]]
path_hex = "2f6e616d65ff"
type = "file"
content_hex = "00ff41"
size = 10
xattrs_hex = { "trusted.overlay.metacopy" = "00240001", "hex:757365722e78ff" = "ff" }
[[layer.entry]]
path = "/s"
type = "symlink"
target_hex = "ff2f61"
''', ".")
    layer = s.lowers[0]
    n = layer.node((b"name\xff",))
    assert n.size == 10
    assert layer.read((b"name\xff",)) == b"\x00\xffA" + b"\0" * 7
    assert dict(n.xattrs) == {b"trusted.overlay.metacopy": bytes.fromhex("00240001"), b"user.x\xff": b"\xff"}
    assert layer.node((b"s",)).target == b"\xff/a"
    assert s.lowers[0].label == "lower0"


def test_disk_layers_relative_to_the_file(tmp_path) -> None:
    (tmp_path / "layers" / "A" / "sub").mkdir(parents=True)
    (tmp_path / "layers" / "A" / "sub" / "f").write_bytes(b"disk\n")
    (tmp_path / "layers" / "B").mkdir()
    sf = tmp_path / "stack.toml"
    sf.write_text('[[layer]]\nrole = "lower"\nname = "A"\npath = "layers/A"\n'
                  '[[layer]]\nrole = "lower"\nname = "B"\npath = "layers/B"\n')
    s = load_stack(sf)
    try:
        assert isinstance(s.lowers[0], DiskLayer)
        assert s.lowers[0].path == str(tmp_path / "layers" / "A")
        assert s.lowers[0].label == "A"
        assert s.lowers[0].read((b"sub", b"f")) == b"disk\n"
        assert s.source == str(sf)
    finally:
        s.close()


@pytest.mark.parametrize(
    "text, message",
    [
        ("version = 1\n[[layer]\n", "malformed TOML"),
        ('version = 2\n[[layer]]\nrole = "lower"\n', "unsupported version 2"),
        ('[[layer]]\nrole = "middle"\n', "unknown role 'middle'"),
        ('[[layer]]\nrole = "lower"\nbogus = 1\n', "unknown key 'bogus'"),
        ("version = 1\n", "no lower layer"),
        ('[[layer]]\nrole = "lower"\n[[layer]]\nrole = "upper"\n', "the upper layer must come first"),
        ('[[layer]]\nrole = "data"\n[[layer]]\nrole = "lower"\n', "regular lower layers cannot follow data layers"),
        ('[[layer]]\nrole = "upper"\n[[layer]]\nrole = "upper"\n', "at most one upper layer"),
        ('[[layer]]\nrole = "lower"\npath = "nowhere"\n', "does not exist"),
        ('[[layer]]\nrole = "lower"\npath = "x"\n[[layer.entry]]\npath = "/a"\ntype = "dir"\n', "only one of path"),
        ('[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/a"\ntype = "file"\nmode = "0999"\n', "bad mode '0999'"),
        ('[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/a"\ntype = "file"\nmode = 70000\n', "bad mode"),
        ('[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/a"\ntype = "door"\n', "unknown type 'door'"),
        ('[[layer]]\nrole = "lower"\n[[layer.entry]]\ntype = "dir"\n', "entry has no path"),
        ('[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "a"\ntype = "dir"\n', "must be absolute"),
        ('[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/a/../b"\ntype = "dir"\n', "'..'"),
        ('[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/a"\ntype = "file"\n'
         '[[layer.entry]]\npath = "/a/b"\ntype = "file"\n', "parent /a is a file"),
        ('[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/a/b"\ntype = "file"\n'
         '[[layer.entry]]\npath = "/a"\ntype = "symlink"\ntarget = "x"\n', "earlier entries put files below it"),
        ('[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/a"\ntype = "dir"\n'
         '[[layer.entry]]\npath = "/a"\ntype = "dir"\n', "duplicate entry"),
        ('[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/"\ntype = "file"\n', "root must be a directory"),
        ('[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/a"\ntype = "file"\ncontent = "abc"\nsize = 2\n',
         "smaller than the content"),
        ('[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/a"\ntype = "symlink"\n', "needs a non-empty target"),
        ('[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/a"\ntype = "dir"\ncontent = "x"\n', "content given for a dir"),
        ('[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/a"\ntype = "file"\ncontent_hex = "zz"\n', "not valid hex"),
        ('[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/a"\ntype = "whiteout"\nrdev = "1:3"\n', "0:0"),
        ('[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/a"\ntype = "chardev"\nrdev = "x"\n', "bad rdev"),
        ('[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/a"\ntype = "file"\nuid = -1\n', "uid out of range"),
        ('[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/a"\ntype = "file"\nxattrs = { x = 1 }\n',
         "value must be a string"),
        ('[[layer]]\nrole = "lower"\ndump = "none.dump"\n', "none.dump"),
    ],
)
def test_errors_are_one_line_and_name_the_file(text: str, message: str, tmp_path) -> None:
    sf = tmp_path / "bad.toml"
    sf.write_text(text)
    with pytest.raises(StackFileError) as info:
        load_stack(sf)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(str(sf) + ": ")
    assert message in msg
    assert isinstance(info.value, ValueError)


def test_unreadable_and_non_utf8_files(tmp_path) -> None:
    with pytest.raises(StackFileError, match="cannot read stack file"):
        load_stack(tmp_path / "missing.toml")
    sf = tmp_path / "latin1.toml"
    sf.write_bytes(b'description = "\xe9"\n')
    with pytest.raises(StackFileError, match="not UTF-8"):
        load_stack(sf)


def assert_same_stack(a: Stack, b: Stack) -> None:
    assert [r for r, _ in a.layers] == [r for r, _ in b.layers]
    assert a.options == b.options and a.description == b.description and a.params == b.params
    for (_, la), (_, lb) in zip(a.layers, b.layers):
        assert nodes_of(la) == nodes_of(lb)
        assert reads_of(la) == reads_of(lb)


def test_round_trip_memory() -> None:
    s = loads_stack(BASE, ".")
    text = dump_stack(s)
    s2 = loads_stack(text, ".")
    assert_same_stack(s, s2)
    assert dump_stack(s2) == text


def test_round_trip_awkward_bytes() -> None:
    layer = MemoryLayer(label="odd name/with slash")
    layer.add((b"caf\xc3\xa9",), Node("file", 0o600, 3), b"\x00\x01\x02")
    layer.add((b"bad\xff", b"q\"uote\\"), Node("file", 0o4755, 6, uid=7, gid=8), b"tab\t\n\x7f")
    layer.add((b"nl\nname",), Node("symlink", 0o777, 4, target=b"\xfe\n\x00x"))
    layer.add((b"big",), Node("file", 0o644, 10 * INLINE_LIMIT), b"head" + b"\0" * (INLINE_LIMIT - 4))
    layer.add((b"zeros",), Node("file", 0o644, 100), b"\0" * 100)
    layer.add((b"v",), Node("file", 0o644, 4, verity=(1, b"\x01" * 32)), b"abcd")
    layer.add((b"x",), Node("dir", 0o1777, xattrs=((b"trusted.overlay.opaque", b"x"),
                                                    (b"trusted.overlay.redirect", b"\xff\x00"),
                                                    (b"user.\xffname", b"v"),
                                                    (b"user.nl", b"a\nb"))))
    layer.add((b"x", b"blk"), Node("blockdev", 0o600, rdev=(8, 1)))
    layer.add((b"x", b"sock"), Node("socket", 0o755))
    layer.nodes[()] = Node("dir", 0o700, xattrs=((b"trusted.overlay.opaque", b"y"),))
    s = Stack(lowers=[layer], data=[MemoryLayer(label="D")], upper=MemoryLayer(label="U"),
              options="metacopy=on,lowerdir=\"x\"", description="line one\nline \"two\"", params={"a-b": "Y"})
    text = dump_stack(s)
    s2 = loads_stack(text, ".")
    assert_same_stack(s, s2)
    assert dump_stack(s2) == text


def test_round_trip_disk_layer(tmp_path) -> None:
    root = tmp_path / "A"
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"some bytes\x00\xff")
    (root / "big").write_bytes(b"x" * (INLINE_LIMIT + 1))
    with open(root / "sparse", "wb") as fh:
        fh.truncate(5000)
    (root / "link").symlink_to("d/f")
    os.mkfifo(root / "fifo")
    os.chmod(root / "d" / "e", 0o711)
    layer = DiskLayer(str(root), label="A")
    s = Stack(lowers=[layer, MemoryLayer(label="B")])
    try:
        text = dump_stack(s)
        s2 = loads_stack(text, "/")
        assert nodes_of(s2.lowers[0]) == nodes_of(layer)
        r2 = reads_of(s2.lowers[0])
        assert r2[(b"d", b"f")] == b"some bytes\x00\xff"
        assert r2[(b"sparse",)] == b"\0" * 5000
        assert r2[(b"big",)] == b"x" * (INLINE_LIMIT + 1)  # larger than the inline limit: in full
        assert "content_hex = " in text.split('path = "/big"')[1].split("[[")[0]
        assert s2.lowers[0].label == "A"
    finally:
        s.close()


def test_stack_from_dict() -> None:
    s = stack_from_dict({"layer": [{"role": "lower", "name": "A", "entry": [{"path": "/x", "type": "dir"}]},
                                   {"role": "data", "name": "C"}]})
    assert s.lowers[0].node((b"x",)).is_dir
    assert s.data[0].label == "C"


def test_build_memory_stack(tmp_path) -> None:
    from ovlinspect.live.build import build_stack

    s = loads_stack('''
options = "metacopy=on"
[[layer]]
role = "upper"
name = "U"
[[layer.entry]]
path = "/d/f"
type = "file"
content = "U:/d/f"
size = 4096
mode = "0600"
[[layer.entry]]
path = "/d"
type = "dir"
mode = "0500"
[[layer]]
role = "lower"
name = "A"
[[layer.entry]]
path = "/s"
type = "symlink"
target = "d/f"
[[layer.entry]]
path = "/p"
type = "fifo"
[[layer]]
role = "data"
name = "a:b,c"
''', ".")
    built = build_stack(s, str(tmp_path / "b"))
    assert [os.path.basename(d) for d in built.layer_dirs] == ["0-U", "1-A", "2-a_b_c"]
    assert built.upper == built.layer_dirs[0] and built.workdir == str(tmp_path / "b" / "work")
    f = os.path.join(built.upper, "d", "f")
    assert open(f, "rb").read() == b"U:/d/f" + b"\0" * (4096 - 6)
    assert os.stat(f).st_mode & 0o7777 == 0o600
    assert os.stat(os.path.join(built.upper, "d")).st_mode & 0o7777 == 0o500
    assert os.readlink(os.path.join(built.lowers[0], "s")) == "d/f"
    assert built.lowerdir_string() == f"{built.lowers[0]}::{built.data[0]}"
    with pytest.raises(Exception, match="not empty"):
        build_stack(s, str(tmp_path / "b"))


def test_build_needs_root_for_trusted_xattrs(tmp_path, monkeypatch) -> None:
    from ovlinspect.live import build

    monkeypatch.setattr(build.os, "geteuid", lambda: 1000)
    s = loads_stack(BASE, ".")
    with pytest.raises(build.BuildError, match="needs root.*trusted.overlay"):
        build.build_stack(s, str(tmp_path / "b"))


def _big_tree(root) -> dict:
    """A disk layer with files around and far beyond the inline limit; their bytes by name."""
    import random

    rng = random.Random(3)
    want = {
        "at-limit": bytes(rng.randrange(256) for _ in range(INLINE_LIMIT)),
        "over": b"y" * (INLINE_LIMIT + 1),
        "multi-chunk": rng.randbytes(3 * 1024 * 1024 + 17),
        "zeros": b"\0" * (5 * INLINE_LIMIT),
        "tail-zeros": b"head" + b"\0" * (2 * INLINE_LIMIT),
    }
    (root / "sub").mkdir(parents=True)
    for name, data in want.items():
        (root / "sub" / name).write_bytes(data)
    (root / "sub" / "copy").write_bytes(want["multi-chunk"])  # the same object twice
    return want


def _entry_of(text: str, path: str) -> str:
    return text.split(f'path = "{path}"')[1].split("[[")[0]


def test_export_large_files_in_full_inline(tmp_path) -> None:
    want = _big_tree(tmp_path / "A")
    layer = DiskLayer(str(tmp_path / "A"), label="A")
    s = Stack(lowers=[layer])
    try:
        parts = []
        stored, incomplete = write_stack(s, parts.append)
        text = "".join(parts)
        assert (stored, incomplete) == (0, 0)
        assert max(len(p) for p in parts) <= 2 * (1 << 20)  # written a chunk at a time
        s2 = loads_stack(text, "/")
        for name, data in want.items():
            assert s2.lowers[0].read((b"sub", name.encode()), 1 << 30) == data, name
        assert "content_hex" not in _entry_of(text, "/sub/zeros")  # all zeros: by size, sparse
        assert text == dump_stack(s)
    finally:
        s.close()


def test_export_large_files_to_an_object_store(tmp_path) -> None:
    import hashlib

    want = _big_tree(tmp_path / "A")
    layer = DiskLayer(str(tmp_path / "A"), label="A")
    s = Stack(lowers=[layer])
    objects = tmp_path / "objects"
    try:
        parts = []
        stored, incomplete = write_stack(s, parts.append, objects=str(objects))
        text = "".join(parts)
    finally:
        s.close()
    assert incomplete == 0 and stored == 4  # over, multi-chunk, tail-zeros, copy (same object as multi-chunk)
    files = sorted(p.relative_to(objects).as_posix() for p in objects.rglob("*") if p.is_file())
    digests = {hashlib.sha256(want[n]).hexdigest() for n in ("over", "multi-chunk", "tail-zeros")}
    assert files == sorted(f"{d[:2]}/{d[2:]}" for d in digests)
    for name in ("over", "multi-chunk", "tail-zeros"):
        d = hashlib.sha256(want[name]).hexdigest()
        assert f'object = "sha256:{d}"' in _entry_of(text, f"/sub/{name}")
        assert (objects / d[:2] / d[2:]).read_bytes() == want[name]
    assert "content" not in _entry_of(text, "/sub/over")
    assert "content_hex" in _entry_of(text, "/sub/at-limit")  # inline up to the limit, as before
    layer2 = loads_stack(text, "/").lowers[0]
    assert layer2.objects[(b"sub", b"over")] == hashlib.sha256(want["over"]).hexdigest()


def test_large_file_gone_or_shrunk_is_marked_incomplete(tmp_path) -> None:
    """A file that disappears or shrinks between the directory scan and its read is not
    exported as zeros: its entry says ``incomplete``."""
    _big_tree(tmp_path / "A")
    layer = DiskLayer(str(tmp_path / "A"), label="A")
    parts: list[str] = []

    def write(piece: str) -> None:
        if piece == 'path = "/sub/multi-chunk"':  # after the scan of /sub, before these files are read
            os.unlink(tmp_path / "A" / "sub" / "over")
            os.truncate(tmp_path / "A" / "sub" / "tail-zeros", 100)
        parts.append(piece)

    try:
        _, incomplete = write_stack(Stack(lowers=[layer]), write)
    finally:
        layer.close()
    text = "".join(parts)
    assert incomplete == 2
    assert 'incomplete = "cannot open: No such file or directory"' in _entry_of(text, "/sub/over")
    assert (f'incomplete = "read 100 of {2 * INLINE_LIMIT + 4} bytes (the file changed while it was read)"'
            in _entry_of(text, "/sub/tail-zeros"))
    assert loads_stack(text, "/").lowers[0].incomplete == {
        (b"sub", b"over"): "cannot open: No such file or directory",
        (b"sub", b"tail-zeros"): f"read 100 of {2 * INLINE_LIMIT + 4} bytes (the file changed while it was read)"}


@pytest.mark.parametrize("entry, error", [
    ('type = "file"\nobject = "md5:00"', "object must be"),
    ('type = "dir"\nobject = "sha256:' + "0" * 64 + '"', "object given for a dir"),
    ('type = "file"\ncontent = "x"\nobject = "sha256:' + "0" * 64 + '"', "content or object"),
    ('type = "file"\nincomplete = 3', "incomplete must be a string"),
])
def test_object_and_incomplete_keys_checked(entry, error) -> None:
    text = f'[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/f"\n{entry}\n'
    with pytest.raises(StackFileError, match=error):
        loads_stack(text, ".")


def test_toml_strings_escaped_as_before() -> None:
    """The fast escaping gives the text of the character-by-character one it replaced."""
    import random

    from ovlinspect.model.xattrs import safe
    from ovlinspect.sources.stackfile import _toml_str

    def slow(s: str) -> str:  # the escaping of commit 696da04, verbatim
        out = ['"']
        for ch in s:
            o = ord(ch)
            if ch == '"':
                out.append('\\"')
            elif ch == "\\":
                out.append("\\\\")
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\t":
                out.append("\\t")
            elif o < 0x20 or o == 0x7F:
                out.append(f"\\u{o:04x}")
            elif not ch.isprintable() and not 0xD800 <= o <= 0xDFFF:
                out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
            elif 0xD800 <= o <= 0xDFFF:
                out.append(safe(ch).replace("\\", "\\\\"))
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)

    rng = random.Random(11)
    pool = [chr(c) for c in range(0, 0x3000)] + ["\udcff", "\udc80", "\U0001f600", "\U000e0001", "\u2028", "\ufeff"]
    for _ in range(3000):
        s = "".join(rng.choice(pool) for _ in range(rng.randrange(0, 20)))
        assert _toml_str(s) == slow(s), repr(s)
    for s in ("", "plain", 'q"uote\\', "caf\u00e9", "\u00ad"):
        assert _toml_str(s) == slow(s)


def _everything(stack: Stack) -> list:
    out = []
    for role, layer in stack.layers:
        out.append((role, layer.label, nodes_of(layer), reads_of(layer),
                    dict(getattr(layer, "objects", {})), dict(getattr(layer, "incomplete", {}))))
    return [stack.options, stack.description, stack.params, out]


LAZY_CASES = {
    "base": BASE,
    "hand-written forms (read whole)": BASE + '''
[[layer]]
role = "lower"
name = "X"
[[layer.entry]]
path = "/m"
type = "file"
content = """two
[[layer.entry]]
lines"""
[layer.entry.xattrs]
"user.a" = "b"
''',
    "dotted header keys": 'params.metacopy = "N"\n' + BASE.replace('version = 1\n', ''),
}


@pytest.mark.parametrize("name", sorted(LAZY_CASES))
def test_lazy_load_same_stack(tmp_path, name) -> None:
    f = tmp_path / "s.toml"
    f.write_text(LAZY_CASES[name])
    try:
        whole = load_stack(f)
    except StackFileError as e:
        with pytest.raises(StackFileError) as lazy_err:
            load_stack(f, lazy=True)
        assert str(lazy_err.value) == str(e)
        return
    assert _everything(load_stack(f, lazy=True)) == _everything(whole)


def test_lazy_load_of_an_export_keeps_contents_in_the_file(tmp_path) -> None:
    want = _big_tree(tmp_path / "A")
    layer = DiskLayer(str(tmp_path / "A"), label="A")
    try:
        text = dump_stack(Stack(lowers=[layer, MemoryLayer(label="B")]))
    finally:
        layer.close()
    f = tmp_path / "s.toml"
    f.write_text(text)
    lazy, whole = load_stack(f, lazy=True), load_stack(f)
    assert _everything(lazy) == _everything(whole)
    contents = lazy.lowers[0].contents
    assert type(contents).__name__ == "_FileContents"  # no bytes held, only places in the file
    assert all(isinstance(v, tuple) for v in contents.refs.values())
    assert lazy.lowers[0].read((b"sub", b"multi-chunk"), 1 << 30) == want["multi-chunk"]


@pytest.mark.parametrize("bad, needle", [
    ('[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/a"\ntype = "nope"\n', "unknown type"),
    ('[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/a"\ntype = "file"\n[[layer.entry]]\npath = "/a"\ntype = "file"\n', "duplicate entry"),
    ('[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/a"\ntype = = "file"\n', "malformed TOML"),
    ('[[layer.entry]]\npath = "/a"\n', "array of tables"),
    ('version = 2\n[[layer]]\nrole = "lower"\n', "unsupported version"),
])
def test_lazy_load_same_errors(tmp_path, bad, needle) -> None:
    f = tmp_path / "s.toml"
    f.write_text(bad)
    with pytest.raises(StackFileError) as whole:
        load_stack(f)
    with pytest.raises(StackFileError) as lazy:
        load_stack(f, lazy=True)
    assert str(lazy.value) == str(whole.value)
    import re
    assert re.search(needle, str(whole.value))
