"""Claims and ends of many tasks in one transaction: the rows and events each task gets, whatever
statements record them (on SQLite: claims' events made by SQLite from the claimed rows, ends alike
but for their task by id lists, the others by ``VALUES`` lists)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from sqlalchemy import event, select, text

from datamill.db.models import Task, json_text
from datamill.engine import runs, tasks
from datamill.engine.tasks import OutputRecord, TaskEnd, TaskStatus

from .engine_world import World
from .pipelines import ref


def _run(world: World, n: int) -> tuple[int, int | None, list[int]]:
    """A recorded run of ``n`` tasks (one per item); its id, folder and task ids in plan order."""
    for i in range(n):
        world.put(f"i{i:02}.txt", f"item {i}")
    run_id = world.submit(ref("alone"))
    with world.home.db.write() as conn:
        ids = list(conn.execute(select(Task.id).where(Task.run_id == run_id).order_by(Task.id)).scalars())
        folder_id = runs.run_folder_id(conn, run_id)
        runs.start_run(conn, run_id, folder_id)
    return run_id, folder_id, ids


@contextmanager
def _task_updates(world: World) -> Iterator[list[str]]:
    """The ``UPDATE tasks SET status = ...`` statements run meanwhile (how ends were written)."""
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if statement.startswith("UPDATE tasks SET status = "):
            statements.append(statement)

    event.listen(world.home.db.write_engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        event.remove(world.home.db.write_engine, "before_cursor_execute", seen)


def _started(world: World, run_id: int) -> list[tuple[int, dict[str, Any]]]:
    return [(int(e.task_id or 0), dict(e.data)) for e in world.events("task.started", run_id)]


def test_a_claim_starts_the_queued_tasks_asked_for_in_that_order(db_world: World) -> None:
    w = db_world
    run_id, folder_id, ids = _run(w, 20)
    with w.home.db.write() as conn:  # another scheduler holds three of them
        assert tasks.claim_tasks(conn, ids[5:8], "other", 30, "inline", folder_id) == ids[5:8]
    with w.home.db.write() as conn:
        mine = tasks.claim_tasks(conn, ids[:12], "me", 30, "local", folder_id)
    assert mine == ids[:5] + ids[8:12]
    with w.home.db.write() as conn:  # asked in another order than the ids': claimed and started in that order
        late = tasks.claim_tasks(conn, ids[19:11:-1], "me", 30, "local", folder_id)
    assert late == ids[19:11:-1]
    started = _started(w, run_id)
    assert [t for t, _ in started] == ids[5:8] + mine + late
    for tid, data in started:
        owner, executor = ("other", "inline") if tid in ids[5:8] else ("me", "local")
        assert data == {"attempt": 1, "step": "parse", "executor": executor, "owner": owner}
    events = w.events("task.started", run_id)
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert {e.folder_id for e in events} == {folder_id}
    with w.home.db.read() as conn:
        rows = {r.id: r for r in conn.execute(select(Task).where(Task.run_id == run_id))}
    assert {tid for tid, r in rows.items() if r.status == "running" and r.lease_owner == "me"} == set(mine + late)
    with w.home.db.write() as conn:  # nothing queued is left: nothing claimed, no event
        assert tasks.claim_tasks(conn, ids, "me", 30, "local", folder_id) == []
    assert len(_started(w, run_id)) == len(ids)
    w.check_fold()


def test_ends_alike_and_not_in_one_batch_are_each_recorded_once(db_world: World) -> None:
    w = db_world
    run_id, folder_id, ids = _run(w, 20)
    with w.home.db.write() as conn:
        assert tasks.claim_tasks(conn, ids, "me", 30, "local", folder_id) == ids
    out = {tid: OutputRecord("return.txt", f"blake3:{tid:064x}", 1, "text/plain", "text", b"x") for tid in ids}
    ends = [TaskEnd(tid, run_id, TaskStatus.SUCCEEDED, folder_id, [out[tid]]) for tid in ids[:12]]
    ends += [
        TaskEnd(tid, run_id, TaskStatus.FAILED, folder_id, error=f"boom {tid}", failure="step") for tid in ids[12:15]
    ]
    ends.append(TaskEnd(ids[15], run_id, TaskStatus.SUCCEEDED, folder_id, [out[ids[15]]], key="k" * 64))
    ends.append(TaskEnd(ids[16], run_id, TaskStatus.SUCCEEDED, folder_id, [out[ids[16]]], note="a note"))
    ends.append(TaskEnd(ids[17], run_id, TaskStatus.CANCELLED, folder_id))
    with _task_updates(w) as statements, w.home.db.write() as conn:
        assert tasks.finish_tasks(conn, ends) == {e.task_id for e in ends}
    if w.home.db.is_sqlite:  # the twelve alike by an id list, the others by a VALUES list
        assert any("WHERE id IN (" in s for s in statements) and any(" VALUES (" in s for s in statements)
    with w.home.db.write() as conn:  # ended once: a second end of the same tasks changes nothing
        assert tasks.finish_tasks(conn, [TaskEnd(ids[0], run_id, TaskStatus.FAILED, folder_id, error="late")]) == set()
    with w.home.db.read() as conn:
        rows = {r.id: r for r in conn.execute(select(Task).where(Task.run_id == run_id))}
    for e in ends:
        r = rows[e.task_id]
        assert (r.status, r.error, r.failure, r.note) == (str(e.status), e.error, e.failure, e.note), r
        assert r.lease_owner is None and r.lease_expires is None and r.finished_at is not None
        assert r.progress == (1.0 if e.status == TaskStatus.SUCCEEDED else 0.0)
        with w.home.db.read() as conn:
            t = tasks.get_task(conn, e.task_id)
        assert t is not None and t.outputs == list(e.outputs)
    assert rows[ids[15]].key == "k" * 64
    assert {rows[t].status for t in ids[18:]} == {"running"}
    finished = {int(e.task_id or 0): dict(e.data) for e in w.events("task.finished", run_id)}
    assert set(finished) == {e.task_id for e in ends}
    for e in ends:
        data = finished[e.task_id]
        assert data["status"] == str(e.status) and data["error"] == e.error and data.get("note") == e.note
        assert data["outputs"] == [{"name": o.name, "digest": o.digest, "size": o.size} for o in e.outputs]
    w.check_fold()


def test_finished_events_of_returned_values_are_the_same_bytes_in_the_order_of_the_ends(db_world: World) -> None:
    """Ends of a step that returned a small value (on SQLite, their ``task.finished`` events made by
    SQLite from the outputs just written) give the events the Python path gives, in the ends' order;
    a batch with a name the two JSON writers escape differently keeps the Python path."""
    w = db_world
    run_id, folder_id, ids = _run(w, 12)
    with w.home.db.write() as conn:
        assert tasks.claim_tasks(conn, ids, "me", 30, "local", folder_id) == ids
    names = {tid: "return.txt" if tid % 2 else "a b/[x]~.txt" for tid in ids}
    names[ids[-1]] = 'é "q"\\.txt'
    order = ids[:8][::-1] + ids[8:]  # not the ids' order; the last batch holds the odd name
    for batch in (order[:8], order[8:]):
        ends = [
            TaskEnd(
                tid,
                run_id,
                TaskStatus.SUCCEEDED,
                folder_id,
                [OutputRecord(names[tid], f"blake3:{tid:064x}", tid, "text/plain", "text", b"x")],
            )
            for tid in batch
        ]
        with w.home.db.write() as conn:
            assert tasks.finish_tasks(conn, ends) == set(batch)
    with w.home.db.read() as conn:
        got = conn.execute(
            text("SELECT task_id, data FROM events WHERE kind = 'task.finished' AND run_id = :r ORDER BY seq"),
            {"r": run_id},
        ).all()
    assert [r[0] for r in got] == order
    for tid, data in got:
        expected = {
            "status": "succeeded",
            "error": None,
            "outputs": [{"name": names[tid], "digest": f"blake3:{tid:064x}", "size": tid}],
            "cached_from": None,
        }
        if w.home.db.is_sqlite:  # the text stored, byte for byte
            assert data == json_text(expected)
        else:
            assert (orjson.loads(data) if isinstance(data, str) else data) == expected
    w.check_fold()


def test_batches_of_ends_alike_but_not_in_their_outputs_give_each_task_its_own(db_world: World) -> None:
    """Batches of ends alike but for their task (on SQLite, one statement each for the rows, the
    outputs and the events, when each end has one output of a plain name): a batch with a name the
    JSON writers escape differently, or with ends of none or two outputs, still gives every task
    its own outputs and event."""
    w = db_world
    run_id, folder_id, ids = _run(w, 30)
    with w.home.db.write() as conn:
        assert tasks.claim_tasks(conn, ids, "me", 30, "local", folder_id) == ids

    def output(tid: int, name: str = "return.txt") -> OutputRecord:
        return OutputRecord(name, f"blake3:{tid:064x}", tid, "text/plain", "text", b"x")

    plain, odd, uneven = ids[:10], ids[10:20], ids[20:30]
    outputs = {tid: [output(tid)] for tid in ids}
    outputs[odd[3]] = [output(odd[3], 'é "q"\\.txt')]
    outputs[uneven[2]] = []
    outputs[uneven[5]] = [output(uneven[5]), output(uneven[5], "other.txt")]
    with _task_updates(w) as statements:
        for batch in (plain, odd, uneven):
            ends = [TaskEnd(tid, run_id, TaskStatus.SUCCEEDED, folder_id, outputs[tid]) for tid in batch]
            with w.home.db.write() as conn:
                assert tasks.finish_tasks(conn, ends) == set(batch)
    if w.home.db.is_sqlite:  # each batch's rows by one id list
        assert len(statements) == 3 and all("WHERE id IN (" in s for s in statements), statements
    for tid in ids:
        with w.home.db.read() as conn:
            t = tasks.get_task(conn, tid)
        assert t is not None and t.status == "succeeded" and t.outputs == outputs[tid] and t.progress == 1.0
    finished = [(int(e.task_id or 0), dict(e.data)) for e in w.events("task.finished", run_id)]
    assert [tid for tid, _ in finished] == ids
    for tid, data in finished:
        assert data == {
            "status": "succeeded",
            "error": None,
            "outputs": [{"name": o.name, "digest": o.digest, "size": o.size} for o in outputs[tid]],
            "cached_from": None,
        }
    w.check_fold()
