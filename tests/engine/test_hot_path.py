"""The engine's hot path: Python steps on values run without a work directory; ends and claims are
recorded in group commits, with the same events in the same order, exactly once across crashes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import blake3
import pytest
from sqlalchemy import event

from datamill.engine.scheduler import Scheduler
from tests.helpers import open_home, wait_for

from .engine_world import World
from .pipelines import executions
from .value_pipelines import PIPELINES_FILE

ROOT = Path(__file__).resolve().parents[2]


def ref(name: str) -> str:
    return f"{PIPELINES_FILE}:{name}"


def values_of(world: World, run_id: int, step: str) -> dict[str, Any]:
    """The values a step's tasks returned (kept inline), by item name."""
    out = {}
    for t in world.tasks(run_id).values():
        if t.step == step:
            o = next(o for o in t.outputs if o.name.startswith("return"))
            assert o.inline is not None and o.digest == "blake3:" + blake3.blake3(o.inline).hexdigest()
            out[str(t.item_name).rsplit("/", 1)[-1]] = json.loads(o.inline) if o.codec == "json" else o.inline.decode()
    return out


def blob_files(world: World) -> set[str]:
    root = world.home.path / "blobs"
    return {p.name for p in root.rglob("*") if p.is_file() and ".tmp" not in p.parts}


def test_value_steps_run_without_a_work_directory(db_world: World) -> None:
    world = db_world
    work = world.home.path / "work"
    for name in ("a.txt", "b.txt", "c.txt"):
        world.put(name, f"hello {name}")
    run = world.run(ref("values"), params={"work": str(work)})
    assert run["status"] == "succeeded", run
    seen = values_of(world, run["id"], "look")
    assert seen == {n: {"text": f"hello {n}", "work": []} for n in ("a.txt", "b.txt", "c.txt")}
    # The downstream step read its upstream value from the database row, with no file either.
    assert values_of(world, run["id"], "shout") == {n: f"HELLO {n.upper()}" for n in ("a.txt", "b.txt", "c.txt")}
    assert not work.exists() or not list(work.iterdir())
    assert world.read("a.shout.txt") == b"HELLO A.TXT"
    world.check_fold()


def test_a_big_value_is_stored_as_one_blob(world: World) -> None:
    work = world.home.path / "work"
    world.put("a.txt", "0123456789")
    before = blob_files(world)
    run = world.run(ref("blobs"), dest=None, params={"work": str(work)})
    assert run["status"] == "succeeded", run
    big = next(t for t in world.tasks(run["id"]).values() if t.step == "big")
    (o,) = big.outputs
    expected = b"0123456789" * 1001
    assert o.inline is None and o.size == len(expected)
    assert o.digest == "blake3:" + blake3.blake3(expected).hexdigest()
    assert world.home.blobs.read(o.digest) == expected
    # Stored once: the one new blob is the value's (nothing written elsewhere and stored again).
    assert blob_files(world) - before == {o.digest.split(":")[1]}
    assert values_of(world, run["id"], "measure") == {"a.txt": {"size": len(expected), "work": []}}
    assert not list((world.home.path / "blobs" / ".tmp").rglob("upload-*"))


def test_a_value_step_asking_for_its_item_path_gets_a_link_named_like_the_item(world: World) -> None:
    work = world.home.path / "work"
    world.put("table.csv", "a,b\n1,2\n")
    run = world.run(ref("paths"), params={"work": str(work)})
    assert run["status"] == "succeeded", run
    (seen,) = values_of(world, run["id"], "named").values()
    assert (seen["name"], seen["suffix"], seen["text"]) == ("table.csv", ".csv", "a,b\n1,2\n")
    assert len(seen["work"]) == 1  # made when asked for, for this task only
    assert not list(work.iterdir())  # and removed once its end was recorded


