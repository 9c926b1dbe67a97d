"""Provenance: lineage queries over what the engine recorded, and exports to W3C PROV and RO-Crate.

Every run records exact inputs and outputs: ``task_inputs`` (an item version, or an output of an
upstream task), ``task_outputs`` (digests, and the item version an output was published as) and
``versions.task_id``/``run_id`` (the task that created a version). :class:`Lineage` walks these
records for one actor:

* :meth:`Lineage.upstream` — what an item version was derived from: the task that generated it,
  that task's inputs, the tasks that generated those, and so on down to uploaded versions;
* :meth:`Lineage.downstream` — what was derived from it: the tasks that used it, their outputs,
  the tasks that used those, and so on.

Both answer a :class:`LineageGraph` in PROV terms: entities (item versions, and task outputs that
were not published), activities (tasks, and the runs that started them) and agents (users,
dataflows), joined by ``used``, ``wasGeneratedBy``, ``wasDerivedFrom``, ``wasAssociatedWith``,
``wasAttributedTo``, ``wasStartedBy`` (task by its run) and ``wasInfluencedBy`` (a version that a
task reused, typically a cached task, rather than generated).

Access: an item version in a folder the actor may not read is a node labelled ``(not visible)``,
without name, folder or digest, and the walk does not continue past it; a task of a run the actor
may not see likewise. The item asked about must be readable (else :class:`~datamill.errors.NotFound`).

Exports: :func:`to_tree` (the CLI's indented tree), :func:`to_json`, :func:`to_prov`
(a :class:`prov.model.ProvDocument`; :func:`to_prov_json`, :func:`to_prov_n`), and
:func:`to_ro_crate` / :func:`lineage_crate`, a Provenance Run Crate
(https://w3id.org/ro/wfrun/provenance/0.5) of one run with its input and output files.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
import zipfile
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import quote

from sqlalchemy import Connection, select

from datamill._version import __version__
from datamill.db.models import Dataflow, Folder, Item, Run, Task, TaskInput, TaskOutput, User, Version
from datamill.errors import BlobNotFound, InvalidInput, NotFound
from datamill.home import Home
from datamill.store.access import Actor, Level, level_on

log = logging.getLogger("datamill.provenance")

#: The namespace of datamill identifiers in PROV documents (prefix ``dm``).
DM_NAMESPACE = "urn:datamill:"
DM = "dm"
#: The label of a node the actor may not see.
HIDDEN = "(not visible)"
#: The label of a version that no longer exists (its item was deleted).
DELETED = "(deleted)"

Direction = Literal["upstream", "downstream"]
NodeKind = Literal["entity", "activity", "agent"]


class Rel(StrEnum):
    """Relations between nodes, named as in PROV; the edge goes from the first PROV argument to the second."""

    #: activity -> entity it read
    USED = "used"
    #: entity -> activity that created it
    WAS_GENERATED_BY = "wasGeneratedBy"
    #: entity -> entity it was computed from
    WAS_DERIVED_FROM = "wasDerivedFrom"
    #: activity -> agent (the requesting user, the dataflow)
    WAS_ASSOCIATED_WITH = "wasAssociatedWith"
    #: entity -> agent (who created the version)
    WAS_ATTRIBUTED_TO = "wasAttributedTo"
    #: task -> the run that started it
    WAS_STARTED_BY = "wasStartedBy"
    #: entity -> activity that published it again without generating it (a cached or repeated task)
    WAS_INFLUENCED_BY = "wasInfluencedBy"


# ---------------------------------------------------------------------------------------------- graph


@dataclass
class Node:
    """One entity, activity or agent of a lineage graph.

    ``type`` is ``version`` or ``output`` (entities), ``task`` or ``run`` (activities), ``user`` or
    ``dataflow`` (agents). ``attrs`` holds what the actor may see (nothing for hidden nodes).
    """

    id: str
    kind: NodeKind
    type: str
    label: str
    visible: bool = True
    attrs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "id": self.id,
            "kind": self.kind,
            "type": self.type,
            "label": self.label,
            "visible": self.visible,
            **self.attrs,
        }


@dataclass(frozen=True)
class Edge:
    """A relation ``source -kind-> target``; ``role`` is the parameter an input was used as."""

    kind: Rel
    source: str
    target: str
    role: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        out: dict[str, Any] = {"kind": str(self.kind), "source": self.source, "target": self.target}
        if self.role is not None:
            out["role"] = self.role
        return out


@dataclass
class LineageGraph:
    """The answer of a lineage query: nodes by id, edges in discovery order, and the node asked about."""

    root: str
    direction: Direction
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    _edge_set: set[Edge] = field(default_factory=set, repr=False)
    _from: dict[str, list[Edge]] = field(default_factory=dict, repr=False)
    _to: dict[str, list[Edge]] = field(default_factory=dict, repr=False)

    def add_node(self, node: Node) -> Node:
        """Add ``node`` unless one with its id is there; returns the node kept."""
        return self.nodes.setdefault(node.id, node)

    def add_edge(self, kind: Rel, source: str, target: str, role: str | None = None) -> None:
        """Add an edge once."""
        edge = Edge(kind, source, target, role)
        if edge not in self._edge_set:
            self._edge_set.add(edge)
            self.edges.append(edge)
            self._from.setdefault(source, []).append(edge)
            self._to.setdefault(target, []).append(edge)

    def edges_from(self, source: str, *kinds: Rel) -> list[Edge]:
        """Edges leaving ``source`` (of the given kinds, or all)."""
        return [e for e in self._from.get(source, ()) if not kinds or e.kind in kinds]

    def edges_to(self, target: str, *kinds: Rel) -> list[Edge]:
        """Edges arriving at ``target`` (of the given kinds, or all)."""
        return [e for e in self._to.get(target, ()) if not kinds or e.kind in kinds]

    def of_type(self, type_: str) -> list[Node]:
        """Nodes of one type (``version``, ``output``, ``task``, ``run``, ``user``, ``dataflow``)."""
        return [n for n in self.nodes.values() if n.type == type_]

    def versions(self) -> list[tuple[str, int]]:
        """``(path, version)`` of every visible item version in the graph."""
        return [(n.attrs["path"], n.attrs["version"]) for n in self.of_type("version") if n.visible]

    def find_version(self, path: str, version: int | None = None) -> Node | None:
        """The visible version node of ``path`` (the given version, else the newest in the graph)."""
        found = [
            n
            for n in self.of_type("version")
            if n.visible and n.attrs["path"] == path and (version is None or n.attrs["version"] == version)
        ]
        return max(found, key=lambda n: n.attrs["version"]) if found else None


# ---------------------------------------------------------------------------------------------- ids


def _local(text: str) -> str:
    """A name made safe as the local part of a PROV qualified name (percent-encoded)."""
    return quote(text, safe="")


def version_id(vid: int) -> str:
    """``dm:version/12``."""
    return f"{DM}:version/{vid}"


def task_id(tid: int) -> str:
    """``dm:task/7``."""
    return f"{DM}:task/{tid}"


def run_id_of(rid: int) -> str:
    """``dm:run/3``."""
    return f"{DM}:run/{rid}"


def output_id(tid: int, name: str) -> str:
    """``dm:output/7/x.txt``: an output of a task that was not published as an item version."""
    return f"{DM}:output/{tid}/{_local(name)}"


def user_id(name: str) -> str:
    """``dm:user/admin``."""
    return f"{DM}:user/{_local(name)}"


def dataflow_id(name: str) -> str:
    """``dm:dataflow/derived-data``."""
    return f"{DM}:dataflow/{_local(name)}"


# ---------------------------------------------------------------------------------------------- walking


@dataclass(frozen=True)
class _Input:
    """One input of a task: an item version and/or an upstream task's output."""

    param: str
    digest: str
    version_id: int | None
    upstream_task_id: int | None
    output_name: str | None


