"""Any path a user has in hand, on a real mount, the kernel as judge.

The path whose own ``lstat`` fails (EIO, ENOENT, ENOTDIR) given as TARGET; PATHs relative to a
working directory inside the mount and relative to the TARGET; ``..`` after symlinks and after
non-directories; a trailing slash on a file, a directory and a symlink; ``--paths-from`` with a
file and stdin (raw bytes); ``--pid``.  Every expected errno is what the kernel gives for the
same path, asked the same way (a host path with ``lstat`` here; a merged-tree path with
``lstat`` in a child chrooted into the mount, as a container would see it).
"""

from __future__ import annotations

import contextlib
import errno as _errno
import json
import os
import shutil
import stat as _stat
import subprocess
import sys

import pytest

import harness
from harness import E
from ovlinspect.live.build import build_stack
from ovlinspect.sources.stackfile import stack_from_dict

pytestmark = pytest.mark.kernel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RAW_NAME = b"odd \xff name\twith tab"

LAYERS = [
    ("lower", "A", [
        # a metacopy whose redirect walks through B's plain /1e: lstat gives EIO
        E("/usr/lib/foo", size=18, xattrs={"trusted.overlay.metacopy": "",
                                           "trusted.overlay.redirect": "/1e/abcdef"}),
        E("/usr/lib/ok", content="ok\n"),
        E("/usr/link", "symlink", target="lib"),           # relative, to a directory
        E("/usr/up", "symlink", target="../data"),         # relative, to another directory
        E("/usr/filelink", "symlink", target="lib/ok"),    # relative, to a file
        E("/abslink", "symlink", target="/usr/lib"),       # absolute: the container's /usr/lib
        E("/data/big2.bin", content="big2\n"),
        E("/big2.bin", content="the root's big2.bin\n"),
        {"path_hex": (b"/data/" + RAW_NAME).hex(), "type": "file", "content": "raw\n"},
    ]),
    ("lower", "B", [E("/1e", "dir"), E("/1e/unrelated", content="B\n")]),
    ("data", "C", [E("/1e/abcdef", content="hello data from C\n")]),
]


def _doc() -> dict:
    return {"version": 1, "description": "paths in hand", "options": "metacopy=on",
            "layer": [{"role": r, "name": n, "entry": e} for r, n, e in LAYERS]}


@pytest.fixture(scope="module")
def mnt():
    reason = harness.kernel_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with harness.private_tmpfs() as root:
        built = build_stack(stack_from_dict(_doc(), "."), os.path.join(root, "layers"))
        target = os.path.join(root, "m")
        os.mkdir(target)
        built.mount(target)
        try:
            yield target
        finally:
            built.umount_all()


def _ename(e: OSError) -> str:
    return _errno.errorcode.get(e.errno or 0, str(e.errno))


def host_lstat(p: str | bytes) -> tuple[str | None, str | None]:
    """(errno, type) of lstat here, on the host path."""
    try:
        st = os.lstat(p)
    except OSError as e:
        return _ename(e), None
    return None, _kind(st.st_mode)


def _kind(mode: int) -> str:
    return {_stat.S_IFREG: "file", _stat.S_IFDIR: "dir", _stat.S_IFLNK: "symlink"}.get(
        _stat.S_IFMT(mode), "other")


