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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, and_, select, update

from datamill.db.models import Run, Task, TaskOutput
from datamill.engine import runs
from datamill.engine.planner import Plan, PlannedTask, plan
from datamill.engine.runs import OutputRecord, RunStatus, TaskRow, TaskStatus
from datamill.errors import Cancelled, DatamillError, InvalidPipeline, StepFailed
from datamill.executors.base import Executor, LogMessage, Message, ProgressMessage, PythonCall, get_executor
from datamill.home import Home
from datamill.pipeline import Pipeline, load_pipeline
from datamill.pipeline.inputs import InputRef
from datamill.pipeline.runner import OutputFile, run_step
from datamill.store.access import Actor
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
        lease_seconds: float = 30.0,
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
        self.lease_seconds = lease_seconds
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
                await asyncio.to_thread(self._renew_now)
            except DatamillError:
                log.exception("could not renew task leases")

    def _renew_now(self) -> None:
        with self.home.db.write() as conn:
            runs.renew_leases(conn, self.owner, self.lease_seconds)

    # ------------------------------------------------------------------ finding work

    def pending_runs(self) -> list[int]:
        """Runs that are queued or running (oldest request first), after requeueing expired tasks."""
        now = self.clock()
        pending = select(Run.id).where(Run.status.in_([RunStatus.QUEUED, RunStatus.RUNNING])).order_by(Run.id)
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
            todo = [i for i in ids if i not in self._active]
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
                if rid not in self._active:
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

    async def _drive_safely(self, run_id: int) -> None:
        try:
            await self.drive(run_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("run %s failed in the scheduler", run_id)
            await asyncio.to_thread(self._fail_run, run_id, f"scheduler error: {type(exc).__name__}: {exc}")

    def _fail_run(self, run_id: int, message: str) -> None:
        """End a run that cannot be driven (its pipeline does not load, ...): its queued tasks fail."""
        with self.home.db.write() as conn:
            folder_id = runs.run_folder_id(conn, run_id)
            conn.execute(update(Run).where(Run.id == run_id).values(error=message))
            for t in runs.list_tasks(conn, run_id, with_outputs=False):
                if t.status == TaskStatus.QUEUED:
                    runs.finish_task(conn, t.id, run_id, TaskStatus.FAILED, folder_id, error=message)
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
                if fresh:
                    cancel, fresh = bool(row.cancel_requested), False
                else:
                    cancel = await asyncio.to_thread(self._cancel_requested, run_id)
                if cancel:
                    for job in running:
                        job.cancel()
                    done = await self._collect(running, wait=True)
                    await asyncio.to_thread(self._record, row, actor, the_plan, done, tasks)
                    return await asyncio.to_thread(self._finish, run_id, folder_id)
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
                            _Done(t, pt, TaskStatus.FAILED, error=f"input {bad[0].planned_id} {bad[0].status}")
                        )
                        continue
                    if all(d.status in runs.FINISHED_TASK for d in deps) and (t.not_before or 0) <= now:
                        ready.append(t)
                hits, to_run = await asyncio.to_thread(self._resolve_keys, the_plan, ready, tasks, forced)
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
        except asyncio.CancelledError:
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

    def _finish(self, run_id: int, folder_id: int | None) -> RunStatus | None:
        with self.home.db.write() as conn:
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
                t.outputs = f.outputs

    def _resolve_keys(
        self, the_plan: Plan, ready: list[TaskRow], tasks: dict[str, TaskRow], forced: bool
    ) -> tuple[list[_Done], list[TaskRow]]:
        """Compute keys now known; split ready tasks into cache hits and tasks to run."""
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
        if lookups:
            found = self._lookup_many(list(lookups))
            for key, group in lookups.items():
                if key in found:
                    src_id, outs = found[key]
                    for t in group:
                        pt = the_plan.task(t.planned_id)
                        d = _Done(t, pt, TaskStatus.CACHED, outputs=list(outs), cached_from=src_id, key=key)
                        d.publish = self._publish_plan(the_plan, pt, outs)
                        hits.append(d)
                else:
                    for t in group:
                        t.cache_missed = True  # not asked again on the next passes while it waits for a slot
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
        """
        if not done:
            return None
        run_id, folder_id, dest = row.id, row.dest_folder_id, row.dest_folder
        # Make sure the blobs of published outputs exist and subfolders are there, outside the transaction.
        for d in done:
            if d.status not in runs.DONE_OK or not dest:
                continue
            for out_name, pub_name, _ct in d.publish:
                rec = next(o for o in d.outputs if o.name == out_name)
                if rec.inline is not None and not self.home.blobs.exists(rec.digest):
                    self.home.blobs.put(rec.inline)
                if "/" in pub_name:
                    self.home.store.create_folder(actor, join_path(dest, pub_name.rsplit("/", 1)[0]), exist_ok=True)
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
                    outputs = self._publish(
                        conn, actor, dest, run_id, t, d, row.dataflow_id, row.dataflow_version, the_plan, current
                    )
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
                    )
                )
                t.status = d.status
                t.outputs = list(outputs)
                t.error = d.error
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

    def _publish(
        self,
        conn: Connection,
        actor: Actor,
        dest: str,
        run_id: int,
        t: TaskRow,
        d: _Done,
        dataflow_id: int | None,
        dataflow_version: int | None,
        the_plan: Plan,
        current: dict[tuple[str, str], tuple[int, str]],
    ) -> list[OutputRecord]:
        """Commit published outputs as item versions in the destination; returns outputs with version ids.

        An item whose current version already has the same bytes is left alone (its version is
        referenced), so re-running a dataflow over unchanged inputs adds no versions. ``current``
        holds the current ``(version id, digest)`` by ``(folder, name)`` (see :meth:`_current_versions`)
        and is kept up to date here.
        """
        by_name = {o.name: o for o in d.outputs}
        # A per-item task derives from its item; an aggregate task from every input of the run.
        inputs = [d.planned.item] if d.planned.item is not None else list(the_plan.inputs)
        provenance = {
            "wasGeneratedBy": {
                "run": run_id,
                "task": t.id,
                "step": t.step,
                "step_code": t.step_code,
                "dataflow": dataflow_id,
                "dataflow_version": dataflow_version,
            },
            "wasDerivedFrom": [
                {"folder": r.folder, "name": r.name, "version": r.version, "digest": r.digest} for r in inputs
            ],
        }
        meta: dict[str, Any] = {"provenance": provenance}
        if dataflow_id is not None:
            meta["dataflow"] = self._dataflow_name(conn, dataflow_id)
        for out_name, pub_name, ctype in d.publish:
            rec = by_name[out_name]
            folder = dest
            name = pub_name
            if "/" in pub_name:
                sub, name = pub_name.rsplit("/", 1)
                folder = join_path(dest, sub)
            now = current.get((folder, name))
            if now is not None and now[1] == rec.digest:
                vid = now[0]
            else:
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
                vid = info.version_id
                current[(folder, name)] = (vid, rec.digest)
            by_name[out_name] = OutputRecord(
                rec.name, rec.digest, rec.size, rec.content_type, rec.codec, rec.inline, vid
            )
        return [by_name[o.name] for o in d.outputs]

    def _current_versions(
        self, conn: Connection, dest: str, done: list[_Done]
    ) -> dict[tuple[str, str], tuple[int, str]]:
        """``(version id, digest)`` of the current version of every item ``done`` publishes, by ``(folder, name)``.

        One query per 500 names instead of one per output (what the store's ``current_version`` does).
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
        out: dict[tuple[str, str], tuple[int, str]] = {}
        for i in range(0, len(names), 500):
            rows = conn.execute(
                select(Folder.path, Item.name, Version.id, Version.digest)
                .join(Item, Item.folder_id == Folder.id)
                .join(Version, and_(Version.item_id == Item.id, Version.number == Item.current_version))
                .where(Folder.path.in_(folders), Item.name.in_(names[i : i + 500]))
            )
            out.update(((r.path, r.name), (int(r.id), str(r.digest))) for r in rows if (r.path, r.name) in wanted)
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
            return self._failure(t, pt, exc.message, tb, log_path)
        except DatamillError as exc:
            return self._failure(t, pt, exc.message, None, log_path)
        except Exception as exc:  # a bug in materialising inputs or storing outputs
            log.exception("task %s failed outside its step", t.id)
            return self._failure(t, pt, f"{type(exc).__name__}: {exc}", None, log_path)
        finally:
            log_file.close()

    def _failure(self, t: TaskRow, pt: PlannedTask, message: str, tb: str | None, log_path: Path) -> _Done:
        if len(message) > MAX_ERROR:
            # An exception may carry its data (a whole file in a TypeError); the log has the rest.
            message = message[:MAX_ERROR] + " … (truncated; see the task log)"
        d = _Done(t, pt, TaskStatus.FAILED, error=message, traceback=tb, key=t.key, log_path=log_path)
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
