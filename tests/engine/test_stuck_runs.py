"""No run stays running for ever: every error in the scheduler ends its task and run, cancel always ends a run.

A run is ended with the reason recorded (the task failed with the error, the run failed), is not
brought back by a restart, and is not driven again and again by an idle scheduler.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import select

from datamill.db.models import Task
from datamill.engine import runs
from datamill.engine.scheduler import Scheduler
from tests.helpers import open_home, until

from .engine_world import World
from .pipelines import executions, ref

#: how long an idle scheduler is watched, in its poll intervals
IDLE_POLLS = 20
POLL = 0.05


def _serve(world: World, ended: Callable[[], bool], clock: Callable[[], float] = time.time) -> Scheduler:
    """Serve with a fresh scheduler until ``ended()``, then for :data:`IDLE_POLLS` polls more.

    Returns the scheduler, whose ``stats`` say how often it drove runs after ``ended()``
    (``idle_drives``, ``idle_passes``).
    """
    scheduler = Scheduler(world.home, "inline", clock=clock)

    async def go() -> None:
        stop = asyncio.Event()
        async with scheduler:
            serving = asyncio.create_task(scheduler.serve(stop, poll=POLL))
            try:
                await until("the run to end", ended)
                before = dict(scheduler.stats)
                # A window of polls, not a timing: an idle scheduler drives nothing in it.
                await asyncio.sleep(IDLE_POLLS * POLL)
                scheduler.stats["idle_drives"] = scheduler.stats["drives"] - before.get("drives", 0)
                scheduler.stats["idle_passes"] = scheduler.stats["passes"] - before.get("passes", 0)
            finally:
                stop.set()
                await serving

    asyncio.run(go())
    return scheduler


def test_a_publish_error_fails_its_task_and_the_run_for_good(db_world: World) -> None:
    w = db_world
    w.put("a.txt", "some words")
    run_id = w.submit(ref("long_names"))
    served = _serve(w, lambda: w.engine.get_run(w.admin, run_id)["status"] in runs.FINISHED_RUN)

    run = w.engine.get_run(w.admin, run_id)
    assert run["status"] == "failed"
    tasks = w.tasks(run_id)
    assert tasks["parse[Raw/a.txt]"].status == "succeeded"
    failed = tasks["count[Raw/a.txt]"]
    assert (failed.status, failed.failure) == ("failed", "publish")
    assert failed.error is not None
    assert "could not publish output 'a.nnnn" in failed.error
    assert "is 300 bytes long; the limit is 255" in failed.error
    assert "a.parse.txt" in w.out()  # the task that could publish did
    assert len(w.out()) == 1
    # The idle scheduler leaves the ended run alone: no driving it again on every poll.
    assert (served.stats["idle_drives"], served.stats["idle_passes"]) == (0, 0)

    # Cancel answers that it has ended; a restart neither resurrects nor re-drives it.
    assert w.engine.cancel(w.admin, run_id) is False
    started = w.per_task("task.started", run_id)
    again = _serve(w, lambda: True)
    assert again.stats["drives"] == 0
    assert w.engine.get_run(w.admin, run_id)["status"] == "failed"
    assert w.per_task("task.started", run_id) == started
    assert w.per_task("task.finished", run_id) == {t.id: 1 for t in tasks.values()}
    w.check_fold()


def _hold(world: World, run_id: int, owner: str, lease_seconds: float) -> list[int]:
    """Claim every task of a run for ``owner``, as a scheduler does before it runs them."""
    with world.home.db.write() as conn:
        ids = list(conn.execute(select(Task.id).where(Task.run_id == run_id)).scalars())
        folder_id = runs.run_folder_id(conn, run_id)
        runs.start_run(conn, run_id, folder_id)
        assert runs.claim_tasks(conn, ids, owner, lease_seconds, "inline", folder_id) == ids
    return ids


def test_cancel_ends_a_run_whose_scheduler_died(db_world: World) -> None:
    w = db_world
    w.put("a.txt", "some words")
    run_id = w.submit(ref("peritem"))
    _hold(w, run_id, "gone:1:dead", lease_seconds=-1.0)  # its lease has run out: nobody holds it
    assert w.engine.cancel(w.admin, run_id) is True
    run = w.engine.get_run(w.admin, run_id)
    assert run["status"] == "cancelled"
    assert set(w.statuses(run_id).values()) == {"cancelled"}
    w.check_fold()


def test_cancel_ends_a_run_after_a_restart(db_world: World) -> None:
    w = db_world
    w.put("a.txt", "some words")
    run_id = w.submit(ref("peritem"))
    _hold(w, run_id, "gone:1:dead", lease_seconds=60.0)  # a scheduler that died a moment ago
    assert w.engine.cancel(w.admin, run_id) is True
    assert w.engine.get_run(w.admin, run_id)["status"] == "running"  # its lease may still be live
    # Restarted once the lease has run out: the run ends cancelled, nothing runs again.
    later = time.time() + 120
    _serve(w, lambda: w.engine.get_run(w.admin, run_id)["status"] in runs.FINISHED_RUN, clock=lambda: later)
    assert w.engine.get_run(w.admin, run_id)["status"] == "cancelled"
    assert set(w.statuses(run_id).values()) == {"cancelled"}
    assert w.per_task("task.started", run_id) == {t.id: 1 for t in w.tasks(run_id).values()}
    w.check_fold()


def test_tasks_left_running_by_a_failed_driver_are_run_again(db_world: World) -> None:
    w = db_world
    w.put("a.txt", "some words")
    run_id = w.submit(ref("peritem"))

    async def go() -> None:
        async with Scheduler(w.home, "inline") as scheduler:
            # As if an earlier driver of this scheduler claimed the tasks and then failed.
            _hold(w, run_id, scheduler.owner, lease_seconds=60.0)
            await scheduler.run_until_idle([run_id])

    asyncio.run(go())
    assert w.engine.get_run(w.admin, run_id)["status"] == "succeeded"
    w.check_fold()


def _outage(db_url: str, on: bool) -> None:
    """Refuse (and cut) every connection to the database of ``db_url``, or allow them again."""
    parts = urlsplit(db_url)
    name = parts.path.lstrip("/")
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        allow = sql.SQL("false" if on else "true")
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(sql.Identifier(name), allow))
        if on:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


async def _cut_while_running(db_url: str, marks: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Once the task runs, cut the database off until its driver has failed on it, then allow it again."""
    await until("the task to run", lambda: executions(marks) == 1)
    _outage(db_url, True)
    try:
        await until("the driver to fail", lambda: "database failed under its driver" in caplog.text)
    finally:
        _outage(db_url, False)


