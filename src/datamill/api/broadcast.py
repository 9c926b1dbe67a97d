"""Wake waiting requests (SSE streams, long polls) when events are appended.

One thread per app waits on :meth:`EventLog.wait` while anyone is waiting and tells the event
loop the newest ``seq``; requests await that instead of each holding a thread of the pool, so a
hundred open SSE streams cost one thread. :meth:`EventBroadcaster.close` (thread-safe) wakes
every waiter for good, which is how streams end on server shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

import anyio

from datamill.events import EventLog

log = logging.getLogger("datamill.api")

#: How long the thread blocks in one ``EventLog.wait`` (``close()`` ends the wait early).
WAIT_SLICE = 0.5


class EventBroadcaster:
    """Tells async waiters that the event log grew past their cursor."""

    def __init__(self, events: EventLog) -> None:
        self._events = events
        #: The newest ``seq`` the thread has seen (only ever grows; read on the event loop).
        self.latest = 0
        self._published = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._closed = threading.Event()
        self._wanted = threading.Event()
        self._waiters = 0
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called: waiters return False at once."""
        return self._closed.is_set()

    @property
    def waiters(self) -> int:
        """How many requests are waiting right now."""
        return self._waiters

    def _bind(self) -> asyncio.Event:
        if self._changed is None:
            self._loop = asyncio.get_running_loop()
            self._changed = asyncio.Event()
        with self._start_lock:
            if self._thread is None and not self.closed:
                self._thread = threading.Thread(target=self._run, name="datamill-events", daemon=True)
                self._thread.start()
        return self._changed

    async def wait(self, after: int, timeout: float) -> bool:
        """Wait until an event with ``seq > after`` exists; False on timeout or once closed."""
        if self.closed:
            return False
        self._bind()
        if self.latest > after:
            return True
        self._waiters += 1
        self._wanted.set()
        try:
            with anyio.move_on_after(timeout):
                while not self.closed:
                    if self.latest > after:
                        return True
                    assert self._changed is not None
                    await self._changed.wait()
            return False
        finally:
            self._waiters -= 1
            if self._waiters == 0:
                self._wanted.clear()

    def _run(self) -> None:
        while not self._closed.is_set():
            # Idle (no waiter): do not touch the database at all.
            if not self._wanted.wait(WAIT_SLICE):
                continue
            try:
                seen = self._events.latest()
                if seen > self._published:
                    self._published = seen
                    self._call(self._publish, seen)
                # ``quit``: close() ends this wait at once, so a shutdown does not wait out the slice.
                self._events.wait(seen, WAIT_SLICE, quit=self._closed)
            except Exception:
                # The database may be briefly unreachable; waiters time out meanwhile.
                log.exception("waiting for events failed; retrying in a second")
                self._closed.wait(1.0)

    def _call(self, fn: Callable[..., object], *args: int) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to wake
            loop.call_soon_threadsafe(fn, *args)

    def _publish(self, seq: int = 0) -> None:
        self.latest = max(self.latest, seq)
        old, self._changed = self._changed, asyncio.Event()
        if old is not None:
            old.set()

    def close(self) -> None:
        """Wake every waiter and stop the thread; safe from any thread, more than once."""
        self._closed.set()
        self._wanted.set()
        # The thread may be in EventLog.wait: it checks ``quit`` under this condition's lock.
        committed = self._events.db.committed
        with committed:
            committed.notify_all()
        self._call(self._publish, 0)

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the thread to end (after :meth:`close`)."""
        if self._thread is not None:
            self._thread.join(timeout)
