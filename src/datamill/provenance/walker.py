"""Walking the records up (what a version was derived from) or down (what was derived from it).

:class:`Lineage` answers a :class:`~datamill.provenance.graph.LineageGraph` for one actor. The
:class:`Walker` turns records (:class:`~datamill.provenance.records.Records`) into nodes: an item
version in a folder the actor may not read is a node labelled ``(not visible)``, without name,
folder or digest, and the walk does not continue past it; a task of a run the actor may not see
likewise.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from datamill.engine.containers import step_images
from datamill.home import Home
from datamill.provenance.graph import (
    DELETED,
    HIDDEN,
    Direction,
    LineageGraph,
    Node,
    Rel,
    dataflow_id,
    output_id,
    run_id_of,
    task_id,
    user_id,
    version_id,
)
from datamill.provenance.records import Input, Output, Records
from datamill.store.access import Actor
from datamill.store.visibility import mask_ref


class Walker(Records):
    """Reads the records of one database connection for one actor and adds nodes to a graph."""

    def __init__(self, conn: Connection, actor: Actor, graph: LineageGraph) -> None:
        super().__init__(conn, actor)
        self.graph = graph

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

    def output_node(self, out: Output) -> Node:
        """The entity node of a task output: its item version if it is that version (:meth:`is_version`),
        else the output itself (``alternateOf`` the version that holds the same bytes, if any)."""
        if self.is_version(out.task_id, out.version_id):
            assert out.version_id is not None
            return self.version_node(out.version_id)
        nid = output_id(out.task_id, out.name)
        if nid in self.graph.nodes:
            return self.graph.nodes[nid]
        if not self.task_node(out.task_id).visible:
            return self.graph.add_node(Node(nid, "entity", "output", HIDDEN, False))
        attrs: dict[str, Any] = {
            "task": out.task_id,
            "name": out.name,
            "digest": out.digest,
            "size": out.size,
            "content_type": out.content_type,
        }
        label = f"{out.name} (output of task {out.task_id}, not published)"
        same = self.version_node(out.version_id) if out.version_id is not None else None
        if same is not None:
            label = f"{out.name} (output of task {out.task_id})"
            if same.visible:
                attrs["same_as"] = same.attrs["version_id"]
                label = f"{out.name} (output of task {out.task_id}, same bytes as {same.label})"
        node = self.graph.add_node(Node(nid, "entity", "output", label, True, attrs))
        if same is not None:
            self.graph.add_edge(Rel.ALTERNATE_OF, nid, same.id)
        return node

    def input_node(self, inp: Input) -> Node | None:
        """The entity node of a task input: the upstream task's output it read, else the item version."""
        if inp.upstream_task_id is not None and inp.output_name is not None:
            for o in self.outputs(inp.upstream_task_id):
                if o.name == inp.output_name:
                    return self.output_node(o)
            return self.output_node(Output(inp.upstream_task_id, inp.output_name, inp.digest, 0, "", inp.version_id))
        if inp.version_id is not None:
            return self.version_node(inp.version_id)
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
                    "pipeline_ref": run.pipeline_ref if self.actor.is_admin else mask_ref(run.pipeline_ref),
                    "status": run.status,
                    "reason": run.reason,
                    "requested_by": requester,
                    "requested_at": run.requested_at,
                    "started_at": run.started_at,
                    "finished_at": run.finished_at,
                    "executor": run.executor,
                    "source": self.shown_folder(run.source_folder),
                    "dest": self.shown_folder(run.dest_folder),
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
        item = self.shown_item(t.item_name)
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
                    "params": dict(self.params_of(t)),
                    "status": t.status,
                    "started_at": t.started_at,
                    "finished_at": t.finished_at,
                    "executor": t.executor,
                    "cached_from": t.cached_from,
                    "key": t.key,
                    **_image_attrs(run, t.step),
                },
            )
        )
        rnode = self.run_node(run)
        self.graph.add_edge(Rel.WAS_STARTED_BY, nid, rnode.id)
        for agent in self._agents(run):
            self.graph.add_edge(Rel.WAS_ASSOCIATED_WITH, nid, agent)
        return node

    def generator(self, node: Node) -> int | None:
        """The task that generated an entity node."""
        if node.type == "version":
            return self.creator(int(node.id.rsplit("/", 1)[1]))
        if node.type == "output":
            return int(node.attrs["task"]) if "task" in node.attrs else None
        return None


