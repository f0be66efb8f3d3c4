"""The issue-12 stack: one plain directory on the redirect path breaks 79 files (one cause).

Regular layers top to bottom: ``top`` (79 metacopy files /bin/f00../bin/f78 redirecting to
/ab/cdNN, one to /zz/obj, one to /ok/obj), ``base1``, ``base2`` (holds /zz/obj: it intercepts
that redirect), ``base3`` (a plain directory /ab: every redirect into /ab walks it and fails
with EIO); the data-only layer ``objects`` holds every object.  As stack-file layers
(role, name, entries) for :class:`harness.Case` and :func:`doc`.
"""

from __future__ import annotations

T = "trusted.overlay."
N_BROKEN = 79


def _obj(name: str) -> str:
    return f"objects:{name}\n"


def _meta(redirect: str, size: int) -> dict:
    return {"type": "file", "size": size, "xattrs": {T + "metacopy": "", T + "redirect": redirect}}


def layers() -> list[tuple[str, str, list[dict]]]:
    top = [{"path": f"/bin/f{i:02}", **_meta(f"/ab/cd{i:02}", len(_obj(f"/ab/cd{i:02}")))}
           for i in range(N_BROKEN)]
    top.append({"path": "/bin/shadowed", **_meta("/zz/obj", len("base2:/zz/obj\n"))})
    top.append({"path": "/bin/ok", **_meta("/ok/obj", len(_obj("/ok/obj")))})
    objects = [{"path": f"/ab/cd{i:02}", "type": "file", "content": _obj(f"/ab/cd{i:02}")}
               for i in range(N_BROKEN)]
    objects += [{"path": p, "type": "file", "content": _obj(p)} for p in ("/zz/obj", "/ok/obj")]
    return [
        ("lower", "top", top),
        ("lower", "base1", [{"path": "/etc/hosts", "type": "file", "content": "base1:/etc/hosts\n"}]),
        ("lower", "base2", [{"path": "/zz/obj", "type": "file", "content": "base2:/zz/obj\n"}]),
        ("lower", "base3", [{"path": "/ab", "type": "dir"},
                            {"path": "/ab/unrelated", "type": "file", "content": "base3:/ab/unrelated\n"}]),
        ("data", "objects", objects),
    ]


OPTIONS = "metacopy=on,redirect_dir=on"
PARAMS = {"metacopy": "N", "redirect_dir": "N", "redirect_always_follow": "Y", "index": "N",
          "nfs_export": "N", "xino_auto": "N"}


def doc() -> dict:
    """The stack as a stack-file document (version 1)."""
    return {"version": 1, "description": "issue 12: one plain directory, 79 EIO", "options": OPTIONS,
            "params": dict(PARAMS),
            "layer": [{"role": r, "name": n, "entry": e} for r, n, e in layers()]}


def toml_text() -> str:
    from ovlinspect.sources.stackfile import dump_stack, stack_from_dict

    return dump_stack(stack_from_dict(doc(), ".", source="cause-stack"))
