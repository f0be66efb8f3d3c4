"""Findings grouped by cause (report/causes.py) and how `check` and `mounts` show them.

The stack is the issue-12 one (demo:one-cause): a plain directory base3:/ab on the redirect
path of 79 metacopy files.  The expected paths are read from the demo's own layers (the files
whose redirect goes into /ab), not from the code under test; the kernel agrees with the EIO of
each of them in tests/kernel/test_causes_kernel.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from ovlinspect.cli import main
from ovlinspect.rules.engine import Engine
from ovlinspect.report.causes import CauseIndex, check_causes, group_findings
from ovlinspect.sources.target import demo_stack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADLINE = "lower 3 (base3):/ab is a plain directory on the redirect path → 79 paths fail with EIO"


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def redirected_into(prefix: bytes) -> list[bytes]:
    """The merged paths of the demo's top layer whose redirect xattr goes under ``prefix``."""
    stack = demo_stack("one-cause")
    top = stack.lowers[0]
    out = []
    for name, node in top.scan((b"bin",)).items():
        redirect = node.xattr(b"trusted.overlay.redirect")
        if redirect and redirect.startswith(prefix):
            out.append(b"/bin/" + name)
    return sorted(out)


@pytest.fixture(scope="module")
def one_cause():
    engine = Engine(demo_stack("one-cause"), kernel="6.18.0")
    return engine, check_causes(engine)


def test_one_plain_directory_is_one_cause_of_79_eio(one_cause):
    engine, result = one_cause
    broken = redirected_into(b"/ab/")
    assert len(broken) == 79
    first = result.causes[0]
    assert (first.severity, first.rule) == ("error", "lowerdata-redirect-broken")
    assert first.where == "lower 3 (base3):/ab" and first.layer == 3 and first.layer_path == b"/ab"
    assert first.paths == broken
    assert dict(first.effects) == {"fail with EIO": 79}
    assert first.headline() == HEADLINE
    assert first.fix.startswith("remove or rename the directory in the regular layer")
    # every one of those paths does fail with EIO, as the engine predicts it path by path
    assert {engine.explain(p).errno for p in broken} == {"EIO"}


def test_causes_are_ordered_by_severity_then_reach(one_cause):
    _, result = one_cause
    assert [(c.severity, c.rule, c.reach) for c in result.causes] == [
        ("error", "lowerdata-redirect-broken", 79),
        ("error", "shadowed-lowerdata", 1),
        ("warning", "shadowing-hazard", 1),
        ("warning", "shadowing-hazard", 1),
    ]
    shadow = result.causes[1]
    assert shadow.paths == redirected_into(b"/zz/") == [b"/bin/shadowed"]
    assert shadow.where == "lower 2 (base2):/zz/obj"
    assert shadow.headline().endswith("→ /bin/shadowed reads the wrong bytes")


def test_the_findings_are_those_of_engine_check(one_cause):
    engine, result = one_cause
    assert [(f.rule, f.path, f.message) for f in result.findings] == \
        [(f.rule, f.path, f.message) for f in Engine(demo_stack("one-cause"), kernel="6.18.0").check()]
    assert sum(c.reach for c in result.causes) == len(result.findings) == 82


def test_incremental_grouping_gives_the_same_causes():
    engine = Engine(demo_stack("one-cause"), kernel="6.18.0")
    index = CauseIndex(engine)
    pairs = [(f, None) for f in engine.stack_findings()]
    for f, _ in pairs:
        index.add(f)
    for res in engine.walk():  # as the view's scan delivers them, one resolution at a time
        index.add_resolution(res)
        pairs += [(f, res) for f in res.findings]
        index.causes()  # a panel showing the causes so far
    a = [(c.rule, c.where, c.paths, c.message, c.headline()) for c in index.causes()]
    b = [(c.rule, c.where, c.paths, c.message, c.headline()) for c in group_findings(engine, pairs)]
    assert a == b and len(a) == 4
    assert a[0][4] == HEADLINE  # not the message of the first of its findings


def test_a_refusal_by_the_options_is_one_cause_of_the_mount(capsys):
    # metacopy=off: every metacopy file is refused; the cause is the option, not 81 files
    rc, out, _ = run(capsys, "check", "--json", "demo:one-cause", "-o", "metacopy=off")
    doc = json.loads(out)
    first = doc["causes"][0]
    assert first["rule"] == "metacopy-refused" and first["where"] is None
    assert first["count"] == 81 and first["effects"] == {"fail with EPERM": 81}
    assert sorted(first["paths"]) == sorted(os.fsdecode(p) for p in redirected_into(b"/"))


def test_check_text_says_the_cause_and_the_fix_once(capsys):
    rc, out, _ = run(capsys, "check", "demo:one-cause")
    assert rc == 1
    assert out.count(HEADLINE) == 1
    assert out.count("fix: remove or rename the directory in the regular layer") == 1
    lines = out.splitlines()
    i = lines.index("error   lowerdata-redirect-broken  79 paths")
    assert lines[i + 1].strip() == HEADLINE
    assert [l.strip() for l in lines[i + 3:i + 8]] == [f"/bin/f0{n}" for n in range(5)]
    assert lines[i + 8].strip() == "… and 74 more paths (--json lists them all)"
    assert "/bin/f05" not in out  # the rest only counted
    assert lines[-1] == "4 causes (2 errors, 2 warnings) behind 82 findings in 88 paths"


def test_check_json_keeps_findings_and_adds_causes(capsys):
    rc, out, _ = run(capsys, "check", "--json", "demo:one-cause")
    doc = json.loads(out)
    assert len(doc["findings"]) == 82 and doc["summary"] == {"error": 80, "warning": 2, "info": 0}
    first = doc["causes"][0]
    assert first["headline"] == HEADLINE and first["count"] == 79
    assert first["paths"] == [os.fsdecode(p) for p in redirected_into(b"/ab/")]  # all of them
    assert first["layer"] == 3 and first["layer_path"] == "/ab" and first["where"] == "lower 3 (base3):/ab"


