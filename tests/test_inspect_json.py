"""docker / podman inspect JSON -> overlay layer directories."""

from __future__ import annotations

import json

import pytest

from ovlinspect.sources.inspect_json import InspectError, InspectStack, load_inspect, load_inspect_all

D = "/var/lib/docker/overlay2"
P = "/var/lib/containers/storage/overlay"

DOCKER_CONTAINER = {
    "Id": "3f4e8a1b2c9d0e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f",
    "Created": "2026-01-01T00:00:00Z",
    "State": {"Status": "running"},
    "Image": "sha256:abc",
    "Name": "/web",
    "Driver": "overlay2",
    "GraphDriver": {
        "Data": {
            "ID": "3f4e8a1b2c9d",
            "LowerDir": f"{D}/aaa-init/diff:{D}/bbb/diff:{D}/ccc/diff",
            "MergedDir": f"{D}/aaa/merged",
            "UpperDir": f"{D}/aaa/diff",
            "WorkDir": f"{D}/aaa/work",
        },
        "Name": "overlay2",
    },
}

PODMAN_CONTAINER = {
    "Id": "9c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d",
    "Created": "2026-01-01T00:00:00Z",
    "State": {"Status": "exited"},
    "Name": "db",
    "Driver": "overlay",
    "GraphDriver": {
        "Name": "overlay",
        "Data": {
            "LowerDir": f"{P}/l1/diff:{P}/l2/diff",
            "UpperDir": f"{P}/u/diff",
            "WorkDir": f"{P}/u/work",
        },
    },
}

# composefs mode: each composefs layer is mounted as a metadata lower, and their object
# directories follow after '::' as data-only layers.
PODMAN_COMPOSEFS = {
    "Id": "1111222233334444555566667777888899990000aaaabbbbccccddddeeeeffff",
    "State": {"Status": "running"},
    "Name": "cfs",
    "GraphDriver": {
        "Name": "overlay",
        "Data": {
            "LowerDir": (
                f"{P}/c1/composefs-layers/0:{P}/c2/composefs-layers/1:{P}/plain/diff"
                f"::{P}/c1/diff::{P}/c2/diff"
            ),
            "MergedDir": f"{P}/u/merged",
            "UpperDir": f"{P}/u/diff",
            "WorkDir": f"{P}/u/work",
        },
    },
}

DOCKER_IMAGE_ONE_LAYER = {
    "Id": "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "RepoTags": ["alpine:3.20"],
    "RootFS": {"Type": "layers", "Layers": ["sha256:x"]},
    "GraphDriver": {
        "Data": {"MergedDir": f"{D}/img/merged", "UpperDir": f"{D}/img/diff", "WorkDir": f"{D}/img/work"},
        "Name": "overlay2",
    },
}


def dumps(obj):
    return json.dumps(obj, indent=4)


def test_docker_container_list():
    s = load_inspect(dumps([DOCKER_CONTAINER]))
    assert isinstance(s, InspectStack)
    assert s.lowers == [f"{D}/aaa-init/diff", f"{D}/bbb/diff", f"{D}/ccc/diff"]
    assert s.datas == []
    assert s.upper == f"{D}/aaa/diff" and s.work == f"{D}/aaa/work"
    assert s.merged == f"{D}/aaa/merged"
    assert s.name == "web" and s.id == DOCKER_CONTAINER["Id"]
    assert s.driver == "overlay2" and s.kind == "container"


def test_podman_container_single_object_no_merged():
    s = load_inspect(dumps(PODMAN_CONTAINER))
    assert s.lowers == [f"{P}/l1/diff", f"{P}/l2/diff"]
    assert s.upper == f"{P}/u/diff" and s.merged is None
    assert s.name == "db" and s.driver == "overlay"


def test_podman_composefs_data_only_layers():
    s = load_inspect(dumps([PODMAN_COMPOSEFS]))
    assert s.lowers == [f"{P}/c1/composefs-layers/0", f"{P}/c2/composefs-layers/1", f"{P}/plain/diff"]
    assert s.datas == [f"{P}/c1/diff", f"{P}/c2/diff"]
    assert s.upper == f"{P}/u/diff"


