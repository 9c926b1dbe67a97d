"""Runs as records: every state change is a row update plus an event, in one transaction.

The functions here take an open write connection, so the scheduler can batch many transitions
into one transaction (that is what makes thousands of recorded tasks per second possible on
SQLite). A run's tasks are records of their own (:mod:`datamill.engine.tasks`); the names of
that module are importable from here too, for callers that see runs and tasks as one.
:func:`fold` rebuilds run and task state from the events alone; a property test checks that it
always equals what the tables say.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, insert, or_, select, update

from datamill import events
from datamill.db.models import Run, Task, TaskInput, TaskOutput
from datamill.engine import paramsets, replay
from datamill.engine.tasks import (
    DONE_OK,
    FINISHED_TASK,
    STEP_FAILURE,
    NewTask,
    OutputRecord,
    TaskEnd,
    TaskRow,
    TaskStatus,
    claim_tasks,
    failed_earlier,
    finish_task,
    finish_tasks,
    get_task,
    list_tasks,
    lookup_cache,
    lookup_cache_many,
    record_inputs,
    record_many_inputs,
    requeue_task,
    set_key,
    set_progress,
    task_log_states,
    task_row,
    unfinished,
)
from datamill.events import EventKind
from datamill.pipeline.inputs import InputRef
from datamill.records import FINISHED_RUN, RunStatus
from datamill.store.access import memo

__all__ = [
    "DONE_OK",
    "FINISHED_RUN",
    "FINISHED_TASK",
    "STEP_FAILURE",
    "NewTask",
    "OutputRecord",
    "RunStatus",
    "TaskEnd",
    "TaskRow",
    "TaskStatus",
    "cancel_requested",
    "cancel_unheld",
    "claim_tasks",
    "create_run",
    "fail_run",
    "failed_earlier",
    "finish_run_if_done",
    "finish_task",
    "finish_tasks",
    "fold",
    "get_run",
    "get_task",
    "has_unfinished_tasks",
    "input_ref_from_dict",
    "input_ref_to_dict",
    "list_runs",
    "list_tasks",
    "load_run_params",
    "lookup_cache",
    "lookup_cache_many",
    "pending_run_ids",
    "record_inputs",
    "record_many_inputs",
    "request_cancel",
    "requeue_task",
    "run_dict",
    "run_folder_id",
    "run_params",
    "run_row",
    "set_key",
    "set_progress",
    "start_run",
    "state_from_tables",
    "take_recorded",
    "task_log_states",
    "task_row",
    "unfinished",
]


def create_run(
    conn: Connection,
    *,
    pipeline_ref: str,
    pipeline_name: str,
    tasks: Sequence[NewTask],
    inputs: Sequence[Mapping[str, Any]] = (),
    requested_by: int | None = None,
    reason: str = "",
    force: bool = False,
    params: Mapping[str, Any] | None = None,
    source_folder: str | None = None,
    dest_folder: str | None = None,
    dest_folder_id: int | None = None,
    folder_id: int | None = None,
    dataflow_id: int | None = None,
    dataflow_version: int | None = None,
    executor: str = "local",
    parent_run_id: int | None = None,
    skip_failed: bool = False,
    plan_digest: str | None = None,
    replay_of: int | None = None,
    encoder: paramsets.Encoder | None = None,
) -> int:
    """Record a run and all its tasks (queued) with their events; returns the run id.

    With ``replay_of`` (and no ``tasks``), the tasks are those of that earlier run, copied as
    cached (:mod:`datamill.engine.replay`; the caller checked :func:`~datamill.engine.replay.replayable`).
    ``plan_digest`` is the run's plan identity (:func:`~datamill.engine.replay.plan_identity`).
    ``encoder`` encoded the run's parameters already (:class:`~datamill.engine.params.RunParams`).

    A task with ``cached_from`` is recorded as answered from the cache, with its outputs and the
    ``task.finished`` event a scheduler would append: a fully cached run is recorded in a few
    statements per 1,000 tasks (its scheduler then ends it without reading them).

    ``folder_id`` is the folder the run's events are filed under (for access checks on the event
    stream): the destination, else the source. With ``skip_failed`` (runs made by triggers), a
    task whose key failed in the step before is not run again (see :func:`failed_earlier`).
    """
    now = time.time()
    if replay_of is not None:
        assert not tasks, "a replayed run copies its tasks"
    # Inside a block of access.remembered (a trigger that hands the run to its scheduler), the rows
    # written are read back whole, in the statements that write them or read their ids anyway.
    kept = memo(conn)
    # The run's parameters, each step's share of them and each step's resolved ones are sets stored
    # once (a big one is usually one set for all three), the run and its tasks naming them.
    given = dict(params or {})
    sets = paramsets.run_sets(given)
    digests = paramsets.store(conn, [*sets, *(t.params for t in tasks)], encoder)
    params_digest, params_meta = paramsets.run_columns(given, digests[: len(sets)])
    run_row_ = conn.execute(
        _INSERT_RUN_WHOLE if kept is not None else _INSERT_RUN,
        {
            "pipeline_ref": pipeline_ref,
            "pipeline_name": pipeline_name,
            "status": RunStatus.QUEUED,
            "requested_at": now,
            "requested_by": requested_by,
            "reason": reason,
            "force": force,
            "params_digest": params_digest,
            "params_meta": params_meta,
            "source_folder": source_folder,
            "dest_folder": dest_folder,
            "dest_folder_id": dest_folder_id,
            "dataflow_id": dataflow_id,
            "dataflow_version": dataflow_version,
            "executor": executor,
            "parent_run_id": parent_run_id,
            "skip_failed": skip_failed,
            "inputs": list(inputs),
            "plan_digest": plan_digest,
        },
    ).one()
    run_id = int(run_row_.id)
    rows = [_task_values(run_id, t, d, now) for t, d in zip(tasks, digests[len(sets) :], strict=True)]
    ids: list[int] = []
    task_rows: list[Any] = []
    if rows:
        if kept is not None and len(rows) <= FEW_TASKS:
            # A run a trigger hands over (a few tasks, usually one): one statement returns the rows.
            task_rows = sorted(conn.execute(_INSERT_TASK_WHOLE, rows), key=lambda r: r.id)
            by_planned = {r.planned_id: r.id for r in task_rows}
        else:
            # A plain executemany (no RETURNING): the ids are read back by planned id in one query.
            conn.execute(_INSERT_TASK, rows)
            if kept is not None:
                task_rows = list(conn.execute(_RUN_TASKS_WHOLE, {"run_id": run_id}))
                by_planned = {r.planned_id: r.id for r in task_rows}
            else:
                by_planned = dict(conn.execute(_RUN_TASK_IDS, {"run_id": run_id}).tuples().all())
        ids = [by_planned[t.planned_id] for t in tasks]
        item_inputs = [
            {"task_id": tid, "param": "item", "digest": t.item_digest, "version_id": t.item_version_id}
            for tid, t in zip(ids, tasks, strict=True)
            if t.item_version_id is not None and t.item_digest
        ]
        if item_inputs:
            conn.execute(_INSERT_TASK_INPUT, item_inputs)
        outputs = [
            {
                "task_id": tid,
                "name": o.name,
                "digest": o.digest,
                "size": o.size,
                "content_type": o.content_type,
                "codec": o.codec,
                "inline": o.inline,
                "version_id": o.version_id,
            }
            for tid, t in zip(ids, tasks, strict=True)
            if t.cached_from is not None
            for o in t.outputs
        ]
        if outputs:
            conn.execute(_INSERT_TASK_OUTPUT, outputs)
    if kept is not None and replay_of is None:
        kept[(RECORDED, run_id)] = (run_row_, task_rows)
    evs: list[dict[str, Any]] = [
        {
            "kind": EventKind.RUN_QUEUED,
            "run_id": run_id,
            "actor_id": requested_by,
            "folder_id": folder_id,
            "dataflow_id": dataflow_id,
            "data": {
                "pipeline": pipeline_name,
                "reason": reason,
                "tasks": len(rows) if replay_of is None else replay.task_count(conn, replay_of),
                "force": force,
                # how it was recorded: a copy of that run (its tasks all cached), not planned
                **({"replay_of": replay_of} if replay_of is not None else {}),
            },
            "ts": now,
        }
    ]
    if replay_of is not None:
        # run.queued first (on PostgreSQL it takes the event log's lock), then the copy and its events.
        events.append_many(conn, evs)
        replay.copy_tasks(conn, replay_of, run_id, folder_id, now)
        return run_id
    evs += [
        {
            "kind": EventKind.TASK_QUEUED,
            "run_id": run_id,
            "task_id": tid,
            "folder_id": folder_id,
            "data": {"step": t.step, "planned_id": t.planned_id},
            "ts": now,
        }
        for tid, t in zip(ids, tasks, strict=True)
    ]
    # Tasks answered from the cache end at once, after every task is queued (the order a scheduler
    # recording them would give), with the event it would append.
    evs += [
        {
            "kind": EventKind.TASK_FINISHED,
            "run_id": run_id,
            "task_id": tid,
            "folder_id": folder_id,
            "ts": now,
            "data": {
                "status": str(TaskStatus.CACHED),
                "error": None,
                "outputs": [{"name": o.name, "digest": o.digest, "size": o.size} for o in t.outputs],
                "cached_from": t.cached_from,
            },
        }
        for tid, t in zip(ids, tasks, strict=True)
        if t.cached_from is not None
    ]
    events.append_many(conn, evs)
    return run_id


#: Statements of :func:`create_run`, built once (a trigger records a run per landed item).
_INSERT_RUN = insert(Run).returning(Run.id)
_INSERT_RUN_WHOLE = insert(Run).returning(*Run.__table__.c)
_INSERT_TASK = insert(Task)
_INSERT_TASK_WHOLE = insert(Task).returning(*Task.__table__.c)
_INSERT_TASK_INPUT = insert(TaskInput)
_INSERT_TASK_OUTPUT = insert(TaskOutput)
#: tasks up to which a handed-over run's task rows come back from their INSERT (beyond: read back)
FEW_TASKS = 50
_RUN_TASK_IDS = select(Task.planned_id, Task.id).where(Task.run_id == bindparam("run_id"))
_RUN_TASKS_WHOLE = select(Task).where(Task.run_id == bindparam("run_id")).order_by(Task.id)
#: memo key (with the run id) of the rows :func:`create_run` wrote, for :func:`take_recorded`
RECORDED = "recorded run"


def take_recorded(conn: Connection, run_id: int) -> tuple[Any, list[Any]] | None:
    """The run row and task rows (in creation order) :func:`create_run` wrote for ``run_id`` in this
    block of :func:`~datamill.store.access.remembered`, as a read would give them; once. None when
    it wrote none there: read them."""
    kept = memo(conn)
    if kept is None:
        return None
    recorded: tuple[Any, list[Any]] | None = kept.pop((RECORDED, run_id), None)
    return recorded


def _task_values(run_id: int, t: NewTask, params_digest: str | None, now: float) -> dict[str, Any]:
    """The row of a new task: queued, or cached (ended now) when it has ``cached_from``; its
    parameters are the row of ``params`` named ``params_digest``."""
    cached = t.cached_from is not None
    return {
        "run_id": run_id,
        "planned_id": t.planned_id,
        "step": t.step,
        "step_code": t.step_code,
        "key": t.key,
        "status": TaskStatus.CACHED if cached else TaskStatus.QUEUED,
        "attempts": 0,
        "max_attempts": t.max_attempts,
        "progress": 1.0 if cached else 0.0,
        "message": "",
        "item_version_id": t.item_version_id,
        "item_name": t.item_name,
        "deps": list(t.deps),
        "params_digest": params_digest,
        "queued_at": now,
        "finished_at": now if cached else None,
        "cached_from": t.cached_from,
    }


def run_folder_id(conn: Connection, run_id: int) -> int | None:
    """The folder a run's events are filed under."""
    row = conn.execute(select(Run.dest_folder_id).where(Run.id == run_id)).first()
    return None if row is None else row[0]


