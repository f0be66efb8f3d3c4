"""Command line: ``ovlinspect explain``, ``check``, ``mounts``, ``demo``, ``export``, ``build``.

``main(argv) -> int`` never raises for bad input: it prints one line to stderr and returns 2.
"""

from __future__ import annotations

import argparse
import codecs
import difflib
import errno as _errno
import json
import os
import resource
import sys
import time
from typing import Sequence

from .kernel.entry import Resolution, show
from .kernel.params import ModuleDefaults, OptionError, join_lowerdir, options_string
from .kernel.profile import UnknownKernel, parse_version, profile_for, profile_for_release
from .live import observe as obs
from .live.build import BuildError, build_stack
from .live.mountapi import MountError
from .live.mounts import BAD_HEALTH, QUICK_SECONDS, elsewhere_hint, list_mounts
from .live.observe import content_line
from .live.probe import probed_profile
from .model.layers import LayerError
from .model.stack import Stack
from .report import text as txt
from .report.causes import check_stream
from .report.document import document
from .rules.engine import Engine
from .sources.containers import ENGINES, merged_root
from .sources.inspect_json import (MAX_INSPECT, InspectError, layer_labels, load_inspect,
                                   merged_mount)
from .sources.mountinfo import NotOverlayError, covering_mounts, locate
from .sources.stackfile import ObjectStoreError, StackFileError, load_stack, write_stack
from .sources.target import (InputError, NotOnOverlay, check_privileges, demo_names, demo_stack,
                             live_stack, load_target, stack_from_args)

COMMANDS = ("explain", "check", "mounts", "demo", "export", "build", "rules")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        if message.startswith("unrecognized arguments: "):  # --jsn: did you mean --json?

            words = message.split(": ", 1)[1].split()  # empty for an empty argument ('')
            word = words[0].split("=")[0] if words else ""
            best = difflib.get_close_matches(word, [o for o in self._option_string_actions
                                                    if o.startswith("--")], n=1, cutoff=0.6)
            if word.startswith("-") and best:
                message += f"; did you mean {best[0]}?"
        raise InputError(message if self.prog == "ovlinspect" else f"{self.prog.split()[-1]}: {message}")


def _stack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lowerdir", help="lower layers in the kernel's syntax: A:B::C (top first, :: before data-only layers)")
    p.add_argument("--upperdir", metavar="DIR", help="with --lowerdir: the upper layer")
    p.add_argument("--workdir", metavar="DIR", help="with --upperdir: the work directory (for its "
                   "checks: index, leftovers, a mount that uses it)")
    p.add_argument("-o", "--options", default="", help="mount options, as mount -o takes them")
    p.add_argument("--from-inspect", metavar="FILE", help="docker/podman inspect JSON ('-' for stdin)")
    p.add_argument("--container", metavar="NAME|INDEX", help="with --from-inspect: which object of the JSON")
    p.add_argument("--pid", type=_pid, help="inspect a mount in this process's mount namespace (layer paths: "
                   "on the host first, then under /proc/PID/root)")
    p.add_argument("--layer-root", metavar="DIR", help="resolve relative layer paths of a live mount from DIR")
    p.add_argument("--image", action="append", metavar="IMAGE",
                   help="the EROFS image of a live mount's lower layer that is gone (composefs "
                        "mounts detach it); repeat for several")
    p.add_argument("--kernel", metavar="X.Y", help="predict what kernel X.Y does (default: the running "
                   "kernel's release), e.g. --kernel 6.12 for Debian 13 or RHEL 10")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _color_arg(p)


