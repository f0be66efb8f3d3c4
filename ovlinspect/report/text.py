"""The command line's text output: functions that take results and return text.

Every line is a list of segments ``(text, tone)``.  At :func:`render` each segment goes through
THE escaping function (:func:`~ovlinspect.model.xattrs.safe`: nothing from outside moves the
cursor or splits a line), long lines are wrapped at word boundaries to the terminal's width with
a hanging indent (a word is never split, however long), and tones become ANSI colours when
colour is on.  No terminal is looked at here: the caller says the width and whether to colour
(:func:`style_for`).  No textual, no rich.
"""

from __future__ import annotations

import os
import shutil
import unicodedata
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Iterable, Sequence

import humanize

from ..kernel.entry import Resolution, show, show_path
from ..kernel.inode import inode_text
from ..rules.engine import Engine
from ..model.stack import Stack
from ..rules.catalogue import RULES, Finding
from .causes import Cause, CheckResult
from .state import layer_state
from .view import layer_view

# ---------------------------------------------------------------------------- lines and style

#: ANSI SGR parameters of each tone (the 8 basic colours: readable on dark and light terminals)
TONES = {
    "error": "1;31", "warning": "33", "info": "36", "ok": "32", "bad": "31",
    "head": "1", "dim": "2", "path": "1", "label": "35",
}


@dataclass(frozen=True)
class Style:
    """How to render: colour or not, and the width to wrap to (None: do not wrap)."""

    color: bool = False
    width: int | None = None


def style_for(stream, color: str = "auto") -> Style:
    """The style for writing to ``stream``: ``color`` is ``auto`` (colour on a terminal unless
    ``NO_COLOR`` is set to anything non-empty), ``always`` or ``never``; text is wrapped to the
    terminal's width only on a terminal (a pipe or a file gets whole lines, for grep)."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if color == "always":
        on = True
    elif color == "never":
        on = False
    else:
        on = tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
    width = None
    if tty:
        try:
            cols = os.get_terminal_size(stream.fileno()).columns
        except (OSError, AttributeError, ValueError):
            cols = shutil.get_terminal_size().columns
        width = max(cols, 20)
    return Style(color=on, width=width)


Seg = tuple[str, str | None]


@dataclass
class Line:
    """One output line: segments of (text, tone); continuation lines start ``hang`` columns in."""

    segs: list[Seg] = field(default_factory=list)
    hang: int | None = None

    def plain(self) -> str:
        return "".join(show(t) for t, _ in self.segs)


def line(*parts: str | Seg, hang: int | None = None) -> Line:
    """A line from parts: plain strings, or (tone, text) pairs."""
    segs: list[Seg] = []
    for p in parts:
        if isinstance(p, tuple):
            tone, text = p
            segs.append((text, tone))
        else:
            segs.append((p, None))
    return Line(segs, hang)


def _cell_width(text: str) -> int:
    n = 0
    for c in text:
        if unicodedata.combining(c):
            continue
        n += 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1
    return n


def _wrap(segs: list[Seg], width: int, hang: int | None) -> list[list[Seg]]:
    """Greedy wrap at spaces; continuation lines indented by ``hang`` (default: the line's own
    indent plus 2).  A word longer than the room stays whole on its own line."""
    # tokens: (text, tone, is_space)
    tokens: list[tuple[str, str | None, bool]] = []
    for text, tone in segs:
        i = 0
        while i < len(text):
            j = i
            space = text[i] == " "
            while j < len(text) and (text[j] == " ") == space:
                j += 1
            tokens.append((text[i:j], tone, space))
            i = j
    total = sum(_cell_width(t) for t, _, _ in tokens)
    if total <= width:
        return [segs]
    lead = 0
    if tokens and tokens[0][2]:
        lead = len(tokens[0][0])
    if hang is None:
        hang = lead + 2
    hang = min(hang, max(width // 2, 0))
    # a token is a word plus what follows it; glue tone runs that touch without a space
    words: list[list[Seg]] = []  # each: the segments of one word (no spaces inside)
    gaps: list[int] = []         # spaces before each word
    pending = 0
    start = 0
    if tokens and tokens[0][2]:
        start = 1
    prev_space = True
    for text, tone, space in tokens[start:]:
        if space:
            pending += len(text)
            prev_space = True
            continue
        if prev_space or not words:
            words.append([(text, tone)])
            gaps.append(pending)
        else:
            words[-1].append((text, tone))
        pending = 0
        prev_space = False
    out: list[list[Seg]] = []
    cur: list[Seg] = [(" " * lead, None)] if lead else []
    col = lead
    first_on_line = True
    for word, gap in zip(words, gaps):
        w = sum(_cell_width(t) for t, _ in word)
        # break only where it helps: a continuation starts at ``hang``, so a line that has
        # not reached it yet (a short label) keeps its next word
        if not first_on_line and col + gap + w > width and col > hang:
            out.append(cur)
            cur = [(" " * hang, None)] if hang else []
            col = hang
            first_on_line = True
        if not first_on_line and gap:
            cur.append((" " * gap, None))
            col += gap
        cur.extend(word)
        col += w
        first_on_line = False
    out.append(cur)
    return out


def render(lines: Iterable[Line | str], style: Style = Style()) -> str:
    """The lines as text, each ended by a newline: escaped, wrapped, coloured as ``style`` says."""
    out: list[str] = []
    for ln in lines:
        if isinstance(ln, str):
            ln = Line([(ln, None)])
        segs = [(show(t), tone) for t, tone in ln.segs]
        rows = _wrap(segs, style.width, ln.hang) if style.width else [segs]
        for row in rows:
            if style.color:
                out.append("".join(f"\x1b[{TONES[tone]}m{t}\x1b[0m" if tone and t.strip() else t
                                   for t, tone in row).rstrip(" ") + "\n")
            else:
                out.append("".join(t for t, _ in row).rstrip(" ") + "\n")
    return "".join(out)


# ---------------------------------------------------------------------------- numbers

def size_text(n: int | None) -> str:
    """``18 bytes``; ``1.2 MiB (1234567 bytes)`` when a unit helps."""
    if n is None:
        return "?"
    if n < 1024:
        return f"{n} byte" + ("" if n == 1 else "s")
    return f"{humanize.naturalsize(n, binary=True)} ({n} bytes)"


def count_text(n: int, noun: str, plural: str | None = None) -> str:
    """``1 path``, ``20,000 paths``."""
    return f"{humanize.intcomma(n)} {noun if n == 1 else (plural or noun + 's')}"


def duration_text(seconds: float) -> str:
    """``1.23 seconds``, ``2 minutes and 3.5 seconds``."""
    return humanize.precisedelta(timedelta(seconds=seconds), minimum_unit="seconds", format="%0.1f")


# ---------------------------------------------------------------------------- the stack

def kernel_text(engine: Engine) -> str:
    """Which kernel's behaviours the prediction follows, and why that one."""
    return engine.profile.summary(engine.kernel)