def test_a_value_needing_a_file_clears_what_a_dead_attempt_left(world: World) -> None:
    """A reclaimed task keeps its attempt number: a call on values is not preceded by a look for a
    dead attempt's directory, so the directory it makes for a file value starts afresh."""
    work = world.home.path / "work"
    world.put("a.txt", "some text")
    run_id = world.submit(ref("file_value"), dest=None)
    (t,) = world.tasks(run_id).values()
    left = work / f"task-{t.id}-{t.attempts + 1}"
    (left / "out").mkdir(parents=True)
    (left / "out" / "stale.txt").write_text("from the attempt whose scheduler died")
    run = world.run_submitted(run_id)
    assert run["status"] == "succeeded", run
    (done,) = world.tasks(run_id).values()
    assert [o.name for o in done.outputs] == ["return.txt"]  # not the stale file
    assert done.outputs[0].inline == b"SOME TEXT"
    assert not left.exists()  # removed once its end was recorded


def test_a_file_step_keeps_its_work_directory(world: World) -> None:
    work = world.home.path / "work"
    world.put("a.txt", "some text")
    run = world.run(ref("files"), params={"work": str(work)})
    assert run["status"] == "succeeded", run
    (seen,) = values_of(world, run["id"], "filed").values()
    assert len(seen["work"]) == 1
    assert {n for n in world.out() if "copy" in n} == {"a.copy.txt"}
    assert world.read("a.copy.txt") == b"some text"
    assert not list(work.iterdir())


def test_group_commits_keep_the_order_of_events(db_world: World) -> None:
    world = db_world
    names = [f"i{i:02}.txt" for i in range(12)]
    for name in names:
        world.put(name, name)
    run = world.run(ref("values"))
    assert run["status"] == "succeeded", run
    events = world.events(run_id=run["id"])
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    kinds = [e.kind for e in events]
    assert kinds[0] == "run.queued" and kinds[-1] == "run.finished"
    first_start = kinds.index("task.started")
    assert kinds.index("run.started") < first_start
    at: dict[tuple[str, int], int] = {}
    for e in events:
        if e.task_id is not None:
            assert (e.kind, e.task_id) not in at, f"{e.kind} twice for task {e.task_id}"
            at[(e.kind, e.task_id)] = e.seq
    tasks = world.tasks(run["id"]).values()
    assert len(tasks) == 2 * len(names)
    for t in tasks:
        assert at[("task.queued", t.id)] < at[("task.started", t.id)] < at[("task.finished", t.id)]
    # A downstream task starts only after its input's end was committed.
    by_planned = {t.planned_id: t for t in tasks}
    for t in tasks:
        for dep in t.deps:
            assert at[("task.finished", by_planned[dep].id)] < at[("task.started", t.id)]
    world.check_fold()


def test_an_end_writes_a_key_only_when_its_row_has_none(db_world: World) -> None:
    """Keys known at submit are in their rows already: ends leave the indexed column alone (a
    rewrite of its index entry per task was most of SQLite's work); keys the scheduler worked out
    (downstream steps) are written by their end, and found by the next run."""
    world = db_world
    for name in ("a.txt", "b.txt", "c.txt"):
        world.put(name, f"hello {name}")
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if statement.startswith("UPDATE tasks SET status = "):
            statements.append(statement)

    engine = world.home.db.write_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        run = world.run(ref("values"))
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert run["status"] == "succeeded", run
    rows = world.tasks(run["id"]).values()
    assert {t.step for t in rows} == {"look", "shout"}
    assert all(t.key for t in rows)
    if world.home.db.is_sqlite:  # PostgreSQL rewrites every index entry of an updated row anyway
        ends = [s for s in statements if "finished_at" in s]
        assert any("key =" not in s for s in ends) and any("key =" in s for s in ends), ends
    again = world.run(ref("values"))
    assert world.status_counts(again["id"]) == {"cached": len(rows)}, world.statuses(again["id"])
    world.check_fold()


