"""The problems scan in a child process (no Textual here: plain Python, also the child's code).

Why a process and not a thread (``bench/bench_ui.py``, 2 cores shared with other jobs):

* in a thread, the scan and Textual share the GIL: each time the UI thread wants it back (many
  times per key) it waits up to the switch interval for the CPU-bound scan thread to let go,
  and the scan gets what the UI leaves.  On 350,318 paths on disk (``--disk --entries
  300000``), on a quiet machine: the scan took 11.7 s in a thread against 5.2 s for
  ``check``'s walk; on a loaded one 28.8-33.7 s, with ``Down`` in a real terminal (tmux, key
  to changed screen) median 49-51 ms, p90 155-163 ms;
* in a child process the scan runs on the other core with no lock to share, at about
  ``check``'s own pace (it IS ``check``'s walk, :func:`ovlinspect.rules.scan.check_findings`,
  with :func:`~ovlinspect.model.layers.exclusive_reads` in effect since the child has one
  thread): 5.59 s against 5.32 s for ``check``, interleaved, quiet (started ahead, sending
  each finding's :class:`~ovlinspect.report.causes.CauseFacts`, the child's own walk is
  ``check``'s: the 5% left is the view working on the other core, which slows ``check`` as
  much beside any busy process here), ``Down`` median 34 ms; loaded, 10.3-10.8 s against
  12.9-13.5 s for ``check`` (an earlier run, before a fix to the shadowing-hazard check that
  both paid), ``Down`` median 36-37 ms, p90 51-64 ms.  The UI thread only unpickles a batch
  every quarter second.

A memory stack is handed over as a pickle of every entry (1.9 s in the view and 1.3 s in the
child for the 1.2-million-entry bench stack); a small one (:data:`THREAD_BELOW`) is scanned in
a thread, where a child would take longer to start than the scan.

The child is started with ``subprocess`` (exec'd at once: nothing of the parent's threads is
forked), as ``python -P -c`` with the directory of this very ``ovlinspect`` package first on
its path (never the working directory: a layer could hold a package of that name), in ``/``,
ahead of its scan (:class:`Started`: when the view loads, and after each scan for the next),
so that Python and the imports (0.13 s) are done when the scan starts.  Its standard input is
a socket, on which it then gets the stack (:func:`moved_stack`): the descriptors of the disk
layers' roots (``SCM_RIGHTS``, opened through ``/proc/self/fd/N``: the child reads the very
directory the parent has open, whatever became of its path), then a pickle of the stack
(memory layers whole), the effective options, kernel and profile.  It answers on stdout with
length-prefixed pickled frames: ``("batch", scanned, [(facts | None, finding), ...])`` every
:data:`~ovlinspect.ui.session.BATCH_SECONDS`, then ``("done", scanned, seconds)`` or
``("error", scanned, text)``.  In place of each finding's resolution goes what
:class:`~ovlinspect.report.causes.CauseIndex` groups by, its
:class:`~ovlinspect.report.causes.CauseFacts`.

No orphan: the child dies with the thread that started it (``PR_SET_PDEATHSIG``; the app's own
thread for one started ahead), ends when its socket closes before a stack came, stops when its
parent is gone (checked at every directory), and the parent kills and reaps it when the scan
is cancelled (a new what-if, a rescan, quitting); the app kills the one started ahead when it
ends.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterator

from ..model.layers import DiskLayer, Layer, MemoryLayer
from ..report.causes import CauseFacts
from ..rules.catalogue import Finding
from ..rules.engine import Engine

_HEADER = struct.Struct("<Q")
#: seconds between two looks at the cancel flag while the child works
POLL = 0.05


class CannotMove(Exception):
    """The stack cannot be handed to a child process (a layer kind it does not know)."""


# ------------------------------------------------------------------------------ the stack


#: In the child: the layer roots the parent sent (``SCM_RIGHTS``), in the order of its list.
_RECEIVED: list[int] = []


def _open_disk(index: int, path: str | None, label: str, want_verity: bool, want_xattrs: bool) -> DiskLayer:
    """In the child: the disk layer whose root the parent sent as descriptor ``index``."""
    fd = _RECEIVED[index]
    try:
        layer = DiskLayer(f"/proc/self/fd/{fd}", label, want_verity=want_verity,
                          want_xattrs=want_xattrs)
    finally:
        os.close(fd)
    layer.path = path  # the name the findings and labels use, as in the parent
    return layer


@dataclasses.dataclass
class _DiskRef:
    """A disk layer on its way to the child: where its root descriptor (a dup, sent beside
    the pickle) is in the list sent, and its fields."""

    index: int
    path: str | None
    label: str
    want_verity: bool
    want_xattrs: bool

    def __reduce__(self):
        return (_open_disk, (self.index, self.path, self.label, self.want_verity, self.want_xattrs))


def _layer_ref(layer: Layer, fds: list[int]) -> object:
    # DiskLayer subclasses (an EROFS image's ImageLayer) read through DiskLayer's own methods
    # from their root; only how the root was opened differs, and the child gets the root open
    if isinstance(layer, DiskLayer):
        root = getattr(layer, "_root", -1)
        if root < 0:
            raise CannotMove(f"layer {layer.label} is closed")
        # the layer's own descriptor: sending it gives the child a copy, and ours stays the
        # layer's (a dup each would take as many descriptors again: 500 layers under the
        # common limit of 1024 did not fit)
        fds.append(root)
        return _DiskRef(len(fds) - 1, layer.path, layer.label, layer.want_verity, layer.want_xattrs)
    from ..sources.composefs import DumpLayer

    if type(layer) is DumpLayer:
        # its caches hold a lock: the dump's bytes and index go, the layer is made again
        return _DumpRef(layer.index, layer.label, layer.source)
    if isinstance(layer, MemoryLayer):
        return _MemRef(layer)  # pickled whole (a stack file, a demo), but its lookup cache
    raise CannotMove(f"layer {layer.label}: {type(layer).__name__}")


def _restore(cls: type, state: dict) -> MemoryLayer:
    layer = cls.__new__(cls)
    layer.__dict__.update(state)
    return layer


class _MemRef:
    """A memory layer, less the lookup cache other threads fill while it is pickled (a dict
    that changes size under the pickler: "dictionary changed size during iteration")."""

    def __init__(self, layer: MemoryLayer):
        self.layer = layer

    def __reduce__(self):
        state = dict(vars(self.layer))
        if "_reach" in state:
            state["_reach"], state["_reach_size"] = {}, -1
        return (_restore, (type(self.layer), state))


@dataclasses.dataclass
class _DumpRef:
    index: object
    label: str
    source: str | None

    def __reduce__(self):
        from ..sources.composefs import DumpLayer

        return (DumpLayer, (self.index, self.label, self.source))


def moved_stack(engine: Engine) -> tuple[tuple, list[int]]:
    """What the child gets (the stack with its layers made movable, the options, kernel and
    profile) and the descriptors to send it: the disk layers' own roots, which stay theirs.
    CannotMove when a layer is of a kind that does not move."""
    stack = engine.stack
    fds: list[int] = []
    moved = dataclasses.replace(
        stack, lowers=[_layer_ref(l, fds) for l in stack.lowers],
        data=[_layer_ref(l, fds) for l in stack.data],
        upper=_layer_ref(stack.upper, fds) if stack.upper is not None else None,
        observe_fd=None)  # --observe's detached mount: the scan never reads it
    return (os.getpid(), moved, engine.options, engine.kernel, engine.profile), fds


# ------------------------------------------------------------------------------ the parent


#: below this many entries in all (memory layers only), the scan stays in a thread: a child
#: takes about 0.16 s to start and to get the stack (python, imports, the pickle), in which the
#: lean walk does about 20,000 names on its own (a demo's scan: 3 ms in a thread, 160 ms in a
#: child)
THREAD_BELOW = 20_000


def in_thread(engine: Engine) -> bool:
    """Whether the scan of ``engine`` is better done in a thread (a small memory stack); disk
    layers, whose size is unknown until walked, go to a child."""
    from ..sources.composefs import DumpLayer

    total = 0
    for _, layer in engine.stack.layers:
        if type(layer) is DumpLayer:
            total += len(layer.index)
        elif isinstance(layer, MemoryLayer):
            total += len(layer.nodes)
        else:
            return False
    return total < THREAD_BELOW


def child_command() -> list[str]:
    """``python -P -c ...`` importing this copy of ovlinspect (never one in the cwd)."""
    import ovlinspect

    top = os.path.dirname(os.path.dirname(os.path.abspath(ovlinspect.__file__)))
    code = f"import sys; sys.path.insert(0, {top!r}); from ovlinspect.ui.scanproc import child; child()"
    return [sys.executable, "-P", "-c", code]


class Started:
    """A child process started and waiting for a stack on its socket (its standard input).

    Started ahead of a scan (:func:`ahead`), it has Python up and ovlinspect imported by the
    time the scan needs it: 0.13 s a scan does not wait for.  Started from the app's own
    thread, which lives as long as the app: the child dies with the thread that started it."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # its stderr (a traceback if it dies) in an unnamed file: a pipe could fill and block it
        self.errors = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                child_command(), stdin=theirs, stdout=subprocess.PIPE, stderr=self.errors,
                cwd="/", close_fds=True,
                start_new_session=True)  # the terminal's ^C goes to the app, not to the scan
        except BaseException:
            ours.close()
            self.errors.close()
            raise
        finally:
            theirs.close()
        self.sock = ours

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        """Kill the child (if still running) and reap it."""
        proc = self.proc
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for f in (self.sock, proc.stdout, self.errors):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