def _color_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour the text output: auto (on a terminal, unless NO_COLOR is set), "
                        "always, never")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"ovlinspect {version('ovlinspect')}"
    except PackageNotFoundError:
        return "ovlinspect (version unknown: not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="ovlinspect",
        usage="ovlinspect [stack flags] TARGET [PATH] | ovlinspect COMMAND ...",
        description="Predict what overlayfs does with every path, and why. `ovlinspect TARGET` opens "
                    "the interactive view of a mounted overlay (at the path inside it that TARGET "
                    "names, even one whose lookup fails), a running container (docker:NAME, ...), a "
                    "stack file, or demo:NAME; it takes the same stack flags as the commands "
                    "(--lowerdir, -o, --from-inspect, --pid, ...). `ovlinspect demo` opens the "
                    "built-in seed demo.",
        epilog="TARGET for the commands: a path on a mounted overlay, docker:NAME, podman:NAME, "
               "nerdctl:NAME, crictl:ID (a running container's root overlay), demo:NAME, a stack file (*.toml), "
               "or the layers themselves: --lowerdir A:B::C [--upperdir U --workdir W] [-o OPTS], "
               "--from-inspect FILE. Exit status: 0 ok, 1 check found errors (mounts: a mount "
               "has errors, is unresolved, unreadable or needs root), 2 bad input.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    def add(name: str, **kw) -> argparse.ArgumentParser:
        # a clean usage line: `ovlinspect explain [-h] ...`, not the top parser's usage
        return sub.add_parser(name, prog=f"ovlinspect {name}", **kw)

    e = add("explain", help="how the kernel resolves paths")
    e.add_argument("args", nargs="*", metavar="[TARGET] PATH",
                   help="the stack (omit it with --lowerdir or --from-inspect), then paths inside "
                        "the merged tree (/ is the root); a path on a live mount names both")
    e.add_argument("--observe", action="store_true", help="also do what a program would do through the merged path (live mounts)")
    e.add_argument("--paths-from", metavar="FILE", help="also explain the paths in FILE, one a line, raw bytes ('-' for stdin)")
    _stack_args(e)
    c = add("check", help="every problem of the stack, grouped by cause")
    c.add_argument("args", nargs="*", metavar="TARGET", help="the stack to check (see TARGET below)")
    _stack_args(c)
    m = add("mounts", help="list overlay mounts of every mount namespace with a one-word health "
                       "(quick: each mount checked for a second; --deep: every path)",
                       description="Overlay mounts of every mount namespace (one process each), with the "
                       "container an engine (docker, podman, nerdctl) knows them as. Exit status: 0 every "
                       "mount ok or warning, 1 a mount has errors or is unresolved, unreadable or "
                       "needs-root, 2 bad input.")
    m.add_argument("--pid", type=_pid, help="only the mount namespace of this process (default: every namespace)")
    m.add_argument("--json", action="store_true", help="machine-readable output: one object per "
                   "mount, with its causes")
    m.add_argument("--deep", action="store_true", help="check every path of every mount (slower)")
    _color_arg(m)
    d = add("demo", help="built-in demo stacks")
    d.add_argument("name", nargs="?", metavar="NAME",
                   help="the demo to open in the interactive view (default: seed; --list names them)")
    d.add_argument("--list", action="store_true", help="list the demos with a line about each")
    x = add("export", help="write a loaded stack as one self-contained stack file")
    x.add_argument("args", nargs="*", metavar="TARGET", help="the stack to export (see TARGET below)")
    x.add_argument("--objects", metavar="DIR",
                   help="keep the content of files over 64 KiB in DIR (by SHA-256, ab/cdef...) and name "
                        "them in the stack file (object = \"sha256:...\"); without it they are written "
                        "in full inline (content_hex)")
    _stack_args(x)
    b = add("build", help="materialize a stack file into layer directories")
    b.add_argument("stackfile", metavar="STACKFILE", help="the stack file (*.toml) to build")
    b.add_argument("dest", metavar="DIR", help="the directory to create the layer directories in")
    b.add_argument("--mount", metavar="MOUNTPOINT", nargs="?", const="", default=None,
                   help="also mount the built stack, on MOUNTPOINT (default: DIR/merged)")
    b.add_argument("--objects", metavar="DIR", help="the object store export --objects wrote")
    b.add_argument("--unsafe-exact", action="store_true",
                   help="also create what a safe build leaves out of an untrusted stack file: device "
                        "nodes, setuid/setgid bits, security.* xattrs, world-writable directories")
    _color_arg(b)
    r = add("rules", help="list the diagnostics")
    _color_arg(r)
    for name, sp in sub.choices.items():
        if name in ("explain", "check", "export"):
            sp.epilog = p.epilog.split(" Exit status")[0]
    _SUBPARSERS.clear()
    _SUBPARSERS.update(sub.choices)
    return p


_SUBPARSERS: dict[str, argparse.ArgumentParser] = {}


# ---------------------------------------------------------------------------- loading


def _did_you_mean(word: str, commands: bool) -> str:
    """``; did you mean demo:seed?`` for a mistyped demo name (or, with ``commands``, a
    mistyped command: ``chek`` -> ``ovlinspect check``), else ''."""

    prefix, sep, name = word.partition(":")
    if sep and name and prefix != "demo" and prefix not in ENGINES:  # dokcer:web, Docker:web
        near = difflib.get_close_matches(prefix.lower(), list(ENGINES), n=1, cutoff=0.6)
        if near:
            return f"; did you mean {near[0]}:{name}?"
    bare = word[len("demo:"):] if word.startswith("demo:") else word
    cands = {n: f"demo:{n}" for n in demo_names()}
    if commands and not word.startswith("demo:"):
        cands.update({c: f"`ovlinspect {c}`" for c in COMMANDS})
    best = difflib.get_close_matches(bare, list(cands), n=1, cutoff=0.6)
    return f"; did you mean {cands[best[0]]}?" if best else ""


