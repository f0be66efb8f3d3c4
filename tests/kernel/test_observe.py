"""`explain --observe` on real mounts: it resolves paths as a program inside the merged root
does, reads and hashes what read() returns, compares owners, and names the evidence of a
disagreement (never "bug" where the layers changed under a mount that had cached the path)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from harness import run_cli

from ovlinspect.rules import engine as engine_mod
from ovlinspect.live import observe as obs
from ovlinspect.live.build import build_stack
from ovlinspect.sources.target import demo_stack, live_stack
from ovlinspect.sources.stackfile import stack_from_dict

pytestmark = pytest.mark.kernel



def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def mounted(doc: dict, tmpfs: str):
    built = build_stack(stack_from_dict(doc, "."), os.path.join(tmpfs, "layers"))
    target = os.path.join(tmpfs, "merged")
    os.mkdir(target)
    built.mount(target)
    return built, target


def layer(role: str, name: str, *entries: dict) -> dict:
    return {"role": role, "name": name, "entry": [{"type": "file", **e} for e in entries]}


def test_shadowed_file_is_observed_reading_b(tmpfs: str) -> None:
    built = build_stack(demo_stack("seed"), os.path.join(tmpfs, "layers"))
    target = os.path.join(tmpfs, "merged")
    os.mkdir(target)
    built.mount(target)
    try:
        b_file = os.path.join(built.dir_of("B"), "1e", "abcdef")
        c_file = os.path.join(built.dir_of("C"), "1e", "abcdef")
        assert sha(b_file) != sha(c_file)
        rc, out, err = run_cli(["explain", "--json", "--observe", target, "/foo"])
        assert rc == 0, err
        foo = json.loads(out)["paths"][0]
        assert foo["data"] == {"layer": 1, "path": "/1e/abcdef"}
        assert foo["observed"]["content"] == {"sha256": sha(b_file), "bytes": os.path.getsize(b_file),
                                              "truncated": False}
        assert foo["data_content"]["sha256"] == sha(b_file)
        assert foo["mismatches"] == [] and foo["evidence"] is None
        assert foo["observed"]["resolved_by"] == "openat2"
        rc, out, _ = run_cli(["explain", "--observe", target, "/foo"])
        line = next(l for l in out.splitlines() if l.lstrip().startswith("read()"))
        assert "the bytes of lower 1 (1-B):/1e/abcdef, as predicted" in line
        assert "shadowing observed" in line and "(matches the prediction)" in out
    finally:
        built.umount_all()


def test_layer_changed_after_the_mount_cached_the_path(tmpfs: str) -> None:
    """B gains /1e/abcdef after the mount looked /foo up and opened it: the prediction (B,
    shadowing) is right for the layers as they are, the mount still reads C: the evidence
    says the mount cached the path before the layers changed, not that ovlinspect is wrong."""
    doc = {"version": 1, "options": "metacopy=on", "layer": [
        layer("lower", "A", {"path": "/foo", "size": 18, "xattrs": {
            "trusted.overlay.metacopy": "", "trusted.overlay.redirect": "/1e/abcdef"}}),
        layer("lower", "B", {"path": "/other", "content": "B:/other\n"}),
        layer("data", "C", {"path": "/1e/abcdef", "content": "hello data from C\n"}),
    ]}
    built, target = mounted(doc, tmpfs)
    try:
        pinned = os.open(os.path.join(target, "foo"), os.O_RDONLY)  # looked up, data found, cached
        try:
            assert os.read(pinned, 100) == b"hello data from C\n"
            bdir = built.dir_of("B")
            os.mkdir(os.path.join(bdir, "1e"))
            with open(os.path.join(bdir, "1e", "abcdef"), "wb") as f:
                f.write(b"B: a file added after the mount\n")
            # the kernel, fresh: another mount of the same layers now reads B's file
            fresh = os.path.join(tmpfs, "fresh")
            os.mkdir(fresh)
            built.mount(fresh)
            with open(os.path.join(fresh, "foo"), "rb") as f:
                assert f.read() == b"B: a file added after the mount\n"
            rc, out, err = run_cli(["explain", "--json", "--observe", target, "/foo"])
            assert rc == 0, err
            foo = json.loads(out)["paths"][0]
            assert foo["data"] == {"layer": 1, "path": "/1e/abcdef"}
            assert foo["observed"]["content"]["sha256"] == sha(os.path.join(built.dir_of("C"), "1e", "abcdef"))
            content = [m for m in foo["mismatches"] if m.startswith("content:")]
            assert content and "the bytes of data 2 (2-C):/1e/abcdef, not those of lower 1 (1-B)" in content[0]
            assert "cached the path before its layers changed" in foo["evidence"]
            assert "bug" not in foo["evidence"]
            rc, out, _ = run_cli(["explain", "--observe", target, "/foo"])
            assert "MISMATCH  evidence: this overlay cached the path" in out
        finally:
            os.close(pinned)
    finally:
        built.umount_all()


def test_absolute_symlink_resolves_in_the_merged_root(tmpfs: str) -> None:
    """/lnk -> /etc and /deep/up -> ../../../../../etc stay inside the merged tree: the passwd
    read is the layer's, not the host's /etc/passwd."""
    doc = {"version": 1, "layer": [
        layer("lower", "A",
              {"path": "/lnk", "type": "symlink", "target": "/etc"},
              {"path": "/deep", "type": "dir"},
              {"path": "/deep/up", "type": "symlink", "target": "../../../../../etc"},
              {"path": "/etc", "type": "dir"},
              {"path": "/etc/passwd", "content": "root:x:0:0:inside the container:/root:/bin/sh\n",
               "mode": "0600", "uid": 0, "gid": 42}),
        layer("lower", "B", {"path": "/b", "content": "b\n"}),
    ]}
    built, target = mounted(doc, tmpfs)
    try:
        inside = os.path.join(built.dir_of("A"), "etc", "passwd")
        host = os.stat("/etc/passwd")
        assert (host.st_size, host.st_mode & 0o777) != (os.path.getsize(inside), 0o600)
        rc, out, err = run_cli(["explain", "--json", "--observe", target, "/lnk/passwd", "/deep/up/passwd"])
        assert rc == 0, err
        for p in json.loads(out)["paths"]:
            assert p["mismatches"] == [], p["mismatches"]
            o = p["observed"]
            assert (o["size"], o["mode"], o["gid"]) == (os.path.getsize(inside), 0o600, 42)
            assert o["content"]["sha256"] == sha(inside)
        # the user-space walk (where openat2 is missing) resolves the same way
        saved = obs._openat2_missing
        obs._openat2_missing = "openat2: ENOSYS (test)"
        try:
            rootfd = obs.open_root(target)
            try:
                for path in ((b"lnk", b"passwd"), (b"deep", b"up", b"passwd")):
                    o = obs.observe_at(rootfd, path)
                    assert o.resolved_by == "user-space walk (openat2: ENOSYS (test))"
                    assert o.content is not None and o.content.sha256 == sha(inside)
                    assert (o.uid, o.gid, o.mode) == (0, 42, 0o600)
                assert obs.observe_at(rootfd, (b"etc", b"passwd", b"x")).errno == "ENOTDIR"
            finally:
                os.close(rootfd)
        finally:
            obs._openat2_missing = saved
        rc, out, _ = run_cli(["explain", "--observe", target, "/lnk/passwd"])
        assert "(matches the prediction)" in out and "MISMATCH" not in out
    finally:
        built.umount_all()


def test_owner_compared(tmpfs: str) -> None:
    """A metacopy file's owner is its own, not the data file's; a chown in a layer is seen."""
    doc = {"version": 1, "options": "metacopy=on", "layer": [
        layer("lower", "A", {"path": "/m", "size": 4, "uid": 4321, "gid": 8765, "xattrs": {
            "trusted.overlay.metacopy": "", "trusted.overlay.redirect": "/d"}}),
        layer("lower", "B", {"path": "/d", "content": "dat\n", "uid": 1234, "gid": 5678},
              {"path": "/plain", "content": "p\n"}),
    ]}
    built, target = mounted(doc, tmpfs)
    try:
        os.chown(os.path.join(built.dir_of("B"), "plain"), 777, 888)
        rc, out, err = run_cli(["explain", "--json", "--observe", target, "/m", "/plain"])
        assert rc == 0, err
        m, plain = json.loads(out)["paths"]
        assert (m["uid"], m["gid"]) == (m["observed"]["uid"], m["observed"]["gid"]) == (4321, 8765)
        assert (plain["uid"], plain["gid"]) == (plain["observed"]["uid"], plain["observed"]["gid"]) == (777, 888)
        assert m["mismatches"] == [] and plain["mismatches"] == []
    finally:
        built.umount_all()


def test_bug_named_only_when_the_kernel_agrees_with_itself(tmpfs: str, monkeypatch) -> None:
    """An engine made wrong on purpose (it mispredicts the mode): the layers read the same
    twice and a fresh mount answers like this one, so the evidence points to ovlinspect."""
    built = build_stack(demo_stack("seed"), os.path.join(tmpfs, "layers"))
    target = os.path.join(tmpfs, "merged")
    os.mkdir(target)
    built.mount(target)

    class Wrong(engine_mod.Engine):
        def resolve(self, path):
            res = super().resolve(path)
            if res.errno is None:
                res.mode = 0o4711
            return res

    try:
        eng = Wrong(live_stack(target))
        res = eng.explain("/foo")
        ob = obs.observe(target, res.path)
        got = obs.compare(eng, res, ob)
        assert got[0] == "mode: predicted 4711, observed 0644"
        assert got[-1].startswith("evidence: bug in ovlinspect: a fresh mount of the same layers")
        # the same engine under a what-if: differences are expected, no blame
        got = obs.compare(eng, res, ob, whatif="metacopy=off")
        assert "what-if" in got[-1] and "bug" not in got[-1]
    finally:
        built.umount_all()


def _idmapped_clone(path: str, userns: str) -> int:
    """A detached idmapped copy of the mount at ``path`` (open_tree + mount_setattr)."""
    import ctypes

    from ovlinspect.live import mountapi

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    fd = mountapi.open_tree_clone(path)
    ns = os.open(userns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        attr = MountAttr(0x00100000, 0, 0, ns)  # MOUNT_ATTR_IDMAP
        r = mountapi._syscall(442, ctypes.c_int(fd), ctypes.c_char_p(b""), ctypes.c_uint(0x1000),  # AT_EMPTY_PATH
                              ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    finally:
        os.close(ns)
    if r < 0:
        os.close(fd)
        pytest.skip(f"idmapped mounts do not work here: mount_setattr: {os.strerror(-r)}")
    return fd


def test_owner_shift_is_an_idmapping_not_a_bug(tmpfs: str) -> None:
    """An idmapped layer mount (as podman --uidmap makes them) under the overlay, the stack read
    from the unmapped directories: owners differ by the map's offset, and the evidence says so;
    seen from a user namespace with that map, they are the predicted ones."""
    import subprocess

    from ovlinspect.live import mountapi

    doc = {"version": 1, "layer": [layer("lower", "A", {"path": "/f", "content": "f\n"}),
                                   layer("lower", "B", {"path": "/g", "content": "g\n"})]}
    built = build_stack(stack_from_dict(doc, "."), os.path.join(tmpfs, "layers"))
    # a process in a user namespace mapping 0..65535 to 100000.., to take the map from
    proc = subprocess.Popen(["unshare", "--user", "sleep", "60"])
    try:
        import time

        for _ in range(100):  # wait for the new user namespace, then give it a map (as root may)
            if os.readlink(f"/proc/{proc.pid}/ns/user") != os.readlink("/proc/self/ns/user"):
                break
            time.sleep(0.02)
        try:
            for which in ("uid_map", "gid_map"):
                with open(f"/proc/{proc.pid}/{which}", "w") as f:
                    f.write("0 100000 65536\n")
        except OSError as e:
            pytest.skip(f"cannot give a user namespace a uid map here: {e}")
        mapped = [_idmapped_clone(d, f"/proc/{proc.pid}/ns/user") for d in built.lowers]
        target = os.path.join(tmpfs, "merged")
        os.mkdir(target)
        try:
            mountapi.mount_overlay_fsconfig(target, mapped)  # the layers passed as descriptors
        finally:
            for fd in mapped:
                os.close(fd)
        try:
            assert os.stat(os.path.join(target, "f")).st_uid == 100000  # the kernel's own answer
            eng = engine_mod.Engine(stack_from_dict(doc, "."))  # the layers as on disk: owner 0
            eng.stack.mountpoint = target
            res = eng.explain("/f")
            ob = obs.observe(target, res.path)
            got = obs.compare(eng, res, ob, fresh=(None, "not wanted here"))
            assert got[:2] == ["uid: predicted 0, observed 100000", "gid: predicted 0, observed 100000"]
            assert got[-1].startswith("evidence: owners only, shifted by 100000: the mount sees its layers "
                                      "through an idmapping") and "bug" not in got[-1]
            obs.map_owner(ob, proc.pid)
            assert (ob.ns_uid, ob.ns_gid) == (0, 0)
            assert obs.compare(eng, res, ob) == []
        finally:
            mountapi.umount(target, detach=True)
    finally:
        proc.kill()
        proc.wait()
