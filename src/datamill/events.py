"""The event log: append-only rows with a strictly increasing sequence number.

Every change to the store, the engine and dataflows appends an event in the same transaction as
the change, so state anywhere can be rebuilt by folding over the log. Readers keep a cursor (the
last ``seq`` they saw) and ask for what came after it.

On PostgreSQL, sequence values are handed out before commit, so two concurrent writers could
commit seq 11 before seq 10 and a reader at cursor 11 would never see 10. Appending therefore
holds a transaction-scoped advisory lock: event-writing transactions commit in seq order.
``Database.write`` takes it as its first statement; a transaction opened otherwise takes it here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import select as io_select
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Iterable
from enum import StrEnum
from itertools import chain
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, select, text

from datamill.db.database import EVENT_FACTS, LAST_SEQ, LOG_LOCK_KEY, LOG_LOCKED, UNKNOWN_SEQ, Database, family
from datamill.db.models import Event, json_text
from datamill.records import EventRecord

NOTIFY_CHANNEL = "datamill_events"
#: Where inotify cannot be had, how often ``PRAGMA data_version`` is read to notice another
#: process's commits to an SQLite database (one thread per log, not one read per waiter).
SQLITE_POLL_SECONDS = 0.025
#: A waiter reads the log itself after this long without a notification: it only bounds how late a
#: notification the watcher missed (a PostgreSQL reconnect) is made up for; nothing waits for it.
SAFETY_POLL_SECONDS = 5.0


class EventKind(StrEnum):
    """Every kind of event datamill appends, stored and sent as its value (``"item.created"``).

    The kind's prefix names what changed; readers filter on prefixes (``?kinds=item.,run.``).
    ``docs/glossary.md`` lists them all (a test checks that it does).
    """

    #: a folder was made (``folder_id``; ``data.path``)
    FOLDER_CREATED = "folder.created"
    #: a folder was renamed or moved (``data.from``, ``data.to``)
    FOLDER_MOVED = "folder.moved"
    #: a folder and everything in it was deleted
    FOLDER_DELETED = "folder.deleted"
    #: a group's level on a folder was set or removed (``data.group``, ``data.level``)
    FOLDER_SHARED = "folder.shared"
    #: a user's level on a folder, or its public read access, was set or removed
    ACCESS_CHANGED = "access.changed"
    #: an item got its first version (``item_id``; ``data.name``, ``data.version``, ``data.digest``)
    ITEM_CREATED = "item.created"
    #: an item got a new version
    ITEM_UPDATED = "item.updated"
    #: an item was deleted (its versions' blobs go once nothing else refers to them)
    ITEM_DELETED = "item.deleted"
    #: an item's or folder's metadata was changed
    METADATA_CHANGED = "metadata.changed"
    #: a user was created (``data.user``, ``data.is_admin``)
    USER_CREATED = "user.created"
    #: an API token was made for a user (never its secret)
    TOKEN_CREATED = "token.created"
    #: an API token was revoked (``data.token_id``)
    TOKEN_REVOKED = "token.revoked"
    #: a group was made (``data.group``, ``data.group_id``)
    GROUP_CREATED = "group.created"
    #: a group was deleted, its grants with it
    GROUP_DELETED = "group.deleted"
    #: a user joined a group (``data.user``, ``data.admin``)
    GROUP_MEMBER_ADDED = "group.member_added"
    #: a member became or stopped being a group admin
    GROUP_MEMBER_CHANGED = "group.member_changed"
    #: a user left or was removed from a group
    GROUP_MEMBER_REMOVED = "group.member_removed"
    #: a site admin registered a pipeline under a name (``data.name``, ``data.ref``)
    PIPELINE_REGISTERED = "pipeline.registered"
    #: a registered pipeline name was removed
    PIPELINE_REMOVED = "pipeline.removed"
    #: a run was recorded with its tasks (``run_id``)
    RUN_QUEUED = "run.queued"
    #: a run's first task started
    RUN_STARTED = "run.started"
    #: someone asked to cancel a run
    RUN_CANCEL_REQUESTED = "run.cancel_requested"
    #: a run ended (``data.status``: succeeded, failed or cancelled)
    RUN_FINISHED = "run.finished"
    #: the scheduler driving an unfinished run stopped gracefully and gave it back (``data.owner``):
    #: another scheduler takes it over at once
    RUN_RELEASED = "run.released"
    #: a run's scheduler asks others to drive it too (``data.owner``): a task it holds has run long
    #: while others are queued
    RUN_HELP_WANTED = "run.help_wanted"
    #: a task was recorded, waiting for its inputs or a free executor slot (``task_id``)
    TASK_QUEUED = "task.queued"
    #: a scheduler claimed a task and an executor started it
    TASK_STARTED = "task.started"
    #: a task reported progress (``data.progress`` from 0 to 1, ``data.message``)
    TASK_PROGRESS = "task.progress"
    #: a task failed and will be tried again
    TASK_RETRYING = "task.retrying"
    #: a task whose scheduler stopped renewing its lease was given back to the queue
    TASK_RECLAIMED = "task.reclaimed"
    #: a task ended (``data.status``: succeeded, failed, cached, cancelled or skipped)
    TASK_FINISHED = "task.finished"
    #: a dataflow was saved for the first time (stopped)
    DATAFLOW_CREATED = "dataflow.created"
    #: a dataflow's configuration was edited (a new version)
    DATAFLOW_UPDATED = "dataflow.updated"
    #: a dataflow was started: its trigger acts
    DATAFLOW_STARTED = "dataflow.started"
    #: a dataflow was stopped
    DATAFLOW_STOPPED = "dataflow.stopped"
    #: the trigger service stopped a dataflow after an error (``data.reason``)
    DATAFLOW_FAILED = "dataflow.failed"
    #: a stopped dataflow was removed (its runs and results stay)
    DATAFLOW_DELETED = "dataflow.deleted"
    #: a stream dataflow's consumer reports its counters, lag and files in progress (rate-limited)
    STREAM_HEARTBEAT = "stream.heartbeat"
    #: a stream dataflow refused input (``data.reason``): a bad message, a file that failed its
    #: SHA-512, a file that never completed; nothing of it was committed
    STREAM_REJECTED = "stream.rejected"
    #: a running directory dataflow's live status (``data``: its ``status``), at most every few seconds
    DATAFLOW_HEARTBEAT = "dataflow.heartbeat"


def append(
    conn: Connection,
    kind: str,
    *,
    actor_id: int | None = None,
    folder_id: int | None = None,
    item_id: int | None = None,
    run_id: int | None = None,
    task_id: int | None = None,
    dataflow_id: int | None = None,
    data: dict[str, Any] | None = None,
    ts: float | None = None,
) -> int:
    """Append one event inside the caller's write transaction; returns its ``seq``."""
    return append_many(
        conn,
        [
            {
                "kind": kind,
                "actor_id": actor_id,
                "folder_id": folder_id,
                "item_id": item_id,
                "run_id": run_id,
                "task_id": task_id,
                "dataflow_id": dataflow_id,
                "data": data or {},
                "ts": ts,
            }
        ],
    )


