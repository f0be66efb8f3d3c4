"""``check`` in bounded memory (report/causes.py ``check_stream``, ``SpillCauseIndex``) gives
the bytes the whole-result path gives (``check_causes``: every finding and cause held, the
document built whole and dumped by ``json.dumps``; the way ``check`` printed before, and
the way the view and ``mounts`` still group findings), text and JSON, on every demo and on
generated composefs dumps with every object missing, some missing, or none; with runs small
enough that the external sort merges dozens of them.  And its peak memory, in a process of
its own, stays far below what holding every finding took.
"""

from __future__ import annotations

import os
import random
import sys

import pytest

import ovlinspect.cli as cli
from ovlinspect.report import causes as causes_mod
from ovlinspect.report import text as txt
from ovlinspect.report.causes import check_causes
from ovlinspect.sources.target import demo_names

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench_dump  # noqa: E402  (the benchmark's dump generator and object store)


def _old(capsysbinary, argv: list[str]) -> tuple[int, bytes]:
    """``check``'s output as it was made before streaming: every finding and cause in
    memory, the text rendered whole, the JSON document built whole."""
    ns = cli.build_parser().parse_args(argv)
    stack, _ = cli._load(ns, ns.args)
    engine = cli._engine(stack)
    result = check_causes(engine)
    findings = result.findings
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = sum(1 for f in findings if f.severity == "warning")
    if ns.json:
        cli._print_json({
            "version": 1,
            "kernel": engine.kernel,
            "source": stack.source,
            "options": engine.options.as_json(),
            "mount_errno": engine.mount_errno,
            "paths_checked": result.paths_checked,
            "options_guessed": stack.options_guessed,
            "summary": {"error": errors, "warning": warnings,
                        "info": len(findings) - errors - warnings},
            "findings": [f.as_json() for f in findings],
            "causes": [c.as_json() for c in result.causes],
        })
    else:
        cli._write(txt.render(txt.check_text(engine, stack, result), txt.Style()))
    return (1 if errors else 0), capsysbinary.readouterr().out


def _new(capsysbinary, argv: list[str]) -> tuple[int, bytes]:
    rc = cli.main(argv)
    return rc, capsysbinary.readouterr().out


def _same(capsysbinary, argv: list[str]) -> bytes:
    old_rc, old = _old(capsysbinary, argv)
    rc, new = _new(capsysbinary, argv)
    # the duration is only printed past a second, and is not the same twice
    if b" seconds\n" in old or b" seconds\n" in new:
        import re

        old, new = (re.sub(rb"paths, [0-9.]+ seconds\n", b"paths\n", x) for x in (old, new))
    assert new == old, argv
    assert rc == old_rc
    return new


@pytest.mark.parametrize("name", demo_names())
@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_demos_same_bytes(capsysbinary, monkeypatch, name, json_flag):
    _same(capsysbinary, ["check", *json_flag, f"demo:{name}"])
    monkeypatch.setattr(causes_mod.SpillCauseIndex, "RUN", 2)  # a run of two findings
    _same(capsysbinary, ["check", *json_flag, f"demo:{name}"])


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    d = tmp_path_factory.mktemp("dump")
    path = str(d / "image.dump")
    bench_dump.generate(path, 3000)
    full, some, empty = d / "full", d / "some", d / "empty"
    for p in (full, some, empty):
        p.mkdir()
    bench_dump.object_store(path, str(full))
    bench_dump.object_store(path, str(some))
    # a third of the objects missing, another third of the wrong size
    rng = random.Random(11)
    for top, _, files in os.walk(some):
        for f in sorted(files):
            r = rng.random()
            if r < 1 / 3:
                os.unlink(os.path.join(top, f))
            elif r < 2 / 3:
                os.truncate(os.path.join(top, f), 7)
    return path, {"full": str(full), "some": str(some), "empty": str(empty)}


@pytest.mark.parametrize("store", ["full", "some", "empty"])
@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_generated_dump_same_bytes(capsysbinary, monkeypatch, dump, store, json_flag):
    path, stores = dump
    argv = ["check", *json_flag, "--lowerdir", f"{path}::{stores[store]}", "-o", "metacopy=on"]
    monkeypatch.setattr(causes_mod.SpillCauseIndex, "RUN", 97)  # dozens of runs to merge
    out = _same(capsysbinary, argv)
    if store != "full":
        assert (b"lowerdata-missing" in out) and (store == "empty" or b"metacopy-size-mismatch" in out)


