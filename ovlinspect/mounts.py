"""``ovlinspect mounts``: every overlay mount, its layer counts, and a one-word health."""

from __future__ import annotations

from .mountinfo import layer_path_problem, overlay_mounts, read_mountinfo
from .rules import RULES


def list_mounts(pid: int | None = None, deep: bool = False) -> list[dict]:
    """One row per overlay mount.

    health: ``ok`` (layers readable, no problem found), ``warning`` (a shadowing hazard or
    similar), ``error`` (the stack has errors), ``unresolved`` (layer paths cannot be used:
    relative or fd-based), ``unreadable`` (a layer cannot be opened).  Without ``deep`` only
    stack-level problems are looked for (quick); ``deep`` checks every path of every mount.
    """
    from .engine import Engine
    from .layers import LayerError
    from .sources import InputError, live_stack

    proc = f"/proc/{pid}" if pid else "/proc/self"
    rows = []
    for m in overlay_mounts(read_mountinfo(proc)):
        row = {"mountpoint": m.mountpoint, "upper": m.upperdir is not None,
               "lowers": len(m.lowers), "datas": len(m.datas), "health": "ok", "detail": ""}
        problems = [layer_path_problem(p) for p in [*m.lowers, *m.datas, *( [m.upperdir] if m.upperdir else [])]]
        problems = [p for p in problems if p]
        if problems:
            row["health"], row["detail"] = "unresolved", problems[0]
            rows.append(row)
            continue
        try:
            stack = live_stack(m.mountpoint, pid)
            engine = Engine(stack)
            findings = engine.check() if deep else engine.stack_findings()
        except (InputError, LayerError, ValueError, OSError) as e:
            row["health"], row["detail"] = "unreadable", str(e)
            rows.append(row)
            continue
        order = list(RULES)  # most important first
        findings = sorted(findings, key=lambda f: order.index(f.rule))
        errors = [f for f in findings if f.severity == "error"]
        warnings = [f for f in findings if f.severity == "warning"]
        if errors:
            row["health"], row["detail"] = "error", f"{len(errors)} error(s): {errors[0].rule}"
        elif warnings:
            row["health"], row["detail"] = "warning", f"{len(warnings)} warning(s): {warnings[0].rule}"
        stack.close()
        rows.append(row)
    return rows