#: Up to this many events are appended by one multi-row ``INSERT ... RETURNING`` (beyond, an
#: ``executemany`` and a read of the newest seq).
FEW_EVENTS = 20
#: The columns :func:`append_many` writes, in the order of its driver-level INSERT.
_COLUMNS = ("ts", "kind", "actor_id", "folder_id", "item_id", "run_id", "task_id", "dataflow_id", "data")
_INSERT_SQL: dict[str, str] = {}


def _insert_sql(dialect: str, paramstyle: str) -> str:
    """The driver-level INSERT of one event row for ``dialect`` (built once per dialect)."""
    sql = _INSERT_SQL.get(dialect)
    if sql is None:
        mark = "?" if paramstyle == "qmark" else "%s"
        data = "CAST(%s AS jsonb)" % mark if dialect == "postgresql" else mark  # noqa: UP031
        marks = ", ".join([mark] * (len(_COLUMNS) - 1) + [data])
        sql = _INSERT_SQL[dialect] = f"INSERT INTO events ({', '.join(_COLUMNS)}) VALUES ({marks})"
    return sql


@functools.cache
def _insert_rows_sql(sql: str, n: int, notify: bool) -> str:
    """``sql`` (:func:`_insert_sql`) for ``n`` rows in one statement, returning their seqs; with
    ``notify`` (PostgreSQL), returning the newest and the oldest seq, the newest notified on the channel given as the
    next to last parameter, followed by the last (:func:`_families_note`). Seqs follow the rows' order (a
    multi-row ``VALUES`` takes its defaults row by row)."""
    values = sql[sql.index(" VALUES ") + len(" VALUES ") :]
    many = sql + (", " + values) * (n - 1) + " RETURNING seq"
    if not notify:
        return many
    return f"WITH added AS ({many}) SELECT max(seq), min(seq), pg_notify(%s, max(seq)::text || %s) FROM added"


