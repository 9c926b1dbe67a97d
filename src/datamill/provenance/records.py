"""What the engine recorded about tasks, read for one actor: rows with caches, inputs, outputs, consumers.

:class:`Records` reads one database connection: item versions (through
:mod:`datamill.store.lookups`), runs, tasks and their recorded inputs and outputs (the engine's
tables, read here), users and dataflows. It also holds the access rule of lineage: an item or
folder the actor may not read, and a task of a run the actor may not see, are shown as
:data:`~datamill.provenance.graph.HIDDEN`. :func:`read_run` reads all of one run at once (for
its RO-Crate).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from datamill.db.database import Database
from datamill.db.models import Dataflow, Run, Task, TaskInput, TaskOutput
from datamill.engine import paramsets
from datamill.errors import NotFound
from datamill.provenance.graph import HIDDEN
from datamill.store import lookups
from datamill.store.access import Actor, Level, level_on

log = logging.getLogger("datamill.provenance")


@dataclass(frozen=True)
class Input:
    """One input of a task: an item version and/or an upstream task's output."""

    param: str
    digest: str
    version_id: int | None
    upstream_task_id: int | None
    output_name: str | None


@dataclass(frozen=True)
class Output:
    """One output of a task."""

    task_id: int
    name: str
    digest: str
    size: int
    content_type: str
    version_id: int | None
    inline: bytes | None = None