def _load(ns: argparse.Namespace, positional: list[str], view: bool = False) -> tuple[Stack, list[str]]:
    """The stack named by the arguments, and the positional arguments left (paths)."""
    if ns.from_inspect and ns.lowerdir is not None:
        raise InputError("give either --from-inspect or --lowerdir, not both")
    if ns.container is not None and not ns.from_inspect:
        raise InputError("--container picks an object of --from-inspect JSON; give --from-inspect too")
    if getattr(ns, "image", None) and (ns.lowerdir is not None or ns.from_inspect):
        raise InputError("--image goes with a live mount as TARGET (its gone EROFS layer); with "
                         "--lowerdir, name the image's mount directory or dump file as a layer")
    if ns.lowerdir is not None:
        if not ns.lowerdir:
            raise InputError("bad --lowerdir: it is empty")
        first = positional[0] if positional else ""
        if first.startswith("demo:") or first.endswith(".toml") or (first not in ("", "/") and os.path.ismount(first)):
            raise InputError(f"give either a TARGET ({first}) or --lowerdir, not both")
        stack = stack_from_args(ns.lowerdir, ns.upperdir, ns.workdir, ns.options)
        rest = positional
    elif ns.from_inspect:
        stack = _from_inspect(ns)
        rest = positional
    else:
        if not positional:
            raise InputError("name a stack: a mountpoint, demo:NAME, a stack file, or --lowerdir")
        first = positional[0]
        try:
            stack = load_target(first, ns.pid, ns.layer_root, ns.image)
        except InputError as e:
            if isinstance(e, NotOnOverlay):  # perhaps an overlay in another mount namespace
                hint = elsewhere_hint(e.target)
                if hint:
                    raise InputError(hint) from None
            if first.startswith("demo:") or ("/" not in first and not os.path.lexists(first)):
                raise InputError(f"{e}{_did_you_mean(first, view)}") from None
            raise
        rest = positional[1:]
        if ns.options:  # what-if: the mount's options with these on top, as typed
            stack.options = ",".join(x for x in (stack.options, ns.options) if x)
            stack.effective = None
    if ns.kernel is not None:
        try:
            stack.profile = profile_for(parse_version(ns.kernel, strict=True), chosen_by="--kernel",
                                        release=ns.kernel.strip())
        except UnknownKernel as e:
            raise InputError(f"--kernel: {e}") from None
    return stack, rest


def _from_inspect(ns: argparse.Namespace) -> Stack:
    """The stack of a docker/podman inspect object: the live mount when MergedDir is mounted
    here (its options, its layers), else the layer directories with guessed options."""


    try:
        if ns.from_inspect == "-":  # bytes, bounded: load_inspect says what is wrong with them
            text = sys.stdin.buffer.read(MAX_INSPECT + 1)
        else:
            with open(ns.from_inspect, "rb") as f:
                text = f.read(MAX_INSPECT + 1)
        select = ns.container
        if select is not None and select.lstrip("-").isdigit():
            select = int(select)
        info = load_inspect(text, select)
    except OSError as err:
        raise InputError(f"{ns.from_inspect}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{ns.from_inspect}: inspect JSON is not UTF-8 text") from None
    except InspectError as err:
        raise InputError(str(err)) from None
    except ValueError as err:  # a NUL in the file name
        raise InputError(f"{ns.from_inspect}: {err}") from None

    labels = layer_labels(info)
    if merged_mount(info):

        stack = live_stack(info.merged, labels=labels)
        stack.source = f"inspect:{info.name}"
        note = f"options and layers read from the live mount at {info.merged} (MergedDir)"
        stack.description = "; ".join(x for x in (note, stack.description) if x)
        if ns.options:
            stack.options = ",".join(x for x in (stack.options, ns.options) if x)
            stack.effective = None
        return stack

    lowers, datas, upper, work = info.mount_layers()  # a single-layer image: its one lower
    stack = stack_from_args(join_lowerdir(lowers, datas), upper, work,
                            ns.options, source=f"inspect:{info.name}")
    for _, layer in stack.layers:
        label = labels.get(layer.path or "")
        if label:
            layer.label = label
    stack.options_guessed = not ns.options
    stack.description = (
        ("MergedDir is not mounted here: options guessed from the module defaults "
         "(/sys/module/overlay/parameters), not read from a mount; set them with -o "
         "(e.g. -o metacopy=on)") if not ns.options else
        "MergedDir is not mounted here: options are the ones given with -o")
    return stack


def _engine(stack: Stack) -> Engine:

    try:
        if stack.profile is None and os.geteuid() == 0:
            # the running kernel: its release, corrected by what it answers (backports)

            stack.profile = probed_profile(profile_for_release(os.uname().release))
        engine = Engine(stack)
    except UnknownKernel as e:
        raise InputError(f"{e}; ask about a kernel ovlinspect models with --kernel X.Y") from None
    except OptionError as e:
        raise InputError(f"bad options: {e}") from None
    except ValueError as e:  # a module parameter override that is not Y/N, ...
        raise InputError(f"bad stack parameters: {e}") from None
    check_privileges(stack, engine.options.userxattr)
    return engine


# ---------------------------------------------------------------------------- output


def _write(text: str, stream=None) -> None:
    """``text`` as UTF-8 bytes, whatever the locale (no surrogate or raw byte reaches it)."""
    stream = stream or sys.stdout
    data = text.encode("utf-8", "backslashreplace")
    buf = getattr(stream, "buffer", None)
    if buf is None:
        stream.write(data.decode("utf-8"))
        return
    stream.flush()
    buf.write(data)
    buf.flush()


def _print_lines(lines: Sequence[txt.Line | str] | str, ns: argparse.Namespace | None = None) -> None:
    """Text output: every segment through the one escaping function (``show``), wrapped to the
    terminal's width and coloured on a terminal (``--color``, ``NO_COLOR``), then UTF-8."""
    if isinstance(lines, str):
        lines = [lines]
    _write(txt.render(lines, _style(ns)))


