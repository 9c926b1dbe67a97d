"""Task leases: a running task is held by the scheduler whose claim set its lease, for as long as it renews it.

A scheduler that dies stops renewing; its tasks are then requeued (their lost attempt given back)
or, after :data:`MAX_RECLAIMS` losses, failed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import Connection, func, select, update

from datamill import events
from datamill.db.models import Event, Run, Task
from datamill.engine.runs import cancel_unheld, finish_run_if_done, run_folder_id
from datamill.engine.tasks import TaskStatus, finish_task


def any_expired(conn: Connection, now: float, run_id: int | None = None) -> bool:
    """Whether a running task (of ``run_id``, when given) has a lease that expired before ``now``."""
    q = select(Task.id).where(Task.status == TaskStatus.RUNNING, Task.lease_expires < now)
    if run_id is not None:
        q = q.where(Task.run_id == run_id)
    return conn.execute(q.limit(1)).first() is not None


def holds_any(conn: Connection, run_id: int, owner: str) -> bool:
    """Whether ``owner`` holds a running task of ``run_id``."""
    q = select(Task.id).where(Task.run_id == run_id, Task.status == TaskStatus.RUNNING, Task.lease_owner == owner)
    return conn.execute(q.limit(1)).first() is not None


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
                "task.reclaimed",
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
            .where(Event.run_id == r.run_id, Event.task_id == r.id, Event.kind == "task.reclaimed")
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
                "task.reclaimed",
                run_id=r.run_id,
                task_id=r.id,
                folder_id=folder_id,
                data={"previous_owner": r.lease_owner, "attempts": attempts},
            )
            out.append(r.id)
    return out
