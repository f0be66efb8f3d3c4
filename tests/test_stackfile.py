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
        assert r2[(b"big",)] == b"\0" * (INLINE_LIMIT + 1)  # too big to inline: size only
        assert "path = \"/big\"" in text and "content" not in text.split('path = "/big"')[1].split("[[")[0]
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