@dataclass(frozen=True)
class _Output:
    """One output of a task."""

    task_id: int
    name: str
    digest: str
    size: int
    content_type: str
    version_id: int | None
    inline: bytes | None = None


class _Walker:
    """Reads the records of one database connection for one actor, with caches, and adds nodes to a graph."""

    def __init__(self, conn: Connection, actor: Actor, graph: LineageGraph) -> None:
        self.conn = conn
        self.actor = actor
        self.graph = graph
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

    # ------------------------------------------------------------------ rows

    def readable(self, folder: str) -> bool:
        """Whether the actor may read ``folder``."""
        if folder not in self._levels:
            self._levels[folder] = level_on(self.conn, self.actor, folder) >= Level.READ
        return self._levels[folder]

    def version_row(self, vid: int) -> Any:
        """A version with its item name and folder path, or None when it is gone."""
        if vid not in self._versions:
            self._versions[vid] = self.conn.execute(
                select(Version, Item.name.label("item_name"), Folder.path.label("folder"))
                .join(Item, Item.id == Version.item_id)
                .join(Folder, Folder.id == Item.folder_id)
                .where(Version.id == vid)
            ).first()
        return self._versions[vid]

    def task_row(self, tid: int) -> Any:
        """A task row, or None."""
        if tid not in self._tasks:
            self._tasks[tid] = self.conn.execute(select(Task).where(Task.id == tid)).first()
        return self._tasks[tid]

    def run_row(self, rid: int) -> Any:
        """A run row, or None."""
        if rid not in self._runs:
            self._runs[rid] = self.conn.execute(select(Run).where(Run.id == rid)).first()
        return self._runs[rid]

    def user_name(self, uid: int | None) -> str | None:
        """A user's name by id."""
        if uid is None:
            return None
        if uid not in self._users:
            self._users[uid] = self.conn.execute(select(User.name).where(User.id == uid)).scalar()
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
                    path
                    and self.conn.execute(select(Folder.id).where(Folder.path == path)).first()
                    and self.readable(path)
                    for path in (run.source_folder, run.dest_folder)
                )
            )
        return self._run_visible[run.id]

    def creator(self, vid: int) -> int | None:
        """The task that created a version: ``versions.task_id``, else the first task that published it."""
        if vid not in self._creators:
            row = self.version_row(vid)
            tid = row.task_id if row is not None else None
            if tid is None:
                tid = self.conn.execute(
                    select(TaskOutput.task_id).where(TaskOutput.version_id == vid).order_by(TaskOutput.task_id).limit(1)
                ).scalar()
            self._creators[vid] = None if tid is None else int(tid)
        return self._creators[vid]

    # ------------------------------------------------------------------ inputs and outputs

    def outputs(self, tid: int) -> list[_Output]:
        """A task's outputs, in recorded order."""
        rows = self.conn.execute(select(TaskOutput).where(TaskOutput.task_id == tid).order_by(TaskOutput.id)).all()
        return [_Output(tid, r.name, r.digest, r.size, r.content_type, r.version_id, r.inline) for r in rows]

    def _dep_task(self, run_id: int, planned_id: str) -> int | None:
        tid = self.conn.execute(select(Task.id).where(Task.run_id == run_id, Task.planned_id == planned_id)).scalar()
        return None if tid is None else int(tid)

    def inputs(self, tid: int) -> list[_Input]:
        """A task's inputs: as recorded, completed from its run where the record is partial.

        A cached task records only its item (its upstream outputs were never materialised): its
        upstream inputs are then the outputs of the tasks of its run it depends on. An aggregate
        step taking ``items`` reads every input of the run, which is not recorded per task.
        """
        t = self.task_row(tid)
        if t is None:
            return []
        rows = self.conn.execute(select(TaskInput).where(TaskInput.task_id == tid).order_by(TaskInput.id)).all()
        out = [_Input(r.param, r.digest, r.version_id, r.upstream_task_id, r.output_name) for r in rows]
        if t.deps and not any(i.upstream_task_id is not None for i in out):
            for dep in t.deps:
                up = self._dep_task(t.run_id, dep)
                if up is None:
                    continue
                out += [_Input(dep, o.digest, o.version_id, up, o.name) for o in self.outputs(up)]
        if self.uses_items(t, has_inputs=bool(out)):
            run = self.run_row(t.run_id)
            seen = {i.version_id for i in out if i.version_id is not None}
            for d in (run.inputs if run is not None else None) or []:
                vid = d.get("version_id")
                if vid is not None and vid not in seen:
                    out.append(_Input("items", str(d.get("digest", "")), int(vid), None, None))
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
        for tid, param in self.conn.execute(
            select(TaskInput.task_id, TaskInput.param).where(TaskInput.version_id == vid).order_by(TaskInput.task_id)
        ).all():
            found.setdefault(int(tid), param)
        # Tasks that took it as an upstream output but recorded no inputs (cached): via its producers.
        for producer in self.conn.execute(
            select(TaskOutput.task_id).where(TaskOutput.version_id == vid).order_by(TaskOutput.task_id)
        ).scalars():
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

    # ------------------------------------------------------------------ nodes

    def user_node(self, uid: int | None) -> str | None:
        """The agent node of a user, or None."""
        name = self.user_name(uid)
        if name is None:
            return None
        return self.graph.add_node(Node(user_id(name), "agent", "user", name, True, {"name": name})).id

    def version_node(self, vid: int) -> Node:
        """The entity node of an item version (hidden when its folder is not readable)."""
        nid = version_id(vid)
        if nid in self.graph.nodes:
            return self.graph.nodes[nid]
        row = self.version_row(vid)
        if row is None:
            return self.graph.add_node(Node(nid, "entity", "version", DELETED, False, {"deleted": True}))
        if not self.readable(row.folder):
            return self.graph.add_node(Node(nid, "entity", "version", HIDDEN, False))
        path = f"{row.folder}/{row.item_name}"
        node = self.graph.add_node(
            Node(
                nid,
                "entity",
                "version",
                f"{path} v{row.number}",
                True,
                {
                    "version_id": vid,
                    "item_id": row.item_id,
                    "folder": row.folder,
                    "name": row.item_name,
                    "path": path,
                    "version": row.number,
                    "digest": row.digest,
                    "size": row.size,
                    "content_type": row.content_type,
                    "created_at": row.created_at,
                    "created_via": row.created_via,
                    "created_by": self.user_name(row.created_by),
                    "run": row.run_id,
                    "task": row.task_id,
                },
            )
        )
        agent = self.user_node(row.created_by)
        if agent is not None:
            self.graph.add_edge(Rel.WAS_ATTRIBUTED_TO, nid, agent)
        return node

    def output_node(self, out: _Output) -> Node:
        """The entity node of a task output: its item version if published, else the output itself."""
        if out.version_id is not None:
            return self.version_node(out.version_id)
        nid = output_id(out.task_id, out.name)
        if nid in self.graph.nodes:
            return self.graph.nodes[nid]
        if not self.task_node(out.task_id).visible:
            return self.graph.add_node(Node(nid, "entity", "output", HIDDEN, False))
        return self.graph.add_node(
            Node(
                nid,
                "entity",
                "output",
                f"{out.name} (output of task {out.task_id}, not published)",
                True,
                {
                    "task": out.task_id,
                    "name": out.name,
                    "digest": out.digest,
                    "size": out.size,
                    "content_type": out.content_type,
                },
            )
        )

    def input_node(self, inp: _Input) -> Node | None:
        """The entity node of a task input."""
        if inp.version_id is not None:
            return self.version_node(inp.version_id)
        if inp.upstream_task_id is not None and inp.output_name is not None:
            for o in self.outputs(inp.upstream_task_id):
                if o.name == inp.output_name:
                    return self.output_node(o)
            return self.output_node(_Output(inp.upstream_task_id, inp.output_name, inp.digest, 0, "", None))
        return None

    def run_node(self, run: Any) -> Node:
        """The activity node of a run, with its agents."""
        nid = run_id_of(run.id)
        if nid in self.graph.nodes:
            return self.graph.nodes[nid]
        requester = self.user_name(run.requested_by)
        df_name = self.dataflow_name(run.dataflow_id)
        node = self.graph.add_node(
            Node(
                nid,
                "activity",
                "run",
                f"run {run.id} of {run.pipeline_name}",
                True,
                {
                    "run": run.id,
                    "pipeline": run.pipeline_name,
                    "pipeline_ref": run.pipeline_ref,
                    "status": run.status,
                    "reason": run.reason,
                    "requested_by": requester,
                    "requested_at": run.requested_at,
                    "started_at": run.started_at,
                    "finished_at": run.finished_at,
                    "executor": run.executor,
                    "source": self._folder_name(run.source_folder),
                    "dest": self._folder_name(run.dest_folder),
                    "dataflow": df_name,
                    "dataflow_version": run.dataflow_version,
                },
            )
        )
        for agent in self._agents(run):
            self.graph.add_edge(Rel.WAS_ASSOCIATED_WITH, nid, agent)
        return node

    def _agents(self, run: Any) -> list[str]:
        agents = []
        user = self.user_node(run.requested_by)
        if user is not None:
            agents.append(user)
        name = self.dataflow_name(run.dataflow_id)
        if name is not None:
            agents.append(
                self.graph.add_node(
                    Node(
                        dataflow_id(name),
                        "agent",
                        "dataflow",
                        f"dataflow {name}",
                        True,
                        {"name": name, "dataflow_id": run.dataflow_id},
                    )
                ).id
            )
        return agents

    def task_node(self, tid: int) -> Node:
        """The activity node of a task (hidden unless the actor may see its run)."""
        nid = task_id(tid)
        if nid in self.graph.nodes:
            return self.graph.nodes[nid]
        t = self.task_row(tid)
        run = self.run_row(t.run_id) if t is not None else None
        if t is None or run is None or not self.run_visible(run):
            return self.graph.add_node(Node(nid, "activity", "task", HIDDEN, False))
        item = self._item_name(t.item_name)
        planned = t.planned_id if item == t.item_name else f"{t.step}[{HIDDEN}]"
        node = self.graph.add_node(
            Node(
                nid,
                "activity",
                "task",
                f"{t.step} (task {t.id}, run {t.run_id})",
                True,
                {
                    "task": t.id,
                    "run": t.run_id,
                    "step": t.step,
                    "step_code": t.step_code,
                    "planned_id": planned,
                    "item": item,
                    "params": dict(t.params or {}),
                    "status": t.status,
                    "started_at": t.started_at,
                    "finished_at": t.finished_at,
                    "executor": t.executor,
                    "cached_from": t.cached_from,
                    "key": t.key,
                },
            )
        )
        rnode = self.run_node(run)
        self.graph.add_edge(Rel.WAS_STARTED_BY, nid, rnode.id)
        for agent in self._agents(run):
            self.graph.add_edge(Rel.WAS_ASSOCIATED_WITH, nid, agent)
        return node

    def _item_name(self, path: str | None) -> str | None:
        """An item path as the actor may see it: itself, or :data:`HIDDEN` when its folder is not readable."""
        if path is None:
            return None
        folder = path.rsplit("/", 1)[0] if "/" in path else ""
        return path if folder and self.readable(folder) else HIDDEN

    def _folder_name(self, path: str | None) -> str | None:
        """A folder path as the actor may see it."""
        return None if path is None else path if self.readable(path) else HIDDEN

    def generator(self, node: Node) -> int | None:
        """The task that generated an entity node."""
        if node.type == "version":
            return self.creator(int(node.id.rsplit("/", 1)[1]))
        if node.type == "output":
            return int(node.attrs["task"]) if "task" in node.attrs else None
        return None