def _image_attrs(run: Any, step: str) -> dict[str, Any]:
    """A container task's ``image`` and ``image_digest`` (from its run's parameters); none otherwise."""
    used = step_images(run.params_meta).get(step)
    return {} if used is None else {"image": used.image, "image_digest": used.digest}


def _role(param: str) -> str:
    """The role of an input: ``item``, ``items``, or the upstream step (``stats[Raw/a.csv]`` -> ``stats``)."""
    return param.split("[", 1)[0]


def _vid(node: Node) -> int:
    return int(node.id.rsplit("/", 1)[1])


def _sources(w: Walker, entity: Node) -> list[Node]:
    """The task that made ``entity`` and what that task used (edges added); the inputs, to walk on."""
    tid = w.generator(entity)
    if tid is None:
        return []
    activity = w.task_node(tid)
    w.graph.add_edge(Rel.WAS_GENERATED_BY, entity.id, activity.id)
    if not activity.visible:
        return []
    sources = []
    for inp in w.inputs(tid):
        source = w.input_node(inp)
        if source is None:
            continue
        w.graph.add_edge(Rel.USED, activity.id, source.id, _role(inp.param))
        w.graph.add_edge(Rel.WAS_DERIVED_FROM, entity.id, source.id)
        sources.append(source)
    return sources


def _products(w: Walker, entity: Node) -> list[Node]:
    """The tasks that used ``entity`` and what they made (edges added); what they made, to walk on."""
    if entity.type == "version":
        consumers = w.consumers_of_version(_vid(entity))
    else:
        consumers = w.consumers_of_output(int(entity.attrs["task"]), str(entity.attrs["name"]))
    products = []
    for tid, param in consumers:
        activity = w.task_node(tid)
        w.graph.add_edge(Rel.USED, activity.id, entity.id, _role(param))
        if not activity.visible:
            continue
        for out in w.outputs(tid):
            made = w.output_node(out)
            creator = w.generator(made)
            if creator is None or creator == tid:
                w.graph.add_edge(Rel.WAS_GENERATED_BY, made.id, activity.id)
            else:
                w.graph.add_edge(Rel.WAS_GENERATED_BY, made.id, w.task_node(creator).id)
                w.graph.add_edge(Rel.WAS_INFLUENCED_BY, made.id, activity.id)
            if made.visible:
                w.graph.add_edge(Rel.WAS_DERIVED_FROM, made.id, entity.id)
            products.append(made)
    return products


class Lineage:
    """Lineage queries over one home, answering only what the actor may see."""

    def __init__(self, home: Home) -> None:
        self.home = home

    def _root(self, actor: Actor, path: str, version: int | None) -> int:
        info = self.home.store.get_version(actor, path, version)  # checks read access
        return info.version_id

    def _walk(
        self,
        actor: Actor,
        path: str,
        version: int | None,
        depth: int | None,
        direction: Direction,
        expand: Callable[[Walker, Node], list[Node]],
    ) -> LineageGraph:
        """Breadth first from ``path``'s version: ``expand`` adds an entity's edges and says where to go next.

        Each entity is expanded once, and only when it is visible and fewer than ``depth`` tasks
        from the start.
        """
        vid = self._root(actor, path, version)
        with self.home.db.read() as conn:
            graph = LineageGraph(version_id(vid), direction)
            w = Walker(conn, actor, graph)
            root = w.version_node(vid)
            queue: deque[tuple[Node, int]] = deque([(root, 0)])
            done: set[str] = set()
            while queue:
                entity, level = queue.popleft()
                if entity.id in done or not entity.visible or (depth is not None and level >= depth):
                    continue
                done.add(entity.id)
                queue.extend((node, level + 1) for node in expand(w, entity))
            return graph

    def upstream(self, actor: Actor, path: str, version: int | None = None, depth: int | None = None) -> LineageGraph:
        """What ``path`` (its current version, or ``version``) was derived from, recursively.

        ``depth`` limits how many generating tasks are followed (1: the task that made it and
        that task's inputs).
        """
        return self._walk(actor, path, version, depth, "upstream", _sources)

    def downstream(self, actor: Actor, path: str, version: int | None = None, depth: int | None = None) -> LineageGraph:
        """What was derived from ``path`` (its current version, or ``version``), recursively.

        ``depth`` limits how many consuming tasks are followed.
        """
        return self._walk(actor, path, version, depth, "downstream", _products)