def _style(ns: argparse.Namespace | None) -> txt.Style:
    return txt.style_for(sys.stdout, getattr(ns, "color", None) or "auto")


def _print_json(doc) -> None:
    """JSON output, valid UTF-8 in any locale: names that are not UTF-8 carry surrogates
    (the contract's ``\\udcXX``), written as JSON escapes instead of raw bytes, and so is
    every other character that is not printable."""
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    if not text.replace("\n", "").isprintable():  # outside strings there is only ASCII
        text = "".join(c if c.isprintable() or c == "\n" else _json_escape(c) for c in text)
    _write(text + "\n")


def _json_escape(c: str) -> str:
    """A character JSON may carry raw but a terminal must not see (C1, U+2028, bidi, a
    surrogate standing for a byte that is not UTF-8) as its \\uXXXX escape."""
    o = ord(c)
    if o > 0xFFFF:
        o -= 0x10000
        return f"\\u{0xD800 + (o >> 10):04x}\\u{0xDC00 + (o & 0x3FF):04x}"
    return f"\\u{o:04x}"


def _pid(value: str) -> int:
    """--pid: a process id (1 or more; 0 is not "this process")."""
    try:
        pid = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a process id: {value!r}") from None
    if pid < 1:
        raise argparse.ArgumentTypeError(f"no such process: {value} (a process id is 1 or more)")
    if not os.path.exists(f"/proc/{pid}"):
        raise argparse.ArgumentTypeError(f"no such process: {pid}")
    return pid


# ---------------------------------------------------------------------------- commands


def cmd_explain(ns: argparse.Namespace) -> int:
    if ns.paths_from == "-" and ns.from_inspect == "-":
        raise InputError("explain: --paths-from and --from-inspect cannot both read stdin")
    stack, args = _load(ns, ns.args)
    paths = [os.fsencode(p) for p in args] + (_read_paths(ns.paths_from) if ns.paths_from else [])
    asked = _asked_paths(stack, paths, ns.pid)
    if not asked and stack.target_path is not None and not ns.paths_from:
        asked = [(stack.target_path, stack.mountpoint == "/")]  # the TARGET's own path
    if not asked:
        raise InputError("explain: name at least one PATH inside the merged tree (/ is the root)"
                         + (f"; {ns.paths_from} holds none" if ns.paths_from else ""))
    engine = _engine(stack)
    results: list[Resolution] = []
    if not engine.mount_errno:
        for raw, contained in asked:
            try:
                results.append(engine.explain(raw, contained=contained))
            except ValueError:
                raise InputError(f"explain: {show(raw)}: '..' leads out of the mount at "
                                 f"{stack.mountpoint}") from None
    observed = None
    if ns.observe:
        if not stack.mountpoint:
            raise InputError("--observe needs a live mount as TARGET (for --from-inspect: a "
                             "mounted MergedDir)")

        # the merged root as this process reaches it (another namespace's: a copy of the mount)
        root = _observe_root(stack)
        try:
            rootfd = obs.open_root(root)
        except OSError as err:
            raise InputError(f"--observe: cannot open the mount root {show(os.fsencode(root))}: {err.strerror}") from None
        try:
            observed = []
            for r in results:
                # a path the walk needed as a directory is observed as such: lstat("file/")
                ob = obs.observe_at(rootfd, r.path + ((b"",) if r.slash and r.path else ()))
                obs.map_owner(ob, stack.pid)
                pc = obs.predicted_content(engine, r)
                observed.append((ob, pc, obs.compare(engine, r, ob, pc=pc, whatif=ns.options or None)))
        finally:
            os.close(rootfd)
    on_top = _mounts_on_top(stack)
    covered = [_covered_by(stack, on_top, r.path) for r in results]
    if ns.json:
        doc = document(engine, results)
        _json_notes(doc, stack)
        for pj, cover in zip(doc["paths"], covered):
            pj["covered_by"] = {k: v for k, v in cover.items() if k != "shown"} if cover else None
        if observed is not None:
            for pj, (ob, pc, mismatches) in zip(doc["paths"], observed):
                pj["data_content"] = pc.as_json() if pc is not None else None
                pj["observed"] = ob.as_json()
                pj["mismatches"] = mismatches
                pj["evidence"] = mismatches[-1] if mismatches else None
        _print_json(doc)
        return 0
    after: list[list[txt.Line]] = []
    for i, res in enumerate(results):
        extra: list[txt.Line] = []
        if covered[i]:
            c = covered[i]
            extra.append(txt.line("  ", ("bad", "COVERED"),
                                  f"   {show(os.fsencode(c['mountpoint']))} is {'an' if c['fstype'][:1] in 'aeiou' else 'a'} {show(c['fstype'].encode())} "
                                  f"mount ({show(os.fsencode(c['shown']))}) on top of the overlay: a program "
                                  "there sees that filesystem, not the overlay's entry explained here", hang=12))
        if observed is not None:

            ob, pc, mismatches = observed[i]
            extra.append(txt.line("  observed  ", ob.summary(),
                                  ("", "") if mismatches else ("ok", "  (matches the prediction)"), hang=12))
            text = content_line(engine, res, ob, pc)
            if text and not any(m.startswith("content:") for m in mismatches):
                extra.append(txt.line(f"            {text}", hang=12))
            if ob.resolved_by and not ob.resolved_by.startswith(("openat2", "the mount root")):
                extra.append(txt.line(f"            resolved inside the merged root by a {ob.resolved_by}", hang=12))
            for m in mismatches:
                extra.append(txt.line("  ", ("error", "MISMATCH"), f"  {m}", hang=12))
        after.append(extra)
    _print_lines(txt.explain_text(engine, stack, results, after), ns)
    return 0


