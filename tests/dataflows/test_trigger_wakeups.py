"""The trigger path's cost and its wake-ups.

* A landed item is taken from the events of the pass, not from a scan: the statements a pass
  runs per landed item are counted (SQLAlchemy's ``before_cursor_execute``), and stay bounded
  whatever the source folder holds; a pass with nothing new runs none.
* Every landed item fires once, with a trigger that restarts (no memory) beside one that kept
  its memory of what landed.
* Another process's commit wakes a waiter of this one from the notification (SQLite: inotify +
  ``PRAGMA data_version``; PostgreSQL: LISTEN/NOTIFY), not from a poll: the waiter's safety poll
  is an hour in these tests.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from datamill.dataflows.triggers import Triggers
from datamill.events import EventLog
from datamill.home import Home
from tests.helpers import T0, check_fold, finished_per_task, open_home, wait_for

from .flow_world import FlowWorld

#: Statements one pass may run to record the run of one landed item: the pass's read (the events
#: since the last pass, the running dataflows) and the write that records the run with its task
#: and moves the cursor (the pipeline's owner, permissions, the item's current version, the run,
#: its task and events). Measured: 21. A folder scan would be one statement too: the equal counts
#: for a folder of 1 and of 41 items and the run's inputs (the one item) are what rule it out.
STATEMENTS_PER_ITEM = 30


@contextmanager
def statements(home: Home) -> Iterator[list[str]]:
    """The SQL statements run on ``home``'s database inside the block (all threads)."""
    seen: list[str] = []

    def hook(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement)

    engines = {id(e): e for e in (home.db.engine, home.db.write_engine)}.values()
    for e in engines:
        event.listen(e, "before_cursor_execute", hook)
    try:
        yield seen
    finally:
        for e in engines:
            event.remove(e, "before_cursor_execute", hook)


def without_head_reads(stmts: list[str]) -> list[str]:
    """``stmts`` without the reads of the log's head (``BEGIN`` and ``SELECT max(seq)``). The SQLite
    watcher may see this process's own commit (the WAL written) before the committing thread records
    its seq, take it for another's and have the head read once: timing, not what a pass costs."""
    out: list[str] = []
    for s in stmts:
        if "max(events.seq)" in s and out and out[-1] == "BEGIN":
            out.pop()
            continue
        out.append(s)
    return out


def test_a_landed_item_costs_bounded_statements_whatever_the_folder_holds(world: FlowWorld) -> None:
    w = world
    w.create()
    w.start()
    assert w.poll(T0) == []  # the start: nothing in the source yet
    costs: list[int] = []
    for i, many in enumerate((0, 40)):
        for k in range(many):  # the folder grows; the next item's pass must not read it all
            w.put(f"bulk{k:03d}.txt", "b")
        if many:
            (bulk,) = w.poll(T0 + 100 * i)
            assert len(w.run_inputs(bulk)) == many
        w.put(f"new{i}.txt", f"n{i}")
        with statements(w.home) as stmts:
            (run_id,) = w.poll(T0 + 100 * i + 50)  # past the batch window
        assert w.run_inputs(run_id) == [f"new{i}.txt"]
        costs.append(len(without_head_reads(stmts)))
        assert len(stmts) <= STATEMENTS_PER_ITEM, (len(stmts), stmts)
        # The source's and the destination's ids, asked by several checks: one read of the folders.
        assert sum("FROM folders" in s for s in stmts) == 1, stmts
    assert costs[0] == costs[1], costs  # 1 item in the folder or 41: the same statements

    # A pass with nothing new since the last (which saw the run it recorded): no statement.
    assert w.poll(T0 + 400) == []
    with statements(w.home) as stmts:
        assert w.poll(T0 + 500) == []
    assert without_head_reads(stmts) == []
    # An event of no concern to any trigger (an item landing in the destination), committed by this
    # process: it knows what it wrote (Database.own_events), so the pass reads nothing at all.
    w.put("elsewhere.txt", "x", folder="Out")
    with statements(w.home) as stmts:
        assert w.poll(T0 + 600) == []
    assert without_head_reads(stmts) == []
    # The same committed by another process (a second home on the database): one short read, the events
    # since (the newest seq too: the commit was noticed, as the log's watcher notices it, not known).

    def put_from_another_process(folder: str, name: str) -> None:
        other = Home(w.home.settings)
        try:
            other.store.put(other.admin, folder, name, b"y", "text/plain")
        finally:
            other.close()
        w.home.db.notify_commit()  # as the log's watcher does when it notices the commit

    put_from_another_process("Out", "other.txt")
    with statements(w.home) as stmts:
        assert w.poll(T0 + 700) == []
    assert [s.split()[0] for s in stmts if s != "BEGIN"] == ["SELECT", "SELECT"], stmts
    assert "DISTINCT events.kind" in without_head_reads(stmts)[-1], stmts
    # And an item landing in the source from another process fires a run.
    put_from_another_process("Raw", "from-another.txt")
    (run_id,) = w.poll(T0 + 800)
    assert w.run_inputs(run_id) == ["from-another.txt"]


