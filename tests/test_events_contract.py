"""The event log's contract, on SQLite and on PostgreSQL alike (``db_url``).

Every backend of :class:`~datamill.events.EventLog` must: append inside the caller's transaction
and hand out a ``seq``; read from a cursor, oldest first, filtered by kind (exact or prefix) and
run; give strictly increasing ``seq`` values in commit order, so a reader following with a cursor
while others write misses nothing and sees nothing twice; say what the newest ``seq`` is (0 when
empty); and ``wait`` until an event after a cursor exists, woken by an append made on another
connection or in another process, or return False when the timeout passes first.

A new backend (another database) is added by making these pass on it.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import text

from datamill import events
from datamill.db.database import Database
from datamill.events import EventKind, EventLog

#: Generous: a loaded machine may be slow. Nothing here asserts how long anything took.
TIMEOUT = 120.0


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A migrated, empty database of each kind in turn."""
    database = Database(db_url)
    database.migrate()
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def log(db: Database) -> Iterator[EventLog]:
    event_log = EventLog(db)
    try:
        yield event_log
    finally:
        event_log.close()


def _append(db: Database, kind: str, **fields: Any) -> int:
    with db.write() as conn:
        return events.append(conn, kind, **fields)


def test_latest_is_zero_when_empty_then_the_newest_seq(db: Database, log: EventLog) -> None:
    assert log.latest() == 0
    with db.read() as conn:
        assert events.latest_seq(conn) == 0
    assert log.read(0) == []
    seq = _append(db, EventKind.FOLDER_CREATED, data={"path": "a"})
    assert seq > 0
    assert log.latest() == seq
    with db.read() as conn:
        assert events.latest_seq(conn) == seq


def test_append_and_read_from_a_cursor(db: Database, log: EventLog) -> None:
    first = _append(db, EventKind.FOLDER_CREATED, actor_id=None, data={"path": "a", "n": [1, 2]})
    with db.write() as conn:
        last = events.append_many(
            conn,
            [
                {"kind": EventKind.RUN_QUEUED, "run_id": 7},
                {"kind": EventKind.TASK_QUEUED, "run_id": 7, "task_id": 70},
                {"kind": EventKind.TASK_QUEUED, "run_id": 8, "task_id": 80, "data": {"x": "y"}},
            ],
        )
    every = log.read(0)
    assert [e.kind for e in every] == ["folder.created", "run.queued", "task.queued", "task.queued"]
    assert every[0].seq == first and every[-1].seq == last
    assert every[0].data == {"path": "a", "n": [1, 2]} and every[3].data == {"x": "y"}
    assert (every[2].run_id, every[2].task_id) == (7, 70)
    assert all(e.ts > 0 for e in every)

    # From a cursor: only what came after it, oldest first, at most ``limit``.
    assert [e.seq for e in log.read(first)] == [e.seq for e in every[1:]]
    assert [e.seq for e in log.read(first, limit=2)] == [e.seq for e in every[1:3]]
    assert log.read(last) == []
    # Filters: exact kinds, prefixes ("task." and "task*"), a run.
    assert [e.kind for e in log.read(0, kinds=["run.queued"])] == ["run.queued"]
    assert [e.task_id for e in log.read(0, kinds=["task."])] == [70, 80]
    assert [e.task_id for e in log.read(0, kinds=["task*", "folder.created"])] == [None, 70, 80]
    assert [e.kind for e in log.read(0, run_id=7)] == ["run.queued", "task.queued"]
    # A prefix is a prefix, not a pattern: "_" and "%" match themselves only.
    assert log.read(0, kinds=["task_"]) == [] and log.read(0, kinds=["%."]) == []


