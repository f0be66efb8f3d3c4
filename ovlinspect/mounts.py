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
        except (InputError, ValueError, OSError) as e:
            row["health"], row["detail"] = "unreadable", str(e)
            rows.append(row)
            continue
        order = list(RULES)  # most important first
        findings = sorted(findings, key=lambda f: order.index(f.rule))
        errors = [f for f in findings if f.severity == "error"]
        warnings = [f for f in findings if f.severity == "warning"]
        if errors:
            row["health"], row["detail"] = "error", _counted(errors, "error(s)")
        elif warnings:
            row["health"], row["detail"] = "warning", _counted(warnings, "warning(s)")
        stack.close()
        rows.append(row)
    return rows


def _counted(findings: list, what: str) -> str:
    """``3 error(s): lowerdata-redirect-broken ×2, lowerdata-missing ×1`` (most important rule
    first, as the findings come sorted)."""
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.rule] = counts.get(f.rule, 0) + 1
    return f"{len(findings)} {what}: " + ", ".join(f"{rule} ×{n}" for rule, n in counts.items())