def test_escaped_colon_stays_in_one_layer():
    obj = json.loads(dumps(PODMAN_CONTAINER))
    obj["GraphDriver"]["Data"]["LowerDir"] = "/srv/a\\:b/diff:/srv/c/diff"
    s = load_inspect(dumps(obj))
    assert len(s.lowers) == 2
    assert ":" in s.lowers[0] and s.lowers[0].endswith("b/diff") and s.lowers[1] == "/srv/c/diff"


def test_image_with_one_layer_has_only_upper():
    s = load_inspect(dumps([DOCKER_IMAGE_ONE_LAYER]).encode())
    assert s.lowers == [] and s.upper == f"{D}/img/diff"
    assert s.kind == "image" and s.name == "alpine:3.20"


def test_empty_strings_mean_absent():
    obj = json.loads(dumps(DOCKER_CONTAINER))
    obj["GraphDriver"]["Data"].update(MergedDir="", WorkDir="")
    s = load_inspect(dumps(obj))
    assert s.merged is None and s.work is None


def test_several_objects():
    text = dumps([DOCKER_CONTAINER, PODMAN_CONTAINER])
    with pytest.raises(InspectError, match=r"holds 2 objects \(0: web, 1: db\); pick one with --container"):
        load_inspect(text)
    assert load_inspect(text, select="db").name == "db"
    assert load_inspect(text, select=0).name == "web"
    assert load_inspect(text, select="3f4e8a1b").name == "web"
    assert [s.name for s in load_inspect_all(text)] == ["web", "db"]
    with pytest.raises(InspectError, match="no object named nope"):
        load_inspect(text, select="nope")
    with pytest.raises(InspectError, match="no entry 5"):
        load_inspect(text, select=5)


def test_unnamed_container_uses_short_id():
    obj = json.loads(dumps(PODMAN_CONTAINER))
    del obj["Name"]
    assert load_inspect(dumps(obj)).name == obj["Id"][:12]


def bad(obj) -> str:
    with pytest.raises(InspectError) as ei:
        load_inspect(obj if isinstance(obj, str) else dumps(obj))
    msg = str(ei.value)
    assert "\n" not in msg and isinstance(ei.value, ValueError)
    return msg


def test_errors():
    no_data = json.loads(dumps(DOCKER_CONTAINER))
    del no_data["GraphDriver"]["Data"]
    assert bad(no_data) == "inspect JSON has no GraphDriver.Data"

    null_data = json.loads(dumps(DOCKER_CONTAINER))
    null_data["GraphDriver"]["Data"] = None
    assert bad(null_data) == "inspect JSON has no GraphDriver.Data"

    vfs = json.loads(dumps(PODMAN_CONTAINER))
    vfs["GraphDriver"] = {"Name": "vfs", "Data": None}
    assert bad(vfs) == "graph driver is vfs, not overlay"

    no_gd = json.loads(dumps(DOCKER_CONTAINER))
    del no_gd["GraphDriver"]
    assert bad(no_gd).startswith("inspect JSON has no GraphDriver")

    empty = json.loads(dumps(DOCKER_CONTAINER))
    empty["GraphDriver"]["Data"] = {"LowerDir": "", "UpperDir": ""}
    assert bad(empty) == "GraphDriver.Data has neither LowerDir nor UpperDir"

    wrong = json.loads(dumps(DOCKER_CONTAINER))
    wrong["GraphDriver"]["Data"]["UpperDir"] = 7
    assert bad(wrong) == "GraphDriver.Data.UpperDir is a number, not a string"

    syntax = json.loads(dumps(PODMAN_CONTAINER))
    syntax["GraphDriver"]["Data"]["LowerDir"] = "/a::/b:/c"
    assert bad(syntax).startswith("GraphDriver.Data.LowerDir: ")

    assert bad("{not json").startswith("inspect JSON is not valid JSON (line 1, column 2")
    assert bad("[]") == "inspect JSON is an empty list"
    assert bad("42") == "inspect JSON is a number, not an object or a list of objects"
    assert bad("[1]") == "inspect JSON entry is a number, not an object"


def test_error_in_list_names_the_entry():
    vfs = json.loads(dumps(PODMAN_CONTAINER))
    vfs["GraphDriver"]["Name"] = "btrfs"
    with pytest.raises(InspectError, match=r"^entry 1: graph driver is btrfs, not overlay$"):
        load_inspect_all(dumps([DOCKER_CONTAINER, vfs]))