def chroot_lstat(root: str, paths: list[bytes]) -> list[tuple[str | None, str | None]]:
    """(errno, type) of lstat of each path in a child chrooted into ``root`` (the container's
    view: absolute symlinks from the merged root, '..' stops there)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no Python-level cleanup, only lstat and write
        try:
            os.close(r)
            os.chroot(root)
            os.chdir("/")
            out = []
            for p in paths:
                try:
                    out.append([None, _kind(os.lstat(p).st_mode)])
                except OSError as e:
                    out.append([_ename(e), None])
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return [tuple(x) for x in json.loads(data)]


def explain(*argv: str) -> tuple[int, dict | None, str]:
    rc, out, err = harness.run_cli(["explain", "--json", *argv])
    return rc, (json.loads(out) if rc == 0 else None), err


def _pred(p: dict) -> tuple[str | None, str | None]:
    return p["errno"], p["type"]


# host paths under the mount: the failing path itself, '..', trailing slashes
HOST_FORMS = [
    "usr/lib/foo",            # EIO: the failing path itself
    "usr/lib/nonexist",       # ENOENT
    "usr/lib/ok/",            # a trailing slash on a file: ENOTDIR
    "usr/lib/",               # ... on a directory
    "usr/link/",              # ... on a symlink to a directory: followed
    "usr/filelink/",          # ... on a symlink to a file: ENOTDIR
    "usr/lib/foo/",           # ... on the EIO file: EIO, not ENOTDIR
    "usr/link",               # a final symlink is not followed
    "usr/link/../lib/foo",    # '..' after a symlink: the target's parent (/usr), then lib/foo
    "usr/up/..",              # /usr/up -> ../data: '..' is /, not /usr
    "usr/up/../usr/lib/ok",
    "usr/lib/ok/..",          # '..' after a file: ENOTDIR
    "usr/lib/foo/..",         # '..' after the EIO file: EIO
    "usr/lib/nonexist/..",    # '..' after a missing name: ENOENT
    "usr/lib/foo/x",          # below the EIO file
    "data/./big2.bin",
    "usr/lib//ok",
]


@pytest.mark.parametrize("rel", HOST_FORMS)
def test_the_path_itself_as_target(mnt: str, rel: str) -> None:
    """`ovlinspect explain MNT/<path>` (no PATH): the TARGET's own path, as lstat sees it."""
    full = os.path.join(mnt, rel)
    rc, doc, err = explain(full)
    assert rc == 0, err
    assert len(doc["paths"]) == 1
    got = doc["paths"][0]
    assert _pred(got) == host_lstat(full), (rel, got["trace"])


def test_path_form_with_target_and_check(mnt: str) -> None:
    # the same, as a PATH under the mountpoint (a host path) after the TARGET
    full = [os.path.join(mnt, r) for r in HOST_FORMS]
    rc, doc, err = explain(mnt, *full)
    assert rc == 0, err
    assert [_pred(p) for p in doc["paths"]] == [host_lstat(f) for f in full]
    # `check` takes the failing path as its TARGET too
    rc, out, err = harness.run_cli(["check", "--json", os.path.join(mnt, "usr/lib/foo")])
    assert rc == 1, err
    assert any(f["rule"] == "lowerdata-redirect-broken" and f["path"] == "/usr/lib/foo"
               for f in json.loads(out)["findings"])


MERGED_FORMS = [b"/usr/lib/foo", b"/abslink/", b"/abslink/../lib/ok", b"/abslink/..",
                b"/../usr/lib/ok", b"/usr/../../data/big2.bin", b"/usr/lib/ok/", b"/usr/up/../big2.bin",
                b"/usr/filelink/..", b"/usr/lib/foo/.."]


def test_merged_tree_paths_as_the_container_sees_them(mnt: str) -> None:
    """Absolute PATHs that are not under the mountpoint are merged-tree paths: '..' stops at
    the root and absolute symlinks start there, as for a process chrooted into the mount."""
    rc, doc, err = explain(mnt, *[os.fsdecode(p) for p in MERGED_FORMS])
    assert rc == 0, err
    assert [_pred(p) for p in doc["paths"]] == chroot_lstat(mnt, MERGED_FORMS)
    # /abslink/ is the container's /usr/lib (not the host's), reached through the symlink
    assert doc["paths"][1]["path"] == "/usr/lib" and doc["paths"][1]["asked"] == "/abslink/"


@contextlib.contextmanager
def cwd(path: str):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def test_relative_paths_from_a_cwd_inside_the_mount(mnt: str) -> None:
    rels = ["foo", "ok", "ok/", "../lib/foo", "../link/../data/big2.bin", "./nonexist", "../up/.."]
    with cwd(os.path.join(mnt, "usr", "lib")):
        rc, doc, err = explain(".", *rels)
        assert rc == 0, err
        assert [_pred(p) for p in doc["paths"]] == [host_lstat(r) for r in rels]
        assert doc["paths"][0]["path"] == "/usr/lib/foo"
        # the TARGET may be relative too, the failing name itself
        rc, doc, err = explain("foo")
        assert rc == 0, err
        assert doc["paths"][0]["path"] == "/usr/lib/foo" and doc["paths"][0]["errno"] == "EIO"
        # '..' out of the mount is not a path in it: one line, exit 2
        rc, _, err = explain(".", "../../..")
        assert rc == 2 and "leads out of the mount" in err and err.count("\n") == 1


