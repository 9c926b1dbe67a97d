"""What a running call prints and logs goes to its task's log, not to the terminal of the process running it.

Two mechanisms, used by the executors around each call:

* :func:`task_output` — per call, in any process: while the call runs, ``print()`` (``sys.stdout``
  and ``sys.stderr``) and ``logging`` records go to the call's :class:`~datamill.executors.base.Reporter`
  as log lines. It works by context, not by swapping process-wide state per call: ``sys.stdout`` and
  ``sys.stderr`` are replaced once by proxies, and one handler is added to the root logger, which
  send what is written to the reporter of the call running *in the current context* (a
  :class:`contextvars.ContextVar`), and to where it went before otherwise. So calls running at the
  same time in one process (the inline executor's threads) each get their own lines, and the
  server's own output is left alone. Lines written to stderr are prefixed ``"stderr: "`` (as the
  command executor does); a log record becomes ``"LEVEL logger: message"``. Records are taken at
  the levels the loggers already have (WARNING unless the step sets another); while a call runs,
  the other handlers of the root logger do not see its records, so they are not printed twice.
* :func:`fd_output` — in a process that runs one call at a time (a pool worker): file descriptors
  1 and 2 point at pipes for the duration of the call, so what C extensions, ``os.write`` and child
  processes write reaches the log too.

Threads a call starts do not inherit its context: what they print goes where the process's
output goes (in a pool worker, still into the task's log through :func:`fd_output`).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO, cast

__all__ = ["TaskOutput", "fd_output", "task_output"]

#: A line longer than this is passed on in pieces rather than buffered without limit.
MAX_LINE = 1 << 20


class _Sink:
    """Where one call's output goes: its reporter, a whole line at a time.

    Cheap to make, since one is made per call and most calls print nothing: its line buffers are
    made with the first write, under one lock shared by every sink (writes are rare and short).
    """

    __slots__ = ("log", "partial")

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.partial: dict[str, str] | None = None

    def write(self, stream: str, text: str) -> None:
        """Add ``text`` written to ``stream``; every completed line goes to the log."""
        with _SINKS_LOCK:
            if self.partial is None:
                self.partial = {"stdout": "", "stderr": ""}
            buf = self.partial[stream] + text
            lines = buf.split("\n")
            rest = lines.pop()
            while len(rest) >= MAX_LINE:
                lines.append(rest[:MAX_LINE])
                rest = rest[MAX_LINE:]
            self.partial[stream] = rest
        for line in lines:
            self.line(stream, line)

    def line(self, stream: str, line: str) -> None:
        """One line of ``stream`` to the log."""
        line = line.removesuffix("\r")
        self.log("stderr: " + line if stream == "stderr" else line)

    def close(self) -> None:
        """Pass on what was written after the last newline."""
        if self.partial is None:  # nothing was written
            return
        with _SINKS_LOCK:
            rests = [(s, r) for s, r in self.partial.items() if r]
            self.partial = {"stdout": "", "stderr": ""}
        for stream, rest in rests:
            self.line(stream, rest)


_SINKS_LOCK = threading.Lock()
_current: contextvars.ContextVar[_Sink | None] = contextvars.ContextVar("datamill_task_output", default=None)


class _Stream:
    """``sys.stdout`` or ``sys.stderr``: the current call's log when a call runs in this context, else ``inner``."""

    def __init__(self, name: str, inner: TextIO) -> None:
        self.name = name
        self.inner = inner

    def write(self, text: str) -> int:
        sink = _current.get()
        if sink is None:
            return self.inner.write(text)
        sink.write(self.name, str(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        # try/except, not contextlib.suppress: a pool worker flushes after every call
        try:  # noqa: SIM105
            self.inner.flush()
        except Exception:
            pass

    def isatty(self) -> bool:
        return _current.get() is None and self.inner.isatty()

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, buffer, ...: the real stream's
        return getattr(self.inner, name)


class _TaskLogHandler(logging.Handler):
    """On the root logger: a record logged by a running call goes to that call's log."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        sink = _current.get()
        if sink is None:
            _as_if_absent(record, self)
            return
        try:
            sink.log(self.format(record))
        except Exception:
            self.handleError(record)


def _as_if_absent(record: logging.LogRecord, me: logging.Handler) -> None:
    """Outside calls, do what logging does without this handler: the last resort when nothing else handles it."""
    logger: logging.Logger | None = logging.getLogger(record.name) if record.name != "root" else logging.getLogger()
    while logger is not None:
        if any(h is not me and record.levelno >= h.level for h in logger.handlers):
            return
        if not logger.propagate:
            break
        logger = logger.parent
    last = logging.lastResort
    if last is not None and record.levelno >= last.level:
        last.handle(record)


class _NotDuringCalls(logging.Filter):
    """On the root logger's other handlers: records of a running call are in its log already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _current.get() is None


_HANDLER = _TaskLogHandler()
_MUTE = _NotDuringCalls()
_install_lock = threading.Lock()


def _install() -> None:
    """Put the proxies and the handler in place (again, if someone replaced the streams since)."""
    root = logging.getLogger()
    handlers = root.handlers
    if isinstance(sys.stdout, _Stream) and isinstance(sys.stderr, _Stream) and _HANDLER in handlers:
        # a loop, not all() over a generator: this runs before every call
        for h in handlers:
            if h is not _HANDLER and _MUTE not in h.filters:
                break
        else:
            return
    with _install_lock:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is not None and not isinstance(stream, _Stream):
                setattr(sys, name, cast(TextIO, _Stream(name, stream)))
        if _HANDLER not in root.handlers:
            root.addHandler(_HANDLER)
        for h in root.handlers:
            if h is not _HANDLER and _MUTE not in h.filters:
                h.addFilter(_MUTE)


class TaskOutput:
    """While the ``with`` block runs, what this context prints and logs goes to ``log`` (one call per line).

    :func:`task_output` as a plain context manager: the inline executor enters one per call, and a
    generator-based one cost a good part of a trivial call.
    """

    __slots__ = ("_sink", "_token")

    def __init__(self, log: Callable[[str], None]) -> None:
        self._sink = _Sink(log)
        self._token: contextvars.Token[_Sink | None] | None = None

    def __enter__(self) -> None:
        _install()
        self._token = _current.set(self._sink)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        if self._sink.partial is not None:  # something was written (most calls print nothing)
            # A log that refuses lines now (an abandoned inline call) must not mask how the call ended.
            with contextlib.suppress(Exception):
                self._sink.close()


@contextlib.contextmanager
def task_output(log: Callable[[str], None]) -> Iterator[None]:
    """While the block runs, what this context prints and logs goes to ``log`` (one call per line)."""
    with TaskOutput(log):
        yield


def _pump(fd: int, prefix: str, log: Callable[[str], None]) -> None:
    """Read a pipe to its end, passing each line on (thread body)."""
    buf = b""
    try:
        while chunk := os.read(fd, 65536):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            while len(buf) >= MAX_LINE:
                lines.append(buf[:MAX_LINE])
                buf = buf[MAX_LINE:]
            for raw in lines:
                log(prefix + raw.decode("utf-8", "replace").removesuffix("\r"))
        if buf:
            log(prefix + buf.decode("utf-8", "replace").removesuffix("\r"))
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


@contextlib.contextmanager
def fd_output(log: Callable[[str], None], drain_seconds: float = 1.0) -> Iterator[None]:
    """While the block runs, what is written to file descriptors 1 and 2 goes to ``log``, line by line.

    For a process running one call at a time: the descriptors are the whole process's. When the
    block ends they are restored and the pipes read to their end; a child process that still holds
    them is waited for ``drain_seconds`` at most (what it writes later is dropped).
    """
    saved: list[tuple[int, int]] = []
    readers: list[threading.Thread] = []
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()  # what Python buffered before the call is not the call's
    try:
        for fd, prefix in ((1, ""), (2, "stderr: ")):
            try:
                os.fstat(fd)
            except OSError:
                continue  # closed in this process: nothing to capture
            r, w = os.pipe()
            saved.append((fd, os.dup(fd)))
            os.dup2(w, fd)
            os.close(w)
            t = threading.Thread(target=_pump, args=(r, prefix, log), name=f"datamill-fd{fd}", daemon=True)
            t.start()
            readers.append(t)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        deadline = time.monotonic() + drain_seconds
        for t in readers:
            t.join(max(0.0, deadline - time.monotonic()))