def test_append_many_returns_the_last_seq_and_keeps_each_rows_fields_and_data(db: Database, log: EventLog) -> None:
    """A batch goes to the driver as tuples: every field, the data (nested, non-ASCII, an int key
    and an int beyond 64 bits, which orjson refuses) and the order come back as written."""
    rows: list[dict[str, Any]] = [
        {"kind": "task.finished", "run_id": 7, "task_id": i, "folder_id": 3, "ts": 1000.0 + i, "data": {"i": i}}
        for i in range(5)
    ]
    rows.append({"kind": "item.created", "item_id": 9, "data": {"name": "né.txt", "tags": ["a", {"b": None}]}})
    rows.append({"kind": "item.created", "actor_id": 2, "data": {1: "int key", "big": 2**70}})
    rows.append({"kind": "run.queued"})  # no data: stored as {}
    with db.write() as conn:
        last = events.append_many(conn, rows)
    got = log.read(0)
    assert [e.seq for e in got][-1] == last == log.latest()
    assert [e.kind for e in got] == [r["kind"] for r in rows]
    assert [(e.run_id, e.task_id, e.folder_id, e.ts) for e in got[:5]] == [(7, i, 3, 1000.0 + i) for i in range(5)]
    assert [e.data for e in got[:5]] == [{"i": i} for i in range(5)]
    assert got[5].item_id == 9 and got[5].data == {"name": "né.txt", "tags": ["a", {"b": None}]}
    assert got[6].actor_id == 2 and got[6].data == {"1": "int key", "big": 2**70}
    assert got[7].data == {} and got[7].ts > 0 and got[7].run_id is None
    with db.write() as conn:
        assert events.append_many(conn, []) == 0
        one = events.append_many(conn, [{"kind": "run.started", "run_id": 1}])
    assert one == last + 1


def test_an_event_rolled_back_with_its_transaction_is_never_seen(db: Database, log: EventLog) -> None:
    before = _append(db, EventKind.FOLDER_CREATED)
    with pytest.raises(RuntimeError, match="change failed"), db.write() as conn:
        events.append(conn, EventKind.FOLDER_DELETED)
        raise RuntimeError("change failed")
    assert log.latest() == before
    after = _append(db, EventKind.FOLDER_MOVED)
    assert [e.kind for e in log.read(0)] == ["folder.created", "folder.moved"]
    assert after > before


def test_seq_strictly_increases_and_a_following_reader_misses_nothing(db_url: str, db: Database, log: EventLog) -> None:
    """Writers on their own connections append while a reader follows with a cursor."""
    writers, each = 4, 25
    total = writers * each
    seen: list[int] = []
    errors: list[BaseException] = []

    def write(n: int) -> None:
        own = Database(db_url)  # a connection pool of its own, as another process would have
        try:
            for i in range(each):
                with own.write() as conn:
                    events.append(conn, EventKind.ITEM_CREATED, data={"writer": n, "i": i})
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)
        finally:
            own.dispose()

    def follow() -> None:
        cursor = 0
        try:
            while len(seen) < total and not errors:
                page = log.read(cursor, limit=7)
                if not page:
                    log.wait(cursor, timeout=1.0)
                    continue
                seen.extend(e.seq for e in page)
                cursor = page[-1].seq
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    reader = threading.Thread(target=follow)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    reader.join(TIMEOUT)
    assert not errors, errors
    assert not reader.is_alive()
    assert len(seen) == total and all(a < b for a, b in itertools.pairwise(seen))
    assert seen == [e.seq for e in log.read(0, limit=total + 1)]
    per_writer = {n: [e.data["i"] for e in log.read(0, limit=total) if e.data["writer"] == n] for n in range(writers)}
    assert per_writer == {n: list(range(each)) for n in range(writers)}  # each writer's events in its order


def test_writers_that_lock_a_row_and_append_events_never_deadlock(db_url: str, db: Database, log: EventLog) -> None:
    """A writer holding a row the other wants, each appending events: one waits, neither fails.

    Forced order: A updates the row; B (another pool, as another process) then opens its write,
    appends an event and updates the row; A appends once B waits. Had B taken the log's lock
    before waiting for A's row, A would wait for B: PostgreSQL's "deadlock detected".
    """
    if db.is_sqlite:
        pytest.skip("SQLite has one writer at a time: B's write cannot begin while A's is open")
    with db.write() as conn:
        conn.exec_driver_sql("CREATE TABLE scratch_counter (id integer PRIMARY KEY, n integer NOT NULL)")
        conn.exec_driver_sql("INSERT INTO scratch_counter VALUES (1, 0)")
    other = Database(db_url)
    a_holds_row = threading.Event()
    errors: list[BaseException] = []
    bump = "UPDATE scratch_counter SET n = n + 1 WHERE id = 1"

    def b() -> None:
        try:
            a_holds_row.wait(TIMEOUT)
            with other.write() as conn:
                events.append(conn, EventKind.ITEM_UPDATED, data={"by": "b"})
                conn.exec_driver_sql(bump)
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    waiter = threading.Thread(target=b)
    waiter.start()
    try:
        with db.write() as conn:
            conn.exec_driver_sql(bump)
            me = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            a_holds_row.set()
            deadline = time.monotonic() + TIMEOUT  # against a hang only: B waits within milliseconds
            while not _someone_waits_on_a_lock(db, me):
                assert time.monotonic() < deadline, "B never waited for A"
                time.sleep(0.01)
            events.append(conn, EventKind.ITEM_UPDATED, data={"by": "a"})
    finally:
        waiter.join(TIMEOUT)
        other.dispose()
    assert not errors, errors
    with db.read() as conn:
        assert conn.exec_driver_sql("SELECT n FROM scratch_counter").scalar_one() == 2
    assert [e.data["by"] for e in log.read(0)] == ["a", "b"]  # B's event after A's: A committed first