def _items_steps(ref: str) -> frozenset[str] | None:
    """Names of the steps of the pipeline ``ref`` that take all items; None if it does not load."""
    from datamill.pipeline import load_pipeline

    try:
        pipeline = load_pipeline(ref)
    except Exception as exc:  # any failure to import user code: fall back to the records alone
        log.debug("pipeline %s does not load for lineage: %s", ref, exc)
        return None
    return frozenset(s.name for s in pipeline.steps if s.uses_items)


def _role(param: str) -> str:
    """The role of an input: ``item``, ``items``, or the upstream step (``stats[Raw/a.csv]`` -> ``stats``)."""
    return param.split("[", 1)[0]


def _vid(node: Node) -> int:
    return int(node.id.rsplit("/", 1)[1])


class Lineage:
    """Lineage queries over one home, answering only what the actor may see."""

    def __init__(self, home: Home) -> None:
        self.home = home

    def _root(self, actor: Actor, path: str, version: int | None) -> int:
        info = self.home.store.get_version(actor, path, version)  # checks read access
        return info.version_id

    def upstream(self, actor: Actor, path: str, version: int | None = None, depth: int | None = None) -> LineageGraph:
        """What ``path`` (its current version, or ``version``) was derived from, recursively.

        ``depth`` limits how many generating tasks are followed (1: the task that made it and
        that task's inputs).
        """
        vid = self._root(actor, path, version)
        with self.home.db.read() as conn:
            graph = LineageGraph(version_id(vid), "upstream")
            w = _Walker(conn, actor, graph)
            root = w.version_node(vid)
            queue: deque[tuple[Node, int]] = deque([(root, 0)])
            done: set[str] = set()
            while queue:
                entity, level = queue.popleft()
                if entity.id in done or not entity.visible or (depth is not None and level >= depth):
                    continue
                done.add(entity.id)
                tid = w.generator(entity)
                if tid is None:
                    continue
                activity = w.task_node(tid)
                graph.add_edge(Rel.WAS_GENERATED_BY, entity.id, activity.id)
                if not activity.visible:
                    continue
                for inp in w.inputs(tid):
                    source = w.input_node(inp)
                    if source is None:
                        continue
                    graph.add_edge(Rel.USED, activity.id, source.id, _role(inp.param))
                    graph.add_edge(Rel.WAS_DERIVED_FROM, entity.id, source.id)
                    queue.append((source, level + 1))
            return graph

    def downstream(self, actor: Actor, path: str, version: int | None = None, depth: int | None = None) -> LineageGraph:
        """What was derived from ``path`` (its current version, or ``version``), recursively.

        ``depth`` limits how many consuming tasks are followed.
        """
        vid = self._root(actor, path, version)
        with self.home.db.read() as conn:
            graph = LineageGraph(version_id(vid), "downstream")
            w = _Walker(conn, actor, graph)
            root = w.version_node(vid)
            queue: deque[tuple[Node, int]] = deque([(root, 0)])
            done: set[str] = set()
            while queue:
                entity, level = queue.popleft()
                if entity.id in done or not entity.visible or (depth is not None and level >= depth):
                    continue
                done.add(entity.id)
                if entity.type == "version":
                    consumers = w.consumers_of_version(_vid(entity))
                else:
                    consumers = w.consumers_of_output(int(entity.attrs["task"]), str(entity.attrs["name"]))
                for tid, param in consumers:
                    activity = w.task_node(tid)
                    graph.add_edge(Rel.USED, activity.id, entity.id, _role(param))
                    if not activity.visible:
                        continue
                    for out in w.outputs(tid):
                        made = w.output_node(out)
                        creator = w.generator(made)
                        if creator is None or creator == tid:
                            graph.add_edge(Rel.WAS_GENERATED_BY, made.id, activity.id)
                        else:
                            graph.add_edge(Rel.WAS_GENERATED_BY, made.id, w.task_node(creator).id)
                            graph.add_edge(Rel.WAS_INFLUENCED_BY, made.id, activity.id)
                        if made.visible:
                            graph.add_edge(Rel.WAS_DERIVED_FROM, made.id, entity.id)
                        queue.append((made, level + 1))
            return graph


