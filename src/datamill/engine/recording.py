"""Recording task ends in batches: one transaction per batch, with the versions the tasks publish.

Recording many ends at once is what lets thousands of small tasks per second be recorded on
SQLite. When a batch leaves none of the run's tasks to do, the run ends in the same transaction.

A driver's pass is one *group commit* (:meth:`Recorder.commit`): the ends of the tasks that
finished since the last pass (with their outputs, published versions and events), then the claims
of the next ready tasks (with their ``task.started`` events), in one transaction. Readers see the
same events in the same order as when ends and claims were committed apart (ends first), and
since nothing of a batch is visible before its commit, a crash between two batches loses no
recorded end and records none twice: claimed tasks whose ends were not committed are requeued
when their lease expires, as before.
"""

from __future__ import annotations

import asyncio
import itertools
import operator
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection
from sqlalchemy import exc as sa_exc

from datamill.engine import ownership, runs, tasks
from datamill.engine.attempt import Job
from datamill.engine.ends import HELD_ELSEWHERE, Done
from datamill.engine.planner import Plan
from datamill.engine.publish import Publisher
from datamill.engine.runs import RunStatus
from datamill.engine.tasks import DONE_OK, FINISHED_TASK, OutputRecord, TaskRow, TaskStatus
from datamill.engine.workdir import WorkDirs
from datamill.home import Home
from datamill.store.access import Actor

#: whether an end's output blobs wait for a sync (read in C for a batch: no generator step per end)
_UNSYNCED = operator.attrgetter("unsynced")


def database_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the database could not be reached or used just now.

    Such errors are nobody's fault and pass: a run is not failed for them, it is driven again later.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError)):
            return True
        seen = seen.__cause__
    return False


@dataclass
class Claim:
    """Tasks to claim in a group commit, for ``owner`` under a lease, to run on ``executor``."""

    ids: list[int]
    owner: str
    lease_seconds: float
    executor: str
    #: digests of the items the claimed tasks read: their blob files are looked for before the transaction
    items: list[str] = field(default_factory=list)


@dataclass
class Committed:
    """What a group commit did: the run's final status if it ended, the ids claimed, a cancel seen."""

    final: RunStatus | None = None
    claimed: set[int] = field(default_factory=set)
    cancel: bool = False
    #: the run ended and the claimer's run lease was given back in the same transaction
    released: bool = False


@dataclass
class RunView:
    """One run as its driver sees it."""

    row: Any
    plan: Plan
    actor: Actor
    tasks: dict[str, TaskRow]
    running: dict[Job, TaskRow] = field(default_factory=dict)
    #: whether this driver has marked the run running (with its first claim)
    started: bool = False
    #: ends collected and not recorded yet: they go in the driver's next group commit
    finished: list[Done] = field(default_factory=list)
    #: the group commit in flight (at most one), with the tasks it claims: the driver keeps
    #: collecting ends of running tasks meanwhile, and starts the claimed ones once it is committed
    committing: asyncio.Future[Committed] | None = None
    claiming: list[TaskRow] = field(default_factory=list)
    _feeding: set[str] | None = None
    _order: list[TaskRow] | None = None
    _skip: int = 0

    def unfinished(self) -> Iterator[TaskRow]:
        """The run's tasks in plan order, from the first that has not finished.

        A finished task stays finished, so the finished ones at the front are skipped for good:
        a pass of a big run does not walk every task it already recorded.
        """
        if self._order is None:
            self._order = list(self.tasks.values())
        order, skip, end = self._order, self._skip, len(self._order)
        # in locals: the group commit's thread passes here once per task it ends
        while skip < end and order[skip].status in FINISHED_TASK:
            skip += 1
        self._skip = skip
        return itertools.islice(order, skip, None)

    def feeds_any(self, done: list[Done]) -> bool:
        """Whether any of the tasks in ``done`` is an input of another task of the run."""
        if not done:
            return False
        if self._feeding is None:
            self._feeding = {d for t in self.tasks.values() for d in t.deps}
        return any(d.task.planned_id in self._feeding for d in done)

    @property
    def run_id(self) -> int:
        """The run's id."""
        return int(self.row.id)

    @property
    def folder_id(self) -> int | None:
        """The folder the run's events are filed under."""
        folder: int | None = self.row.dest_folder_id
        return folder


