"""Who drives a run: one scheduler at a time, under a lease it renews, taken over when it lapses.

Many ``datamill worker`` (and ``datamill up``) processes share one database. Each process's
scheduler looks for pending runs; were every scheduler to drive every run, they would all plan it,
race for its ready tasks and wait on each other's (measured: three workers recorded half the
tasks per second of one). So before a scheduler's service loop drives a run, it claims the run's
row in ``run_owners``: a conditional ``UPDATE`` (the row is its own, or its lease expired) or an
``INSERT`` only one can win, atomic on SQLite and PostgreSQL alike. The owner renews the lease
with its task leases (every third of ``lease_seconds``) and gives it up when its driver returns;
a scheduler that dies stops renewing, and once ``expires_at`` passes (when its task leases lapse
too) another scheduler claims the run and drives it on. Other schedulers take other runs.

One run of long tasks would leave the other schedulers idle, so the owner asks for help
(``wants_help``, set at each renewal by :func:`ask_for_help`, told with a ``run.help_wanted`` event)
while a task it holds has waited or run for :data:`HELP_AFTER_SECONDS` and others are queued; then
any scheduler may drive the run too, claiming its ready tasks under their task leases. Short tasks
never ask: helpers would only race the owner for them (what made several workers slower than one).

A scheduler that stops gracefully gives its runs back with a ``run.released`` event
(:func:`hand_back`). Both events are in the ``run`` family that idle schedulers wait for, so another
takes the run (or helps) at once; their timed look for lapsed leases is left for schedulers that die.

The run lease only keeps schedulers out of each other's way; exactly-once stays with the task
leases (:mod:`.leases`): a task runs only under the claim that set its lease, whoever drives.
``Engine.run`` and ``datamill run`` (a run executed in the caller's process) claim the lease too,
so workers keep off, but drive their run whatever the answer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, exists, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from datamill import events
from datamill.db.models import Run, RunOwner, Task
from datamill.engine.tasks import TaskStatus
from datamill.events import EventKind
from datamill.records import FINISHED_RUN

#: A run's owner asks for help when a task it holds has waited or run this long while others queue.
HELP_AFTER_SECONDS = 10.0


def claim(conn: Connection, run_id: int, owner: str, lease_seconds: float, now: float | None = None) -> bool:
    """Take or renew ``owner``'s lease on the run (in the caller's write transaction); False when another holds it."""
    now = time.time() if now is None else now
    values: dict[str, object] = {"owner": owner, "expires_at": now + lease_seconds, "updated_at": now}
    taken = conn.execute(
        update(RunOwner)
        .where(RunOwner.run_id == run_id, (RunOwner.owner == owner) | (RunOwner.expires_at < now))
        .values(**values)
    ).rowcount
    if taken:
        return True
    make = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    # On a conflict the row exists and is live: another scheduler's (it may have won just now).
    stmt = (
        make(RunOwner)
        .values(run_id=run_id, wants_help=False, **values)
        .on_conflict_do_nothing(index_elements=["run_id"])
    )
    # RETURNING, not rowcount: the PostgreSQL driver gives -1 for an INSERT ... ON CONFLICT.
    return conn.execute(stmt.returning(RunOwner.run_id)).first() is not None


def claim_new(conn: Connection, run_id: int, owner: str, lease_seconds: float, now: float | None = None) -> bool:
    """:func:`claim` for a run recorded in the caller's write transaction: no lease can exist on it
    yet, so one ``INSERT`` (no ``UPDATE`` first); False if one does after all."""
    now = time.time() if now is None else now
    stmt = _CLAIM_NEW_PG if conn.dialect.name == "postgresql" else _CLAIM_NEW_SQLITE
    values = {"run_id": run_id, "owner": owner, "expires_at": now + lease_seconds, "updated_at": now}
    return conn.execute(stmt, {**values, "wants_help": False}).first() is not None


def _claim_new(make: Any) -> Any:
    """The statement of :func:`claim_new` for one dialect's ``insert`` (built once: one per recorded run)."""
    return make(RunOwner).on_conflict_do_nothing(index_elements=["run_id"]).returning(RunOwner.run_id)


_CLAIM_NEW_PG = _claim_new(pg_insert)
_CLAIM_NEW_SQLITE = _claim_new(sqlite_insert)