def _families_note(rows: list[EventRow]) -> str:
    """What a notification says after the newest seq: a space and the families of the events
    (``" run,task"``), so that a process waits only for the events it acts on (:meth:`EventLog.wait`)."""
    return " " + ",".join(sorted({family(r[1]) for r in rows}))


def _parse_note(payload: str) -> tuple[int, set[str] | None] | None:
    """A notification's newest seq and the families of its events (None: not said, as by a process of an
    older version); None when it is not a seq at all."""
    seq, _, families = payload.partition(" ")
    if not seq.isdigit():
        return None
    return int(seq), ({f for f in families.split(",") if f} if families else None)


#: An event's data as JSON text (what the ``data`` column's type would bind).
_json = json_text


def append_many(conn: Connection, rows: Iterable[dict[str, Any]]) -> int:
    """Append several events in one statement; returns the last ``seq``.

    The rows go to the database driver's ``executemany`` as tuples, their data encoded once:
    SQLAlchemy's per-row parameter processing cost more than the database itself for a batch of
    thousands of task events.
    """
    now = time.time()
    return append_rows(
        conn,
        [
            (
                r.get("ts") or now,
                r["kind"],
                r.get("actor_id"),
                r.get("folder_id"),
                r.get("item_id"),
                r.get("run_id"),
                r.get("task_id"),
                r.get("dataflow_id"),
                r.get("data") or {},
            )
            for r in rows
        ],
    )


#: One event for :func:`append_rows`: ``(ts, kind, actor_id, folder_id, item_id, run_id, task_id, dataflow_id, data)``.
EventRow = tuple[float, str, int | None, int | None, int | None, int | None, int | None, int | None, dict[str, Any]]