def _mounts_on_top(stack: Stack) -> list:
    """The mounts stacked on a live overlay (read once for all the paths explained)."""
    if not stack.mountpoint:
        return []

    try:
        return covering_mounts(stack.mountpoint, f"/proc/{stack.pid}" if stack.pid else "/proc/self")
    except (OSError, ValueError):
        return []


def _covered_by(stack: Stack, mounts: list, path: tuple[bytes, ...]) -> dict | None:
    """The mount of ``mounts`` stacked on the overlay at or above ``path`` (a volume, a
    bind-mounted file, /proc in a container), as {mountpoint (inside the merged tree), fstype,
    source}, or None."""
    if not mounts:
        return None
    base = stack.mountpoint.rstrip("/")
    inside = b"/" + b"/".join(path)
    best = None
    for m in mounts:
        if m.mountpoint != stack.mountpoint.rstrip("/") and not m.mountpoint.startswith(base + "/"):
            continue
        rel = os.fsencode(m.mountpoint[len(base):] or "/")
        if inside == rel or inside.startswith(rel.rstrip(b"/") + b"/"):
            if best is None or len(rel) < len(os.fsencode(best.mountpoint[len(base):] or "/")):
                best = m  # the outermost one decides what is seen there
    if best is None:
        return None
    root = best.root if best.root not in ("", "/") else ""
    # "source" as the JSON contract has it (device and root joined); "shown" as findmnt
    # writes a bind mount's source, /dev/vda[/srv/vol], so the root is not read as a path
    # on the device's own name (dropped from the JSON)
    return {"mountpoint": best.mountpoint[len(base):] or "/", "fstype": best.fstype,
            "source": best.source + root, "shown": best.source + (f"[{root}]" if root else "")}


#: the most ``--paths-from`` reads: far more paths than anyone asks about at once, and a
#: bound, so that ``/dev/zero`` or a runaway pipe ends in one line instead of the OOM killer
PATHS_FROM_MAX = 16 * 1024 * 1024


def _read_paths(name: str) -> list[bytes]:
    """The paths of ``--paths-from``: one a line, raw bytes (a NUL ends nothing: it is kept)."""
    try:
        if name == "-":
            data = sys.stdin.buffer.read(PATHS_FROM_MAX + 1)
        else:
            with open(name, "rb") as f:
                data = f.read(PATHS_FROM_MAX + 1)
    except OSError as e:
        raise InputError(f"--paths-from {name}: {e.strerror}") from None
    if len(data) > PATHS_FROM_MAX:
        raise InputError(f"--paths-from {name}: more than {PATHS_FROM_MAX // (1024 * 1024)} MiB of "
                         "paths; give fewer at a time")
    return [line for line in data.split(b"\n") if line]


def _asked_paths(stack: Stack, paths: list[bytes], pid: int | None) -> list[tuple[bytes, bool]]:
    """Each PATH argument as (its path in the merged tree, whether '..' stays at the root).

    On a live mount an absolute PATH under the mountpoint is a host path; any other absolute
    PATH is a merged-tree path.  A relative PATH is taken from the working directory when that
    lies in the same mount, otherwise from the TARGET's place in the merged tree (the root for
    stacks that are not mounted).  A host path's '..' can leave the mount (an error); a
    merged-tree path's stays at the root, as inside the container.
    """
    mp = stack.mountpoint
    mpb = os.fsencode(mp.rstrip("/")) if mp else None
    at_root = mp is None or mp == "/"
    base = stack.target_path or b"/"
    if mp and pid is None and any(not p.startswith(b"/") for p in paths):

        try:
            here = locate(os.getcwd())
            if here.entry.mountpoint == mp:
                base = here.inside
        except (OSError, NotOverlayError):
            pass
    out = []
    for p in paths:
        if p.startswith(b"/"):
            if mpb is not None and mpb and (p == mpb or p.startswith(mpb + b"/")):
                out.append((p[len(mpb):] or b"/", at_root))
            else:
                out.append((p, True))
        else:
            out.append((base.rstrip(b"/") + b"/" + p, at_root))
    return out


def _observe_root(stack: Stack) -> str:
    """Where this process reaches the merged tree (another namespace's: a copy of the mount)."""

    try:
        return merged_root(stack)
    except OSError as e:
        raise InputError(f"--observe: cannot reach the mount at {stack.mountpoint} of pid "
                         f"{stack.pid}: {e.strerror}") from None