class Recorder:
    """Records the ends of a home's tasks, publishing their outputs with ``publisher``."""

    def __init__(self, home: Home, publisher: Publisher, workdirs: WorkDirs) -> None:
        self.home = home
        self.publisher = publisher
        self.workdirs = workdirs

    def record(self, run: RunView, done: list[Done]) -> RunStatus | None:
        """Record a batch of task ends (with their outputs and published versions) in one transaction.

        When that leaves none of the run's tasks to do, the run ends in the same transaction; its
        final status is returned then. A task whose outputs cannot be published (an invalid name,
        no right to write any more, ...) fails, saying why; the other tasks of the batch are
        recorded as usual.
        """
        if not done:
            return None
        return self.commit(run, done).final

    def commit(
        self, run: RunView, done: list[Done], claim: Claim | None = None, answered: list[Done] | None = None
    ) -> Committed:
        """One group commit: record ``done`` (as :meth:`record`), then claim ``claim``, in one transaction.

        With a ``claim``, the run's cancel flag is read first in the same transaction: when its
        cancellation was asked for, ``cancel`` is True, the tasks that ran (``done``) are recorded
        and nothing else: neither the claims nor the ends of tasks ``answered`` without running
        (cache hits, tasks blocked by a failed input), which the cancellation ends instead.
        Nothing is claimed when the run ends with this batch, and the claimer's run lease is given
        back in its transaction (``released``). The first claim marks the run running.
        """
        got = Committed()
        answered = answered or []
        if not done and not answered and claim is None:
            return got
        log_digests = self._before(run, done + answered)
        if claim is not None and claim.items:
            self.workdirs.look_for_items(claim.items)
        with self.home.db.write() as conn:
            if claim is not None:
                got.cancel = runs.cancel_requested(conn, run.run_id)
            ends = done if got.cancel else done + answered
            if ends:
                got.final = self._end_tasks(conn, run, ends, log_digests)
            if got.final is not None and claim is not None:
                # The run ended: its lease goes with it, not in a transaction of its own after.
                ownership.release(conn, run.run_id, claim.owner)
                got.released = True
            if claim is not None and claim.ids and got.final is None and not got.cancel:
                if not run.started:
                    runs.start_run(conn, run.run_id, run.folder_id)
                got.claimed = set(
                    tasks.claim_tasks(conn, claim.ids, claim.owner, claim.lease_seconds, claim.executor, run.folder_id)
                )
        if claim is not None and claim.ids and not got.cancel:
            run.started = True
        for d in done:
            if d.log_path is not None:
                WorkDirs.remove(d.log_path, None)
        self.workdirs.remove_attempts([d.work_base for d in done if d.work_base is not None])
        return got

    def _before(self, run: RunView, done: list[Done]) -> dict[int, str | None]:
        """Outside the transaction: blobs and folders of published outputs, logs kept, one sync; log digests."""
        dest = run.row.dest_folder
        # Make sure the blobs of published outputs exist and subfolders are there, outside the transaction.
        for d in done if dest else ():
            if d.status not in DONE_OK or not d.publish:
                continue
            try:
                self.publisher.prepare(run.actor, dest, d)
            except Exception as exc:
                if database_outage(exc):
                    raise
                self.publisher.failed(d, dest, exc)
        # Most ends logged nothing (no log file made): keep_log would find nothing to keep for them.
        log_digests = {id(d): self.workdirs.keep_log(d.log_path, d.traceback) for d in done if d.log_path is not None}
        if any(map(_UNSYNCED, done)):
            # Output blobs were written without a sync each: one for the batch, before any row refers to them.
            self.home.blobs.sync()
        return log_digests

    def _end_tasks(
        self, conn: Connection, run: RunView, done: list[Done], log_digests: dict[int, str | None]
    ) -> RunStatus | None:
        """The transaction of :meth:`record`: requeue retries, publish and end the others, maybe end the run."""
        run_id, folder_id, dest = run.run_id, run.folder_id, run.row.dest_folder
        ends: list[tasks.TaskEnd] = []
        inputs: list[dict[str, Any]] = []
        # Tasks another scheduler ended meanwhile are left out (their rows stay locked until commit).
        endable = tasks.unfinished(conn, [d.task.id for d in done if d.retry_at is None])
        current = self.publisher.current_versions(conn, dest, [d for d in done if d.task.id in endable]) if dest else {}
        for d in done:
            t = d.task
            if d.retry_at is not None:
                tasks.requeue_task(conn, t.id, run_id, folder_id, d.retry_at, d.error or "")
                t.status = TaskStatus.QUEUED
                t.not_before = d.retry_at
                continue
            if t.id not in endable:
                t.status = HELD_ELSEWHERE
                continue
            # Without a destination nothing is published (no call per end); most ends consumed no
            # upstream output (their items were recorded at creation).
            outputs = self._publish(conn, run, d, current) if dest else d.outputs
            if d.inputs:
                inputs += [{"task_id": t.id, **i} for i in d.inputs]
            ends.append(
                tasks.TaskEnd(
                    t.id,
                    run_id,
                    d.status,
                    folder_id,
                    outputs,
                    d.error,
                    d.traceback,
                    log_digests.get(id(d)) if log_digests else None,
                    d.cached_from,
                    # Written only if the row has no key yet: ends that leave the column out of
                    # their UPDATE leave the key's index alone (see tasks.finish_tasks).
                    d.key if t.new_key else None,
                    d.failure,
                    d.note,
                )
            )
            t.status = d.status
            t.outputs = list(outputs)
            t.error = d.error
            t.note = d.note
        tasks.record_many_inputs(conn, inputs)
        tasks.finish_tasks(conn, ends, endable=endable)
        # The finished tasks at the front are skipped for good: a batch does not walk the whole run.
        if next(run.unfinished(), None) is None:
            return runs.finish_run_if_done(conn, run_id, folder_id)
        return None

    def _publish(self, conn: Connection, run: RunView, d: Done, current: dict[Any, Any]) -> list[OutputRecord]:
        """Publish a task's outputs, if it publishes any; its outputs as recorded (with version ids)."""
        dest = run.row.dest_folder
        if d.status not in DONE_OK or not dest or not d.publish:
            return d.outputs
        try:
            # A savepoint per task: a task that cannot publish leaves nothing half done.
            with conn.begin_nested():
                outputs, changes = self.publisher.publish(conn, run.actor, run.row, d, run.plan, current)
        except Exception as exc:
            if database_outage(exc):
                raise
            self.publisher.failed(d, dest, exc)
            return d.outputs
        current.update(changes)
        return outputs
