"""The UI's engine plumbing: clones for threads, walks in tree order, what-if option strings,
big directories in chunks, and disk layers."""

from __future__ import annotations

import os

from ui_helpers import settle

from ovlinspect.rules.engine import Engine
from ovlinspect.model.layers import DiskLayer, MemoryLayer, Node
from ovlinspect.sources.target import demo_stack
from ovlinspect.model.stack import Stack
from ovlinspect.ui.app import OvlInspectApp
from ovlinspect.ui.session import (
    CHUNK,
    EngineClone,
    Lister,
    current_choices,
    ordered_walk,
    redirect_target,
    union_walk,
    whatif_options,
)
from ui_stacks import KERNEL, PARAMS, engine, seed_stack


def test_whatif_options_replace_only_the_four_options():
    base = "metacopy=on,index=off,userxattr,redirect_dir=on"
    got = whatif_options(base, {"metacopy": "off", "redirect_dir": "follow", "userxattr": "off",
                                "verity": "on"})
    assert got == "index=off,metacopy=off,redirect_dir=follow,verity=on"
    assert "userxattr" in whatif_options("", {"userxattr": "on"}).split(",")


def test_current_choices_are_the_effective_values():
    e = Engine(demo_stack("seed"), kernel=KERNEL)
    assert current_choices(e) == {"metacopy": "on", "redirect_dir": "on", "userxattr": "off",
                                  "verity": "off", "kernel": "6.18"}


def test_kernel_whatif_predicts_the_older_kernel():
    """The seed stack without metacopy=on: 6.18 mounts it and refuses the metacopy at lookup
    (EPERM); 6.12 refuses the mount itself (both observed in the kernel VMs)."""
    from ovlinspect.ui.session import choice_values, whatif_engine

    base = Engine(demo_stack("seed"), kernel=KERNEL)
    assert {"6.1", "6.12", "6.18", "7.0"} <= set(choice_values(base)["kernel"])
    off = {**current_choices(base), "metacopy": "off"}
    on_618 = whatif_engine(base, off)
    assert on_618.mount_errno is None and on_618.explain("/foo").errno == "EPERM"
    on_612 = whatif_engine(base, {**off, "kernel": "6.12"})
    assert on_612.profile.name == "6.12" and on_612.profile.chosen_by == "what-if"
    assert on_612.mount_errno == "EINVAL"
    assert on_612.options.mount_log[-1] == "overlayfs: lower data-only dirs require metacopy support."


def test_clone_shares_memory_layers_and_reopens_disk_layers(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("x")
    disk = DiskLayer(str(tmp_path / "a"), "a")
    mem = MemoryLayer(label="m")
    e = Engine(Stack(lowers=[disk, mem], params=PARAMS), kernel=KERNEL)
    clone = EngineClone(e)
    try:
        assert clone.engine.stack.lowers[1] is mem
        assert clone.engine.stack.lowers[0] is not disk
        assert clone.engine.options == e.options
        assert clone.engine.resolve("/f").kind == "file"
    finally:
        clone.close()


def test_ordered_walk_is_the_tree_order():
    e = Engine(demo_stack("composefs"), kernel=KERNEL)
    paths = [r.path for r in ordered_walk(e)]
    assert paths == sorted(paths)  # pre-order of sorted names is the sorted order of paths
    assert set(paths) == {r.path for r in e.walk()} - {()}


def test_union_walk_sees_paths_of_both_engines():
    e = Engine(demo_stack("seed"), kernel=KERNEL)
    w = e.with_options("metacopy=off,redirect_dir=on")
    seen = {p: (a.errno, b.errno) for p, a, b in union_walk(e, w)}
    assert seen[(b"foo",)] == (None, "EPERM")
    assert (b"etc", b"hostname") in seen


def test_redirect_target_is_the_next_layer_of_the_chain():
    e = engine(seed_stack())
    res = e.resolve("/foo")
    tgt = redirect_target(res, 1)
    assert tgt is not None and tgt.layer == 2 and tgt.path == (b"1e", b"abcdef")


def _big_stack(n: int) -> Stack:
    m = MemoryLayer(label="big")
    for i in range(n):
        m.add((b"big", b"f%05d" % i), Node("file", 0o644, 1))
    m.add((b"small",), Node("file", 0o644, 1))
    return Stack(lowers=[m], params=PARAMS, source="test:big")


def test_lister_chunks_big_directories():
    lister = Lister(Engine(_big_stack(CHUNK + 20), kernel=KERNEL))
    listing = lister.list_dir((b"big",))
    assert len(listing.names) == CHUNK + 20 and len(listing.children) == CHUNK


async def test_disk_layers_in_worker_threads(tmp_path):
    for layer, files in (("a", {"etc/x": "A"}), ("b", {"etc/x": "B", "etc/y": "B", "z": "B"})):
        for name, content in files.items():
            p = tmp_path / layer / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(content)
    stack = Stack(lowers=[DiskLayer(str(tmp_path / "a"), "a"), DiskLayer(str(tmp_path / "b"), "b")],
                  params=PARAMS, source=str(tmp_path))
    app = OvlInspectApp(Engine(stack, kernel=KERNEL), auto_jump=False)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        app.goto_path((b"etc", b"y"))
        await settle(pilot)
        assert app.res is not None and app.res.metadata.layer == 2
        # every name below the root, as `check` counts them: etc, etc/x, etc/y, z
        assert app.problems.done and app.problems.scanned == 4
        assert app.problems.child_pid is not None  # disk layers: scanned in a child process
        await pilot.press("p")
        await pilot.pause()
        await pilot.press("escape")
    assert os.path.isdir(tmp_path / "a")


def test_a_whatif_types_only_what_the_mount_gave_or_the_user_changed():
    """A container's mount gives neither metacopy nor redirect_dir: metacopy=on as a what-if
    is the mount with metacopy=on typed, where the kernel turns redirect_dir on itself (a typed
    redirect_dir=follow beside it makes the kernel refuse the mount, and M said nothing could
    change)."""
    from ovlinspect.ui.session import whatif_engine

    up, lo = MemoryLayer(label="up"), MemoryLayer(label="lo")
    for layer in (up, lo):
        layer.add((), Node("dir", 0o755))
    base = Engine(Stack(lowers=[lo], upper=up, workdir="/w", options="", params=PARAMS), kernel=KERNEL)
    assert current_choices(base)["redirect_dir"] == "follow"
    on = whatif_engine(base, {**current_choices(base), "metacopy": "on"})
    assert on.mount_errno is None and on.stack.options == "metacopy=on"
    assert on.options.metacopy and on.options.redirect_dir == "on"
    # typed by the mount, a value stays typed
    given = Engine(Stack(lowers=[lo], upper=up, workdir="/w", options="redirect_dir=follow",
                         params=PARAMS), kernel=KERNEL)
    refused = whatif_engine(given, {**current_choices(given), "metacopy": "on"})
    assert refused.mount_errno == "EINVAL"


async def test_m_turns_metacopy_on_for_a_mount_that_gave_no_options():
    up, lo = MemoryLayer(label="up"), MemoryLayer(label="lo")
    for layer in (up, lo):
        layer.add((), Node("dir", 0o755))
    lo.add((b"f",), Node("file", 0o644, 3))
    app = OvlInspectApp(Engine(Stack(lowers=[lo], upper=up, workdir="/w", options="", params=PARAMS),
                               kernel=KERNEL), auto_jump=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("M")
        await settle(pilot)
        assert app.engine is not app.base and app.engine.options.metacopy
        assert app.engine.options.redirect_dir == "on" and app.engine.mount_errno is None
