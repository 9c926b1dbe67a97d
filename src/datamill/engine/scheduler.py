"""The scheduler: drives recorded runs to completion, sending ready tasks to an executor.

One loop per run (:meth:`Scheduler.drive`) repeats: find ready tasks (queued, inputs done),
compute keys now known, answer cache hits in one transaction, claim the rest atomically (with a
lease) up to the executor's capacity, and record whatever finished in one transaction. Batching
is what lets thousands of tasks per second be recorded on SQLite.

Several schedulers (processes) may drive the same home or PostgreSQL database: a task is run only
by the scheduler whose UPDATE claimed it, ends only once (the end is conditional on its status),
and a task whose scheduler died is requeued when its lease expires.

What happens around the driver lives next to it: one attempt at a task in :mod:`.attempt`, its
work directory and log in :mod:`.workdir`, publishing its outputs in :mod:`.publish`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import gc
import hashlib
import logging
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import Connection

from datamill.engine import leases, ownership, runs, tasks
from datamill.engine.attempt import Attempts, Job, Progress, waitables
from datamill.engine.ends import CLAIMING, HELD_ELSEWHERE, MAX_ERROR, Done
from datamill.engine.planner import Plan, PlannedTask, plan
from datamill.engine.publish import Publisher, publish_plan
from datamill.engine.recording import Claim, Committed, Recorder, RunView, database_outage
from datamill.engine.runs import RunStatus, input_ref_from_dict
from datamill.engine.tasks import FINISHED_TASK, OutputRecord, TaskRow, TaskStatus
from datamill.engine.workdir import WorkDirs
from datamill.errors import DatamillError, InvalidInput, InvalidPipeline
from datamill.executors.base import Executor, PythonCall, get_executor
from datamill.executors.command import CommandExecutor
from datamill.executors.container import ContainerExecutor, image_digest
from datamill.executors.http import HttpExecutor
from datamill.home import Home
from datamill.pipeline import Pipeline, load_pipeline
from datamill.pipeline.runner import run_step
from datamill.store import lookups
from datamill.store.access import Actor

log = logging.getLogger("datamill.scheduler")

#: How many ready tasks one pass of a run's driver considers: enough to fill the executor and to
#: answer cache hits in batches, without walking every queued task of a big run on every pass.
READY_BATCH = 500

#: How long a run's driver waits at most, for tasks another scheduler holds, before it looks at
#: them again (an event of the run wakes it sooner); their leases are checked then.
HELD_POLL_SECONDS = 5.0

#: The service loop looks for runs on every new run event, but not more often than this: while runs
#: are queued and end by the hundred, schedulers need not look at each one.
PICKUP_MIN_SECONDS = 0.1

#: The events the service loop looks for runs after (:meth:`Scheduler.serve`): a run queued, started,
#: cancelled or ended. A task's events concern only its run's driver: a scheduler that does not drive
#: the run sleeps through them (a run another scheduler holds becomes anyone's only when its lease
#: lapses, which the loop looks for every quarter lease).
RUN_FAMILIES = ("run",)

#: How long a driver waits, once a task has finished, for others to finish before recording
#: them together (one group commit): a few milliseconds of latency for far fewer transactions.
GROUP_COMMIT_SECONDS = 0.004
#: The longest an idle scheduler goes without looking for expired leases (it looks every quarter lease).
LEASE_LOOK_SECONDS = 5.0


#: A run whose driver failed without its end being recorded (the database was unreachable) is
#: driven again after this many seconds, doubled on each failure up to :data:`MAX_BACKOFF_SECONDS`.
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0


#: whether the objects alive at this process's first scheduler start were frozen (:func:`freeze_long_lived`)
_frozen = False
#: Python's own threshold of the youngest generation, and the one a scheduler's process uses instead
_PYTHON_YOUNG_THRESHOLD = 700
YOUNG_COLLECTION_THRESHOLD = 10_000


def freeze_long_lived() -> None:
    """Take the objects alive when the first scheduler of this process starts out of the cyclic
    garbage collector's walks, once (``gc.freeze``): the imported modules, the ORM's registry, the
    settings, ... (about 100,000 objects).

    A run of thousands of tasks makes enough lasting objects (its task rows, the ends waiting for
    their commit) to start a full collection every couple of thousand tasks, and each walked all
    those objects again: 50-130 µs per trivial task, more than recording it. Frozen objects are still
    freed when nothing refers to them; garbage is collected first, so that none is kept for good.

    The youngest generation is collected every :data:`YOUNG_COLLECTION_THRESHOLD` net allocations
    of objects, not Python's default 700, unless the process set its own threshold: a trivial task
    makes a few dozen objects that live as long as it is in flight (hundreds of tasks), so every
    young collection walked them all and promoted them, and the collections of the middle
    generation then walked them again: ~25-50 µs of a trivial task on the pool (gen-0 177 and
    gen-1 15 collections per 6,000 tasks, against 7 and none). Garbage cycles wait longer to be
    freed: a few thousand objects at most.
    """
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()
        young, *older = gc.get_threshold()
        if young == _PYTHON_YOUNG_THRESHOLD:
            gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *older)


def refuse_command_executor(name: str | None) -> None:
    """Refuse ``command`` as a run's executor, saying what to choose instead.

    The command executor runs commands only, and every run already runs its command steps on it;
    a run's executor is where its Python steps run.
    """
    if name == "command":
        raise InvalidInput(
            "executor 'command' runs command steps only, and every run already runs its command steps "
            "on it; choose where the run's Python steps run: 'inline' or 'local'",
            executor=name,
        )


@dataclasses.dataclass
class Handover:
    """A run just recorded in this process, handed to its scheduler with what driving it needs.

    Made by :meth:`Scheduler.hand_over` inside the transaction that records the run, and given to
    :meth:`Scheduler.drive_now` once that transaction is committed: the driver then takes no run
    lease, reads no run or task rows and makes no plan of its own before it claims the first task.
    """

    row: Any
    #: None when nothing is left to run (every task answered from the cache when it was recorded)
    plan: Plan | None
    actor: Actor
    tasks: dict[str, TaskRow]


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
        shares_loop: bool = False,
    ) -> None:
        self.home = home
        name = executor if isinstance(executor, str) else None
        if executor is None or isinstance(executor, str):
            name = name or home.settings.executor
            refuse_command_executor(name)
            opts: dict[str, Any] = {}
            if name in ("local", "dask"):
                opts["workers"] = workers if workers is not None else (home.settings.workers or 0)
            if name == "dask":
                opts["address"] = home.settings.dask_scheduler or None
                # with an S3 blob store, the workers' files go through it (no shared file system)
                opts["blobs"], opts["blob_url"] = home.blobs, home.settings.resolved_blob_url
            if name == "inline" and shares_loop:
                # The loop also serves requests: an inline call must not hold it for its whole run.
                opts["threaded"] = True
            self.executor: Executor = get_executor(name, **opts)
        else:
            if not executor.supports(PythonCall(run_step)):
                refuse_command_executor("command")
            self.executor = executor
        #: command steps run here whatever the run's executor, as many at once as it runs Python steps
        self.commands = CommandExecutor(slots=self.executor.capacity or os.cpu_count() or 1)
        self.lease_seconds = home.settings.lease_seconds if lease_seconds is None else lease_seconds
        self.owner = owner or f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.workdirs = WorkDirs(home.path, home.blobs)
        self.recorder = Recorder(home, Publisher(home), self.workdirs)
        #: progress reported and not recorded yet, flushed by the drivers in batches
        self._progress: Progress = {}
        #: container steps run here; containers are named ``datamill-<home>-<task>-<attempt>``
        self.containers = ContainerExecutor(
            home.settings.container_runtime,
            slots=self.executor.capacity or os.cpu_count() or 1,
            name_prefix=f"datamill-{hashlib.sha256(str(home.path).encode()).hexdigest()[:8]}-",
        )
        #: HTTP app steps send their requests here, whatever the run's executor
        self.apps = HttpExecutor()
        self.attempts = Attempts(
            self.executor,
            self.commands,
            self.workdirs,
            self._progress,
            clock,
            containers=self.containers,
            apps=self.apps,
            secrets=home.settings.app_secret_values(),
        )
        #: pipelines without a reference (built in Python), by run id; they cannot resume elsewhere
        self.pipelines: dict[int, Pipeline] = {}
        #: plans handed over by the engine that recorded the run here (it is not planned again)
        self.plans: dict[int, Plan] = {}
        self._ref_cache: dict[str, Pipeline] = {}
        #: runs handed over by a trigger of this process (:meth:`drive_now`), until their driver starts
        self._handed: dict[int, Handover] = {}
        self._active: dict[int, asyncio.Task[Any]] = {}
        #: the runs whose run lease this scheduler holds (see :mod:`.ownership`)
        self._owned: set[int] = set()
        #: runs whose last commit gave their run lease back (:meth:`_note_released`)
        self._released: set[int] = set()
        # Run leases being given back (see _give_back): close() waits for them.
        self._giving: set[asyncio.Task[None]] = set()
        #: set by :meth:`close`: drivers stopping now leave their run to :meth:`_leave`
        self._closing = False
        #: runs whose driver :meth:`close` stopped: whether this scheduler held the run lease
        self._leaving: dict[int, bool] = {}
        self._started = False
        #: the event loop this scheduler was started in (runs recorded in other threads are handed to it)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        #: runs whose driver failed without recording their end: (monotonic time to retry, failures)
        self._backoff: dict[int, tuple[float, int]] = {}
        #: how often runs were driven (``drives``) and driver loops went round (``passes``): an idle
        #: scheduler leaves both alone, which tests check; how often :meth:`serve` looked for runs (``looks``)
        self.stats: Counter[str] = Counter()

    # ------------------------------------------------------------------ lifecycle

    @property
    def capacity(self) -> int:
        """How many tasks this scheduler keeps in flight."""
        if self.executor.in_flight is not None:  # e.g. a pool feeding its workers in chunks
            return self.executor.in_flight
        cap = self.executor.capacity
        # Claiming and recording in batches is what makes small tasks cheap: keep many in flight
        # (a pool queues them for its workers), so each pass of the driver records many ends.
        return 256 if cap is None else max(16, max(1, cap) * 8)

    async def start(self) -> None:
        """Start the executor and the lease heartbeat."""
        if self._started:
            return
        freeze_long_lived()
        self._loop = asyncio.get_running_loop()
        await self.executor.start()
        await self.commands.start()
        # The HTTP client of app steps is made by their first call: its TLS context costs tens of
        # milliseconds, which a run without app steps (a cached re-run) need not pay.
        self._slots = asyncio.Semaphore(self.capacity)
        self._heartbeat = asyncio.create_task(self._renew_leases())
        self._started = True

    async def close(self) -> None:
        """Stop driving runs and close the executors; then hand the runs this scheduler was driving back.

        A graceful stop (``datamill worker`` on SIGTERM, a server shutting down): once its executors
        have stopped every task it ran, those tasks are requeued (their attempt given back, as when
        a lease lapses; not on an executor that cannot stop a call, see :meth:`_leave`) and each
        run lease it held is given back with a ``run.released`` event,
        which other schedulers wait for: one of them takes the run over at once, not at its next
        look for lapsed leases. Only a scheduler that dies leaves its tasks and runs to the leases.
        """
        self._closing = True
        for t in list(self._active.values()):
            t.cancel()
        for t in list(self._active.values()):
            with contextlib.suppress(BaseException):
                await t
        self._active.clear()
        if self._giving:
            await asyncio.wait(list(self._giving))
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(BaseException):
                await self._heartbeat
        await self.executor.close()
        await self.commands.close()
        await self.containers.close()
        await self.apps.close()
        leaving, self._leaving = self._leaving, {}
        if leaving:
            # Only now: a task is given to another scheduler once nothing of this one runs it.
            await asyncio.to_thread(self._leave, leaving)
        self._closing = False
        self._started = False

    async def sweep_containers(self) -> list[str]:
        """Remove the containers a crashed scheduler of this home left on this host; their names.

        The server calls it when it starts (:class:`~datamill.services.Services`), so leftovers go
        at once rather than at the first container step; without a container runtime, nothing.
        """
        removed = await self.containers.sweep_at_start()
        if removed:
            log.warning("removed %d container(s) a scheduler that is gone left: %s", len(removed), ", ".join(removed))
        return removed

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            if not self._active:
                continue  # no driver, no lease of ours: no write (it would wake every waiter for nothing)
            try:
                # Read here, in the loop's thread, where drivers come and go.
                await asyncio.to_thread(self._renew_now, list(self._active), list(self._owned))
            except DatamillError:
                log.exception("could not renew task leases")

    def _renew_now(self, run_ids: list[int], owned: list[int] | None = None) -> None:
        # Only the tasks of runs a driver of ours is driving: a task whose driver failed loses its
        # lease, and is requeued or failed instead of being held for ever.
        with self.home.db.write() as conn:
            leases.renew_leases(conn, self.owner, self.lease_seconds, run_ids)
            lost = ownership.renew(conn, self.owner, self.lease_seconds, owned or [])
            ownership.ask_for_help(conn, self.owner, [r for r in owned or [] if r not in lost], self.clock())
        if lost:  # a pause longer than the lease: another scheduler drives them too now (tasks stay leased)
            log.warning("run(s) %s: another scheduler took them over", ", ".join(map(str, sorted(lost))))

    # ------------------------------------------------------------------ finding work

    def pending_runs(self, owned_elsewhere: bool = False) -> list[int]:
        """Runs with work to do (oldest request first), after requeueing expired tasks.

        That is queued or running runs with a queued task, or with no task left to end (they only
        need ending). A run whose remaining tasks all run under a live lease is left to the
        scheduler holding them: driving it here would only watch it, on every poll. Runs another
        scheduler drives under a live run lease are left out too, unless ``owned_elsewhere``.
        """
        now = self.clock()
        with self.home.db.read() as conn:
            # Usually no lease has expired: the write lock is taken only when one has.
            if not leases.any_expired(conn, now):
                return self._unowned(conn, runs.pending_run_ids(conn), now, owned_elsewhere)
        with self.home.db.write() as conn:
            leases.reclaim_expired(conn, now)
        with self.home.db.read() as conn:
            return self._unowned(conn, runs.pending_run_ids(conn), now, owned_elsewhere)

    def _unowned(self, conn: Any, run_ids: list[int], now: float, keep_all: bool = False) -> list[int]:
        """``run_ids`` without those another scheduler drives (see :mod:`.ownership`)."""
        if keep_all:
            return run_ids
        taken = ownership.owned_elsewhere(conn, run_ids, self.owner, now)
        return [r for r in run_ids if r not in taken]

    async def run_until_idle(self, run_ids: list[int] | None = None) -> None:
        """Drive the given runs (all pending ones by default) until none has work this scheduler can do."""
        await self.start()
        while True:
            # Every pending run, even one another scheduler holds: the caller waits for them all to
            # end, and a holder that died (its run lease not lapsed yet) would leave it undriven.
            ids = run_ids if run_ids is not None else self.pending_runs(owned_elsewhere=True) + self._due_again()
            todo = [i for i in dict.fromkeys(ids) if i not in self._active and not self._backing_off(i)]
            retrying = run_ids is not None and any(i in self._backoff for i in run_ids)
            if not todo and not self._active and not retrying:
                return
            for rid in todo:
                # The caller waits for these runs: drive them here even when a worker drives them too.
                self._spawn(rid, exclusive=False)
            if self._active:
                await asyncio.wait(list(self._active.values()), return_when=asyncio.ALL_COMPLETED)
            if run_ids is not None:
                if not any(i in self._backoff for i in run_ids):
                    return
                # A driver backed off on a database outage: the caller (``Engine.run``, an embedded
                # ``datamill run``) waits for its runs to end, so they are driven again once the
                # back-off passes, not returned unfinished.
                await asyncio.sleep(self._backoff_wait(MAX_BACKOFF_SECONDS))

    async def serve(self, stop: asyncio.Event, poll: float = 0.5) -> None:
        """Drive runs as they are recorded until ``stop`` is set."""
        await self.start()
        # Runs only get work through events (a run queued, a task ended) or time (a lease expiring, a
        # back-off ending): with neither, a pass would read the same answer again, so an idle server
        # looks at leases only every quarter lease (at most every ``poll``), not every ``poll``.
        every = max(poll, min(self.lease_seconds / 4, LEASE_LOOK_SECONDS))
        seen, look_at = -1, 0.0
        events = self.home.events
        while not stop.is_set():
            now = time.monotonic()
            try:
                head = await asyncio.to_thread(events.latest, RUN_FAMILIES)
                if head == seen and now < look_at and not self._backoff_due(now):
                    await events.wait_or_stop(head, min(look_at - now, every), stop, RUN_FAMILIES)
                    continue
                # The newest event is read first, so that a run recorded meanwhile ends the next wait.
                cursor, pending = await asyncio.to_thread(lambda: (events.latest(RUN_FAMILIES), self.pending_runs()))
                self.stats["looks"] += 1
            except Exception:
                # The database may be unreachable for a while: the service must outlive that.
                log.exception("could not look for runs; trying again")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll)
                continue
            seen, look_at = cursor, now + every
            for rid in dict.fromkeys(pending + self._due_again()):
                if rid not in self._active and not self._backing_off(rid):
                    self._spawn(rid)
            for rid, (until, _n) in list(self._backoff.items()):
                if rid not in pending and rid not in self._active and until <= now:
                    del self._backoff[rid]  # it ended elsewhere: no back-off to wake for
            # Wake on a run's event (one was queued), when a back-off ends, or to reclaim leases.
            await events.wait_or_stop(cursor, self._backoff_wait(every), stop, RUN_FAMILIES)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PICKUP_MIN_SECONDS)

    def _backoff_due(self, now: float) -> bool:
        """Whether a run's back-off (see :meth:`_back_off`) has ended, so that it may be driven again."""
        return any(not self._active.get(rid) and until <= now for rid, (until, _n) in self._backoff.items())

    def _backoff_wait(self, longest: float) -> float:
        """Seconds until the first back-off ends, at most ``longest``."""
        now = time.monotonic()
        ends = [until - now for until, _n in self._backoff.values()]
        return max(0.001, min([longest, *ends]))

    def drive_now(self, run_ids: list[int], handed: Mapping[int, Handover] | None = None) -> None:
        """Start driving runs just recorded in this process, without waiting for :meth:`serve` to notice them.

        ``handed``: what :meth:`hand_over` prepared for them in the (committed) transaction that
        recorded them; their run lease is ours already.
        """
        for rid in run_ids:
            if rid in self._active:
                continue  # serve() found it first: its driver took the lease and read the run itself
            given = (handed or {}).get(rid)
            if given is not None:
                self._handed[rid] = given
            self._spawn(rid)

    def receive(self, run_id: int, handed: Handover) -> None:
        """From any thread: a run recorded with :meth:`hand_over`, its transaction committed, for the
        driver this scheduler starts for it (:meth:`run_until_idle`, :meth:`serve`) to take as is.

        Passed to the event loop, where drivers start: a run whose driver started meanwhile (it read
        the run itself) gets none, so that no stale handover waits for a later drive of it.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # not started: its driver reads the run (its lease is ours, taken with it)

        def keep() -> None:
            if run_id not in self._active:
                self._handed[run_id] = handed
                self.plans.pop(run_id, None)  # the handover carries it

        loop.call_soon_threadsafe(keep)

    def hand_over(self, conn: Connection, run_id: int, the_plan: Plan, actor: Actor) -> Handover | None:
        """In the write transaction that records run ``run_id`` (planned as ``the_plan`` for ``actor``):
        take its run lease for this scheduler and read what driving it needs, for :meth:`drive_now`
        once committed. None when the lease is another's (then the run is left to :meth:`serve`).

        The plan's cache look-ups were made in this transaction: a task whose key missed there is
        not looked up again by its driver, unless its key failed before (a trigger's run skips those).
        """
        if not ownership.claim_new(conn, run_id, self.owner, self.lease_seconds, self.clock()):
            return None
        recorded = runs.take_recorded(conn, run_id)
        if recorded is not None and all(t.status == TaskStatus.QUEUED for t in recorded[1]):
            # As recorded in this transaction (queued tasks have no outputs yet): nothing to read.
            # Without their parameters, as list_tasks(with_params=False) reads them (see there).
            row, rows = recorded[0], [tasks.task_row(t, {}) for t in recorded[1]]
        else:
            row = runs.run_row(conn, run_id)
            if row is None:
                return None
            rows = tasks.list_tasks(conn, run_id, with_params=False)
        if row.status in runs.FINISHED_RUN or all(t.status in FINISHED_TASK for t in rows):
            return Handover(row, None, actor, {})
        _mark_missed(conn, row, the_plan, rows)
        return Handover(row, the_plan, actor, {t.planned_id: t for t in rows})

    def _spawn(self, run_id: int, exclusive: bool = True) -> None:
        task = asyncio.create_task(self._drive_owned(run_id, exclusive), name=f"datamill-run-{run_id}")
        self._active[run_id] = task
        task.add_done_callback(lambda _t, rid=run_id: self._active.pop(rid, None))  # type: ignore[misc]

    def _due_again(self) -> list[int]:
        """Runs whose driver failed without recording their end, and whose delay has passed.

        They are driven again whether or not :meth:`pending_runs` lists them: a driver that
        failed (the database was unreachable) after committing claims leaves those tasks running
        under this scheduler's lease, and a run with no queued task left is not pending, so
        nobody would run them before their lease expired. Their new driver requeues them
        (:meth:`_load_run`).
        """
        return [rid for rid in self._backoff if not self._backing_off(rid)]

    def _backing_off(self, run_id: int) -> bool:
        wait = self._backoff.get(run_id)
        return wait is not None and time.monotonic() < wait[0]

    def _back_off(self, run_id: int) -> None:
        failures = self._backoff.get(run_id, (0.0, 0))[1] + 1
        delay = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** (failures - 1))
        self._backoff[run_id] = (time.monotonic() + delay, failures)

    async def _drive_owned(self, run_id: int, exclusive: bool) -> None:
        """Drive a run under its run lease (:mod:`.ownership`); when ``exclusive``, only if the lease is ours."""
        if run_id in self._handed:  # its lease was taken with it (hand_over): no transaction of its own
            claiming: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
            claiming.set_result(True)
        else:
            claiming = asyncio.ensure_future(asyncio.to_thread(self._take_run, run_id))
        try:
            mine = await asyncio.shield(claiming)
        except asyncio.CancelledError:
            # Stopped while the claim was being made: a lease taken meanwhile is given back, not
            # left to lapse (it would keep other schedulers off the run until then).
            with contextlib.suppress(BaseException):
                if await claiming:
                    if self._closing:
                        self._leaving[run_id] = True  # close() gives it back, telling the others
                    else:
                        self._give_back(run_id)
            raise
        except Exception as exc:
            log.warning("run %s: could not claim it (%s); trying again later", run_id, exc)
            self._back_off(run_id)
            return
        if mine is None and exclusive:
            return  # another scheduler drives it
        if mine:
            self._owned.add(run_id)
        try:
            await self._drive_safely(run_id)
        finally:
            if self._closing and run_id not in self._backoff and run_id not in self._released:
                # Stopped by close(): its tasks may still be stopping; close() hands the run back.
                self._owned.discard(run_id)
                self._leaving[run_id] = bool(mine)
            elif mine:
                self._owned.discard(run_id)
                # A driver that backed off (the database failed under it: an outage, a deadlock)
                # keeps the run lease: this scheduler drives the run again after the delay, and only
                # if it dies meanwhile does the lease lapse for another to take the run over.
                # Its last commit gave the lease back with the run's end (Recorder.commit) when it could.
                if run_id not in self._backoff and run_id not in self._released:
                    await asyncio.shield(self._give_back(run_id))
            self._released.discard(run_id)

    def _give_back(self, run_id: int) -> asyncio.Task[None]:
        """Give the run lease back in a thread that the driver's cancellation does not stop.

        Cancelling a plain ``to_thread`` call still waiting for a free thread drops the call: a
        scheduler closed just as a run ended then kept that run's lease until it lapsed.
        """
        giving = asyncio.ensure_future(asyncio.to_thread(self._give_up_run, run_id))
        self._giving.add(giving)
        giving.add_done_callback(self._giving.discard)
        return giving

    def _take_run(self, run_id: int) -> bool | None:
        """True: the run lease is ours; False: we help its owner (it asked); None: another drives it."""
        with self.home.db.write() as conn:
            if ownership.claim(conn, run_id, self.owner, self.lease_seconds, self.clock()):
                return True
            return False if ownership.wants_help(conn, run_id) else None

    def _leave(self, leaving: dict[int, bool]) -> None:
        """Hand back the runs :meth:`close` stopped driving (``{run: whether its lease is ours}``):
        requeue the tasks this scheduler still holds in them (its executors stopped them), and give
        each run lease back telling other schedulers (:func:`.ownership.hand_back`).

        An executor that cannot stop a call (:attr:`~datamill.executors.base.Executor.stops_calls`:
        inline threads, Dask) may still be running one: those tasks are left to their leases, as a
        dead scheduler's are, so that no task runs twice at once.
        """
        requeue = self.executor.stops_calls
        try:
            with self.home.db.write() as conn:
                for run_id, owned in leaving.items():
                    if requeue:
                        leases.requeue_orphans(conn, run_id, self.owner, runs.run_folder_id(conn, run_id))
                    if owned:
                        ownership.hand_back(conn, run_id, self.owner)
        except Exception as exc:  # left as a dead scheduler's: its leases lapse
            log.warning("could not hand runs %s back (%s); their leases lapse", ", ".join(map(str, leaving)), exc)

    def _give_up_run(self, run_id: int) -> None:
        try:
            with self.home.db.write() as conn:
                ownership.release(conn, run_id, self.owner)
        except Exception as exc:  # unreleased, it lapses with the lease
            log.warning("run %s: could not give its run lease back (%s); it lapses", run_id, exc)

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
            runs.fail_run(conn, run_id, message, self.owner)

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

    def _load_run(self, run_id: int) -> tuple[Any, Plan | None, Actor, dict[str, TaskRow]]:
        self.stats["loads"] += 1
        with self.home.db.read() as conn:
            orphans = leases.holds_any(conn, run_id, self.owner)
        if orphans:
            # Left running by an earlier driver of ours that failed: nobody runs them any more.
            with self.home.db.write() as conn:
                leases.requeue_orphans(conn, run_id, self.owner, runs.run_folder_id(conn, run_id))
        with self.home.db.read() as conn:
            row = runs.run_row(conn, run_id)
            if row is None:
                raise DatamillError(f"no run {run_id}")
            if row.status in runs.FINISHED_RUN or not runs.has_unfinished_tasks(conn, run_id):
                # Nothing to run (e.g. every task was answered from the cache when it was recorded):
                # no tasks to read, no plan to make.
                self.plans.pop(run_id, None)
                return row, None, self.home.admin, {}
            rows = tasks.list_tasks(conn, run_id, with_params=False)
            the_plan = self.plans.pop(run_id, None)
            if the_plan is not None:  # planned at submit, with its cache look-ups: not made again
                _mark_missed(conn, row, the_plan, rows)
        if the_plan is None:  # recorded elsewhere (or its driver failed): plan it here
            self.stats["plans"] += 1
            with self.home.db.read() as conn:
                params = runs.run_params(conn, row)
            the_plan = plan(
                self.pipeline_for(run_id, row.pipeline_ref),
                [input_ref_from_dict(d) for d in row.inputs or []],
                params["steps"],
                images=params.get("images"),
                resolve_image=functools.partial(image_digest, runtime=self.home.settings.container_runtime),
                mirror=row.source_folder,
            )
        actor = self.home.admin
        if row.requested_by is not None and row.requested_by != self.home.admin.id:
            with self.home.db.read() as conn:
                actor = lookups.actor_by_id(conn, row.requested_by) or actor
        return row, the_plan, actor, {t.planned_id: t for t in rows}

    async def drive(self, run_id: int) -> RunStatus | None:
        """Run the tasks of one run that this scheduler can claim, until the run ends or nothing is left for it.

        Tasks another scheduler holds are waited for when queued tasks need them (and requeued
        here if that scheduler dies and their leases expire), so a run driven by several
        schedulers still ends. Returns the run's final status, or None when the last tasks are
        another scheduler's to finish.
        """
        await self.start()
        handed = self._handed.pop(run_id, None)
        if handed is not None:  # recorded by this process's trigger just now: nothing to read again
            row, the_plan, actor, by_id = handed.row, handed.plan, handed.actor, handed.tasks
        else:
            row, the_plan, actor, by_id = await asyncio.to_thread(self._load_run, run_id)
        if row.status in runs.FINISHED_RUN:
            return RunStatus(row.status)
        if the_plan is None:  # no task left to run: end the run
            return await asyncio.to_thread(self._finish, run_id, row.dest_folder_id)
        for t in by_id.values():
            if t.status == TaskStatus.RUNNING:  # claimed by another scheduler (or one that died)
                t.status = HELD_ELSEWHERE
        run = RunView(row, the_plan, actor, by_id)
        cancel = bool(row.cancel_requested)  # just read: no second look on the first pass
        try:
            while True:
                self.stats["passes"] += 1
                if cancel:
                    return await self._cancel(run)
                ended, final, cancel = await self._pass(run)
                if ended:
                    return final
        except BaseException:
            # Cancelled, or the driver failed: its tasks stop with it (a failed driver's tasks are
            # then ended by _fail_run).
            for job in run.running:
                job.cancel()
            if run.committing is not None:
                # Let the commit in flight end before the run's end is decided (by _fail_run, ...).
                with contextlib.suppress(BaseException):
                    await asyncio.wait([run.committing])
            raise

    async def _pass(self, run: RunView) -> tuple[bool, RunStatus | None, bool]:
        """One pass of a run's driver: ``(done with the run, its final status, cancel asked)``.

        The ends of the tasks that finished since the last pass and the claims of the next ready
        tasks go in one group commit (:meth:`Recorder.commit`), which also reads the cancel flag.
        The commit runs in a thread while the tasks already started go on (:meth:`_pipelined`):
        its claimed tasks start once it is committed, so a claim is always committed before its
        task runs, and each end goes in exactly one commit.
        """
        if run.committing is not None:
            return await self._absorb(run)
        now = self.clock()
        # Half the capacity per commit: one half runs while the other's claim (with the first's
        # ends) is committed.
        free = min(self.capacity - len(run.running), max(1, self.capacity // 2))
        ready, planned, blocked, capped, resolved = _triage(run.plan, run.tasks, now, run.unfinished(), max(free, 1))
        hits: list[Done] = []
        to_run: list[TaskRow] = []
        if resolved:  # each was looked up and missed, with its key: it runs as it is (the usual case)
            to_run = ready
        else:
            planned = []  # the tasks to run are not ``ready`` in its order
            resolve = functools.partial(
                self._resolve_keys, run.plan, ready, run.tasks, bool(run.row.force), bool(run.row.skip_failed)
            )
            # Without a cache look-up the keys are resolved here, without yielding: the commit below
            # then starts before the tasks started last run, so they run while it is in flight.
            looks_up = _looks_up(run.plan, ready, bool(run.row.force))
            hits, to_run = await asyncio.to_thread(resolve) if looks_up else resolve()
        done, run.finished = run.finished, []
        batch = to_run[:free] if free > 0 else []
        answered = blocked + hits
        if done or answered or batch:
            claim = Claim([t.id for t in batch], self.owner, self.lease_seconds, self.executor.name)
            if not planned:
                planned = [run.plan.task(t.planned_id) for t in batch]
            claim.items = [pt.item.digest for pt in planned[: len(batch)] if pt.item is not None]
            if run.running and not answered:
                # Tasks are running: they go on while this batch is committed.
                self._pipelined(run, done, claim, batch)
                return False, None, False
            got = await asyncio.to_thread(self.recorder.commit, run, done, claim, answered)
            if got.final is not None:
                self._note_released(run.run_id, got)
                return True, got.final, False
            if got.cancel:
                return False, None, True
            self._start(run, batch, got.claimed)
            if answered or run.feeds_any(done) or (batch and (len(to_run) > free or capped)):
                # Ends just recorded may make others ready (claimed in the next pass, at once, not
                # after the next end); others took this batch, or more are ready: look again (the
                # next batch is committed while this one runs).
                return False, None, False
        else:
            # Nothing to commit (tasks still running, or waiting): only the cancel flag to look at.
            if await asyncio.to_thread(self._cancel_requested, run.run_id):
                return False, None, True
        if not run.running:
            if done:
                return False, None, False  # their ends may make others ready
            ended, final = await self._idle(run, now)
            return ended, final, False
        run.finished = await self._collect(run.running, timeout=0.25, group=GROUP_COMMIT_SECONDS)
        if self._progress:
            await asyncio.to_thread(self._flush_progress, run.run_id, run.folder_id)
        return False, None, False

    def _note_released(self, run_id: int, got: Committed) -> None:
        """A commit that ended the run gave its run lease back: its driver need not (:meth:`_drive_owned`)."""
        if got.released:
            self._released.add(run_id)
            self._owned.discard(run_id)  # not renewed any more

    def _pipelined(self, run: RunView, done: list[Done], claim: Claim, batch: list[TaskRow]) -> None:
        """Start a group commit in a thread; the driver collects ends of running tasks meanwhile."""
        for t in batch:
            t.status = CLAIMING  # not claimed again by a pass while its claim is in flight
        run.claiming = batch
        # Handed to a thread now, not by a task that would start after the tasks just started ran
        # (asyncio.to_thread is a coroutine): the commit is in flight while they run.
        commit = functools.partial(contextvars.copy_context().run, self.recorder.commit, run, done, claim)
        run.committing = asyncio.get_running_loop().run_in_executor(None, commit)

    async def _absorb(self, run: RunView) -> tuple[bool, RunStatus | None, bool]:
        """Collect ends until the commit in flight is done; then start what it claimed."""
        committing = run.committing
        assert committing is not None
        if not committing.done():
            waiting: set[asyncio.Future[Any]] = {committing, *waitables(run.running)}
            await asyncio.wait(waiting, timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
            if run.running and not committing.done():
                run.finished += await self._collect(run.running, timeout=0, group=GROUP_COMMIT_SECONDS)
            if not committing.done():
                return False, None, False
        run.committing = None
        batch, run.claiming = run.claiming, []
        try:
            got = committing.result()
        except BaseException:
            for t in batch:
                t.status = TaskStatus.QUEUED
            raise
        if got.final is not None or got.cancel:
            for t in batch:
                t.status = TaskStatus.QUEUED  # not claimed: the cancellation (or nothing) ends them
            self._note_released(run.run_id, got)
            return got.final is not None, got.final, got.cancel
        # Ends that came meanwhile go in the next commit, taken without yielding to the loop: the
        # tasks started now run while that commit is in flight, not before it starts.
        run.finished += _harvest(run.running)
        self._start(run, batch, got.claimed)
        if self._progress:
            await asyncio.to_thread(self._flush_progress, run.run_id, run.folder_id)
        return False, None, False

    def _start(self, run: RunView, batch: list[TaskRow], claimed: set[int]) -> None:
        """Start the tasks of ``batch`` this scheduler claimed; the others are another scheduler's."""
        mine = []
        for t in batch:
            if t.id in claimed:
                t.status = TaskStatus.RUNNING
                t.attempts += 1
                mine.append(t)
            else:
                # Another scheduler has it: stop considering it here.
                t.status = HELD_ELSEWHERE
        jobs = self.attempts.start(run.plan, mine, run.tasks, bool(run.row.dest_folder))
        run.running.update(zip(jobs, mine, strict=True))

    async def _idle(self, run: RunView, now: float) -> tuple[bool, RunStatus | None]:
        """Nothing of ours runs: end the run, or wait for a retry's time or for another scheduler's tasks."""
        waiting = [t for t in run.tasks.values() if t.status == TaskStatus.QUEUED]
        if waiting:
            delays = [t.not_before - now for t in waiting if t.not_before and t.not_before > now]
            if delays:
                await asyncio.sleep(min(delays))
                return False, None
            held = [t for t in run.tasks.values() if t.status == HELD_ELSEWHERE]
            if held:
                # Queued tasks may need what another scheduler is doing: look again when it records
                # something of this run (or its lease may have lapsed).
                await self._await_held(run.run_id)
                await asyncio.to_thread(self._refresh_held, run.run_id, held)
                return False, None
        return True, await asyncio.to_thread(self._finish, run.run_id, run.folder_id)

    async def _cancel(self, run: RunView) -> RunStatus | None:
        """Stop the run's running tasks, record their ends and end the run as cancelled."""
        for job in run.running:
            job.cancel()
        done, run.finished = run.finished, []
        while run.running:
            done += await self._collect(run.running)
        await asyncio.to_thread(self.recorder.record, run, done)
        # Tasks requeued since the request (a retry, a reclaimed lease) end here too.
        return await asyncio.to_thread(self._finish, run.run_id, run.folder_id, True)

    # ------------------------------------------------------------------ helpers on the DB (threads)

    def _cancel_requested(self, run_id: int) -> bool:
        with self.home.db.read() as conn:
            return runs.cancel_requested(conn, run_id)

    def _finish(self, run_id: int, folder_id: int | None, cancel: bool = False) -> RunStatus | None:
        with self.home.db.write() as conn:
            if cancel:
                runs.cancel_unheld(conn, run_id, folder_id)
            return runs.finish_run_if_done(conn, run_id, folder_id)

    async def _await_held(self, run_id: int) -> None:
        """Wait until an event of the run is recorded, or :data:`HELD_POLL_SECONDS` (at most a lease) pass."""
        events = self.home.events
        deadline = time.monotonic() + min(HELD_POLL_SECONDS, self.lease_seconds)
        cursor = await asyncio.to_thread(events.latest)
        while (left := deadline - time.monotonic()) > 0:
            if not await asyncio.to_thread(events.wait, cursor, left):
                return
            # Other runs' events wake us too: look only when one is this run's. The head is read
            # first, so an event of the run recorded meanwhile is after it and seen next round.
            head = await asyncio.to_thread(events.latest)
            if await asyncio.to_thread(events.read, cursor, 1, None, run_id):
                return
            cursor = head
            await asyncio.sleep(PICKUP_MIN_SECONDS)

    def _refresh_held(self, run_id: int, held: list[TaskRow]) -> None:
        """Update tasks held by other schedulers from the database, requeueing those whose lease expired."""
        now = self.clock()
        with self.home.db.read() as conn:
            expired = leases.any_expired(conn, now, run_id)
        if expired:  # their scheduler died
            with self.home.db.write() as conn:
                leases.reclaim_expired(conn, now)
        with self.home.db.read() as conn:
            fresh = {t.id: t for t in tasks.list_tasks(conn, run_id, with_params=False)}
        for t in held:
            f = fresh[t.id]
            if f.status != TaskStatus.RUNNING:
                t.status, t.attempts, t.key, t.error, t.not_before = f.status, f.attempts, f.key, f.error, f.not_before
                t.outputs, t.note = f.outputs, f.note

    def _resolve_keys(
        self, the_plan: Plan, ready: list[TaskRow], by_id: dict[str, TaskRow], forced: bool, skip_failed: bool = False
    ) -> tuple[list[Done], list[TaskRow]]:
        """Compute keys now known; split ready tasks into cache hits (and, with ``skip_failed``, tasks
        whose key failed in its step before) and tasks to run."""
        hits: list[Done] = []
        to_run: list[TaskRow] = []
        lookups_by_key: dict[str, list[TaskRow]] = {}
        for t in ready:
            pt = the_plan.task(t.planned_id)
            if t.key is None:
                upstream = {d: by_id[d].outputs for d in pt.deps}
                t.key = the_plan.key_for(pt, upstream)
                t.new_key = True  # not in its row yet: its end writes it
            assert t.key is not None
            if forced or pt.forced or not pt.cache or t.cache_missed:
                to_run.append(t)
            else:
                lookups_by_key.setdefault(t.key, []).append(t)
        missed: dict[str, list[TaskRow]] = {}
        if lookups_by_key:
            with self.home.db.read() as conn:
                found = tasks.lookup_cache_many(conn, list(lookups_by_key))
            for key, group in lookups_by_key.items():
                if key in found:
                    hits += [_cache_hit(the_plan, t, key, *found[key]) for t in group]
                else:
                    for t in group:
                        t.cache_missed = True  # not asked again on the next passes while it waits for a slot
                    missed[key] = group
        if missed and skip_failed:
            with self.home.db.read() as conn:
                failed = tasks.failed_earlier(conn, list(missed))
            for key, run in failed.items():
                for t in missed.pop(key):
                    pt = the_plan.task(t.planned_id)
                    hits.append(Done(t, pt, TaskStatus.SKIPPED, key=key, note=f"failed earlier (see run {run})"))
        for group in missed.values():
            to_run += group
        return hits, to_run

    # ------------------------------------------------------------------ progress

    def _flush_progress(self, run_id: int, folder_id: int | None) -> None:
        """Record the progress reported since the last flush, each under its own run and folder.

        The driver of any run may flush the progress of every run this scheduler drives.
        """
        if not self._progress:
            return
        pending = dict(self._progress)
        self._progress.clear()
        folders = {run_id: folder_id}
        with self.home.db.write() as conn:
            for task_id, (rid, fraction, message) in pending.items():
                if rid not in folders:
                    folders[rid] = runs.run_folder_id(conn, rid)
                tasks.set_progress(conn, task_id, rid, folders[rid], fraction, message)

    # ------------------------------------------------------------------ running tasks

    def log_path(self, task_id: int) -> Path:
        """Where a running task's log lines are appended (read by ``datamill logs --follow``)."""
        return self.workdirs.log_path(task_id)

    async def _collect(
        self, running: dict[Job, TaskRow], timeout: float | None = None, group: float = 0.0
    ) -> list[Done]:
        """Ends of finished tasks, once one has finished (or after ``timeout``).

        With ``group``, the ends of tasks that finish within that many seconds of the first come
        too: they go in the same group commit instead of one commit each.
        """
        if not running:
            return []
        # A batch of attempts in the loop is waited for as one task, not as each of its attempts.
        pending = waitables(running)
        ended = len(pending) < len(running) and any(j.done() for j in running)
        if pending and not ended:
            finished, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            ended = bool(finished)
        if ended and group > 0:
            # A pool's calls are waited for by one future that wakes at any end (``waitables``):
            # look again at what is still running after each wake, until the group's time is up.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + group
            pending = waitables(running)
            while pending and (left := deadline - loop.time()) > 0:
                await asyncio.wait(pending, timeout=left, return_when=asyncio.ALL_COMPLETED)
                pending = waitables(running)
        return _harvest(running)


def _mark_missed(conn: Connection, row: Any, the_plan: Plan, rows: list[TaskRow]) -> None:
    """Mark the queued tasks whose key the plan looked up (at submit) and missed: their driver does
    not look them up again, unless their key failed before and the run skips those."""
    missed = {
        t.id: t.key
        for t in the_plan.tasks
        if t.decision == "run" and t.key is not None and t.cache and not t.forced and not row.force
    }
    failed: Mapping[str, int] = {}
    if row.skip_failed and missed:
        # Found by the plan's own cache look-up when it was asked to (the same transaction), else read.
        asked = the_plan.failed
        failed = asked if asked is not None else tasks.failed_earlier(conn, sorted(set(missed.values())))
    for t in rows:
        key = missed.get(t.planned_id)
        if t.status == TaskStatus.QUEUED and key is not None and t.key == key and key not in failed:
            t.cache_missed = True


def _looks_up(the_plan: Plan, ready: list[TaskRow], forced: bool) -> bool:
    """Whether :meth:`Scheduler._resolve_keys` would ask the database about any of ``ready``."""
    if forced:
        return False
    for t in ready:
        if not t.cache_missed:
            pt = the_plan.task(t.planned_id)
            if pt.cache and not pt.forced:
                return True
    return False


def _harvest(running: dict[Job, TaskRow]) -> list[Done]:
    """The ends of the tasks in ``running`` that have finished, taken out of it (no waiting)."""
    return _take_ends(running, [j for j in running if j.done()])


def _take_ends(running: dict[Job, TaskRow], finished: Iterable[Job]) -> list[Done]:
    """The ends of the ``finished`` jobs, taken out of ``running``; a cancelled job ends its task as cancelled."""
    out = []
    for job in finished:
        t = running.pop(job)
        try:
            out.append(job.result())
        except asyncio.CancelledError:
            out.append(Done(t, None, TaskStatus.CANCELLED, error="run cancelled"))  # type: ignore[arg-type]
    return out


class Triage(NamedTuple):
    """What :func:`_triage` found among a run's queued tasks."""

    #: queued tasks whose inputs are done, in plan order
    ready: list[TaskRow]
    #: the planned task of each of ``ready`` (looked up once a pass, not again by each step of it)
    planned: list[PlannedTask]
    #: ends of the tasks that end without running (refused, an input failed or was skipped)
    blocked: list[Done]
    #: whether the look stopped at ``slots`` with tasks left to look at
    capped: bool
    #: whether every ready task was looked up and missed already, with its key: nothing to resolve
    #: (:meth:`Scheduler._resolve_keys` would send each to run as it is, in this order)
    resolved: bool


def _triage(
    the_plan: Plan,
    by_id: dict[str, TaskRow],
    now: float,
    todo: Iterable[TaskRow] | None = None,
    slots: int | None = None,
) -> Triage:
    """Queued tasks whose inputs are done (ready to run), those that end without running (blocked),
    and whether the look stopped at ``slots``.

    ``todo``: the tasks to look at (all by default), in plan order. ``slots``: how many tasks the
    pass can start; the look stops once that many ready tasks need no cache look-up (they were
    looked up and missed): the ones after them could not start in this pass, and looking at them
    (and working out their keys again) in every pass cost a trivial task's share several times
    over. Tasks that need a look-up are not counted (a cache hit takes no slot).

    The tasks running (or being claimed) are walked over in every pass, hundreds of them: a task
    that is not queued costs one comparison, the limits are checked only when a task is added.
    """
    ready: list[TaskRow] = []
    planned: list[PlannedTask] = []
    blocked: list[Done] = []
    tasks_left = iter(by_id.values() if todo is None else todo)
    cap = sys.maxsize if slots is None else slots
    if cap <= 0:  # no slot at all: stopped before the first task, if there is one
        return Triage(ready, planned, blocked, next(tasks_left, None) is not None, True)
    runnable = 0
    resolved = True
    queued = TaskStatus.QUEUED
    task = the_plan.task
    for t in tasks_left:
        if t.status != queued:  # claimed tasks are RUNNING until their end is recorded
            continue
        pt = task(t.planned_id)
        if t.deps or t.not_before or pt.refused is not None:  # not the usual per-item task
            deps = [by_id[d] for d in t.deps]
            end = _blocked(t, pt, deps)
            if end is not None:
                blocked.append(end)
                continue
            if not (all(d.status in FINISHED_TASK for d in deps) and (t.not_before or 0) <= now):
                continue
        ready.append(t)
        planned.append(pt)
        if t.cache_missed:
            runnable += 1
            if t.key is None:
                resolved = False
        else:
            resolved = False
        if len(ready) >= READY_BATCH:
            break  # the rest wait for a later pass
        if runnable >= cap:
            # Stopped: said so only when there are tasks left to look at.
            return Triage(ready, planned, blocked, next(tasks_left, None) is not None, resolved)
    return Triage(ready, planned, blocked, False, resolved)


def _blocked(t: TaskRow, pt: PlannedTask, deps: list[TaskRow]) -> Done | None:
    """How a queued task ends without running (refused, an input failed or was skipped), or None."""
    if pt.refused is not None:  # its output would replace another input's
        return Done(t, pt, TaskStatus.FAILED, error=pt.refused, failure="collision")
    # An aggregate sees every item: a failed item reaches it as None instead of failing it, so one
    # malformed file does not stop the summary of the others.
    tolerated = {tid for w in pt.wires if w.many for tid in w.tasks}
    bad = [d for d in deps if d.status in (TaskStatus.FAILED, TaskStatus.CANCELLED) and d.planned_id not in tolerated]
    if bad:
        return Done(t, pt, TaskStatus.FAILED, error=f"input {bad[0].planned_id} {bad[0].status}", failure="input")
    skipped = [d for d in deps if d.status == TaskStatus.SKIPPED and d.planned_id not in tolerated]
    if skipped:  # not run for the same reason as its input: not a new failure either
        first = skipped[0]
        note = first.note or "was skipped"
        if not note.startswith("its input "):  # name the task that failed, not the chain
            note = f"its input {first.planned_id} {note}"
        return Done(t, pt, TaskStatus.SKIPPED, note=note)
    return None


def _cache_hit(the_plan: Plan, t: TaskRow, key: str, src_id: int, outs: list[OutputRecord]) -> Done:
    """A ready task answered from the cache: the outputs of task ``src_id``, which had the same key."""
    pt = the_plan.task(t.planned_id)
    d = Done(t, pt, TaskStatus.CACHED, outputs=list(outs), cached_from=src_id, key=key)
    try:
        d.publish = publish_plan(the_plan, pt, outs)
    except DatamillError as exc:  # two outputs would get one name: this task fails
        d = Done(t, pt, TaskStatus.FAILED, error=exc.message, key=key, failure="publish")
    return d
