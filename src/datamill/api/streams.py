"""Long-lived responses (event streams, log follows, waits): no thread each, a token re-check, limits.

A request that stays open for long (``/events/stream``, ``/tasks/{id}/logs?follow=true``,
``/runs/{id}?wait=``, ``/events?wait=``) is a coroutine awaiting a shared notifier (the
:class:`~datamill.api.broadcast.EventBroadcaster` for events, :class:`LogTailer` for task logs);
it only takes a thread for the moment of a short database or file read, through
:meth:`StreamGuard.read`, whose own capacity limiter keeps such reads from ever occupying the
thread pool that every other request (the token check included) needs.

Each open response is a :class:`Follower` of the app's :class:`StreamGuard`. Every
``stream_recheck_ms`` the guard re-checks, in one read for all followers, each distinct token
(revoked, expired, its user gone) and each distinct resource a follower reads (its access to the
task or run, with the user's current rights, group membership included); a follower that fails is
closed with the reason, so nothing keeps streaming past its token's end by more than that interval.

A *replay* (an event stream starting more than one page behind the head of the log) is admitted
only while the user has fewer than ``replays_per_user`` others catching up; the rest get 429 with
``Retry-After``. A replay reads the log a page at a time and gives its slot back once caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from datamill.engine import runs
from datamill.errors import DatamillError, TooManyRequests, Unavailable
from datamill.home import Home
from datamill.store import users
from datamill.store.access import Actor

log = logging.getLogger("datamill.api")

T = TypeVar("T")

#: At most this many stream reads run in threads at once, whatever the number of open streams.
STREAM_THREADS = 8
#: Seconds between two looks at the followed tasks' live log files and states.
LOG_POLL = 0.2
#: What a client refused a replay is told to wait (seconds).
REPLAY_RETRY_AFTER = 5


#: A check of a follower's right to what it reads: raises a :class:`DatamillError` when lost.
Check = Callable[[Actor], object]


class Follower:
    """One open long-lived response: whose token it runs on, what it reads, why it was closed."""

    def __init__(self, token: str, actor: Actor, check: Check | None, key: Hashable, replay: bool) -> None:
        self.token = token
        #: The caller as of the last re-check (a site admin demoted meanwhile is one no longer).
        self.actor = actor
        self.check = check
        self.key = key
        self.replay = replay
        #: The task whose log it follows, watched by the guard's tailer while it is open.
        self.log_task: int | None = None
        #: Why the follower was closed; None while it is open.
        self.reason: DatamillError | None = None
        self._scope: anyio.CancelScope | None = None

    @property
    def closed(self) -> bool:
        """True once the token or access check failed or the server is stopping."""
        return self.reason is not None

    def close(self, reason: DatamillError) -> None:
        """Close the follower: a wait in :meth:`pause` ends at once. Event-loop thread only."""
        if self.reason is None:
            self.reason = reason
        if self._scope is not None:
            self._scope.cancel()

    async def pause(self, wait: Callable[..., Awaitable[object]], *args: Any) -> bool:
        """Await ``wait(*args)`` unless the follower is closed meanwhile; False once it is closed."""
        if self.reason is not None:
            return False
        with anyio.CancelScope() as scope:
            self._scope = scope
            try:
                await wait(*args)
            finally:
                self._scope = None
        return self.reason is None


class StreamGuard:
    """The open long-lived responses of one app: their reads, token re-checks and replay slots."""

    def __init__(self, home: Home, recheck: float | None = None, replays_per_user: int | None = None) -> None:
        self.home = home
        #: Seconds between two re-checks of every follower's token and access.
        self.recheck = max(0.05, home.settings.stream_recheck_ms / 1000 if recheck is None else recheck)
        self.replays_per_user = home.settings.replays_per_user if replays_per_user is None else replays_per_user
        self.tailer = LogTailer(self, home)
        self._followers: set[Follower] = set()
        self._replays: dict[int | None, int] = {}
        self._limiter: anyio.CapacityLimiter | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()

    @property
    def open(self) -> int:
        """How many long-lived responses are open right now."""
        return len(self._followers)

    @property
    def stopping(self) -> bool:
        """True once :meth:`close` was called."""
        return self._stopping.is_set()

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a short blocking read in a thread, at most :data:`STREAM_THREADS` of them at once."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(STREAM_THREADS)
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)

    async def iterate(self, chunks: Iterator[T]) -> AsyncIterator[T]:
        """The items of a blocking iterator, each fetched by :meth:`read` (no thread held in between)."""
        end = object()
        try:
            while True:
                item = await self.read(next, chunks, end)
                if item is end:
                    return
                yield item
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                await self.read(close)

    def open_follower(
        self,
        token: str,
        actor: Actor,
        check: Check | None = None,
        key: Hashable = None,
        replay: bool = False,
        log_task: int | None = None,
    ) -> Follower:
        """Register an open response; :class:`TooManyRequests` when a replay is over the user's limit."""
        if self.stopping:
            raise Unavailable()
        if replay:
            used = self._replays.get(actor.id, 0)
            if used >= self.replays_per_user:
                raise TooManyRequests(
                    f"you already have {used} event streams replaying the log from far back (at most "
                    f"{self.replays_per_user} at once); wait until one has caught up, or start from a "
                    f"later seq (since=N)",
                    retry_after=REPLAY_RETRY_AFTER,
                )
            self._replays[actor.id] = used + 1
        follower = Follower(token, actor, check, key, replay)
        if log_task is not None:
            follower.log_task = log_task
            self.tailer.watch(log_task)
        self._followers.add(follower)
        self._ensure_task()
        return follower

    def caught_up(self, follower: Follower) -> None:
        """A replay reached the head of the log: its slot is free for another."""
        if follower.replay:
            follower.replay = False
            left = self._replays.get(follower.actor.id, 1) - 1
            if left > 0:
                self._replays[follower.actor.id] = left
            else:
                self._replays.pop(follower.actor.id, None)

    def release(self, follower: Follower) -> None:
        """The response ended (finished, closed or its client went away)."""
        self.caught_up(follower)
        if follower in self._followers and follower.log_task is not None:
            self.tailer.unwatch(follower.log_task)
        self._followers.discard(follower)

    @contextlib.contextmanager
    def follow(self, token: str, actor: Actor, check: Check | None = None, key: Hashable = None) -> Iterator[Follower]:
        """A follower for the length of the block (for waits answered with one response)."""
        follower = self.open_follower(token, actor, check, key)
        try:
            yield follower
        finally:
            self.release(follower)

    def close(self) -> None:
        """Close every follower (the server is stopping); safe from any thread."""
        self._stopping.set()
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nothing is left open
                loop.call_soon_threadsafe(self._close_all)

    def _close_all(self) -> None:
        for follower in list(self._followers):
            follower.close(Unavailable())
        self.tailer.wake_all()
        if self._task is not None:
            self._task.cancel()

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._recheck_loop(), name="datamill-stream-recheck")

    async def _recheck_loop(self) -> None:
        while self._followers:
            await anyio.sleep(self.recheck)
            followers = list(self._followers)
            if not followers:
                return
            entries = [(f.token, f.key, f.check) for f in followers]
            try:
                outcomes = await self.read(self._check_all, entries)
            except Exception:
                # The database may be briefly unreachable: keep the streams, check again later.
                log.exception("re-checking the tokens of open streams failed")
                continue
            for follower, outcome in zip(followers, outcomes, strict=True):
                if isinstance(outcome, DatamillError):
                    follower.close(outcome)
                else:
                    follower.actor = outcome

    def _check_all(self, entries: list[tuple[str, Hashable, Check | None]]) -> list[Actor | DatamillError]:
        """Each follower's current actor, or why it must close: one token read per token, one check per resource."""
        actors: dict[str, Actor | DatamillError] = {}
        with self.home.db.read() as conn:
            for token, _, _ in entries:
                if token not in actors:
                    try:
                        actors[token] = users.actor_for_token(conn, token)
                    except DatamillError as exc:
                        actors[token] = exc
        checked: dict[tuple[str, Hashable], DatamillError | None] = {}
        out: list[Actor | DatamillError] = []
        for token, key, check in entries:
            actor = actors[token]
            if isinstance(actor, DatamillError) or check is None:
                out.append(actor)
                continue
            if (token, key) not in checked:
                try:
                    check(actor)
                    checked[token, key] = None
                except DatamillError as exc:
                    checked[token, key] = exc
            out.append(checked[token, key] or actor)
        return out


