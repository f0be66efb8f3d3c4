"""Safe layer access: nothing inside a layer is followed, opened or trusted."""

import os

import pytest

from ovlinspect.model.layers import DiskLayer, LayerError, MemoryLayer, Node


def test_layer_root_may_be_a_symlink_but_nothing_inside_is_followed(tmp_path):
    real = tmp_path / "diff"
    (real / "d").mkdir(parents=True)
    (real / "d" / "f").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    os.symlink(outside, real / "link")
    os.symlink(real, tmp_path / "short")  # like docker's overlay2/l/ABC -> ../<id>/diff
    layer = DiskLayer(str(tmp_path / "short"))
    assert layer.node((b"d", b"f")).kind == "file"
    assert layer.node((b"link",)).kind == "symlink"
    assert layer.node((b"link", b"secret")) is None  # never walks through the symlink
    assert layer.listdir((b"link",)) == []
    assert layer.read((b"link",)) == b""


def test_fifo_is_never_opened(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    layer = DiskLayer(str(tmp_path))
    assert layer.node((b"fifo",)).kind == "fifo"
    assert layer.read((b"fifo",)) == b""  # would block forever if it were opened for reading


def test_reads_are_bounded(tmp_path):
    (tmp_path / "big").write_bytes(b"a" * 100_000)
    assert len(DiskLayer(str(tmp_path)).read((b"big",), limit=10)) == 10


def test_bad_layer_paths(tmp_path):
    with pytest.raises(LayerError, match="does not exist"):
        DiskLayer(str(tmp_path / "nope"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(LayerError, match="not a directory"):
        DiskLayer(str(tmp_path / "file"))
    with pytest.raises(LayerError, match="not absolute"):
        DiskLayer("relative/dir")


def test_hostile_names_round_trip_as_bytes(tmp_path):
    name = b"[red]x\x1b[2J\xff"
    open(os.path.join(os.fsencode(tmp_path), name), "w").close()
    layer = DiskLayer(str(tmp_path))
    assert layer.listdir(()) == [name]
    assert layer.node((name,)).kind == "file"


def test_memory_layer_parents_and_listing():
    m = MemoryLayer()
    m.add((b"a", b"b", b"c"), Node("file", size=3), b"abc")
    assert m.node((b"a", b"b")).kind == "dir"
    assert m.listdir((b"a",)) == [b"b"]
    assert m.read((b"a", b"b", b"c"), 2) == b"ab"
    m.add((b"a", b"b", b"c"), Node("file", size=1), b"z")  # replacing keeps one listing entry
    assert m.listdir((b"a", b"b")) == [b"c"]