def wants_child(engine: Engine) -> bool:
    """Whether the view scans ``engine`` in a child process: ``OVLINSPECT_SCAN=process`` or
    ``=thread`` say; else a child unless :func:`in_thread`."""
    how = os.environ.get("OVLINSPECT_SCAN", "")
    return how == "process" or (how != "thread" and not in_thread(engine))


def ahead(engine: Engine) -> Started | None:
    """A child started for the next scan of ``engine`` (None when that scan is for a thread,
    or no process can be started)."""
    if not wants_child(engine):
        return None
    try:
        return Started()
    except OSError:
        return None


#: descriptors per SCM_RIGHTS message (the kernel takes at most 253 in one)
_FDS_PER_MESSAGE = 250
_COUNT = struct.Struct("<I")


def _send_fds(sock: socket.socket, fds: list[int]) -> None:
    """How many descriptors, then the descriptors, a message of one byte per 250."""
    sock.sendall(_COUNT.pack(len(fds)))
    for i in range(0, len(fds), _FDS_PER_MESSAGE):
        socket.send_fds(sock, [b"F"], fds[i:i + _FDS_PER_MESSAGE])


def _recv_fds(sock: socket.socket) -> list[int]:
    """In the child: what :func:`_send_fds` sent."""
    head = b""
    while len(head) < _COUNT.size:
        got = sock.recv(_COUNT.size - len(head))
        if not got:
            raise EOFError("the parent sent no stack")
        head += got
    (n,) = _COUNT.unpack(head)
    fds: list[int] = []
    while len(fds) < n:
        msg, got_fds, _, _ = socket.recv_fds(sock, 1, _FDS_PER_MESSAGE)
        if not msg:
            raise EOFError("the parent sent no stack")
        fds += got_fds
    return fds