def append_rows(conn: Connection, rows: list[EventRow]) -> int:
    """:func:`append_many` for events given as tuples in :data:`EventRow` order (no dict per event);
    returns the last ``seq``."""
    if not rows:
        return 0
    batch = [(*r[:8], _json(r[8])) for r in rows]
    dialect = conn.dialect.name
    postgres = dialect == "postgresql"
    if postgres and not conn.info.get(LOG_LOCKED):
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOG_LOCK_KEY})
    sql = _insert_sql(dialect, conn.dialect.paramstyle)
    if len(batch) <= FEW_EVENTS:
        # A few events (a run and its task queued, a task's end): one statement, which on
        # PostgreSQL also sends the notification (one round trip, not three).
        values = tuple(chain.from_iterable(batch))
        if postgres:
            seq, first, _ = conn.exec_driver_sql(
                _insert_rows_sql(sql, len(batch), True), (*values, NOTIFY_CHANNEL, _families_note(rows))
            ).one()
        else:
            seqs = list(conn.exec_driver_sql(_insert_rows_sql(sql, len(batch), False), values).scalars())
            seq, first = max(seqs), min(seqs)
    else:
        if dialect == "sqlite":
            # One statement per 500 events: Python's sqlite3 gives the GIL up at every row of an
            # executemany, which a scheduler's database thread paid for with its event loop busy.
            head, marks = sql.split(" VALUES ")
            for i in range(0, len(batch), 500):
                some = batch[i : i + 500]
                conn.exec_driver_sql(
                    f"{head} VALUES {', '.join([marks] * len(some))}", tuple(chain.from_iterable(some))
                )
        else:
            conn.exec_driver_sql(sql, batch)
        # Every event-writing transaction holds the write lock (SQLite) or the advisory lock
        # (PostgreSQL) until it commits: the newest seq it sees is its own last.
        seq = conn.exec_driver_sql("SELECT max(seq) FROM events").scalar_one()
        if postgres:
            conn.execute(text("SELECT pg_notify(:c, :s)"), {"c": NOTIFY_CHANNEL, "s": f"{seq}{_families_note(rows)}"})
        # Holding the lock, nobody else took a seq meanwhile: the batch's seqs are the last len(batch).
        first = int(seq) - len(batch) + 1
    _added(conn, first, {(r[1], r[3]) for r in rows})
    wrote(conn, int(seq))
    return int(seq)


def appended(conn: Connection, count: int, facts: set[tuple[str, int | None]]) -> int:
    """Note ``count`` events that the caller's own ``INSERT INTO events ... SELECT`` just appended
    (SQLite only: it holds the one write lock, so its rows are the newest), of the ``(kind,
    folder_id)`` pairs in ``facts``, as :func:`append_rows` notes its own; returns the newest seq.

    A statement that builds its events from rows already in the database (a claim's
    ``task.started`` events from the tasks it claimed) costs no Python object or JSON encoding
    per event, which for thousands of tasks a second cost more than SQLite's own work.
    """
    if conn.dialect.name != "sqlite":
        raise ValueError("events.appended is for SQLite; PostgreSQL appends with append_rows")
    if count <= 0:
        return 0
    seq = int(conn.exec_driver_sql("SELECT max(seq) FROM events").scalar_one())
    _added(conn, seq - count + 1, facts)
    wrote(conn, seq)
    return seq


def _added(conn: Connection, first: int, facts: set[tuple[str, int | None]]) -> None:
    """Note in the transaction what it appended (``Database.own_events``): its first seq and the
    distinct ``(kind, folder_id)`` of its events; once unknown (None), it stays so."""
    info = conn.info
    if EVENT_FACTS not in info:
        info[EVENT_FACTS] = (first, facts)
    elif info[EVENT_FACTS] is not None:
        # Later events of the same transaction: they follow its first ones (it holds the log's lock).
        before = info[EVENT_FACTS]
        info[EVENT_FACTS] = (min(before[0], first), before[1] | facts)


def wrote(conn: Connection, seq: int) -> None:
    """Tell ``Database.write`` the newest event ``seq`` its transaction added (:data:`UNKNOWN_SEQ`:
    events were added whose seqs the caller does not know): this process's waiters then know the
    log's head once it commits, without reading it."""
    info = conn.info
    before = info.get(LAST_SEQ)
    info[LAST_SEQ] = UNKNOWN_SEQ if UNKNOWN_SEQ in (before, seq) else max(before or 0, seq)
    if seq == UNKNOWN_SEQ:
        info[EVENT_FACTS] = None
        if conn.dialect.name == "postgresql":
            # Other processes take a notification's seq for the log's head: this one, sent last, says
            # only that events came whose families are not told, so that they read the head themselves.
            conn.execute(text("SELECT pg_notify(:c, (SELECT max(seq) FROM events)::text)"), {"c": NOTIFY_CHANNEL})