def test_a_small_stack_keeps_each_finding_its_own_message(capsys):
    rc, out, _ = run(capsys, "check", "demo:seed-eio")
    lines = out.splitlines()
    i = lines.index("error   lowerdata-redirect-broken  /foo")
    assert lines[i + 1].strip() == (
        "the absolute redirect '/1e/abcdef' walked through the plain directory lower 1 (B):/1e, "
        "which cancels the lookup in the data-only layers; no data found → /foo fails with EIO")


# ------------------------------------------------------------------------- the terminal


def _in_pty(argv: list[str], cols: int, env: dict | None = None) -> str:
    """Run the CLI on a pseudo-terminal ``cols`` wide; its output as text."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
    full = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    full.update(env or {}, PYTHONPATH=ROOT, TERM="xterm")
    p = subprocess.Popen([sys.executable, "-m", "ovlinspect", *argv], stdin=subprocess.DEVNULL,
                         stdout=slave, stderr=subprocess.DEVNULL, cwd=ROOT, env=full)
    os.close(slave)
    data = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        data += chunk
    os.close(master)
    assert p.wait(timeout=60) in (0, 1)
    return data.decode("utf-8").replace("\r\n", "\n")


SGR = re.compile(r"\x1b\[[0-9;]*m")


def _width(text: str) -> int:
    return len(SGR.sub("", text))


def test_on_a_terminal_text_is_wrapped_with_a_hanging_indent_and_coloured():
    piped = subprocess.run([sys.executable, "-m", "ovlinspect", "explain", "demo:seed", "/foo"],
                           cwd=ROOT, capture_output=True, env={**os.environ, "PYTHONPATH": ROOT}).stdout.decode()
    assert "\x1b" not in piped  # a pipe: whole lines, no colour
    assert any(len(l) > 100 for l in piped.splitlines())
    out = _in_pty(["explain", "demo:seed", "/foo"], 60)
    assert "\x1b[1;31merror" in out  # coloured severity
    plain = SGR.sub("", out)
    for l in plain.splitlines():
        assert len(l) <= 60 or " " not in l.strip(), l  # only a single over-long word may overflow
    # the same words in the same order: no word split (`read() retu / rns`), none lost
    assert plain.split() == piped.split()
    # the hanging indent: a wrapped finding continues under its message, not at column 0
    i = next(n for n, l in enumerate(plain.splitlines()) if "shadowed-lowerdata:" in l)
    cont = plain.splitlines()[i + 1]
    assert cont.startswith(" " * 12) and not cont.strip().startswith("fix:")


@pytest.mark.parametrize("env,argv,coloured", [
    ({"NO_COLOR": "1"}, [], False),
    ({}, ["--color=never"], False),
    ({"NO_COLOR": "1"}, ["--color=always"], True),
])
def test_colour_follows_no_color_and_the_flag(env, argv, coloured):
    out = _in_pty(["check", "demo:seed", *argv], 80, env)
    assert ("\x1b[" in out) == coloured
    assert max(_width(l) for l in out.splitlines()) <= 80  # wrapped whatever the colour


def test_color_always_through_a_pipe():
    r = subprocess.run([sys.executable, "-m", "ovlinspect", "check", "--color=always", "demo:seed"],
                       cwd=ROOT, capture_output=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert b"\x1b[1;31merror" in r.stdout and r.returncode == 1


def _locales():
    from test_robust import LOCALES

    return LOCALES


@pytest.mark.parametrize("env", _locales(), ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()))
def test_new_bad_input_and_cause_text_in_any_locale(env):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "PYTHON"))}
    full.update(env, PYTHONPATH=ROOT)
    for argv, needle in ((["chek", "demo:seed"], "did you mean `ovlinspect check`?"),
                         (["export", "--json", "demo:seed"], "no --json")):
        r = subprocess.run([sys.executable, "-m", "ovlinspect", *argv], cwd=ROOT, env=full,
                           capture_output=True)
        err = r.stderr.decode("utf-8")
        assert r.returncode == 2 and r.stdout == b"" and err.count("\n") == 1 and needle in err, err
        assert "Traceback" not in err
    r = subprocess.run([sys.executable, "-m", "ovlinspect", "check", "demo:one-cause"], cwd=ROOT,
                       env=full, capture_output=True)
    assert r.returncode == 1, r.stderr.decode(errors="replace")
    text = r.stdout.decode("utf-8")  # strict: UTF-8 whatever the locale
    assert HEADLINE in text and "… and 74 more paths" in text


def test_wrap_keeps_words_whole_and_labels_with_their_text():
    from ovlinspect.report.text import Style, line, render

    rows = render([line("error   ", "x" * 100, " tail words here", hang=8)], Style(width=40)).splitlines()
    assert rows == ["error   " + "x" * 100, " " * 8 + "tail words here"]
    text = "ok: file, 18 bytes, mode 0644, owner 0:0; read() returns the bytes of lower 1 (B):/1e/abcdef"
    rows = render([line("  lstat     ", text, hang=12)], Style(width=30)).splitlines()
    assert all(len(r) <= 30 for r in rows) and all(r.startswith(" " * 12) for r in rows[1:])
    assert " ".join(r.strip() for r in rows).split() == ("lstat " + text).split()
    # double-width characters count as two columns
    rows = render([line("  ", "名前 " * 20, hang=2)], Style(width=21)).splitlines()
    assert rows == ["  " + " ".join(["名前"] * 4)] * 5  # 2 + 4 x 4 + 3 = 21 columns