def start_run(conn: Connection, run_id: int, folder_id: int | None) -> bool:
    """Mark a queued run running; False if it was not queued."""
    now = time.time()
    n = conn.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.QUEUED)
        .values(status=RunStatus.RUNNING, started_at=now)
    ).rowcount
    if n:
        events.append(conn, EventKind.RUN_STARTED, run_id=run_id, folder_id=folder_id, ts=now)
    return bool(n)


def finish_run_if_done(conn: Connection, run_id: int, folder_id: int | None) -> RunStatus | None:
    """End the run when none of its tasks is queued or running; returns its final status then."""
    counts = dict(
        conn.execute(select(Task.status, func.count()).where(Task.run_id == run_id).group_by(Task.status)).all()
    )
    if counts.get(TaskStatus.QUEUED, 0) or counts.get(TaskStatus.RUNNING, 0):
        return None
    row = conn.execute(select(Run.status, Run.cancel_requested, Run.dataflow_id).where(Run.id == run_id)).one()
    if row.status in FINISHED_RUN:
        return RunStatus(row.status)
    if row.cancel_requested or counts.get(TaskStatus.CANCELLED, 0):
        final = RunStatus.CANCELLED
    elif counts.get(TaskStatus.FAILED, 0):
        final = RunStatus.FAILED
    else:
        final = RunStatus.SUCCEEDED
    now = time.time()
    conn.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(status=final, finished_at=now, started_at=func.coalesce(Run.started_at, now))
    )
    events.append(
        conn,
        EventKind.RUN_FINISHED,
        run_id=run_id,
        folder_id=folder_id,
        dataflow_id=row.dataflow_id,
        ts=now,
        data={"status": str(final), "counts": {str(k): v for k, v in counts.items()}},
    )
    return final


