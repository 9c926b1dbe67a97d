"""The local executor: a pool of reused worker processes on this machine (the default executor).

Each worker is a long-lived process with its own duplex pipe. A call is pickled once with
cloudpickle (so lambdas and closures work), sent to an idle worker with ``send_bytes``, and the
worker sends back, on the same pipe, any number of progress/log messages and then exactly one
result or error. One call is in flight per worker, so whatever happens to a worker happens to
exactly one task.

The event loop watches every worker's pipe and its process sentinel with ``loop.add_reader``: no
thread, no polling. Messages are handed to the task's ``on_message`` in the loop thread as they
arrive. When a sentinel fires while its worker was running a call, that task fails with
``WorkerCrashed`` (exit code or signal, plus the interpreter's fault traceback if it crashed) and a
fresh worker takes the dead one's place. A timeout or a cancellation SIGKILLs the worker running the
call and replaces it too: a Python function cannot be interrupted any other way.

What a call prints, logs or writes to file descriptors 1 and 2 (C code, ``os.write``, child
processes) becomes log messages of the call, line by line (see :mod:`datamill.executors.capture`).

Wire format. Parent to worker: ``cloudpickle((fn, args, kwargs))``; empty bytes mean "exit".
Worker to parent: one tag byte (:data:`_MESSAGE`, :data:`_RESULT`, :data:`_ERROR`) then a pickle.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import multiprocessing
import os
import pickle
import signal
import sys
import tempfile
import threading
import traceback
from collections import deque
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

import cloudpickle

from datamill.errors import Cancelled, ConfigError, StepFailed, TaskTimeout, WorkerCrashed

from .base import Call, Executor, Message, OnMessage, PythonCall, Reporter, deliver, step_failed
from .capture import fd_output, task_output

__all__ = ["LocalExecutor"]

_MESSAGE = 0x4D  # b"M": a pickled Message follows
_RESULT = 0x52  # b"R": the call's pickled return value follows
_ERROR = 0x45  # b"E": a pickled (error type, text, traceback) follows

#: how much of a crashed worker's fault report (faulthandler output) goes into the error
_FAULT_TAIL = 20_000


class _Pending:
    """The call a worker is running: where its result goes and who gets its messages."""

    __slots__ = ("future", "on_message")

    def __init__(self, future: asyncio.Future[Any], on_message: OnMessage) -> None:
        self.future = future
        self.on_message = on_message


class _Worker:
    """One worker process as the parent sees it."""

    __slots__ = ("conn", "exited", "fault_path", "pending", "pid", "process")

    def __init__(self, process: BaseProcess, conn: Connection, fault_path: str) -> None:
        self.process = process
        self.conn = conn
        self.pid: int = process.pid or 0
        self.fault_path = fault_path
        #: the call it runs now; None while idle (or once the call's outcome is known)
        self.pending: _Pending | None = None
        #: resolved once the process has exited and been reaped
        self.exited: asyncio.Future[None] | None = None


class LocalExecutor(Executor):
    """A pool of ``workers`` reused processes (``0``: one per CPU) running :class:`PythonCall` s.

    ``start_method`` is the multiprocessing start method: "forkserver" (default) or "spawn".
    ``shutdown_grace`` is how long :meth:`close` waits for idle workers to exit before killing them.
    """

    name = "local"

    def __init__(self, workers: int = 0, *, start_method: str = "forkserver", shutdown_grace: float = 5.0) -> None:
        if workers < 0:
            raise ConfigError(f"workers must be 0 (one per CPU) or more, not {workers}.", key="workers", value=workers)
        # Not "fork": the scheduler's process has threads (the SQLite writer, the asyncio child watcher,
        # to_thread pools), and forking a process that has threads copies locks held by threads that do
        # not exist in the child, which can deadlock it. The fork server is a small single-threaded
        # process started early that forks workers for us, so they start fast and safely; "spawn" starts
        # each worker from scratch (slower, also safe).
        if start_method not in ("forkserver", "spawn"):
            raise ConfigError(
                f"start_method must be 'forkserver' or 'spawn', not {start_method!r}.",
                key="start_method",
                value=start_method,
            )
        self.workers = workers or os.cpu_count() or 1
        self.start_method = start_method
        self.shutdown_grace = shutdown_grace
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ctx: BaseContext | None = None
        self._all: set[_Worker] = set()  # live workers, idle or busy
        self._idle: deque[_Worker] = deque()
        self._waiters: deque[asyncio.Future[_Worker]] = deque()  # run()s waiting for an idle worker
        self._exiting: set[_Worker] = set()  # retired workers whose exit we have not seen yet
        self._closing = False

    @property
    def capacity(self) -> int:
        """The number of workers: how many calls run at once."""
        return self.workers

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (for tests and ``datamill status``)."""
        return sorted(w.pid for w in self._all)

    def supports(self, call: Call) -> bool:
        """Only Python calls."""
        return isinstance(call, PythonCall)

    async def start(self) -> None:
        """Start the worker processes. The first start also starts the fork server (about a second)."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._ctx = multiprocessing.get_context(self.start_method)
        if self.start_method == "forkserver":
            # The fork server imports this module (and so datamill) once; every worker forked from it
            # has it already, so a new worker is ready in milliseconds. "__main__" is multiprocessing's
            # default entry, kept; on Python 3.11 it has no effect (the server is not told the script's
            # path), so each worker still runs the main script's imports once as it starts.
            self._ctx.set_forkserver_preload(["__main__", __name__])
        # Starting processes blocks (the first one waits for the fork server to import datamill):
        # do it in a thread so the event loop keeps serving meanwhile.
        workers = await asyncio.to_thread(lambda: [self._spawn() for _ in range(self.workers)])
        for worker in workers:
            self._adopt(worker)

    async def close(self) -> None:
        """Stop every worker: idle ones exit cleanly, running calls fail with ``Cancelled`` and are killed."""
        if self._loop is None or self._closing:
            return
        self._closing = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(Cancelled("The local executor was closed before the task could start."))
        for worker in list(self._all):
            pending, worker.pending = worker.pending, None
            if pending is not None:
                if not pending.future.done():
                    pending.future.set_exception(
                        Cancelled("The local executor was closed while the task ran; the task was stopped.")
                    )
                self._retire(worker, kill=True)
            else:
                with contextlib.suppress(OSError):
                    worker.conn.send_bytes(b"")  # "exit": it leaves its loop and exits normally
                self._retire(worker, kill=False)
        exits = [w.exited for w in self._exiting if w.exited is not None]
        if exits:
            _, late = await asyncio.wait(exits, timeout=self.shutdown_grace)
            if late:
                for worker in list(self._exiting):
                    _kill(worker.process)
                await asyncio.wait(late, timeout=self.shutdown_grace)

    async def run(self, call: Call, on_message: OnMessage, timeout: float | None = None) -> Any:
        """Run ``call`` on an idle worker (waiting for one if all are busy); see :meth:`Executor.run`."""
        if type(call) is not PythonCall:  # the hot path checks the exact type; subclasses go through supports()
            self._check(call)
        assert isinstance(call, PythonCall)
        loop = self._loop
        if loop is None or self._closing:
            raise RuntimeError("LocalExecutor is not running: await start() first (and not after close()).")
        try:
            data = cloudpickle.dumps((call.fn, tuple(call.args), dict(call.kwargs)), pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise StepFailed(
                f"The call could not be pickled to send it to a worker process ({type(exc).__name__}: {exc}). "
                "Pass only picklable arguments, or run the step with the inline executor.",
                error_type=type(exc).__name__,
                traceback="".join(traceback.format_exception(exc)),
            ) from None
        worker = self._idle.popleft() if self._idle else await self._acquire()
        pending = _Pending(loop.create_future(), on_message)
        worker.pending = pending
        with contextlib.suppress(OSError):  # it just died: its sentinel will fail the call with WorkerCrashed
            worker.conn.send_bytes(data)
        try:
            if timeout is None:
                return await pending.future
            async with asyncio.timeout(timeout):
                return await pending.future
        except TimeoutError:
            # The deadline cancelled the future, unless the call finished (or crashed) just before it: then that counts.
            if not pending.future.cancelled():
                return pending.future.result()
            self._stop(worker)
            raise TaskTimeout(
                f"The task ran past its timeout of {timeout:g} s and was stopped (worker process {worker.pid} "
                "was killed). Raise the step's timeout or make it faster.",
                timeout=timeout,
                pid=worker.pid,
            ) from None
        except asyncio.CancelledError:
            if worker.pending is pending:  # still running (not finished just as we were cancelled)
                self._stop(worker)
            raise

    # -- the pool ------------------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        """Start one worker process (blocking; safe in a thread: it touches no event loop state)."""
        assert self._ctx is not None
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        fd, fault_path = tempfile.mkstemp(prefix="datamill-worker-", suffix=".fault")
        os.close(fd)
        # daemon=True: if the scheduler exits without close(), multiprocessing still ends the worker.
        process = self._ctx.Process(  # type: ignore[attr-defined]  # BaseContext lacks it in typeshed
            target=_worker_main, args=(child_conn, fault_path), name="datamill-worker", daemon=True
        )
        try:
            process.start()
        except BaseException:
            parent_conn.close()
            os.unlink(fault_path)
            raise
        finally:
            child_conn.close()  # the worker has its own copy; ours would hide the worker's death from us
        return _Worker(process, parent_conn, fault_path)

    def _adopt(self, worker: _Worker) -> None:
        """Watch a new worker's pipe and sentinel, and put it to work."""
        loop = self._loop
        assert loop is not None
        worker.exited = loop.create_future()
        loop.add_reader(worker.conn.fileno(), self._on_readable, worker)
        loop.add_reader(worker.process.sentinel, self._on_exit, worker)
        self._all.add(worker)
        self._release(worker)

    def _release(self, worker: _Worker) -> None:
        """Give an idle worker to the longest-waiting run(), or park it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a cancelled waiter stays queued until here
                waiter.set_result(worker)
                return
        self._idle.append(worker)

    async def _acquire(self) -> _Worker:
        """Wait for an idle worker (first come, first served)."""
        assert self._loop is not None
        if len(self._all) < self.workers and not self._closing:
            self._replace()  # an earlier replacement failed to start: try again now
            if self._idle:
                return self._idle.popleft()
        waiter: asyncio.Future[_Worker] = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a worker just as we were cancelled
                self._release(waiter.result())
            raise

    def _replace(self) -> None:
        """Start a worker in place of one that died or was killed (a few ms with the fork server)."""
        if self._closing:
            return
        try:
            worker = self._spawn()
        except Exception as exc:
            # Not fatal: the pool runs one worker short and _acquire() tries again. If no worker is left,
            # the callers waiting for one fail instead of waiting forever.
            assert self._loop is not None
            self._loop.call_exception_handler(
                {"message": "datamill: could not start a worker process", "exception": exc}
            )
            if not self._all:
                while self._waiters:
                    waiter = self._waiters.popleft()
                    if not waiter.done():
                        waiter.set_exception(
                            WorkerCrashed(f"No worker process could be started ({type(exc).__name__}: {exc}).")
                        )
            return
        self._adopt(worker)

    def _stop(self, worker: _Worker) -> None:
        """Kill a worker whose call timed out or was cancelled, and start another in its place."""
        worker.pending = None
        self._retire(worker, kill=True)
        self._replace()

    def _retire(self, worker: _Worker, *, kill: bool) -> None:
        """Take a worker out of service; its sentinel reader stays until it has exited, then _reap()."""
        assert self._loop is not None
        if worker in self._exiting:
            return
        self._all.discard(worker)
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        if not worker.conn.closed:
            self._loop.remove_reader(worker.conn.fileno())
            worker.conn.close()
        if kill:
            _kill(worker.process)
        self._exiting.add(worker)

    def _on_readable(self, worker: _Worker) -> None:
        """Loop callback: one message from a worker's pipe."""
        try:
            data = worker.conn.recv_bytes()
        except (EOFError, OSError):
            # The worker closed its end: it is exiting. Its sentinel says how and triggers _on_exit().
            assert self._loop is not None
            self._loop.remove_reader(worker.conn.fileno())
            return
        self._handle(worker, data)

    def _handle(self, worker: _Worker, data: bytes) -> None:
        pending = worker.pending
        if pending is None:
            return
        tag = data[0]
        if tag == _MESSAGE:
            try:
                message: Message = pickle.loads(data[1:])
            except Exception:
                return  # cannot happen with our own Message classes; never worth failing the task
            deliver(pending.on_message, message)
            return
        worker.pending = None
        try:
            if tag == _RESULT:
                outcome: Any = pickle.loads(data[1:])
                if not pending.future.done():
                    pending.future.set_result(outcome)
            else:
                error_type, text, traceback_text = pickle.loads(data[1:])
                if not pending.future.done():
                    pending.future.set_exception(step_failed(error_type, text, traceback_text))
        except Exception as exc:
            if not pending.future.done():
                pending.future.set_exception(
                    StepFailed(
                        f"The step's return value could not be unpickled in the scheduler ({type(exc).__name__}: "
                        f"{exc}). Return plain data (numbers, strings, lists, dicts, paths).",
                        error_type=type(exc).__name__,
                    )
                )
        # Straight to the next waiting run(): no need to wait for this call's awaiter to resume.
        self._release(worker)

    def _on_exit(self, worker: _Worker) -> None:
        """Loop callback: a worker's sentinel fired, so the process has exited."""
        assert self._loop is not None
        self._loop.remove_reader(worker.process.sentinel)
        if worker in self._all:  # it died on its own: a crash
            # Messages it sent before dying are still in the pipe; hand them over first, in order.
            with contextlib.suppress(EOFError, OSError):
                while worker.pending is not None and worker.conn.poll():
                    self._handle(worker, worker.conn.recv_bytes())
            pending, worker.pending = worker.pending, None
            self._retire(worker, kill=False)
            if pending is not None and not pending.future.done():
                pending.future.set_exception(_crash_error(worker))
            self._replace()
        self._reap(worker)

    def _reap(self, worker: _Worker) -> None:
        """Collect an exited worker's status and files, so nothing of it is left behind."""
        worker.process.join(1.0)  # the sentinel fired, so this returns at once
        with contextlib.suppress(ValueError):
            worker.process.close()
        with contextlib.suppress(OSError):
            os.unlink(worker.fault_path)
        self._exiting.discard(worker)
        if worker.exited is not None and not worker.exited.done():
            worker.exited.set_result(None)


