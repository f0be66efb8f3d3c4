"""The rules that used to mislead, held against real mounts: a directory above the redirect is
never walked (no hazard, no interception), a userxattr mount reads a trusted.* metacopy file
as zeros (an error now), and `mounts --deep` counts each rule of a mix of errors."""

from __future__ import annotations

import json
import os

import harness
import pytest

from harness import Case, E, run_cli

from ovlinspect.live.build import build_stack
from ovlinspect.sources.target import demo_stack

pytestmark = pytest.mark.kernel

T = "trusted.overlay."



def agree(case: Case, tmpfs: str) -> harness.Result:
    res = harness.run_kernel(case, tmpfs)
    assert res.mount_errno is None
    dis = harness.prediction_disagreements(res)
    assert not dis, harness.format_disagreements(case.name, dis, harness.case_toml(case))
    return res


def test_directory_above_the_redirect_is_not_walked(tmpfs: str) -> None:
    case = Case("B above A: /1e in B is never walked by A's redirect", [
        ("lower", "B", [E("/1e", "dir"), E("/1e/abcdef")]),
        ("lower", "A", [E("/foo", size=18, xattrs={T + "metacopy": "", T + "redirect": "/1e/abcdef"})]),
        ("data", "C", [E("/1e", "dir"), E("/1e/abcdef")]),
    ], options="metacopy=on", expect={"/foo": {"data_from": "C:/1e/abcdef"}},
        paths=["/", "/foo", "/1e", "/1e/abcdef"])
    res = agree(case, tmpfs)
    assert harness.check_expectations(res) == []  # the kernel reads C's bytes
    rc, out, err = run_cli(["check", "--json", *harness.explain_argv(res.built, [])[2:]])
    rules = {f["rule"] for f in json.loads(out)["findings"]}
    assert rc == 0, out + err
    assert "shadowing-hazard" not in rules and "shadowed-lowerdata" not in rules


def test_userxattr_mount_reads_a_trusted_metacopy_as_zeros(tmpfs: str) -> None:
    case = Case("userxattr ignores trusted.overlay.metacopy", [
        ("lower", "A", [E("/m", size=16, content="", xattrs={T + "metacopy": "", T + "redirect": "/d"})]),
        ("lower", "B", [E("/d", content="the real data!!\n")]),
    ], options="userxattr", expect={"/m": {"data": b"\0" * 16, "size": 16}}, paths=["/", "/m", "/d"])
    res = agree(case, tmpfs)
    assert harness.check_expectations(res) == []  # zeros, observed
    rc, out, _ = run_cli(["check", "--json", *harness.explain_argv(res.built, [])[2:]])
    doc = json.loads(out)
    assert rc == 1 and doc["summary"]["error"] == 1
    (f,) = [f for f in doc["findings"] if f["severity"] == "error"]
    assert (f["rule"], f["path"]) == ("metacopy-ignored", "/m")
    # and on the live mount, what read() returns is what was predicted (the zeros)
    rc, out, _ = run_cli(["explain", "--json", "--observe", res.target, "/m"])
    m = json.loads(out)["paths"][0]
    assert m["mismatches"] == [] and m["observed"]["content"]["bytes"] == 16
    assert [x["rule"] for x in m["findings"]] == ["metacopy-ignored"]


def test_mounts_deep_counts_each_rule(tmpfs: str) -> None:
    built = build_stack(demo_stack("composefs"), os.path.join(tmpfs, "layers"))
    target = os.path.join(tmpfs, "merged")
    os.mkdir(target)
    built.mount(target)
    try:
        rc, out, _ = run_cli(["check", "--json", target])
        counts: dict[str, int] = {}
        for f in json.loads(out)["findings"]:
            if f["severity"] == "error":
                counts[f["rule"]] = counts.get(f["rule"], 0) + 1
        assert len(counts) >= 2
        rc, out, _ = run_cli(["mounts", "--json", "--deep"])
        row = next(r for r in json.loads(out) if r["mountpoint"] == target)
        assert row["health"] == "error"
        assert row["detail"].startswith(f"{sum(counts.values())} error(s): ")
        for rule, n in counts.items():
            assert f"{rule} ×{n}" in row["detail"]
    finally:
        built.umount_all()
