"""The command line: output contracts, exit statuses, one-line errors."""

from __future__ import annotations

import json
import os

import pytest

from ovlinspect.cli import main


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_explain_json_contract(capsys):
    rc, out, err = run(capsys, "explain", "--json", "demo:seed", "/foo", "/", "/nope")
    assert rc == 0 and err == ""
    doc = json.loads(out)
    assert doc["version"] == 1
    assert [l["role"] for l in doc["layers"]] == ["lower", "lower", "data"]
    assert doc["options"] == {"metacopy": True, "redirect_dir": "on", "userxattr": False, "verity": "off"}
    assert doc["mount_errno"] is None
    foo, root, nope = doc["paths"]
    assert foo["errno"] is None and foo["type"] == "file" and foo["size"] == 18 and foo["mode"] == 0o644
    assert foo["metadata"] == {"layer": 0, "path": "/foo"}
    assert foo["data"] == {"layer": 1, "path": "/1e/abcdef"}
    assert foo["open_errno"] is None and foo["entries"] is None
    assert "shadowed-lowerdata" in {f["rule"] for f in foo["findings"]}
    assert all(set(f) >= {"rule", "severity", "message"} for f in foo["findings"])
    assert root["type"] == "dir" and root["entries"] == ["1e", "bar", "etc", "foo"]
    assert nope["errno"] == "ENOENT" and nope["type"] is None and nope["metadata"] is None


def test_explain_eio_has_kernel_log(capsys):
    rc, out, _ = run(capsys, "explain", "--json", "demo:seed-eio", "/foo")
    p = json.loads(out)["paths"][0]
    assert p["errno"] == "EIO"
    assert p["kernel_log"] == "overlayfs: metacopy with no lower data found - abort lookup (/foo)"
    assert p["size"] is None and p["data"] is None


def test_explain_text(capsys):
    rc, out, _ = run(capsys, "explain", "demo:missing-object", "/usr/lib/libgone.so")
    assert rc == 0
    assert "open      fails: ENOENT" in out
    assert "lazy lowerdata lookup failed (lib/libgone.so, err=-2)" in out


def test_check_exit_status(capsys):
    assert run(capsys, "check", "demo:seed")[0] == 1
    rc, out, _ = run(capsys, "check", "--json", "demo:namespaces")
    assert rc == 1  # the user.overlay.metacopy this mount ignores reads zeros: silently wrong data
    doc = json.loads(out)
    assert doc["summary"]["error"] == 1 and doc["summary"]["warning"] == 0  # escaped: not a problem
    assert [(f["rule"], f["path"]) for f in doc["findings"]] == [("metacopy-ignored", "/user-ns")]


def test_what_if_options_on_a_target(capsys):
    rc, out, _ = run(capsys, "explain", "--json", "demo:seed", "-o", "metacopy=off", "/foo")
    assert json.loads(out)["paths"][0]["errno"] == "EPERM"


def test_mount_conflict_is_predicted(capsys):
    rc, out, _ = run(capsys, "explain", "--json", "demo:seed", "-o", "redirect_dir=nofollow", "/foo")
    doc = json.loads(out)
    assert rc == 0 and doc["mount_errno"] == "EINVAL" and doc["paths"] == []


