"""One cause, 79 symptoms, held against the kernel: the paths `check` lists under the cause are
exactly those whose lstat the kernel fails with EIO, and the one fix it names (rename the plain
directory base3:/ab) makes the kernel serve every one of them."""

from __future__ import annotations

import json
import os
from importlib import resources

import harness
import pytest
from harness import run_cli

from ovlinspect.live.build import build_stack
from ovlinspect.sources.stackfile import loads_stack

pytestmark = pytest.mark.kernel


def _demo_text() -> str:
    return (resources.files("ovlinspect") / "demos" / "one-cause.toml").read_text()


def _mounted(text: str, where: str):
    built = build_stack(loads_stack(text), os.path.join(where, "layers"))
    target = os.path.join(where, "merged")
    os.makedirs(target)
    built.mount(target)
    return built, target


def test_the_cause_lists_exactly_the_paths_the_kernel_fails(tmpfs: str) -> None:
    built, target = _mounted(_demo_text(), os.path.join(tmpfs, "broken"))
    try:
        rc, out, err = run_cli(["check", "--json", target])
        assert rc == 1, err
        cause = json.loads(out)["causes"][0]
        assert cause["rule"] == "lowerdata-redirect-broken"
        assert (cause["layer"], cause["layer_path"]) == (3, "/ab") and cause["count"] == 79
        paths = ["/bin/" + n for n in sorted(os.listdir(os.path.join(target, "bin")))]
        seen = harness.observe(target, paths)
        eio = sorted(p for p, o in seen.items() if o.errno == "EIO")
        assert eio == cause["paths"]
        assert all(seen[p].errno is None for p in paths if p not in eio)
        assert seen["/bin/shadowed"].data == b"base2:/zz/obj\n"  # the second cause: wrong bytes
    finally:
        built.umount_all()

    # the fix, once: rename the plain directory in base3 (a fresh build; nothing is changed in
    # the layers inspected above)
    text = _demo_text()
    fixed = text.replace('{ "path" = "/ab", "type" = "dir" }', '{ "path" = "/ab-old", "type" = "dir" }')
    fixed = fixed.replace('"path" = "/ab/unrelated"', '"path" = "/ab-old/unrelated"')
    assert fixed.count("/ab-old") == 2
    built, target = _mounted(fixed, os.path.join(tmpfs, "fixed"))
    try:
        seen = harness.observe(target, cause["paths"])
        for p in cause["paths"]:
            n = p[len("/bin/f"):]
            assert seen[p].errno is None and seen[p].data == f"objects:/ab/cd{n}\n".encode(), p
        rc, out, err = run_cli(["check", "--json", target])
        rules = [c["rule"] for c in json.loads(out)["causes"]]
        assert "lowerdata-redirect-broken" not in rules and "shadowed-lowerdata" in rules
    finally:
        built.umount_all()


def test_owner_is_the_metadata_layer_s(tmpfs: str) -> None:
    text = ('version = 1\noptions = "metacopy=on,redirect_dir=on"\n'
            '[[layer]]\nrole = "lower"\nname = "A"\n'
            '[[layer.entry]]\npath = "/m"\ntype = "file"\nsize = 5\nuid = 1234\ngid = 5678\n'
            'xattrs = { "trusted.overlay.metacopy" = "", "trusted.overlay.redirect" = "/d" }\n'
            '[[layer]]\nrole = "lower"\nname = "B"\n'
            '[[layer.entry]]\npath = "/d"\ntype = "file"\ncontent = "data\\n"\nuid = 7\ngid = 8\n')
    built = build_stack(loads_stack(text), os.path.join(tmpfs, "layers"), exact=True)
    target = os.path.join(tmpfs, "merged")
    os.makedirs(target)
    built.mount(target)
    try:
        st = os.lstat(os.path.join(target, "m"))
        rc, out, err = run_cli(["explain", "--json", target, "/m"])
        p = json.loads(out)["paths"][0]
        assert (p["uid"], p["gid"]) == (st.st_uid, st.st_gid) == (1234, 5678)
        with open(os.path.join(target, "m"), "rb") as f:
            assert f.read() == b"data\n"
    finally:
        built.umount_all()


def test_mounts_names_the_first_cause(tmpfs: str) -> None:
    built, target = _mounted(_demo_text(), tmpfs)
    try:
        rc, out, err = run_cli(["mounts", "--json", "--deep"])
        assert rc == 1, err
        row = next(r for r in json.loads(out) if r["mountpoint"] == target)
        assert row["health"] == "error"
        assert row["detail"].startswith("80 error(s): ")  # kept as it was
        first = row["causes"][0]
        assert first["rule"] == "lowerdata-redirect-broken" and first["count"] == 79
        assert len(row["causes"]) == 4
        rc, out, err = run_cli(["mounts", "--deep"])
        lines = out.splitlines()
        i = next(n for n, l in enumerate(lines) if l.startswith("error") and f" {target} " in l)
        assert lines[i + 1].split() == ["cause:", *first["headline"].split()]
        assert lines[i + 2].split()[0] == "fix:"
        assert lines[i + 3].strip() == f"(and 3 more causes: ovlinspect check {target})"
    finally:
        built.umount_all()
