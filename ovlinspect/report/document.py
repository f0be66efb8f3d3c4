"""The JSON document of ``explain --json`` (the contract: ``reference/explain-json.md``).

One object per path asked (:func:`path_json`), in a document that names the kernel, its
profile, the stack's layers and options (:func:`document`).  Bytes from the layers are kept as
they are, undecodable bytes as ``\\udcXX`` surrogate escapes.
"""

from __future__ import annotations

from ..kernel.entry import Ref, Resolution, show_raw
from ..kernel.inode import inode_json, xino_of
from ..rules.engine import Engine


def ref_json(engine: Engine, ref: Ref | None) -> dict | None:
    if ref is None:
        return None
    return {"layer": engine.json_index(ref.layer), "path": _j(b"/" + b"/".join(ref.path))}

def path_json(engine: Engine, res: Resolution) -> dict:
    ok = res.errno is None
    is_file = ok and res.kind == "file"
    entries = [_j(n) for n in engine.entries(res)] if ok and res.kind == "dir" else None
    if res.readdir_errno:
        entries = None
    logs = res.kernel_log + (res.open_log if ok else []) + (res.readdir_log if ok else [])
    path = _j(show_raw(res.path) + (b"/" if res.slash and res.path else b""))
    return {
        "path": path,
        "asked": _j(res.asked) if res.asked is not None else path,
        "errno": res.errno,
        "type": res.kind if ok else None,
        "size": res.size if ok else None,
        "mode": res.mode if ok else None,
        "uid": res.uid if ok else None,
        "gid": res.gid if ok else None,
        "target": _j(res.target) if ok and res.target is not None else None,
        "metadata": ref_json(engine, res.metadata) if ok else None,
        "data": ref_json(engine, res.data) if is_file else None,
        "open_errno": res.open_errno if is_file else None,
        "entries": entries,
        "readdir_errno": res.readdir_errno if ok and res.kind == "dir" else None,
        "kernel_log": "\n".join(logs) if logs else None,
        "trace": list(res.trace),
        "findings": [f.as_json() for f in res.findings],
    }

def document(engine: Engine, paths: list[Resolution]) -> dict:
    x = xino_of(engine)
    return {
        "version": 1,
        "kernel": engine.kernel,
        "kernel_profile": engine.profile.as_json(),
        "source": engine.stack.source,
        "layers": [
            {"index": i, "role": role, "path": layer.path if layer.path else None,
             "label": layer.label}
            for i, (role, layer) in enumerate(engine.stack.layers)
        ],
        "options": engine.options.as_json(),
        "mount_errno": engine.options.mount_errno,
        "mount_log": list(engine.options.mount_log),
        # the mount's inode numbering (kernel/inode.py), and st_ino/st_dev of each path
        "xino": None if x is None else {"bits": x.bits, "same_fs": x.same_fs, "numfs": x.numfs,
                                        "fsids": x.fsids, "log": x.log},
        "paths": [{**path_json(engine, r), "inode": inode_json(engine, r)} for r in paths],
    }


def _j(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")