def _json_notes(doc: dict, stack: Stack) -> None:
    """Where the options came from, in the JSON (``--from-inspect`` guesses them)."""
    doc["options_guessed"] = stack.options_guessed
    if stack.description and (stack.mountpoint or stack.options_guessed or stack.source.startswith("inspect:")):
        doc["note"] = stack.description


def cmd_check(ns: argparse.Namespace) -> int:
    stack, rest = _load(ns, ns.args)
    if rest:
        raise InputError(f"check: unexpected argument {rest[0]!r}")
    engine = _engine(stack)
    count = 0
    tty = sys.stderr.isatty()
    shown = time.monotonic()

    def progress(n: int) -> None:
        nonlocal count, shown
        count = n
        if tty and time.monotonic() - shown > 0.5:
            shown = time.monotonic()
            print(f"\rchecked {txt.count_text(n, 'path')}...", end="", file=sys.stderr, flush=True)

    if ns.json:
        spool = _JsonSpool()
        result = check_stream(engine, spool.add, progress)
    else:
        result = check_stream(engine, None, progress)
    if tty and count:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    errors = result.counts["error"]
    if ns.json:
        # the document json.dumps(..., indent=2) would write, its findings (spooled as they
        # came) and causes written one at a time, so that no list of them is ever held
        mark = f"\0{os.urandom(8).hex()}"
        head = _json_text(json.dumps({
            "version": 1,
            "kernel": engine.kernel,
            "source": stack.source,
            "options": engine.options.as_json(),
            "mount_errno": engine.mount_errno,
            "paths_checked": result.paths_checked,
            "options_guessed": stack.options_guessed,
            "summary": {"error": errors, "warning": result.counts["warning"],
                        "info": result.finding_count - errors - result.counts["warning"]},
            "findings": mark + "f",
            # the findings grouped by what to fix, the one to fix first first
            "causes": mark + "c",
        }, indent=2, ensure_ascii=False))
        before, after = head.split(json.dumps(mark + "f"))
        between, after = after.split(json.dumps(mark + "c"))
        _write(before)
        spool.write_list(_write)
        _write(between)
        _write_json_list((c.as_json() for c in result.causes), _write)
        _write(after + "\n")
    else:
        style = _style(ns)
        _write(txt.render(txt.stack_text(engine, stack) + [txt.line()], style))
        chunk: list = []
        for c in result.causes:
            chunk += txt.cause_lines(c)
            if len(chunk) > 2000:
                _write(txt.render(chunk, style))
                chunk = []
        chunk.append(txt.line(("head", txt.summary_text(result))))
        _write(txt.render(chunk, style))
    return 1 if errors else 0


class _JsonSpool:
    """The items of a JSON list as ``json.dumps(doc, indent=2)`` writes them one level down,
    kept in an unlinked temporary file until written (as the causes' runs are: memory stays
    bounded whatever the number of findings)."""

    PAD = "\n    "

    def __init__(self) -> None:
        from .report.causes import spool_file

        self.n = 0
        self.file = spool_file()
        self._pending: list[str] = []

    def add(self, finding) -> None:
        self._pending.append(_json_item(finding.as_json(), self.n))
        self.n += 1
        if len(self._pending) >= 256:
            self._flush()

    def _flush(self) -> None:
        self.file.write("".join(self._pending).encode("utf-8", "surrogatepass"))
        self._pending = []

    def write_list(self, write) -> None:
        with self.file:
            if not self.n:
                write("[]")
                return
            self._flush()
            self.file.seek(0)
            write("[")
            text = codecs.getincrementaldecoder("utf-8")()  # a block may end inside a character
            while block := self.file.read(1 << 16):
                write(text.decode(block))
            write(text.decode(b"", final=True) + "\n  ]")


def _json_item(item, i: int) -> str:
    """One item of a list one level down in ``json.dumps(doc, indent=2)``'s text, with the
    comma before it when it is not the first."""
    text = _json_text(json.dumps(item, indent=2, ensure_ascii=False)).replace("\n", _JsonSpool.PAD)
    return ("," if i else "") + _JsonSpool.PAD + text


def _write_json_list(items, write) -> None:
    """A list one level down, item by item as they come (written about 64 KiB at a time)."""
    n, out, size = 0, [], 0
    for item in items:
        piece = ("[" if not n else "") + _json_item(item, n)
        out.append(piece)
        size += len(piece)
        n += 1
        if size > 65536:
            write("".join(out))
            out, size = [], 0
    out.append("\n  ]" if n else "[]")
    write("".join(out))


def _json_text(text: str) -> str:
    """JSON text valid in any locale (see :func:`_print_json`)."""
    if not text.replace("\n", "").isprintable():
        text = "".join(c if c.isprintable() or c == "\n" else _json_escape(c) for c in text)
    return text


def cmd_rules(ns: argparse.Namespace) -> int:
    _print_lines(txt.rules_text(), ns)
    return 0