def test_an_interrupt_inside_a_write_statement_reaches_the_caller_as_itself(db: Database) -> None:
    """Ctrl-C while a write's statement runs: the caller sees KeyboardInterrupt, and the next write works.

    SQLAlchemy invalidates a connection an interrupt left mid-statement; the write's clean-up must
    not touch it again (it raised "Can't reconnect until invalid transaction is rolled back" over
    the interrupt, so ``datamill put`` printed a traceback on Ctrl-C).
    """
    from sqlalchemy import event

    def interrupt(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "interrupt_me" in statement:
            raise KeyboardInterrupt

    event.listen(db.write_engine, "before_cursor_execute", interrupt)
    try:
        with pytest.raises(KeyboardInterrupt), db.write() as conn:
            conn.exec_driver_sql("SELECT 1 AS interrupt_me")
    finally:
        event.remove(db.write_engine, "before_cursor_execute", interrupt)
    seq = _append(db, EventKind.USER_CREATED)  # the pool hands out a working connection
    with db.read() as conn:
        assert events.latest_seq(conn) == seq
    if not db.is_sqlite:  # the next write took the log's lock itself, not trusting a stale flag
        with db.write() as conn:
            assert conn.info.get("datamill.log_locked") is True
            assert (
                conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                ).scalar_one()
                == 1
            )


def test_a_write_postgresql_stops_for_a_conflict_says_so_and_to_try_again(db: Database) -> None:
    """Not "check that the database is reachable": the database is fine, the transaction lost a conflict."""
    from datamill.errors import DatamillError

    if db.is_sqlite:
        pytest.skip("SQLite waits up to its 60 s busy timeout for the write lock; no conflict to lose")
    with db.write() as conn:
        conn.exec_driver_sql("CREATE TABLE scratch_row (id integer PRIMARY KEY, n integer NOT NULL)")
        conn.exec_driver_sql("INSERT INTO scratch_row VALUES (1, 0)")
    with db.engine.connect() as holder:  # holds the row, not the log's lock
        holder.exec_driver_sql("UPDATE scratch_row SET n = 1 WHERE id = 1")
        with pytest.raises(DatamillError) as caught, db.write() as conn:
            conn.exec_driver_sql("SET LOCAL lock_timeout = '50ms'")
            conn.exec_driver_sql("UPDATE scratch_row SET n = 2 WHERE id = 1")
        holder.rollback()
    assert "nothing of it was written. Try again." in str(caught.value)
    assert "reachable" not in str(caught.value)
    with db.read() as conn:
        assert conn.exec_driver_sql("SELECT n FROM scratch_row").scalar_one() == 0


def _someone_waits_on_a_lock(db: Database, me: int) -> bool:
    with db.read() as conn:
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> %(me)s"
        )
        return bool(conn.exec_driver_sql(query, {"me": me}).scalar_one())


def test_wait_returns_at_once_when_an_event_is_there_and_false_on_timeout(db: Database, log: EventLog) -> None:
    seq = _append(db, EventKind.USER_CREATED)
    assert log.wait(seq - 1, timeout=TIMEOUT) is True
    assert log.wait(seq, timeout=0.2) is False


def test_a_stopped_wait_ends_its_thread_at_once_whatever_its_timeout(db: Database, log: EventLog) -> None:
    """A service's long idle wait must not hold a server's shutdown until its timeout passes."""
    import asyncio

    cursor = log.latest()
    waits: list[threading.Thread] = []

    async def go() -> None:
        stop = asyncio.Event()
        waiting = asyncio.create_task(log.wait_or_stop(cursor, 3600.0, stop))
        while not any(t.name.startswith("asyncio") and t.is_alive() for t in threading.enumerate()):
            await asyncio.sleep(0.01)  # the wait's thread has started
        waits.extend(t for t in threading.enumerate() if t.name.startswith("asyncio"))
        stop.set()
        await asyncio.wait_for(waiting, TIMEOUT)  # returns, though the wait was for an hour

    asyncio.run(go())  # asyncio.run waits for its executor's threads: the wait's among them
    assert waits and not any(t.is_alive() for t in waits)
    assert log.latest() == cursor  # nothing was appended: the wait ended because it was stopped