#: A service that acts on new events looks again at most this often while they keep coming: the
#: first event after a quiet spell is taken at once, the next ones together (the log keeps them).
PACE_SECONDS = 0.25


async def pace(last: float, stop: asyncio.Event, every: float = PACE_SECONDS) -> float:
    """Wait until ``every`` seconds have passed since ``last`` (``time.monotonic()``) or ``stop`` is set;
    returns the time then, the ``last`` of the next call."""
    gap = last + every - time.monotonic()
    if gap > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), gap)
    return time.monotonic()


def latest_seq(conn: Connection) -> int:
    """The newest ``seq`` as seen by ``conn``'s transaction, 0 for an empty log."""
    return int(conn.execute(select(func.coalesce(func.max(Event.seq), 0))).scalar_one())


def _record(row: Any) -> EventRecord:
    return EventRecord(
        seq=row.seq,
        ts=row.ts,
        kind=row.kind,
        actor_id=row.actor_id,
        folder_id=row.folder_id,
        item_id=row.item_id,
        run_id=row.run_id,
        task_id=row.task_id,
        dataflow_id=row.dataflow_id,
        data=row.data or {},
    )


class EventLog:
    """Read the log from a cursor and wait for new rows.

    Waiting costs no statement per waiter: every commit of this process bumps
    :attr:`Database.commits` (and wakes ``Database.committed``); another process's commits are
    noticed by one watcher thread per log — PostgreSQL's LISTEN/NOTIFY, or on SQLite a file watch
    (inotify) on the write-ahead log confirmed by ``PRAGMA data_version`` — which bumps it too.
    The newest ``seq`` is then read once per commit, whoever asks (:meth:`latest`), not once per
    waiter; ``poll`` only bounds how late a notification the watcher missed is noticed.

    On PostgreSQL a notification says the newest seq and the families of the events committed
    (``"1234 run,task"``): the head is known without a read, and a waiter that names the families
    it acts on (``families=("run",)``) sleeps through the others' commits. Where the families of new
    events are not known (another process's commit on SQLite, a reconnect), they wake every waiter.
    """

    def __init__(self, db: Database, poll: float | None = None) -> None:
        self.db = db
        self.poll = poll if poll is not None else SAFETY_POLL_SECONDS
        self._listener: _PostgresListener | _SqliteWatcher | None = None
        self._listener_lock = threading.Lock()
        #: the newest seq read, and the commit count it was read at (every commit before it is in it)
        self._head = 0
        self._head_at = -1
        self._head_lock = threading.Lock()
        #: when the log was last read (monotonic): a waiter reads it itself once ``poll`` has passed
        self._read_at = time.monotonic()

    def latest(self, families: tuple[str, ...] | None = None) -> int:
        """The newest ``seq``, 0 for an empty log (read at most once per commit, whoever asks).

        With ``families`` (of event kinds, ``("run", "task")``): the newest seq that may be an event
        of one of them (see :attr:`Database.family_seq`); it grows only when one is committed, or when
        the families of new events are not known. A service's cursor for :meth:`wait`.
        """
        self._ensure_listener()
        with self.db.committed:
            commits = self.db.commits
        head = self._head_since(commits)
        return head if families is None else self.db.family_head(families)

    def _head_since(self, commits: int, force: bool = False) -> int:
        with self._head_lock:
            if not force and self._head_at >= commits:
                return self._head
            with self.db.committed:
                seen = self.db.commits  # read before the statement: it sees every commit counted so far
                unknown_at, known = self.db.unknown_at, self.db.known_seq
            if not force and unknown_at <= self._head_at:
                # Every commit since the last read was this process's own, with its newest seq known
                # (and every smaller one committed before it): no read.
                self._head = max(self._head, known)
                self._head_at = max(self._head_at, seen)
                return self._head
            with self.db.read() as conn:
                head = latest_seq(conn)
            self._read_at = time.monotonic()
            with self.db.committed:
                # Read because a commit's events are not known (another process's on SQLite, ...): up
                # to the head, any family may have news (a commit of this process told a later head
                # without saying what came before it).
                self.db.wild_seq = max(self.db.wild_seq, head)
            self._head = max(self._head, head)
            self._head_at = max(self._head_at, seen)
            return self._head

    def noticed(self, seq: int, families: set[str] | None = None) -> None:
        """A watcher saw events up to ``seq`` committed: wake the waiters unless this process read them.

        With ``families`` (a PostgreSQL notification names them), the head is known from it, with what
        it holds (:meth:`Database.notice`): no read, and waiters for other families sleep on.

        Compared under the head's lock: a read of the head in flight (:meth:`_head_since`) either
        saw this seq or counts this wake-up's commit, so it is never read a second time for nothing
        (this process's own commits change ``data_version`` too and reach the watcher late).
        """
        if families is not None:
            self.db.notice(seq, families)
            return
        with self._head_lock:
            with self.db.committed:
                known = self.db.known_seq  # this process's own commits are not news
            if seq > max(self._head, known):
                self.db.notify_commit()

    def read(
        self,
        after: int = 0,
        limit: int = 1000,
        kinds: Iterable[str] | None = None,
        run_id: int | None = None,
    ) -> list[EventRecord]:
        """Events with ``seq > after``, oldest first, at most ``limit``.

        ``kinds`` filters by exact kind or by prefix when an entry ends with ``.`` or ``*``
        (``"item."`` matches ``item.created``).
        """
        q = select(Event).where(Event.seq > after).order_by(Event.seq).limit(limit)
        if run_id is not None:
            q = q.where(Event.run_id == run_id)
        if kinds:
            exact = [k for k in kinds if not k.endswith((".", "*"))]
            prefixes = [k.rstrip("*") for k in kinds if k.endswith((".", "*"))]
            cond: list[Any] = [Event.kind.in_(exact)] if exact else []
            cond += [Event.kind.startswith(p, autoescape=True) for p in prefixes]
            from sqlalchemy import or_

            q = q.where(or_(*cond))
        with self.db.read() as conn:
            return [_record(r) for r in conn.execute(q)]

    def wait(
        self,
        after: int,
        timeout: float,
        quit: threading.Event | None = None,
        families: tuple[str, ...] | None = None,
    ) -> bool:
        """Block until an event with ``seq > after`` exists or ``timeout`` passes; True if one does.

        ``quit`` (set, then ``Database.committed`` notified) ends the wait early, with False.
        ``families``: only an event of these families counts (``after`` is then from
        ``latest(families)``); others' commits wake this thread but end no wait.
        """
        deadline = time.monotonic() + timeout
        self._ensure_listener()
        force = False
        while True:
            with self.db.committed:
                commits = self.db.commits
            if families is None:
                if self._head > after or self._head_since(commits, force) > after:
                    return True
            elif self.db.family_head(families) > after:
                return True
            else:
                self._head_since(commits, force)  # commits whose events are not known: read the head
                if self.db.family_head(families) > after:
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (quit is not None and quit.is_set()):
                return False
            with self.db.committed:
                # ``quit`` is checked under the lock its setter notifies with: no lost wake-up.
                if self.db.commits == commits and not (quit is not None and quit.is_set()):
                    # Nothing committed since the check: sleep until something is (no lost wake-up).
                    woke = self.db.committed.wait(min(self.poll, remaining))
                    # Once ``poll`` passed with no read of the log (whoever waited), it is read here: a
                    # notification the watcher missed shows. A caller's own short timeout reads nothing
                    # (the services wait in turns of a second or less: an idle server would read per turn).
                    force = not woke and time.monotonic() - self._read_at >= self.poll

    async def wait_or_stop(
        self, after: int, timeout: float, stop: asyncio.Event, families: tuple[str, ...] | None = None
    ) -> None:
        """Return when an event after ``after`` exists, ``timeout`` passes, or ``stop`` is set.

        The loop of every background service (scheduler, triggers, notifier) sleeps here, for the
        ``families`` of events it acts on (see :meth:`wait`).
        """
        if (self._head if families is None else self.db.family_head(families)) > after:
            return
        quit = threading.Event()
        waiter = asyncio.create_task(asyncio.to_thread(self.wait, after, timeout, quit, families))
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not waiter.done():
                # Stopped (or cancelled): end the thread's wait now, not when its timeout passes
                # (a service waits up to half a minute; a server's shutdown waits for its threads).
                quit.set()
                with self.db.committed:
                    self.db.committed.notify_all()
            with contextlib.suppress(BaseException):
                await waiter

    @property
    def watcher(self) -> str:
        """How other processes' commits are noticed: ``notify``, ``inotify``, ``data_version`` or ``none``."""
        self._ensure_listener()
        return self._listener.how if self._listener is not None else "none"

    def _ensure_listener(self) -> None:
        if self._listener is not None and self._listener.is_alive():
            return
        with self._listener_lock:
            if self._listener is None or not self._listener.is_alive():
                listener: _PostgresListener | _SqliteWatcher | None
                if not self.db.is_sqlite:
                    listener = _PostgresListener(self.db, self)
                else:
                    path = _sqlite_path(self.db)
                    listener = _SqliteWatcher(self, path) if path is not None else None
                if listener is not None:
                    listener.start()
                self._listener = listener

    def close(self) -> None:
        """Stop the watcher thread, if one runs."""
        with self._listener_lock:
            if self._listener is not None:
                self._listener.stop()
                self._listener = None


