"""Inside a local pool worker: its loop over chunks of calls, and the wire protocol both ends speak.

The parent (:mod:`datamill.executors.local`) sends a worker *chunks* of calls and gets their results
back in *batches*, so that a pool of short tasks costs one pipe round trip per chunk, not per task
(what ``multiprocessing.Pool.imap(chunksize=...)`` does).

Parent to worker, one message each (``Connection`` framing) on the duplex pipe:
``b"C" + pickle((constants, [(seq, eager, payload, sets), ...], shared))`` a chunk (``payload`` is
made once per call by the parent: the call pickled, or a step's call as plain data pickled with the
chunk, see ``Constants.step_call``; ``constants`` are what its calls share that this worker has not
been sent yet, ``sets`` the numbers of the big parameter sets a call names and ``shared`` those of
them this worker does not keep: see :mod:`datamill.executors.local_wire`); empty bytes: exit. And on
a *control* pipe of its own: ``b"S"`` + 8-byte sequence numbers, withdraw those calls if not started
yet. Withdrawals do not
go behind chunks: the parent writes chunks without blocking (what the socket does not take yet
waits in the parent, while the worker may be busy writing results), and a withdrawal must be
readable by the worker before the parent decides it took effect (see the state below). A
withdrawal is small and written whole or not at all (PIPE_BUF), so the parent never waits there
either.

Worker to parent: ``b"M" + pickle((seq, message))`` a progress or log message of call ``seq``;
``b"B" + pickle([(seq, tag, payload, seconds), ...])`` results, ``tag`` :data:`RESULT` (``payload``
is the pickled return value), :data:`PLAIN` (a step's ``StepResult`` as plain data, decoded with its
batch: ``local_wire.plain_result``), :data:`ERROR` (a pickled ``(type name, text, traceback)``) or
:data:`SKIPPED` (the call was withdrawn: it did not run).
Results are held back while calls finish quickly and sent when the chunk is done, when a few
milliseconds have passed, before a message, and around every *eager* call (one with a timeout, or
whose duration is not known to be short), so a long call never holds finished results back.

What a call writes to fds 1 and 2 is its log (:class:`_FdCapture`); what it wrote and nobody read
yet is read when it returns, or, when another call of the chunk follows, with that call's claim: the
one poll of the control pipe after the claim looks at the capture pipes too, and the call's result
is queued after its last line.

The worker's *state* is a small file both ends map in memory: the sequence number of the call the
worker took last (``claimed``), of the call it last finished (``finished``), when it took it, and
how many withdrawn calls it holds to skip (``held``: only calls it has not reached; a withdrawal
that comes after its call was claimed is dropped, as that seq never comes again).
The worker writes ``claimed`` *before* it reads its control pipe and runs the call, so when the
parent has written a withdrawal and then reads a smaller ``claimed``, the call will not run. The
converse does not hold: the worker may claim a call, the parent write its withdrawal and read that
claim, and the worker then read the withdrawal and skip the call; so a skipped call is answered with
:data:`SKIPPED`, and the parent sends a call it still counted as the worker's to a worker again. The
parent uses the state to know which call a dead worker was running (that one failed; the calls
after it never started and go to another worker), to stop a cancelled call only if it runs, and to
take back calls queued behind a long one (work stealing).
"""

from __future__ import annotations

import contextlib
import faulthandler
import fcntl
import mmap
import multiprocessing
import os
import pickle
import select
import signal
import struct
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from .base import Message, Reporter
from .capture import MAX_LINE, TaskOutput
from .local_wire import call_parts, dumps, frame, hold, plain_result, remember, withdrawn

__all__ = ["ERROR", "PLAIN", "RESULT", "SKIPPED", "WorkerState", "worker_main"]

CHUNK = ord("C")
SKIP = ord("S")
MESSAGE = ord("M")
BATCH = ord("B")
RESULT = ord("R")
#: a result's tag: the payload is a ``StepResult`` as plain data (``local_wire.plain_result``)
PLAIN = ord("P")
ERROR = ord("E")
#: a result's tag: the call was withdrawn and skipped, not run (the parent runs it elsewhere if it
#: had not taken it back)
SKIPPED = ord("W")

