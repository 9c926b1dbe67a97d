"""Replays: an unchanged re-run is recorded as a copy of the earlier run (datamill.engine.replay).

Every test runs on SQLite and on PostgreSQL (``db_world``) with the inline executor. Whether a run
was copied shows in its ``run.queued`` event (``data.replay_of``); what it recorded is compared
with what the planned path records for the same cached tasks.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from datamill.db.models import Event, Run
from datamill.engine import runs
from datamill.events import EventKind

from .engine_world import DEST, World
from .pipelines import ref

BASIC = ref("basic")


def fill(world: World, n: int) -> None:
    for i in range(n):
        world.put(f"i{i:03}.txt", f"item {i}\n")


def queued_data(world: World, run_id: int) -> dict[str, Any]:
    with world.home.db.read() as conn:
        return dict(
            conn.execute(
                select(Event.data).where(Event.run_id == run_id, Event.kind == EventKind.RUN_QUEUED)
            ).scalar_one()
        )


def task_events(world: World, run_id: int) -> list[tuple[str, int | None, dict[str, Any]]]:
    with world.home.db.read() as conn:
        rows = conn.execute(
            select(Event.kind, Event.task_id, Event.data, Event.folder_id)
            .where(Event.run_id == run_id, Event.task_id.is_not(None))
            .order_by(Event.seq)
        ).all()
    return [(r.kind, r.task_id, dict(r.data)) for r in rows]


def test_an_unchanged_rerun_is_a_copy_of_the_earlier_run_with_the_rows_planning_would_give(db_world: World) -> None:
    w = db_world
    fill(w, 5)
    first = w.run(BASIC)
    assert first["status"] == "succeeded" and "replay_of" not in queued_data(w, first["id"])
    second = w.run(BASIC)
    assert second["status"] == "succeeded"
    data = queued_data(w, second["id"])
    assert data["replay_of"] == first["id"] and data["tasks"] == 11
    before, after = w.tasks(first["id"]), w.tasks(second["id"])
    assert set(after) == set(before)
    for pid, t in after.items():
        b = before[pid]
        assert t.status == runs.TaskStatus.CACHED and t.progress == 1.0 and t.attempts == 0
        assert (t.key, t.step, t.step_code, t.deps, t.params, t.item_name, t.item_version_id) == (
            b.key,
            b.step,
            b.step_code,
            b.deps,
            b.params,
            b.item_name,
            b.item_version_id,
        )
        assert t.cached_from == b.id
        assert [(o.name, o.digest, o.size, o.version_id) for o in t.outputs] == [
            (o.name, o.digest, o.size, o.version_id) for o in b.outputs
        ]
    # Task ids in plan order, as the planned path inserts them; every task.queued, then every task.finished.
    ordered = sorted(after.values(), key=lambda t: t.id)
    assert [t.planned_id for t in ordered] == [t.planned_id for t in sorted(before.values(), key=lambda t: t.id)]
    evs = task_events(w, second["id"])
    n = len(ordered)
    assert [(k, tid) for k, tid, _ in evs] == [("task.queued", t.id) for t in ordered] + [
        ("task.finished", t.id) for t in ordered
    ]
    for (_k, _tid, d), t in zip(evs[:n], ordered, strict=True):
        assert d == {"step": t.step, "planned_id": t.planned_id}
    for (_k, _tid, d), t in zip(evs[n:], ordered, strict=True):
        assert d == {
            "status": "cached",
            "error": None,
            "outputs": [{"name": o.name, "digest": o.digest, "size": o.size} for o in t.outputs],
            "cached_from": t.cached_from,
        }
    # A copy of a copy: the third run copies the second, with the answers of the first.
    third = w.run(BASIC)
    assert queued_data(w, third["id"])["replay_of"] == second["id"]
    assert {pid: t.cached_from for pid, t in w.tasks(third["id"]).items()} == {pid: t.id for pid, t in before.items()}
    # The event log still folds to the tables.
    with w.home.db.read() as conn:
        assert runs.fold(w.home.events.read(0, limit=100_000)) == runs.state_from_tables(conn)


def test_a_changed_input_a_replaced_output_or_a_newer_answer_is_planned_again(db_world: World) -> None:
    w = db_world
    fill(w, 3)
    w.run(BASIC)
    # A new input: another plan identity, planned (the unchanged items are cached, the new one runs).
    w.put("i009.txt", "item 9\n")
    second = w.run(BASIC)
    assert "replay_of" not in queued_data(w, second["id"])
    assert w.status_counts(second["id"])["succeeded"] >= 2
    third = w.run(BASIC)
    assert queued_data(w, third["id"])["replay_of"] == second["id"]

    # A published output replaced by hand: planned, and the scheduler publishes it again.
    name = next(n for n in w.out() if n.startswith("i000."))
    original = w.read(name)
    w.put(name, "edited by hand\n", folder=DEST)
    fourth = w.run(BASIC)
    assert "replay_of" not in queued_data(w, fourth["id"])
    assert w.read(name) == original

    # A forced run answers the keys anew: a re-run takes its answers, not the older run's.
    forced = w.run(BASIC, force=True)
    assert "replay_of" not in queued_data(w, forced["id"])
    again = w.run(BASIC)
    assert queued_data(w, again["id"]).get("replay_of") in (None, forced["id"])
    answers = {pid: t.cached_from for pid, t in w.tasks(again["id"]).items()}
    assert answers == {pid: t.id for pid, t in w.tasks(forced["id"]).items()}


def test_a_run_with_a_failed_task_is_never_copied(db_world: World) -> None:
    w = db_world
    fill(w, 2)
    w.put("bad.txt", "raise bad input\n")
    first = w.run(BASIC)
    assert first["status"] == "failed"
    second = w.run(BASIC)
    assert second["status"] == "failed" and "replay_of" not in queued_data(w, second["id"])
    with w.home.db.read() as conn:
        digests = set(conn.execute(select(Run.plan_digest).where(Run.id.in_([first["id"], second["id"]]))).scalars())
    assert len(digests) == 1 and None not in digests  # the same identity: refused for its failed task