class ChildScan:
    """One scan in a child process (``started`` ahead, or started now); :meth:`frames`
    yields its frames as they come.

    ``cancel()`` is polled every :data:`POLL` seconds; once it is true (or the caller stops
    iterating, or anything fails) the child is killed and reaped."""

    def __init__(self, engine: Engine, started: Started | None = None):
        if started is not None and started.proc.poll() is not None:
            started.stop()  # it died waiting (killed, out of memory): one started now instead
            started = None
        try:
            what, fds = moved_stack(engine)
        except BaseException:
            if started is not None:
                started.stop()
            raise
        self.child = started or Started()
        self.proc, self.errors = self.child.proc, self.child.errors
        self._what: tuple | None = what
        self._fds = fds

    @property
    def pid(self) -> int:
        return self.proc.pid

    def frames(self, cancel: Callable[[], bool]) -> Iterator[tuple]:
        proc = self.proc
        try:
            assert proc.stdout is not None
            sock = self.child.sock
            # the layer roots, then the pickle straight into the socket, in this (worker)
            # thread: each 64 KiB frame is a write that lets the UI thread have the GIL (a big
            # memory stack pickles for a few tenths of a second)
            try:
                _send_fds(sock, self._fds)
                self._fds = []
                with sock.makefile("wb") as w:
                    pickle.Pickler(w, protocol=pickle.HIGHEST_PROTOCOL).dump(self._what)
                sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # it died at start: its stderr says why (below)
            except Exception as err:  # a field that does not pickle (a closure, a lock, ...)
                raise CannotMove(f"{type(err).__name__}: {err}") from None
            finally:
                self._what = None
            out = proc.stdout.fileno()
            # poll, not select: a stack of a few hundred layers (each root open) puts the pipe
            # past descriptor 1023, which select() cannot watch
            waiting = select.poll()
            waiting.register(out, select.POLLIN)
            buf = bytearray()
            while True:
                if cancel():
                    return
                if not waiting.poll(POLL * 1000):
                    continue
                chunk = os.read(out, 1 << 20)
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= _HEADER.size:
                    (n,) = _HEADER.unpack_from(buf)
                    if len(buf) < _HEADER.size + n:
                        break
                    frame = pickle.loads(bytes(buf[_HEADER.size:_HEADER.size + n]))
                    del buf[:_HEADER.size + n]
                    yield frame
                    if frame[0] in ("done", "error"):
                        return
            # the pipe closed without a last frame: the child died
            proc.wait()
            # its last words: the end of what it wrote (a traceback ends with the error)
            size = self.errors.seek(0, os.SEEK_END)
            self.errors.seek(max(0, size - 4096))
            err = self.errors.read(4096).decode("utf-8", "replace").strip()
            last = err.splitlines()[-1][-300:] if err else f"exit status {proc.returncode}"
            yield ("error", 0, f"the scan's process ended: {last}")
        finally:
            self.stop()

    def stop(self) -> None:
        """Kill the child (if still running) and reap it."""
        self.child.stop()