#: finished results wait at most this long in a worker before they are sent
FLUSH_SECONDS = 0.005

#: claimed, finished, claimed at (time.monotonic(), shared by all processes), withdrawals held
_STATE = struct.Struct("=qqdq")


class WorkerState:
    """The shared state file of one worker, mapped in memory (see the module's docstring)."""

    size = _STATE.size

    def __init__(self, path: str) -> None:
        with open(path, "r+b") as f:
            if os.fstat(f.fileno()).st_size < self.size:
                f.write(_STATE.pack(-1, -1, 0.0, 0))
                f.flush()
            self._map = mmap.mmap(f.fileno(), self.size)

    @classmethod
    def create(cls, path: str) -> WorkerState:
        """A fresh state file at ``path``: nothing claimed, nothing finished."""
        with open(path, "wb") as f:
            f.write(_STATE.pack(-1, -1, 0.0, 0))
        return cls(path)

    def read(self) -> tuple[int, int, float]:
        """``(claimed, finished, claimed_at)``."""
        claimed, finished, at, _ = _STATE.unpack_from(self._map)
        return claimed, finished, at

    def held(self) -> int:
        """How many withdrawn calls the worker holds on to, to skip them when it reaches them: no
        more than the calls it was sent and has not reached (a test's way to see that none pile up)."""
        return int(struct.unpack_from("=q", self._map, 24)[0])

    def claim(self, seq: int) -> None:
        """Worker side: call ``seq`` is taken now (its time first, so the parent never sees a stale one)."""
        struct.pack_into("=d", self._map, 16, time.monotonic())
        struct.pack_into("=q", self._map, 0, seq)

    def finish(self, seq: int) -> None:
        """Worker side: call ``seq`` has ended (or was withdrawn)."""
        struct.pack_into("=q", self._map, 8, seq)

    def hold(self, count: int) -> None:
        """Worker side: it holds ``count`` withdrawn calls (see :meth:`held`)."""
        struct.pack_into("=q", self._map, 24, count)

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError):
            self._map.close()


class _Outbox:
    """A worker's side of the pipe: messages go at once, results in batches; safe from any thread."""

    __slots__ = ("conn", "fd", "lock", "results", "since")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.fd = conn.fileno()
        self.lock = threading.Lock()
        self.results: list[tuple[int, int, Any, float]] = []
        self.since = 0.0

    def message(self, seq: int, message: Message) -> None:
        data = bytes((MESSAGE,)) + pickle.dumps((seq, message), pickle.HIGHEST_PROTOCOL)
        with self.lock:
            self._flush()  # earlier calls' results first: the parent sees every call's events in order
            self._send(data)

    def result(self, item: tuple[int, int, Any, float]) -> None:
        with self.lock:
            if not self.results:
                self.since = time.monotonic()
            self.results.append(item)

    def due(self) -> bool:
        return bool(self.results) and time.monotonic() - self.since >= FLUSH_SECONDS

    def flush(self) -> None:
        with self.lock:
            self._flush()

    def _flush(self) -> None:
        if self.results:
            data = bytes((BATCH,)) + pickle.dumps(self.results, pickle.HIGHEST_PROTOCOL)
            self.results = []
            self._send(data)

    def _send(self, data: bytes) -> None:
        """``conn.send_bytes(data)``: the same frame in one ``write`` (the pipe is blocking: a
        short write is only one a signal cut), without ``Connection``'s checks and copies in Python."""
        view = memoryview(frame(data))
        while view:
            view = view[os.write(self.fd, view) :]


class _Channel:
    """One call's messages: sent until the call has returned (threads it started may outlive it)."""

    __slots__ = ("open", "outbox", "seq")

    def __init__(self, outbox: _Outbox, seq: int) -> None:
        self.outbox = outbox
        self.seq = seq
        self.open = True

    def emit(self, message: Message) -> None:
        if self.open:
            self.outbox.message(self.seq, message)