def test_wait_wakes_on_an_append_on_another_connection(db_url: str, db: Database, log: EventLog) -> None:
    cursor = log.latest()
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(log.wait(cursor, timeout=TIMEOUT)))
    waiter.start()
    other = Database(db_url)
    try:
        with other.write() as conn:
            seq = events.append(conn, EventKind.GROUP_CREATED)
    finally:
        other.dispose()
    waiter.join(TIMEOUT)
    assert result == [True]
    assert [e.seq for e in log.read(cursor)] == [seq]


_APPENDER = textwrap.dedent(
    """
    import sys
    from datamill import events
    from datamill.db.database import Database

    sys.stdin.readline()  # appended only once the parent waits
    db = Database(sys.argv[1])
    with db.write() as conn:
        print(events.append(conn, "dataflow.created"), flush=True)
    db.dispose()
    """
)


@pytest.mark.slow
def test_wait_wakes_on_an_append_in_another_process(db_url: str, db: Database, log: EventLog) -> None:
    cursor = log.latest()
    child = subprocess.Popen(
        [sys.executable, "-c", _APPENDER, db_url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        result: list[bool] = []
        waiter = threading.Thread(target=lambda: result.append(log.wait(cursor, timeout=TIMEOUT)))
        waiter.start()
        child.stdin.write("go\n")
        child.stdin.flush()
        waiter.join(TIMEOUT)
        seq = int(child.stdout.readline())
        assert child.wait(TIMEOUT) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert result == [True]
    assert [(e.seq, e.kind) for e in log.read(cursor)] == [(seq, "dataflow.created")]


def test_the_head_of_this_process_own_commits_is_known_and_a_rolled_back_savepoint_is_read(
    db: Database, log: EventLog
) -> None:
    """This process's write transactions tell the log their newest seq: the head after them is known
    without reading it. Events appended in a savepoint that was rolled back are gone (SQLite gives
    their seq again): that transaction's commit counts as unknown, so the head is read, never taken
    from the lost event. (A watcher may count more commits as unknown, never fewer.)"""
    assert log.latest() == 0
    first = _append(db, EventKind.ITEM_CREATED, item_id=1)
    second = _append(db, EventKind.ITEM_CREATED, item_id=2)
    assert db.known_seq == second > first
    assert log.latest() == second

    with db.write() as conn:
        kept = events.append(conn, EventKind.ITEM_CREATED, item_id=3)
        with pytest.raises(RuntimeError), conn.begin_nested():
            events.append(conn, EventKind.ITEM_CREATED, item_id=4)
            raise RuntimeError("the savepoint is rolled back")
    assert db.unknown_at == db.commits  # this commit's newest seq is not known
    assert log.latest() == kept  # read: not the rolled-back event's seq
    after = _append(db, EventKind.ITEM_CREATED, item_id=5)
    assert db.known_seq == after
    assert [e.item_id for e in log.read(after=second)] == [3, 5]
    assert log.latest() == after


def test_own_events_tell_what_this_process_committed_and_nothing_else(db_url: str, db: Database) -> None:
    """``Database.own_events``: the kinds and folders of the events between two seqs when this
    process's own commits added every one of them; None (read the log) as soon as one is not known
    that way: another process's commit in between, a savepoint rolled back, events added without
    ``append_rows``."""
    a = _append(db, EventKind.ITEM_CREATED, folder_id=1, item_id=1)
    with db.write() as conn:
        events.append_many(
            conn,
            [{"kind": EventKind.RUN_QUEUED, "run_id": 7}, {"kind": EventKind.TASK_QUEUED, "run_id": 7, "folder_id": 2}],
        )
        b = events.append(conn, EventKind.ITEM_UPDATED, folder_id=3, item_id=2)  # a second call, same transaction
    assert db.own_events(0, a) == {(EventKind.ITEM_CREATED, 1)}
    expected = {(EventKind.RUN_QUEUED, None), (EventKind.TASK_QUEUED, 2), (EventKind.ITEM_UPDATED, 3)}
    assert db.own_events(a, b) == expected
    assert db.own_events(b, b) == set()
    assert db.own_events(0, b + 1) is None  # beyond what this process committed

    # Another process (a second Database on the same database: none of its commits are this one's).
    other = Database(db_url)
    try:
        with other.write() as conn:
            foreign = events.append(conn, EventKind.ITEM_CREATED, folder_id=9, item_id=9)
    finally:
        other.dispose()
    c = _append(db, EventKind.TASK_FINISHED, run_id=7)
    assert db.own_events(b, c) is None  # the foreign event lies in between
    assert db.own_events(foreign, c) == {(EventKind.TASK_FINISHED, None)}

    with db.write() as conn:
        events.append(conn, EventKind.ITEM_CREATED, folder_id=1, item_id=3)
        with pytest.raises(RuntimeError), conn.begin_nested():
            events.append(conn, EventKind.ITEM_CREATED, folder_id=1, item_id=4)
            raise RuntimeError("the savepoint is rolled back")
    d = _append(db, EventKind.TASK_FINISHED, run_id=8)
    assert db.own_events(c, d) is None  # the rolled-back savepoint's transaction is not vouched for
    with db.write() as conn:
        events.append(conn, EventKind.ITEM_CREATED, folder_id=1, item_id=5)
        events.wrote(conn, events.UNKNOWN_SEQ)  # as a copy of events made in SQL does
    e = _append(db, EventKind.TASK_FINISHED, run_id=9)
    with db.read() as conn:
        head = events.latest_seq(conn)
    assert head == e
    assert db.own_events(d, e) is None
    assert db.own_events(e - 1, e) == {(EventKind.TASK_FINISHED, None)}


def test_a_waiter_for_some_families_sleeps_through_others_commits_without_reading(postgres_db_url: str) -> None:
    """On PostgreSQL a notification says the newest seq and the families of the events committed:
    another process's commits of task events move the head with no read of the log, and a waiter for
    run events (a scheduler looking for runs) is not woken by them; a run event wakes it."""
    db, other = Database(postgres_db_url), Database(postgres_db_url)
    db.migrate()
    log = EventLog(db)
    statements: list[str] = []
    sa_event.listen(db.engine, "before_cursor_execute", lambda _c, _cur, sql, *_a: statements.append(sql))
    try:
        start = log.latest()  # the watcher starts; what it missed before listening is read once
        deadline = time.monotonic() + TIMEOUT
        while not _listening(other):  # then, a notification comes after that read
            assert time.monotonic() < deadline, "the watcher never listened"
            time.sleep(0.01)
        _append(other, EventKind.GROUP_CREATED)
        assert log.wait(start, TIMEOUT)
        assert log.latest() > start
        runs_seen = log.latest(("run",))
        statements.clear()
        tasks = [_append(other, EventKind.TASK_PROGRESS, run_id=1, task_id=i) for i in range(20)]
        assert log.wait(tasks[-1] - 1, TIMEOUT)  # every notification noticed (they come in commit order)
        assert log.latest() == tasks[-1]
        assert log.latest(("run",)) == runs_seen
        assert log.latest(("task",)) == tasks[-1]
        assert not log.wait(runs_seen, 0.0, families=("run",))
        assert statements == []  # the head came with the notifications
        queued = _append(other, EventKind.RUN_QUEUED, run_id=2)
        assert log.wait(runs_seen, TIMEOUT, families=("run",))
        assert log.latest(("run",)) == queued == log.latest()
        assert [e.kind for e in log.read(tasks[0] - 1)] == ["task.progress"] * 20 + ["run.queued"]
    finally:
        log.close()
        other.dispose()
        db.dispose()


def _listening(db: Database) -> bool:
    """Whether a session listens on the events channel of this database (the watcher of an EventLog)."""
    q = "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND query = :q"
    with db.read() as conn:
        return conn.execute(text(q), {"q": f"LISTEN {events.NOTIFY_CHANNEL}"}).first() is not None


def test_a_notification_behind_this_process_head_still_tells_its_families(db: Database) -> None:
    """This process's commit may tell a head (its own seq) before the notification of another
    process's earlier commit arrives: that one's families still count, so a waiter for them wakes."""
    start = db.family_head(("run",))
    db.notify_commit(known=True, seq=start + 10, facts=(start + 9, {("task.finished", None)}))
    assert db.family_head(("run",)) == start
    assert db.notice(start + 8, {"run"})  # news for run waiters, though behind the head
    assert db.family_head(("run",)) == start + 8
    assert not db.notice(start + 10, {"task"})  # this process's own commit, heard again: nothing new
    assert db.known_seq == start + 10