def cmd_mounts(ns: argparse.Namespace) -> int:

    try:
        rows = list_mounts(ns.pid, deep=ns.deep, check=check_stream)
    except OSError as e:  # the process went away, or its mountinfo cannot be read
        raise InputError(f"cannot read the mounts of {'process ' + str(ns.pid) if ns.pid else 'this process'}: "
                         f"{e.strerror}") from None
    bad = 1 if any(r["health"] in BAD_HEALTH for r in rows) else 0
    if ns.json:
        _print_json(rows)
        return bad
    _print_lines(txt.mounts_text(rows, ns.deep, QUICK_SECONDS, os.geteuid() == 0), ns)
    return bad


def cmd_demo(ns: argparse.Namespace) -> int:
    if ns.list:

        for name in demo_names():
            desc = " ".join(demo_stack(name).description.split())
            first = desc.split(": ")[0].split(". ")[0]
            print(f"{name:<16} {first[:100]}")
        return 0
    name = ns.name or "seed"

    if name not in demo_names():
        raise InputError(f"no demo named {name!r}; `ovlinspect demo --list` shows them"
                         + _did_you_mean(name, False))
    stack = demo_stack(name)
    return _interactive(stack)


def cmd_export(ns: argparse.Namespace) -> int:
    if ns.json:
        raise InputError("export: no --json: it writes a stack file (TOML); `ovlinspect explain "
                         "--json` and `ovlinspect check --json` give JSON")
    stack, rest = _load(ns, ns.args)
    if rest:
        raise InputError(f"export: unexpected argument {rest[0]!r}")
    engine = _engine(stack)
    # the file must predict the same on any machine: spell out the effective options (as a
    # mount would need them) and the module parameters they were computed with
    from dataclasses import fields


    if not engine.mount_errno:
        stack.options = options_string(engine.options)
    if stack.params is None:
        defaults = ModuleDefaults.read()
        stack.params = {f.name: ("Y" if v else "N") if isinstance(v, bool) else str(v)
                        for f in fields(defaults) for v in [getattr(defaults, f.name)]}
    _export(stack, ns.objects)
    return 0


def _export(stack: Stack, objects: str | None) -> None:
    """The stack file, streamed to stdout as UTF-8 (bounded memory whatever the stack's size);
    files that could not be exported in full are named on stderr."""

    sys.stdout.flush()
    buf = getattr(sys.stdout, "buffer", None)
    if buf is None:
        def write(piece: str) -> None:
            sys.stdout.write(piece.encode("utf-8", "backslashreplace").decode("utf-8"))
    else:
        def write(piece: str) -> None:
            buf.write(piece.encode("utf-8", "backslashreplace"))
    try:
        stored, incomplete = write_stack(stack, write, objects)
    except ObjectStoreError as e:
        raise InputError(e.strerror) from None
    if buf is not None:
        buf.flush()
    if incomplete:
        _write(f"ovlinspect: warning: {incomplete} file(s) could not be exported in full; their entries "
               "say incomplete = \"why\" and build reports them\n", sys.stderr)
    if stored:
        _write(f"ovlinspect: {stored} file(s) over 64 KiB stored in {show(os.path.abspath(objects or ''))}; "
               "build them with --objects\n", sys.stderr)


def cmd_build(ns: argparse.Namespace) -> int:

    try:
        stack = load_stack(ns.stackfile, lazy=True)  # contents stay in the file until written
    except StackFileError as e:
        raise InputError(str(e)) from None
    if not stack.lowers:
        raise InputError(f"build: {ns.stackfile} has no regular lower layer (role = \"lower\"); "
                         "the kernel mounts no stack without one")

    try:
        built = build_stack(stack, ns.dest, exact=ns.unsafe_exact, objects=ns.objects)
    except BuildError as e:
        raise InputError(str(e)) from None
    except OSError as e:
        raise InputError(f"build: {e.strerror}: {e.filename or ns.dest}") from None
    lines = [f"built {len(stack.layers)} layers under {ns.dest}"]
    lines += [f"{line} (safe build; --unsafe-exact reproduces them)" for line in built.safety.lines()]
    if built.objects_copied:
        lines.append(f"copied {built.objects_copied} file(s) from the object store {ns.objects}")
    if built.incomplete:
        lines.append(f"WARNING: {len(built.incomplete)} file(s) were not exported in full and are built "
                     "with zeros past what the stack file holds:")
        for label, path, why in built.incomplete[:20]:
            _write(f"ovlinspect: warning: {show(path)} in layer {show(label)} is not complete: {show(why)}\n",
                   sys.stderr)
        if len(built.incomplete) > 20:
            _write(f"ovlinspect: warning: ... and {len(built.incomplete) - 20} more\n", sys.stderr)
        lines += [f"  {os.fsdecode(path)} (layer {label}): {why}" for label, path, why in built.incomplete[:20]]
    lines.append(f"lowerdir={built.lowerdir_string()}"
                 + (f",upperdir={built.upper},workdir={built.workdir}" if built.upper else "")
                 + (f",{built.options}" if built.options else ""))
    _print_lines(lines)
    if ns.mount is not None:
        target = ns.mount or os.path.join(ns.dest, "merged")
        os.makedirs(target, exist_ok=True)
        if os.path.ismount(target):
            raise InputError(f"{target} is already a mountpoint; unmount it or name another")

        try:
            built.mount(target)
        except (MountError, OSError) as e:

            code = _errno.errorcode.get(e.errno, str(e.errno)) if e.errno else "error"
            raise InputError(f"built under {ns.dest}, but the kernel refuses the mount on {target}: "
                             f"{code} ({e.strerror or e})") from None
        _print_lines(f"mounted on {target}")
    return 0


