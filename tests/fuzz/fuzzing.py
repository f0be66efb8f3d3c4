"""What every fuzzed input must end in, and how the fuzz suite runs ovlinspect.

The contract (issue 8): exit 0 or 1 with valid output (``--json``: strict UTF-8 that
``json.loads`` reads; text: UTF-8 with no character that is not printable besides the line
breaks), or exactly one line on stderr and exit 2; never a traceback, never a write outside
the target, bounded time and memory.
"""

from __future__ import annotations

import io
import json
import os
import resource
import sys
import time

#: Examples per fuzz target: a fixed, derandomized run in CI; more with the variable.
EXAMPLES = int(os.environ.get("OVLINSPECT_FUZZ_EXAMPLES", "40"))
#: Seconds one ovlinspect call may take on a fuzzed input (the inputs are all small).
CALL_LIMIT = float(os.environ.get("OVLINSPECT_FUZZ_CALL_LIMIT", "10"))
#: Peak resident memory the whole run may reach (bytes).
RSS_LIMIT = 1 << 30

STATS: dict[str, int] = {}


def settings_kw() -> dict:
    from hypothesis import HealthCheck

    # derandomized (the same examples every run) unless OVLINSPECT_FUZZ_RANDOM is set
    return dict(max_examples=EXAMPLES, deadline=None,
                derandomize=not os.environ.get("OVLINSPECT_FUZZ_RANDOM"), database=None,
                suppress_health_check=list(HealthCheck))


def call(argv: list[str], stdin: bytes = b"") -> tuple[int, bytes, bytes, float]:
    """``cli.main(argv)`` in this process, stdout and stderr captured as bytes."""
    from ovlinspect import cli

    out_b, err_b = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_b, encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(err_b, encoding="utf-8", errors="strict", write_through=True)
    inp = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    old = sys.stdout, sys.stderr, sys.stdin
    sys.stdout, sys.stderr, sys.stdin = out, err, inp
    t = time.monotonic()
    try:
        try:
            rc = cli.main(argv)
        except SystemExit as e:  # --help
            rc = e.code if isinstance(e.code, int) else 0
    finally:
        out.flush()
        err.flush()
        sys.stdout, sys.stderr, sys.stdin = old
    return rc, out_b.getvalue(), err_b.getvalue(), time.monotonic() - t


def tree_state(top: str, skip: str | None = None) -> dict:
    """Every entry below ``top`` with what a write would change (for "no write outside")."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if skip and (dirpath == skip or dirpath.startswith(skip + "/")):
            dirnames[:] = []
            continue
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if skip and p == skip:
                continue
            st = os.lstat(p)
            state[p] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return state


def check_outcome(argv: list[str], rc: int, out: bytes, err: bytes, took: float, kind: str) -> None:
    STATS[f"{kind}:exit{rc}"] = STATS.get(f"{kind}:exit{rc}", 0) + 1
    shown = f"argv={argv!r}\nrc={rc}\nstdout={out[:2000]!r}\nstderr={err[:2000]!r}"
    assert took < CALL_LIMIT, f"{took:.1f} s\n{shown}"
    assert b"Traceback" not in err, shown
    assert rc in (0, 1, 2), shown
    if rc == 2:
        assert err.startswith(b"ovlinspect: ") and err.endswith(b"\n") and err.count(b"\n") == 1, shown
        text = err.decode("utf-8")  # strict
        assert all(c.isprintable() for c in text[:-1]), shown
        return
    text = out.decode("utf-8")  # strict: never a raw undecodable byte
    if "--json" in argv and not text.startswith("usage:"):  # --help wins over --json
        json.loads(text)
    bad = [c for c in text if c != "\n" and not c.isprintable()]
    assert not bad, f"raw control characters {bad[:5]!r}\n{shown}"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 < RSS_LIMIT, "memory"