# ---------------------------------------------------------------------------------------------- tree


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _short(digest: str | None) -> str:
    if not digest:
        return ""
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}" if hexpart else digest[:16]


def _tree_label(graph: LineageGraph, node: Node) -> str:
    if not node.visible:
        return node.label
    a = node.attrs
    if node.type == "version":
        return f"{node.label}  {_short(a.get('digest'))}"
    if node.type == "output":
        return f"{a['name']}  (not published; output of task {a['task']})  {_short(a.get('digest'))}"
    if node.type == "task":
        parts = [f"{a['step']}", f"task {a['task']}", f"run {a['run']}", str(a["status"])]
        if a.get("cached_from"):
            parts[-1] += f" from task {a['cached_from']}"
        when = _iso(a.get("finished_at") or a.get("started_at"))
        if when:
            parts.append(when.replace("T", " ").replace("+00:00", "Z"))
        by = [graph.nodes[e.target].label for e in graph.edges_from(node.id, Rel.WAS_ASSOCIATED_WITH)]
        if by:
            parts.append("by " + ", ".join(by))
        text = "⚙ " + " · ".join(parts)
        if a.get("params"):
            text += "  (" + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(a["params"].items())) + ")"
        return text
    return node.label


def _tree_children(graph: LineageGraph, node: Node) -> list[tuple[str, str]]:
    """``(child id, note)`` pairs under ``node`` in the tree of the graph's direction."""
    if graph.direction == "upstream":
        if node.kind == "entity":
            return [(e.target, "") for e in graph.edges_from(node.id, Rel.WAS_GENERATED_BY)]
        return [(e.target, "") for e in graph.edges_from(node.id, Rel.USED)]
    if node.kind == "entity":
        return [(e.source, "") for e in graph.edges_to(node.id, Rel.USED)]
    made = [(e.source, "") for e in graph.edges_to(node.id, Rel.WAS_GENERATED_BY)]
    made += [(e.source, "  (reused)") for e in graph.edges_to(node.id, Rel.WAS_INFLUENCED_BY)]
    return made


