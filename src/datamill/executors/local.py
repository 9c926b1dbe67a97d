"""The local executor: a pool of reused worker processes on this machine (the default executor).

Each worker is a long-lived process with its own duplex pipe, in its own process group. A call is
pickled once (cloudpickle for lambdas and closures) when :meth:`LocalExecutor.run` gets it (a step's
call on values handed over by its fields, :meth:`LocalExecutor.submit_step`, is plain data pickled
with its chunk), and waits in the pool's queue; its function, and a step pickled by value, go to each worker once
(:mod:`datamill.executors.local_wire`). Calls go to workers in *chunks*, and results come back in
*batches* (see :mod:`datamill.executors.worker` for the wire protocol), as
``multiprocessing.Pool.imap(chunksize=...)`` does, with a chunk size that adapts to how long calls
of the same kind took so far:

* a kind of call not seen yet, or one that takes longer than :data:`CHUNK_SECONDS`, goes one at a
  time, so long tasks spread evenly over the workers;
* short calls go ``CHUNK_SECONDS / their mean duration`` at a time (at most :data:`MAX_CHUNK`, and
  never more than a fair share of what is queued), so a worker is fed once per chunk;
* calls queued in a worker behind a call that has run longer than :data:`STEAL_AFTER` are taken
  back and given to an idle worker: a long task never holds short ones hostage.

The event loop watches every worker's pipe and its process sentinel with ``loop.add_reader``: no
thread, no polling. Messages are handed to the task's ``on_message`` in the loop thread as they
arrive. The parent never blocks writing to a worker: its end of the pipe is non-blocking, and what
the socket does not take at once waits in the parent and is written as the worker reads (the loop
says when, ``loop.add_writer``). A parent blocked writing a chunk of big arguments to a worker that
is itself blocked writing a big result back would wait for ever (both sockets full, nobody
reading); now the loop keeps reading results while chunks go out. Withdrawals of calls go on a small
control pipe of their own, so they never wait behind a chunk (see :mod:`datamill.executors.worker`).

When a worker dies, the call it was running fails with ``WorkerCrashed`` (exit code or
signal, plus the interpreter's fault traceback if it crashed); the calls queued behind it never
started and go to another worker, and calls it finished whose results it had not sent yet run again
(nothing was recorded for them). A fresh worker takes the dead one's place. A timeout, or the
cancellation of a call that is running, SIGKILLs the worker's process group and replaces the worker:
a Python function cannot be interrupted any other way. A cancelled call that has not started is
withdrawn and never runs.

What a call prints, logs or writes to file descriptors 1 and 2 (C code, ``os.write``, child
processes) becomes log messages of the call, line by line.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import pickle
import signal
import tempfile
import time
import traceback
from collections import Counter, deque
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from datamill.errors import Cancelled, ConfigError, StepFailed, TaskTimeout, WorkerCrashed

from .base import Call, Executor, OnMessage, PythonCall, deliver, step_failed
from .local_wire import Constants, Frames, Outgoing, SharedSets, StepFields, sendable, step_result, withdraw
from .worker import BATCH, CHUNK, MESSAGE, PLAIN, RESULT, SKIP, SKIPPED, WorkerState, worker_main

__all__ = ["CHUNK_SECONDS", "MAX_CHUNK", "STEAL_AFTER", "LocalExecutor", "Submitted"]

#: a chunk holds about this much work (by the mean duration of its kind of call)
CHUNK_SECONDS = 0.02
#: the most calls one chunk holds
MAX_CHUNK = 256
#: calls queued behind one that has run this long go to an idle worker instead
STEAL_AFTER = 0.05
#: how many times a call goes back to the queue because its worker died before running it
MAX_REQUEUES = 3
#: workers in a row that exit before running any call: the pool's workers cannot start, and the
#: calls waiting for them fail at once instead of going round the requeues, one death at a time
STILLBORN_LIMIT = 3
#: weight of the newest duration in the running mean of a kind of call
_EWMA = 0.2

#: how much of a crashed worker's fault report (faulthandler output) goes into the error
_FAULT_TAIL = 20_000


class Submitted:
    """One call, from :meth:`LocalExecutor.submit` to its result: where it goes and who gets its messages."""

    __slots__ = (
        "eager",
        "executor",
        "future",
        "kind",
        "needs",
        "on_message",
        "payload",
        "requeues",
        "seq",
        "sets",
        "timeout",
        "timer",
        "worker",
    )

    def __init__(
        self,
        future: asyncio.Future[Any],
        on_message: OnMessage,
        payload: bytes | tuple[Any, ...],
        needs: tuple[int, ...],
        kind: Any,
        timeout: float | None,
        executor: LocalExecutor,
        sets: tuple[tuple[int, bytes], ...] = (),
    ) -> None:
        #: the call's result, or its error
        self.future = future
        self.executor = executor
        self.on_message = on_message
        self.payload = payload
        #: the constants (numbers) its payload names: sent with its chunk to a worker without them
        self.needs = needs
        #: the shared parameter sets (number, pickled) its payload names: sent with its chunk to a
        #: worker that does not keep them (see :mod:`datamill.executors.local_wire`)
        self.sets = sets
        self.kind = kind
        self.timeout = timeout
        self.eager = True
        self.seq = -1
        self.worker: _Worker | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.requeues = 0

    def cancel(self) -> bool:
        """Withdraw the call, or stop its worker if it runs; False if it had ended."""
        if not self.future.cancel():
            return False
        self.executor._ended()
        self.executor._abandon(self)
        return True

    def waitable(self) -> asyncio.Future[None]:
        """What to wait on for this call's end: its pool's :meth:`LocalExecutor.any_ended`."""
        return self.executor.any_ended()


class _Worker:
    """One worker process as the parent sees it."""

    __slots__ = (
        "conn",
        "control",
        "exited",
        "fault_path",
        "frames",
        "known",
        "out",
        "outstanding",
        "pid",
        "process",
        "sets",
        "state",
        "state_path",
        "writing",
    )

    def __init__(
        self, process: BaseProcess, conn: Connection, control: Connection, fault_path: str, state_path: str
    ) -> None:
        self.process = process
        #: the duplex pipe (a socket), non-blocking on this side: chunks out, messages and results in
        self.conn = conn
        #: the withdrawals' pipe, non-blocking (see :mod:`datamill.executors.worker`)
        self.control = control
        #: what it sent, read with one system call per wake-up of the loop
        self.frames = Frames(conn.fileno())
        #: what is sent to it, written as its socket takes it
        self.out = Outgoing(conn.fileno())
        #: the event loop watches its socket for room to write what ``out`` still holds
        self.writing = False
        self.pid: int = process.pid or 0
        self.fault_path = fault_path
        self.state_path = state_path
        self.state = WorkerState(state_path)
        #: calls sent to it whose outcome is not known yet, in the order it runs them (by seq)
        self.outstanding: dict[int, Submitted] = {}
        #: the constants it has been sent (see :mod:`datamill.executors.local_wire`)
        self.known: set[int] = set()
        #: the shared parameter sets it keeps, as it accounts for them itself (see ``SharedSets``)
        self.sets = SharedSets()
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
        self._all: set[_Worker] = set()  # live workers
        self._queue: deque[Submitted] = deque()  # calls not sent to a worker yet
        self._exiting: set[_Worker] = set()  # retired workers whose exit we have not seen yet
        self._closing = False
        self._seq = 0
        self._constants = Constants()  # what calls share, sent to each worker once
        self._durations: dict[Any, float] = {}  # kind of call -> running mean of its seconds
        self._steal_timer: asyncio.TimerHandle | None = None
        self._stillborn = 0  # workers in a row that died before claiming a call
        self._dispatch_soon = False  # a _dispatch() is scheduled for this turn of the loop
        self._wake: asyncio.Future[None] | None = None  # see any_ended()
        #: how many chunks of each size were sent to workers (what the pool did, for tests and benchmarks)
        self.chunks: Counter[int] = Counter()
        #: calls taken back from a worker busy with a long call and given to another
        self.stolen = 0
        #: calls a worker skipped, withdrawn too late to be taken back, and so sent to a worker again
        self.resent = 0
        #: constants (functions, steps' bytes) sent to workers: each goes once to each worker
        self.constants_sent = 0
        #: shared parameter sets sent to workers so far (each goes to a worker once while it keeps it)
        self.shared_sent = 0

    @property
    def capacity(self) -> int:
        """The number of workers: how many calls run at once."""
        return self.workers

    @property
    def in_flight(self) -> int:
        """Calls worth keeping handed to the pool: two chunks per worker of the shortest kind of call
        seen so far (eight per worker while nothing is known or every call is long, as before
        chunks), so a scheduler does not claim many long tasks that would only wait here."""
        biggest = max((self.chunk_size(kind) for kind in self._durations), default=1)
        return self.workers * max(8, min(MAX_CHUNK, 2 * biggest))

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (for tests and ``datamill status``)."""
        return sorted(w.pid for w in self._all)

    def worker_states(self) -> dict[int, tuple[int, int, int]]:
        """By live worker's pid, what its state file says: the seq of the call it claimed last, of the
        one it finished last, and how many withdrawn calls it holds to skip (for tests and diagnostics)."""
        out: dict[int, tuple[int, int, int]] = {}
        for worker in self._all:
            claimed, finished, _ = worker.state.read()
            out[worker.pid] = (claimed, finished, worker.state.held())
        return out

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
        if self._steal_timer is not None:
            self._steal_timer.cancel()
        while self._queue:
            _fail(self._queue.popleft(), Cancelled("The local executor was closed before the task could start."))
        for worker in list(self._all):
            jobs = list(worker.outstanding.values())
            worker.outstanding.clear()
            if jobs:
                for job in jobs:
                    _fail(job, Cancelled("The local executor was closed while the task ran; the task was stopped."))
                self._retire(worker, kill=True)
            elif worker.out.parts:
                self._retire(worker, kill=True)  # what it was not sent yet was only withdrawn calls
            else:
                self._send(worker, b"")  # "exit": it leaves its loop and exits normally
                self._retire(worker, kill=worker.writing)
        exits = [w.exited for w in self._exiting if w.exited is not None]
        if exits:
            _, late = await asyncio.wait(exits, timeout=self.shutdown_grace)
            if late:
                for worker in list(self._exiting):
                    _kill(worker.process)
                await asyncio.wait(late, timeout=self.shutdown_grace)

    async def run(self, call: Call, on_message: OnMessage, timeout: float | None = None) -> Any:
        """Run ``call`` on a worker (queued until one takes it); see :meth:`Executor.run`."""
        job = self.submit(call, on_message, timeout)
        try:
            return await job.future
        except asyncio.CancelledError:
            self._abandon(job)
            raise

    def submit(self, call: Call, on_message: OnMessage, timeout: float | None = None) -> Submitted:
        """Hand ``call`` to the pool without waiting for it: :meth:`run` without a coroutine.

        The returned handle's ``future`` gets the call's result (or error, as :meth:`run` raises
        it); its ``cancel()`` withdraws the call, or stops its worker if it runs. The scheduler
        starts thousands of short calls this way: an asyncio task per call, made, scheduled and
        resumed through a chain of coroutines, cost more than the call's share of the pool's work.
        """
        if type(call) is not PythonCall:  # the hot path checks the exact type; subclasses go through supports()
            self._check(call)
        assert isinstance(call, PythonCall)
        loop = self._loop
        if loop is None or self._closing:
            raise RuntimeError("LocalExecutor is not running: await start() first (and not after close()).")
        try:
            payload, needs, sets = self._constants.call(call.fn, tuple(call.args), dict(call.kwargs))
        except Exception as exc:
            raise StepFailed(
                f"The call could not be pickled to send it to a worker process ({type(exc).__name__}: {exc}). "
                "Pass only picklable arguments, or run the step with the inline executor.",
                error_type=type(exc).__name__,
                traceback="".join(traceback.format_exception(exc)),
            ) from None
        return self._queue_call(payload, needs, sets, _kind(call), on_message, timeout)

    def submit_step(
        self, fn: Any, fields: StepFields, on_message: OnMessage, timeout: float | None = None
    ) -> Submitted | None:
        """:meth:`submit` of ``fn(reporter, StepCall(...))`` for a step's call on values without
        upstream values, given by its fields, not as a ``StepCall``: its payload is plain data,
        pickled with its chunk (see :meth:`Constants.step_call`; ``fields`` as there). The
        scheduler hands thousands of such calls over: a ``StepCall`` made, pickled by itself with
        its own pickler and dropped cost more than the call's share of the pool's work. None when
        the call does not have that form: then :meth:`submit` it as a ``PythonCall``."""
        loop = self._loop
        if loop is None or self._closing:
            raise RuntimeError("LocalExecutor is not running: await start() first (and not after close()).")
        try:
            made = self._constants.step_call(fn, fields)
        except Exception:  # submit() says what cannot be pickled
            made = None
        if made is None:
            return None
        payload, needs, sets = made
        kind = (getattr(fn, "__module__", None), getattr(fn, "__qualname__", None), fields[0][0])  # as _kind() says
        return self._queue_call(payload, needs, sets, kind, on_message, timeout)

    def _queue_call(
        self,
        payload: bytes | tuple[Any, ...],
        needs: tuple[int, ...],
        sets: tuple[tuple[int, bytes], ...],
        kind: Any,
        on_message: OnMessage,
        timeout: float | None,
    ) -> Submitted:
        """Queue a call made by :meth:`submit` or :meth:`submit_step`; its handle."""
        loop = self._loop
        assert loop is not None
        job = Submitted(loop.create_future(), on_message, payload, needs, kind, timeout, self, sets)
        mean = self._durations.get(job.kind)
        job.eager = timeout is not None or mean is None or mean >= CHUNK_SECONDS
        self._queue.append(job)
        if len(self._all) < self.workers:
            self._replace()  # an earlier replacement failed to start: try again now
        if not self._dispatch_soon:
            # Once for every call made in this turn of the loop: they go out together, in chunks.
            self._dispatch_soon = True
            loop.call_soon(self._dispatch)
        return job

    def any_ended(self) -> asyncio.Future[None]:
        """A future resolved the next time one of this pool's calls ends (its ``future`` done).

        One future for all the calls handed over with :meth:`submit`, to wait on instead of each
        call's own: ``asyncio.wait`` on hundreds of futures added and removed a callback on each,
        and every call's end then scheduled one, which cost more than a trivial call's share of
        the pool's work. A waiter looks at which calls ended (``future.done()``) once woken.
        """
        wake = self._wake
        if wake is None or wake.done():
            assert self._loop is not None
            wake = self._wake = self._loop.create_future()
        return wake

    def _ended(self) -> None:
        """Wake whoever waits on :meth:`any_ended`: a call's future was just resolved."""
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    # -- sending work ----------------------------------------------------------------------------

    def chunk_size(self, kind: Any) -> int:
        """How many calls of ``kind`` go in one chunk: ~CHUNK_SECONDS of work by their mean duration."""
        mean = self._durations.get(kind)
        if mean is None or mean >= CHUNK_SECONDS:
            return 1
        return max(1, min(MAX_CHUNK, int(CHUNK_SECONDS / max(mean, 1e-6))))

    def _dispatch(self) -> None:
        """Send queued calls to workers that need work, in chunks; then see whether to steal."""
        self._dispatch_soon = False
        queue = self._queue
        while queue and (queue[0].future.done()):
            queue.popleft()
        if queue and self._all:
            for worker in sorted(self._all, key=lambda w: len(w.outstanding)):
                if not queue:
                    break
                self._feed(worker)
        if not queue:
            self._steal()

    def _feed(self, worker: _Worker) -> None:
        """Top up one worker's chunk from the queue, if it is running low."""
        queue = self._queue
        head = queue[0]
        n = self.chunk_size(head.kind)
        have = len(worker.outstanding)
        if head.timeout is not None:
            if have:
                return  # a call's timeout counts from its start: it goes only to a worker with nothing queued
        elif have > n // 2:
            return
        if worker.out.parts:
            return  # it has not taken what it was sent yet: more would only wait in this process
        if have and _busy_with_long_call(worker):
            return  # what it was sent would only be taken back for an idle worker
        share = math.ceil(len(queue) / max(1, len(self._all)))
        take = max(1, min(n - have, share))
        chunk: list[tuple[int, bool, Any, tuple[int, ...]]] = []
        defs: dict[int, bytes] = {}
        shared: dict[int, bytes] = {}
        known = worker.known
        loop = self._loop
        assert loop is not None
        # A step's calls name the same constants and sets (the same tuples: Constants.step_call):
        # looked at for the first of a row of them. Using a set again right after itself changes
        # no account (it is kept, and last used already), here as in the worker.
        last_needs: tuple[int, ...] | None = None
        last_sets: tuple[tuple[int, bytes], ...] | None = None
        names: tuple[int, ...] = ()
        while queue and len(chunk) < take:
            job = queue[0]
            if job.future.done():
                queue.popleft()
                continue
            if chunk and job.timeout is not None:
                break
            queue.popleft()
            self._seq += 1
            job.seq, job.worker = self._seq, worker
            worker.outstanding[job.seq] = job
            sets = job.sets
            if sets is not last_sets:
                names = _use_sets(worker, sets, shared)
                # a row of one set: its first use counts; of several, each use (they may push each other out)
                last_sets = sets if len(sets) == 1 else None
            chunk.append((job.seq, job.eager, job.payload, names))
            if job.needs is not last_needs:
                last_needs = job.needs
                for n in last_needs:
                    if n not in known:
                        known.add(n)
                        defs[n] = self._constants.data[n]
            if job.timeout is not None:
                job.timer = loop.call_later(job.timeout, self._expire, job)
        if not chunk:
            return
        self.chunks[len(chunk)] += 1
        self.constants_sent += len(defs)
        self.shared_sent += len(shared)
        self._send(worker, bytes((CHUNK,)) + _pack(defs, chunk, shared))

    def _send(self, worker: _Worker, data: bytes) -> None:
        """Send a worker one message without ever blocking: what its socket does not take now is
        written by :meth:`_on_writable` as it drains."""
        try:
            if worker.out.send(data) or worker.writing:
                return
        except OSError:
            return  # it just died: its sentinel will deal with its calls
        assert self._loop is not None
        self._loop.add_writer(worker.conn.fileno(), self._on_writable, worker)
        worker.writing = True

    def _on_writable(self, worker: _Worker) -> None:
        """Loop callback: a worker's socket has room for what it was not sent yet."""
        try:
            drained = worker.out.flush()
        except OSError:  # it died: its sentinel will deal with its calls
            worker.out.parts.clear()
            drained = True
        if drained:
            assert self._loop is not None
            self._loop.remove_writer(worker.conn.fileno())
            worker.writing = False
            if worker in self._all:
                self._dispatch()  # it may take more now

    def _withdraw(self, worker: _Worker, jobs: list[Submitted]) -> list[Submitted]:
        """Take calls back from a worker; those it has not started (they never will), in order."""
        if not jobs:
            return []
        try:
            sent = withdraw(worker.control.fileno(), SKIP, [j.seq for j in jobs])
        except OSError:
            return []  # it died: its sentinel will deal with its calls
        # Those whose withdrawal did not fit in the pipe (never, in practice) stay with the worker.
        jobs = jobs[:sent]
        # Read after writing: a call with a larger seq than the claimed one is claimed only after
        # the withdrawal is in the worker's pipe, and then it reads it and skips the call.
        claimed, _, _ = worker.state.read()
        taken = [j for j in jobs if j.seq > claimed]
        for job in taken:
            del worker.outstanding[job.seq]
            job.worker, job.seq = None, -1
            if job.timer is not None:
                job.timer.cancel()
                job.timer = None
        return taken

    def _steal(self) -> None:
        """Give an idle worker the calls queued behind a long one in another worker."""
        idle = [w for w in self._all if not w.outstanding]
        if not idle:
            return
        now = time.monotonic()
        wait = math.inf
        for worker in sorted(self._all, key=lambda w: -len(w.outstanding)):
            if len(worker.outstanding) < 2:
                continue
            claimed, finished, at = worker.state.read()
            first = next(iter(worker.outstanding))
            if claimed != first or finished >= claimed:
                continue  # it has not started its first call yet, or is between calls
            ran = now - at
            if ran < STEAL_AFTER:
                wait = min(wait, STEAL_AFTER - ran)
                continue
            later = [j for s, j in worker.outstanding.items() if s != first]
            taken = self._withdraw(worker, later)
            if taken:
                self.stolen += len(taken)
                self._queue.extendleft(reversed(taken))
                self._dispatch()
                return
        if wait < math.inf and self._steal_timer is None:
            assert self._loop is not None
            self._steal_timer = self._loop.call_later(wait, self._steal_later)

    def _steal_later(self) -> None:
        self._steal_timer = None
        if not self._closing:
            self._dispatch()

    # -- a call's end other than its result -------------------------------------------------------

    def _abandon(self, job: Submitted) -> None:
        """The awaiting task was cancelled: withdraw the call, or stop it if it runs."""
        if job.timer is not None:
            job.timer.cancel()
        worker = job.worker
        if worker is None:
            with contextlib.suppress(ValueError):
                self._queue.remove(job)
            return
        if job.seq not in worker.outstanding or self._withdraw(worker, [job]):
            return
        _, finished, _ = worker.state.read()
        if finished >= job.seq:
            del worker.outstanding[job.seq]  # it has ended; its result is on the way and will be dropped
            return
        self._lose(worker, job, None, kill=True)

    def _expire(self, job: Submitted) -> None:
        """A call's timeout: stop its worker, unless the call has ended."""
        job.timer = None
        worker = job.worker
        if job.future.done() or worker is None or job.seq not in worker.outstanding:
            return
        error = TaskTimeout(
            f"The task ran past its timeout of {job.timeout:g} s and was stopped (worker process {worker.pid} "
            "was killed). Raise the step's timeout or make it faster.",
            timeout=job.timeout,
            pid=worker.pid,
        )
        self._lose(worker, job, error, kill=True)

    def _lose(self, worker: _Worker, culprit: Submitted | None, error: BaseException | None, *, kill: bool) -> None:
        """A worker is gone (or being killed): end the call it ran, requeue the ones it did not."""
        jobs = list(worker.outstanding.values())
        worker.outstanding.clear()
        self._retire(worker, kill=kill)
        again: list[Submitted] = []
        for job in jobs:
            if job.timer is not None:
                job.timer.cancel()
                job.timer = None
            job.worker = None
            if job is culprit:
                if error is not None:
                    _fail(job, error)
            elif job.requeues >= MAX_REQUEUES:
                _fail(job, WorkerCrashed(f"The task's worker process died {job.requeues + 1} times before it ran."))
            else:
                job.requeues += 1
                again.append(job)
        self._queue.extendleft(reversed(again))
        self._replace()
        self._dispatch()

    # -- the pool ------------------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        """Start one worker process (blocking; safe in a thread: it touches no event loop state)."""
        assert self._ctx is not None
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        control_r, control_w = self._ctx.Pipe(duplex=False)
        fd, fault_path = tempfile.mkstemp(prefix="datamill-worker-", suffix=".fault")
        os.close(fd)
        state_path = fault_path.removesuffix(".fault") + ".state"
        WorkerState.create(state_path).close()
        # daemon=True: if the scheduler exits without close(), multiprocessing still ends the worker.
        process = self._ctx.Process(  # type: ignore[attr-defined]  # BaseContext lacks it in typeshed
            target=worker_main,
            args=(child_conn, control_r, fault_path, state_path),
            name="datamill-worker",
            daemon=True,
        )
        try:
            process.start()
        except BaseException:
            parent_conn.close()
            control_w.close()
            for path in (fault_path, state_path):
                os.unlink(path)
            raise
        finally:
            # The worker has its own copies; ours would hide the worker's death from us.
            child_conn.close()
            control_r.close()
        os.set_blocking(parent_conn.fileno(), False)
        os.set_blocking(control_w.fileno(), False)
        return _Worker(process, parent_conn, control_w, fault_path, state_path)

    def _adopt(self, worker: _Worker) -> None:
        """Watch a new worker's pipe and sentinel, and put it to work."""
        loop = self._loop
        assert loop is not None
        worker.exited = loop.create_future()
        loop.add_reader(worker.conn.fileno(), self._on_readable, worker)
        loop.add_reader(worker.process.sentinel, self._on_exit, worker)
        self._all.add(worker)
        self._dispatch()

    def _replace(self) -> None:
        """Start a worker in place of one that died or was killed (a few ms with the fork server)."""
        if self._closing or len(self._all) >= self.workers:
            return
        try:
            worker = self._spawn()
        except Exception as exc:
            # Not fatal: the pool runs one worker short and run() tries again. If no worker is left,
            # the queued calls fail instead of waiting forever.
            assert self._loop is not None
            self._loop.call_exception_handler(
                {"message": "datamill: could not start a worker process", "exception": exc}
            )
            if not self._all:
                while self._queue:
                    _fail(
                        self._queue.popleft(),
                        WorkerCrashed(f"No worker process could be started ({type(exc).__name__}: {exc})."),
                    )
            return
        self._adopt(worker)

    def _retire(self, worker: _Worker, *, kill: bool) -> None:
        """Take a worker out of service; its sentinel reader stays until it has exited, then _reap()."""
        assert self._loop is not None
        if worker in self._exiting:
            return
        self._all.discard(worker)
        if not worker.conn.closed:
            self._loop.remove_reader(worker.conn.fileno())
            if worker.writing:
                self._loop.remove_writer(worker.conn.fileno())
                worker.writing = False
            worker.out.parts.clear()
            worker.conn.close()
            worker.control.close()
        if kill:
            _kill(worker.process)
        self._exiting.add(worker)

    def _on_readable(self, worker: _Worker) -> None:
        """Loop callback: what a worker's pipe holds now (all of it: one read, many messages)."""
        try:
            alive = worker.frames.read()
        except OSError:
            alive = False
        for data in worker.frames.messages():
            if worker.conn.closed:
                break
            self._handle(worker, data)
        if not alive:
            # The worker closed its end: it is exiting. Its sentinel says how and triggers _on_exit().
            assert self._loop is not None
            if not worker.conn.closed:
                self._loop.remove_reader(worker.conn.fileno())
            return
        self._dispatch()

    def _handle(self, worker: _Worker, data: bytes) -> None:
        tag = data[0]
        if tag == MESSAGE:
            try:
                seq, message = pickle.loads(data[1:])
            except Exception:
                return  # cannot happen with our own Message classes; never worth failing the task
            job = worker.outstanding.get(seq)
            if job is not None:
                deliver(job.on_message, message)
            return
        if tag != BATCH:
            return
        settled = False
        for seq, kind, payload, seconds in pickle.loads(data[1:]):
            job = worker.outstanding.pop(seq, None)
            if job is None:
                continue  # cancelled while it ran to its end
            if job.timer is not None:
                job.timer.cancel()
                job.timer = None
            if kind == SKIPPED:
                # Withdrawn (a steal) after the worker claimed it, so not taken back, and then skipped
                # by the worker all the same: it did not run, and goes to a worker again.
                job.worker, job.seq = None, -1
                if not job.future.done():
                    self.resent += 1
                    self._queue.appendleft(job)
                continue
            mean = self._durations.get(job.kind)
            self._durations[job.kind] = seconds if mean is None else mean + _EWMA * (seconds - mean)
            future = job.future
            if not future.done():
                if kind == PLAIN:  # a step's result, decoded with its batch (the common case)
                    future.set_result(step_result(payload))
                else:
                    _settle(future, kind, payload)
                settled = True
        if settled:
            self._ended()

    def _on_exit(self, worker: _Worker) -> None:
        """Loop callback: a worker's sentinel fired, so the process has exited."""
        assert self._loop is not None
        self._loop.remove_reader(worker.process.sentinel)
        if worker in self._all:  # it died on its own: a crash
            # Messages and results it sent before dying are still in the pipe; hand them over first, in order.
            frames = worker.frames
            with contextlib.suppress(OSError):
                while worker.outstanding and frames.ready() and frames.read():
                    pass
            for data in frames.messages():
                if not worker.outstanding:
                    break
                self._handle(worker, data)
            claimed, finished, _ = worker.state.read()
            culprit = worker.outstanding.get(claimed) if finished < claimed else None
            # A worker that never claimed a call died of something no call did: its start failed.
            self._stillborn = self._stillborn + 1 if claimed < 0 else 0
            if self._stillborn >= STILLBORN_LIMIT:
                self._stillborn = 0
                self._give_up(worker)
            else:
                self._lose(worker, culprit, _crash_error(worker), kill=False)
        self._reap(worker)

    def _give_up(self, worker: _Worker) -> None:
        """Workers keep exiting as they start: fail every call not yet run, saying why and what to do.

        Each call would otherwise wait for :data:`MAX_REQUEUES` more deaths, and a pool with many
        calls queued would take minutes of failing starts to say anything. A later call tries again.
        """
        code = worker.process.exitcode
        error = WorkerCrashed(
            f"The local executor's worker processes exit as they start (the last one with exit code {code}), "
            f"{STILLBORN_LIMIT} in a row, before running any task; their error is printed above by the worker. "
            "If you use datamill from a Python script, put the script's code under "
            "`if __name__ == '__main__':` (each worker imports the main script as it starts); "
            "else check that the worker's environment can import the step's modules.",
            pid=worker.pid,
            exit_code=code,
        )
        jobs = list(worker.outstanding.values())
        worker.outstanding.clear()
        # Not replaced: starting more would fail the same way. The next run() starts one again.
        self._retire(worker, kill=False)
        for job in (*jobs, *self._queue):
            job.worker = None
            _fail(job, error)
        self._queue.clear()

    def _reap(self, worker: _Worker) -> None:
        """Collect an exited worker's status and files, so nothing of it is left behind."""
        worker.process.join(1.0)  # the sentinel fired, so this returns at once
        with contextlib.suppress(ValueError):
            worker.process.close()
        worker.state.close()
        for path in (worker.fault_path, worker.state_path):
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._exiting.discard(worker)
        if worker.exited is not None and not worker.exited.done():
            worker.exited.set_result(None)