# ------------------------------------------------------------------------------ the child


def _die_with_parent() -> None:
    """SIGKILL when the thread that started us ends (Linux; best effort elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def child() -> None:
    """The child's main: read the stack, run check's walk, write the frames."""
    from ..rules.scan import check_findings
    from .session import BATCH_SECONDS

    _die_with_parent()
    # the frames go to our own copy of stdout; anything printed by mistake goes to stderr
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    count = 0

    def send(frame: tuple) -> None:
        data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(_HEADER.pack(len(data)))
        out.write(data)
        out.flush()

    try:
        # the stack on our standard input, a socket: the layer roots, then the pickle
        sock = socket.socket(fileno=os.dup(0))
        _RECEIVED[:] = _recv_fds(sock)
        with sock.makefile("rb") as r:
            parent, stack, options, kernel, profile = pickle.load(r)
        sock.close()
        if os.getppid() != parent:
            return  # the parent is gone already
        engine = Engine(stack, options=options, kernel=kernel, profile=profile)
        t0 = last = time.monotonic()
        batch: list[tuple[CauseFacts | None, Finding]] = []

        def progress(n: int) -> None:  # once per directory: the count goes out even without findings
            nonlocal count, batch, last
            count = n
            now = time.monotonic()
            if now - last >= BATCH_SECONDS:
                send(("batch", count, batch))
                batch, last = [], now

        for res, f in check_findings(engine, progress, lambda: os.getppid() != parent):
            batch.append((CauseFacts.of(res), f))
        if os.getppid() != parent:
            return
        if batch:
            send(("batch", count, batch))
        send(("done", count, time.monotonic() - t0))
    except BrokenPipeError:
        return  # the parent stopped listening
    except Exception as err:  # a layer vanished, a permission changed: reported as the thread did
        try:
            send(("error", count, f"{type(err).__name__}: {err}"))
        except BrokenPipeError:
            pass
