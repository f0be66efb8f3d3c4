"""export -> build -> mount: the kernel shows the same bytes as through the original stack,
files far beyond the inline limit included (in the stack file, or in an object store)."""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from harness import run_cli
from ovlinspect.live import mountapi

pytestmark = pytest.mark.kernel

MB = 1 << 20


def _layers(root: str) -> None:
    rng = random.Random(42)
    a, b = os.path.join(root, "A"), os.path.join(root, "B")
    os.makedirs(os.path.join(a, "lib"))
    os.makedirs(os.path.join(b, "lib"))
    files = {
        "A/small.txt": b"hello\n",
        "A/lib/edge": rng.randbytes(64 * 1024),           # at the inline limit
        "A/lib/big.so": rng.randbytes(3 * MB + 123),      # several chunks
        "A/lib/zeros": bytes(200_000),                     # sparse
        "A/lib/tail": b"ELF" + bytes(100_000),
        "B/lib/big.so": rng.randbytes(MB),                 # shadowed by A's
        "B/lib/under": rng.randbytes(70_000),             # seen through A's lib
        "B/only": rng.randbytes(65 * 1024),
    }
    for rel, data in files.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)


def _kernel_view(mnt: str) -> dict[str, str]:
    """Every regular file through the mount: sha256 of its bytes, read through the kernel."""
    out = {}
    for d, _, names in os.walk(mnt):
        for n in names:
            p = os.path.join(d, n)
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while chunk := f.read(MB):
                    h.update(chunk)
            out[os.path.relpath(p, mnt)] = f"{os.path.getsize(p)}:{h.hexdigest()}"
    return out


@pytest.mark.parametrize("with_objects", [False, True], ids=["inline", "objects"])
def test_export_build_mount_same_bytes(tmpfs, with_objects):
    _layers(tmpfs)
    a, b = os.path.join(tmpfs, "A"), os.path.join(tmpfs, "B")
    orig = os.path.join(tmpfs, "orig")
    os.mkdir(orig)
    mountapi.mount_overlay_legacy(orig, f"{a}:{b}", None, None, "")
    want = _kernel_view(orig)
    assert len(want) == 7 and want["lib/big.so"].startswith(f"{3 * MB + 123}:")

    objects = os.path.join(tmpfs, "objects")
    argv = ["export", "--lowerdir", f"{a}:{b}"] + (["--objects", objects] if with_objects else [])
    rc, text, err = run_cli(argv)
    assert rc == 0, err
    stack = os.path.join(tmpfs, "stack.toml")
    with open(stack, "w") as f:
        f.write(text)
    big_entry = text.split('path = "/lib/big.so"')[1].split("[[")[0]
    if with_objects:
        assert 'object = "sha256:' in big_entry and "content" not in big_entry
        stored = [f for _, _, fs in os.walk(objects) for f in fs]
        assert len(stored) == 5  # big.so x2, tail, under, only (edge is inline, zeros sparse)
        assert "stored in" in err
        rc, out, err = run_cli(["build", stack, os.path.join(tmpfs, "refused")])
        assert rc == 2 and "--objects DIR" in err  # never built as zeros
        assert not os.path.exists(os.path.join(tmpfs, "refused"))  # refused before writing anything
    else:
        assert "content_hex = " in big_entry and not os.path.exists(objects)

    dest = os.path.join(tmpfs, "built")
    argv = ["build", stack, dest, "--mount"] + (["--objects", objects] if with_objects else [])
    rc, out, err = run_cli(argv)
    assert rc == 0, err
    assert "WARNING" not in out
    assert _kernel_view(os.path.join(dest, "merged")) == want


def test_incomplete_file_is_reported_by_build(tmpfs):
    """A stack file whose entry says a file was not exported in full: build says so."""
    stack = os.path.join(tmpfs, "stack.toml")
    with open(stack, "w") as f:
        f.write('version = 1\n[[layer]]\nrole = "lower"\nname = "A"\n[[layer.entry]]\npath = "/x"\n'
                'type = "file"\nsize = 100000\nincomplete = "cannot open: Permission denied"\n'
                '[[layer]]\nrole = "lower"\nname = "B"\n')
    rc, out, err = run_cli(["build", stack, os.path.join(tmpfs, "d"), "--mount"])
    assert rc == 0, err
    assert "WARNING: 1 file(s) were not exported in full" in out
    assert "/x in layer A is not complete: cannot open: Permission denied" in err
    with open(os.path.join(tmpfs, "d", "merged", "x"), "rb") as f:
        assert f.read() == bytes(100000)  # what the file holds: nothing, so zeros, announced