def test_cause_paths_from_many_directories(capsysbinary, monkeypatch, tmp_path):
    """One missing object behind files in many directories: the walk meets them out of
    order (it goes down the last directory first), the cause lists them sorted."""
    lines = ["/ 4096 40755 2 0 0 0 1.0 - - -"]
    for d in ("a", "b", "c", "d"):
        lines.append(f"/{d} 4096 40755 2 0 0 0 1.0 - - -")
        for f in ("x", "y"):
            lines.append(f"/{d}/{f} 100 100644 1 0 0 0 1.0 ab/shared - -")
        lines.append(f"/{d}/own 100 100644 1 0 0 0 1.0 cd/{d}{d} - -")
    (tmp_path / "image.dump").write_text("\n".join(lines) + "\n")
    (tmp_path / "objects").mkdir()
    for json_flag in ([], ["--json"]):
        for run in (3, 4096):
            monkeypatch.setattr(causes_mod.SpillCauseIndex, "RUN", run)
            out = _same(capsysbinary, ["check", *json_flag, "--lowerdir",
                                       f"{tmp_path}/image.dump::{tmp_path}/objects"])
    causes = out.split(b'"causes"')[1]
    assert causes.index(b'"/a/x"') < causes.index(b'"/b/y"') < causes.index(b'"/d/y"')
    findings = out.split(b'"causes"')[0]
    assert findings.index(b'"/d/y"') < findings.index(b'"/a/x"')  # the walk's order


def test_names_not_ascii(capsysbinary, tmp_path):
    """Names in UTF-8 (kept raw in the JSON) and not (escaped): the spooled findings come
    back whole whatever piece of the compressed stream a character falls in."""
    lines = ["/ 4096 40755 2 0 0 0 1.0 - - -", "/d\\xc3\\xa9 4096 40755 2 0 0 0 1.0 - - -"]
    for i in range(700):
        name = "\\xe6\\x97\\xa5\\xe6\\x9c\\xac" * (1 + i % 5) + ("\\xff" if i % 3 == 0 else "") + f"-{i}"
        lines.append(f"/d\\xc3\\xa9/{name} 10 100644 1 0 0 0 1.0 o/{i:04d} - -")
    (tmp_path / "image.dump").write_text("\n".join(lines) + "\n")
    (tmp_path / "objects").mkdir()
    for json_flag in ([], ["--json"]):
        out = _same(capsysbinary, ["check", *json_flag, "--lowerdir",
                                   f"{tmp_path}/image.dump::{tmp_path}/objects"])
    assert "/dé/日本日本-1".encode() in out and b"\\udcff" in out


def test_spilled_runs_are_merged_and_closed(monkeypatch, dump):
    """Findings go to temporary files in runs (none kept in memory past a run), and every
    run file is closed once read."""
    path, stores = dump
    monkeypatch.setattr(causes_mod.SpillCauseIndex, "RUN", 50)
    ns = cli.build_parser().parse_args(["check", "--lowerdir", f"{path}::{stores['empty']}"])
    stack, _ = cli._load(ns, ns.args)
    engine = cli._engine(stack)
    files = []
    real = causes_mod._Runs._spill

    def spill(self):
        real(self)
        files.append(self.files[-1])

    monkeypatch.setattr(causes_mod._Runs, "_spill", spill)
    result = causes_mod.check_stream(engine)
    old = check_causes(engine)
    assert len(files) > 20
    assert result.finding_count == len(old.findings)
    assert len(result.causes) == len(old.causes)
    got = [c.as_json() for c in result.causes]
    assert got == [c.as_json() for c in old.causes]
    assert all(f.closed for f in files)


def test_check_memory_far_below_holding_every_finding(tmp_path):
    """Peak RSS of ``check`` on a 20,000-line dump whose every object is missing (one finding
    and one cause for each of its 11,000 external files), above the start-up floor: about
    600 bytes a line here (the dump's text is 176), where holding every finding and cause
    took 3,300."""
    path = str(tmp_path / "image.dump")
    bench_dump.generate(path, 20000)
    empty = tmp_path / "empty"
    empty.mkdir()
    floor = max(bench_dump.run(None)[2] for _ in range(2))
    wall, cpu, rss, rc = bench_dump.run(["check", "--lowerdir", f"{path}::{empty}"])
    assert rc == 1
    per_line = (rss - floor) * 1048576 / 20000
    assert per_line < 1500, (rss, floor, per_line)


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_no_writable_temporary_directory(capsysbinary, monkeypatch, json_flag):
    """On a read-only system (no temporary directory can be written), check spills in memory:
    the same bytes, no traceback."""
    import tempfile

    def refuse(*a, **kw):
        raise FileNotFoundError(2, "No usable temporary directory found")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    monkeypatch.setattr(causes_mod.SpillCauseIndex, "RUN", 2)  # spill at once
    _same(capsysbinary, ["check", *json_flag, "demo:one-cause"])