def request_cancel(conn: Connection, run_id: int, actor_id: int | None, folder_id: int | None) -> bool:
    """Ask for a run to be cancelled: queued tasks are cancelled now, running ones by their scheduler.

    Running tasks whose lease has expired have no live scheduler to stop them: they are cancelled
    now too, so a run whose scheduler died (or never comes back) ends at once.
    """
    row = conn.execute(select(Run.status).where(Run.id == run_id)).first()
    if row is None or row.status in FINISHED_RUN:
        return False
    conn.execute(update(Run).where(Run.id == run_id).values(cancel_requested=True))
    events.append(conn, EventKind.RUN_CANCEL_REQUESTED, run_id=run_id, actor_id=actor_id, folder_id=folder_id)
    cancel_unheld(conn, run_id, folder_id)
    finish_run_if_done(conn, run_id, folder_id)
    return True


def cancel_unheld(conn: Connection, run_id: int, folder_id: int | None, now: float | None = None) -> int:
    """Cancel a run's tasks that no live scheduler holds: queued ones and running ones whose lease expired.

    Returns how many it cancelled. Tasks can become queued again after the cancel request (a
    retry, a reclaimed lease), so the run's driver calls this too before ending the run.
    """
    now = time.time() if now is None else now
    ids = list(
        conn.execute(
            select(Task.id).where(
                Task.run_id == run_id,
                or_(
                    Task.status == TaskStatus.QUEUED,
                    (Task.status == TaskStatus.RUNNING) & (Task.lease_expires < now),
                ),
            )
        ).scalars()
    )
    ends = [TaskEnd(tid, run_id, TaskStatus.CANCELLED, folder_id, error="run cancelled") for tid in ids]
    return len(finish_tasks(conn, ends))


