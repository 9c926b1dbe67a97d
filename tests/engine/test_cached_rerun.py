"""Cached re-runs in bulk: planned once, looked up and recorded in a few statements per 1,000 tasks.

Every test runs on SQLite and on PostgreSQL (``db_world``), with the inline executor. Statements
are counted with SQLAlchemy's ``before_cursor_execute`` event (a count, never a time).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from datamill.engine.scheduler import Scheduler
from datamill.home import Home

from .engine_world import World
from .pipelines import ref

BASIC = ref("basic")


@contextmanager
def counting(home: Home) -> Iterator[list[str]]:
    """The SQL statements executed (by any connection of ``home``) inside the block."""
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    engines = {id(e): e for e in (home.db.engine, home.db.write_engine)}.values()
    for e in engines:
        event.listen(e, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        for e in engines:
            event.remove(e, "before_cursor_execute", count)


def fill(world: World, folder: str, n: int) -> None:
    world.home.store.create_folder(world.admin, folder, exist_ok=True)
    for i in range(n):
        world.put(f"i{i:03}.txt", f"{folder} item {i}\n", folder=folder)


def cached_rerun(world: World, folder: str, n: int) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Run ``basic`` over ``n`` items of ``folder`` twice; the runs and the statements of the second."""
    fill(world, folder, n)
    dest = f"{folder}-out"
    world.home.store.create_folder(world.admin, dest, exist_ok=True)
    engine = world.engine
    first = engine.run(world.admin, BASIC, world.inputs(folder), source=folder, dest=dest)
    assert first["status"] == "succeeded"
    with counting(world.home) as statements:
        second = engine.run(world.admin, BASIC, world.inputs(folder), source=folder, dest=dest)
    return first, second, len(statements)


def test_a_fully_cached_rerun_records_every_task_in_a_few_statements(db_world: World) -> None:
    _f1, small, few = cached_rerun(db_world, "Small", 10)
    first, second, many = cached_rerun(db_world, "Big", 60)
    n = 2 * 60 + 1
    assert second["status"] == "succeeded" and db_world.status_counts(second["id"]) == {"cached": n}
    # Six times the tasks, the same statements: their number does not grow with the tasks.
    assert db_world.status_counts(small["id"]) == {"cached": 21}
    assert many <= few + 2, (few, many)
    assert many < 60, many

    before, after = db_world.tasks(first["id"]), db_world.tasks(second["id"])
    published = {i.version_id for i in db_world.out("Big-out").values()}
    for pid, t in after.items():
        assert t.cached_from == before[pid].id and t.key == before[pid].key and t.progress == 1.0
        assert [(o.name, o.digest, o.size) for o in t.outputs] == [
            (o.name, o.digest, o.size) for o in before[pid].outputs
        ]
        # The outputs name the versions already published (nothing was published again).
        assert [o.version_id for o in t.outputs] == [o.version_id for o in before[pid].outputs]
    assert {o.version_id for t in after.values() for o in t.outputs} == published
    assert all(len(db_world.versions(name, "Big-out")) == 1 for name in db_world.out("Big-out"))

    evs = db_world.events(run_id=second["id"])
    kinds = [e.kind for e in evs]
    assert kinds[0] == "run.queued" and kinds[-1] == "run.finished"
    assert kinds[1:-1] == ["task.queued"] * n + ["task.finished"] * n  # every task queued, then ended
    once = dict.fromkeys([t.id for t in after.values()], 1)
    assert db_world.per_task("task.queued", second["id"]) == once
    assert db_world.per_task("task.finished", second["id"]) == once
    ends = {e.task_id: e.data for e in evs if e.kind == "task.finished"}
    for t in after.values():
        assert ends[t.id]["status"] == "cached" and ends[t.id]["cached_from"] == t.cached_from
        assert ends[t.id]["outputs"] == [{"name": o.name, "digest": o.digest, "size": o.size} for o in t.outputs]
    assert evs[-1].data["counts"] == {"cached": n}
    db_world.check_fold()


def test_a_partly_cached_run_records_the_hits_and_runs_the_misses(db_world: World) -> None:
    for name, text in (("a.txt", "Hello World"), ("b.txt", "the quick brown fox"), ("c.txt", "one")):
        db_world.put(name, text)
    first = db_world.run(BASIC)
    db_world.put("b.txt", "a slow red fox jumps")
    db_world.home.store.delete_item(db_world.admin, "Out/c.parse.txt")  # a hit that must publish again
    run_id = db_world.submit(BASIC)
    # Recorded at once: the hits whose outputs are published already. The rest waits for a scheduler.
    assert db_world.statuses(run_id) == {
        "parse[Raw/a.txt]": "cached",
        "parse[Raw/b.txt]": "queued",
        "parse[Raw/c.txt]": "queued",
        "count[Raw/a.txt]": "cached",  # its input's outputs were known: looked up at submit too
        "count[Raw/b.txt]": "queued",
        "count[Raw/c.txt]": "queued",
        "total": "queued",
    }
    assert db_world.engine.get_run(db_world.admin, run_id)["status"] == "queued"
    run = db_world.run_submitted(run_id)
    assert run["status"] == "succeeded"
    assert db_world.statuses(run_id) == {
        "parse[Raw/a.txt]": "cached",
        "parse[Raw/b.txt]": "succeeded",
        "parse[Raw/c.txt]": "cached",
        "count[Raw/a.txt]": "cached",
        "count[Raw/b.txt]": "succeeded",
        "count[Raw/c.txt]": "cached",
        "total": "succeeded",
    }
    before, after = db_world.tasks(first["id"]), db_world.tasks(run_id)
    for pid in ("parse[Raw/a.txt]", "parse[Raw/c.txt]", "count[Raw/a.txt]"):
        assert after[pid].cached_from == before[pid].id
        assert [o.digest for o in after[pid].outputs] == [o.digest for o in before[pid].outputs]
    # The deleted output is back, from the cache, and the task names its new version.
    assert db_world.read("c.parse.txt") == b"one"
    assert after["parse[Raw/c.txt]"].outputs[0].version_id == db_world.out()["c.parse.txt"].version_id
    assert db_world.per_task("task.finished", run_id) == dict.fromkeys([t.id for t in after.values()], 1)
    db_world.check_fold()


def test_a_run_is_planned_once_when_its_scheduler_is_given_the_plan(db_world: World) -> None:
    for name in ("a.txt", "b.txt"):
        db_world.put(name, name)

    async def go(hand_over: bool) -> tuple[int, int, int]:
        async with Scheduler(db_world.home, "inline") as sched:
            run_id = await asyncio.to_thread(
                db_world.engine.submit,
                db_world.admin,
                BASIC,
                db_world.inputs(),
                source="Raw",
                dest="Out",
                scheduler=sched if hand_over else None,
                force=True,
            )
            await sched.run_until_idle([run_id])
            return run_id, sched.stats["plans"], sched.stats["loads"]

    handed, plans, loads = asyncio.run(go(True))
    # planned at submit only, and its rows handed over as recorded: the driver read nothing again
    assert plans == 0 and loads == 0
    assert db_world.status_counts(handed) == {"succeeded": 5}
    elsewhere, plans, loads = asyncio.run(go(False))
    # recorded without its scheduler (as a server's API does): read and planned there too
    assert plans == 1 and loads == 1
    assert db_world.status_counts(elsewhere) == {"succeeded": 5}
    db_world.check_fold()