def to_tree(graph: LineageGraph) -> str:
    """The graph as an indented tree from its root: inputs below outputs (upstream) or the reverse."""
    lines: list[str] = []
    shown: set[str] = set()

    def walk(nid: str, prefix: str, last: bool, top: bool, note: str) -> None:
        node = graph.nodes[nid]
        branch = "" if top else ("└─ " if last else "├─ ")
        again = nid in shown and bool(_tree_children(graph, node))
        lines.append(prefix + branch + _tree_label(graph, node) + note + ("  (see above)" if again else ""))
        if again:
            return
        shown.add(nid)
        kids = _tree_children(graph, node)
        child_prefix = prefix if top else prefix + ("   " if last else "│  ")
        for i, (kid, kid_note) in enumerate(kids):
            walk(kid, child_prefix, i == len(kids) - 1, False, kid_note)

    walk(graph.root, "", True, True, "")
    if graph.direction == "downstream" and len(lines) == 1:
        lines.append("   (nothing was derived from it yet)")
    if graph.direction == "upstream" and len(lines) == 1:
        lines.append("   (uploaded, not made by a run)")
    return "\n".join(lines) + "\n"


def to_json(graph: LineageGraph) -> dict[str, Any]:
    """The graph as a JSON-able dict: ``root``, ``direction``, ``nodes``, ``edges``."""
    return {
        "root": graph.root,
        "direction": graph.direction,
        "nodes": [n.to_dict() for n in graph.nodes.values()],
        "edges": [e.to_dict() for e in graph.edges],
    }


# ---------------------------------------------------------------------------------------------- PROV


def _time(ts: float | None) -> dt.datetime | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC)


def _clean(attrs: dict[str, Any]) -> dict[str, Any]:
    """PROV attributes without empty values; anything not a literal PROV knows becomes JSON text."""
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if v is None or v == "":
            continue
        out[k] = json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v
    return out


def to_prov(graph: LineageGraph) -> Any:
    """The graph as a :class:`prov.model.ProvDocument` (namespace ``dm``: ``urn:datamill:``)."""
    from prov.constants import PROV
    from prov.model import ProvDocument

    doc = ProvDocument()
    ns = doc.add_namespace(DM, DM_NAMESPACE)

    def qn(ident: str) -> Any:
        return ns[ident.split(":", 1)[1]]

    for node in graph.nodes.values():
        a = node.attrs
        base: dict[str, Any] = {"prov:label": node.label}
        if node.kind == "entity":
            if node.visible and node.type == "version":
                base.update(
                    {
                        "prov:type": ns["ItemVersion"],
                        "dm:name": a["name"],
                        "dm:folder": a["folder"],
                        "dm:path": a["path"],
                        "dm:version": a["version"],
                        "dm:digest": a["digest"],
                        "dm:size": a["size"],
                        "dm:content_type": a["content_type"],
                        "prov:generatedAtTime": _time(a.get("created_at")),
                    }
                )
            elif node.visible:
                base.update(
                    {
                        "prov:type": ns["TaskOutput"],
                        "dm:name": a["name"],
                        "dm:digest": a["digest"],
                        "dm:size": a["size"],
                        "dm:content_type": a["content_type"],
                    }
                )
            doc.entity(qn(node.id), _clean(base))
        elif node.kind == "activity":
            start = end = None
            if node.visible and node.type == "task":
                start, end = _time(a.get("started_at")), _time(a.get("finished_at"))
                base.update(
                    {
                        "prov:type": ns["Task"],
                        "dm:step": a["step"],
                        "dm:step_code": a["step_code"],
                        "dm:params": json.dumps(a.get("params") or {}, sort_keys=True),
                        "dm:status": a["status"],
                        "dm:item": a.get("item"),
                        "dm:run": qn(run_id_of(a["run"])),
                        "dm:executor": a.get("executor"),
                        "dm:cached_from": qn(task_id(a["cached_from"])) if a.get("cached_from") else None,
                    }
                )
            elif node.visible and node.type == "run":
                start, end = _time(a.get("started_at")), _time(a.get("finished_at"))
                base.update(
                    {
                        "prov:type": ns["Run"],
                        "dm:pipeline": a["pipeline"],
                        "dm:pipeline_ref": a["pipeline_ref"],
                        "dm:status": a["status"],
                        "dm:reason": a.get("reason"),
                        "dm:executor": a.get("executor"),
                        "dm:dataflow_version": a.get("dataflow_version"),
                    }
                )
            doc.activity(qn(node.id), start, end, _clean(base))
        else:
            kind = PROV["Person"] if node.type == "user" else PROV["SoftwareAgent"]
            doc.agent(qn(node.id), _clean({**base, "prov:type": kind, "dm:name": a.get("name")}))

    for e in graph.edges:
        s, t = qn(e.source), qn(e.target)
        if e.kind is Rel.USED:
            doc.used(s, t, other_attributes={"prov:role": e.role} if e.role else None)
        elif e.kind is Rel.WAS_GENERATED_BY:
            doc.wasGeneratedBy(s, t)
        elif e.kind is Rel.WAS_DERIVED_FROM:
            doc.wasDerivedFrom(s, t)
        elif e.kind is Rel.WAS_ASSOCIATED_WITH:
            doc.wasAssociatedWith(s, t)
        elif e.kind is Rel.WAS_ATTRIBUTED_TO:
            doc.wasAttributedTo(s, t)
        elif e.kind is Rel.WAS_STARTED_BY:
            doc.wasStartedBy(s, starter=t)
        elif e.kind is Rel.WAS_INFLUENCED_BY:
            doc.wasInfluencedBy(s, t)
    return doc