def options_text(engine: Engine) -> str:
    o = engine.options
    return (f"metacopy={'on' if o.metacopy else 'off'} redirect_dir={o.redirect_dir} "
            f"verity={o.verity}" + (" userxattr" if o.userxattr else ""))


def layers_text(engine: Engine) -> list[Line]:
    out = []
    for i, (role, layer) in enumerate(engine.stack.layers):
        where = show(os.fsencode(layer.path)) if layer.path else "(in memory)"
        out.append(line(f"  {i}  {role:<5}  ", ("label", show(layer.label.encode())), f"  {where}", hang=6))
    return out


def stack_text(engine: Engine, stack: Stack) -> list[Line]:
    """The header of explain and check: the stack, its kernel and options, its layers, a note."""
    out = [line(("head", "stack"), f"  {stack.source}  ({kernel_text(engine)}; {options_text(engine)})",
                hang=7)]
    out += layers_text(engine)
    if stack.description and (stack.mountpoint or stack.options_guessed or stack.source.startswith("inspect:")):
        out.append(line(("head", "note"), f"   {stack.description}", hang=7))
    return out


def finding_lines(f: Finding, indent: str = "  ") -> list[Line]:
    pad = len(indent) + 8
    return [line(indent, (f.severity, f"{f.severity:<7}"), f" {f.rule}: {f.message}", hang=pad),
            line(indent + " " * 8, ("dim", "fix:"), f" {f.hint}", hang=pad + 5)]


# ---------------------------------------------------------------------------- explain