class Records:
    """Reads the records of one database connection for one actor, with caches."""

    def __init__(self, conn: Connection, actor: Actor) -> None:
        self.conn = conn
        self.actor = actor
        self._levels: dict[str, bool] = {}
        self._versions: dict[int, Any] = {}
        self._tasks: dict[int, Any] = {}
        self._runs: dict[int, Any] = {}
        self._users: dict[int, str | None] = {}
        self._dataflows: dict[int, str | None] = {}
        self._creators: dict[int, int | None] = {}
        self._items_steps: dict[str, frozenset[str] | None] = {}
        self._runs_by_input: dict[int, list[int]] | None = None
        self._run_visible: dict[int, bool] = {}
        self._unrecorded: dict[int, dict[str, list[int]]] = {}
        self._params: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ rows

    def readable(self, folder: str) -> bool:
        """Whether the actor may read ``folder``."""
        if folder not in self._levels:
            self._levels[folder] = level_on(self.conn, self.actor, folder) >= Level.READ
        return self._levels[folder]

    def version_row(self, vid: int) -> Any:
        """A version with its item name and folder path, or None when it is gone."""
        if vid not in self._versions:
            self._versions[vid] = lookups.version_in_place(self.conn, vid)
        return self._versions[vid]

    def task_row(self, tid: int) -> Any:
        """A task row, or None."""
        if tid not in self._tasks:
            self._tasks[tid] = self.conn.execute(select(Task).where(Task.id == tid)).first()
        return self._tasks[tid]

    def params_of(self, task: Any) -> dict[str, Any]:
        """A task's parameters (each set read once: a run's tasks share their step's)."""
        digest = task.params_digest
        if digest is not None and digest not in self._params:
            self._params.update(paramsets.load(self.conn, [digest]))
        return paramsets.params_of(self._params, digest)

    def run_row(self, rid: int) -> Any:
        """A run row, or None."""
        if rid not in self._runs:
            self._runs[rid] = self.conn.execute(select(Run).where(Run.id == rid)).first()
        return self._runs[rid]

    def run_tasks(self, rid: int) -> list[Any]:
        """The tasks of run ``rid``, in the order they were planned."""
        tasks = list(self.conn.execute(select(Task).where(Task.run_id == rid).order_by(Task.id)).all())
        for t in tasks:
            self._tasks.setdefault(int(t.id), t)
        return tasks

    def user_name(self, uid: int | None) -> str | None:
        """A user's name by id."""
        if uid is None:
            return None
        if uid not in self._users:
            self._users[uid] = lookups.user_name(self.conn, uid)
        return self._users[uid]

    def dataflow_name(self, did: int | None) -> str | None:
        """A dataflow's name by id."""
        if did is None:
            return None
        if did not in self._dataflows:
            self._dataflows[did] = self.conn.execute(select(Dataflow.name).where(Dataflow.id == did)).scalar()
        return self._dataflows[did]

    def run_visible(self, run: Any) -> bool:
        """The engine's rule: admins, the requester, and readers of the run's source or destination."""
        if run.id not in self._run_visible:
            self._run_visible[run.id] = (
                self.actor.is_admin
                or (run.requested_by is not None and run.requested_by == self.actor.id)
                or any(
                    path and lookups.folder_id(self.conn, path) is not None and self.readable(path)
                    for path in (run.source_folder, run.dest_folder)
                )
            )
        return self._run_visible[run.id]

    def creator(self, vid: int) -> int | None:
        """The task that created a version, as the version records it (None: uploaded)."""
        if vid not in self._creators:
            row = self.version_row(vid)
            tid = row.task_id if row is not None else None
            self._creators[vid] = None if tid is None else int(tid)
        return self._creators[vid]

    def is_version(self, task_id: int, vid: int | None) -> bool:
        """Whether an output of ``task_id`` published as ``vid`` *is* that version (drawn as its node).

        True when the task generated the version, or reused it as a cached task. False when it
        ran and its bytes happened to equal a version another task had generated: its output is
        then an entity of its own, ``alternateOf`` the version.
        """
        if vid is None:
            return False
        if self.creator(vid) == task_id:
            return True
        t = self.task_row(task_id)
        return t is not None and (t.cached_from is not None or t.status == "cached")

    # ------------------------------------------------------------------ inputs and outputs

    def outputs(self, tid: int) -> list[Output]:
        """A task's outputs, in recorded order."""
        rows = self.conn.execute(select(TaskOutput).where(TaskOutput.task_id == tid).order_by(TaskOutput.id)).all()
        return [Output(tid, r.name, r.digest, r.size, r.content_type, r.version_id, r.inline) for r in rows]

    def _dep_task(self, run_id: int, planned_id: str) -> int | None:
        tid = self.conn.execute(select(Task.id).where(Task.run_id == run_id, Task.planned_id == planned_id)).scalar()
        return None if tid is None else int(tid)

    def inputs(self, tid: int) -> list[Input]:
        """A task's inputs: as recorded, completed from its run where the record is partial.

        A cached task records only its item (its upstream outputs were never materialised): its
        upstream inputs are then the outputs of the tasks of its run it depends on. An aggregate
        step taking ``items`` reads every input of the run, which is not recorded per task.
        """
        t = self.task_row(tid)
        if t is None:
            return []
        rows = self.conn.execute(select(TaskInput).where(TaskInput.task_id == tid).order_by(TaskInput.id)).all()
        out = [Input(r.param, r.digest, r.version_id, r.upstream_task_id, r.output_name) for r in rows]
        if t.deps and not any(i.upstream_task_id is not None for i in out):
            for dep in t.deps:
                up = self._dep_task(t.run_id, dep)
                if up is None:
                    continue
                out += [Input(dep, o.digest, o.version_id, up, o.name) for o in self.outputs(up)]
        if self.uses_items(t, has_inputs=bool(out)):
            run = self.run_row(t.run_id)
            seen = {i.version_id for i in out if i.version_id is not None}
            for d in (run.inputs if run is not None else None) or []:
                vid = d.get("version_id")
                if vid is not None and vid not in seen:
                    out.append(Input("items", str(d.get("digest", "")), int(vid), None, None))
        return out

    def uses_items(self, t: Any, has_inputs: bool) -> bool:
        """Whether an (aggregate) task's step takes every input item of its run."""
        if t.item_version_id is not None:
            return False  # per-item steps cannot take 'items'
        run = self.run_row(t.run_id)
        if run is None:
            return False
        ref = run.pipeline_ref
        if ref not in self._items_steps:
            self._items_steps[ref] = _items_steps(ref)
        steps = self._items_steps[ref]
        if steps is None:  # the pipeline no longer loads: an aggregate task with no other input read the items
            return not has_inputs
        return bool(t.step in steps)

    def consumers_of_version(self, vid: int) -> list[tuple[int, str]]:
        """``(task id, param)`` of the tasks that used a version."""
        found: dict[int, str] = {}
        for tid, param, upstream in self.conn.execute(
            select(TaskInput.task_id, TaskInput.param, TaskInput.upstream_task_id)
            .where(TaskInput.version_id == vid)
            .order_by(TaskInput.task_id)
        ).all():
            # An upstream output with the same bytes as the version, made by a task that ran: it
            # used that task's output (an entity of its own), not the version.
            if upstream is None or self.is_version(int(upstream), vid):
                found.setdefault(int(tid), param)
        # Tasks that took it as an upstream output but recorded no inputs (cached): via its producers.
        for producer in self.conn.execute(
            select(TaskOutput.task_id).where(TaskOutput.version_id == vid).order_by(TaskOutput.task_id)
        ).scalars():
            if not self.is_version(int(producer), vid):
                continue
            for tid, param in self._dependents(int(producer)):
                found.setdefault(tid, param)
        for tid in self._items_consumers(vid):
            found.setdefault(tid, "items")
        return sorted(found.items())

    def consumers_of_output(self, producer: int, name: str) -> list[tuple[int, str]]:
        """``(task id, param)`` of the tasks that used an output of ``producer``."""
        found: dict[int, str] = {}
        for tid, param in self.conn.execute(
            select(TaskInput.task_id, TaskInput.param)
            .where(TaskInput.upstream_task_id == producer, TaskInput.output_name == name)
            .order_by(TaskInput.task_id)
        ).all():
            found.setdefault(int(tid), param)
        for tid, param in self._dependents(producer):
            found.setdefault(tid, param)
        return sorted(found.items())

    def _dependents(self, producer: int) -> list[tuple[int, str]]:
        """Tasks of the producer's run that depend on it but recorded no upstream inputs (cached ones)."""
        p = self.task_row(producer)
        if p is None:
            return []
        if p.run_id not in self._unrecorded:
            # Once per run: {planned id: tasks depending on it that recorded no upstream input}.
            recorded = set(
                self.conn.execute(
                    select(TaskInput.task_id)
                    .join(Task, Task.id == TaskInput.task_id)
                    .where(Task.run_id == p.run_id, TaskInput.upstream_task_id.is_not(None))
                    .distinct()
                ).scalars()
            )
            index: dict[str, list[int]] = {}
            for t in self.conn.execute(select(Task).where(Task.run_id == p.run_id).order_by(Task.id)).all():
                if t.deps and t.id not in recorded:
                    self._tasks.setdefault(int(t.id), t)
                    for dep in t.deps:
                        index.setdefault(dep, []).append(int(t.id))
            self._unrecorded[p.run_id] = index
        return [(tid, p.planned_id) for tid in self._unrecorded[p.run_id].get(p.planned_id, []) if tid != producer]

    def _items_consumers(self, vid: int) -> list[int]:
        """Aggregate tasks whose step takes ``items``, in runs that had this version as an input."""
        if self._runs_by_input is None:
            index: dict[int, list[int]] = {}
            row = self.version_row(vid)
            since = (row.created_at if row is not None else 0.0) - 1.0
            for rid, inputs in self.conn.execute(
                select(Run.id, Run.inputs).where(Run.requested_at >= since).order_by(Run.id)
            ).all():
                for d in inputs or []:
                    v = d.get("version_id") if isinstance(d, dict) else None
                    if v is not None:
                        index.setdefault(int(v), []).append(int(rid))
            self._runs_by_input = index
        out = []
        for rid in self._runs_by_input.get(vid, []):
            for t in self.conn.execute(
                select(Task).where(Task.run_id == rid, Task.item_version_id.is_(None)).order_by(Task.id)
            ).all():
                self._tasks.setdefault(int(t.id), t)
                has = self.conn.execute(select(TaskInput.id).where(TaskInput.task_id == t.id).limit(1)).first()
                if self.uses_items(t, has_inputs=has is not None or bool(t.deps)):
                    out.append(int(t.id))
        return out

    # ------------------------------------------------------------------ names as the actor may see them

    def shown_item(self, path: str | None) -> str | None:
        """An item path as the actor may see it: itself, or :data:`HIDDEN` when its folder is not readable."""
        if path is None:
            return None
        folder = path.rsplit("/", 1)[0] if "/" in path else ""
        return path if folder and self.readable(folder) else HIDDEN

    def shown_folder(self, path: str | None) -> str | None:
        """A folder path as the actor may see it."""
        return None if path is None else path if self.readable(path) else HIDDEN


