"""The dump index keeps flat arrays only: no Python object per line or per directory."""

from __future__ import annotations

import sys
import tracemalloc
from array import array

from ovlinspect.sources.composefs import DumpIndex, load_dump


def _dump(dirs: int, files: int, blank: bool = False) -> bytes:
    lines = [b"/ 4096 40755 2 0 0 0 1.0 - - -"]
    for d in range(dirs):
        lines.append(b"/d%d 4096 40755 2 0 0 0 1.0 - - -" % d)
        lines += [b"/d%d/f%d 0 100644 1 0 0 0 1.0 - - -" % (d, i) for i in range(files)]
        if blank and d % 7 == 0:
            lines.append(b"")
    return b"\n".join(lines) + b"\n"


def test_index_is_flat_arrays():
    data = _dump(5000, 2)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = DumpIndex(data)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    n = len(index)
    assert n == 15001
    # starts (4), flags (1), children and their offsets (8): 13 bytes a line and change
    assert kept / n < 20, kept / n
    for name, value in vars(index).items():
        if name == "data":
            continue
        assert isinstance(value, (array, bytearray, set)) or value is None, name
        if isinstance(value, set):
            assert not value  # directories holding a whiteout: none here
    assert list(index.children(0)) == [1 + 3 * d for d in range(5000)]
    assert list(index.children(4)) == [5, 6] and list(index.children(5)) == []
    assert index.lookup((b"d4999", b"f1")) == n - 1


def test_line_numbers_with_and_without_blank_lines():
    plain = DumpIndex(_dump(50, 2))
    assert plain._linenos is None and plain.lineno(100) == 101
    blanks = DumpIndex(_dump(50, 2, blank=True))
    assert blanks._linenos is not None
    text = _dump(50, 2, blank=True)
    want = text.split(b"\n").index(b"/d49/f1 0 100644 1 0 0 0 1.0 - - -") + 1
    assert want == 151 + 7  # 7 blank lines (after d0, d7, ..., d42) before it
    layer = load_dump(text)
    assert layer.entry((b"d49", b"f1")).line == want
    assert blanks.lineno(150) == want
    assert sys.getsizeof(plain.linenos) < 100  # computed, not stored