def describe(engine: Engine, res: Resolution) -> list[Line]:
    """Everything about one path: lstat, layers, data, open, readdir, dmesg, the steps, findings."""
    head = show_path(res.path) + ("/" if res.slash and res.path else "")
    lines = [line(("path", head), f"  (asked: {show(res.asked)})" if res.asked is not None else "")]

    def field_(name: str, *parts: str | Seg) -> Line:
        return line(f"  {name:<9} ", *parts, hang=12)

    if res.errno:
        lines.append(field_("lstat", ("bad", "fails:"), f" {res.errno}"))
    else:
        what = res.kind or "?"
        if res.kind == "file":
            what += f", {size_text(res.size)}"
        if res.kind == "symlink":
            what += f" -> {show(res.target)}"
        lines.append(field_("lstat", ("ok", "ok:"), f" {what}, mode {res.mode:04o}, owner {res.uid}:{res.gid}"))
        inode = inode_text(engine, res)
        if inode:
            lines.append(field_("inode", inode))
        lines.append(field_("metadata", engine.where(res.metadata) if res.metadata else "-"))
        if res.kind == "file":
            lines.append(field_("data", engine.where(res.data) if res.data else "none"))
            lines.append(field_("open", ("bad", "fails:"), f" {res.open_errno}") if res.open_errno
                         else field_("open", ("ok", "ok")))
        if res.kind == "dir":
            names = engine.entries(res)
            shown = ", ".join(show(n) for n in names[:20]) + (
                f", ... ({humanize.intcomma(len(names))} in all)" if len(names) > 20 else "")
            lines.append(field_("readdir", ("bad", "fails:"), f" {res.readdir_errno}") if res.readdir_errno
                         else field_("readdir", shown if names else "(empty)"))
    logs = res.kernel_log + (res.open_log + res.readdir_log if not res.errno else [])
    for log in logs:
        lines.append(field_("dmesg", log))
    lines.append(line("  ", ("head", "layers")))
    lines += layers_at(engine, res)
    lines.append(line("  ", ("head", "why")))
    lines += [line(f"    {n}. ", step, hang=7 + len(str(n))) for n, step in enumerate(res.trace, 1)]
    if res.findings:
        lines.append(line("  ", ("head", "findings")))
        for f in res.findings:
            lines += finding_lines(f, "    ")
    return lines


def layers_at(engine: Engine, res: Resolution) -> list[Line]:
    """Each layer at this path, side by side: what it holds, its xattrs, its role."""
    from ..model.xattrs import decode_xattrs

    rows = []
    for li, path, node, role in layer_view(engine, res):
        what = "-"
        if node is not None:
            what = node.kind
            if node.kind == "file":
                what += f" {node.size}B"
            elif node.kind == "chardev":
                what += f" {node.rdev[0]}:{node.rdev[1]}" + (" (whiteout)" if node.is_whiteout_dev else "")
            elif node.kind == "symlink":
                what += f" -> {show(node.target)}"
            what += f" {node.mode:04o}"
        rows.append((engine.label(li), show_path(path), what, role, node, path, li))
    w = [max(_cell_width(r[i]) for r in rows) for i in range(4)]

    def pad(text: str, n: int) -> str:
        return text + " " * (n - _cell_width(text))

    out = []
    for label, path, what, role, node, raw, li in rows:
        out.append(line("    ", ("label", pad(label, w[0])), f"  {pad(path, w[1])}  {pad(what, w[2])}  {role}",
                        hang=4 + w[0] + 4))
        if node is not None:
            for x in decode_xattrs(node, engine.prefix, root=raw == ()):
                note = f"  [{x.note}]" if x.note else ""
                out.append(line(f"    {'':<{w[0]}}    {x.summary}{note}", hang=4 + w[0] + 6))
            # origin, index and impure state in words (the view's layer columns say the same)
            for tone, text in layer_state(engine, res, li, raw, node):
                out.append(line(f"    {'':<{w[0]}}      → ", (_STATE_TONE.get(tone, ""), text),
                                hang=4 + w[0] + 8))
    return out


#: the tone of a state line (report/state.py) in the text renderer
_STATE_TONE = {"ok": "ok", "warning": "warning", "bad": "bad", "info": "dim"}


def explain_text(engine: Engine, stack: Stack, results: Sequence[Resolution],
                 after: Sequence[list[Line]] | None = None) -> list[Line]:
    """``explain``: the stack, then each path (``after[i]``: lines the caller adds below path i,
    such as what --observe saw)."""
    out = stack_text(engine, stack)
    if engine.mount_errno:
        out.append(line(("head", "mount"), "  ", ("bad", "fails:"),
                        f" {engine.mount_errno}: " + "; ".join(engine.options.mount_log), hang=7))
        if engine.options.mount_why:
            out.append(line("       ", engine.options.mount_why, hang=7))
    for i, res in enumerate(results):
        out.append(line())
        out += describe(engine, res)
        if after is not None:
            out += after[i]
    return out


# ---------------------------------------------------------------------------- check

#: how many affected paths a cause lists before it counts the rest
PATHS_SHOWN = 5