def test_relative_paths_from_the_target_directory(mnt: str) -> None:
    with cwd("/"):
        rc, doc, err = explain(os.path.join(mnt, "data"), "big2.bin")
    assert rc == 0, err
    p = doc["paths"][0]
    assert p["path"] == "/data/big2.bin"
    # the kernel's answer for the file in /data, not for /big2.bin (their sizes differ)
    assert p["size"] == os.lstat(os.path.join(mnt, "data", "big2.bin")).st_size
    assert p["size"] != os.lstat(os.path.join(mnt, "big2.bin")).st_size


def _paths_file_body(mnt: str) -> tuple[bytes, list[bytes]]:
    paths = [os.fsencode(os.path.join(mnt, "usr/lib/foo")), b"/data/" + RAW_NAME, b"/usr/lib/ok/",
             b"data/big2.bin", b"/usr/link/../lib/nonexist"]
    return b"\n".join(paths) + b"\n\n", paths


def _kernel_for(mnt: str, p: bytes, base: bytes) -> tuple[str | None, str | None]:
    mb = os.fsencode(mnt)
    if p.startswith(mb + b"/"):
        return host_lstat(p)
    if not p.startswith(b"/"):
        p = base + b"/" + p
    return chroot_lstat(mnt, [p])[0]


def test_paths_from_a_file(mnt: str, tmp_path) -> None:
    body, paths = _paths_file_body(mnt)
    f = tmp_path / "paths"
    f.write_bytes(body)
    rc, doc, err = explain("--paths-from", str(f), os.path.join(mnt, "usr"))
    assert rc == 0, err
    assert len(doc["paths"]) == len(paths)  # one document, empty lines skipped
    assert [_pred(p) for p in doc["paths"]] == [_kernel_for(mnt, p, b"/usr") for p in paths]
    assert doc["paths"][1]["path"] == os.fsdecode(b"/data/" + RAW_NAME)
    assert doc["paths"][1]["type"] == "file"


def test_paths_from_stdin(mnt: str) -> None:
    body, paths = _paths_file_body(mnt)
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-m", "ovlinspect", "explain", "--json", "--paths-from", "-",
                          mnt, "/usr/lib/ok"], input=body, capture_output=True, cwd=REPO, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout.decode("utf-8", "surrogateescape"))  # as harness.run_cli reads it
    want = [_kernel_for(mnt, p, b"") for p in [b"/usr/lib/ok", *paths]]
    assert [_pred(p) for p in doc["paths"]] == want


def test_observe_agrees_on_slash_and_dotdot(mnt: str) -> None:
    rc, doc, err = explain("--observe", mnt, *[os.path.join(mnt, r) for r in HOST_FORMS])
    assert rc == 0, err
    assert all(not p["mismatches"] for p in doc["paths"]), [
        (p["asked"], p["mismatches"]) for p in doc["paths"] if p["mismatches"]]


@pytest.mark.parametrize("argv, needle", [
    (["explain", "/etc/passwd"], "not on an overlay mount"),
    (["explain", "/nonexistent-ovlinspect/x"], "no such file"),
    (["check", "/proc/self"], "not on an overlay mount"),
    (["explain", "--paths-from", "/nonexistent-ovlinspect/paths", "/"], "--paths-from"),
])
def test_bad_input_one_line(mnt: str, argv: list[str], needle: str) -> None:
    argv = [a if a != "/" else mnt for a in argv]
    rc, out, err = harness.run_cli(argv)
    assert rc == 2 and out == "" and err.count("\n") == 1 and needle in err, err


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_failing_path_through_pid(tmpfs: str) -> None:
    built = build_stack(stack_from_dict(_doc(), "."), os.path.join(tmpfs, "layers"))
    target = os.path.join(tmpfs, "elsewhere")
    os.mkdir(target)
    script = (f"mount -t overlay overlay -o lowerdir={built.lowerdir_string()},metacopy=on {target}"
              " && echo ok && exec sleep 60")
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ok"
        full = f"/proc/{proc.pid}/root{target}/usr/lib/foo"
        kernel = host_lstat(full)
        assert kernel == ("EIO", None)
        rc, doc, err = explain("--pid", str(proc.pid), os.path.join(target, "usr/lib/foo"))
        assert rc == 0, err
        assert _pred(doc["paths"][0]) == kernel and doc["paths"][0]["path"] == "/usr/lib/foo"
    finally:
        proc.kill()
        proc.wait()
