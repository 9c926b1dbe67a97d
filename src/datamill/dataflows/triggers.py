"""Triggers: turn new items, cron ticks and Start into runs of a dataflow.

Each running dataflow keeps a cursor into the event log. :meth:`Triggers.poll` reads the events
after it, and when items landed in the source folder it records a run and advances the cursor
**in the same transaction**, so a process killed at any moment neither misses an item nor
processes one twice. Runs already recorded are resumed by the scheduler.

Bursts are batched with a leading edge: the first item after a quiet spell starts a run at once
(low latency); items landing within ``batch_window_ms`` after that go into the next run.

What a run covers: a pipeline of per-item steps only runs over the items that changed; a pipeline
with an aggregate step runs over every current item of the source (unchanged items' tasks are
cached, so that is cheap), because the aggregate must see all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import Connection, bindparam, select, update

from datamill import events
from datamill.dataflows import sources
from datamill.dataflows.dataflow import (
    DataflowKind,
    DataflowState,
    fail_dataflow,
    find_cycle,
    flow_ends,
    implementation,
)
from datamill.db.models import Dataflow, Event, Run, Task, TaskInput, User
from datamill.engine import registry
from datamill.engine.engine import Engine
from datamill.engine.planner import Plan
from datamill.engine.runs import RunStatus, TaskStatus
from datamill.engine.scheduler import Handover, Scheduler
from datamill.errors import InvalidInput, NotFound, PermissionDenied
from datamill.events import EventKind
from datamill.home import Home
from datamill.pipeline import Pipeline, load_pipeline
from datamill.pipeline.inputs import InputRef
from datamill.store import lookups
from datamill.store.access import Actor, Level, level_on, remembered

log = logging.getLogger("datamill.triggers")

ITEM_EVENTS = (EventKind.ITEM_CREATED, EventKind.ITEM_UPDATED)
#: Events after which a pass reads the running dataflows again (their rows are kept between passes).
FLOW_EVENTS = (
    EventKind.DATAFLOW_CREATED,
    EventKind.DATAFLOW_UPDATED,
    EventKind.DATAFLOW_STARTED,
    EventKind.DATAFLOW_STOPPED,
    EventKind.DATAFLOW_FAILED,
    EventKind.DATAFLOW_DELETED,
)
#: The families of :data:`ITEM_EVENTS` and :data:`FLOW_EVENTS`: only their events (and the clock) give a
#: pass something to do; the service sleeps through the others (a run's tasks recorded by the hundred).
FAMILIES = ("item", "dataflow")
#: The row a firing transaction reads first, locked: passes of several processes take turns per dataflow.
#: With its owner's name and admin flag (None: no owner, or one deleted), read in the same statement.
_FLOW_FOR_UPDATE = (
    select(Dataflow, User.name.label("owner_name"), User.is_admin.label("owner_is_admin"))
    .outerjoin(User, User.id == Dataflow.owner_id)
    .where(Dataflow.id == bindparam("id"))
    .with_for_update(of=Dataflow)
)
#: Statements of every pass, built once (building one cost more than running it).
_SINCE = (
    select(Event.kind, Event.folder_id)
    .where(Event.seq > bindparam("seen"), Event.seq <= bindparam("latest"), Event.kind.in_(ITEM_EVENTS + FLOW_EVENTS))
    .distinct()
)
_LANDED = select(Event.seq, Event.item_id, Event.ts).where(
    Event.seq > bindparam("cursor"),
    Event.seq <= bindparam("latest"),
    Event.folder_id.in_(bindparam("folders", expanding=True)),
    Event.kind.in_(ITEM_EVENTS),
)
_MOVE_CURSOR = update(Dataflow).where(Dataflow.id == bindparam("flow")).values(cursor=bindparam("to"))
_OWNER = select(User.id, User.name, User.is_admin).where(User.id == bindparam("id"))
#: A dataflow's cursor is moved past events that do not concern it once it lags this far behind.
CURSOR_SLACK = 1000


class _PlanSink:
    """Where :meth:`Engine.submit` leaves the plan of the run it records (it hands plans to a
    scheduler this way): kept here until the recording transaction commits, since a run id rolled
    back may be given again to another run."""

    def __init__(self) -> None:
        self.plans: dict[int, Plan] = {}
        self.pipelines: dict[int, Pipeline] = {}


class Triggers:
    """Watches running dataflows and records their runs.

    With ``scheduler`` (the one of this process), :meth:`serve` hands each run it records straight
    to it, with the run's lease, plan and task rows taken in the recording transaction
    (:meth:`Scheduler.hand_over`): its driver claims the first task without reading the run again.
    """

    def __init__(
        self,
        home: Home,
        engine: Engine | None = None,
        clock: Callable[[], float] = time.time,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.home = home
        self.engine = engine or Engine(home)
        self.clock = clock
        self.scheduler = scheduler
        #: set by :meth:`serve`: gives a committed run (and its handover) to the scheduler's event loop
        self._hand: Callable[[int, Handover | None], None] | None = None
        #: the handover made in the transaction in progress, given once it is committed
        self._staged: dict[int, Handover] = {}
        self._last_fire: dict[int, float] = {}
        # What this object remembers between passes, only to decide cheaply *when* to look: the
        # cursors moved in the database (with the runs they record) stay what makes firing exactly-once.
        #: the newest event the last pass looked at, and the running dataflows it read then
        self._seen: int | None = None
        self._rows: list[Any] | None = None
        #: running dataflows seen by a pass, those not checked from their own cursor yet, and those
        #: whose source got items since (held back by a batch window until it closes)
        self._known: set[int] = set()
        self._unchecked: set[int] = set()
        self._landed: set[int] = set()
        #: the row the last firing transaction read (FOR UPDATE), with what it moved; see :meth:`_keep`
        self._moved: Any = None

    # ------------------------------------------------------------------ one pass

    def poll(self, now: float | None = None) -> list[int]:
        """One pass over every running dataflow; returns the ids of the runs it recorded."""
        now = self.clock() if now is None else now
        # The newest event as this process knows it (read once per commit, whoever asks); events after
        # it are the next pass's.
        latest = self.home.events.latest()
        all_rows, ids = self._look(latest, now)
        created: list[int] = []
        running = {r.id: flow_ends(r) for r in all_rows}
        for fid in ids:
            # Saving and starting refuse cycles; this catches those that got past (saved before the
            # check existed): a dataflow feeding on its own results through others is stopped.
            chain = find_cycle(running[fid], list(running.values()))
            if chain is not None:
                # Not naming the others: whoever sees this dataflow may not see them.
                message = (
                    f"stopped: it feeds on its own results through {len(chain) - 2} other running dataflow(s) "
                    "(a cycle), so each run would start another forever. Change its source or destination "
                    "to break the chain, then start it again"
                )
                log.warning("dataflow %s: %s", fid, message)
                self._fail(fid, message)
                del running[fid]
                continue
            try:
                run_id = self._poll_one(fid, now, latest)
            except (InvalidInput, NotFound, PermissionDenied) as exc:
                # Its configuration no longer works (pipeline, folders, the owner's rights): it
                # stops, saying why. Other errors (the database is unreachable, ...) are not the
                # dataflow's: they propagate and the next pass tries again.
                log.warning("dataflow %s: %s", fid, exc.message)
                self._rows = None
                self._fail(fid, exc.message)
                continue
            except BaseException:
                self._rows = None  # what the failed transaction read is unknown: read the rows again
                raise
            self._keep(fid)
            self._landed.discard(fid)
            if run_id is not None:
                created.append(run_id)
        return created

    def _keep(self, dataflow_id: int) -> None:
        """Replace the kept row of a dataflow by the one its firing transaction read and moved
        (:attr:`_moved`): the next pass needs no read of the running dataflows for it."""
        moved, self._moved = self._moved, None
        if self._rows is None:
            return
        if moved is None or moved.state != DataflowState.RUNNING:
            self._rows = None  # gone or stopped meanwhile: read them again
            return
        self._rows = [moved if r.id == dataflow_id else r for r in self._rows]

    def next_wakeup(self, now: float | None = None) -> float | None:
        """Seconds until a batched or scheduled run is due (None: only new events matter)."""
        now = self.clock() if now is None else now
        due: list[float] = []
        rows: list[Any] | None = self._rows
        if rows is None:
            with self.home.db.read() as conn:
                rows = list(
                    conn.execute(
                        select(Dataflow.id, Dataflow.next_fire_at, Dataflow.config).where(
                            Dataflow.state == DataflowState.RUNNING
                        )
                    ).all()
                )
        for r in rows:
            if r.next_fire_at is not None:
                due.append(r.next_fire_at - now)
            last = self._last_fire.get(r.id)
            if last is not None and last + self._window(r.config) > now:
                # A batch window still open: items held back by it are taken when it closes.
                due.append(last + self._window(r.config) - now)
        return max(0.0, min(due)) if due else None

    def _window(self, config: dict[str, Any]) -> float:
        ms = config.get("batch_window_ms")
        return (self.home.settings.batch_window_ms if ms is None else ms) / 1000.0

    def _look(self, latest: int, now: float) -> tuple[list[Any], list[int]]:
        """The running dataflows and those with something to record now.

        Most passes find nothing to do: decide that in one read transaction (none at all when
        nothing was committed since the last pass), and take the write lock only for the dataflows
        that have something to record.
        """
        if self._rows is not None and self._seen is not None and self.home.db.family_head(FAMILIES) <= self._seen:
            # No item or dataflow event is known since the last pass: only the clock (cron, a batch
            # window) can act. The pass stays where it was: an event before ``latest`` may be told
            # later (another process's notification after a later commit of this one), then read.
            rows = [r for r in self._rows if r.kind != DataflowKind.STREAM]
            return self._rows, [r.id for r in rows if self._due(None, r, now, latest)]
        own = self._own_since(latest)
        rows = [r for r in self._rows or () if r.kind != DataflowKind.STREAM]
        if own is not None and self._rows is not None and not own[1] and self._known.issuperset(r.id for r in rows):
            # Every event since the last pass is one this process committed (the runs and tasks it
            # records, items it stored), none changed a dataflow, and every dataflow was checked from
            # its cursor before: what landed is known without a read.
            self._note_landed(rows, own[0])
            ids = [r.id for r in rows if self._due(None, r, now, latest)]
            self._seen = latest
            return self._rows, ids
        with self.home.db.read() as conn:
            folders, flows_changed = own if own is not None else self._since(conn, latest)
            if self._rows is None or self._seen is None or flows_changed:
                # Directory dataflows land files (datamill.dataflows.directory) and stream dataflows' consumers
                # run in datamill.dataflows.ingest: neither has a trigger.
                self._rows = list(
                    conn.execute(
                        select(Dataflow).where(
                            Dataflow.state == DataflowState.RUNNING, Dataflow.kind != DataflowKind.DIRECTORY
                        )
                    ).all()
                )
            # else no item landed in a source and no dataflow changed: the rows read before still hold
            all_rows = self._rows
            rows = [r for r in all_rows if r.kind != DataflowKind.STREAM]
            self._note_landed(rows, folders)
            ids = [r.id for r in rows if self._due(conn, r, now, latest)]
        # Only now that every new dataflow was checked from its cursor: a failed read checks them again.
        self._seen, self._known, self._unchecked = latest, {r.id for r in rows}, set()
        return all_rows, ids

    def _own_since(self, latest: int) -> tuple[set[int | None], bool] | None:
        """What :meth:`_since` would read, when this process's own commits wrote every event since
        the last pass (``Database.own_events``); None when they did not, or it cannot tell."""
        seen = self._seen
        if seen is None:
            return None
        facts = self.home.db.own_events(seen, latest)
        if facts is None:
            return None
        return {f for k, f in facts if k in ITEM_EVENTS}, any(k in FLOW_EVENTS for k, _ in facts)

    def _since(self, conn: Connection, latest: int) -> tuple[set[int | None], bool]:
        """What happened since the last pass, in one statement over its events (a few), whatever the
        number of dataflows: the folders items landed in, and whether a dataflow changed."""
        seen = self._seen
        if seen is None or latest <= seen:
            return set(), False
        rows = conn.execute(_SINCE, {"seen": seen, "latest": latest}).all()
        return {r.folder_id for r in rows if r.kind in ITEM_EVENTS}, any(r.kind in FLOW_EVENTS for r in rows)

    def _note_landed(self, rows: list[Any], folders: set[int | None]) -> None:
        """Mark the dataflows whose source got items since the last pass.

        A dataflow this object has not looked at yet (just started, or this process just began) is
        checked from its own cursor instead (:meth:`_due`), so nothing landed before is missed.
        """
        fresh = {r.id for r in rows}
        if folders:
            self._landed.update(r.id for r in rows if r.id in self._known and self._watches(r, folders))
        self._landed &= fresh  # a stopped dataflow starts again from its cursor, not from here
        self._unchecked = fresh - self._known

    def _watches(self, row: Any, folder_ids: set[int | None]) -> bool:
        """Whether items landing in ``folder_ids`` may concern this dataflow's trigger.

        A recursive dataflow's subfolders change as folders are made and moved: any landing may
        concern it, and :meth:`_poll_one` decides from the folders it watches at that moment.
        """
        if row.source_folder_id is None:
            return False
        if (row.config or {}).get("recursive"):
            return any(f is not None for f in folder_ids)
        return row.source_folder_id in folder_ids

    def _due(self, conn: Connection | None, row: Any, now: float, latest: int) -> bool:
        """Whether :meth:`_poll_one` would record anything for this dataflow now (a read-only check)."""
        if row.backfilled_version != row.version:
            return True
        cfg = dict(row.config or {})
        trigger = str(cfg.get("trigger") or "new-items")
        if trigger.startswith("cron:"):
            return row.next_fire_at is None or now >= row.next_fire_at
        if latest - row.cursor >= CURSOR_SLACK:
            return True  # move the cursor past unrelated events, so the scan after it stays short
        if trigger != "new-items" or row.source_folder_id is None:
            return False
        if row.id in self._unchecked and conn is not None and self._landed_since_cursor(conn, row, latest):
            self._landed.add(row.id)
        if row.id not in self._landed:
            return False
        last = self._last_fire.get(row.id)
        return last is None or now - last >= self._window(cfg)  # else inside the batch window

    def _landed_since_cursor(self, conn: Connection, row: Any, latest: int) -> bool:
        cfg = dict(row.config or {})
        landed = conn.execute(
            _LANDED.limit(1), {"cursor": row.cursor, "latest": latest, "folders": self._watched(conn, row, cfg)}
        ).first()
        return landed is not None

    def _poll_one(self, dataflow_id: int, now: float, latest: int) -> int | None:
        self._staged = {}
        try:
            # The run's checks ask for the same folders several times: once each is enough here.
            with self.home.db.write() as conn, remembered(conn):
                run_id = self._fire(conn, dataflow_id, now, latest)
            # Committed: only now may the scheduler see it (a rolled-back run's id is given again).
            if run_id is not None and self._hand is not None:
                self._hand(run_id, self._staged.get(run_id))
            return run_id
        finally:
            self._staged = {}

    def _fire(self, conn: Connection, dataflow_id: int, now: float, latest: int) -> int | None:
        """What :meth:`_poll_one` records in its write transaction: a run (its id) or nothing.

        ``latest`` is the newest event of the pass: every event up to it is committed (events
        commit in ``seq`` order), so the cursor moves to it and what landed since is the next
        pass's. Only a backfill reads the log's head again: it covers the source as it is now.
        """
        # FOR UPDATE: trigger passes of several processes on one PostgreSQL take turns per
        # dataflow, and the second reads the cursor the first moved (SQLite has one writer).
        row = conn.execute(_FLOW_FOR_UPDATE, {"id": dataflow_id}).first()
        self._moved = row
        if row is None or row.state != DataflowState.RUNNING:
            return None
        cfg = dict(row.config or {})
        trigger = str(cfg.get("trigger") or "new-items")
        actor = self.home.admin if row.owner_name is None else Actor(row.owner_id, row.owner_name, row.owner_is_admin)
        if row.backfilled_version != row.version:
            # Started (or edited while running): cover what is already in the source. The
            # cursor moves too, or items landed since the start would be run a second time.
            latest = events.latest_seq(conn)
            run_id = self._submit(conn, row, actor, cfg, None, "start: items without a result", now, handing=True)
            self._move(conn, row, backfilled_version=row.version, cursor=max(row.cursor, latest))
            return run_id
        if trigger.startswith("cron:"):
            return self._poll_cron(conn, row, actor, cfg, trigger, now, latest)
        if trigger != "new-items" or row.source_folder_id is None:
            if latest > row.cursor:
                self._move(conn, row, cursor=latest)
            return None
        landed = conn.execute(
            _LANDED, {"cursor": row.cursor, "latest": latest, "folders": self._watched(conn, row, cfg, actor)}
        ).all()
        if not landed:
            if latest > row.cursor:
                self._move(conn, row, cursor=latest)
            return None
        last = self._last_fire.get(row.id)
        if last is not None and now - last < self._window(cfg):
            return None  # inside the batch window: the next poll after it takes them all
        item_ids = sorted({e.item_id for e in landed if e.item_id is not None})
        run_id = self._submit(
            conn, row, actor, cfg, item_ids, f"{len(item_ids)} new or updated item(s)", now, handing=True
        )
        self._move(conn, row, cursor=latest)
        return run_id

    def _move(self, conn: Connection, row: Any, **values: Any) -> None:
        """Update the dataflow's row in the firing transaction, and keep it so for the next pass (:meth:`_keep`)."""
        if values.keys() == {"cursor"}:  # what most firing passes move
            conn.execute(_MOVE_CURSOR, {"flow": row.id, "to": values["cursor"]})
        else:
            conn.execute(update(Dataflow).where(Dataflow.id == row.id).values(**values))
        self._moved = SimpleNamespace(**{**row._asdict(), **values})

    def _poll_cron(
        self, conn: Connection, row: Any, actor: Actor, cfg: dict[str, Any], trigger: str, now: float, latest: int
    ) -> int | None:
        from datamill.dataflows.dataflow import Trigger

        t = Trigger.parse(trigger)
        latest = max(latest, row.cursor)  # never back
        if row.next_fire_at is None:
            nxt = t.next_fire(now)[0]
            self._move(conn, row, next_fire_at=nxt, cursor=latest)
            return None
        if now < row.next_fire_at:
            return None
        # Missed ticks (the server was down) are skipped, not replayed one by one.
        nxt = t.next_fire(now)[0]
        run_id = self._submit(conn, row, actor, cfg, None, "cron", now, handing=True)
        self._move(conn, row, next_fire_at=nxt, cursor=latest)
        return run_id

    def run_now(self, dataflow_name: str, actor: Actor) -> int | None:
        """``flow run``: one run over the current contents of the source, now."""
        with self.home.db.write() as conn:
            row = conn.execute(select(Dataflow).where(Dataflow.name == dataflow_name)).first()
            if row is None:
                raise NotFound(f"no dataflow {dataflow_name!r}")
            if row.kind == DataflowKind.STREAM:
                raise InvalidInput(
                    f"dataflow {dataflow_name!r} is a stream: it lands files while it runs "
                    f"(`datamill flow start {dataflow_name}`); there is nothing to run once"
                )
            cfg = dict(row.config or {})
            if row.kind == DataflowKind.DIRECTORY:
                raise InvalidInput(
                    f"dataflow {dataflow_name!r} is a directory dataflow: it lands files while it runs and has no "
                    "pipeline to run; start it with `datamill flow start`"
                )
            for key in ("source", "destination"):
                if cfg.get(key) and level_on(conn, actor, str(cfg[key])) < Level.READ:
                    # The run is the actor's: refuse here, before the engine's errors name the folder.
                    raise PermissionDenied(
                        f"you may not run dataflow {dataflow_name!r}: you may not read its {key}; ask its owner"
                    )
            # Asked for by a user: inputs that failed before are tried again.
            return self._submit(conn, row, actor, cfg, None, f"run by {actor.name}", self.clock(), skip_failed=False)

    # ------------------------------------------------------------------ submitting

    def _owner(self, conn: Connection, owner_id: int | None) -> Actor:
        if owner_id is None:
            return self.home.admin
        u = conn.execute(_OWNER, {"id": owner_id}).first()
        return self.home.admin if u is None else Actor(u.id, u.name, u.is_admin)

    def _watched(self, conn: Connection, row: Any, cfg: dict[str, Any], actor: Actor | None = None) -> list[int]:
        """Ids of the folders whose new items fire the dataflow: its source (and below it, ``recursive``)."""
        if not sources.is_recursive(cfg):
            return [row.source_folder_id]
        owner = actor or self._owner(conn, row.owner_id)
        return list(sources.watched_folders(conn, str(cfg["source"]), row.source_folder_id, True, owner))

    def _inputs(
        self, conn: Connection, cfg: dict[str, Any], actor: Actor, item_ids: list[int] | None, aggregate: bool
    ) -> list[InputRef]:
        """The current versions of the source's items, by name: only ``item_ids`` unless the pipeline aggregates.

        Read through ``conn``, the transaction that records the run and moves the cursor, and
        only the items wanted (a run for one new file does not list a folder of thousands). A
        recursive dataflow takes the items of the subfolders ``actor`` may read too.
        """
        source = str(cfg["source"])
        folder_id = lookups.folder_id(conn, source)
        if folder_id is None:
            raise NotFound(f"the source folder {source!r} no longer exists", path=source)
        only = item_ids if item_ids is not None and not aggregate else None
        folders = sources.watched_folders(conn, source, folder_id, sources.is_recursive(cfg), actor)
        return [
            InputRef(i.id, i.version_id, i.folder, i.name, i.version, i.digest, i.size, i.content_type, i.metadata)
            for i in sources.current_items(conn, folders, only)
        ]

    def _processed(self, conn: Connection, dataflow_id: int, version: int, refs: list[InputRef]) -> set[int]:
        """Version ids among ``refs`` that already have a finished result under this configuration."""
        ids = [r.version_id for r in refs if r.version_id is not None]
        if not ids:
            return set()
        rows = conn.execute(
            select(TaskInput.version_id)
            .join(Task, Task.id == TaskInput.task_id)
            .join(Run, Run.id == Task.run_id)
            .where(
                Run.dataflow_id == dataflow_id,
                Run.dataflow_version == version,
                Task.status.in_([TaskStatus.SUCCEEDED, TaskStatus.CACHED]),
                TaskInput.version_id.in_(ids),
            )
        ).scalars()
        return {int(v) for v in rows if v is not None}

    def _submit(
        self,
        conn: Connection,
        row: Any,
        actor: Actor,
        cfg: dict[str, Any],
        item_ids: list[int] | None,
        reason: str,
        now: float,
        skip_failed: bool = True,
        handing: bool = False,
    ) -> int | None:
        # Its checks ask for the source's and the destination's ids: read both at once (in a firing pass).
        lookups.remember_folder_ids(conn, [str(cfg[k]) for k in ("source", "destination") if cfg.get(k)])
        # The pipeline is what the dataflow's owner chose, whoever asks for this run (`flow run`).
        # An image dataflow runs image://IMAGE, checked against allowed_images as it is now.
        owner = actor if row.owner_id is not None and actor.id == row.owner_id else self._owner(conn, row.owner_id)
        choice = registry.choose(conn, owner, implementation(cfg), self.home.settings.image_patterns)
        pipeline = load_pipeline(choice.ref)
        choice = dataclasses.replace(choice, loaded=pipeline)  # loaded once per run, not again by the engine
        aggregate = any(not pipeline.per_item(s.name) for s in pipeline)
        refs = self._inputs(conn, cfg, actor, item_ids, aggregate)
        if item_ids is None and not aggregate and reason.startswith("start"):
            done = self._processed(conn, row.id, row.version, refs)
            refs = [r for r in refs if r.version_id not in done]
        if not refs:
            return None
        # A run a pass records is handed to this process's scheduler (see _poll_one); `flow run`'s are not.
        sink = _PlanSink() if handing and self._hand is not None and self.scheduler is not None else None
        run_id = self.engine.submit(
            actor,
            choice,
            refs,
            source=cfg["source"],
            dest=cfg["destination"],
            params=cfg.get("params") or {},
            reason=f"dataflow {row.name}: {reason}",
            dataflow_id=row.id,
            dataflow_version=row.version,
            conn=conn,
            # A bad file is not tried again by every run: until it, the code or the parameters
            # change (a new key), or a user retries it.
            skip_failed=skip_failed,
            scheduler=cast(Scheduler, sink),
        )
        if sink is not None and self.scheduler is not None and run_id in sink.plans:
            handed = self.scheduler.hand_over(conn, run_id, sink.plans[run_id], actor)
            if handed is not None:
                self._staged[run_id] = handed
        self._last_fire[row.id] = now
        return run_id

    def _fail(self, dataflow_id: int, message: str) -> None:
        fail_dataflow(self.home.db, dataflow_id, message)

    # ------------------------------------------------------------------ service loop

    def _pass(self) -> tuple[int, list[int], float | None]:
        """One pass of :meth:`serve`, in one worker thread: the newest item or dataflow event (read
        first, so that what lands during the pass ends the next wait), the runs recorded, and when to
        look again."""
        cursor = self.home.events.latest(FAMILIES)
        return cursor, self.poll(), self.next_wakeup()

    async def serve(
        self, stop: asyncio.Event, poll: float = 1.0, on_runs: Callable[[list[int]], None] | None = None
    ) -> None:
        """Poll whenever the log grows (or a batch/cron is due) until ``stop`` is set.

        ``on_runs`` is told the ids of the runs each pass recorded. Without it, the runs go to the
        ``scheduler`` given to this object, each as soon as its transaction is committed (from the
        pass's thread into this loop, while the pass goes on), with its handover.
        """
        if on_runs is None and self.scheduler is not None:
            loop, scheduler = asyncio.get_running_loop(), self.scheduler

            def deliver(run_id: int, handed: Handover | None) -> None:
                scheduler.drive_now([run_id], None if handed is None else {run_id: handed})

            def hand(run_id: int, handed: Handover | None) -> None:
                loop.call_soon_threadsafe(deliver, run_id, handed)

            self._hand = hand
        try:
            while not stop.is_set():
                try:
                    cursor, created, due = await asyncio.to_thread(self._pass)
                    if created and on_runs is not None:
                        on_runs(created)
                except Exception:
                    # The database may be unreachable for a while: the service must outlive that.
                    log.exception("trigger pass failed; trying again")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), poll)
                    continue
                timeout = poll if due is None else min(poll, max(due, 0.001))
                await self.home.events.wait_or_stop(cursor, timeout, stop, FAMILIES)
        finally:
            self._hand = None


def active_runs(home: Home, dataflow_id: int) -> list[int]:
    """Runs of a dataflow that have not ended."""
    with home.db.read() as conn:
        return list(
            conn.execute(
                select(Run.id).where(
                    Run.dataflow_id == dataflow_id, Run.status.in_([RunStatus.QUEUED, RunStatus.RUNNING])
                )
            ).scalars()
        )


def items_in(home: Home, folder_id: int) -> int:
    """How many items a folder holds (for status displays)."""
    with home.db.read() as conn:
        return lookups.count_items(conn, folder_id)