def to_prov_json(graph: LineageGraph) -> str:
    """The graph as PROV-JSON text."""
    text: str = to_prov(graph).serialize(format="json", indent=2)
    return text


def to_prov_n(graph: LineageGraph) -> str:
    """The graph as PROV-N text."""
    text: str = to_prov(graph).get_provn()
    return text + "\n"


#: Names of the formats :func:`render` knows, as the CLI and the API take them.
FORMATS = ("tree", "json", "prov-json", "prov-n")


def render(graph: LineageGraph, fmt: str) -> str:
    """The graph as text in one of :data:`FORMATS`."""
    if fmt == "tree":
        return to_tree(graph)
    if fmt == "json":
        return json.dumps(to_json(graph), indent=2, ensure_ascii=False, default=str) + "\n"
    if fmt == "prov-json":
        return to_prov_json(graph) + "\n"
    if fmt == "prov-n":
        return to_prov_n(graph)
    raise InvalidInput(f"unknown lineage format {fmt!r}; use one of {', '.join((*FORMATS, 'ro-crate'))}")


# ---------------------------------------------------------------------------------------------- RO-Crate

#: Profiles the root of a crate made here conforms to (Workflow Run RO-Crate 0.5, on RO-Crate 1.1).
CRATE_PROFILES = {
    "https://w3id.org/ro/wfrun/process/0.5": "Process Run Crate",
    "https://w3id.org/ro/wfrun/workflow/0.5": "Workflow Run Crate",
    "https://w3id.org/ro/wfrun/provenance/0.5": "Provenance Run Crate",
}
#: What the metadata file conforms to: RO-Crate 1.1 and Workflow RO-Crate 1.0, as the profiles above ask.
CRATE_SPECS = ["https://w3id.org/ro/crate/1.1", "https://w3id.org/workflowhub/workflow-ro-crate/1.0"]
_STATUS = {
    "succeeded": "http://schema.org/CompletedActionStatus",
    "cached": "http://schema.org/CompletedActionStatus",
    "failed": "http://schema.org/FailedActionStatus",
    "cancelled": "http://schema.org/FailedActionStatus",
    "running": "http://schema.org/ActiveActionStatus",
    "queued": "http://schema.org/PotentialActionStatus",
}


def _safe_rel(*parts: str) -> str:
    """A relative POSIX path from names that may hold slashes, never leaving the crate."""
    clean = [p for part in parts for p in PurePosixPath(part).parts if p not in {"", ".", "..", "/"}]
    return "/".join(clean)


def _pipeline_file(ref: str) -> Path | None:
    """The local file a pipeline reference names, if it names one that exists."""
    head, sep, tail = ref.rpartition(":")
    target = head if sep and head and not (len(head) == 1 and tail.startswith(("\\", "/"))) else ref
    path = Path(target)
    try:
        return path if path.suffix in {".py", ".yaml", ".yml"} and path.is_file() else None
    except OSError:
        return None