def _pack(
    defs: dict[int, bytes], chunk: list[tuple[int, bool, Any, tuple[int, ...]]], shared: dict[int, bytes]
) -> bytes:
    """A chunk pickled in one go, its calls' plain payloads with it (see ``Constants.step_call``)."""
    try:
        return pickle.dumps((defs, chunk, shared), pickle.HIGHEST_PROTOCOL)
    except Exception:  # a call's plain data did not pickle: that call fails on the worker, not the chunk
        return pickle.dumps((defs, [sendable(e) for e in chunk], shared), pickle.HIGHEST_PROTOCOL)


def _use_sets(worker: _Worker, sets: tuple[tuple[int, bytes], ...], shared: dict[int, bytes]) -> tuple[int, ...]:
    """Account for a call's shared sets in ``worker``'s (in the order the worker accounts for them
    as it receives the chunk), putting in ``shared`` those it does not keep; their numbers."""
    for n, data in sets:
        if not worker.sets.use(n, len(data))[0]:
            shared[n] = data
    return tuple([n for n, _ in sets])


def _busy_with_long_call(worker: _Worker) -> bool:
    """Whether the worker's first call has been running for :data:`STEAL_AFTER` or longer."""
    claimed, finished, at = worker.state.read()
    return claimed == next(iter(worker.outstanding)) and finished < claimed and time.monotonic() - at >= STEAL_AFTER


