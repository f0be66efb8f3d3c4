"""Issue 8: hostile and malformed inputs end in the documented behaviour.

Each test is one input that used to crash, hang, mislead or let bytes reach the terminal:
now exit 0/1 with valid output, or one line on stderr and exit 2.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
import zlib

import pytest

from ovlinspect.sources import composefs
from ovlinspect.cli import main
from ovlinspect.sources.mountinfo import parse_mountinfo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line_error(rc: int, out: str, err: str) -> str:
    assert rc == 2, (rc, out, err)
    assert err.startswith("ovlinspect: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def no_raw_controls(text: str) -> None:
    """Nothing that moves the cursor, splits a line or starts an escape: only \\n breaks lines."""
    bad = [c for c in text if c != "\n" and not c.isprintable()]
    assert not bad, f"raw control characters on the terminal: {bad[:5]!r}"


def stack_file(tmp_path, entry: str, name: str = "s.toml", role: str = "lower", head: str = "version = 1") -> str:
    p = tmp_path / name
    p.write_text(f'{head}\n[[layer]]\nrole = "{role}"\nname = "A"\n[[layer.entry]]\n{entry}\n')
    return str(p)


# ------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("entry", [
    'path = "/f"\ntype = "file"\nsize = 9223372036854775808',          # 2**63: no loff_t holds it
    'path = "/f"\ntype = "chardev"\nrdev = "-1:0"',
    'path = "/f"\ntype = "chardev"\nrdev = "4096:0"',                     # major beyond 12 bits
    'path = "/f"\ntype = "chardev"\nrdev = [0, 1048576]',                 # minor beyond 20 bits
    'path = "/f"\ntype = "chardev"\nrdev = "99999999999999999999999:1"',
    'path = "/f"\ntype = "file"\nuid = 4294967296',
    'path = "/f"\ntype = "file"\nmode = "77777777777"',
    'path = "/f"\ntype = "file"\nsize = ' + "9" * 5000,                  # over Python's 4300 digits
])
@pytest.mark.parametrize("command", ["check", "build"])
def test_numbers_out_of_range_in_stack_files(capsys, tmp_path, entry, command):
    f = stack_file(tmp_path, entry)
    argv = [command, f] + ([str(tmp_path / "out")] if command == "build" else [])
    one_line_error(*run(capsys, *argv))
    assert not (tmp_path / "out").exists()


ROOT_LINE = "/ 4096 40755 2 0 0 0 0.0 - - -\n"


@pytest.mark.parametrize("line,why", [
    ("/f 0 %o 1 0 0 0 0.0 - - -" % (2**40 | 0o100644), "MODE"),
    ("/f 0 20644 1 0 0 %d 0.0 - - -" % 2**70, "RDEV"),
    ("/f 0 20644 1 0 0 %d 0.0 - - -" % os.makedev(4096, 0), "RDEV"),  # major beyond 12 bits
    ("/f %s 100644 1 0 0 0 0.0 - - -" % ("9" * 5000), "SIZE"),
    ("/f %d 100644 1 0 0 0 0.0 - - -" % 2**63, "SIZE"),
    ("/f 0 100644 1 %d 0 0 0.0 - - -" % 2**32, "UID"),
    ("/f 0 100644 1 0 0 0 0.1000000000 - - -", "MTIME"),
])
def test_numbers_out_of_range_in_dumps(capsys, tmp_path, line, why):
    d = tmp_path / "x.dump"
    d.write_text(ROOT_LINE + line + "\n")
    err = one_line_error(*run(capsys, "check", "--lowerdir", str(d)))
    assert f"dump line 2: {why}" in err


def test_corrupt_and_truncated_gzip_dumps(capsys, tmp_path):
    good = gzip.compress((ROOT_LINE + "/f 3 100644 1 0 0 0 0.0 - abc -\n").encode())
    for name, data in [("corrupt", b"\x1f\x8b\x08\x00" + bytes(range(200))), ("truncated", good[:-12]),
                       ("garbage", good + b"junk")]:
        d = tmp_path / f"{name}.dump"
        d.write_bytes(data)
        err = one_line_error(*run(capsys, "check", "--lowerdir", str(d)))
        assert "bad gzip data" in err, err
    d = tmp_path / "ok.dump"
    d.write_bytes(good + gzip.compress(b"/g 0 100644 1 0 0 0 0.0 - - -\n"))  # two members, as gzip reads them
    rc, out, err = run(capsys, "explain", "--json", "--lowerdir", f"{d}:{tmp_path}", "/f", "/g")
    assert rc == 0, err
    assert [p["type"] for p in json.loads(out)["paths"]] == ["file", "file"]


def test_gzip_bomb_is_capped(capsys, tmp_path, monkeypatch):
    """A small gzip that inflates past the cap stops there: one line, bounded time and memory."""
    monkeypatch.setattr(composefs, "MAX_DUMP", 4 << 20)
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = z.compress(ROOT_LINE.encode()) + z.compress(b"\0" * (64 << 20)) + z.flush()
    assert len(bomb) < 100_000
    d = tmp_path / "bomb.dump"
    d.write_bytes(bomb)
    t = time.monotonic()
    err = one_line_error(*run(capsys, "check", "--lowerdir", str(d)))
    assert "inflates past 4 MiB" in err
    assert time.monotonic() - t < 5
    # the cap is on what is inflated, not on the compressed size: the same content under the cap loads
    monkeypatch.setattr(composefs, "MAX_DUMP", 128 << 20)
    with pytest.raises(composefs.DumpError, match="line 2"):  # the zeros are no dump line
        composefs.load_dump(d)


def test_toml_and_json_nested_too_deeply(capsys, tmp_path):
    t = tmp_path / "deep.toml"
    t.write_text("a = " + "[" * 50000 + "]" * 50000)
    assert "nested too deeply" in one_line_error(*run(capsys, "check", str(t)))
    j = tmp_path / "deep.json"
    j.write_text("[" * 50000 + "]" * 50000)
    assert "nested too deeply" in one_line_error(*run(capsys, "check", "--from-inspect", str(j)))


# ------------------------------------------------------------------------- wrong answers


@pytest.mark.parametrize("version", ["true", "1.0", '"1"'])
def test_stack_file_version_must_be_the_integer_1(capsys, tmp_path, version):
    f = stack_file(tmp_path, 'path = "/f"\ntype = "file"', head=f"version = {version}")
    assert "unsupported version" in one_line_error(*run(capsys, "check", f))


def test_build_of_a_stack_with_only_data_layers(capsys, tmp_path):
    f = stack_file(tmp_path, 'path = "/f"\ntype = "file"', role="data")
    err = one_line_error(*run(capsys, "build", f, str(tmp_path / "out")))
    assert "no regular lower layer" in err
    assert not (tmp_path / "out").exists()


def test_dump_path_with_a_newline_is_a_path(capsys, tmp_path):
    """A dump file whose name holds a newline (or starts with "/ ") is read, not parsed as text."""
    d = tmp_path / "a\nb.dump"
    d.write_text(ROOT_LINE + "/real 0 100644 1 0 0 0 0.0 - - -\n")
    rc, out, err = run(capsys, "explain", "--json", "--lowerdir", f"{d}:{tmp_path}", "/real")
    assert rc == 0, err
    assert json.loads(out)["paths"][0]["type"] == "file"
    s = tmp_path / "s.toml"
    s.write_text('version = 1\n[[layer]]\nrole = "lower"\ndump = "a\\nb.dump"\n[[layer]]\nrole = "lower"\n')
    rc, out, err = run(capsys, "explain", "--json", str(s), "/real")
    assert rc == 0, err
    assert json.loads(out)["paths"][0]["type"] == "file"


@pytest.mark.parametrize("pid", ["0", "-1", "999999999", "x"])
def test_pid_must_be_a_live_process(capsys, pid):
    for argv in (["mounts", "--pid", pid], ["check", "--pid", pid, "/"]):
        err = one_line_error(*run(capsys, *argv))
        assert "--pid" in err


# ------------------------------------------------------------------------- inspect JSON


def _inspect(tmp_path, obj, raw: bytes | None = None) -> str:
    p = tmp_path / "inspect.json"
    p.write_bytes(raw if raw is not None else json.dumps(obj).encode())
    return str(p)


def test_inspect_single_layer_image(capsys, tmp_path):
    layer = tmp_path / "L"
    (layer / "etc").mkdir(parents=True)
    obj = [{"Id": "sha256:" + "ab" * 32, "RepoTags": ["one:1"], "RootFS": {"Type": "layers"},
            "GraphDriver": {"Name": "overlay2", "Data": {"UpperDir": str(layer)}}}]
    rc, out, err = run(capsys, "explain", "--json", "--from-inspect", _inspect(tmp_path, obj), "/etc")
    assert rc == 0, err
    doc = json.loads(out)
    assert [(l["role"], l["path"]) for l in doc["layers"]] == [("lower", str(layer))]
    # the kernel refuses one lower layer without an upper: the prediction says so
    assert doc["mount_errno"] == "EINVAL"


@pytest.mark.parametrize("tags", [5, "abc", {"a": 1}, [None, 3], True])
def test_inspect_repotags_not_a_list_of_strings(capsys, tmp_path, tags):
    layer = tmp_path / "L"
    layer.mkdir()
    obj = {"Id": "sha256:" + "cd" * 32, "RepoTags": tags,
           "GraphDriver": {"Name": "overlay2", "Data": {"LowerDir": f"{layer}:{layer}"}}}
    rc, out, err = run(capsys, "check", "--json", "--from-inspect", _inspect(tmp_path, obj))
    assert rc in (0, 1) and err == ""
    assert json.loads(out)["source"] == "inspect:" + "cd" * 6


def test_inspect_nul_non_utf8_and_bad_numbers(capsys, tmp_path):
    obj = {"Name": "/c", "State": {}, "GraphDriver": {"Name": "overlay2", "Data": {"LowerDir": "/a\0b:/c"}}}
    assert "NUL" in one_line_error(*run(capsys, "check", "--from-inspect", _inspect(tmp_path, obj)))
    raw = b'{"Id": "\xff", "GraphDriver": {"Name": "overlay2", "Data": {"LowerDir": "/a:/b"}}}'
    assert "UTF-8" in one_line_error(*run(capsys, "check", "--from-inspect", _inspect(tmp_path, None, raw)))
    raw = b'{"Id": ' + b"9" * 5000 + b"}"
    one_line_error(*run(capsys, "check", "--from-inspect", _inspect(tmp_path, None, raw)))


# ------------------------------------------------------------------------- escaping


HOSTILE = "x\x1b]0;pwned\x07\x1b[2J\r\x85\u2028\u202e\x7f"


def test_explain_text_escapes_names_labels_and_the_dmesg_line(capsys, tmp_path):
    """A metacopy whose data is missing: the kernel log line names the file through %pd2."""
    name = HOSTILE.replace("\x1b", "\\u001b").replace("\x07", "\\u0007").replace("\r", "\\r").replace("\x7f", "\\u007f")
    f = tmp_path / f"s{HOSTILE}.toml"
    f.write_text(f'''version = 1
options = "metacopy=on,redirect_dir=on"
[[layer]]
role = "lower"
name = "A{name}"
[[layer.entry]]
path = "/d/{name}"
type = "file"
size = 4
xattrs = {{ "trusted.overlay.metacopy" = "", "trusted.overlay.redirect" = "/{name}" }}
[[layer]]
role = "data"
name = "C"
''')
    rc, out, err = run(capsys, "explain", str(f), f"/d/{HOSTILE}")
    assert rc == 0, err
    no_raw_controls(out)
    assert "dmesg     overlayfs: lazy lowerdata lookup failed (d/x\\x1b]0;pwned\\x07" in out
    assert "stack  " + str(tmp_path) + "/sx\\x1b]0;pwned" in out
    # --json keeps the kernel's bytes, JSON-escaped
    rc, out, err = run(capsys, "explain", "--json", str(f), f"/d/{HOSTILE}")
    doc = json.loads(out)
    assert doc["paths"][0]["kernel_log"] == f"overlayfs: lazy lowerdata lookup failed (d/{HOSTILE}, err=-2)"
    assert doc["layers"][0]["label"] == "A" + HOSTILE


def test_mount_fails_line_escapes_the_workdir(capsys, tmp_path):
    (tmp_path / "l").mkdir()
    (tmp_path / "u").mkdir()
    rc, out, err = run(capsys, "explain", "--lowerdir", str(tmp_path / "l"), "--upperdir", str(tmp_path / "u"),
                       "--workdir", str(tmp_path / f"w{HOSTILE}"), "/")
    assert rc == 0, err
    assert "mount  fails: ENOENT" in out
    no_raw_controls(out)


def test_error_messages_stay_on_one_line(capsys, tmp_path):
    err = one_line_error(*run(capsys, "check", f"/nonexistent/a\nb{HOSTILE}"))
    no_raw_controls(err)
    err = one_line_error(*run(capsys, "check", "--lowerdir", str(tmp_path / f"a\nb{HOSTILE}")))
    no_raw_controls(err)


def test_export_of_hostile_layer_paths_loads_back(capsys, tmp_path):
    from ovlinspect.sources.stackfile import loads_stack

    a = tmp_path / f"A\n[[layer]]\nrole = \"upper\"{HOSTILE}"
    a.mkdir()
    (a / f"f{HOSTILE}").write_bytes(b"hi")
    os.mkdir(bytes(tmp_path) + b"/\xff\xfe")
    rc, out, err = run(capsys, "export", "--lowerdir", f"{a}:{os.fsdecode(bytes(tmp_path) + b'/' + bytes([0xff, 0xfe]))}")
    assert rc == 0, err
    no_raw_controls(out)
    stack = loads_stack(out)
    assert [r for r, _ in stack.layers] == ["lower", "lower"]
    assert stack.lowers[0].node((os.fsencode(f"f{HOSTILE}"),)).size == 2


LOCALES = [
    {"LANG": "C", "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"},
    {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
    {"PYTHONUTF8": "1"},
    {"PYTHONUTF8": "0", "LC_ALL": "C.UTF-8"},
    {"PYTHONIOENCODING": "utf-8:strict"},
    {"PYTHONIOENCODING": "ascii:strict"},
    {"PYTHONIOENCODING": "latin-1:strict"},
]


@pytest.mark.parametrize("env", LOCALES, ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()))
def test_json_is_utf8_with_escaped_surrogates_in_any_locale(tmp_path, env):
    f = tmp_path / "s.toml"
    f.write_text('version = 1\n[[layer]]\nrole = "lower"\nname = "A"\n'
                 '[[layer.entry]]\npath_hex = "2fff66"\ntype = "file"\n'
                 '[[layer.entry]]\npath = "/é\\u001b"\ntype = "file"\n[[layer]]\nrole = "lower"\n')
    full = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "PYTHON"))}
    full.update(env, PYTHONPATH=ROOT)
    for argv in (["explain", "--json", str(f), "/", "/\udcfff"], ["check", "--json", str(f)],
                 ["mounts", "--json"]):
        r = subprocess.run([sys.executable, "-m", "ovlinspect", *argv], cwd=ROOT, env=full,
                           capture_output=True)
        assert r.returncode in (0, 1), r.stderr.decode(errors="replace")
        doc = json.loads(r.stdout.decode("utf-8"))  # strict UTF-8
        if argv[0] == "explain":
            assert doc["paths"][0]["entries"] == ["é\x1b", "\udcfff"]
            assert doc["paths"][1]["path"] == "/\udcfff" and doc["paths"][1]["type"] == "file"
    # the text form, in the strictest of these, is UTF-8 and escaped too
    r = subprocess.run([sys.executable, "-m", "ovlinspect", "explain", str(f), "/"], cwd=ROOT,
                       env=full, capture_output=True)
    text = r.stdout.decode("utf-8")
    no_raw_controls(text)
    assert "readdir   é\\x1b, \\xfff" in text


# ------------------------------------------------------------------------- mountinfo


@pytest.mark.parametrize("ch", ["\r", "\f", "\v", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
def test_mountinfo_splits_on_newline_only(ch):
    text = (f"1 0 0:1 / / rw - ext4 /dev/root rw\n"
            f"36 1 0:32 / /mnt/a{ch}b rw - overlay overlay rw,lowerdir=/l/A:/l/B{ch}\n"
            f"37 1 0:33 / /mnt/end{ch} rw - tmpfs tmpfs rw\n")
    entries = parse_mountinfo(text)
    assert [e.mountpoint for e in entries] == ["/", f"/mnt/a{ch}b", f"/mnt/end{ch}"]
    assert entries[1].lowers == ["/l/A", f"/l/B{ch}"]  # a trailing \r is a byte of the name


# ------------------------------------------------------------------------- deep paths


def test_check_is_not_cubic_in_path_depth(capsys, tmp_path):
    """A 4 KB path (2040 components): ~100 s before, a few seconds now."""
    p = "/" + "/".join(["d"] * 2040)
    f = tmp_path / "deep.toml"
    f.write_text(f'version = 1\n[[layer]]\nrole = "lower"\nname = "A"\n[[layer.entry]]\npath = "{p}"\n'
                 f'type = "file"\n[[layer]]\nrole = "lower"\nname = "B"\n[[layer.entry]]\npath = "{p}"\ntype = "file"\n')
    t = time.monotonic()
    rc, out, err = run(capsys, "check", str(f))
    assert rc == 0, err
    assert "in 2,040 paths" in out  # counts through humanize
    rc, out, err = run(capsys, "explain", "--json", str(f), p)
    assert json.loads(out)["paths"][0]["metadata"] == {"layer": 0, "path": p}
    assert time.monotonic() - t < 20


def test_deep_disk_tree_walks_without_recursion(capsys, tmp_path):
    """A 2500-deep directory tree: explain of its deepest file used to end in RecursionError."""
    fds = [os.open(tmp_path, os.O_RDONLY)]
    try:
        for _ in range(2500):
            os.mkdir("d", dir_fd=fds[-1])
            fds.append(os.open("d", os.O_RDONLY, dir_fd=fds[-1]))
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fds[-1]))
        (tmp_path.parent / (tmp_path.name + "-b")).mkdir(exist_ok=True)
        low = f"{tmp_path}:{tmp_path}-b"
        deep = "/d" * 2500 + "/f"
        rc, out, err = run(capsys, "explain", "--json", "--lowerdir", low, deep)
        assert rc == 0, err
        assert json.loads(out)["paths"][0]["mode"] == 0o600
        rc, out, err = run(capsys, "check", "--lowerdir", low)
        assert rc == 0 and "no problems in 2,501 paths" in out
        # the layer walk itself, cold (no parent descriptor cached): iterative
        from ovlinspect.model.layers import DiskLayer

        layer = DiskLayer(str(tmp_path))
        assert layer.node((b"d",) * 2500 + (b"f",)).mode == 0o600
        assert layer.read((b"d",) * 2500 + (b"f",)) == b""
        layer.close()
    finally:  # iteratively: pytest's own (recursive) cleanup of tmp dirs cannot remove it
        try:
            os.unlink("f", dir_fd=fds[-1])
        except OSError:
            pass
        while len(fds) > 1:
            os.close(fds.pop())
            os.rmdir("d", dir_fd=fds[-1])
        os.close(fds.pop())


def test_nul_in_an_argument(capsys):
    """main(argv) is an API too: a NUL in a path is one line, not ValueError from the OS."""
    for argv in (["explain", "\0"], ["check", "--lowerdir", "/a\0b"], ["explain", "demo:seed", "/a\0"]):
        assert "NUL" in one_line_error(*run(capsys, *argv))