class _CrateBuilder:
    """Collects one run's records and files into a Provenance Run Crate in a directory."""

    def __init__(self, home: Home, actor: Actor, run_id: int, root: Path) -> None:
        self.home = home
        self.actor = actor
        self.run_id = run_id
        self.root = root
        self.files: dict[str, Any] = {}  # entity key -> crate entity
        self.used_paths: set[str] = set()

    def _place(self, rel: str, digest: str, inline: bytes | None) -> str | None:
        """Copy the bytes into the crate at ``rel`` (made unique); the path, or None if the blob is gone."""
        base, n = rel, 1
        while rel in self.used_paths:
            n += 1
            stem = PurePosixPath(base)
            rel = str(stem.with_name(f"{stem.stem}.{n}{stem.suffix}"))
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if inline is not None:
                target.write_bytes(inline)
            else:
                with self.home.blobs.open(digest) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except (BlobNotFound, FileNotFoundError):
            target.unlink(missing_ok=True)
            return None
        self.used_paths.add(rel)
        return rel

    def build(self) -> Path:
        """Write the crate; returns its directory."""
        from rocrate.model.contextentity import ContextEntity
        from rocrate.rocrate import ROCrate

        with self.home.db.read() as conn:
            run = conn.execute(select(Run).where(Run.id == self.run_id)).first()
            graph = LineageGraph(run_id_of(self.run_id), "upstream")
            w = _Walker(conn, self.actor, graph)
            if run is None or not w.run_visible(run):
                raise NotFound(f"no run {self.run_id}; list runs with `datamill runs ls`", run_id=self.run_id)
            tasks = conn.execute(select(Task).where(Task.run_id == self.run_id).order_by(Task.id)).all()
            requester = w.user_name(run.requested_by)
            df_name = w.dataflow_name(run.dataflow_id)
            task_inputs = {t.id: w.inputs(t.id) for t in tasks}
            item_names = {t.id: w._item_name(t.item_name) for t in tasks}
            task_outputs = {t.id: w.outputs(t.id) for t in tasks}
            versions: dict[int, Any] = {}
            for vid in {
                *(int(d["version_id"]) for d in run.inputs or [] if d.get("version_id") is not None),
                *(i.version_id for ins in task_inputs.values() for i in ins if i.version_id is not None),
                *(o.version_id for outs in task_outputs.values() for o in outs if o.version_id is not None),
            }:
                row = w.version_row(vid)
                versions[vid] = (row, row is not None and w.readable(row.folder))

        crate = ROCrate(version="1.1")
        crate.metadata["conformsTo"] = [{"@id": uri} for uri in CRATE_SPECS]
        ctx = ContextEntity

        def add(ident: str, props: dict[str, Any]) -> Any:
            return crate.add(ctx(crate, ident, properties=props))

        # --- profiles, software, people
        profiles = [
            add(uri, {"@type": "CreativeWork", "name": name, "version": uri.rsplit("/", 1)[1]})
            for uri, name in CRATE_PROFILES.items()
        ]
        crate.root_dataset["conformsTo"] = profiles
        crate.name = f"datamill run {run.id}: {run.pipeline_name}"
        crate.description = (
            f"Run {run.id} of pipeline {run.pipeline_name!r} ({run.pipeline_ref}), {run.status}"
            + (f", for dataflow {df_name!r}" if df_name else "")
            + (f"; reason: {run.reason}" if run.reason else "")
            + ". Exported by datamill with its inputs, outputs and per-task provenance."
        )
        crate.datePublished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        engine = add(
            "#datamill",
            {
                "@type": "SoftwareApplication",
                "name": "datamill",
                "version": __version__,
                "softwareVersion": __version__,
            },
        )
        person = (
            add(f"#user-{_local(requester)}", {"@type": "Person", "name": requester}) if requester is not None else None
        )

        # --- the pipeline (main entity), its steps and tools
        source = _pipeline_file(run.pipeline_ref)
        is_yaml = source is not None and source.suffix in {".yaml", ".yml"}
        lang = add(
            "#yaml" if is_yaml else "#python",
            {"@type": "ComputerLanguage", "name": "YAML (datamill pipeline)", "url": "https://yaml.org/"}
            if is_yaml
            else {"@type": "ComputerLanguage", "name": "Python", "url": "https://www.python.org/"},
        )
        wf_props: dict[str, Any] = {
            "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"],
            "name": run.pipeline_name,
            "identifier": run.pipeline_ref,
            "programmingLanguage": lang,
            "description": "The pipeline as it is at export time; the code version each step ran with is its "
            "tool's softwareVersion (a hash of the step's code).",
        }
        if source is not None:
            rel = _safe_rel("pipeline", source.name)
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, self.root / rel)
            self.used_paths.add(rel)
            workflow = crate.add_file(self.root / rel, rel, properties=wf_props)
        else:
            wf_props["@type"] = ["SoftwareSourceCode", "ComputationalWorkflow", "HowTo"]
            workflow = add("#pipeline", wf_props)
        crate.mainEntity = workflow

        steps: dict[str, Any] = {}
        tools: dict[str, Any] = {}
        out_params: dict[tuple[str, str], Any] = {}
        in_param = add(
            "#param-items",
            {
                "@type": "FormalParameter",
                "name": "items",
                "additionalType": "File",
                "description": "the input item versions of the run",
                "multipleValues": True,
            },
        )
        workflow["input"] = [in_param]
        for t in tasks:
            if t.step in steps:
                continue
            tool = add(
                f"#tool-{_local(t.step)}",
                {
                    "@type": "SoftwareApplication",
                    "name": t.step,
                    "softwareVersion": t.step_code,
                    "version": t.step_code,
                },
            )
            tools[t.step] = tool
            steps[t.step] = add(
                f"#step-{_local(t.step)}",
                {"@type": "HowToStep", "name": t.step, "position": len(steps), "workExample": tool},
            )
        workflow["step"] = list(steps.values())
        workflow["hasPart"] = list(tools.values())

        def out_param(step: str, name: str) -> Any:
            key = (step, name)
            if key not in out_params:
                out_params[key] = add(
                    f"#param-{_local(step)}-{_local(name)}",
                    {"@type": "FormalParameter", "name": f"{step}/{name}", "additionalType": "File"},
                )
                tools[step].append_to("output", out_params[key])
            return out_params[key]

        # --- files
        def version_entity(vid: int, prefix: str, param: Any = None) -> Any:
            key = f"v{vid}"
            if key in self.files:
                return self.files[key]
            row, readable = versions.get(vid, (None, False))
            if row is None or not readable:
                entity = add(
                    f"#version-{vid}",
                    {"@type": "CreativeWork", "name": HIDDEN if row is not None else DELETED},
                )
            else:
                props = {
                    "name": row.item_name,
                    "alternateName": f"{row.folder}/{row.item_name}",
                    "version": str(row.number),
                    "identifier": row.digest,
                    "contentSize": str(row.size),
                    "encodingFormat": row.content_type,
                    "dateCreated": _iso(row.created_at),
                    "description": f"{row.folder}/{row.item_name} version {row.number}, digest {row.digest}",
                }
                if param is not None:
                    props["exampleOfWork"] = param
                rel = self._place(_safe_rel(prefix, row.folder, row.item_name), row.digest, None)
                if rel is None:
                    entity = add(f"#version-{vid}", {"@type": "CreativeWork", **props})
                else:
                    entity = crate.add_file(self.root / rel, rel, properties=props)
            self.files[key] = entity
            return entity

        def output_entity(t: Any, o: _Output) -> Any:
            if o.version_id is not None:
                return version_entity(o.version_id, "outputs", out_param(t.step, o.name))
            key = f"o{t.id}/{o.name}"
            if key in self.files:
                return self.files[key]
            props = {
                "name": o.name,
                "identifier": o.digest,
                "contentSize": str(o.size),
                "encodingFormat": o.content_type,
                "description": f"output {o.name!r} of task {t.id} ({t.step}), not published; digest {o.digest}",
                "exampleOfWork": out_param(t.step, o.name),
            }
            rel = self._place(_safe_rel("tasks", str(t.id), o.name), o.digest, o.inline)
            if rel is None:
                entity = add(f"#output-{t.id}-{_local(o.name)}", {"@type": "CreativeWork", **props})
            else:
                entity = crate.add_file(self.root / rel, rel, properties=props)
            self.files[key] = entity
            return entity

        run_inputs = [
            version_entity(int(d["version_id"]), "inputs", in_param)
            for d in run.inputs or []
            if d.get("version_id") is not None
        ]
        by_task = {t.id: t for t in tasks}

        # --- per task: a CreateAction (what ran) and a ControlAction (which step it carried out)
        controls = []
        published: list[Any] = []
        for t in tasks:
            objects = []
            for inp in task_inputs[t.id]:
                if inp.version_id is not None and (inp.upstream_task_id is None or inp.upstream_task_id not in by_task):
                    objects.append(version_entity(inp.version_id, "inputs", in_param))
                elif inp.upstream_task_id in by_task:
                    up = by_task[inp.upstream_task_id]
                    match = [o for o in task_outputs[up.id] if o.name == inp.output_name]
                    if match:
                        objects.append(output_entity(up, match[0]))
            for k, v in sorted((t.params or {}).items()):
                pv = add(
                    f"#task-{t.id}-param-{_local(k)}",
                    {"@type": "PropertyValue", "name": k, "value": v if isinstance(v, str) else json.dumps(v)},
                )
                objects.append(pv)
            results = [output_entity(t, o) for o in task_outputs[t.id]]
            published += [r for o, r in zip(task_outputs[t.id], results, strict=True) if o.version_id is not None]
            props: dict[str, Any] = {
                "@type": "CreateAction",
                "name": f"{t.step}" + (f" on {item_names[t.id]}" if item_names[t.id] else "") + f" (task {t.id})",
                "actionStatus": _STATUS.get(t.status, "http://schema.org/PotentialActionStatus"),
                "identifier": t.key,
                "startTime": _iso(t.started_at),
                "endTime": _iso(t.finished_at),
            }
            if t.cached_from:
                props["description"] = f"cached: the outputs of task {t.cached_from} (same key) were reused"
            if t.error:
                props["error"] = t.error
            action = crate.add_action(
                tools[t.step],
                identifier=f"#task-{t.id}",
                object=objects,
                result=results,
                properties=_clean_ld(props),
            )
            if person is not None:
                action["agent"] = person
            controls.append(
                add(
                    f"#control-{t.id}",
                    {
                        "@type": "ControlAction",
                        "name": f"orchestrate {t.step} (task {t.id})",
                        "instrument": steps[t.step],
                        "object": action,
                    },
                )
            )
        published_params = {(t.step, o.name) for t in tasks for o in task_outputs[t.id] if o.version_id is not None}
        workflow["output"] = [p for key, p in out_params.items() if key in published_params]

        # --- the run itself, and the engine's orchestration of it
        unique_published = list({p.id: p for p in published}.values())
        run_props = _clean_ld(
            {
                "@type": "CreateAction",
                "name": f"Run {run.id} of {run.pipeline_name}",
                "description": run.reason or None,
                "actionStatus": _STATUS.get(run.status, "http://schema.org/PotentialActionStatus"),
                "startTime": _iso(run.started_at or run.requested_at),
                "endTime": _iso(run.finished_at),
                "identifier": f"datamill run {run.id}",
            }
        )
        run_action = crate.add_action(
            workflow, identifier=f"#run-{run.id}", object=run_inputs, result=unique_published, properties=run_props
        )
        if person is not None:
            run_action["agent"] = person
        if df_name is not None:
            run_action["isPartOf"] = add(
                f"#dataflow-{_local(df_name)}",
                {"@type": "CreativeWork", "name": f"dataflow {df_name}", "version": str(run.dataflow_version or "")},
            )
        organize = _clean_ld(
            {
                "@type": "OrganizeAction",
                "name": f"datamill scheduling of run {run.id}",
                "startTime": _iso(run.started_at or run.requested_at),
                "endTime": _iso(run.finished_at),
            }
        )
        org = add(f"#organize-{run.id}", organize)
        org["instrument"] = engine
        org["object"] = controls
        org["result"] = run_action
        if person is not None:
            org["agent"] = person
        crate.root_dataset["mentions"] = [run_action]
        crate.write(self.root)
        return self.root


