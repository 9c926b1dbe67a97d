"""The scheduler: drives recorded runs to completion, sending ready tasks to an executor.

One loop per run (:meth:`Scheduler.drive`) repeats: find ready tasks (queued, inputs done),
compute keys now known, answer cache hits in one transaction, claim the rest atomically (with a
lease) up to the executor's capacity, and record whatever finished in one transaction. Batching
is what lets thousands of tasks per second be recorded on SQLite.

Several schedulers (processes) may drive the same home or PostgreSQL database: a task is run only
by the scheduler whose UPDATE claimed it, ends only once (the end is conditional on its status),
and a task whose scheduler died is requeued when its lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, update
from sqlalchemy import exc as sa_exc

from datamill.db.models import Run, Task, TaskOutput
from datamill.engine import runs
from datamill.engine.planner import Plan, PlannedTask, collision_message, plan
from datamill.engine.runs import OutputRecord, RunStatus, TaskRow, TaskStatus
from datamill.errors import (
    Cancelled,
    Conflict,
    DatamillError,
    InvalidPipeline,
    StepFailed,
    TaskTimeout,
    WorkerCrashed,
)
from datamill.executors.base import Executor, LogMessage, Message, ProgressMessage, PythonCall, get_executor
from datamill.home import Home
from datamill.pipeline import Pipeline, load_pipeline
from datamill.pipeline.inputs import InputRef
from datamill.pipeline.runner import OutputFile, run_step
from datamill.store.access import Actor, Level, level_on
from datamill.store.blobs import BlobInfo, LocalBlobStore, digest_bytes
from datamill.store.names import join_path
from datamill.store.store import guess_content_type

log = logging.getLogger("datamill.scheduler")

#: Outputs up to this size are kept in the database row instead of as a blob file: a trivial
#: task then costs no file write and fsync.
INLINE_LIMIT = 4096

#: How many ready tasks one pass of a run's driver considers: enough to fill the executor and to
#: answer cache hits in batches, without walking every queued task of a big run on every pass.
READY_BATCH = 500

#: How often a run's driver looks again at tasks another scheduler holds, when it waits for them.
HELD_POLL_SECONDS = 0.25

#: The status a driver gives, in its own view, to a task another scheduler holds (never stored).
HELD_ELSEWHERE = "elsewhere"
#: Longest error message kept on a task row.
MAX_ERROR = 2000

#: A run whose driver failed without its end being recorded (the database was unreachable) is
#: driven again after this many seconds, doubled on each failure up to :data:`MAX_BACKOFF_SECONDS`.
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0


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


class _Collision(Conflict):
    """An output would replace another input's output in the destination (see :func:`collision_message`)."""


@dataclass
class _Current:
    """The current version of a destination item, as the publishing rules need it."""

    version_id: int
    digest: str
    #: the newest run that published this version or recorded it as its output (0: none)
    run: int
    #: the input item (``folder/name``) a per-item task derived it from, else None
    item: str | None


@dataclass
class _Done:
    """A task's end, computed off the database and recorded later in a batch."""

    task: TaskRow
    planned: PlannedTask
    status: TaskStatus
    outputs: list[OutputRecord] = field(default_factory=list)
    publish: list[tuple[str, str, str]] = field(default_factory=list)  # (output name, published name, ctype)
    error: str | None = None
    traceback: str | None = None
    cached_from: int | None = None
    key: str | None = None
    retry_at: float | None = None
    log_path: Path | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    work_dir: Path | None = None
    #: why it failed (see ``tasks.failure``); ``step`` makes the key fail earlier for later runs
    failure: str | None = None
    note: str | None = None
    #: the published name being recorded, named if recording it fails
    publishing: str | None = None


def _content_type(name: str, produced: str) -> str:
    """The type to publish under: a generic type from a step yields to what the name says (``.png``)."""
    if produced.split(";")[0] in ("application/octet-stream", "text/plain"):
        guessed = guess_content_type(name)
        if guessed != "application/octet-stream":
            return guessed
    return produced


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