def test_each_landed_item_fires_once_beside_a_restarted_trigger(world: FlowWorld) -> None:
    w = world
    w.create()
    w.start()
    assert w.poll(T0) == []
    w.put("a.txt", "a")
    (first,) = w.poll(T0 + 10)
    # Another process (or this one restarted) has no memory of what landed; this one has.
    other = Triggers(w.home, w.engine, clock=w.clock)
    w.put("b.txt", "b")
    w.clock.set(T0 + 20)
    (second,) = other.poll()
    assert w.run_inputs(second) == ["b.txt"]
    assert w.poll(T0 + 30) == []  # it saw b land, but the cursor it records with has moved
    w.put("c.txt", "c")
    fired = w.poll(T0 + 40) + other.poll()
    assert [w.run_inputs(r) for r in fired] == [["c.txt"]]
    assert w.poll(T0 + 50) == [] and other.poll() == []
    w.drive()
    assert w.run_inputs(first) == ["a.txt"]
    assert sorted(w.out()) == ["a.echo.bin", "b.echo.bin", "c.echo.bin"]
    assert set(finished_per_task(w.home).values()) == {1}
    check_fold(w.home)


def test_a_stopped_and_restarted_dataflow_takes_what_landed_meanwhile_once(world: FlowWorld) -> None:
    w = world
    w.create()
    w.start()
    assert w.poll(T0) == []
    w.put("a.txt", "a")
    (first,) = w.poll(T0 + 10)
    w.drive()  # a has its result: the start's backfill leaves it alone
    w.stop()
    assert w.poll(T0 + 20) == []
    w.put("b.txt", "b")  # while stopped
    assert w.poll(T0 + 30) == []
    w.start()
    (again,) = w.poll(T0 + 40)
    assert w.run_inputs(again) == ["b.txt"]
    assert w.poll(T0 + 50) == []
    assert w.run_inputs(first) == ["a.txt"]
    w.drive()
    assert set(finished_per_task(w.home).values()) == {1}


# ------------------------------------------------------------------ another process's commits

WRITER = """
import sys
from datamill.config import load_settings
from datamill.home import Home

home = Home(load_settings(environ={}, home=sys.argv[1], database_url=sys.argv[2], demo=False))
home.store.create_folder(home.admin, sys.argv[3])
home.close()
"""


def _woken_by_another_process(home: Home, tmp_path: Path, db_url: str) -> None:
    log = EventLog(home.db, poll=3600.0)  # no safety poll within the test: only a notification wakes it
    try:
        after = log.latest()
        woke: list[bool] = []
        waiter = threading.Thread(target=lambda: woke.append(log.wait(after, 120.0)))
        waiter.start()
        # Asleep on the condition: its check is behind it, only a notification can end the sleep.
        wait_for("the waiter to sleep", lambda: len(home.db.committed._waiters) > 0)
        commits = home.db.commits
        subprocess.run(
            [sys.executable, "-c", WRITER, str(tmp_path / "writer"), db_url, "FromElsewhere"],
            check=True,
            timeout=120,
        )
        waiter.join(130)
        assert woke == [True]
        assert home.db.commits > commits  # counted by the watcher: this process committed nothing
        assert log.latest() > after
    finally:
        log.close()


@pytest.mark.slow
def test_another_processs_commit_wakes_a_waiter_on_sqlite(tmp_path: Path) -> None:
    home = open_home(tmp_path / "home")
    try:
        log = EventLog(home.db)
        expected = "inotify" if sys.platform.startswith("linux") else "data_version"
        assert log.watcher == expected
        log.close()
        _woken_by_another_process(home, tmp_path, home.db.url)
    finally:
        home.close()


@pytest.mark.slow
@pytest.mark.postgres
def test_another_processs_commit_wakes_a_waiter_on_postgres(tmp_path: Path, postgres_db_url: str) -> None:
    home = open_home(tmp_path / "home", postgres_db_url)
    try:
        log = EventLog(home.db)
        assert log.watcher == "notify"
        log.close()
        _woken_by_another_process(home, tmp_path, postgres_db_url)
    finally:
        home.close()