#: The state of a task that no longer exists (its run was deleted): followers stop.
GONE = "gone"


class _LogState:
    """What the tailer last saw of one followed task."""

    def __init__(self) -> None:
        self.known = False
        self.size = -1
        self.status = ""
        self.digest: str | None = None
        self.changed = asyncio.Event()
        self.watchers = 0

    @property
    def ended(self) -> bool:
        return self.status == GONE or self.status in runs.FINISHED_TASK


class LogTailer:
    """Watches the live log files and states of every followed task, for all followers at once.

    Every :data:`LOG_POLL` seconds while anyone follows a log, one read (in a thread) looks at the
    size of each followed task's live log file and at the tasks' states; followers waiting for
    more than they have read, or for the end, are woken. Followers then read their new bytes
    themselves, so a thousand followers of one quiet task cost one look per poll.
    """

    def __init__(self, guard: StreamGuard, home: Home, poll: float = LOG_POLL) -> None:
        self.guard = guard
        self.home = home
        self.poll = poll
        self.log_dir = home.path / "logs"
        self._tasks: dict[int, _LogState] = {}
        self._task: asyncio.Task[None] | None = None

    def live_path(self, task_id: int) -> Path:
        """The live log file of a running task (the scheduler's ``log_path``)."""
        return self.log_dir / f"task-{task_id}.log"

    def state(self, task_id: int) -> tuple[str, str | None] | None:
        """``(status, log digest)`` of a followed task as last seen, None before the first look."""
        st = self._tasks.get(task_id)
        return (st.status, st.digest) if st is not None and st.known else None

    def watch(self, task_id: int) -> None:
        """Start watching a task for one more follower (until :meth:`unwatch`)."""
        st = self._tasks.get(task_id)
        if st is None:
            st = self._tasks[task_id] = _LogState()
        st.watchers += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="datamill-log-tailer")

    def unwatch(self, task_id: int) -> None:
        """One follower fewer; the task is forgotten with its last one."""
        st = self._tasks.get(task_id)
        if st is not None:
            st.watchers -= 1
            if st.watchers <= 0:
                del self._tasks[task_id]

    async def wait(self, task_id: int, offset: int) -> None:
        """Return once a watched task's live log holds more than ``offset`` bytes, or the task has ended."""
        st = self._tasks[task_id]
        while not (st.known and (st.size > offset or st.ended)) and not self.guard.stopping:
            await st.changed.wait()

    def wake_all(self) -> None:
        """Wake every waiter (the server is stopping)."""
        for st in self._tasks.values():
            st.changed.set()

    async def _run(self) -> None:
        while self._tasks and not self.guard.stopping:
            ids = list(self._tasks)
            try:
                seen = await self.guard.read(self._look, ids)
            except Exception:
                log.exception("looking at followed task logs failed; trying again")
                seen = {}
            for task_id, (size, status, digest) in seen.items():
                st = self._tasks.get(task_id)
                if st is None or (st.known and (st.size, st.status, st.digest) == (size, status, digest)):
                    continue
                st.known, st.size, st.status, st.digest = True, size, status, digest
                old, st.changed = st.changed, asyncio.Event()
                old.set()
            await anyio.sleep(self.poll)

    def _look(self, task_ids: list[int]) -> dict[int, tuple[int, str, str | None]]:
        with self.home.db.read() as conn:
            states = runs.task_log_states(conn, task_ids)
        out = {}
        for task_id in task_ids:
            status, digest = states.get(task_id, (GONE, None))
            try:
                size = os.stat(self.live_path(task_id)).st_size
            except OSError:  # not created yet (nothing logged), or removed once the task ended
                size = -1
            out[task_id] = (size, status, digest)
        return out


def read_bytes(path: Path, offset: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of ``path`` from ``offset``; empty when the file does not exist."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit)
    except FileNotFoundError:
        return b""