def _interactive(stack: Stack, start: tuple[bytes, bool] | None = None) -> int:
    engine, where = _view_engine(stack, start)
    from .ui.app import run_app  # deferred: the commands do not load Textual

    return run_app(engine, start=where)


def _view_engine(stack: Stack, start: tuple[bytes, bool] | None) -> tuple[Engine, tuple[bytes, ...] | None]:
    """The engine of the view, and the merged path to open at (where the walk of ``start`` ends)."""
    engine = _engine(stack)
    where = None
    if start is not None and not engine.mount_errno:
        try:
            where = engine.walk_path(start[0], start[1]).path
        except ValueError:
            raise InputError(f"{show(start[0])}: '..' leads out of the mount at {stack.mountpoint}") from None
    return engine, where


def view_parser() -> argparse.ArgumentParser:
    """``ovlinspect [stack flags] TARGET [PATH]``: the interactive view, with the commands' flags."""
    v = _Parser(prog="ovlinspect", usage="ovlinspect [--lowerdir A:B::C ... | --from-inspect FILE | "
                "--pid PID | -o OPTS | --layer-root DIR] TARGET [PATH]")
    v.add_argument("args", nargs="*", metavar="TARGET [PATH]")
    _stack_args(v)
    return v


def cmd_view(argv: list[str]) -> int:
    """The interactive view, opened at the TARGET's own path (or PATH) when it names one."""
    stack, start = view_target(argv)
    return _interactive(stack, start)


def view_target(argv: list[str]) -> tuple[Stack, tuple[bytes, bool] | None]:
    """The stack the view's arguments name, and the path to open at (as for explain's PATHs)."""
    ns = view_parser().parse_intermixed_args(argv)
    if ns.json:
        raise InputError("the interactive view has no --json; `ovlinspect explain --json` and "
                         "`ovlinspect check --json` do")
    if ns.color != "auto":
        raise InputError("the interactive view has no --color (it follows the terminal and "
                         "NO_COLOR itself); the commands take it")
    args = ns.args
    given_stack = ns.lowerdir is not None or ns.from_inspect
    first = args[0] if args else ""
    if len(args) > (1 if given_stack else 2) or (
            len(args) == 2 and "/" not in first and ":" not in first and not first.endswith(".toml")
            and not os.path.lexists(first)):
        raise InputError(f"unknown command {first!r}" + (_did_you_mean(first, True) or
                                                          "; try `ovlinspect --help`"))
    if not args and not given_stack:
        raise InputError("name a stack: a mountpoint, demo:NAME, a stack file, or --lowerdir")
    stack, rest = _load(ns, args, view=True)
    start = None
    if rest:
        start = _asked_paths(stack, [os.fsencode(rest[0])], ns.pid)[0]
    elif stack.target_path is not None:
        start = (stack.target_path, stack.mountpoint == "/")
    return stack, start


def view_app_args(argv: list[str]):
    """``(engine, start)`` for :class:`~ovlinspect.ui.app.OvlInspectApp`, exactly as
    ``ovlinspect ARGV`` opens the view (raises :class:`InputError` for bad input)."""
    return _view_engine(*view_target(argv))


def _more_descriptors(most: int = 65536) -> None:
    """The soft limit of open files raised to the hard one (at most ``most``): a layer keeps
    its root open, the view a second descriptor per layer and the scan's child its own, and
    a stack may have 500 layers, where a login's soft limit is often 1,024."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = most if hard == resource.RLIM_INFINITY else min(hard, most)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (OSError, ValueError):
        pass  # as it was: a stack of many layers may then run out of descriptors


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _more_descriptors()
    try:
        bad = next((a for a in argv if "\0" in a), None)
        if bad is not None:  # never from a shell, but main(argv) is an API: no path holds a NUL
            raise InputError(f"argument {bad!r} contains a NUL byte")
        if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version"):
            # `ovlinspect /mnt/merged/some/path`, `ovlinspect --pid 123 /merged`, `ovlinspect
            # --lowerdir A:B::C`: the interactive view, parsed as the commands parse stacks
            return cmd_view(argv)
        parser = build_parser()
        if argv and argv[0] in COMMANDS:
            # options may come between the TARGET and the PATHs
            ns = _SUBPARSERS[argv[0]].parse_intermixed_args(argv[1:])
            ns.command = argv[0]
        else:
            ns = parser.parse_args(argv)
        if ns.command is None:
            parser.print_help()
            return 0
        return {
            "explain": cmd_explain,
            "check": cmd_check,
            "mounts": cmd_mounts,
            "demo": cmd_demo,
            "export": cmd_export,
            "build": cmd_build,
            "rules": cmd_rules,
        }[ns.command](ns)
    except (InputError, LayerError) as e:  # one line: a \n in a name does not split it
        _write(f"ovlinspect: {show(str(e))}\n", sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
