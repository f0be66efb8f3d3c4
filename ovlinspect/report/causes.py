"""Findings grouped by cause: one entry per thing to fix, the fix once, the paths it breaks.

A stack with one plain directory on a redirect path fails 79 lookups with EIO: that is one
cause (``lower 3 (base3):/ab is a plain directory on the redirect path → 79 paths fail with
EIO``), not 79 problems.  :class:`CauseIndex` takes findings as a scan produces them (with the
:class:`~ovlinspect.kernel.entry.Resolution` they came from, which knows the layer entry where
a lookup failed) and groups them; :meth:`CauseIndex.causes` orders the groups by severity, then
by reach (how many paths), so that the first one is the one to fix first.

Pure: no terminal, no textual, no rich.  The CLI (``check``, ``mounts``) and the view's
Problems panel use the same grouping.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple

from ..kernel.entry import Ref, Resolution, show
from ..rules.engine import Engine
from ..rules.catalogue import RULES, Finding, Severity

#: rules whose cause is the mount itself (its options), whatever entry meets it
_MOUNT_WIDE = {
    "metacopy-refused": "this mount has metacopy=off, so every metacopy file is refused",
    "redirect-refused": "this mount does not follow redirects (redirect_dir), so every redirect "
                        "is refused",
}
#: rules whose cause is a whole layer (the xattr namespace it was written in)
_PER_LAYER = {
    "metacopy-ignored": "{where} carries metacopy xattrs in a namespace this mount ignores",
    "xattr-namespace-mismatch": "{where} carries overlay xattrs in a namespace this mount ignores",
    "redirect-ignored": "{where} carries redirect xattrs on files that are not metacopy files",
}
#: rules whose cause is one layer entry that several merged paths may meet
_AT_ENTRY = {
    "lowerdata-redirect-broken": "{where} is a plain directory on the redirect path",
    "shadowed-lowerdata": "{where} intercepts redirects meant for a data-only layer",
    "metacopy-size-mismatch": "the data file {where} has another size than the metacopy files "
                              "that use it",
    "inode-alias": "{where} is reached from several merged paths",
    "stale-origin-lookup": "{where} is not the lower entry the upper's overlay.origin names",
    "invalid-redirect": "{where} has a malformed redirect xattr",
    "metacopy-invalid": "{where} has a metacopy xattr the kernel cannot use",
    "metacopy-without-data": "{where} is a metacopy file with no data below it",
    "verity-failure": "the metacopy file {where} fails fs-verity validation",
}


def split_fix(message: str) -> tuple[str, str | None]:
    """A finding's message without the fix it names itself (``... . Fix: do this``), and that
    fix (more precise than its rule's): shown once, as the cause's fix."""
    if ". Fix: " not in message:
        return message, None
    what, fix = message.split(". Fix: ", 1)
    return what + ".", fix


def spool_file():
    """An unlinked temporary file for what ``check`` spills (records of causes, JSON items).
    Where no temporary directory is writable (a read-only system), a file in memory: memory is
    then unbounded, but the answer is given."""
    import io
    import tempfile

    try:
        return tempfile.TemporaryFile(prefix="ovlinspect-check-")
    except OSError:
        return io.BytesIO()


@dataclass
class Cause:
    """One thing to fix, and every merged path it breaks."""

    severity: Severity
    rule: str
    #: the place at fault, as shown (``lower 3 (base3):/ab``, a layer's label), or None when
    #: the cause is the mount (its options) or the stack as a whole
    where: str | None
    #: the JSON index of the layer at fault, and the path inside it (raw bytes), when known
    layer: int | None
    layer_path: bytes | None
    #: what is wrong, for every path of the cause (:attr:`message` is what to show)
    summary: str
    fix: str
    #: the merged paths it breaks, sorted (all of them)
    paths: list[bytes] = field(default_factory=list)
    #: how those paths fail: effect text -> count ("fail with EIO": 79)
    effects: Counter = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)

    #: whether the summary is the same text for any number of paths (a mount option, a
    #: layer): else a cause of one path shows that finding's own, fuller, message
    fixed: bool = False

    @property
    def reach(self) -> int:
        return len(self.paths)

    @property
    def message(self) -> str:
        """What is wrong, one line: the summary, or for a single finding its own message."""
        if len(self.paths) == 1 and self.findings and not self.fixed:
            return split_fix(self.findings[0].message)[0]
        return self.summary

    def effect_text(self) -> str:
        """``79 paths fail with EIO``; ``3 paths: 2 fail with EIO, 1 fails to open (ENOENT)``."""
        n = self.reach
        noun = "path" if n == 1 else "paths"
        if not self.effects:
            return f"{n} {noun}"
        if len(self.effects) == 1:
            (effect, _), = self.effects.items()
            return f"{n} {noun} {_verb(effect, n)}"
        parts = [f"{c} {_verb(e, c)}" for e, c in self.effects.most_common()]
        return f"{n} {noun}: " + ", ".join(parts)

    def headline(self) -> str:
        """The cause and what it does, one line: ``X is a plain directory on the redirect path
        → 79 paths fail with EIO``.  Stack-wide findings (path ``/`` and no effect) are the
        message alone."""
        if not self.effects and self.reach <= 1:
            return self.message
        if self.reach == 1 and len(self.effects) == 1:  # name the one path: `→ /foo fails with EIO`
            (effect, _), = self.effects.items()
            return f"{self.message} → {show(self.paths[0])} {_verb(effect, 1)}"
        return f"{self.message} → {self.effect_text()}"

    def as_json(self) -> dict:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "where": self.where,
            "layer": self.layer,
            "layer_path": _j(self.layer_path) if self.layer_path is not None else None,
            "message": self.message,
            "headline": self.headline(),
            "fix": self.fix,
            "count": self.reach,
            "effects": dict(self.effects.most_common()),
            "paths": [_j(p) for p in self.paths],
        }


def _verb(effect: str, n: int) -> str:
    """"fail with EIO" for n paths; "fails with EIO" for one."""
    if n == 1:
        head, _, rest = effect.partition(" ")
        if head in ("fail", "read", "report", "get", "are", "miss"):
            head = {"are": "is", "miss": "misses"}.get(head, head + "s")
        rest = rest.replace(" but fail ", " but fails ")  # "is listed by readdir but fails lookup"
        return f"{head} {rest}".rstrip()
    return effect


def _j(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


class CauseFacts(NamedTuple):
    """What :class:`CauseIndex` reads of a finding's resolution, and nothing else.  The view's
    scan in a child process sends these instead of resolutions: a resolution has some forty
    fields, and copying, pickling and unpickling 9,772 of them cost the scan 0.6 s of 5.5."""

    errno: str | None
    open_errno: str | None
    cause: Ref | None
    data: Ref | None
    metadata: Ref | None
    lowerdata_redirect: bytes | None
    redirect: bytes | None

    @classmethod
    def of(cls, res: Resolution | None) -> "CauseFacts | None":
        if res is None:
            return None
        return cls(res.errno, res.open_errno, res.cause, res.data, res.metadata,
                   res.lowerdata_redirect, res.redirect)


def _effect(f: Finding, res: Resolution | CauseFacts | None) -> str | None:
    """How the merged path of this finding fails (plural verb form), or None if unknown."""
    if res is None:
        return None
    if res.errno:
        if f.rule == "phantom-whiteout":
            return "are listed by readdir but fail lookup with ENOENT"
        return f"fail with {res.errno}"
    if res.open_errno:
        return f"fail to open ({res.open_errno})"
    if f.rule in ("shadowed-lowerdata", "metacopy-ignored"):
        return "read the wrong bytes"
    if f.rule == "metacopy-size-mismatch":
        return "report the wrong size"
    if f.rule == "inode-alias":
        return "may fail with ESTALE"
    return None


class CauseIndex:
    """Groups findings by cause as they arrive (a scan is incremental)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._groups: dict[tuple, Cause] = {}
        self._seen: set[tuple[str, bytes, str]] = set()

    def add_resolution(self, res: Resolution) -> None:
        for f in res.findings:
            self.add(f, res)

    def add(self, f: Finding, res: Resolution | CauseFacts | None = None) -> Cause:
        """Add one finding (with the resolution of its path, or its :class:`CauseFacts`,
        when it has one)."""
        key, how, what = self._key(f, res)
        cause = self._groups.get(key)
        if cause is None:
            cause = self._groups[key] = self._new(f, how, what)
        if res is None:  # a stack finding given twice (a rescan) counts once
            dup = (f.rule, f.path, f.message)
            if dup in self._seen:
                return cause
            self._seen.add(dup)
        cause.findings.append(f)
        cause.paths.append(f.path)
        effect = _effect(f, res)
        if effect:
            cause.effects[effect] += 1
        return cause

    @staticmethod
    def _key(f: Finding, res: Resolution | CauseFacts | None) -> tuple[tuple, str, object]:
        """(grouping key, how it is grouped, the layer entry / layer / redirect at fault).

        Cheap: the texts are made once per cause, by :meth:`_new`."""
        rule = f.rule
        if rule in _MOUNT_WIDE:
            return (rule,), "mount", None
        if rule in _PER_LAYER and f.layers:
            return (rule, f.layers[0]), "layer", f.layers[0]
        ref: Ref | None = None
        if res is not None:
            if rule in ("shadowed-lowerdata", "metacopy-size-mismatch"):
                ref = res.data
            elif res.errno and res.cause is not None:
                ref = res.cause
            elif rule in ("verity-failure", "metacopy-invalid"):
                ref = res.metadata
            if rule == "lowerdata-missing":
                redirect = res.lowerdata_redirect or res.redirect
                if redirect is not None:
                    return (rule, redirect), "object", redirect
        if ref is not None and rule in _AT_ENTRY:
            return (rule, ref.layer, ref.path), "entry", ref
        # one finding, one cause (stack findings, phantom whiteouts, ...): its own message
        return (rule, f.path, f.message), "own", ref

    def _new(self, f: Finding, how: str, what) -> Cause:
        e = self.engine
        where = layer = lpath = None
        if how == "mount":
            message = _MOUNT_WIDE[f.rule]
        elif how == "layer":
            where, layer = e.label(e.kernel_index(what)), what
            message = _PER_LAYER[f.rule].format(where=where)
        elif how == "object":
            message = f"'{show(what)}' is not a regular file in any data-only layer"
        else:
            if what is not None:  # a layer entry
                where, layer, lpath = e.where(what), e.json_index(what.layer), b"/" + b"/".join(what.path)
            message = _AT_ENTRY[f.rule].format(where=where) if how == "entry" else f.message
        message, own_fix = split_fix(message) if how == "own" else (message, None)
        fix = own_fix or f.hint
        return Cause(f.severity, f.rule, where, layer, lpath, message, fix,
                     fixed=how in ("mount", "layer"))

    def causes(self) -> list[Cause]:
        """The causes, the one to fix first first: by severity, then reach, then rule."""
        out = list(self._groups.values())
        for c in out:
            c.paths.sort()
        out.sort(key=lambda c: (Severity(c.severity).rank, -c.reach, c.rule,
                                c.where or "", c.paths[:1]))
        return out

    def __len__(self) -> int:
        return len(self._groups)


def group_findings(engine: Engine, pairs: Iterable[tuple[Finding, Resolution | None]]) -> list[Cause]:
    """The causes of these (finding, resolution or None) pairs."""
    index = CauseIndex(engine)
    for f, res in pairs:
        index.add(f, res)
    return index.causes()


@dataclass
class CheckResult:
    """What ``check`` found: every finding (in scan order), their causes, paths scanned."""

    findings: list[Finding]
    causes: list[Cause]
    paths_checked: int
    seconds: float = 0.0
    #: the kernel refuses the mount itself: no path was looked up
    refused: bool = False

    @property
    def finding_count(self) -> int:
        return len(self.findings)

    def cause_severities(self) -> Counter:
        """How many causes of each severity."""
        return Counter(c.severity for c in self.causes)


def check_causes(engine: Engine, progress: Callable[[int], None] | None = None,
                 cancel: Callable[[], bool] | None = None) -> CheckResult:
    """:meth:`Engine.check`, with the findings grouped by cause.

    The findings are the same, in the same order, as ``engine.check`` gives them: the stack's
    own, then each path's as the walk meets it.
    """
    start = time.monotonic()
    index = CauseIndex(engine)
    findings: list[Finding] = []
    walk = _Walk(engine, progress, cancel)
    for res, f in walk:
        findings.append(f)
        index.add(f, res)
    return CheckResult(findings, index.causes(), walk.count, time.monotonic() - start,
                       refused=engine.mount_errno is not None)


class _Walk:
    """``check``'s lean walk (rules/scan.py: the engine's findings, faster), counting the
    paths it has gone through."""

    def __init__(self, engine: Engine, progress: Callable[[int], None] | None,
                 cancel: Callable[[], bool] | None) -> None:
        self.engine, self.progress, self.cancel = engine, progress, cancel
        self.count = 0

    def _counted(self, n: int) -> None:
        self.count = n
        if self.progress is not None:
            self.progress(n)

    def __iter__(self) -> Iterator[tuple[Resolution | None, Finding]]:
        from ..rules.scan import check_findings

        return check_findings(self.engine, self._counted, self.cancel)


# ------------------------------------------------------------------ check, in bounded memory


class _Runs:
    """Records sorted in runs of a bounded size, each run in an unlinked temporary file
    (marshal), merged back in order: the external sort ``sort(1)`` does, so that memory stays
    bounded whatever the number of records."""

    def __init__(self, key: Callable, limit: int) -> None:
        self.key, self.limit = key, limit
        self.buf: list = []
        self.size = 0
        self.files: list = []

    def add(self, record, size: int = 1) -> None:
        self.buf.append(record)
        self.size += size
        if self.size >= self.limit:
            self._spill()

    def _spill(self) -> None:
        import marshal

        f = spool_file()
        self.buf.sort(key=self.key)
        for r in self.buf:
            marshal.dump(r, f)
        self.buf, self.size = [], 0
        self.files.append(f)

    @staticmethod
    def _read(f) -> Iterator:
        import marshal

        f.seek(0)
        while True:
            try:
                yield marshal.load(f)
            except EOFError:
                f.close()
                return

    def __iter__(self) -> Iterator:
        import heapq

        if not self.files:
            self.buf.sort(key=self.key)
            buf, self.buf = self.buf, []
            return iter(buf)
        if self.buf:
            self._spill()
        files, self.files = self.files, []
        return heapq.merge(*(self._read(f) for f in files), key=self.key)


def _enc(what):
    """A cause's place (None, a layer number, a redirect, a layer entry) for marshal."""
    return ("ref", what.layer, what.path) if isinstance(what, Ref) else what


def _dec(what):
    return Ref(what[1], what[2]) if isinstance(what, tuple) else what


class SpillCauseIndex(CauseIndex):
    """:class:`CauseIndex` for ``check`` of a whole stack, in bounded memory: nothing is
    kept per finding or per cause.  Each finding becomes a record (its cause's key, its
    order, its path, message and effect) in :class:`_Runs`; :meth:`finish` merges them cause
    by cause into one record per cause (sorted the way :meth:`CauseIndex.causes` sorts),
    and :meth:`iter_causes` makes each :class:`Cause` when it is reached: the same causes,
    in the same order, with the same texts."""

    #: records kept before a run is written (findings; paths of causes)
    RUN = 4096

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._found = _Runs(key=lambda r: (r[0], r[1]), limit=self.RUN)
        self._seq = 0
        self._causes: _Runs | None = None
        self._count = 0
        self._severities: Counter = Counter()

    def add(self, f: Finding, res: Resolution | None = None) -> None:  # type: ignore[override]
        if res is None:  # a stack finding given twice (a rescan) counts once
            dup = (f.rule, f.path, f.message)
            if dup in self._seen:
                return
            self._seen.add(dup)
        key, how, what = self._key(f, res)
        # the rule, then how it is grouped: keys of one shape are compared with each other only
        k = (key[0], how) + key[1:]
        self._found.add((k, self._seq, _enc(what), f.path, f.message, _effect(f, res)))
        self._seq += 1

    def finish(self) -> None:
        """Group the findings into causes (once, after the last :meth:`add`)."""
        e = self.engine
        causes = self._causes = _Runs(key=lambda r: r[0], limit=self.RUN)
        group: list = []
        for r in self._found:
            if group and r[0] != group[0][0]:
                self._group(e, group, causes)
                group = []
            group.append(r)
        if group:
            self._group(e, group, causes)

    def _group(self, e: Engine, group: list, out: _Runs) -> None:
        k, seq, what, path, message, _ = group[0]
        rule, how = k[0], k[1]
        what = _dec(what)
        where = None
        if how == "layer":
            where = e.label(e.kernel_index(what))
        elif how in ("entry", "own") and what is not None:
            where = e.where(what)
        paths = sorted(r[3] for r in group)
        effects: dict[str, int] = {}
        for r in group:
            if r[5] is not None:
                effects[r[5]] = effects.get(r[5], 0) + 1
        severity = RULES[rule].severity
        self._count += 1
        self._severities[severity] += 1
        order = (Severity(severity).rank, -len(group), rule, where or "", paths[0], seq)
        out.add((order, how, _enc(what), message, paths, effects), len(paths))

    def iter_causes(self) -> Iterator[Cause]:
        """The causes, the one to fix first first (as :meth:`CauseIndex.causes`), each made
        when it is reached (once: the runs are read as they are merged)."""
        if self._causes is None:
            self.finish()
        for order, how, what, message, paths, effects in self._causes:
            rule = order[2]
            first = Finding(rule, paths[0] if len(paths) == 1 else b"", message)
            cause = self._new(first, how, _dec(what))
            if len(paths) == 1:
                cause.findings = [first]
            cause.paths = paths
            cause.effects = Counter(effects)
            yield cause

    def causes(self) -> list[Cause]:
        return list(self.iter_causes())

    def severities(self) -> Counter:
        if self._causes is None:
            self.finish()
        return self._severities

    def __len__(self) -> int:
        if self._causes is None:
            self.finish()
        return self._count


class _Causes:
    """The causes of a streamed check: their number, and each made when iterated (once)."""

    def __init__(self, index: SpillCauseIndex) -> None:
        self._index = index

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[Cause]:
        return self._index.iter_causes()


@dataclass
class StreamedCheck:
    """What :func:`check_stream` found: counts, and the causes made one at a time."""

    index: SpillCauseIndex
    paths_checked: int
    #: findings by severity
    counts: Counter
    seconds: float = 0.0
    refused: bool = False

    def __post_init__(self) -> None:
        self.causes = _Causes(self.index)

    @property
    def finding_count(self) -> int:
        return sum(self.counts.values())

    def cause_severities(self) -> Counter:
        return self.index.severities()


def check_stream(engine: Engine, on_finding: Callable[[Finding], None] | None = None,
                 progress: Callable[[int], None] | None = None,
                 cancel: Callable[[], bool] | None = None) -> StreamedCheck:
    """:func:`check_causes` in bounded memory: each finding goes to ``on_finding`` as the
    walk meets it (in :func:`check_causes`'s order) and is not kept; the causes keep what
    :class:`LeanCauseIndex` says."""
    start = time.monotonic()
    index = SpillCauseIndex(engine)
    counts: Counter = Counter()
    walk = _Walk(engine, progress, cancel)
    for res, f in walk:
        counts[f.severity] += 1
        if on_finding is not None:
            on_finding(f)
        index.add(f, res)
    index.finish()
    return StreamedCheck(index, walk.count, counts, time.monotonic() - start,
                         refused=engine.mount_errno is not None)


__all__ = ["Cause", "CauseIndex", "CheckResult", "SpillCauseIndex", "StreamedCheck", "check_causes",
           "check_stream", "group_findings"]
