"""Runs and tasks as records: every state change is a row update plus an event, in one transaction.

The functions here take an open write connection, so the scheduler can batch many transitions
into one transaction (that is what makes thousands of recorded tasks per second possible on
SQLite). :func:`fold` rebuilds run and task state from the events alone; a property test checks
that it always equals what the tables say.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, or_, select, update

from datamill import events
from datamill.db.models import Event, Run, Task, TaskInput, TaskOutput
from datamill.events import EventKind


class RunStatus(StrEnum):
    """Where a run stands."""

    #: recorded; no task has started yet
    QUEUED = "queued"
    #: at least one task started and not all have ended
    RUNNING = "running"
    #: every task succeeded or was cached
    SUCCEEDED = "succeeded"
    #: every task ended and at least one failed
    FAILED = "failed"
    #: cancelled on request; unfinished tasks were cancelled
    CANCELLED = "cancelled"


class TaskStatus(StrEnum):
    """Where a task stands."""

    #: waiting for its inputs or for a free executor slot
    QUEUED = "queued"
    #: claimed by a scheduler (under a lease) and running on an executor
    RUNNING = "running"
    #: ran and recorded its outputs
    SUCCEEDED = "succeeded"
    #: ran out of attempts, or an input failed
    FAILED = "failed"
    #: its key was seen before; the earlier outputs were reused
    CACHED = "cached"
    #: the run was cancelled before the task ended
    CANCELLED = "cancelled"
    #: not run: it failed earlier on the same key (its note says in which run); not a new failure
    SKIPPED = "skipped"


FINISHED_TASK = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CACHED, TaskStatus.CANCELLED, TaskStatus.SKIPPED}
)
DONE_OK = frozenset({TaskStatus.SUCCEEDED, TaskStatus.CACHED})
FINISHED_RUN = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})

#: ``tasks.failure`` of a task whose step raised or exited non-zero after its retries: the same
#: key fails again, so runs made by triggers do not run it again (see :func:`failed_earlier`).
STEP_FAILURE = "step"


@dataclass(frozen=True)
class NewTask:
    """A planned task to record when its run is created."""

    planned_id: str
    step: str
    step_code: str
    key: str | None
    deps: Sequence[str]
    params: Mapping[str, Any]
    max_attempts: int = 1
    item_version_id: int | None = None
    item_name: str | None = None
    item_digest: str | None = None


@dataclass(frozen=True)
class OutputRecord:
    """One output of a task as stored: inline bytes for small outputs, else a blob digest."""

    name: str
    digest: str
    size: int
    content_type: str
    codec: str
    inline: bytes | None = None
    version_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (without inline bytes)."""
        return {
            "name": self.name,
            "digest": self.digest,
            "size": self.size,
            "content_type": self.content_type,
            "codec": self.codec,
            "version_id": self.version_id,
        }


@dataclass
class TaskRow:
    """A task as the engine reads it."""

    id: int
    run_id: int
    planned_id: str
    step: str
    step_code: str
    key: str | None
    status: str
    attempts: int
    max_attempts: int
    progress: float
    message: str
    item_version_id: int | None
    item_name: str | None
    deps: list[str]
    params: dict[str, Any]
    queued_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    traceback: str | None
    log_digest: str | None
    cached_from: int | None
    executor: str | None
    not_before: float | None = None
    #: why it failed (``step``, ``timeout``, ``input``, ``publish``, ...), for failed tasks
    failure: str | None = None
    #: how it ended, when that needs saying: "failed earlier (see run 3)", "superseded by run 9: ..."
    note: str | None = None
    outputs: list[OutputRecord] = field(default_factory=list)
    #: the scheduler's note that the cache had nothing for its key (not stored, not shown)
    cache_missed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        d = {k: v for k, v in self.__dict__.items() if k not in ("outputs", "cache_missed")}
        d["outputs"] = [o.to_dict() for o in self.outputs]
        return d