@dataclass
class RunRecords:
    """What a crate describes of one run, read in one transaction before any file is written."""

    run: Any
    tasks: list[Any]
    requester: str | None
    dataflow: str | None
    inputs: dict[int, list[Input]]
    outputs: dict[int, list[Output]]
    #: the item of each task as the actor may see it
    item_names: dict[int, str | None]
    #: as in the lineage graph: an output is its version only if its task generated (or, cached, reused) it
    as_version: dict[tuple[int, str], bool]
    #: every version the run names: ``(row or None when gone, readable by the actor)``
    versions: dict[int, tuple[Any, bool]]
    by_id: dict[int, Any]
    #: the parameter sets of the tasks, by digest (:mod:`datamill.engine.paramsets`)
    params: dict[str, dict[str, Any]]

    def params_of(self, task: Any) -> dict[str, Any]:
        """A task's parameters."""
        return paramsets.params_of(self.params, task.params_digest)

    def published(self, task: Any, out: Output) -> bool:
        """Whether ``out`` of ``task`` is described as the item version it was published as."""
        return out.version_id is not None and self.as_version[(task.id, out.name)]


def read_run(db: Database, actor: Actor, run_id: int) -> RunRecords:
    """The records of run ``run_id`` as ``actor`` may see them (:class:`NotFound` if they may not see the run)."""
    with db.read() as conn:
        rec = Records(conn, actor)
        run = rec.run_row(run_id)
        if run is None or not rec.run_visible(run):
            raise NotFound(f"no run {run_id}; list runs with `datamill runs ls`", run_id=run_id)
        tasks = rec.run_tasks(run_id)
        inputs = {t.id: rec.inputs(t.id) for t in tasks}
        outputs = {t.id: rec.outputs(t.id) for t in tasks}
        versions: dict[int, tuple[Any, bool]] = {}
        for vid in {
            *(int(d["version_id"]) for d in run.inputs or [] if d.get("version_id") is not None),
            *(i.version_id for ins in inputs.values() for i in ins if i.version_id is not None),
            *(o.version_id for outs in outputs.values() for o in outs if o.version_id is not None),
        }:
            row = rec.version_row(vid)
            versions[vid] = (row, row is not None and rec.readable(row.folder))
        return RunRecords(
            run=run,
            tasks=tasks,
            requester=rec.user_name(run.requested_by),
            dataflow=rec.dataflow_name(run.dataflow_id),
            inputs=inputs,
            outputs=outputs,
            item_names={t.id: rec.shown_item(t.item_name) for t in tasks},
            as_version={(t.id, o.name): rec.is_version(t.id, o.version_id) for t in tasks for o in outputs[t.id]},
            versions=versions,
            by_id={t.id: t for t in tasks},
            params=paramsets.load(conn, {t.params_digest for t in tasks}),
        )


def _items_steps(ref: str) -> frozenset[str] | None:
    """Names of the steps of the pipeline ``ref`` that take all items; None if it does not load."""
    from datamill.pipeline import load_pipeline

    try:
        pipeline = load_pipeline(ref)
    except Exception as exc:  # any failure to import user code: fall back to the records alone
        log.debug("pipeline %s does not load for lineage: %s", ref, exc)
        return None
    return frozenset(s.name for s in pipeline.steps if s.uses_items)