def cause_lines(c: Cause, indent: int = 8, shown: int = PATHS_SHOWN) -> list[Line]:
    """One cause: severity, rule and reach; what is wrong and what it does; the fix once; the
    first paths, then how many more."""
    pad = " " * indent
    reach = show(c.paths[0]) if c.reach == 1 else count_text(c.reach, "path")
    out = [line((c.severity, f"{c.severity:<7}"), f" {c.rule:<26} ", ("path", reach), hang=indent)]
    out.append(line(pad, c.headline(), hang=indent + 2))
    out.append(line(pad, ("dim", "fix:"), f" {c.fix}", hang=indent + 5))
    if c.reach > 1:
        # list them all when only one more would be counted
        n = c.reach if c.reach <= shown + 1 else shown
        for p in c.paths[:n]:
            out.append(line(pad, "  ", ("path", show(p)), hang=indent + 2))
        if c.reach > n:
            out.append(line(pad, f"  … and {count_text(c.reach - n, 'more path')} (--json lists them all)",
                            hang=indent + 4))
    return out


def summary_text(result: CheckResult) -> str:
    """``3 causes (1 error, 2 warnings) behind 3 findings in 7 paths``, ``no problems in 7 paths``."""
    where = count_text(result.paths_checked, "path")
    if result.seconds >= 1:
        where += f", {duration_text(result.seconds)}"
    if not result.causes:
        return f"no problems in {where}"
    n = {"error": 0, "warning": 0, "info": 0}
    n.update(result.cause_severities())
    kinds = ", ".join(x for x in (count_text(n["error"], "error") if n["error"] else "",
                                  count_text(n["warning"], "warning") if n["warning"] else "",
                                  f"{n['info']} info" if n["info"] else "") if x)
    if result.refused:
        return f"{count_text(len(result.causes), 'cause')} ({kinds}): the mount itself is refused, so no path is looked up"
    return (f"{count_text(len(result.causes), 'cause')} ({kinds}) behind "
            f"{count_text(result.finding_count, 'finding')} in {where}")


def check_text(engine: Engine, stack: Stack, result: CheckResult) -> list[Line]:
    """``check``: the stack, then its causes (the one to fix first first), then a summary."""
    out = stack_text(engine, stack)
    out.append(line())
    for c in result.causes:
        out += cause_lines(c)
    out.append(line(("head", summary_text(result))))
    return out


# ---------------------------------------------------------------------------- mounts

HEALTH_TONE = {"ok": "ok", "warning": "warning", "error": "error"}


def mounts_text(rows: list[dict], deep: bool, quick_seconds: float, root: bool) -> list[Line]:
    """``mounts``: one line per mount, with the first cause of a mount that has problems."""
    if not rows:
        return [line("no overlay mounts")]
    out = []
    for r in rows:
        if r.get("own_namespace"):  # not "pid 2 (kthreadd)": the process that stood for it
            who = "this mount namespace" + (f" ({show(r['container'])})" if r["container"] else "")
        else:
            who = f"pid {r['pid']} ({show(r['comm'])}"
            who += f", {show(r['container'])})" if r["container"] else ")"
        if r.get("also_in"):
            who += f" and {count_text(len(r['also_in']), 'other mount namespace')}"
        out.append(line((HEALTH_TONE.get(r["health"], "bad"), f"{r['health']:<10}"), " ",
                        ("path", show(r["mountpoint"])),
                        f"  {who}  upper={'yes' if r['upper'] else 'no'} lower={r['lowers']} "
                        f"data={r['datas']}  {show(r['detail'])}", hang=11))
        causes = r.get("causes") or []
        if causes:
            first = causes[0]
            out.append(line(" " * 11, ("dim", "cause:"), f" {first['headline']}", hang=18))
            out.append(line(" " * 11, ("dim", "fix:"), f"   {first['fix']}", hang=18))
            if len(causes) > 1:
                out.append(line(" " * 11, f"(and {count_text(len(causes) - 1, 'more cause')}: "
                                f"ovlinspect check {show(r['mountpoint'])})", hang=12))
    if not deep:
        out.append(line(f"(quick: each mount's paths checked for {duration_text(quick_seconds)}; "
                        "--deep checks every path)"))
    if not root:
        out.append(line("(not root: other users' mount namespaces are not listed, and trusted.overlay.* "
                        "xattrs are invisible: run as root)"))
    return out


def rules_text() -> list[Line]:
    return [line(f"{r.id:<26} ", (r.severity, f"{r.severity:<8}"), f" {r.title}", hang=36)
            for r in RULES.values()]