def _task_row(r: Any) -> TaskRow:
    return TaskRow(
        id=r.id,
        run_id=r.run_id,
        planned_id=r.planned_id,
        step=r.step,
        step_code=r.step_code,
        key=r.key,
        status=r.status,
        attempts=r.attempts,
        max_attempts=r.max_attempts,
        progress=r.progress,
        message=r.message,
        item_version_id=r.item_version_id,
        item_name=r.item_name,
        deps=list(r.deps or []),
        params=dict(r.params or {}),
        queued_at=r.queued_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
        error=r.error,
        traceback=r.traceback,
        log_digest=r.log_digest,
        cached_from=r.cached_from,
        executor=r.executor,
        not_before=r.not_before,
        failure=r.failure,
        note=r.note,
    )


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
) -> int:
    """Record a run and all its tasks (queued) with their events; returns the run id.

    ``folder_id`` is the folder the run's events are filed under (for access checks on the event
    stream): the destination, else the source. With ``skip_failed`` (runs made by triggers), a
    task whose key failed in the step before is not run again (see :func:`failed_earlier`).
    """
    now = time.time()
    run_id = int(
        conn.execute(
            insert(Run)
            .values(
                pipeline_ref=pipeline_ref,
                pipeline_name=pipeline_name,
                status=RunStatus.QUEUED,
                requested_at=now,
                requested_by=requested_by,
                reason=reason,
                force=force,
                params=dict(params or {}),
                source_folder=source_folder,
                dest_folder=dest_folder,
                dest_folder_id=dest_folder_id,
                dataflow_id=dataflow_id,
                dataflow_version=dataflow_version,
                executor=executor,
                parent_run_id=parent_run_id,
                skip_failed=skip_failed,
                inputs=list(inputs),
            )
            .returning(Run.id)
        ).scalar_one()
    )
    rows = [
        {
            "run_id": run_id,
            "planned_id": t.planned_id,
            "step": t.step,
            "step_code": t.step_code,
            "key": t.key,
            "status": TaskStatus.QUEUED,
            "attempts": 0,
            "max_attempts": t.max_attempts,
            "progress": 0.0,
            "message": "",
            "item_version_id": t.item_version_id,
            "item_name": t.item_name,
            "deps": list(t.deps),
            "params": dict(t.params),
            "queued_at": now,
        }
        for t in tasks
    ]
    ids: list[int] = []
    if rows:
        ids = [int(i) for i in conn.execute(insert(Task).returning(Task.id), rows).scalars().all()]
        # RETURNING over executemany keeps insertion order on both SQLite and PostgreSQL drivers,
        # but map by planned id anyway so nothing depends on it.
        by_planned = dict(conn.execute(select(Task.planned_id, Task.id).where(Task.run_id == run_id)).tuples().all())
        ids = [by_planned[t.planned_id] for t in tasks]
        item_inputs = [
            {"task_id": tid, "param": "item", "digest": t.item_digest, "version_id": t.item_version_id}
            for tid, t in zip(ids, tasks, strict=True)
            if t.item_version_id is not None and t.item_digest
        ]
        if item_inputs:
            conn.execute(insert(TaskInput), item_inputs)
    evs: list[dict[str, Any]] = [
        {
            "kind": EventKind.RUN_QUEUED,
            "run_id": run_id,
            "actor_id": requested_by,
            "folder_id": folder_id,
            "dataflow_id": dataflow_id,
            "data": {"pipeline": pipeline_name, "reason": reason, "tasks": len(rows), "force": force},
            "ts": now,
        }
    ]
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
    events.append_many(conn, evs)
    return run_id


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


def claim_tasks(
    conn: Connection, task_ids: Sequence[int], owner: str, lease_seconds: float, executor: str, folder_id: int | None
) -> list[int]:
    """Atomically claim queued tasks for ``owner``; returns the ids actually claimed.

    The ``status = 'queued'`` condition in the UPDATE is what keeps two schedulers from running
    the same task: only one UPDATE can flip each row.
    """
    if not task_ids:
        return []
    now = time.time()
    claimed = [
        int(i)
        for i in conn.execute(
            update(Task)
            .where(Task.id.in_(list(task_ids)), Task.status == TaskStatus.QUEUED)
            .values(
                status=TaskStatus.RUNNING,
                lease_owner=owner,
                lease_expires=now + lease_seconds,
                attempts=Task.attempts + 1,
                started_at=now,
                executor=executor,
                progress=0.0,
                message="",
            )
            .returning(Task.id)
        ).scalars()
    ]
    if claimed:
        rows = conn.execute(select(Task.id, Task.run_id, Task.attempts, Task.step).where(Task.id.in_(claimed))).all()
        events.append_many(
            conn,
            [
                {
                    "kind": EventKind.TASK_STARTED,
                    "run_id": r.run_id,
                    "task_id": r.id,
                    "folder_id": folder_id,
                    "data": {"attempt": r.attempts, "step": r.step, "executor": executor, "owner": owner},
                    "ts": now,
                }
                for r in rows
            ],
        )
    return claimed


