"""Running a coroutine to its end from synchronous code, whether or not the thread runs an event loop.

``asyncio.run`` refuses to start in a thread whose event loop is running, and that is where much
synchronous code runs: a Jupyter notebook's cells (the kernel's loop), an ``async`` web handler
calling a library, an ``async`` step on the inline executor (whose loop is the scheduler's). There
:func:`run_to_end` runs the coroutine on a loop of its own in a helper thread while the caller
waits, as a synchronous call would; an interrupt (Ctrl-C, a notebook's "interrupt kernel")
cancels it and then propagates, as it does under ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: how often the waiting caller's thread runs Python code, so that an interrupt reaches it
SIGNAL_CHECK_SECONDS = 0.25


def run_to_end(coro: Coroutine[Any, Any, T]) -> T:
    """``coro``'s result (or its exception), run on a new event loop; see the module's docstring."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    return _run_in_a_thread(coro)


class _Outcome:
    """What the helper thread hands back: its loop and task (to cancel), then a value or an error."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None
        self.value: Any = None
        self.error: BaseException | None = None


def _run_in_a_thread(coro: Coroutine[Any, Any, T]) -> T:
    outcome = _Outcome()
    # Waited for rather than joined: a Thread.join interrupted by Ctrl-C marks the thread as ended
    # (Python 3.11's _wait_for_tstate_lock), so a second join would return while it still runs.
    done = threading.Event()

    async def main() -> T:
        outcome.loop = asyncio.get_running_loop()
        outcome.task = asyncio.current_task()
        return await coro

    def target() -> None:
        try:
            outcome.value = asyncio.run(main())
        except BaseException as exc:  # handed to the caller's thread, which raises it
            outcome.error = exc
        finally:
            done.set()

    thread = threading.Thread(target=target, name="datamill-coroutine", daemon=True)
    try:
        thread.start()  # in the block: an interrupt just after it still cancels the coroutine
        # In turns: a signal the kernel gave another thread interrupts no wait, and Python runs its
        # handler (KeyboardInterrupt) only when this thread next runs Python code.
        while not done.wait(SIGNAL_CHECK_SECONDS):
            pass
    except KeyboardInterrupt:
        if thread.ident is None:  # interrupted before it started: nothing runs
            coro.close()
            raise
        # As asyncio.run does on Ctrl-C: cancel the coroutine, let it clean up, then interrupt.
        # A loop that has just finished is closed already; there is nothing left to cancel then.
        while outcome.task is None and not done.wait(0.01):  # not running yet: wait until it can be cancelled
            pass
        loop, task = outcome.loop, outcome.task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)
        done.wait()
        raise
    if outcome.error is not None:
        raise outcome.error
    return outcome.value
