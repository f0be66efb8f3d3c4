"""The step-by-step trace of a lookup, and its no-op twin for the hot scan.

``explain`` and the view record every step (:data:`TRACE`); ``check`` walks whole stacks with
:data:`NULL_TRACE`, whose sink drops what it is given.  Steps that cost something to word
are guarded with ``tracer.on``.
"""

from __future__ import annotations


class _Sink(list):
    """A list that keeps nothing."""

    __slots__ = ()

    def append(self, item) -> None:  # noqa: D102
        pass

    def extend(self, items) -> None:  # noqa: D102
        pass

    def __iadd__(self, items):
        return self


class Tracer:
    """Records steps in a resolution's trace."""

    on = True

    def to(self, res) -> list:
        """Where the steps of ``res`` go."""
        return res.trace


class NullTracer(Tracer):
    """Records nothing."""

    on = False
    _sink = _Sink()

    def to(self, res) -> list:
        return self._sink


TRACE = Tracer()
NULL_TRACE = NullTracer()