@pytest.mark.parametrize("argv, needle", [
    (["explain", "--lowerdir", "/does/not/exist:/tmp", "/x"], "does not exist"),
    (["explain", "--lowerdir", "a:::b", "/x"], "lowerdir"),
    (["explain", "--lowerdir", "/tmp:/", "-o", "bogus", "/x"], "bogus"),
    (["explain", "--lowerdir", "/tmp:/", "-o", "metacopy=maybe", "/x"], "metacopy"),
    (["check", "/proc"], "not on an overlay mount"),
    (["check", "demo:nope"], "no demo named"),
    (["explain", "demo:seed"], "PATH"),
    (["check", "/no/such/path"], "no such file"),
    (["frobnicate", "x"], "unknown command"),
    (["explain", "--from-inspect", "/no/such.json", "/x"], "No such file"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, needle):
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1 and needle.lower() in err.lower(), err


def test_stack_file_target_and_export_round_trip(capsys, tmp_path):
    rc, out, _ = run(capsys, "export", "demo:seed")
    assert rc == 0
    f = tmp_path / "seed.toml"
    f.write_text(out)
    rc, out2, _ = run(capsys, "explain", "--json", str(f), "/foo")
    rc, out1, _ = run(capsys, "explain", "--json", "demo:seed", "/foo")
    strip = lambda o: [{k: v for k, v in p.items()} for p in json.loads(o)["paths"]]  # noqa: E731
    assert strip(out1) == strip(out2)


def test_bad_stack_file(capsys, tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("version = 1\n[[layer]]\nrole = 'sideways'\n")
    rc, out, err = run(capsys, "check", str(f))
    assert rc == 2 and "sideways" in err and err.count("\n") == 1


def test_from_inspect(capsys, tmp_path):
    a, b, c, w = (tmp_path / x for x in "abcw")
    for d in (a, b, c, w):
        d.mkdir()
    (a / "f").write_text("a")
    inspect = [{"Id": "abc123", "Name": "/web", "GraphDriver": {"Name": "overlay2", "Data": {
        "LowerDir": f"{b}:{c}", "UpperDir": str(a), "WorkDir": str(tmp_path / "w"),
        "MergedDir": str(tmp_path / "m")}}}]
    j = tmp_path / "inspect.json"
    j.write_text(json.dumps(inspect))
    rc, out, err = run(capsys, "explain", "--json", "--from-inspect", str(j), "/f")
    assert rc == 0, err
    doc = json.loads(out)
    assert [l["role"] for l in doc["layers"]] == ["upper", "lower", "lower"]
    assert doc["paths"][0]["metadata"] == {"layer": 0, "path": "/f"}


def test_hostile_names_are_shown_literally(capsys):
    import re

    from memstack import engine, layer
    from ovlinspect.report.text import Style, describe, render

    e = engine([layer("A", {b"/[red]x": b"1", b"/esc\x1b[31mred": b"2", b"/bad\xff": b"3"}), layer("B", {})])
    out = render(describe(e, e.explain("/")))
    assert "[red]x" in out and "\x1b" not in out and "\\x1b[31mred" in out and "bad\\xff" in out
    # coloured and wrapped narrow: the only escape sequences are our own colours
    out = render(describe(e, e.explain("/")), Style(color=True, width=30))
    assert "\x1b[" in out and "\x1b" not in re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert "\\x1b[31mred" in out


def test_composefs_dump_as_a_layer(capsys, tmp_path):
    objects = tmp_path / "objects" / "1e"
    objects.mkdir(parents=True)
    (objects / "abcdef").write_bytes(b"hello data from C\n")
    dump = tmp_path / "image.dump"
    dump.write_text("/ 0 40755 2 0 0 0 0.0 - - -\n"
                    "/foo 18 100644 1 0 0 0 0.0 1e/abcdef - -\n"
                    "/missing 5 100644 1 0 0 0 0.0 2f/0000 - -\n")
    lowerdir = f"{dump}::{tmp_path / 'objects'}"
    rc, out, _ = run(capsys, "explain", "--json", "--lowerdir", lowerdir, "/foo", "/missing", "/")
    foo, missing, root = json.loads(out)["paths"]
    assert foo["data"] == {"layer": 1, "path": "/1e/abcdef"}
    assert missing["open_errno"] == "ENOENT"
    assert root["entries"] == ["foo", "missing"]  # the image root's 256 whiteouts stay hidden
    assert run(capsys, "check", "--lowerdir", lowerdir)[0] == 1
    dump.write_text("/ 0 40755 2 0 0 0 0.0 - - -\n/a/b 1 100644 1 0 0 0 0.0 - - -\n")
    rc, out, err = run(capsys, "check", "--lowerdir", lowerdir)
    assert rc == 2 and "parent" in err and err.count("\n") == 1


def test_layer_labels_with_escapes_never_reach_the_terminal(capsys):
    from memstack import engine, layer, metacopy
    from ovlinspect.report.text import describe, render

    a = layer("A\x1b[2J", {"/foo": metacopy(b"/obj/\x1b[5m")})
    e = engine([a], [layer("C", {})])
    out = render(describe(e, e.explain("/foo")))
    assert "\x1b" not in out
    assert "A\\x1b[2J" in out and "'/obj/\\x1b[5m'" in out  # escaped once, not twice


def test_more_bad_input_never_tracebacks(capsys, tmp_path):
    long = "n" * 300
    bad = tmp_path / "long.toml"
    bad.write_text(f'version = 1\n[[layer]]\nrole = "lower"\n[[layer.entry]]\npath = "/{long}"\n'
                   '[[layer]]\nrole = "lower"\n')
    rc, out, err = run(capsys, "check", str(bad))
    assert rc == 2 and "255" in err and err.count("\n") == 1
    params = tmp_path / "params.toml"
    params.write_text('version = 1\n[params]\nmetacopy = "maybe"\n[[layer]]\nrole = "lower"\n'
                      '[[layer]]\nrole = "lower"\n')
    rc, out, err = run(capsys, "check", str(params))
    assert rc == 2 and "metacopy" in err and err.count("\n") == 1
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "x").write_text("occupied")
    rc, out, err = run(capsys, "build", str(params), str(dest))
    assert rc == 2 and err.count("\n") == 1


def test_name_too_long_is_a_prediction(capsys):
    rc, out, err = run(capsys, "explain", "--json", "demo:seed", "/" + "a" * 300)
    assert rc == 0 and json.loads(out)["paths"][0]["errno"] == "ENAMETOOLONG"


def test_workdir_refusals_are_predicted(capsys, tmp_path):
    for d in ("A", "U/sub", "W"):
        (tmp_path / d).mkdir(parents=True)
    base = ["explain", "--json", "--lowerdir", str(tmp_path / "A"), "--upperdir", str(tmp_path / "U")]
    for extra, log in ([], "missing 'workdir'"), (["--workdir", str(tmp_path / "U/sub")], "separate subtrees"):
        rc, out, _ = run(capsys, *base, *extra, "/")
        doc = json.loads(out)
        assert rc == 0 and doc["mount_errno"] == "EINVAL" and log in doc["mount_log"][-1]
    rc, out, _ = run(capsys, *base, "--workdir", str(tmp_path / "W"), "/")
    assert json.loads(out)["mount_errno"] is None


def test_target_and_lowerdir_together_is_a_usage_error(capsys):
    rc, out, err = run(capsys, "explain", "demo:seed", "--lowerdir", "/tmp", "/foo")
    assert rc == 2 and "either" in err
    rc, out, err = run(capsys, "explain", "--lowerdir", "", "/foo")
    assert rc == 2 and "empty" in err


def test_export_spells_out_options_and_parameters(capsys, tmp_path):
    rc, out, _ = run(capsys, "export", "demo:namespaces")
    assert 'options = "' in out and "metacopy=on" in out and "[params]" in out


def test_without_root_trusted_xattrs_cannot_be_read(capsys, tmp_path, monkeypatch):
    for d in "ab":
        (tmp_path / d).mkdir()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    rc, out, err = run(capsys, "check", "--lowerdir", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert rc == 2 and "needs root" in err and err.count("\n") == 1
    # a userxattr mount reads user.overlay.* xattrs, which need no privilege
    rc, out, err = run(capsys, "check", "--lowerdir", f"{tmp_path / 'a'}:{tmp_path / 'b'}", "-o", "userxattr")
    assert rc == 0, err
    # demos are in memory: no root needed
    assert run(capsys, "check", "demo:seed")[0] == 1


def test_paths_from_is_bounded(capsys):
    """`--paths-from /dev/zero` used to grow until the OOM killer came (QA): one line, exit 2."""
    from ovlinspect.cli import main

    assert main(["explain", "demo:seed", "--paths-from", "/dev/zero"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "more than 16 MiB" in err


# ------------------------------------------------------------------------- issue 12: the CLI


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"ovlinspect {version('ovlinspect')}"


@pytest.mark.parametrize("argv,suggestion", [
    (["chek"], "did you mean `ovlinspect check`?"),
    (["chek", "demo:seed"], "did you mean `ovlinspect check`?"),
    (["explian", "demo:seed", "/foo"], "did you mean `ovlinspect explain`?"),
    (["check", "ux-seed"], "did you mean demo:seed?"),
    (["check", "demo:sed"], "did you mean demo:seed?"),
    (["explain", "seed-eoi", "/foo"], "did you mean demo:seed-eio?"),
    (["demo", "one-cuase"], "did you mean demo:one-cause?"),
    (["check", "--jsn", "demo:seed"], "did you mean --json?"),
    (["check", "--colour=never", "demo:seed"], "did you mean --color?"),
    (["check", "dokcer:web"], "did you mean docker:web?"),
    (["explain", "Podman:web", "/etc"], "did you mean podman:web?"),
])
def test_did_you_mean(capsys, argv, suggestion):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err.rstrip().endswith(suggestion), err


def test_no_suggestion_for_a_real_path_or_a_far_word(capsys):
    for argv in (["check", "/no/such/dir"], ["check", "zzzzzzzz"], ["check", "foo:bar"]):
        rc, _, err = run(capsys, *argv)
        assert rc == 2 and "did you mean" not in err, err


@pytest.mark.parametrize("command", ["explain", "check", "mounts", "demo", "export", "build", "rules"])
def test_subcommand_usage_is_clean_and_every_argument_has_help(capsys, command):
    from ovlinspect.cli import _SUBPARSERS, build_parser

    build_parser()
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ovlinspect {command} [-h]"), out.splitlines()[0]
    assert "TARGET [PATH] | ovlinspect COMMAND" not in out
    for action in _SUBPARSERS[command]._actions:
        assert action.help, f"{command}: {action.option_strings or action.dest} has no help"


def test_export_json_is_refused(capsys):
    rc, out, err = run(capsys, "export", "--json", "demo:seed")
    assert rc == 2 and out == "" and err.count("\n") == 1 and "no --json" in err


def test_explain_json_owner_is_the_metadata_layer_s(capsys, tmp_path):
    # the metacopy file (uid 1234) gives stat, the data file below (uid 0) gives the bytes
    f = tmp_path / "owner.toml"
    f.write_text('version = 1\noptions = "metacopy=on"\n'
                 '[[layer]]\nrole = "lower"\nname = "A"\n'
                 '[[layer.entry]]\npath = "/m"\ntype = "file"\nsize = 5\nuid = 1234\ngid = 5678\n'
                 'xattrs = { "trusted.overlay.metacopy" = "", "trusted.overlay.redirect" = "/d" }\n'
                 '[[layer]]\nrole = "lower"\nname = "B"\n'
                 '[[layer.entry]]\npath = "/d"\ntype = "file"\ncontent = "data\\n"\nuid = 7\ngid = 8\n')
    rc, out, err = run(capsys, "explain", "--json", str(f), "/m", "/d")
    m, d = json.loads(out)["paths"]
    assert m["metadata"] == {"layer": 0, "path": "/m"} and m["data"] == {"layer": 1, "path": "/d"}
    assert (m["uid"], m["gid"]) == (1234, 5678)
    assert (d["uid"], d["gid"]) == (7, 8)
    rc, out, err = run(capsys, "explain", str(f), "/m")
    assert "owner 1234:5678" in out


def test_sizes_and_counts_through_humanize(capsys, tmp_path):
    f = tmp_path / "big.toml"
    f.write_text('version = 1\n[[layer]]\nrole = "lower"\nname = "A"\n'
                 '[[layer.entry]]\npath = "/big"\ntype = "file"\nsize = 3221225472\n'
                 '[[layer]]\nrole = "lower"\nname = "B"\n')
    rc, out, err = run(capsys, "explain", str(f), "/big")
    assert "file, 3.0 GiB (3221225472 bytes)" in out
    rc, out, err = run(capsys, "explain", "demo:seed", "/foo")
    assert "file, 18 bytes" in out


def test_numbers_for_people():
    from ovlinspect.report.text import count_text, duration_text, size_text

    assert (size_text(1), size_text(18), size_text(1536)) == ("1 byte", "18 bytes", "1.5 KiB (1536 bytes)")
    assert (count_text(1, "path"), count_text(20000, "path")) == ("1 path", "20,000 paths")
    assert (duration_text(2.5), duration_text(125.5)) == ("2.5 seconds", "2 minutes and 5.5 seconds")


def test_the_view_takes_no_color_flag(capsys):
    rc, out, err = run(capsys, "--color=never", "demo:seed")
    assert rc == 2 and err.count("\n") == 1 and "no --color" in err


@pytest.mark.parametrize("kernel,log,why", [
    # the log lines are the kernels' own (checked inside 6.1 and 6.12 by test_other_kernels);
    # the second line says what a user cannot tell from them
    ("6.1", "overlayfs: empty lowerdir", "data-only layers (lowerdir=A::B) came with 6.5"),
    ("6.12", "overlayfs: lower data-only dirs require metacopy support.",
     "before 6.16 a stack with data-only layers (lowerdir=A::B) mounts only with metacopy=on"),
])
def test_a_refused_mount_on_an_older_kernel_says_why(capsys, kernel, log, why):
    rc, out, err = run(capsys, "explain", "demo:seed", "/foo", "-o", "metacopy=off", "--kernel", kernel)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    i = next(i for i, l in enumerate(lines) if l.startswith("mount  fails: EINVAL: "))
    assert lines[i] == f"mount  fails: EINVAL: {log}"
    assert lines[i + 1].startswith(f"       {why}")
    rc, out, _ = run(capsys, "check", "--json", "demo:seed", "-o", "metacopy=off", "--kernel", kernel)
    refused = [f for f in json.loads(out)["findings"] if f["rule"] == "mount-refused"]
    assert len(refused) == 1 and why in refused[0]["message"] and log in refused[0]["message"]


def test_a_mount_refused_for_another_reason_adds_no_why(capsys):
    rc, out, _ = run(capsys, "explain", "demo:seed", "/foo", "-o", "userxattr,metacopy=on")
    lines = out.splitlines()
    i = next(i for i, l in enumerate(lines) if l.startswith("mount  fails: "))
    assert lines[i + 1:] in ([], [""]) or lines[i + 1] == "", lines  # the kernel's line says it all


def test_the_open_file_limit_is_raised_for_stacks_of_many_layers():
    """A login's soft limit of 1,024 descriptors is raised to the hard one (at most 65,536):
    500 layers keep a root each open, and the view a second one."""
    import resource
    import subprocess
    import sys

    code = ("import contextlib, io, resource\n"
            "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
            "from ovlinspect.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['rules'])\n"
            "print(*resource.getrlimit(resource.RLIMIT_NOFILE))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    soft, hard = (int(x) for x in out.stdout.split())
    expect = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    assert soft == max(expect, 256)