def _kind(call: PythonCall) -> Any:
    """What calls are alike in duration: the same function, on the same step when it runs one."""
    first = call.args[0] if call.args else None
    step = getattr(first, "step", None)
    fn = call.fn
    return (getattr(fn, "__module__", None), getattr(fn, "__qualname__", None), step if isinstance(step, str) else None)


def _settle(future: asyncio.Future[Any], tag: int, payload: bytes) -> None:
    """Resolve a call's future from its reply pickled by itself (see :data:`PLAIN` for the other kind)."""
    try:
        if tag == RESULT:
            future.set_result(pickle.loads(payload))
        else:
            error_type, text, traceback_text = pickle.loads(payload)
            future.set_exception(step_failed(error_type, text, traceback_text))
    except Exception as exc:
        future.set_exception(
            StepFailed(
                f"The step's return value could not be unpickled in the scheduler ({type(exc).__name__}: "
                f"{exc}). Return plain data (numbers, strings, lists, dicts, paths).",
                error_type=type(exc).__name__,
            )
        )


def _fail(job: Submitted, error: BaseException) -> None:
    if job.timer is not None:
        job.timer.cancel()
        job.timer = None
    if not job.future.done():
        job.future.set_exception(error)
        job.executor._ended()


def _kill(process: BaseProcess) -> None:
    """SIGKILL the worker and its process group (what the call started), the only signal a busy or
    stuck Python process cannot ignore or postpone."""
    pid = process.pid
    if pid and process.exitcode is None:
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == pid:  # it leads its group (not yet, in the first instants of its life)
                os.killpg(pid, signal.SIGKILL)
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