def _clean_ld(props: dict[str, Any]) -> dict[str, Any]:
    """JSON-LD properties without empty values."""
    return {k: v for k, v in props.items() if v is not None and v != ""}


def _zip_dir(directory: Path, target: Path) -> None:
    """Zip the contents of ``directory`` (paths relative to it) into ``target``."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(directory).as_posix())


def to_ro_crate(home: Home, actor: Actor, run_id: int, dest_dir: str | Path) -> Path:
    """Write a Provenance Run Crate of run ``run_id`` at ``dest_dir``; returns it.

    A ``dest_dir`` ending in ``.zip`` gets a zip file, anything else a directory (which must not
    exist yet or be empty). The crate holds ``ro-crate-metadata.json`` and the files: the inputs
    (``inputs/FOLDER/NAME``), the published outputs (``outputs/FOLDER/NAME``), outputs that were not
    published (``tasks/TASK/NAME``) and the pipeline source when it is a local file. Items in
    folders the actor may not read are described without name or bytes.
    """
    dest = Path(dest_dir)
    if dest.suffix.lower() == ".zip":
        with tempfile.TemporaryDirectory(prefix="datamill-crate-") as tmp:
            _CrateBuilder(home, actor, run_id, Path(tmp)).build()
            dest.parent.mkdir(parents=True, exist_ok=True)
            _zip_dir(Path(tmp), dest)
        return dest
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidInput(f"{dest} exists and is not an empty directory; choose another path", path=str(dest))
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return _CrateBuilder(home, actor, run_id, dest).build()
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def generating_run(home: Home, actor: Actor, path: str, version: int | None = None) -> int:
    """The run that generated ``path`` (its current version, or ``version``)."""
    info = home.store.get_version(actor, path, version)
    rid = info.run_id
    if rid is None:
        with home.db.read() as conn:
            tid = conn.execute(
                select(TaskOutput.task_id).where(TaskOutput.version_id == info.version_id).order_by(TaskOutput.task_id)
            ).scalar()
            if tid is not None:
                rid = conn.execute(select(Task.run_id).where(Task.id == tid)).scalar()
    if rid is None:
        raise InvalidInput(
            f"{info.path} version {info.version} was not made by a run (created via {info.created_via!r}); "
            "there is no run to describe (try `datamill lineage --down`)",
            path=info.path,
        )
    return int(rid)


def lineage_crate(home: Home, actor: Actor, path: str, dest_dir: str | Path, version: int | None = None) -> Path:
    """Write the RO-Crate of the run that generated ``path`` (see :func:`to_ro_crate`); returns it."""
    return to_ro_crate(home, actor, generating_run(home, actor, path, version), dest_dir)


__all__ = [
    "DM_NAMESPACE",
    "FORMATS",
    "HIDDEN",
    "Edge",
    "Lineage",
    "LineageGraph",
    "Node",
    "Rel",
    "generating_run",
    "lineage_crate",
    "render",
    "to_json",
    "to_prov",
    "to_prov_json",
    "to_prov_n",
    "to_ro_crate",
    "to_tree",
]