def renew(conn: Connection, owner: str, lease_seconds: float, run_ids: Sequence[int]) -> set[int]:
    """Extend ``owner``'s leases on ``run_ids``; the runs it no longer holds (another took them over)."""
    if not run_ids:
        return set()
    now = time.time()
    conn.execute(
        update(RunOwner)
        .where(RunOwner.owner == owner, RunOwner.run_id.in_(list(run_ids)))
        .values(expires_at=now + lease_seconds, updated_at=now)
    )
    held = conn.execute(
        select(RunOwner.run_id).where(RunOwner.owner == owner, RunOwner.run_id.in_(list(run_ids)))
    ).scalars()
    return set(run_ids) - set(held)


def release(conn: Connection, run_id: int, owner: str) -> bool:
    """Give up ``owner``'s lease on the run at once (no-op when it is not the owner); whether it held it."""
    return bool(conn.execute(delete(RunOwner).where(RunOwner.run_id == run_id, RunOwner.owner == owner)).rowcount)


def hand_back(conn: Connection, run_id: int, owner: str) -> bool:
    """Give up ``owner``'s lease on a run it stops driving before the run ended (a graceful stop),
    with a ``run.released`` event: other schedulers wait for run events, so one takes the run over
    at once instead of at its next timed look. Whether an event was needed (the lease was held and
    the run has not ended: an ended run said so with ``run.finished``)."""
    if not release(conn, run_id, owner):
        return False
    row = conn.execute(select(Run.status, Run.dest_folder_id).where(Run.id == run_id)).first()
    if row is None or row.status in FINISHED_RUN:
        return False
    events.append(conn, EventKind.RUN_RELEASED, run_id=run_id, folder_id=row.dest_folder_id, data={"owner": owner})
    return True


def owned_elsewhere(conn: Connection, run_ids: Sequence[int], owner: str, now: float | None = None) -> set[int]:
    """Which of ``run_ids`` another scheduler drives under a live lease."""
    if not run_ids:
        return set()
    now = time.time() if now is None else now
    q = select(RunOwner.run_id).where(
        RunOwner.run_id.in_(list(run_ids)),
        RunOwner.owner != owner,
        RunOwner.expires_at >= now,
        RunOwner.wants_help.is_(False),
    )
    return set(conn.execute(q).scalars())


def wants_help(conn: Connection, run_id: int) -> bool:
    """Whether the run's owner asks other schedulers to drive it too."""
    q = select(RunOwner.wants_help).where(RunOwner.run_id == run_id)
    return bool(conn.execute(q).scalar_one_or_none())


def ask_for_help(
    conn: Connection, owner: str, run_ids: Sequence[int], now: float | None = None, after: float = HELP_AFTER_SECONDS
) -> set[int]:
    """Set ``wants_help`` on ``owner``'s runs: where a task it holds started ``after`` seconds ago or
    more and another task is queued; cleared elsewhere. Returns the runs that want help."""
    now = time.time() if now is None else now
    out: set[int] = set()
    for run_id in run_ids:
        slow = exists().where(
            Task.run_id == run_id,
            Task.status == TaskStatus.RUNNING,
            Task.lease_owner == owner,
            Task.started_at < now - after,
        )
        queued = exists().where(Task.run_id == run_id, Task.status == TaskStatus.QUEUED)
        want = bool(conn.execute(select(slow & queued)).scalar())
        changed = conn.execute(
            update(RunOwner)
            .where(RunOwner.run_id == run_id, RunOwner.owner == owner, RunOwner.wants_help.is_not(want))
            .values(wants_help=want)
        ).rowcount
        if want and changed:
            # Other schedulers wait for run events: told, they help at once, not at their next timed
            # look (which stays, for an owner that dies). Asked once, not at every renewal.
            folder_id = conn.execute(select(Run.dest_folder_id).where(Run.id == run_id)).scalar()
            events.append(conn, EventKind.RUN_HELP_WANTED, run_id=run_id, folder_id=folder_id, data={"owner": owner})
        if want:
            out.add(run_id)
    return out


def owner_of(conn: Connection, run_id: int, now: float | None = None) -> str | None:
    """The scheduler driving the run under a live lease, or None."""
    now = time.time() if now is None else now
    q = select(RunOwner.owner).where(RunOwner.run_id == run_id, RunOwner.expires_at >= now)
    return conn.execute(q).scalar_one_or_none()