def _sqlite_path(db: Database) -> Path | None:
    """The file of an SQLite database (None: in memory, only this process sees it)."""
    name = db.engine.url.database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name).resolve()


class _PostgresListener(threading.Thread):
    """LISTENs on the events channel and wakes waiters of this process on each NOTIFY."""

    how = "notify"

    def __init__(self, db: Database, log: EventLog | None = None) -> None:
        super().__init__(name="datamill-pg-listen", daemon=True)
        self.db = db
        self.log = log
        self._stop_flag = threading.Event()
        #: the psycopg connection LISTENing now (None between connections), for a look at its options
        self.connection: Any = None

    def _noticed(self, payload: str) -> None:
        """A notification (its payload: the newest seq committed, and the families of its events):
        news unless this process wrote it."""
        note = _parse_note(payload)
        if self.log is not None and note is not None:
            self.log.noticed(*note)
        else:
            self.db.notify_commit()

    def stop(self) -> None:
        self._stop_flag.set()

    def run(self) -> None:
        import psycopg
        from psycopg.conninfo import make_conninfo

        url = self.db.url.replace("postgresql+psycopg://", "postgresql://", 1)
        # With the database's keepalives: a LISTEN on a connection cut silently would otherwise
        # wait forever, and this process's waiters with it.
        conninfo = make_conninfo(url, **self.db.connect_options)
        while not self._stop_flag.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.connection = conn
                    # Whatever was committed while not listening is looked at once.
                    self.db.notify_commit()
                    while not self._stop_flag.is_set():
                        for note in conn.notifies(timeout=0.5, stop_after=1):
                            self._noticed(note.payload)
            except psycopg.Error:
                # The server went away; waiters fall back to their safety poll until we reconnect.
                self._stop_flag.wait(1.0)
            finally:
                self.connection = None