def fail_run(conn: Connection, run_id: int, message: str, owner: str) -> RunStatus | None:
    """End a run that cannot be driven, saying why: its queued tasks fail, and so do those ``owner`` runs.

    Tasks another scheduler runs end there, and the run ends failed with them.
    """
    folder_id = run_folder_id(conn, run_id)
    conn.execute(update(Run).where(Run.id == run_id).values(error=message))
    ids = conn.execute(
        select(Task.id).where(
            Task.run_id == run_id,
            or_(
                Task.status == TaskStatus.QUEUED,
                and_(Task.status == TaskStatus.RUNNING, Task.lease_owner == owner),
            ),
        )
    ).scalars()
    ends = [TaskEnd(tid, run_id, TaskStatus.FAILED, folder_id, error=message, failure="scheduler") for tid in ids]
    finish_tasks(conn, ends)
    return finish_run_if_done(conn, run_id, folder_id)


# ------------------------------------------------------------------------------------ queries


def run_row(conn: Connection, run_id: int) -> Any:
    """A run's row as it is in the ``runs`` table, or None."""
    return conn.execute(select(Run).where(Run.id == run_id)).first()


def has_unfinished_tasks(conn: Connection, run_id: int) -> bool:
    """Whether any task of a run is queued or running (one indexed query, whatever the run's size)."""
    q = select(Task.id).where(Task.run_id == run_id, Task.status.in_([TaskStatus.QUEUED, TaskStatus.RUNNING]))
    return conn.execute(q.limit(1)).first() is not None


