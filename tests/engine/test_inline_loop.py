"""The inline hot path: a batch of value steps in one asyncio task, a handed plan's cache misses not
looked up again, and the tasks of a run read by the driver (SQLite and PostgreSQL, ``db_world``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from datamill.db.models import Task, TaskOutput
from datamill.engine import paramsets, tasks
from datamill.engine.attempt import LoopEnd, waitables
from datamill.engine.ends import Done
from datamill.engine.scheduler import Scheduler
from datamill.engine.tasks import TaskStatus

from .engine_world import World
from .test_cached_rerun import counting
from .value_pipelines import PIPELINES_FILE

VALUES = f"{PIPELINES_FILE}:values"


def _drive_counting_tasks(world: World, run_id: int, handed: bool = False) -> int:
    """Drive ``run_id`` inline; how many asyncio tasks the loop made meanwhile."""
    made = 0

    async def go() -> None:
        nonlocal made
        loop = asyncio.get_running_loop()

        def factory(lp: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
            nonlocal made
            made += 1
            return asyncio.Task(coro, loop=lp, **kw)

        loop.set_task_factory(factory)
        async with Scheduler(world.home, "inline") as sched:
            await sched.run_until_idle([run_id])

    asyncio.run(go())
    return made


def test_inline_value_tasks_run_in_batches_not_an_asyncio_task_each(db_world: World) -> None:
    names = [f"i{i:02}.txt" for i in range(40)]
    for name in names:
        db_world.put(name, f"hello {name}")
    run_id = db_world.submit(VALUES)
    made = _drive_counting_tasks(db_world, run_id)
    assert db_world.status_counts(run_id) == {"succeeded": 80}
    # 80 attempts; the driver, its commits and a task per batch of attempts make far fewer tasks.
    assert made < 40
    assert db_world.per_task("task.finished", run_id) == dict.fromkeys(
        [t.id for t in db_world.tasks(run_id).values()], 1
    )
    db_world.check_fold()


def test_a_cancelled_batch_ends_the_attempts_it_did_not_run_as_cancelled() -> None:
    async def go() -> tuple[list[bool], list[str]]:
        ends = [LoopEnd(), LoopEnd()]
        ran: list[str] = []

        async def batch() -> None:
            await asyncio.sleep(0)  # cancelled at its first step: no attempt has run
            ran.append("ran")

        runner = asyncio.create_task(batch())
        for e in ends:
            e.batch = runner
        assert waitables(ends) == {runner}  # one task to wait on for the whole batch
        ends[0].cancel()
        await asyncio.wait([runner])
        outcomes = []
        for e in ends:
            try:
                e.result()
                outcomes.append("ended")
            except asyncio.CancelledError:
                outcomes.append("cancelled")
        return [e.done() for e in ends], outcomes + ran

    done, outcomes = asyncio.run(go())
    assert done == [True, True]
    assert outcomes == ["cancelled", "cancelled"]


def test_a_failed_batch_raises_its_error_for_the_attempts_it_did_not_end() -> None:
    async def go() -> list[str]:
        first, second = LoopEnd(), LoopEnd()

        async def batch() -> None:
            first.end = Done(None, None, TaskStatus.SUCCEEDED)  # type: ignore[arg-type]
            raise RuntimeError("a bug outside the step")

        runner = asyncio.create_task(batch())
        first.batch = second.batch = runner
        await asyncio.wait([runner])
        seen = [str(first.result().status)]
        with pytest.raises(RuntimeError, match="a bug outside the step"):
            second.result()
        seen.append("raised")
        return seen

    assert asyncio.run(go()) == ["succeeded", "raised"]


def test_a_handed_plan_is_not_looked_up_in_the_cache_again(db_world: World) -> None:
    for name in ("a.txt", "b.txt", "c.txt"):
        db_world.put(name, f"hello {name}")

    async def go() -> list[str]:
        async with Scheduler(db_world.home, "inline") as sched:
            run_id = await asyncio.to_thread(
                db_world.engine.submit, db_world.admin, VALUES, db_world.inputs(), source="Raw", scheduler=sched
            )
            with counting(db_world.home) as statements:
                await sched.run_until_idle([run_id])
            assert db_world.status_counts(run_id) == {"succeeded": 6}
            return statements

    statements = asyncio.run(go())
    # Only the downstream step's keys (known once its inputs ended) are looked up: one query.
    lookups = [s for s in statements if "task_outputs" in s and "JOIN" in s.upper() and "key IN" in s.replace('"', "")]
    assert len(lookups) == 1, lookups
    db_world.check_fold()


def test_a_runs_tasks_are_read_as_the_orm_reads_them(db_world: World) -> None:
    for name in ("a.txt", "b.txt"):
        db_world.put(name, f"hello {name}")
    run = db_world.run(VALUES, params={"work": "w"})
    assert run["status"] == "succeeded", run
    with db_world.home.db.read() as conn:
        fast = tasks.list_tasks(conn, run["id"])
        rows = conn.execute(select(Task).where(Task.run_id == run["id"]).order_by(Task.id)).all()
        orm = [tasks.task_row(r, paramsets.load(conn, [r.params_digest])) for r in rows]
        outs = conn.execute(select(TaskOutput).order_by(TaskOutput.id)).all()
    for t in orm:
        t.outputs = [tasks._output(o) for o in outs if o.task_id == t.id]
    assert [t.to_dict() for t in fast] == [t.to_dict() for t in orm]
    assert [t.outputs for t in fast] == [t.outputs for t in orm]
    assert any(t.deps for t in fast) and any(t.params for t in fast)
