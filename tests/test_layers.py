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


def _xattr_tree(tmp_path):
    """A directory with a user.overlay.* xattr on a file and a symlink inside (user xattrs:
    no root needed); None where the filesystem takes no user xattrs."""
    d = tmp_path / "layer"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f").write_bytes(b"abc")
    (d / "plain").write_bytes(b"")
    os.symlink("../plain", d / "sub" / "link")
    try:
        os.setxattr(d / "sub" / "f", "user.overlay.redirect", b"/x/y")
        os.setxattr(d / "sub" / "f", "user.other", b"not ours")
    except OSError:
        return None
    return d


def test_exclusive_reads_give_the_same_nodes_and_restore_the_working_directory(tmp_path):
    import threading

    from ovlinspect.model.layers import _CWD, exclusive_reads

    d = _xattr_tree(tmp_path)
    if d is None:
        pytest.skip("no user xattrs on this filesystem")
    shared = {p: dict(DiskLayer(str(d)).scan(p)) for p in [(), (b"sub",)]}
    cwd = os.getcwd()
    if threading.active_count() != 1:
        pytest.skip("other threads run: exclusive reads stay off")
    with exclusive_reads():
        assert _CWD.active
        layer = DiskLayer(str(d))
        alone = {p: dict(layer.scan(p)) for p in [(), (b"sub",)]}
        assert os.getcwd() != cwd  # moved to a layer directory to read its names
    assert os.getcwd() == cwd and not _CWD.active
    assert alone == shared
    f = alone[(b"sub",)][b"f"]
    assert f.xattrs == ((b"user.overlay.redirect", b"/x/y"),)  # only overlay names are read
    assert f.size == 3 and f.kind == "file"
    link = alone[(b"sub",)][b"link"]
    assert (link.kind, link.target) == ("symlink", b"../plain")  # read lazily, never followed
    assert alone[()][b"plain"].size == 0 and alone[()][b"sub"].kind == "dir"


def test_lazy_nodes_read_their_lstat_when_asked(tmp_path):
    (tmp_path / "f").write_bytes(b"12345")
    os.chmod(tmp_path / "f", 0o640)
    layer = DiskLayer(str(tmp_path))
    node = layer.scan(())[b"f"]
    st = os.lstat(tmp_path / "f")
    assert (node.kind, node.size, node.mode, node.uid, node.gid) == ("file", 5, 0o640, st.st_uid, st.st_gid)
    one = layer.node((b"f",))  # the same entry looked up alone: a complete node, equal fields
    assert [getattr(one, f) for f in ("kind", "mode", "size", "uid", "gid", "rdev", "target", "xattrs")] == \
        [getattr(node, f) for f in ("kind", "mode", "size", "uid", "gid", "rdev", "target", "xattrs")]


def test_directory_descriptors_are_kept_within_the_budget(tmp_path, monkeypatch):
    from ovlinspect.model import layers

    for i in range(40):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "f").write_bytes(b"x")
    layer = DiskLayer(str(tmp_path))
    before = layers._Kept.count
    for i in range(10):
        assert layer.node((f"d{i}".encode(), b"f")).kind == "file"
    assert layers._Kept.count == before + 10 and len(layer._fds) == 10  # all kept
    monkeypatch.setattr(layers._Kept, "budget", before + 16)
    for i in range(10, 40):
        assert layer.node((f"d{i}".encode(), b"f")).kind == "file"
    assert len(layer._fds) == 16 and layers._Kept.count == before + 16  # the oldest closed
    assert layer.node((b"d0", b"f")).kind == "file"  # reopened when needed again
    layer.close()
    assert layers._Kept.count == before


def test_the_layer_roots_own_xattrs_are_read(tmp_path):
    """The root is read through /proc/self/fd/N, a magic link that must be followed."""
    from ovlinspect.model.layers import exclusive_reads

    try:
        os.setxattr(tmp_path, "user.overlay.opaque", b"y")
    except OSError:
        pytest.skip("no user xattrs on this filesystem")
    assert DiskLayer(str(tmp_path)).node(()).xattrs == ((b"user.overlay.opaque", b"y"),)
    with exclusive_reads():
        assert DiskLayer(str(tmp_path)).node(()).xattrs == ((b"user.overlay.opaque", b"y"),)


def test_nodes_and_refs_pickle_whole():
    """Node and Ref pickle through their own __reduce__ (the view's scan process gets memory
    stacks and findings' places pickled): every field comes back, and a field added later
    must be added there too."""
    import dataclasses
    import pickle

    from ovlinspect.kernel.entry import Ref

    node = Node("symlink", 0o7777, 5, 1000, 1001, (8, 1), b"tgt", ((b"trusted.overlay.opaque", b"y"),),
                (2, b"\x01" * 64))
    assert len(node.__reduce__()[1]) == len(dataclasses.fields(Node))
    back = pickle.loads(pickle.dumps(node))
    assert back == node and all(getattr(back, f.name) == getattr(node, f.name)
                                for f in dataclasses.fields(Node))
    ref = Ref(3, (b"a", b"b\xff"))
    assert len(ref.__reduce__()[1]) == len(dataclasses.fields(Ref))
    assert pickle.loads(pickle.dumps(ref)) == ref