def test_pipelined_commits_on_the_pool_start_each_task_once_after_its_claim(world: World) -> None:
    """On the pool (16 in flight) a run of 20 items commits half its capacity at a time, each
    commit in flight while the tasks already claimed run: every task is claimed (``task.started``
    committed) before it ends, runs once, and a downstream task starts after its input's end."""
    names = [f"p{i:02}.txt" for i in range(20)]
    for name in names:
        world.put(name, name)
    run = world.run(ref("values"), executor="local")
    assert run["status"] == "succeeded", run
    events = world.events(run_id=run["id"])
    at: dict[tuple[str, int], int] = {}
    for e in events:
        if e.task_id is not None:
            assert (e.kind, e.task_id) not in at, f"{e.kind} twice for task {e.task_id}"
            at[(e.kind, e.task_id)] = e.seq
    tasks = world.tasks(run["id"]).values()
    assert len(tasks) == 2 * len(names)
    by_planned = {t.planned_id: t for t in tasks}
    for t in tasks:
        assert t.attempts == 1 and t.status == "succeeded", (t.planned_id, t.attempts, t.status)
        assert at[("task.started", t.id)] < at[("task.finished", t.id)]
        for dep in t.deps:
            assert at[("task.finished", by_planned[dep].id)] < at[("task.started", t.id)]
    # Half the capacity per commit: the claims came in more than one batch.
    started = sorted(seq for (kind, _), seq in at.items() if kind == "task.started")
    assert started[-1] - started[0] >= len(started)
    assert values_of(world, run["id"], "shout") == {n: n.upper() for n in names}
    world.check_fold()


@pytest.mark.slow
@pytest.mark.parametrize("after", [1, 3])
def test_a_crash_between_group_commits_loses_and_repeats_nothing(tmp_path: Path, db_url: str, after: int) -> None:
    """Killed right after its first commit (parse tasks claimed, none run) or its third (parse
    ended by the second, count claimed, none run): a new scheduler finishes the run; every task
    ends once and, since the crash came between batches, every step ran exactly once per item."""
    home_dir, marks = tmp_path / "home", tmp_path / "marks"
    world = World(open_home(home_dir, db_url))
    items = [f"item{i:02}" for i in range(6)]
    for name in items:
        world.put(f"{name}.txt", name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    child = subprocess.run(
        [sys.executable, "-m", "tests.engine.group_crash_child", str(home_dir), db_url, str(marks), str(after)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert child.returncode == -9, child.stderr
    run_id = int(child.stdout.split()[0])
    before = world.status_counts(run_id)
    assert before["running"] == len(items), before  # the batch claimed by the last commit
    # Nothing is queued: the run is pending again once the dead scheduler's leases expire (and are reclaimed).
    idle = Scheduler(world.home, "inline", lease_seconds=1.0)
    wait_for("the dead scheduler's leases to expire", lambda: run_id in idle.pending_runs())
    world.drive([run_id], executor="inline", lease_seconds=1.0)
    run = world.engine.get_run(world.admin, run_id)
    assert run["status"] == "succeeded", run
    tasks = world.tasks(run_id)
    assert world.per_task("task.finished", run_id) == {t.id: 1 for t in tasks.values()}
    assert world.per_task("task.reclaimed", run_id).total() == len(items)
    assert executions(marks) == len(items)  # parse ran once per item, before or after the crash
    assert sorted(world.out()) == sorted(f"{n}.{s}" for n in items for s in ("parse.txt", "count.json"))
    world.check_fold()
    world.home.close()


def test_the_first_scheduler_takes_older_objects_out_of_full_collections(world: World) -> None:
    """What lived before a scheduler started (modules, the ORM, settings) is not walked again by
    every full collection a long run sets off: it is frozen once (and still freed by refcount)."""
    import asyncio
    import gc

    async def start() -> None:
        async with Scheduler(world.home, "inline"):
            pass

    asyncio.run(start())
    frozen = gc.get_freeze_count()
    assert frozen > 1000
    asyncio.run(start())  # once per process: a second start freezes nothing more
    assert gc.get_freeze_count() <= frozen  # (fewer if some were freed meanwhile)


def test_a_scheduler_process_collects_its_young_objects_less_often() -> None:
    """The first scheduler of a process raises the youngest generation's threshold from Python's
    default (a trivial task's objects live as long as hundreds of others are in flight); a threshold
    the process set itself is kept."""
    import subprocess
    import sys

    from datamill.engine.scheduler import YOUNG_COLLECTION_THRESHOLD

    def threshold_after_start(own: str) -> list[int]:
        code = (
            f"import gc; {own}; from datamill.engine.scheduler import freeze_long_lived; "
            "freeze_long_lived(); print(*gc.get_threshold())"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        return [int(v) for v in out.split()]

    default = threshold_after_start("pass")
    assert default[0] == YOUNG_COLLECTION_THRESHOLD and default[1:] == [10, 10]
    assert threshold_after_start("gc.set_threshold(1234, 5, 6)") == [1234, 5, 6]