@pytest.mark.postgres
def test_a_run_whose_driver_failed_on_a_database_outage_goes_on_after_it(
    tmp_path: Path, postgres_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A driver that fails on a database outage after committing a claim leaves that task running
    under the scheduler's own lease, and backs off. A run with no queued task is not pending:
    the scheduler must drive it again itself once the delay has passed (requeueing the task),
    not leave it to the lease, which nobody renews (30 s by default; here an hour, which the
    test would never wait for)."""
    home = open_home(tmp_path / "home", postgres_db_url)
    w = World(home)
    marks = tmp_path / "marks"
    try:
        gate = tmp_path / "gate"
        w.put("a.txt", f"wait {gate}")  # running when the outage begins, until the gate opens
        # One task: once it is claimed, no queued task makes the run look like one to drive.
        run_id = w.submit(ref("alone"), params={"marks": str(marks)})
        # A step in a thread (as in the server), so that the loop goes on while it runs.
        scheduler = Scheduler(home, "inline", lease_seconds=3600.0, shares_loop=True)

        async def go() -> None:
            stop = asyncio.Event()
            async with scheduler:
                serving = asyncio.create_task(scheduler.serve(stop, poll=POLL))
                try:
                    await _cut_while_running(postgres_db_url, marks, caplog)
                    gate.touch()  # the abandoned first attempt ends too; its result goes nowhere
                    await until(
                        "the run to end",
                        lambda: w.engine.get_run(w.admin, run_id)["status"] in runs.FINISHED_RUN,
                        timeout=30.0,
                    )
                finally:
                    stop.set()
                    await serving

        asyncio.run(go())
        assert w.engine.get_run(w.admin, run_id)["status"] == "succeeded"
        parse = w.tasks(run_id)["parse[Raw/a.txt]"]
        assert w.per_task("task.reclaimed", run_id)[parse.id] == 1
        assert executions(marks) == 2  # its first attempt was cut short with its driver
        w.check_fold()
    finally:
        _outage(postgres_db_url, False)
        (tmp_path / "gate").touch()
        home.close()


def test_a_run_held_by_another_scheduler_is_not_driven_on_every_poll(db_world: World) -> None:
    w = db_world
    w.put("a.txt", "some words")
    run_id = w.submit(ref("peritem"))
    _hold(w, run_id, "other:2:alive", lease_seconds=600.0)  # that scheduler runs them and ends the run
    served = _serve(w, lambda: True)
    assert served.stats["drives"] == 0
    assert w.engine.get_run(w.admin, run_id)["status"] == "running"


def test_a_run_that_cannot_be_driven_fails_saying_why(db_world: World, tmp_path: Path) -> None:
    w = db_world
    w.put("a.txt", "some words")
    source = tmp_path / "gone.py"
    source.write_text(
        "from datamill.pipeline import InputFile, Pipeline, step\n\n"
        "@step\ndef upper(item: InputFile) -> str:\n    return item.read_text().upper()\n\n"
        "pipeline = Pipeline('gone', [upper])\n"
    )
    run_id = w.submit(f"{source}:pipeline")
    source.unlink()  # the pipeline no longer loads
    served = _serve(w, lambda: w.engine.get_run(w.admin, run_id)["status"] in runs.FINISHED_RUN)
    run = w.engine.get_run(w.admin, run_id)
    assert run["status"] == "failed"
    assert run["error"].startswith("scheduler error: ")
    (task,) = w.tasks(run_id).values()
    assert (task.status, task.failure, task.error) == ("failed", "scheduler", run["error"])
    assert served.stats["idle_drives"] == 0
    assert w.engine.cancel(w.admin, run_id) is False
    w.check_fold()


@pytest.mark.postgres
def test_a_caller_waiting_for_its_run_gets_it_ended_through_a_database_outage(
    tmp_path: Path, postgres_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``run_until_idle([run])`` (how ``Engine.run`` and an embedded ``datamill run`` wait) returns only
    once the run has ended: a driver that backed off on a database outage is driven again after its
    delay, instead of the caller getting its run back still running."""
    home = open_home(tmp_path / "home", postgres_db_url)
    w = World(home)
    marks = tmp_path / "marks"
    try:
        gate = tmp_path / "gate"
        w.put("a.txt", f"wait {gate}")
        run_id = w.submit(ref("alone"), params={"marks": str(marks)})
        scheduler = Scheduler(home, "inline", lease_seconds=3600.0, shares_loop=True)

        async def go() -> None:
            async with scheduler:
                waiting = asyncio.create_task(scheduler.run_until_idle([run_id]))
                await _cut_while_running(postgres_db_url, marks, caplog)
                gate.touch()
                await waiting  # returns only when the run has ended

        asyncio.run(go())
        assert w.engine.get_run(w.admin, run_id)["status"] == "succeeded"
        assert w.per_task("task.reclaimed", run_id)[w.tasks(run_id)["parse[Raw/a.txt]"].id] == 1
        w.check_fold()
    finally:
        home.close()