class _SqliteWatcher(threading.Thread):
    """Notices other processes' commits to an SQLite database and wakes this process's waiters.

    On Linux it watches the database's folder with inotify: a commit writes the ``-wal`` file, and
    ``PRAGMA data_version`` (which changes when another connection committed) confirms it. The
    WAL is written before its index (shared memory, which inotify does not see) publishes the
    commit, so a write not yet visible is looked at again a few times, briefly. Elsewhere, or
    when inotify cannot be had, ``PRAGMA data_version`` is polled every :data:`SQLITE_POLL_SECONDS`
    (a read of a counter, not of the log). A commit that adds events bumps
    :attr:`Database.commits`; this process's own commits were counted already and wake no one twice.
    """

    def __init__(self, log: EventLog, path: Path) -> None:
        super().__init__(name="datamill-sqlite-watch", daemon=True)
        self.log = log
        self.path = path
        self._stop_r, self._stop_w = os.pipe()
        self._fds_lock = threading.Lock()
        self._fds_closed = False
        self._inotify = _Inotify.open(path.parent)
        self.how = "inotify" if self._inotify is not None else "data_version"
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._version = self._data_version()

    def stop(self) -> None:
        with self._fds_lock:
            if not self._fds_closed:  # never write into a descriptor number reused since
                with contextlib.suppress(OSError):
                    os.write(self._stop_w, b"x")

    def _data_version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def _changed(self) -> bool:
        version = self._data_version()
        if version == self._version:
            return False
        self._version = version
        return True

    def _look(self) -> None:
        """After a commit: wake the waiters if it added events this process has not seen.

        Read on the watcher's own plain connection (no SQLAlchemy, no transaction of ours): this
        process's own commits change ``data_version`` too, and cost only this one look.
        """
        row = self._conn.execute("SELECT max(seq) FROM events").fetchone()
        if row is not None and row[0] is not None:
            self.log.noticed(int(row[0]))

    def run(self) -> None:
        try:
            if self._inotify is None:
                while not self._wait_stop(SQLITE_POLL_SECONDS):
                    if self._changed():
                        self._look()
            else:
                names = {self.path.name + "-wal", self.path.name}
                while True:
                    ready, _, _ = io_select.select([self._inotify.fd, self._stop_r], [], [])
                    if self._stop_r in ready:
                        return
                    if not names & self._inotify.read_names():
                        continue
                    for pause in _RECHECK_SECONDS:
                        if self._changed():
                            self._look()
                            break
                        if self._wait_stop(pause):
                            return
        except Exception:  # the watcher must never take the process down; waiters still poll
            logging.getLogger("datamill.events").exception("the SQLite watcher stopped")
        finally:
            self._close()

    def _wait_stop(self, seconds: float) -> bool:
        ready, _, _ = io_select.select([self._stop_r], [], [], seconds)
        return bool(ready)

    def _close(self) -> None:
        self._conn.close()
        if self._inotify is not None:
            self._inotify.close()
        with self._fds_lock:
            self._fds_closed = True
            for fd in (self._stop_r, self._stop_w):
                with contextlib.suppress(OSError):
                    os.close(fd)


