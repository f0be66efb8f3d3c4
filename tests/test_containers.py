"""Container targets and engine storage layouts (no root needed: plain directories and links)."""

from __future__ import annotations

import os

import pytest

from ovlinspect.sources.containers import ContainerError, engine_layer, inspect_container, layout_label, split_target
from ovlinspect.sources.inspect_json import InspectError, load_inspect


def test_split_target():
    assert split_target("docker:web") == ("docker", "web")
    assert split_target("podman:a:b") == ("podman", "a:b")
    assert split_target("crictl:3f4e") == ("crictl", "3f4e")
    assert split_target("demo:seed") is None and split_target("/mnt/docker:x") is None


def test_overlay2_short_link_names_the_layer(tmp_path):
    root = tmp_path / "overlay2"
    ident = "f9c2e39094cc1741962295553945e01adc97bdc024965864055fd3c121a5f5d3"
    (root / ident / "diff").mkdir(parents=True)
    (root / "l").mkdir()
    os.symlink(f"../{ident}/diff", root / "l" / "EXUXNKHINKY5ZN2FZ5YT5AVRWS")
    used, label, note = engine_layer(str(root / "l" / "EXUXNKHINKY5ZN2FZ5YT5AVRWS"))
    assert used == str(root / ident / "diff") and label == "f9c2e39094cc" and note == ""
    assert layout_label(str(root / (ident + "-init") / "diff")) == "f9c2e39094cc-init"


def test_podman_mapped_falls_back_to_the_shared_link(tmp_path):
    root = tmp_path / "overlay"
    layer, ctr = "4bcd3b8efe8d432ca799dc16ed507513df0fdeac5ada6abd8752d8e2e39993ed", "b57e89faa20de731"
    (root / layer / "diff").mkdir(parents=True)
    (root / "l").mkdir()
    os.symlink(f"../{layer}/diff", root / "l" / "QHJ63EMWR67TG3BXI5TIBE4X7P")
    gone = root / ctr / "mapped" / "0" / "l" / "QHJ63EMWR67TG3BXI5TIBE4X7P"
    used, label, note = engine_layer(str(gone))
    assert used == str(root / layer / "diff") and label == "4bcd3b8efe8d" and "idmapped" in note
    # a root prefix (another process's /proc/PID/root) is used for every lookup
    used, label, _ = engine_layer(str(gone).removeprefix(str(tmp_path)), str(tmp_path))
    assert used == f"/overlay/{layer}/diff" and label == "4bcd3b8efe8d"


def test_containerd_snapshots_and_unknown_paths(tmp_path):
    assert layout_label("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/42/fs") == "snapshot 42"
    assert engine_layer(str(tmp_path)) == (str(tmp_path), "", "")


def test_missing_engine_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    for engine in ("docker", "podman", "nerdctl", "crictl"):
        with pytest.raises(ContainerError, match=f"the {engine} command is not on PATH.*--pid"):
            inspect_container(engine, "web")
    with pytest.raises(ContainerError, match="name a container"):
        inspect_container("docker", "")


def test_inspect_choices_are_listed():
    objs = '[{"Name": "/a", "State": {}, "GraphDriver": {"Name": "overlay2", "Data": {"UpperDir": "/x/diff"}}},' \
           ' {"Name": "/b", "State": {}, "GraphDriver": {"Name": "overlay2", "Data": {"UpperDir": "/y/diff"}}}]'
    with pytest.raises(InspectError, match=r"\(0: a, 1: b\); pick one with --container"):
        load_inspect(objs)
    with pytest.raises(InspectError, match=r"no entry 2"):
        load_inspect(objs, 2)
    assert load_inspect(objs, 1).upper == "/y/diff"
