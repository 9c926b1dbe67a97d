"""The inline executor: Python calls run in the scheduler's own process. Fast, and for trusted code only.

Without a timeout a call runs right in the event loop thread: no thread hop, no pickling, a few
microseconds of overhead, which is what lets the engine record thousands of trivial tasks a second.
The price is that nothing can interrupt it: a call that hangs hangs the scheduler, and cancelling
the awaiting task has no effect until the call returns (it cannot even start to be cancelled, since
:meth:`InlineExecutor.run` never yields to the loop on this path).

With a timeout the call runs in a fresh daemon thread and :meth:`InlineExecutor.run` stops waiting
at the deadline (``TaskTimeout``) or on cancellation. Python cannot kill a thread, so this is best
effort: the abandoned thread goes on until the function returns, and its result is thrown away. To
stop it sooner, the next ``reporter.progress()``/``reporter.log()`` it makes raises the same error
inside it, so a function that reports progress in its loop ends there. Use the local pool for code
that may hang or crash.

What a call prints or logs goes to its task's log (see :mod:`datamill.executors.capture`), each
call's own lines even when several run at once; what it writes to file descriptors directly
(``os.write(1, ...)``, C code, child processes) goes to this process's output.

How many calls a scheduler keeps handed over (:attr:`InlineExecutor.in_flight`) follows how long
calls take here: about :data:`BATCH_SECONDS` of calls per batch, so thousands of trivial calls are
claimed and recorded in a few group commits, while slow calls are claimed a few at a time (a
cancellation is seen between batches: a batch of slow calls would delay it).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from datamill.errors import Cancelled, DatamillError, TaskTimeout

from .base import Call, Executor, Message, OnMessage, PythonCall, Reporter, deliver, step_failed_from
from .capture import TaskOutput, task_output

__all__ = ["InlineExecutor"]

#: Seconds of calls a scheduler hands over per batch (it keeps two batches in flight).
BATCH_SECONDS = 0.05
#: Bounds of :attr:`InlineExecutor.in_flight`.
MIN_IN_FLIGHT = 16
MAX_IN_FLIGHT = 1024


class InlineExecutor(Executor):
    """Runs :class:`PythonCall` s in this process: in the event loop thread, or a thread when timed."""

    name = "inline"
    #: a call in a thread (a timeout, or threaded) is abandoned, not stopped
    stops_calls = False

    def __init__(self, clock: Callable[[], float] = time.time, threaded: bool = False) -> None:
        self._clock = clock
        #: every call in a thread of its own, timed or not: for a scheduler whose event loop also
        #: serves HTTP (``datamill up``), where a call in the loop thread would stop every answer
        self.threaded = threaded
        #: seconds a call in the loop thread took, on average lately (None until one ran)
        self.mean_seconds: float | None = None

    @property
    def in_flight(self) -> int | None:
        """Calls worth handing over at once: two batches of :data:`BATCH_SECONDS` at the pace of recent
        calls (None, the scheduler's default, until a call ran in the loop thread, or when threaded)."""
        if self.threaded or self.mean_seconds is None:
            return None
        return max(MIN_IN_FLIGHT, min(MAX_IN_FLIGHT, int(2 * BATCH_SECONDS / max(self.mean_seconds, 1e-6))))

    @property
    def in_loop(self) -> bool:
        """Whether untimed calls run in the event loop's thread, to their end before :meth:`run` returns
        (so a scheduler may run a batch of them in one asyncio task)."""
        return not self.threaded

    def supports(self, call: Call) -> bool:
        """Only Python calls."""
        return isinstance(call, PythonCall)

    async def run(self, call: Call, on_message: OnMessage, timeout: float | None = None) -> Any:
        """Run ``call`` here; see the module docstring for what a timeout or cancellation can and cannot do."""
        if type(call) is not PythonCall:  # the hot path checks the exact type; subclasses go through supports()
            self._check(call)
        assert isinstance(call, PythonCall)
        if timeout is None and not self.threaded:
            reporter = Reporter(partial(deliver, on_message), self._clock)
            started = time.perf_counter()
            try:
                with TaskOutput(reporter.log):
                    return call.fn(reporter, *call.args, **call.kwargs)
            except (Exception, SystemExit) as exc:  # SystemExit too: a step calling sys.exit() must not stop us
                raise step_failed_from(exc) from None
            finally:
                took = time.perf_counter() - started
                mean = self.mean_seconds
                self.mean_seconds = took if mean is None else 0.9 * mean + 0.1 * took
        return await _ThreadedCall(call, on_message, self._clock).run(timeout)


class _ThreadedCall:
    """One call in its own daemon thread, awaited with a deadline; abandoned (not killed) on timeout or cancel."""

    def __init__(self, call: PythonCall, on_message: OnMessage, clock: Callable[[], float]) -> None:
        self.call = call
        self.on_message = on_message
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Any] = self.loop.create_future()
        self.reporter = Reporter(self._emit, clock)
        #: set once run() stopped waiting: the error the thread's next report raises
        self.abandoned: DatamillError | None = None

    async def run(self, timeout: float | None) -> Any:
        # A daemon thread rather than the loop's thread pool: a hung call would hold a pool slot for
        # good, and the pool's threads are joined at interpreter exit, so a hang would block exiting.
        threading.Thread(target=self._work, name="datamill-inline", daemon=True).start()
        try:
            async with asyncio.timeout(timeout):
                return await self.future
        except TimeoutError:
            error = TaskTimeout(
                f"The task ran past its timeout of {timeout:g} s. The inline executor cannot kill it; its thread "
                "goes on in the background. Raise the timeout, or use the local executor, which kills the worker.",
                timeout=timeout,
            )
            self.abandoned = error
            raise error from None
        except asyncio.CancelledError:
            self.abandoned = Cancelled("The task was cancelled; the inline executor abandoned its thread.")
            raise

    def _work(self) -> None:
        """Thread body: run the call, hand the outcome to the loop (after every message it sent)."""
        call = self.call
        try:
            with task_output(self.reporter.log):
                result = call.fn(self.reporter, *call.args, **call.kwargs)
        except BaseException as exc:
            outcome: tuple[bool, Any] = (False, step_failed_from(exc))
        else:
            outcome = (True, result)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(self._settle, outcome)

    def _settle(self, outcome: tuple[bool, Any]) -> None:
        if self.future.done():  # timed out or cancelled meanwhile
            return
        ok, value = outcome
        if ok:
            self.future.set_result(value)
        else:
            self.future.set_exception(value)

    def _emit(self, message: Message) -> None:
        """Reporter hook, called in the worker thread: queue the message for the loop thread."""
        if self.abandoned is not None:  # best-effort stop of an abandoned call (see module docstring)
            raise type(self.abandoned)(self.abandoned.message)  # a new instance: the awaiter holds the first
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self.loop.call_soon_threadsafe(self._deliver, message)

    def _deliver(self, message: Message) -> None:
        if self.abandoned is None:  # messages queued before the deadline but arriving after it are dropped
            deliver(self.on_message, message)