def _kill(process: BaseProcess) -> None:
    """SIGKILL, the only signal a busy or stuck Python process cannot ignore or postpone."""
    with contextlib.suppress(OSError, ValueError):
        process.kill()


def _crash_error(worker: _Worker) -> WorkerCrashed:
    """The WorkerCrashed for a worker that died while running a call, naming how it died."""
    code = worker.process.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"was killed by {name} ({-code})"
        if -code == signal.SIGKILL:
            how += ", perhaps by the out-of-memory killer"
        elif -code in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE):
            how += ": the step crashed the interpreter (a bug in native code it called?)"
    else:
        how = f"exited with code {code}"
    fault = ""
    with contextlib.suppress(OSError), open(worker.fault_path, errors="replace") as f:
        fault = f.read()[-_FAULT_TAIL:]
    return WorkerCrashed(
        f"The worker process {worker.pid} running the task {how}. The task was stopped; see its log.",
        pid=worker.pid,
        exit_code=code,
        traceback=fault,
    )


# -- inside a worker process ---------------------------------------------------------------------


class _Channel:
    """A worker's side of the pipe for one call: messages go out until the result has been sent."""

    __slots__ = ("conn", "lock", "open")

    def __init__(self, conn: Connection, lock: threading.Lock) -> None:
        self.conn = conn
        self.lock = lock
        self.open = True

    def emit(self, message: Message) -> None:
        data = bytes((_MESSAGE,)) + pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        # The lock lets threads the step started report too; "open" drops what they send after the
        # call returned, so it is never taken for the next call's messages.
        with self.lock:
            if self.open:
                self.conn.send_bytes(data)

    def finish(self, reply: bytes) -> None:
        with self.lock:
            self.open = False
            self.conn.send_bytes(reply)