def cancel_requested(conn: Connection, run_id: int) -> bool:
    """Whether a run's cancellation was asked for."""
    # By the driver: every group commit asks, and building and compiling the select in SQLAlchemy
    # cost more than reading the row (the commit's thread holds the GIL the event loop waits for).
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    return bool(conn.exec_driver_sql(f"SELECT cancel_requested FROM runs WHERE id = {mark}", (run_id,)).scalar())


def pending_run_ids(conn: Connection) -> list[int]:
    """Queued or running runs with a queued task, or with no task left to end (oldest request first)."""
    has_queued = select(Task.id).where(Task.run_id == Run.id, Task.status == TaskStatus.QUEUED).exists()
    unfinished = (
        select(Task.id).where(Task.run_id == Run.id, Task.status.in_([TaskStatus.QUEUED, TaskStatus.RUNNING])).exists()
    )
    pending = (
        select(Run.id)
        .where(Run.status.in_([RunStatus.QUEUED, RunStatus.RUNNING]), or_(has_queued, ~unfinished))
        .order_by(Run.id)
    )
    return list(conn.execute(pending).scalars())


def get_run(conn: Connection, run_id: int) -> dict[str, Any] | None:
    """A run with its task counts by status and by step."""
    r = conn.execute(select(Run).where(Run.id == run_id)).first()
    if r is None:
        return None
    counts = conn.execute(
        select(Task.step, Task.status, func.count()).where(Task.run_id == run_id).group_by(Task.step, Task.status)
    ).all()
    by_step: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {}
    for step, status, n in counts:
        by_step.setdefault(step, {})[status] = n
        totals[status] = totals.get(status, 0) + n
    return {**run_dict(r, load_run_params(conn, [r])), "counts": totals, "steps": by_step}