class _FdCapture:
    """File descriptors 1 and 2 of the worker, pointed at pipes once: what a call writes there is its log.

    One reader thread per descriptor for the worker's life (not two threads and two pipes per
    call): it passes each line to the log of the call running now, or to the worker's original
    descriptor between calls. When a call ends, what it wrote and nobody read yet is read at once
    under the same lock, so every byte the call wrote before returning is in its log.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.log: Callable[[str], None] | None = None
        self.pipes: list[tuple[int, int, str]] = []  # (read end, original copy, prefix)
        #: the pipes' read ends
        self.fds: list[int] = []
        self.partial: dict[int, bytes] = {}
        #: whether a pipe's ``partial`` may hold bytes: most calls write nothing, and end() then
        #: looks at neither
        self.pending = False
        # Which pipes hold bytes when a call ends: one poll for both, instead of a read of each.
        self.readable = select.poll()
        for fd, prefix in ((1, ""), (2, "stderr: ")):
            try:
                os.fstat(fd)
            except OSError:
                continue  # closed in this process: nothing to capture
            r, w = os.pipe()
            original = os.dup(fd)
            os.dup2(w, fd)
            os.close(w)
            os.set_blocking(r, False)
            fcntl.fcntl(r, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
            self.pipes.append((r, original, prefix))
            self.fds.append(r)
            self.readable.register(r, select.POLLIN)
            self.partial[r] = b""
            pump = threading.Thread(target=self._pump, args=(r, original, prefix), name=f"datamill-fd{fd}", daemon=True)
            pump.start()

    def begin(self, log: Callable[[str], None]) -> None:
        with self.lock:
            self.log = log

    def flush(self) -> None:
        """The call has returned: what Python buffered for fds 1 and 2 during it (a thread of it
        printing, a write to ``sys.__stdout__``) is the call's too, so it goes to the pipes now,
        before they are polled (:meth:`end`)."""
        # A flush with nothing buffered is a C call that makes no system call; try/except, not
        # contextlib.suppress, which cost more than both flushes.
        try:  # noqa: SIM105
            sys.stdout.flush()
        except Exception:
            pass
        try:  # noqa: SIM105
            sys.stderr.flush()
        except Exception:
            pass

    def end(self, ready: list[tuple[int, int]] | None = None) -> None:
        """After :meth:`flush`: what the call wrote and nobody read yet goes to its log, then the
        worker's output is its own again. ``ready``: a poll of the pipes (among other descriptors)
        made since the flush, which the worker made anyway (see ``worker_main``); else they are
        polled here."""
        with self.lock:
            if ready is None:
                ready = self.readable.poll(0)
            if ready:
                fds = {fd for fd, _ in ready}
                for r, original, prefix in self.pipes:
                    if r in fds:
                        self._drain(r, original, prefix)
            if self.pending:  # a partial line was read during the call (no pipe holds one otherwise)
                self.pending = False
                for r, original, prefix in self.pipes:
                    rest = self.partial[r]
                    if rest:
                        self.partial[r] = b""
                        self._line(original, prefix, rest)
            self.log = None

    def _pump(self, r: int, original: int, prefix: str) -> None:
        while True:
            try:
                select.select([r], [], [])
            except (OSError, ValueError):
                return
            with self.lock:
                if not self._drain(r, original, prefix):
                    return

    def _drain(self, r: int, original: int, prefix: str) -> bool:
        """Read what the pipe holds now (lock held); False once it is closed."""
        while True:
            try:
                chunk = os.read(r, 65536)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not chunk:
                return False
            *lines, rest = (self.partial[r] + chunk).split(b"\n")
            while len(rest) >= MAX_LINE:
                lines.append(rest[:MAX_LINE])
                rest = rest[MAX_LINE:]
            self.partial[r] = rest
            if rest:
                self.pending = True
            for raw in lines:
                self._line(original, prefix, raw)

    def _line(self, original: int, prefix: str, raw: bytes) -> None:
        if self.log is None:  # between calls (a child process of an earlier call): the worker's own output
            with contextlib.suppress(OSError):
                os.write(original, raw + b"\n")
            return
        with contextlib.suppress(Exception):
            self.log(prefix + raw.decode("utf-8", "replace").removesuffix("\r"))


def worker_main(conn: Connection, control: Connection, fault_path: str, state_path: str) -> None:
    """Body of a worker process: run chunks of calls from ``conn`` in order until told to exit,
    skipping those ``control`` withdraws."""
    # The parent marks workers daemonic so they end with it, but a daemonic process may not start
    # children, and a step may well use multiprocessing itself.
    multiprocessing.current_process().daemon = False
    # Its own process group: stopping a call kills whatever the call started too.
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    # Ctrl-C in a terminal signals the whole foreground process group; the scheduler decides what
    # happens to running tasks, so a worker must not die of it in the middle of a call.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    # On a segfault and the like, the interpreter writes the Python traceback here; the parent puts
    # it into the WorkerCrashed error. The file stays open for the life of the process.
    faulthandler.enable(open(fault_path, "w"))  # noqa: SIM115
    state = WorkerState(state_path)
    outbox = _Outbox(conn)
    capture = _FdCapture()
    inbox: deque[tuple[int, bool, Any, Any]] = deque()
    skip: set[int] = set()
    # Looked at before every call: one poll object for the worker's life (Connection.poll() makes
    # a selector each time, which cost more than a trivial call). It watches the capture pipes too:
    # the call before this one ends with the same look (see below).
    control_fd = control.fileno()
    pipe = select.poll()
    pipe.register(control_fd, select.POLLIN)
    watch = select.poll()
    for fd in (control_fd, *capture.fds):
        watch.register(fd, select.POLLIN)
    # The call that returned last, its output not read to its end yet: (seq, eager, took, channel, tag, reply).
    # When another call follows in the chunk, its end waits for that call's claim, so that one poll
    # looks at both the control pipe (for that call) and the capture pipes (for this one): a system
    # call per call less. Its result is queued only then, after its last log line.
    last: tuple[int, bool, float, _Channel, int, Any] | None = None
    try:
        while True:
            if not inbox:
                if last is not None:
                    _end(outbox, capture, last, None)
                    last = None
                outbox.flush()
                if not _receive(conn.recv_bytes(), inbox):
                    return
                continue
            seq, eager, payload, shared = inbox.popleft()
            state.claim(seq)
            # Withdrawals written before the claim are in the control pipe now: honour them before
            # running. Bytes the last call wrote before it returned are in its capture pipes now.
            if last is None:
                ready = pipe.poll(0)
            else:
                ready = watch.poll(0)
                _end(outbox, capture, last, ready)
                last = None
            changed = any(fd == control_fd for fd, _ in ready)
            if changed:
                _withdrawals(control, pipe, skip)
            if skip:
                hit = seq in skip
                if hit or min(skip) < seq:
                    # Calls arrive in the order of their seqs, so a withdrawn seq up to this one never
                    # comes (again): a withdrawal that came after its call was claimed (the parent,
                    # reading ``claimed`` after writing it, did not take the call back) would
                    # otherwise stay here for the worker's life.
                    skip = {s for s in skip if s > seq}
                    changed = True
                if changed:
                    state.hold(len(skip))
                if hit:
                    state.finish(seq)
                    # The parent may have read our claim before we read its withdrawal, and so kept
                    # the call as ours: it learns from this that the call did not run.
                    outbox.result((seq, SKIPPED, b"", 0.0))
                    continue
            elif changed:
                state.hold(0)
            if eager:
                outbox.flush()
            channel = _Channel(outbox, seq)
            started = time.perf_counter()
            tag, reply = _run(channel, capture, payload, shared)
            took = time.perf_counter() - started
            capture.flush()
            # Finished before the next claim (the parent reads the one it finds running from both);
            # what it wrote is read to its end and its result queued with the next call's claim.
            state.finish(seq)
            last = (seq, eager, took, channel, tag, reply)
    except (EOFError, OSError, ValueError):  # the parent is gone or closed our pipe
        return


def _withdrawals(control: Connection, pipe: select.poll, skip: set[int]) -> None:
    """Add the withdrawals the control pipe holds (one at least) to ``skip``."""
    skip.update(withdrawn(control.recv_bytes()[1:]))
    while pipe.poll(0):
        skip.update(withdrawn(control.recv_bytes()[1:]))


def _end(
    outbox: _Outbox,
    capture: _FdCapture,
    last: tuple[int, bool, float, _Channel, int, Any],
    ready: list[tuple[int, int]] | None,
) -> None:
    """The end of a call that returned: its last log lines, then its result (see ``worker_main``)."""
    seq, eager, took, channel, tag, reply = last
    capture.end(ready)
    channel.open = False
    outbox.result((seq, tag, reply, took))
    if eager or took >= FLUSH_SECONDS or outbox.due():
        outbox.flush()


def _receive(data: bytes, inbox: deque[tuple[int, bool, Any, Any]]) -> bool:
    """Take one message from the parent; False for "exit"."""
    if not data:
        return False
    if data[0] == CHUNK:
        constants, chunk, shared = pickle.loads(data[1:])
        if constants:
            remember(constants)
        # Each call holds the shared sets it names from now on (see local_wire.hold): in the order
        # of the chunk, as the parent accounted for them when it sent it.
        for seq, eager, payload, names in chunk:
            inbox.append((seq, eager, payload, hold(names, shared) if names else ()))
    return True


def _run(channel: _Channel, capture: _FdCapture, payload: Any, shared: Any = ()) -> tuple[int, Any]:
    """Run one call; its reply ``(tag, payload)``; ``shared``: the parameter sets it holds. Its
    output is captured until the caller ends it (``capture.end()``) and closes its ``channel``."""
    try:
        fn, args, kwargs = call_parts(payload, shared)
        reporter = Reporter(channel.emit)
        log = reporter.log
        # Whatever the call prints, logs or writes to fds 1 and 2 (C code, child processes) is its log.
        capture.begin(log)
        # the class, not task_output's generator: that one's context manager cost as much as its work
        with TaskOutput(log):
            result = fn(reporter, *args, **kwargs)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: the worker must go on
        return ERROR, _error_payload(exc)
    plain = plain_result(result)
    if plain is not None:
        return PLAIN, plain
    try:
        return RESULT, _result_payload(fn, result)
    except Exception as exc:
        return ERROR, _error_payload(exc, f"the step's return value could not be pickled: {_text(exc)}")


def _result_payload(fn: Any, result: Any) -> bytes:
    """A call's return value pickled for the parent: datamill's own (a ``StepResult`` of plain data)
    with the standard pickler, which is several times faster (paths as strings); anything else
    with cloudpickle."""
    if getattr(fn, "__module__", "").startswith("datamill."):
        with contextlib.suppress(Exception):
            return dumps(result)
    return cloudpickle.dumps(result, pickle.HIGHEST_PROTOCOL)


def _error_payload(exc: BaseException, text: str | None = None) -> bytes:
    tb = "".join(traceback.format_exception(exc))
    return pickle.dumps((type(exc).__name__, _text(exc) if text is None else text, tb), pickle.HIGHEST_PROTOCOL)


def _text(exc: BaseException) -> str:
    """``str(exc)``, even for an exception whose ``__str__`` is broken."""
    try:
        return str(exc)
    except Exception:
        return repr(exc)


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when its parent dies, even in the middle of a call.

    The parent is the fork server, which exits when the scheduler does, so a scheduler killed with
    SIGKILL leaves no worker running behind it. Elsewhere a worker notices at its next call.
    """
    if sys.platform != "linux":
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