def _worker_main(conn: Connection, fault_path: str) -> None:
    """Body of a worker process: run calls from ``conn`` one at a time until told to exit."""
    # The parent marks workers daemonic so they end with it, but a daemonic process may not start
    # children, and a step may well use multiprocessing itself.
    multiprocessing.current_process().daemon = False
    # Ctrl-C in a terminal signals the whole foreground process group; the scheduler decides what
    # happens to running tasks, so a worker must not die of it in the middle of a call.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    # On a segfault and the like, the interpreter writes the Python traceback here; the parent puts
    # it into the WorkerCrashed error. The file stays open for the life of the process.
    faulthandler.enable(open(fault_path, "w"))  # noqa: SIM115
    lock = threading.Lock()
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):  # the parent is gone or closed our pipe
            return
        if not data:
            return
        channel = _Channel(conn, lock)
        try:
            fn, args, kwargs = cloudpickle.loads(data)
            reporter = Reporter(channel.emit)
            # Whatever the call prints, logs or writes to fds 1 and 2 (C code, child processes) is its log.
            with fd_output(reporter.log), task_output(reporter.log):
                result = fn(reporter, *args, **kwargs)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt too: the worker must go on
            reply = _error_reply(exc)
        else:
            try:
                reply = bytes((_RESULT,)) + cloudpickle.dumps(result, pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                reply = _error_reply(exc, f"the step's return value could not be pickled: {_text(exc)}")
        try:
            channel.finish(reply)
        except (OSError, ValueError):
            return


def _error_reply(exc: BaseException, text: str | None = None) -> bytes:
    tb = "".join(traceback.format_exception(exc))
    payload = (type(exc).__name__, _text(exc) if text is None else text, tb)
    return bytes((_ERROR,)) + pickle.dumps(payload, pickle.HIGHEST_PROTOCOL)


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