def load_run_params(conn: Connection, rows: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """The parameter sets the run rows ``rows`` name, for :func:`run_dict` (one query per 500 sets)."""
    return paramsets.load(conn, [d for r in rows for d in paramsets.run_digests(r.params_digest, r.params_meta)])


def run_params(conn: Connection, row: Any) -> dict[str, Any]:
    """The parameters of the run ``row`` as recorded: ``{"user": ..., "steps": {step: ...}, "images": ...}``."""
    return paramsets.run_params(load_run_params(conn, [row]), row.params_digest, row.params_meta)


def run_dict(r: Any, found: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A run row as a JSON-able dict, its ``params`` from the sets :func:`load_run_params` ``found``.

    Without ``found`` the dict has no ``params`` (callers that only check access need none, and a
    big parameter is not read for them).
    """
    out = {
        "id": r.id,
        "pipeline_ref": r.pipeline_ref,
        "pipeline": r.pipeline_name,
        "status": r.status,
        "requested_at": r.requested_at,
        "requested_by": r.requested_by,
        "reason": r.reason,
        "force": r.force,
        "source_folder": r.source_folder,
        "dest_folder": r.dest_folder,
        "dataflow_id": r.dataflow_id,
        "dataflow_version": r.dataflow_version,
        "executor": r.executor,
        "parent_run_id": r.parent_run_id,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "cancel_requested": r.cancel_requested,
        "error": r.error,
        "skip_failed": r.skip_failed,
        "inputs": r.inputs,
    }
    if found is not None:
        out["params"] = paramsets.run_params(found, r.params_digest, r.params_meta)
    return out


def list_runs(
    conn: Connection, limit: int = 50, status: str | None = None, dataflow_id: int | None = None
) -> list[dict[str, Any]]:
    """Runs, newest request first."""
    q = select(Run).order_by(Run.id.desc()).limit(limit)
    if status:
        q = q.where(Run.status == status)
    if dataflow_id is not None:
        q = q.where(Run.dataflow_id == dataflow_id)
    rows = conn.execute(q).all()
    found = load_run_params(conn, rows)
    return [run_dict(r, found) for r in rows]


def input_ref_from_dict(d: Mapping[str, Any]) -> InputRef:
    """An :class:`InputRef` from its JSON form as kept in ``runs.inputs``."""
    return InputRef(
        item_id=d.get("item_id"),
        version_id=d.get("version_id"),
        folder=d["folder"],
        name=d["name"],
        version=int(d["version"]),
        digest=d["digest"],
        size=int(d["size"]),
        content_type=d.get("content_type", "application/octet-stream"),
        metadata=d.get("metadata") or {},
    )


def input_ref_to_dict(r: InputRef) -> dict[str, Any]:
    """The JSON form of an :class:`InputRef`."""
    return {
        "item_id": r.item_id,
        "version_id": r.version_id,
        "folder": r.folder,
        "name": r.name,
        "version": r.version,
        "digest": r.digest,
        "size": r.size,
        "content_type": r.content_type,
        "metadata": dict(r.metadata),
    }


# ------------------------------------------------------------------------------------ state fold


def fold(records: Iterable[events.EventRecord]) -> dict[str, dict[int, dict[str, Any]]]:
    """Rebuild run and task state from events alone: ``{"runs": {id: {...}}, "tasks": {id: {...}}}``.

    This is the definition of run state; the tables are a cache of it.
    """
    runs: dict[int, dict[str, Any]] = {}
    tasks: dict[int, dict[str, Any]] = {}
    for ev in records:
        k = ev.kind
        if k == EventKind.RUN_QUEUED and ev.run_id is not None:
            runs[ev.run_id] = {"status": RunStatus.QUEUED.value, "cancel_requested": False}
        elif k == EventKind.RUN_STARTED and ev.run_id in runs:
            runs[ev.run_id]["status"] = RunStatus.RUNNING.value
        elif k == EventKind.RUN_CANCEL_REQUESTED and ev.run_id in runs:
            runs[ev.run_id]["cancel_requested"] = True
        elif k == EventKind.RUN_FINISHED and ev.run_id in runs:
            runs[ev.run_id]["status"] = ev.data["status"]
        elif k == EventKind.TASK_QUEUED and ev.task_id is not None:
            tasks[ev.task_id] = {"status": TaskStatus.QUEUED.value, "attempts": 0, "progress": 0.0}
        elif k == EventKind.TASK_STARTED and ev.task_id in tasks:
            tasks[ev.task_id].update(status=TaskStatus.RUNNING.value, attempts=ev.data["attempt"], progress=0.0)
        elif k == EventKind.TASK_PROGRESS and ev.task_id in tasks:
            tasks[ev.task_id]["progress"] = ev.data["progress"]
        elif k in (EventKind.TASK_RETRYING, EventKind.TASK_RECLAIMED) and ev.task_id in tasks:
            tasks[ev.task_id]["status"] = TaskStatus.QUEUED.value
            if "attempts" in ev.data:
                tasks[ev.task_id]["attempts"] = ev.data["attempts"]
        elif k == EventKind.TASK_FINISHED and ev.task_id in tasks:
            status = ev.data["status"]
            tasks[ev.task_id]["status"] = status
            if status in (TaskStatus.SUCCEEDED, TaskStatus.CACHED):
                tasks[ev.task_id]["progress"] = 1.0
    return {"runs": runs, "tasks": tasks}


def state_from_tables(conn: Connection) -> dict[str, dict[int, dict[str, Any]]]:
    """The same shape as :func:`fold`, read from the tables."""
    runs = {
        r.id: {"status": r.status, "cancel_requested": r.cancel_requested}
        for r in conn.execute(select(Run.id, Run.status, Run.cancel_requested))
    }
    tasks = {
        r.id: {"status": r.status, "attempts": r.attempts, "progress": r.progress}
        for r in conn.execute(select(Task.id, Task.status, Task.attempts, Task.progress))
    }
    return {"runs": runs, "tasks": tasks}