class Scheduler:
    """Runs queued runs of one home on one executor."""

    def __init__(
        self,
        home: Home,
        executor: Executor | str | None = None,
        *,
        workers: int | None = None,
        lease_seconds: float | None = None,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.home = home
        name = executor if isinstance(executor, str) else None
        if executor is None or isinstance(executor, str):
            name = name or home.settings.executor
            opts: dict[str, Any] = {}
            if name == "local":
                opts["workers"] = workers if workers is not None else (home.settings.workers or 0)
            self.executor: Executor = get_executor(name, **opts)
        else:
            self.executor = executor
        self.lease_seconds = home.settings.lease_seconds if lease_seconds is None else lease_seconds
        self.owner = owner or f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.work_root = home.path / "work"
        self.log_root = home.path / "logs"
        self.log_root.mkdir(parents=True, exist_ok=True)
        #: pipelines without a reference (built in Python), by run id; they cannot resume elsewhere
        self.pipelines: dict[int, Pipeline] = {}
        self._ref_cache: dict[str, Pipeline] = {}
        self._active: dict[int, asyncio.Task[Any]] = {}
        self._started = False
        self._slots: asyncio.Semaphore | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        #: runs whose driver failed without recording their end: (monotonic time to retry, failures)
        self._backoff: dict[int, tuple[float, int]] = {}
        #: how often runs were driven (``drives``) and driver loops went round (``passes``): an idle
        #: scheduler leaves both alone, which tests check
        self.stats: Counter[str] = Counter()

    # ------------------------------------------------------------------ lifecycle

    @property
    def capacity(self) -> int:
        """How many tasks this scheduler keeps in flight."""
        cap = self.executor.capacity
        # Claiming and recording in batches is what makes small tasks cheap: keep many in flight
        # (a pool queues them for its workers), so each pass of the driver records many ends.
        return 256 if cap is None else max(16, max(1, cap) * 8)

    async def start(self) -> None:
        """Start the executor and the lease heartbeat."""
        if self._started:
            return
        await self.executor.start()
        self._slots = asyncio.Semaphore(self.capacity)
        self._heartbeat = asyncio.create_task(self._renew_leases())
        self._started = True

    async def close(self) -> None:
        """Stop driving runs (their tasks stay claimed until their leases expire) and close the executor."""
        for t in list(self._active.values()):
            t.cancel()
        for t in list(self._active.values()):
            with contextlib.suppress(BaseException):
                await t
        self._active.clear()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(BaseException):
                await self._heartbeat
        await self.executor.close()
        self._started = False

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                # Read here, in the loop's thread, where drivers come and go.
                await asyncio.to_thread(self._renew_now, list(self._active))
            except DatamillError:
                log.exception("could not renew task leases")

    def _renew_now(self, run_ids: list[int]) -> None:
        # Only the tasks of runs a driver of ours is driving: a task whose driver failed loses its
        # lease, and is requeued or failed instead of being held for ever.
        with self.home.db.write() as conn:
            runs.renew_leases(conn, self.owner, self.lease_seconds, run_ids)

    # ------------------------------------------------------------------ finding work

    def pending_runs(self) -> list[int]:
        """Runs with work to do (oldest request first), after requeueing expired tasks.

        That is queued or running runs with a queued task, or with no task left to end (they only
        need ending). A run whose remaining tasks all run under a live lease is left to the
        scheduler holding them: driving it here would only watch it, on every poll.
        """
        now = self.clock()
        has_queued = select(Task.id).where(Task.run_id == Run.id, Task.status == TaskStatus.QUEUED).exists()
        unfinished = (
            select(Task.id)
            .where(Task.run_id == Run.id, Task.status.in_([TaskStatus.QUEUED, TaskStatus.RUNNING]))
            .exists()
        )
        pending = (
            select(Run.id)
            .where(Run.status.in_([RunStatus.QUEUED, RunStatus.RUNNING]), or_(has_queued, ~unfinished))
            .order_by(Run.id)
        )
        with self.home.db.read() as conn:
            # Usually no lease has expired: the write lock is taken only when one has.
            expired = conn.execute(
                select(Task.id).where(Task.status == TaskStatus.RUNNING, Task.lease_expires < now).limit(1)
            ).first()
            if expired is None:
                return list(conn.execute(pending).scalars())
        with self.home.db.write() as conn:
            runs.reclaim_expired(conn, now)
        with self.home.db.read() as conn:
            return list(conn.execute(pending).scalars())

    async def run_until_idle(self, run_ids: list[int] | None = None) -> None:
        """Drive the given runs (all pending ones by default) until none has work this scheduler can do."""
        await self.start()
        while True:
            ids = run_ids if run_ids is not None else self.pending_runs()
            todo = [i for i in ids if i not in self._active and not self._backing_off(i)]
            if not todo and not self._active:
                return
            for rid in todo:
                self._spawn(rid)
            await asyncio.wait(list(self._active.values()), return_when=asyncio.ALL_COMPLETED)
            if run_ids is not None:
                return

    async def serve(self, stop: asyncio.Event, poll: float = 0.5) -> None:
        """Drive runs as they are recorded until ``stop`` is set."""
        await self.start()
        while not stop.is_set():
            try:
                # The newest event is read first, so that a run recorded meanwhile ends the next wait.
                cursor, pending = await asyncio.to_thread(lambda: (self.home.events.latest(), self.pending_runs()))
            except Exception:
                # The database may be unreachable for a while: the service must outlive that.
                log.exception("could not look for runs; trying again")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll)
                continue
            for rid in pending:
                if rid not in self._active and not self._backing_off(rid):
                    self._spawn(rid)
            # Wake on any new event (a run was queued) or after ``poll`` to reclaim leases.
            await self.home.events.wait_or_stop(cursor, poll, stop)

    def drive_now(self, run_ids: list[int]) -> None:
        """Start driving runs just recorded in this process, without waiting for :meth:`serve` to notice them."""
        for rid in run_ids:
            if rid not in self._active:
                self._spawn(rid)

    def _spawn(self, run_id: int) -> None:
        task = asyncio.create_task(self._drive_safely(run_id), name=f"datamill-run-{run_id}")
        self._active[run_id] = task
        task.add_done_callback(lambda _t, rid=run_id: self._active.pop(rid, None))  # type: ignore[misc]

    def _backing_off(self, run_id: int) -> bool:
        wait = self._backoff.get(run_id)
        return wait is not None and time.monotonic() < wait[0]

    def _back_off(self, run_id: int) -> None:
        failures = self._backoff.get(run_id, (0.0, 0))[1] + 1
        delay = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** (failures - 1))
        self._backoff[run_id] = (time.monotonic() + delay, failures)

    async def _drive_safely(self, run_id: int) -> None:
        """Drive a run; if its driver fails, end the run as failed with the reason (never leave it running).

        Only when even that cannot be recorded (the database is unreachable) is the run left as it
        is, to be driven again after a growing delay instead of on every poll.
        """
        self.stats["drives"] += 1
        try:
            await self.drive(run_id)
            self._backoff.pop(run_id, None)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if database_outage(exc):
                log.warning("run %s: the database failed under its driver (%s); trying again later", run_id, exc)
                self._back_off(run_id)
                return
            log.exception("run %s failed in the scheduler", run_id)
            message = f"scheduler error: {type(exc).__name__}: {exc}"
        try:
            await asyncio.to_thread(self._fail_run, run_id, message[:MAX_ERROR])
            self._backoff.pop(run_id, None)
        except Exception:
            log.exception("run %s: could not record that it failed; trying again later", run_id)
            self._back_off(run_id)

    def _fail_run(self, run_id: int, message: str) -> None:
        """End a run that cannot be driven (its pipeline does not load, a bug, ...), saying why.

        Its queued tasks fail, and so do the tasks this scheduler was running for it (their driver
        is gone); tasks another scheduler runs end there, and the run ends failed with them.
        """
        with self.home.db.write() as conn:
            folder_id = runs.run_folder_id(conn, run_id)
            conn.execute(update(Run).where(Run.id == run_id).values(error=message))
            ids = conn.execute(
                select(Task.id).where(
                    Task.run_id == run_id,
                    or_(
                        Task.status == TaskStatus.QUEUED,
                        and_(Task.status == TaskStatus.RUNNING, Task.lease_owner == self.owner),
                    ),
                )
            ).scalars()
            ends = [
                runs.TaskEnd(tid, run_id, TaskStatus.FAILED, folder_id, error=message, failure="scheduler")
                for tid in ids
            ]
            runs.finish_tasks(conn, ends)
            runs.finish_run_if_done(conn, run_id, folder_id)

    # ------------------------------------------------------------------ one run

    def pipeline_for(self, run_id: int, ref: str) -> Pipeline:
        """The pipeline of a run: registered in-process, or loaded from its reference."""
        if run_id in self.pipelines:
            return self.pipelines[run_id]
        if not ref or ref.startswith("<"):
            raise InvalidPipeline(
                f"run {run_id} used a pipeline built in Python ({ref or 'no reference'}) by a process that "
                "has ended; it cannot be resumed elsewhere. Start a new run from a module or file reference."
            )
        if ref not in self._ref_cache:
            self._ref_cache[ref] = load_pipeline(ref)
        return self._ref_cache[ref]

    def _load_run(self, run_id: int) -> tuple[Any, Plan, Actor, dict[str, TaskRow]]:
        with self.home.db.read() as conn:
            orphans = conn.execute(
                select(Task.id)
                .where(Task.run_id == run_id, Task.status == TaskStatus.RUNNING, Task.lease_owner == self.owner)
                .limit(1)
            ).first()
        if orphans is not None:
            # Left running by an earlier driver of ours that failed: nobody runs them any more.
            with self.home.db.write() as conn:
                runs.requeue_orphans(conn, run_id, self.owner, runs.run_folder_id(conn, run_id))
        with self.home.db.read() as conn:
            row = conn.execute(select(Run).where(Run.id == run_id)).first()
            if row is None:
                raise DatamillError(f"no run {run_id}")
            tasks = runs.list_tasks(conn, run_id)
        pipeline = self.pipeline_for(run_id, row.pipeline_ref)
        inputs = [input_ref_from_dict(d) for d in row.inputs or []]
        the_plan = plan(pipeline, inputs, row.params.get("steps") if row.params else None)
        actor = self.home.admin
        if row.requested_by is not None and row.requested_by != self.home.admin.id:
            from datamill.db.models import User

            with self.home.db.read() as conn:
                u = conn.execute(select(User.id, User.name, User.is_admin).where(User.id == row.requested_by)).first()
            if u is not None:
                actor = Actor(u.id, u.name, u.is_admin)
        return row, the_plan, actor, {t.planned_id: t for t in tasks}

    async def drive(self, run_id: int) -> RunStatus | None:
        """Run the tasks of one run that this scheduler can claim, until the run ends or nothing is left for it.

        Tasks another scheduler holds are waited for when queued tasks need them (and requeued
        here if that scheduler dies and their leases expire), so a run driven by several
        schedulers still ends. Returns the run's final status, or None when the last tasks are
        another scheduler's to finish.
        """
        await self.start()
        row, the_plan, actor, tasks = await asyncio.to_thread(self._load_run, run_id)
        folder_id = row.dest_folder_id
        if row.status in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED):
            return RunStatus(row.status)
        for t in tasks.values():
            if t.status == TaskStatus.RUNNING:  # claimed by another scheduler (or one that died)
                t.status = HELD_ELSEWHERE
        forced = bool(row.force)
        running: dict[asyncio.Task[_Done], TaskRow] = {}
        started = False
        fresh = True  # the run's row was just read: its cancel flag needs no second look on the first pass
        try:
            while True:
                self.stats["passes"] += 1
                if fresh:
                    cancel, fresh = bool(row.cancel_requested), False
                else:
                    cancel = await asyncio.to_thread(self._cancel_requested, run_id)
                if cancel:
                    for job in running:
                        job.cancel()
                    done = await self._collect(running, wait=True)
                    await asyncio.to_thread(self._record, row, actor, the_plan, done, tasks)
                    # Tasks requeued since the request (a retry, a reclaimed lease) end here too.
                    return await asyncio.to_thread(self._finish, run_id, folder_id, True)
                now = self.clock()
                ready: list[TaskRow] = []
                blocked: list[_Done] = []
                for t in tasks.values():
                    if len(ready) >= READY_BATCH:
                        break  # the rest wait for a later pass
                    if t.status != TaskStatus.QUEUED:  # claimed tasks are RUNNING until their end is recorded
                        continue
                    deps = [tasks[d] for d in t.deps]
                    pt = the_plan.task(t.planned_id)
                    if pt.refused is not None:  # its output would replace another input's
                        blocked.append(_Done(t, pt, TaskStatus.FAILED, error=pt.refused, failure="collision"))
                        continue
                    # An aggregate sees every item: a failed item reaches it as None instead of
                    # failing it, so one malformed file does not stop the summary of the others.
                    tolerated = {tid for w in pt.wires if w.many for tid in w.tasks}
                    bad = [
                        d
                        for d in deps
                        if d.status in (TaskStatus.FAILED, TaskStatus.CANCELLED) and d.planned_id not in tolerated
                    ]
                    if bad:
                        blocked.append(
                            _Done(
                                t,
                                pt,
                                TaskStatus.FAILED,
                                error=f"input {bad[0].planned_id} {bad[0].status}",
                                failure="input",
                            )
                        )
                        continue
                    skipped = [d for d in deps if d.status == TaskStatus.SKIPPED and d.planned_id not in tolerated]
                    if skipped:  # not run for the same reason as its input: not a new failure either
                        first = skipped[0]
                        note = first.note or "was skipped"
                        if not note.startswith("its input "):  # name the task that failed, not the chain
                            note = f"its input {first.planned_id} {note}"
                        blocked.append(_Done(t, pt, TaskStatus.SKIPPED, note=note))
                        continue
                    if all(d.status in runs.FINISHED_TASK for d in deps) and (t.not_before or 0) <= now:
                        ready.append(t)
                hits, to_run = await asyncio.to_thread(
                    self._resolve_keys, the_plan, ready, tasks, forced, bool(row.skip_failed)
                )
                if blocked or hits:
                    final = await asyncio.to_thread(
                        self._record, row, actor, the_plan, blocked + hits, tasks
                    )
                    if final is not None:
                        return final
                    continue
                free = self.capacity - len(running)
                if to_run and free > 0:
                    batch = to_run[:free]
                    # The first claim also marks the run running (one transaction, not two).
                    start = run_id if not started else None
                    claimed = await asyncio.to_thread(self._claim, [t.id for t in batch], folder_id, start)
                    started = True
                    for t in batch:
                        if t.id in claimed:
                            t.status = TaskStatus.RUNNING
                            t.attempts += 1
                            job = asyncio.create_task(self._execute(run_id, the_plan, t, tasks, folder_id))
                            running[job] = t
                        else:
                            # Another scheduler has it: stop considering it here.
                            t.status = HELD_ELSEWHERE
                    if not claimed and len(to_run) > len(batch):
                        continue  # others took this batch: try the next ready tasks
                if not running:
                    waiting = [t for t in tasks.values() if t.status == TaskStatus.QUEUED]
                    if not waiting:
                        return await asyncio.to_thread(self._finish, run_id, folder_id)
                    delays = [t.not_before - now for t in waiting if t.not_before and t.not_before > now]
                    if delays:
                        await asyncio.sleep(min(delays))
                        continue
                    held = [t for t in tasks.values() if t.status == HELD_ELSEWHERE]
                    if held:
                        # Queued tasks may need what another scheduler is doing: look again shortly.
                        await asyncio.sleep(HELD_POLL_SECONDS)
                        await asyncio.to_thread(self._refresh_held, run_id, held)
                        continue
                    return await asyncio.to_thread(self._finish, run_id, folder_id)
                done = await self._collect(running, wait=True, timeout=0.25)
                if done:
                    final = await asyncio.to_thread(self._record, row, actor, the_plan, done, tasks)
                    if final is not None:
                        return final
                if getattr(self, "_progress", None):
                    await asyncio.to_thread(self._flush_progress, run_id, folder_id)
        except BaseException:
            # Cancelled, or the driver failed: its tasks stop with it (a failed driver's tasks are
            # then ended by _fail_run).
            for job in running:
                job.cancel()
            raise

    # ------------------------------------------------------------------ helpers on the DB (threads)

    def _cancel_requested(self, run_id: int) -> bool:
        with self.home.db.read() as conn:
            return bool(conn.execute(select(Run.cancel_requested).where(Run.id == run_id)).scalar())

    def _claim(self, ids: list[int], folder_id: int | None, start_run: int | None = None) -> set[int]:
        with self.home.db.write() as conn:
            if start_run is not None:
                runs.start_run(conn, start_run, folder_id)
            return set(runs.claim_tasks(conn, ids, self.owner, self.lease_seconds, self.executor.name, folder_id))

    def _finish(self, run_id: int, folder_id: int | None, cancel: bool = False) -> RunStatus | None:
        with self.home.db.write() as conn:
            if cancel:
                runs.cancel_unheld(conn, run_id, folder_id)
            return runs.finish_run_if_done(conn, run_id, folder_id)

    def _refresh_held(self, run_id: int, held: list[TaskRow]) -> None:
        """Update tasks held by other schedulers from the database, requeueing those whose lease expired."""
        from datamill.db.models import Task

        now = self.clock()
        with self.home.db.read() as conn:
            expired = conn.execute(
                select(Task.id)
                .where(Task.run_id == run_id, Task.status == TaskStatus.RUNNING, Task.lease_expires < now)
                .limit(1)
            ).first()
        if expired is not None:  # their scheduler died
            with self.home.db.write() as conn:
                runs.reclaim_expired(conn, now)
        with self.home.db.read() as conn:
            fresh = {t.id: t for t in runs.list_tasks(conn, run_id)}
        for t in held:
            f = fresh[t.id]
            if f.status != TaskStatus.RUNNING:
                t.status, t.attempts, t.key, t.error, t.not_before = f.status, f.attempts, f.key, f.error, f.not_before
                t.outputs, t.note = f.outputs, f.note

    def _resolve_keys(
        self, the_plan: Plan, ready: list[TaskRow], tasks: dict[str, TaskRow], forced: bool, skip_failed: bool = False
    ) -> tuple[list[_Done], list[TaskRow]]:
        """Compute keys now known; split ready tasks into cache hits (and, with ``skip_failed``, tasks
        whose key failed in its step before) and tasks to run."""
        hits: list[_Done] = []
        to_run: list[TaskRow] = []
        lookups: dict[str, list[TaskRow]] = {}
        for t in ready:
            pt = the_plan.task(t.planned_id)
            if t.key is None:
                upstream = {d: tasks[d].outputs for d in pt.deps}
                t.key = the_plan.key_for(pt, upstream)
            assert t.key is not None
            if forced or pt.forced or not pt.cache or t.cache_missed:
                to_run.append(t)
            else:
                lookups.setdefault(t.key, []).append(t)
        missed: dict[str, list[TaskRow]] = {}
        if lookups:
            found = self._lookup_many(list(lookups))
            for key, group in lookups.items():
                if key in found:
                    src_id, outs = found[key]
                    for t in group:
                        pt = the_plan.task(t.planned_id)
                        d = _Done(t, pt, TaskStatus.CACHED, outputs=list(outs), cached_from=src_id, key=key)
                        try:
                            d.publish = self._publish_plan(the_plan, pt, outs)
                        except DatamillError as exc:  # two outputs would get one name: this task fails
                            d = _Done(t, pt, TaskStatus.FAILED, error=exc.message, key=key, failure="publish")
                        hits.append(d)
                else:
                    for t in group:
                        t.cache_missed = True  # not asked again on the next passes while it waits for a slot
                    missed[key] = group
        if missed and skip_failed:
            with self.home.db.read() as conn:
                failed = runs.failed_earlier(conn, list(missed))
            for key, run in failed.items():
                for t in missed.pop(key):
                    pt = the_plan.task(t.planned_id)
                    hits.append(_Done(t, pt, TaskStatus.SKIPPED, key=key, note=f"failed earlier (see run {run})"))
        for group in missed.values():
            to_run += group
        return hits, to_run

    def _lookup_many(self, keys: list[str]) -> dict[str, tuple[int, list[OutputRecord]]]:
        out: dict[str, tuple[int, list[OutputRecord]]] = {}
        with self.home.db.read() as conn:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                rows = conn.execute(
                    select(Task.key, Task.id)
                    .where(Task.key.in_(chunk), Task.status == TaskStatus.SUCCEEDED)
                    .order_by(Task.finished_at)
                ).all()
                newest: dict[str, int] = {k: tid for k, tid in rows if k is not None}
                if not newest:
                    continue
                outs = conn.execute(
                    select(TaskOutput).where(TaskOutput.task_id.in_(list(newest.values()))).order_by(TaskOutput.id)
                ).all()
                by_task: dict[int, list[OutputRecord]] = {}
                for o in outs:
                    by_task.setdefault(o.task_id, []).append(
                        OutputRecord(o.name, o.digest, o.size, o.content_type, o.codec, o.inline)
                    )
                for k, tid in newest.items():
                    out[k] = (tid, by_task.get(tid, []))
        return out

    def _publish_plan(self, the_plan: Plan, pt: PlannedTask, outs: list[OutputRecord]) -> list[tuple[str, str, str]]:
        ctypes = {o.name: o.content_type for o in outs}
        return [
            (po.name, po.published_name, _content_type(po.published_name, ctypes[po.name]))
            for po in the_plan.output_names(pt, [o.name for o in outs])
            if po.publish
        ]

    def _record(
        self, row: Any, actor: Actor, the_plan: Plan, done: list[_Done], tasks: dict[str, TaskRow]
    ) -> RunStatus | None:
        """Record a batch of task ends (with their outputs and published versions) in one transaction.

        ``row`` is the run's row (as read by :meth:`_load_run`). When that leaves none of the run's
        tasks to do, the run ends in the same transaction; its final status is returned then.
        A task whose outputs cannot be published (an invalid name, no right to write any more, ...)
        fails, saying why; the other tasks of the batch are recorded as usual.
        """
        if not done:
            return None
        run_id, folder_id, dest = row.id, row.dest_folder_id, row.dest_folder
        # Make sure the blobs of published outputs exist and subfolders are there, outside the transaction.
        for d in done:
            if d.status not in runs.DONE_OK or not dest or not d.publish:
                continue
            try:
                self._prepare_publish(actor, dest, d)
            except Exception as exc:
                if database_outage(exc):
                    raise
                self._publish_failed(d, dest, exc)
        log_digests = {id(d): self._store_log(d) for d in done}
        with self.home.db.write() as conn:
            ends: list[runs.TaskEnd] = []
            inputs: list[dict[str, Any]] = []
            # Tasks another scheduler ended meanwhile are left out (their rows stay locked until commit).
            endable = runs.unfinished(conn, [d.task.id for d in done if d.retry_at is None])
            current = self._current_versions(conn, dest, [d for d in done if d.task.id in endable]) if dest else {}
            for d in done:
                t = d.task
                if d.retry_at is not None:
                    runs.requeue_task(conn, t.id, run_id, folder_id, d.retry_at, d.error or "")
                    t.status = TaskStatus.QUEUED
                    t.not_before = d.retry_at
                    continue
                if t.id not in endable:
                    t.status = HELD_ELSEWHERE
                    continue
                outputs = d.outputs
                if d.status in runs.DONE_OK and dest and d.publish:
                    try:
                        # A savepoint per task: a task that cannot publish leaves nothing half done.
                        with conn.begin_nested():
                            outputs, changes = self._publish(conn, actor, dest, row, t, d, the_plan, current)
                        current.update(changes)
                    except Exception as exc:
                        if database_outage(exc):
                            raise
                        self._publish_failed(d, dest, exc)
                        outputs = d.outputs
                inputs += [{"task_id": t.id, **i} for i in d.inputs]
                ends.append(
                    runs.TaskEnd(
                        t.id,
                        run_id,
                        d.status,
                        folder_id,
                        outputs,
                        d.error,
                        d.traceback,
                        log_digests[id(d)],
                        d.cached_from,
                        d.key,
                        d.failure,
                        d.note,
                    )
                )
                t.status = d.status
                t.outputs = list(outputs)
                t.error = d.error
                t.note = d.note
            runs.record_many_inputs(conn, inputs)
            runs.finish_tasks(conn, ends)
            final = None
            if all(t.status in runs.FINISHED_TASK for t in tasks.values()):
                final = runs.finish_run_if_done(conn, run_id, folder_id)
        for d in done:
            if d.log_path is not None:
                d.log_path.unlink(missing_ok=True)
            if d.work_dir is not None:
                shutil.rmtree(d.work_dir, ignore_errors=True)
        return final

    def _prepare_publish(self, actor: Actor, dest: str, d: _Done) -> None:
        """Blobs for inline outputs and the subfolders a task publishes into, before its transaction."""
        for out_name, pub_name, _ct in d.publish:
            d.publishing = pub_name
            rec = next(o for o in d.outputs if o.name == out_name)
            if rec.inline is not None and not self.home.blobs.exists(rec.digest):
                self.home.blobs.put(rec.inline)
            if "/" in pub_name:
                self.home.store.create_folder(actor, join_path(dest, pub_name.rsplit("/", 1)[0]), exist_ok=True)
        d.publishing = None

    def _publish_failed(self, d: _Done, dest: str, exc: Exception) -> None:
        """Turn a task whose outputs could not be published into a failed task that says why."""
        if isinstance(exc, _Collision):
            message, failure = exc.message, "collision"
        else:
            reason = exc.message if isinstance(exc, DatamillError) else f"{type(exc).__name__}: {exc}"
            name = d.publishing or "?"
            shown = name if len(name) <= 80 else name[:77] + "..."
            message, failure = f"could not publish output {shown!r} in {dest!r}: {reason}", "publish"
            if not isinstance(exc, DatamillError):
                log.error("task %s: publishing failed", d.task.id, exc_info=exc)
        d.status = TaskStatus.FAILED
        d.error = message[:MAX_ERROR]
        d.failure = failure
        d.note = None
        d.outputs = []
        d.publish = []

    def _publish(
        self,
        conn: Connection,
        actor: Actor,
        dest: str,
        row: Any,
        t: TaskRow,
        d: _Done,
        the_plan: Plan,
        current: dict[tuple[str, str], _Current],
    ) -> tuple[list[OutputRecord], dict[tuple[str, str], _Current]]:
        """Commit published outputs as item versions in the destination.

        Returns the outputs with their version ids, and how ``current`` (the current version of
        each destination item, see :meth:`_current_versions`) changed; the caller applies that
        once the task's savepoint is released. Two rules decide what is published:

        * **newer request wins**: an output does not replace a current version that a later-requested
          run (a higher run id) published or recorded. It is not published (no version id) and the
          task's note says "superseded by run N", whatever order the runs finish in.
        * **one input per name**: a per-item output does not replace an item derived from another
          input (see :func:`collision_message`); the task fails with :class:`_Collision`.

        An item whose current version already has the same bytes is left alone (its version is
        referenced), so re-running a dataflow over unchanged inputs adds no versions.
        """
        run_id = int(row.id)
        by_name = {o.name: o for o in d.outputs}
        item = d.planned.item.path if d.planned.item is not None else None
        # A per-item task derives from its item; an aggregate task from every input of the run.
        inputs = [d.planned.item] if d.planned.item is not None else list(the_plan.inputs)
        provenance = {
            "wasGeneratedBy": {
                "run": run_id,
                "task": t.id,
                "step": t.step,
                "step_code": t.step_code,
                "dataflow": row.dataflow_id,
                "dataflow_version": row.dataflow_version,
            },
            "wasDerivedFrom": [
                {"folder": r.folder, "name": r.name, "version": r.version, "digest": r.digest} for r in inputs
            ],
        }
        meta: dict[str, Any] = {"provenance": provenance}
        if row.dataflow_id is not None:
            meta["dataflow"] = self._dataflow_name(conn, row.dataflow_id)
        changes: dict[tuple[str, str], _Current] = {}
        superseded: list[tuple[str, int]] = []
        for out_name, pub_name, ctype in d.publish:
            d.publishing = pub_name
            rec = by_name[out_name]
            folder = dest
            name = pub_name
            if "/" in pub_name:
                sub, name = pub_name.rsplit("/", 1)
                folder = join_path(dest, sub)
            now = changes.get((folder, name)) or current.get((folder, name))
            newer = self._check_publish(conn, actor, now, run_id, item, folder, name, t.step)
            if newer is not None:
                superseded.append((pub_name, newer))
                by_name[out_name] = OutputRecord(
                    rec.name, rec.digest, rec.size, rec.content_type, rec.codec, rec.inline, None
                )
                continue
            if now is not None and now.digest == rec.digest:
                vid = now.version_id
            else:
                # On PostgreSQL another process may create the item between our look-up and this
                # commit: then the version before ours is checked too, and ours undone if it loses.
                racing = now is None and not self.home.db.is_sqlite
                sp = conn.begin_nested() if racing else None
                try:
                    info = self.home.store.commit_version(
                        actor,
                        folder,
                        name,
                        BlobInfo(rec.digest, rec.size),
                        ctype,
                        meta,
                        created_via="run",
                        run_id=run_id,
                        task_id=t.id,
                        conn=conn,
                    )
                    if sp is not None:
                        before = self._version_state(conn, info.item_id, info.version - 1) if info.version > 1 else None
                        newer = self._check_publish(conn, actor, before, run_id, item, folder, name, t.step)
                        if newer is not None:
                            sp.rollback()
                            superseded.append((pub_name, newer))
                            by_name[out_name] = OutputRecord(
                                rec.name, rec.digest, rec.size, rec.content_type, rec.codec, rec.inline, None
                            )
                            continue
                        sp.commit()
                except BaseException:
                    if sp is not None and sp.is_active:
                        sp.rollback()
                    raise
                vid = info.version_id
            changes[(folder, name)] = _Current(
                vid, rec.digest, max(run_id, now.run if now is not None else 0), item if now is None else now.item
            )
            by_name[out_name] = OutputRecord(
                rec.name, rec.digest, rec.size, rec.content_type, rec.codec, rec.inline, vid
            )
        d.publishing = None
        if superseded:
            newest = max(r for _n, r in superseded)
            names = ", ".join(repr(n) for n, _r in superseded[:3]) + (" ..." if len(superseded) > 3 else "")
            d.note = (
                f"superseded by run {newest}: {names} not published, because a run requested later "
                "already published a newer result"
            )
        return [by_name[o.name] for o in d.outputs], changes

    def _check_publish(
        self,
        conn: Connection,
        actor: Actor,
        now: _Current | None,
        run_id: int,
        item: str | None,
        folder: str,
        name: str,
        step: str,
    ) -> int | None:
        """The run whose output supersedes ours for ``folder/name`` (see :meth:`_publish`), or None.

        Raises:
            _Collision: the current version was derived from another input than ``item``.
        """
        if now is None:
            return None
        if now.run > run_id:
            return now.run
        if item is not None and now.item is not None and now.item != item:
            # The other input is named only to whoever may read it.
            other_folder = now.item.rpartition("/")[0]
            other = now.item if level_on(conn, actor, other_folder) >= Level.READ else None
            path = f"{folder}/{name}"
            raise _Collision(
                collision_message(
                    name, step, item, other, f" (now {path!r}; delete it first if it is no longer wanted)"
                ),
                path=path,
            )
        return None

    def _version_state(self, conn: Connection, item_id: int, number: int) -> _Current | None:
        """One version of an item as :class:`_Current` (who published it, from which input)."""
        from datamill.db.models import Version

        r = conn.execute(
            select(Version.id, Version.digest, Version.run_id, Task.item_name)
            .outerjoin(Task, Task.id == Version.task_id)
            .where(Version.item_id == item_id, Version.number == number)
        ).first()
        if r is None:
            return None
        claimed = self._claimants(conn, [int(r.id)])
        return _Current(int(r.id), str(r.digest), max(r.run_id or 0, claimed.get(int(r.id), 0)), r.item_name)

    def _claimants(self, conn: Connection, version_ids: list[int]) -> dict[int, int]:
        """The newest run whose task outputs name each version (it published or referenced it)."""
        out: dict[int, int] = {}
        for i in range(0, len(version_ids), 500):
            rows = conn.execute(
                select(TaskOutput.version_id, func.max(Task.run_id))
                .join(Task, Task.id == TaskOutput.task_id)
                .where(TaskOutput.version_id.in_(version_ids[i : i + 500]))
                .group_by(TaskOutput.version_id)
            ).all()
            out.update({int(v): int(r) for v, r in rows if v is not None and r is not None})
        return out

    def _current_versions(self, conn: Connection, dest: str, done: list[_Done]) -> dict[tuple[str, str], _Current]:
        """The current version of every item ``done`` publishes, by ``(folder, name)``.

        A few queries per 500 names instead of several per output. On PostgreSQL the items are
        locked first, so that what is read here stays true until this transaction commits: two
        runs publishing the same item one after the other see each other's versions.
        """
        from datamill.db.models import Folder, Item, Version

        wanted: set[tuple[str, str]] = set()
        for d in done:
            if d.status in runs.DONE_OK:
                for _out, pub_name, _ct in d.publish:
                    sub, _, name = pub_name.rpartition("/")
                    wanted.add((join_path(dest, sub) if sub else dest, name))
        names = sorted({name for _folder, name in wanted})
        folders = sorted({folder for folder, _name in wanted})
        out: dict[tuple[str, str], _Current] = {}
        found: list[Any] = []
        for i in range(0, len(names), 500):
            chunk = names[i : i + 500]
            if not self.home.db.is_sqlite:  # SQLite's write transaction already excludes other writers
                conn.execute(
                    select(Item.id)
                    .join(Folder, Folder.id == Item.folder_id)
                    .where(Folder.path.in_(folders), Item.name.in_(chunk))
                    .order_by(Item.id)
                    .with_for_update(of=Item)
                ).all()
            rows = conn.execute(
                select(Folder.path, Item.name, Version.id, Version.digest, Version.run_id, Task.item_name)
                .join(Item, Item.folder_id == Folder.id)
                .join(Version, and_(Version.item_id == Item.id, Version.number == Item.current_version))
                .outerjoin(Task, Task.id == Version.task_id)
                .where(Folder.path.in_(folders), Item.name.in_(chunk))
            )
            found += [r for r in rows if (r.path, r.name) in wanted]
        claimed = self._claimants(conn, [int(r.id) for r in found])
        for r in found:
            vid = int(r.id)
            out[(r.path, r.name)] = _Current(vid, str(r.digest), max(r.run_id or 0, claimed.get(vid, 0)), r.item_name)
        return out

    def _dataflow_name(self, conn: Connection, dataflow_id: int) -> str | None:
        from datamill.db.models import Dataflow

        return conn.execute(select(Dataflow.name).where(Dataflow.id == dataflow_id)).scalar()

    def _store_log(self, d: _Done) -> str | None:
        path = d.log_path
        if d.traceback and path is not None:
            with open(path, "a", encoding="utf-8") as f:
                f.write(d.traceback)
        if path is None or not path.exists() or path.stat().st_size == 0:
            return None
        with open(path, "rb") as f:
            return self.home.blobs.put(f).digest

    # ------------------------------------------------------------------ progress

    #: progress reported and not recorded yet: task id -> (run id, fraction, message)
    _progress: dict[int, tuple[int, float, str]]

    def _flush_progress(self, run_id: int, folder_id: int | None) -> None:
        """Record the progress reported since the last flush, each under its own run and folder.

        The driver of any run may flush the progress of every run this scheduler drives.
        """
        pending = getattr(self, "_progress", None)
        if not pending:
            return
        self._progress = {}
        folders = {run_id: folder_id}
        with self.home.db.write() as conn:
            for task_id, (rid, fraction, message) in pending.items():
                if rid not in folders:
                    folders[rid] = runs.run_folder_id(conn, rid)
                runs.set_progress(conn, task_id, rid, folders[rid], fraction, message)

    # ------------------------------------------------------------------ running one task

    def log_path(self, task_id: int) -> Path:
        """Where a running task's log lines are appended (read by ``datamill logs --follow``)."""
        return self.log_root / f"task-{task_id}.log"

    async def _collect(
        self, running: dict[asyncio.Task[_Done], TaskRow], wait: bool, timeout: float | None = None
    ) -> list[_Done]:
        if not running:
            return []
        finished, _ = await asyncio.wait(list(running), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        out = []
        for job in finished:
            t = running.pop(job)
            try:
                out.append(job.result())
            except asyncio.CancelledError:
                out.append(_Done(t, None, TaskStatus.CANCELLED, error="run cancelled"))  # type: ignore[arg-type]
        return out

    async def _execute(
        self, run_id: int, the_plan: Plan, t: TaskRow, tasks: dict[str, TaskRow], folder_id: int | None
    ) -> _Done:
        base = self.work_root / f"task-{t.id}-{t.attempts}"  # flat: fewer directories to make and remove
        try:
            d = await self._attempt(base, the_plan, t, tasks)
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise
        # Removed by _record once the end is recorded: in a thread, after the commit, instead of
        # in the event loop before it (removing a tree can take milliseconds on a busy disk).
        d.work_dir = base
        return d

    async def _attempt(self, base: Path, the_plan: Plan, t: TaskRow, tasks: dict[str, TaskRow]) -> _Done:
        """One attempt at a task in the work directory ``base``; its end, failed or not."""
        pt = the_plan.task(t.planned_id)
        step = the_plan.pipeline.step(pt.step)
        if base.exists():
            # Left by a scheduler that died during this attempt (a reclaimed task keeps its number).
            await asyncio.to_thread(shutil.rmtree, base, True)
        out_dir, scratch = base / "out", base / "scratch"
        log_path = self.log_path(t.id)
        log_file = _TaskLog(log_path)
        if not hasattr(self, "_progress"):
            self._progress = {}

        def on_message(msg: Message) -> None:
            if isinstance(msg, ProgressMessage):
                self._progress[t.id] = (t.run_id, msg.fraction, msg.message)
            elif isinstance(msg, LogMessage):
                log_file.write(msg.line.rstrip("\n") + "\n")

        try:
            item_files, upstream, inputs = self._materialize(base, the_plan, pt, tasks)
            call = the_plan.step_call(
                pt, output_dir=out_dir, scratch_dir=scratch, item_files=item_files, upstream_outputs=upstream
            )
            if step.kind == "command" and self.executor.name == "inline":
                # A subprocess waited on in the loop thread would stall every other task.
                result = await asyncio.to_thread(run_step, _LogReporter(log_file), call)
            else:
                result = await self.executor.run(PythonCall(run_step, (call,)), on_message, timeout=pt.timeout)
            outputs = [self._keep_output(o) for o in result.outputs]
            d = _Done(t, pt, TaskStatus.SUCCEEDED, outputs=outputs, key=t.key, log_path=log_path, inputs=inputs)
            d.publish = self._publish_plan(the_plan, pt, outputs)
            return d
        except asyncio.CancelledError:
            log_file.write("cancelled\n")
            raise
        except (StepFailed, Cancelled, InvalidPipeline) as exc:
            tb = exc.detail.get("traceback") if isinstance(exc.detail, dict) else None
            return self._failure(t, pt, exc.message, tb, log_path, _failure_kind(exc))
        except DatamillError as exc:
            return self._failure(t, pt, exc.message, None, log_path, "error")
        except Exception as exc:  # a bug in materialising inputs or storing outputs
            log.exception("task %s failed outside its step", t.id)
            return self._failure(t, pt, f"{type(exc).__name__}: {exc}", None, log_path, "scheduler")
        finally:
            log_file.close()

    def _failure(
        self, t: TaskRow, pt: PlannedTask, message: str, tb: str | None, log_path: Path, failure: str
    ) -> _Done:
        if len(message) > MAX_ERROR:
            # An exception may carry its data (a whole file in a TypeError); the log has the rest.
            message = message[:MAX_ERROR] + " … (truncated; see the task log)"
        d = _Done(
            t, pt, TaskStatus.FAILED, error=message, traceback=tb, key=t.key, log_path=log_path, failure=failure
        )
        if t.attempts < pt.max_attempts:
            d.retry_at = self.clock() + pt.retry_backoff * (2 ** (t.attempts - 1))
        return d

    def _materialize(
        self, base: Path, the_plan: Plan, pt: PlannedTask, tasks: dict[str, TaskRow]
    ) -> tuple[dict[str, Path], dict[str, list[OutputFile]], list[dict[str, Any]]]:
        """Local files for a task's inputs: blob files where they exist, else written out."""
        step = the_plan.pipeline.step(pt.step)
        files: dict[str, Path] = {}
        refs: list[InputRef] = []
        if pt.item is not None and step.uses_item:
            refs.append(pt.item)
        if step.uses_items:
            refs += list(the_plan.inputs)
        for i, ref in enumerate(refs):
            # Named like the item, so steps that look at suffixes (read_excel, ...) work; a directory
            # per input only when there are several (their names may repeat across folders).
            link = base / "in" / str(i) / ref.name if len(refs) > 1 else base / "in" / ref.name
            link.parent.mkdir(parents=True, exist_ok=True)
            self._place(ref.digest, None, link)
            files[ref.path] = link
        upstream: dict[str, list[OutputFile]] = {}
        inputs: list[dict[str, Any]] = []
        for dep in pt.deps:
            up = tasks[dep]
            lst = []
            for j, o in enumerate(up.outputs):
                target = base / "up" / f"{up.id}-{j}" / Path(o.name).name
                target.parent.mkdir(parents=True, exist_ok=True)
                self._place(o.digest, o.inline, target)
                lst.append(OutputFile(o.name, target, o.content_type, o.codec))
                inputs.append(
                    {
                        "param": dep,
                        "digest": o.digest,
                        "upstream_task_id": up.id,
                        "output_name": o.name,
                        "version_id": o.version_id,
                    }
                )
            upstream[dep] = lst
        return files, upstream, inputs

    def _place(self, digest: str, inline: bytes | None, target: Path) -> None:
        if inline is not None:
            target.write_bytes(inline)
            return
        blobs = self.home.blobs
        if isinstance(blobs, LocalBlobStore):
            os.symlink(blobs.path_of(digest), target)
            return
        with open(target, "wb") as f:
            for chunk in blobs.iter_range(digest):
                f.write(chunk)

    def _keep_output(self, o: OutputFile) -> OutputRecord:
        size = o.path.stat().st_size
        if size <= INLINE_LIMIT:
            data = o.path.read_bytes()
            return OutputRecord(o.name, digest_bytes(data), size, o.content_type, o.codec, data)
        with open(o.path, "rb") as f:
            blob = self.home.blobs.put(f)
        return OutputRecord(o.name, blob.digest, blob.size, o.content_type, o.codec, None)


def _failure_kind(exc: DatamillError) -> str:
    """``tasks.failure`` for an error from running a step.

    Only ``step`` (the step raised or its command exited non-zero) says that the same key fails
    again; a timeout, a crashed worker or a cancellation may well pass another time.
    """
    if isinstance(exc, TaskTimeout):
        return "timeout"
    if isinstance(exc, WorkerCrashed):
        return "crashed"
    if isinstance(exc, Cancelled):
        return "cancelled"
    if isinstance(exc, InvalidPipeline):
        return "pipeline"
    return runs.STEP_FAILURE if type(exc) is StepFailed else "error"


class _TaskLog:
    """A task's live log file, created with its first line: most tasks log nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    def write(self, text: str) -> None:
        """Append ``text`` (line buffered, so ``datamill logs --follow`` sees each line at once)."""
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._file.write(text)

    def close(self) -> None:
        """Close the file if there is one."""
        if self._file is not None:
            self._file.close()


class _LogReporter:
    """A reporter writing log lines straight to the task's log file (command steps run inline)."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def progress(self, fraction: float, message: str = "") -> None:
        """Progress of inline commands is not reported."""

    def log(self, line: str) -> None:
        """Append a line to the log file."""
        self.f.write(line.rstrip("\n") + "\n")
