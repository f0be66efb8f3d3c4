"""Real container engines: docker (a private dockerd) and podman (a private storage).

Images are built locally from a busybox rootfs tarball, with layers that delete, replace,
rename and chmod files; containers are started, and ``docker:NAME`` / ``podman:NAME`` /
``--pid`` / ``--from-inspect`` are checked against ``--observe`` (the kernel, through the
container's own mount) on real paths.  Every engine that cannot run here skips with the reason.
Everything is removed after (containers, images, daemon, mounts, directories).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

import pytest

pytestmark = pytest.mark.kernel

WORKTREE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUSYBOX = shutil.which("busybox") or "/bin/busybox"

#: layers that delete, replace, rename and chmod; the last one makes /usr/lib opaque
STEPS = [
    "RUN rm /etc/a && echo new > /etc/b",
    "RUN echo replaced > /usr/lib/foo && chmod 600 /usr/lib/foo",
    "RUN mv /etc/b /etc/c && mkdir -p /data && echo d > /data/x && chmod 700 /data",
    "RUN rm -r /usr/lib && mkdir /usr/lib && echo z > /usr/lib/z && chmod 640 /usr/lib/z",
]
PATHS = ["/", "/etc", "/etc/a", "/etc/b", "/etc/c", "/usr/lib", "/usr/lib/foo", "/usr/lib/z",
         "/data", "/data/x", "/bin/sh", "/bin/busybox", "/nonexistent"]


def cli(*args: str, env: dict | None = None, stdin: str | None = None) -> tuple[int, str, str]:
    e = dict(os.environ if env is None else env)
    e["PYTHONPATH"] = WORKTREE
    p = subprocess.run([sys.executable, "-m", "ovlinspect", *args], cwd=WORKTREE, env=e,
                       capture_output=True, text=True, input=stdin, timeout=120)
    return p.returncode, p.stdout, p.stderr


def run(argv: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def make_rootfs_tar(dest: str) -> str:
    """A tarball of a tiny rootfs: busybox-static and a few links and files."""
    if not os.path.isfile(BUSYBOX):
        pytest.skip("needs busybox (Debian busybox-static) for the image")
    tar = os.path.join(dest, "bb.tar")
    with tarfile.open(tar, "w") as t:
        def add_dir(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            t.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            import io

            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            t.addfile(info, io.BytesIO(data))

        for d in ("bin", "etc", "tmp", "usr", "usr/lib", "proc", "sys", "dev"):
            add_dir(d)
        t.add(BUSYBOX, "bin/busybox")
        for cmd in ("sh", "ls", "cat", "sleep", "rm", "mv", "chmod", "mkdir", "echo"):
            info = tarfile.TarInfo(f"bin/{cmd}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            t.addfile(info)
        add_file("etc/a", b"a\n")
        add_file("usr/lib/foo", b"hello\n")
        add_file("usr/lib/bar", b"bar\n")
    return tar


def umount_under(path: str) -> None:
    """Unmount everything mounted below ``path`` (deepest first, lazily)."""
    from ovlinspect.sources.mountinfo import parse_mountinfo, read_mountinfo

    for _ in range(3):
        mps = [e.mountpoint for e in parse_mountinfo(read_mountinfo())
               if e.mountpoint == path or e.mountpoint.startswith(path + "/")]
        if not mps:
            return
        for mp in sorted(set(mps), key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True)


def observe_all(target_args: list[str], paths: list[str], env: dict) -> dict:
    rc, out, err = cli("explain", "--json", "--observe", *target_args, *paths, env=env)
    assert rc == 0, err
    doc = json.loads(out)
    bad = {p["path"]: p["mismatches"] for p in doc["paths"] if p["mismatches"]}
    assert not bad, bad
    return doc


def _engine_reason(engine: str) -> str | None:
    if os.geteuid() != 0:
        return f"{engine} tests need root"
    if shutil.which(engine) is None:
        return f"{engine} is not installed"
    return None


# ------------------------------------------------------------------------------- docker


@pytest.fixture(scope="module")
def docker(kernel_ready):
    reason = _engine_reason("docker") or (None if shutil.which("dockerd") else "dockerd is not installed")
    if reason:
        pytest.skip(reason)
    base = tempfile.mkdtemp(prefix="ovlct-d-")
    # a long data root: the lowerdir of absolute short links would pass a page, so docker
    # mounts the many-layer image with relative l/XXXX paths, as /var/lib/docker does at ~90 layers
    data = os.path.join(base, "r" * 200, "root")
    sock = os.path.join(base, "sock")
    env = dict(os.environ, DOCKER_HOST=f"unix://{sock}")
    log = open(os.path.join(base, "log"), "w")
    daemon = subprocess.Popen(
        ["dockerd", "--data-root", data, "--exec-root", os.path.join(base, "e"), "--pidfile",
         os.path.join(base, "pid"), "-H", f"unix://{sock}", "--bridge", "none", "--iptables=false",
         "--ip6tables=false"], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(150):
            if os.path.exists(sock) and run(["docker", "info"], env, 10).returncode == 0:
                break
            if daemon.poll() is not None:
                break
            time.sleep(0.2)
        else:
            pass
        if daemon.poll() is not None or run(["docker", "info"], env, 10).returncode != 0:
            with open(os.path.join(base, "log")) as f:
                tail = [l for l in f.read().splitlines() if l.strip()][-1:]
            pytest.skip(f"dockerd does not start here: {tail[0] if tail else 'no log'}")
        tar = make_rootfs_tar(base)
        assert run(["docker", "import", tar, "bb:1"], env).returncode == 0
        ctx = os.path.join(base, "ctx")
        os.mkdir(ctx)
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write("\n".join(["FROM bb:1", *STEPS]) + "\n")
        with open(os.path.join(ctx, "Dockerfile.many"), "w") as f:
            f.write("\n".join(["FROM bb:2", *[f"RUN echo {i} > /etc/f{i}" for i in range(16)],
                               "RUN rm /etc/f0 && mv /etc/f1 /etc/g1 && chmod 600 /etc/f2"]) + "\n")
        for tag, name in (("bb:2", "Dockerfile"), ("bb:many", "Dockerfile.many")):
            r = run(["docker", "build", "-q", "-t", tag, "-f", os.path.join(ctx, name), ctx], env, 300)
            assert r.returncode == 0, r.stderr
        for name, image in (("web", "bb:2"), ("many", "bb:many")):
            r = run(["docker", "run", "-d", "--network", "none", "--name", name, image, "sleep", "1000"], env)
            assert r.returncode == 0, r.stderr
        r = run(["docker", "create", "--network", "none", "--name", "stopped", "bb:2", "sleep", "1"], env)
        assert r.returncode == 0, r.stderr
        yield env
    finally:
        ids = run(["docker", "ps", "-aq"], env, 30).stdout.split() if daemon.poll() is None else []
        if ids:
            run(["docker", "rm", "-f", *ids], env, 60)
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        umount_under(base)
        shutil.rmtree(base, ignore_errors=True)


def _inspect(engine: str, name: str, env: dict) -> dict:
    argv = [engine, "container", "inspect", name] if engine == "podman" else [engine, "inspect", name]
    return json.loads(run(argv, env).stdout)[0]


def test_docker_container_target(docker) -> None:
    env = docker
    doc = observe_all(["docker:web"], PATHS, env)
    assert doc["source"] == "docker:web"
    info = _inspect("docker", "web", env)
    upper_id = info["GraphDriver"]["Data"]["UpperDir"].split("/")[-2]
    labels = [l["label"] for l in doc["layers"]]
    assert labels[0] == upper_id[:12] and labels[1] == upper_id[:12] + "-init"
    # image layers labelled by their digests (RootFS.Layers, bottom first) and layer ids
    image = json.loads(run(["docker", "image", "inspect", "bb:2"], env).stdout)[0]
    digests = image["RootFS"]["Layers"]
    assert [l.split()[1] for l in labels[2:]] == [d[:19] for d in reversed(digests)]
    assert not any(l == "diff" for l in labels)
    by = {p["path"]: p for p in doc["paths"]}
    assert by["/etc/a"]["errno"] == "ENOENT" and by["/usr/lib/foo"]["errno"] == "ENOENT"
    assert by["/etc/c"]["type"] == "file" and by["/usr/lib/z"]["mode"] == 0o640
    # --pid with the container's process predicts the same
    rc, out, err = cli("explain", "--json", "--observe", "--pid", str(info["State"]["Pid"]), "/", *PATHS, env=env)
    assert rc == 0, err
    doc2 = json.loads(out)
    assert [p["mismatches"] for p in doc2["paths"]] == [[]] * len(PATHS)
    keys = ("path", "errno", "type", "size", "mode", "target", "metadata", "data", "open_errno", "entries")
    strip = lambda d: [{k: p[k] for k in keys} for p in d["paths"]]
    assert strip(doc2) == strip(doc)
    rc, out, err = cli("check", "docker:web", env=env)
    lines = out.splitlines()  # no cause of errors, and a summary that counts none
    assert rc == 0 and not any(l.startswith("error") for l in lines) and "error" not in lines[-1], out + err


def test_docker_relative_layers(docker) -> None:
    """Once an image has many layers docker mounts lowerdir=l/XXXX:...: resolved anyway."""
    env = docker
    pid = _inspect("docker", "many", env)["State"]["Pid"]
    with open(f"/proc/{pid}/mountinfo") as f:
        root = next(l for l in f if l.split()[4] == "/")
    assert ",lowerdir=l/" in root or " lowerdir=l/" in root or "rw,lowerdir=l/" in root, root[:300]
    doc = observe_all(["docker:many"], ["/etc", "/etc/f0", "/etc/g1", "/etc/f1", "/etc/f2",
                                        "/etc/f15", "/usr/lib/z"], env)
    assert len(doc["layers"]) == 2 + 4 + 1 + 17
    assert all(len(l["label"].split()[0]) >= 12 and l["label"] != "diff" for l in doc["layers"])
    rc, out, err = cli("explain", "docker:many", "/etc/f2", env=env)
    assert rc == 0 and "docker's overlay2 layout" in out, err


def test_docker_from_inspect(docker) -> None:
    env = docker
    text = run(["docker", "inspect", "web", "stopped"], env).stdout
    # several objects: name the choices
    rc, _, err = cli("check", "--from-inspect", "-", env=env, stdin=text)
    assert rc == 2 and "0: web" in err and "1: stopped" in err and "--container" in err
    # mounted: options and layers from the live mount; --observe works
    rc, out, err = cli("explain", "--json", "--observe", "--from-inspect", "-", "--container", "web",
                       "/usr/lib/z", "/etc/c", "/etc/a", env=env, stdin=text)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["options_guessed"] is False and "live mount" in doc["note"]
    assert all(not p["mismatches"] for p in doc["paths"])
    # not mounted: says the options are guessed, in text and JSON
    rc, out, err = cli("explain", "--from-inspect", "-", "--container", "1", "/etc/c", env=env, stdin=text)
    assert rc == 0 and "options guessed from the module defaults" in out and "-o" in out, err
    rc, out, err = cli("check", "--json", "--from-inspect", "-", "--container", "stopped", env=env, stdin=text)
    assert json.loads(out)["options_guessed"] is True, err
    rc, _, err = cli("explain", "--observe", "--from-inspect", "-", "--container", "stopped", "/",
                     env=env, stdin=text)
    assert rc == 2 and "MergedDir" in err and err.count("\n") == 1
    rc, _, err = cli("check", "--from-inspect", "-", "--lowerdir", "/a", env=env, stdin=text)
    assert rc == 2 and "not both" in err


def test_docker_bad_input(docker) -> None:
    env = docker
    for argv, words in ((["check", "docker:nope"], "no such container"),
                        (["check", "docker:stopped"], "not running"),
                        (["explain", "--pid", "999999999", "/", "/etc"], "no such process")):
        rc, out, err = cli(*argv, env=env)
        assert rc == 2 and words in err and err.count("\n") == 1 and "Traceback" not in err, err
    bare = dict(env, PATH="/nonexistent")
    rc, _, err = cli("check", "docker:web", env=bare)
    assert rc == 2 and "docker command is not on PATH" in err and err.count("\n") == 1


def test_docker_mounts_names_containers(docker) -> None:
    rc, out, err = cli("mounts", "--json", env=docker)
    rows = json.loads(out)
    mine = [r for r in rows if r["container"] == "docker: web"]
    # the container's root in its own namespace, and the merged dir where dockerd mounted it
    assert any(r["mountpoint"] == "/" and r["comm"] == "sleep" for r in mine), rows
    assert any(r["mountpoint"].endswith("/merged") for r in mine), rows
    assert all(r["health"] == "ok" for r in mine)
    from ovlinspect.live.mounts import BAD_HEALTH

    assert rc == (1 if any(r["health"] in BAD_HEALTH for r in rows) else 0)
    rc, out, _ = cli("mounts", env=docker)
    assert "docker: web" in out and "docker: many" in out


# ------------------------------------------------------------------------------- podman


@pytest.fixture(scope="module")
def podman(kernel_ready):
    reason = _engine_reason("podman") or (None if shutil.which("runc") else "runc is not installed")
    if reason:
        pytest.skip(reason)
    base = tempfile.mkdtemp(prefix="ovlct-p-")
    storage, conf = os.path.join(base, "storage.conf"), os.path.join(base, "containers.conf")
    with open(storage, "w") as f:
        f.write(f'[storage]\ndriver = "overlay"\ngraphroot = "{base}/root"\nrunroot = "{base}/run"\n')
    with open(conf, "w") as f:  # crun fails here on hybrid cgroups and setrlimit
        f.write(f'[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\ntmp_dir = "{base}/tmp"\n'
                f'volume_path = "{base}/volumes"\nevents_logger = "file"\n'
                f'events_logfile_path = "{base}/events.log"\n')
    env = dict(os.environ, CONTAINERS_STORAGE_CONF=storage, CONTAINERS_CONF=conf)
    ulimits = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=1000:1000"]
    state = {"env": env, "mapped": None}
    try:
        tar = make_rootfs_tar(base)
        r = run(["podman", "import", tar, "localhost/bb:1"], env)
        if r.returncode != 0:
            pytest.skip(f"podman cannot import here: {r.stderr.strip().splitlines()[-1:]}")
        ctx = os.path.join(base, "ctx")
        os.mkdir(ctx)
        with open(os.path.join(ctx, "Containerfile"), "w") as f:
            f.write("\n".join(["FROM localhost/bb:1", *STEPS]) + "\n")
        r = run(["podman", "build", "-q", "-t", "localhost/bb:2", "-f", os.path.join(ctx, "Containerfile"), ctx], env, 300)
        if r.returncode != 0:
            pytest.skip(f"podman build does not work here: {r.stderr.strip().splitlines()[-1:]}")
        r = run(["podman", "run", "-d", *ulimits, "--name", "web", "localhost/bb:2", "sleep", "1000"], env)
        if r.returncode != 0:
            pytest.skip(f"podman run does not work here: {r.stderr.strip().splitlines()[-1:]}")
        r = run(["podman", "run", "-d", *ulimits, "--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536",
                 "--name", "mapped", "localhost/bb:2", "sleep", "1000"], env)
        state["mapped"] = None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["?"])[-1]
        yield state
    finally:
        _podman_cleanup(env)
        umount_under(base)
        shutil.rmtree(base, ignore_errors=True)


def _podman_cleanup(env: dict) -> None:
    """Remove every container and image of the private storage; kill what podman left."""
    ids = run(["podman", "ps", "-aq", "--no-trunc"], env, 60).stdout.split()
    pids = []
    if ids:
        r = run(["podman", "container", "inspect", *ids], env, 60)
        for c in json.loads(r.stdout or "[]"):
            pids += [(p, _start(p)) for p in (c["State"].get("Pid"), c["State"].get("ConmonPid")) if p]
        run(["podman", "rm", "-f", "-a", "-t", "0"], env, 120)
    run(["podman", "rmi", "-a", "-f"], env, 120)
    for pid, start in pids:  # podman rm normally did this; never leave a container running
        if start is not None and _start(pid) == start:  # the same process, not a reused pid
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def _start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def test_podman_container_target(podman) -> None:
    env = podman["env"]
    doc = observe_all(["podman:web"], PATHS, env)
    info = _inspect("podman", "web", env)
    upper_id = info["GraphDriver"]["Data"]["UpperDir"].split("/")[-2]
    labels = [l["label"] for l in doc["layers"]]
    assert labels[0] == upper_id[:12] and len(labels) == 1 + 5
    lower_ids = [d.split("/")[-2][:12] for d in info["GraphDriver"]["Data"]["LowerDir"].split(":")]
    assert [l.split()[0] for l in labels[1:]] == lower_ids
    rc, out, err = cli("explain", "--json", "--observe", "--pid", str(info["State"]["Pid"]), "/", *PATHS, env=env)
    assert rc == 0 and all(not p["mismatches"] for p in json.loads(out)["paths"]), err
    # --from-inspect of a running container: the live mount
    text = run(["podman", "inspect", "web"], env).stdout
    rc, out, err = cli("explain", "--json", "--observe", "--from-inspect", "-", *PATHS, env=env, stdin=text)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["options_guessed"] is False and all(not p["mismatches"] for p in doc["paths"])
    rc, out, _ = cli("mounts", "--json", env=env)
    assert any(r["container"] == "podman: web" and r["mountpoint"] == "/" for r in json.loads(out))
    rc, _, err = cli("check", "podman:nope", env=env)
    assert rc == 2 and "no such container" in err and err.count("\n") == 1


def test_podman_idmapped(podman) -> None:
    if podman["mapped"] is not None:
        pytest.skip(f"podman --uidmap does not work here: {podman['mapped']}")
    env = podman["env"]
    pid = _inspect("podman", "mapped", env)["State"]["Pid"]
    with open(f"/proc/{pid}/mountinfo") as f:
        root = next(l for l in f if l.split()[4] == "/")
    assert "/mapped/0/l/" in root  # the idmapped copies podman unmounted after mounting
    doc = observe_all(["podman:mapped"], PATHS, env)
    assert all("/mapped/" not in l["path"] for l in doc["layers"])
    rc, out, err = cli("check", "podman:mapped", env=env)
    assert rc == 0 and "idmapped" in out, err


def test_rootless_podman() -> None:
    users = []
    try:
        with open("/etc/subuid") as f:
            users = [l.split(":")[0] for l in f if l.strip() and not l.startswith("#")]
    except OSError:
        pass
    if not users:
        pytest.skip("rootless podman needs a user with subordinate ids in /etc/subuid; there is none here")
    pytest.skip(f"rootless podman as {users[0]} is not exercised by this suite (it would change "
                "that user's container storage)")