#: After a WAL write whose commit is not visible yet, look again after these pauses (seconds).
_RECHECK_SECONDS = (0.0, 0.001, 0.004, 0.016, 0.064, 0.25)


class _Inotify:
    """A minimal inotify watch of one folder through libc (Linux): names of the files modified in it."""

    _MASK = 0x00000002 | 0x00000100 | 0x00000080  # IN_MODIFY | IN_CREATE | IN_MOVED_TO
    _HEADER = struct.Struct("iIII")

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, folder: Path) -> _Inotify | None:
        """A watch on ``folder``, or None where inotify cannot be had (not Linux, out of watches)."""
        if not sys.platform.startswith("linux"):
            return None
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
            if fd < 0:
                return None
            if libc.inotify_add_watch(fd, os.fsencode(folder), cls._MASK) < 0:
                os.close(fd)
                return None
        except (OSError, AttributeError):
            return None
        return cls(fd)

    def read_names(self) -> set[str]:
        """The names of the files events were queued for since the last read."""
        names: set[str] = set()
        while True:
            try:
                buf = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return names
            pos = 0
            while pos + self._HEADER.size <= len(buf):
                _wd, _mask, _cookie, size = self._HEADER.unpack_from(buf, pos)
                pos += self._HEADER.size
                names.add(buf[pos : pos + size].rstrip(b"\0").decode(errors="replace"))
                pos += size

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