def set_key(conn: Connection, task_id: int, key: str) -> None:
    """Record a task's key once its inputs are known."""
    conn.execute(update(Task).where(Task.id == task_id).values(key=key))


def record_inputs(conn: Connection, task_id: int, inputs: Iterable[Mapping[str, Any]]) -> None:
    """Record the exact upstream outputs a task consumed (item inputs are recorded at creation)."""
    record_many_inputs(conn, [{"task_id": task_id, **dict(i)} for i in inputs])


def record_many_inputs(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """:func:`record_inputs` for several tasks at once: each row names its ``task_id``."""
    if rows:
        conn.execute(insert(TaskInput), list(rows))


@dataclass(frozen=True)
class TaskEnd:
    """How a task ended, for :func:`finish_tasks`."""

    task_id: int
    run_id: int
    status: TaskStatus
    folder_id: int | None = None
    outputs: Sequence[OutputRecord] = ()
    error: str | None = None
    traceback: str | None = None
    log_digest: str | None = None
    cached_from: int | None = None
    key: str | None = None
    failure: str | None = None
    note: str | None = None


_UNFINISHED = (TaskStatus.QUEUED, TaskStatus.RUNNING)
_TASKS: Any = Task.__table__  # the Table, for a Core UPDATE with bind parameters

# One statement for every end, executed with many parameter sets (no IN list: executemany cannot
# expand one). ``None`` keeps a column as it is.
_FINISH = (
    update(_TASKS)
    .where(_TASKS.c.id == bindparam("b_id"), or_(*(_TASKS.c.status == s.value for s in _UNFINISHED)))
    .values(
        status=bindparam("b_status"),
        finished_at=bindparam("b_now"),
        error=bindparam("b_error"),
        traceback=bindparam("b_traceback"),
        lease_owner=None,
        lease_expires=None,
        progress=func.coalesce(bindparam("b_progress"), _TASKS.c.progress),
        log_digest=func.coalesce(bindparam("b_log_digest"), _TASKS.c.log_digest),
        cached_from=func.coalesce(bindparam("b_cached_from"), _TASKS.c.cached_from),
        key=func.coalesce(bindparam("b_key"), _TASKS.c.key),
        failure=bindparam("b_failure"),
        note=bindparam("b_note"),
    )
)


def unfinished(conn: Connection, task_ids: Sequence[int], owner: str | None = None) -> set[int]:
    """Which of ``task_ids`` may still be ended: queued, or running (under ``owner``'s lease, when given).

    On PostgreSQL the rows are locked until the transaction ends, so what this returns stays
    true until then; on SQLite the write transaction already excludes every other writer.
    """
    out: set[int] = set()
    for i in range(0, len(task_ids), 500):
        q = select(Task.id).where(Task.id.in_(task_ids[i : i + 500]), Task.status.in_(_UNFINISHED))
        if owner is not None:
            q = q.where(or_(Task.lease_owner == owner, Task.status == TaskStatus.QUEUED))
        out.update(conn.execute(q.with_for_update()).scalars())
    return out


def finish_tasks(conn: Connection, ends: Sequence[TaskEnd], owner: str | None = None) -> set[int]:
    """End tasks with their outputs, in a few statements for the whole batch; returns the ids ended.

    A task that had already ended (or, when ``owner`` is given, that another scheduler holds) is
    left alone and not returned, so a task ends exactly once even if two schedulers race on it.
    """
    ids = unfinished(conn, [e.task_id for e in ends], owner) if ends else set()
    todo = [e for e in ends if e.task_id in ids]
    if not todo:
        return set()
    now = time.time()
    conn.execute(
        _FINISH,
        [
            {
                "b_id": e.task_id,
                "b_status": str(e.status),
                "b_now": now,
                "b_error": e.error,
                "b_traceback": e.traceback,
                "b_progress": 1.0 if e.status in DONE_OK else None,
                "b_log_digest": e.log_digest,
                "b_cached_from": e.cached_from,
                "b_key": e.key,
                "b_failure": e.failure if e.status == TaskStatus.FAILED else None,
                "b_note": e.note,
            }
            for e in todo
        ],
    )
    outputs = [
        {
            "task_id": e.task_id,
            "name": o.name,
            "digest": o.digest,
            "size": o.size,
            "content_type": o.content_type,
            "codec": o.codec,
            "inline": o.inline,
            "version_id": o.version_id,
        }
        for e in todo
        for o in e.outputs
    ]
    if outputs:
        conn.execute(insert(TaskOutput), outputs)
    events.append_many(
        conn,
        [
            {
                "kind": EventKind.TASK_FINISHED,
                "run_id": e.run_id,
                "task_id": e.task_id,
                "folder_id": e.folder_id,
                "ts": now,
                "data": {
                    "status": str(e.status),
                    "error": e.error,
                    "outputs": [{"name": o.name, "digest": o.digest, "size": o.size} for o in e.outputs],
                    "cached_from": e.cached_from,
                    **({"note": e.note} if e.note else {}),
                },
            }
            for e in todo
        ],
    )
    return ids


def finish_task(
    conn: Connection,
    task_id: int,
    run_id: int,
    status: TaskStatus,
    folder_id: int | None,
    outputs: Sequence[OutputRecord] = (),
    error: str | None = None,
    traceback: str | None = None,
    log_digest: str | None = None,
    cached_from: int | None = None,
    key: str | None = None,
    owner: str | None = None,
    failure: str | None = None,
    note: str | None = None,
) -> bool:
    """End one task (see :func:`finish_tasks`); False if it had already ended (or another owner holds it)."""
    end = TaskEnd(
        task_id, run_id, status, folder_id, outputs, error, traceback, log_digest, cached_from, key, failure, note
    )
    return bool(finish_tasks(conn, [end], owner))


def requeue_task(
    conn: Connection, task_id: int, run_id: int, folder_id: int | None, not_before: float, error: str
) -> bool:
    """Put a failed attempt back in the queue for a retry after ``not_before``; False if it was not running.

    No event without a change: the task may have been reclaimed or ended meanwhile.
    """
    n = conn.execute(
        update(Task)
        .where(Task.id == task_id, Task.status == TaskStatus.RUNNING)
        .values(status=TaskStatus.QUEUED, not_before=not_before, error=error, lease_owner=None, lease_expires=None)
    ).rowcount
    if not n:
        return False
    events.append(
        conn,
        EventKind.TASK_RETRYING,
        run_id=run_id,
        task_id=task_id,
        folder_id=folder_id,
        data={"error": error, "not_before": not_before},
    )
    return True


def set_progress(
    conn: Connection, task_id: int, run_id: int, folder_id: int | None, fraction: float, message: str
) -> bool:
    """Record a running task's progress (0..1) and message; False (and no event) if it is not running.

    Progress can arrive after the task's end was recorded; it must not leave an event that
    :func:`fold` would apply to a finished task.
    """
    fraction = max(0.0, min(1.0, float(fraction)))
    n = conn.execute(
        update(Task)
        .where(Task.id == task_id, Task.status == TaskStatus.RUNNING)
        .values(progress=fraction, message=message[:1000])
    ).rowcount
    if not n:
        return False
    events.append(
        conn,
        EventKind.TASK_PROGRESS,
        run_id=run_id,
        task_id=task_id,
        folder_id=folder_id,
        data={"progress": fraction, "message": message[:1000]},
    )
    return True


def finish_run_if_done(conn: Connection, run_id: int, folder_id: int | None) -> RunStatus | None:
    """End the run when none of its tasks is queued or running; returns its final status then."""
    counts = dict(
        conn.execute(select(Task.status, func.count()).where(Task.run_id == run_id).group_by(Task.status))
        .tuples()
        .all()
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


def renew_leases(conn: Connection, owner: str, lease_seconds: float, run_ids: Sequence[int] | None = None) -> int:
    """Extend the leases ``owner`` holds (only on tasks of ``run_ids`` when given); returns how many.

    A scheduler renews only the tasks of runs it is driving: a task left running by a driver that
    failed then loses its lease, and is requeued (or failed) instead of being held for ever.
    """
    q = update(Task).where(Task.lease_owner == owner, Task.status == TaskStatus.RUNNING)
    if run_ids is not None:
        if not run_ids:
            return 0
        q = q.where(Task.run_id.in_(list(run_ids)))
    return int(conn.execute(q.values(lease_expires=time.time() + lease_seconds)).rowcount)


def requeue_orphans(conn: Connection, run_id: int, owner: str, folder_id: int | None) -> list[int]:
    """Requeue the tasks of ``run_id`` that ``owner`` holds but no driver of its own runs any more.

    A scheduler drives each run once at a time, so when it starts driving a run, every task of
    that run still running under its own lease was left by an earlier driver that failed. The
    attempt is given back, as when a lease expires.
    """
    rows = conn.execute(
        select(Task.id, Task.attempts).where(
            Task.run_id == run_id, Task.status == TaskStatus.RUNNING, Task.lease_owner == owner
        )
    ).all()
    out = []
    for r in rows:
        attempts = max(0, r.attempts - 1)
        n = conn.execute(
            update(Task)
            .where(Task.id == r.id, Task.status == TaskStatus.RUNNING, Task.lease_owner == owner)
            .values(status=TaskStatus.QUEUED, lease_owner=None, lease_expires=None, not_before=None, attempts=attempts)
        ).rowcount
        if n:
            events.append(
                conn,
                EventKind.TASK_RECLAIMED,
                run_id=run_id,
                task_id=r.id,
                folder_id=folder_id,
                data={"previous_owner": owner, "attempts": attempts},
            )
            out.append(r.id)
    return out


#: A task whose scheduler died this many times while holding it fails instead of being requeued.
MAX_RECLAIMS = 5


def reclaim_expired(conn: Connection, now: float | None = None) -> list[int]:
    """Requeue running tasks whose scheduler stopped renewing their lease (it died); returns their ids.

    The lost attempt is given back: a scheduler claims tasks in batches, and those it never
    started must not use up their retries. A task lost ``MAX_RECLAIMS`` times fails (it may be
    what kills its scheduler).
    """
    now = time.time() if now is None else now
    rows = conn.execute(
        select(Task.id, Task.run_id, Task.attempts, Task.lease_owner, Run.cancel_requested)
        .join(Run, Run.id == Task.run_id)
        .where(Task.status == TaskStatus.RUNNING, Task.lease_expires < now)
    ).all()
    out = []
    for r in rows:
        folder_id = run_folder_id(conn, r.run_id)
        if r.cancel_requested:
            # Nobody is left to stop it and nobody should run it again: the run ends now.
            finish_task(conn, r.id, r.run_id, TaskStatus.CANCELLED, folder_id, error="run cancelled")
            cancel_unheld(conn, r.run_id, folder_id, now)
            finish_run_if_done(conn, r.run_id, folder_id)
            continue
        lost = conn.execute(
            select(func.count())
            .select_from(Event)
            .where(Event.run_id == r.run_id, Event.task_id == r.id, Event.kind == EventKind.TASK_RECLAIMED)
        ).scalar_one()
        if lost + 1 >= MAX_RECLAIMS:
            finish_task(
                conn,
                r.id,
                r.run_id,
                TaskStatus.FAILED,
                folder_id,
                error=f"its scheduler died {lost + 1} times while running it; see the server log",
                failure="lost",
            )
            finish_run_if_done(conn, r.run_id, folder_id)
            continue
        attempts = max(0, r.attempts - 1)
        n = conn.execute(
            update(Task)
            .where(Task.id == r.id, Task.status == TaskStatus.RUNNING, Task.lease_expires < now)
            .values(status=TaskStatus.QUEUED, lease_owner=None, lease_expires=None, not_before=None, attempts=attempts)
        ).rowcount
        if n:
            events.append(
                conn,
                EventKind.TASK_RECLAIMED,
                run_id=r.run_id,
                task_id=r.id,
                folder_id=folder_id,
                data={"previous_owner": r.lease_owner, "attempts": attempts},
            )
            out.append(r.id)
    return out


# ------------------------------------------------------------------------------------ queries


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
    return {**run_dict(r), "counts": totals, "steps": by_step}


def run_dict(r: Any) -> dict[str, Any]:
    """A run row as a JSON-able dict."""
    return {
        "id": r.id,
        "pipeline_ref": r.pipeline_ref,
        "pipeline": r.pipeline_name,
        "status": r.status,
        "requested_at": r.requested_at,
        "requested_by": r.requested_by,
        "reason": r.reason,
        "force": r.force,
        "params": r.params,
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


def list_runs(
    conn: Connection, limit: int = 50, status: str | None = None, dataflow_id: int | None = None
) -> list[dict[str, Any]]:
    """Runs, newest request first."""
    q = select(Run).order_by(Run.id.desc()).limit(limit)
    if status:
        q = q.where(Run.status == status)
    if dataflow_id is not None:
        q = q.where(Run.dataflow_id == dataflow_id)
    return [run_dict(r) for r in conn.execute(q)]


def list_tasks(conn: Connection, run_id: int, with_outputs: bool = True) -> list[TaskRow]:
    """A run's tasks in creation order, with their outputs."""
    rows = [_task_row(r) for r in conn.execute(select(Task).where(Task.run_id == run_id).order_by(Task.id))]
    if with_outputs and rows:
        outs = conn.execute(
            select(TaskOutput).where(TaskOutput.task_id.in_([t.id for t in rows])).order_by(TaskOutput.id)
        ).all()
        by_task: dict[int, list[OutputRecord]] = {}
        for o in outs:
            by_task.setdefault(o.task_id, []).append(_output(o))
        for t in rows:
            t.outputs = by_task.get(t.id, [])
    return rows


def task_log_states(conn: Connection, task_ids: Iterable[int]) -> dict[int, tuple[str, str | None]]:
    """``task id -> (status, log digest)`` for the tasks that exist: what a log follower waits for."""
    ids = sorted(set(task_ids))
    out: dict[int, tuple[str, str | None]] = {}
    for i in range(0, len(ids), 500):
        rows = conn.execute(select(Task.id, Task.status, Task.log_digest).where(Task.id.in_(ids[i : i + 500])))
        out.update((int(r.id), (str(r.status), r.log_digest)) for r in rows)
    return out


def get_task(conn: Connection, task_id: int) -> TaskRow | None:
    """One task with its outputs."""
    r = conn.execute(select(Task).where(Task.id == task_id)).first()
    if r is None:
        return None
    t = _task_row(r)
    t.outputs = [
        _output(o)
        for o in conn.execute(select(TaskOutput).where(TaskOutput.task_id == task_id).order_by(TaskOutput.id))
    ]
    return t


def _output(o: Any) -> OutputRecord:
    return OutputRecord(
        name=o.name,
        digest=o.digest,
        size=o.size,
        content_type=o.content_type,
        codec=o.codec,
        inline=o.inline,
        version_id=o.version_id,
    )


def lookup_cache(conn: Connection, key: str) -> tuple[int, list[OutputRecord]] | None:
    """The newest succeeded task with ``key`` and its outputs, if any."""
    tid = conn.execute(
        select(Task.id)
        .where(Task.key == key, Task.status == TaskStatus.SUCCEEDED)
        .order_by(Task.finished_at.desc())
        .limit(1)
    ).scalar()
    if tid is None:
        return None
    outs = conn.execute(select(TaskOutput).where(TaskOutput.task_id == tid).order_by(TaskOutput.id)).all()
    return int(tid), [_output(o) for o in outs]


def failed_earlier(conn: Connection, keys: Sequence[str]) -> dict[str, int]:
    """For each of ``keys`` whose step failed before (``failure = 'step'``): the newest run it failed in.

    One query per 500 keys, as cache look-ups are: a run made by a trigger asks this for all its
    ready tasks at once.
    """
    out: dict[str, int] = {}
    for i in range(0, len(keys), 500):
        rows = conn.execute(
            select(Task.key, func.max(Task.run_id))
            .where(Task.key.in_(keys[i : i + 500]), Task.status == TaskStatus.FAILED, Task.failure == STEP_FAILURE)
            .group_by(Task.key)
        ).all()
        out.update({str(k): int(r) for k, r in rows if k is not None})
    return out


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
