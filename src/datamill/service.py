"""The service layer under both faces: what the embedded client and the API routes call.

:class:`Service` acts for one user on a home: it calls the store, the engine, the dataflows, the
registry and provenance (each of which checks access itself) and returns records. The API's
routes make one per request (``serving=True``: a pipeline reference is taken as sent); the
embedded :class:`~datamill.client.local.LocalClient` is one, plus what runs in the caller's process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from datamill.dataflows.batches import Batches, BatchSource
from datamill.dataflows.dataflow import Dataflows
from datamill.dataflows.records import BatchInfo, BatchStatus, DataflowInfo, DataflowVersionInfo, RecentRun
from datamill.engine import paramsets
from datamill.engine.engine import Engine
from datamill.engine.records import PipelineInfo, PlanInfo, RunInfo, TaskInfo, WhyInfo
from datamill.engine.registry import Pipelines
from datamill.errors import InvalidDataflow, InvalidInput, PermissionDenied
from datamill.events import EventRecord
from datamill.home import Home
from datamill.refs import absolute_ref
from datamill.store import users
from datamill.store.access import Actor, Level
from datamill.store.groups import GroupInfo
from datamill.store.item_pages import ItemBatch, ItemPage
from datamill.store.records import AccessGrant, UserInfo
from datamill.store.store import FolderInfo, ItemInfo, Store, VersionInfo
from datamill.store.users import NewToken

if TYPE_CHECKING:  # the provenance package loads its PROV libraries when imported
    from datamill.provenance.graph import LineageGraph

#: Called with the number of bytes just transferred.
Progress = Callable[[int], None]


class Service:
    """Folders, items, users, groups, events, pipelines, runs and dataflows, acting as one user."""

    def __init__(self, home: Home, actor: Actor | None = None, serving: bool = False) -> None:
        self.home = home
        self.actor = actor or home.admin
        #: Acting for a request received over the API: a pipeline reference is taken as sent,
        #: never interpreted against this process's working directory or user's home.
        self.serving = serving

    def _pipeline(self, text: str) -> str:
        """What the caller named as a pipeline: in the caller's own process a file path it gave is
        made absolute (so a dataflow finds it from anywhere); served over the API, as it came."""
        return text if self.serving else absolute_ref(text)

    @property
    def store(self) -> Store:
        """The underlying :class:`~datamill.store.store.Store`."""
        return self.home.store

    def whoami(self) -> UserInfo:
        """The user this service acts as."""
        return UserInfo.of(self.actor)

    # folders
    def create_folder(
        self,
        path: str,
        parents: bool = True,
        exist_ok: bool = False,
        metadata: Mapping[str, Any] | None = None,
    ) -> FolderInfo:
        """Create a folder (and missing parents)."""
        return self.store.create_folder(self.actor, path, parents=parents, exist_ok=exist_ok, metadata=metadata)

    def folder(self, path: str) -> FolderInfo:
        """One folder."""
        return self.store.get_folder(self.actor, path)

    def list_folders(self, path: str = "") -> list[FolderInfo]:
        """Subfolders of ``path``; the top level for ``""``."""
        return self.store.list_folders(self.actor, path)

    def move_folder(self, path: str, new_parent: str, new_name: str | None = None) -> FolderInfo:
        """Move (and optionally rename) a folder."""
        return self.store.move_folder(self.actor, path, new_parent, new_name)

    def delete_folder(self, path: str, recursive: bool = False) -> int:
        """Delete a folder; how many items went with it."""
        return self.store.delete_folder(self.actor, path, recursive)

    def set_folder_metadata(
        self, path: str, set_: Mapping[str, Any] | None = None, unset: Iterable[str] = ()
    ) -> FolderInfo:
        """Set/unset folder metadata keys."""
        return self.store.set_folder_metadata(self.actor, path, set_, unset)

    def share(self, path: str, user: str, level: str) -> None:
        """Grant ``user`` a level on a folder."""
        self.store.share(self.actor, path, user, Level.parse(level))

    def share_group(self, path: str, group: str, level: str) -> None:
        """Grant ``group`` a level on a folder."""
        self.store.share_group(self.actor, path, group, Level.parse(level))

    def set_public(self, path: str, public: bool) -> None:
        """Switch public read on a folder."""
        self.store.set_public(self.actor, path, public)

    def access_list(self, path: str) -> list[AccessGrant]:
        """Grants made on a folder."""
        return [AccessGrant.from_dict(g) for g in self.store.access_list(self.actor, path)]

    # items
    def put(
        self,
        folder: str,
        name: str,
        data: bytes | BinaryIO,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
        size: int | None = None,
    ) -> VersionInfo:
        """Store bytes as a new version of ``folder/name``."""
        if isinstance(data, bytes | bytearray):
            info: VersionInfo = self.store.put(self.actor, folder, name, data, content_type, metadata)
            if progress:
                progress(info.size)
            return info
        # A file goes as it is: the store copies a regular one in the kernel.
        return self.store.put(self.actor, folder, name, data, content_type, metadata, progress=progress)

    def put_many(
        self,
        folder: str,
        files: list[tuple[str, bytes]],
        metadata: Mapping[str, Any] | None = None,
        item_metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[VersionInfo]:
        """Store several small files into one folder in one transaction."""
        return self.store.put_many(self.actor, folder, files, metadata, item_metadata=item_metadata)

    def item(self, path: str) -> ItemInfo:
        """An item with its current version."""
        return self.store.get_item(self.actor, path)

    def list_items(self, folder: str) -> list[ItemInfo]:
        """Items of a folder, by name."""
        return self.store.list_items(self.actor, folder)

    def page_items(
        self,
        folder: str,
        sort: str = "name",
        descending: bool = False,
        offset: int = 0,
        limit: int = 100,
        contains: str = "",
    ) -> ItemPage:
        """One page of a folder's items, sorted and filtered in the database, with the total."""
        return self.store.page_items(self.actor, folder, sort, descending, offset, limit, contains)

    def items_after(
        self, folder: str, cursor: str | None = None, limit: int = 1000, sort: str = "name", descending: bool = False
    ) -> ItemBatch:
        """The next keyset page of a folder's items after ``cursor`` (see :mod:`datamill.store.item_pages`)."""
        return self.store.items_after(self.actor, folder, cursor, limit, sort, descending)

    def my_level(self, path: str) -> Level:
        """Your effective access level on a folder."""
        return self.store.my_level(self.actor, path)

    def versions(self, path: str) -> list[VersionInfo]:
        """All versions of an item."""
        return self.store.versions(self.actor, path)

    def version(self, path: str, version: int | None = None) -> VersionInfo:
        """One version (the current one by default)."""
        return self.store.get_version(self.actor, path, version)

    def iter_bytes(self, path: str, version: int | None = None) -> tuple[VersionInfo, Iterator[bytes]]:
        """A version's info and its bytes in chunks."""
        return self.store.iter_bytes(self.actor, path, version)

    def set_metadata(self, path: str, set_: Mapping[str, Any] | None = None, unset: Iterable[str] = ()) -> ItemInfo:
        """Set/unset item metadata keys."""
        return self.store.set_item_metadata(self.actor, path, set_, unset)

    def find(
        self,
        folder: str,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        recursive: bool = True,
    ) -> list[ItemInfo]:
        """Items below ``folder`` by name glob and metadata."""
        return self.store.find_items(self.actor, folder, name, metadata, recursive)

    def delete_item(self, path: str) -> None:
        """Delete an item and its versions."""
        self.store.delete_item(self.actor, path)

    # users
    def _require_admin(self) -> None:
        if not self.actor.is_admin:
            raise PermissionDenied("only a site admin may manage users")

    def create_user(self, name: str, password: str | None = None, admin: bool = False) -> UserInfo:
        """Create a user (site admins only)."""
        self._require_admin()
        with self.home.db.write() as conn:
            return UserInfo.of(users.create_user(conn, name, password, admin, by=self.actor))

    def list_users(self) -> list[UserInfo]:
        """All users (site admins only)."""
        self._require_admin()
        with self.home.db.read() as conn:
            return [UserInfo.of(u) for u in users.list_users(conn)]

    def disable_user(self, name: str) -> int:
        """Keep a user out (site admins only): no password, every token revoked; how many tokens."""
        self._require_admin()
        if name == self.actor.name:
            raise InvalidInput("you cannot disable yourself; ask another site admin")
        with self.home.db.write() as conn:
            return users.disable_user(conn, users.get_user(conn, name), self.actor)

    def user_tokens(self, name: str) -> tuple[bool, list[dict[str, object]]]:
        """Whether a user has a password, and their tokens without secrets (site admins only)."""
        self._require_admin()
        with self.home.db.read() as conn:
            user = users.get_user(conn, name)
            return users.has_password(conn, user), users.list_tokens(conn, user)

    def create_token(self, user: str | None = None, name: str = "", ttl: float | None = None) -> NewToken:
        """A new token for ``user`` (yourself by default; others need a site admin)."""
        if user is not None and user != self.actor.name:
            self._require_admin()
        with self.home.db.write() as conn:
            target = users.get_user(conn, user) if user else self.actor
            return users.create_token(conn, target, name, ttl, by=self.actor)

    def revoke_token(self, token_id: int) -> None:
        """Revoke one of your tokens (or anyone's, as a site admin)."""
        with self.home.db.write() as conn:
            users.revoke_token(conn, token_id, self.actor)

    # groups
    def create_group(self, name: str) -> GroupInfo:
        """Create a group."""
        return self.store.create_group(self.actor, name)

    def groups(self) -> list[GroupInfo]:
        """The groups you are a member of (every group for a site admin)."""
        return self.store.list_groups(self.actor)

    def group(self, name: str) -> GroupInfo:
        """One group."""
        return self.store.get_group(self.actor, name)

    def delete_group(self, name: str) -> int:
        """Delete a group; how many folder grants went with it."""
        return self.store.delete_group(self.actor, name)

    def add_group_member(self, group: str, user: str, admin: bool | None = None) -> GroupInfo:
        """Add a member to a group, or change their admin flag."""
        return self.store.add_group_member(self.actor, group, user, admin)

    def remove_group_member(self, group: str, user: str) -> None:
        """Remove a member from a group."""
        self.store.remove_group_member(self.actor, group, user)

    # events
    def events(self, since: int = 0, limit: int = 1000, kinds: Iterable[str] | None = None) -> list[EventRecord]:
        """Events after ``since`` that you may see."""
        records = self.home.events.read(since, limit, kinds)
        return self.store.visible_events(self.actor, records)

    def wait_events(self, since: int, timeout: float) -> bool:
        """Block until there may be events after ``since`` (or ``timeout`` passes)."""
        return self.home.events.wait(since, timeout)

    # pipelines
    @property
    def registry(self) -> Pipelines:
        """The home's :class:`~datamill.engine.registry.Pipelines`."""
        return Pipelines(self.home.db, self.home.settings.image_patterns)

    def pipelines(self) -> list[PipelineInfo]:
        """The registered pipelines, by name."""
        return [PipelineInfo.from_dict(p) for p in self.registry.list(self.actor)]

    def add_pipeline(self, name: str, ref: str, description: str = "") -> PipelineInfo:
        """Register a pipeline (site admins only)."""
        return PipelineInfo.from_dict(self.registry.add(self.actor, name, self._pipeline(ref), description))

    def remove_pipeline(self, name: str) -> None:
        """Remove a registered pipeline (site admins only)."""
        self.registry.remove(self.actor, name)

    # runs
    @property
    def engine(self) -> Engine:
        """The :class:`~datamill.engine.engine.Engine` of the home."""
        return Engine(self.home)

    def plan(
        self, pipeline_ref: str, folder: str, params: Mapping[str, Any] | None = None, force: bool = False
    ) -> PlanInfo:
        """A dry run over the items of ``folder``."""
        engine = self.engine
        inputs = engine.inputs_from_folder(self.actor, folder)
        the_plan = engine.plan(self._pipeline(pipeline_ref), inputs, params, force, actor=self.actor)
        return PlanInfo.from_dict(the_plan.to_dict())

    def submit_run(
        self,
        pipeline_ref: str,
        folder: str,
        dest: str | None = None,
        params: Mapping[str, Any] | None = None,
        force: bool = False,
        reason: str = "",
        executor: str | None = None,
    ) -> int:
        """Record a run (queued) over the items of ``folder``; its id."""
        engine = self.engine
        inputs = engine.inputs_from_folder(self.actor, folder)
        return engine.submit(
            self.actor,
            self._pipeline(pipeline_ref),
            inputs,
            source=folder,
            dest=dest,
            params=params,
            force=force,
            reason=reason,
            executor=executor,
        )

    def runs(self, limit: int = 50, status: str | None = None) -> list[RunInfo]:
        """Runs you may see, newest first."""
        return self.engine.list_runs(self.actor, limit, status)

    def run_info(self, run_id: int) -> RunInfo:
        """A run with its task counts."""
        return self.engine.get_run(self.actor, run_id)

    def tasks(self, run_id: int) -> list[TaskInfo]:
        """A run's tasks, in plan order."""
        return [TaskInfo.from_dict(t.to_dict()) for t in self.engine.tasks(self.actor, run_id)]

    def task_page(self, run_id: int, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """A page of a run's tasks as the API lists them: up to ``limit`` with ids above ``after``.

        Each names its parameter set (``params_digest``) and its size (``params_size``, bytes of
        canonical JSON); ``params`` holds the set only when it is at most
        :data:`~datamill.engine.paramsets.INLINE_BYTES`, else None (read it with :meth:`param_set`).
        """
        page, sets = self.engine.task_page(self.actor, run_id, after, limit, paramsets.INLINE_BYTES)
        out = []
        for t in page:
            d = t.to_dict()
            size, params = sets.get(t.params_digest, (0, {})) if t.params_digest else (0, {})
            d["params_digest"], d["params_size"], d["params"] = t.params_digest, size, params
            out.append(d)
        return out

    def param_set(self, run_id: int, digest: str) -> dict[str, Any]:
        """One parameter set of a run (its own or a task's), by digest; NotFound for any other."""
        return self.engine.param_set(self.actor, run_id, digest)

    def item_tasks(self, run_id: int, offset: int = 0, limit: int = 50) -> tuple[list[TaskInfo], int]:
        """The tasks of one page of a run's items (items in plan order, aggregates last), and how many items."""
        page, total = self.engine.item_tasks(self.actor, run_id, offset, limit)
        return [TaskInfo.from_dict(t.to_dict()) for t in page], total

    def step_links(self, run_id: int) -> tuple[list[str], list[tuple[str, str]]]:
        """A run's steps in plan order and which step feeds which."""
        return self.engine.step_links(self.actor, run_id)

    def task(self, task_id: int) -> TaskInfo:
        """One task, with its outputs."""
        return TaskInfo.from_dict(self.engine.task(self.actor, task_id).to_dict())

    def cancel_run(self, run_id: int) -> bool:
        """Ask for a run to be cancelled; False if it had already ended."""
        return self.engine.cancel(self.actor, run_id)

    def retry_run(self, run_id: int) -> int:
        """Resume a failed or cancelled run as a new run; its id."""
        return self.engine.retry(self.actor, run_id)

    def why(self, task_id: int) -> WhyInfo:
        """Why a task ran or was cached."""
        return self.engine.why(self.actor, task_id)

    def logs(self, task_id: int, follow: bool = False) -> Iterator[str]:
        """A task's log text in chunks; with ``follow``, until the task ends."""
        return self.engine.iter_log(self.actor, task_id, follow=follow)

    # dataflows
    @property
    def flows(self) -> Dataflows:
        """The home's :class:`~datamill.dataflows.dataflow.Dataflows`."""
        from datamill.dataflows.dataflow import parse_watch_roots

        return Dataflows(
            self.home.db, self.home.settings.image_patterns, parse_watch_roots(self.home.settings.watch_roots)
        )

    def create_dataflow(
        self,
        name: str,
        source: str,
        dest: str,
        pipeline: str | None = None,
        trigger: str = "new-items",
        params: Mapping[str, Any] | None = None,
        description: str = "",
        webhooks: Iterable[str] | None = None,
        kind: str = "workflow",
        directory: str | None = None,
        watch: Mapping[str, Any] | None = None,
        image: str | None = None,
        recursive: bool = False,
    ) -> DataflowInfo:
        """Create a dataflow (stopped) running ``pipeline``, or ``image``'s default command on each item."""
        config: dict[str, Any] = {
            "source": source,
            "destination": dest,
            "pipeline": self._pipeline(pipeline) if pipeline else "",
            "image": image or None,
            "trigger": trigger,
            "params": dict(params or {}),
            "description": description,
            "webhooks": list(webhooks or []),
            "kind": kind,
        }
        if recursive:
            config["recursive"] = recursive
        if kind == "directory" or directory is not None or watch is not None:
            config.update(directory=directory, watch=dict(watch or {}))
        return self.flows.create(self.actor, name, config)

    def create_stream_dataflow(
        self,
        name: str,
        topic: str,
        dest: str,
        broker: Mapping[str, Any] | None = None,
        description: str = "",
        partial_timeout_s: float | None = None,
    ) -> DataflowInfo:
        """Create a stream dataflow (stopped): the files of Kafka ``topic`` land in ``dest``.

        ``broker`` (bootstrap, security_protocol, sasl_mechanism, sasl_username, sasl_password)
        overrides the server's ``kafka_*`` settings field by field."""
        config = {
            "kind": "stream",
            "topic": topic,
            "destination": dest,
            "broker": dict(broker or {}),
            "description": description,
            "partial_timeout_s": partial_timeout_s,
        }
        return self.flows.create(self.actor, name, config)

    def dataflows(self) -> list[DataflowInfo]:
        """The dataflows you may see, by name."""
        return self.flows.all(self.actor)

    def dataflow(self, name: str, recent: int = 10) -> DataflowInfo:
        """One dataflow with its ``recent_runs``."""
        from dataclasses import replace

        from datamill.engine import runs

        info = self.flows.get(self.actor, name)
        with self.home.db.read() as conn:
            rows = runs.list_runs(conn, recent, dataflow_id=info.id)
        stream = None
        if info.kind == "stream":
            from datamill.dataflows.ingest import stream_status

            stream = stream_status(self.home, info.id)
        return replace(info, recent_runs=[RecentRun.from_dict(r) for r in rows], stream=stream)

    def edit_dataflow(self, name: str, **changes: Any) -> DataflowInfo:
        """Change a dataflow's configuration (a new version)."""
        if isinstance(changes.get("pipeline"), str):
            changes["pipeline"] = self._pipeline(changes["pipeline"])
        return self.flows.edit(self.actor, name, dataflow_changes(changes))

    def start_dataflow(self, name: str) -> DataflowInfo:
        """Mark a dataflow running."""
        return self.flows.set_state(self.actor, name, "running")

    def stop_dataflow(self, name: str, cancel: bool = False) -> DataflowInfo:
        """Stop a dataflow; with ``cancel``, also cancel its runs in flight (listed in ``cancelled``)."""
        from dataclasses import replace

        from datamill.dataflows.triggers import active_runs

        info = self.flows.set_state(self.actor, name, "stopped")
        cancelled = []
        if cancel:
            engine = self.engine
            for run_id in active_runs(self.home, info.id):
                if engine.cancel(self.actor, run_id):
                    cancelled.append(run_id)
        return replace(info, cancelled=cancelled)

    def run_dataflow(self, name: str) -> int | None:
        """Record one run of a dataflow over the current contents of its source."""
        from datamill.dataflows.triggers import Triggers

        self.flows.get(self.actor, name)  # not visible: NotFound, as everywhere else
        # The run is submitted as this actor: the engine checks read on the source, write on the destination.
        return Triggers(self.home).run_now(name, self.actor)

    def dataflow_history(self, name: str) -> list[DataflowVersionInfo]:
        """Every configuration version of a dataflow, oldest first."""
        return self.flows.history(self.actor, name)

    def delete_dataflow(self, name: str) -> None:
        """Remove a stopped dataflow."""
        self.flows.delete(self.actor, name)

    # batches

    @property
    def batch_service(self) -> Batches:
        """The home's :class:`~datamill.dataflows.batches.Batches`."""
        return Batches(self.home, self.engine)

    def create_batch(
        self,
        name: str,
        pipeline: str,
        dest: str,
        *,
        folders: Iterable[str] = (),
        recursive: bool = False,
        search: Mapping[str, Any] | None = None,
        paths: Iterable[str] = (),
        from_batch: str | None = None,
        params: Mapping[str, Any] | None = None,
        description: str = "",
    ) -> BatchInfo:
        """A new batch (not started) of the items selected by folders, a search, item paths or another batch."""
        source = BatchSource(list(folders), recursive, search, list(paths), from_batch)
        return self.batch_service.create(self.actor, name, self._pipeline(pipeline), dest, source, params, description)

    def batches(self) -> list[BatchInfo]:
        """The batches you may see, by name."""
        return self.batch_service.all(self.actor)

    def batch(self, name: str) -> BatchInfo:
        """One batch with its counts (completed, successful, unstarted, ...)."""
        return self.batch_service.get(self.actor, name)

    def batch_status(self, name: str) -> BatchStatus:
        """The per-item by per-step grid of a batch's latest run."""
        return self.batch_service.status(self.actor, name)

    def start_batch(self, name: str, executor: str | None = None) -> int:
        """Record a run of the batch's pipeline over its items; its id (a scheduler executes it)."""
        return self.batch_service.start(self.actor, name, executor)

    def retry_batch(self, name: str) -> int:
        """Rerun only the failures of a batch's latest run; the new run's id."""
        return self.batch_service.retry(self.actor, name)

    def duplicate_batch(self, name: str, new_name: str) -> BatchInfo:
        """A new batch of the same items, pipeline and parameters."""
        return self.batch_service.duplicate(self.actor, name, new_name)

    def delete_batch(self, name: str) -> None:
        """Forget a batch (its runs and outputs stay)."""
        self.batch_service.delete(self.actor, name)

    def batch_zip(self, name: str) -> Iterator[bytes]:
        """All outputs of a batch's latest run as a zip, in chunks."""
        return self.batch_service.zip_chunks(self.actor, name)

    # provenance

    def lineage(
        self, path: str, version: int | None = None, down: bool = False, depth: int | None = None, fmt: str = "tree"
    ) -> str:
        """An item version's lineage rendered as ``fmt`` (tree, json, prov-json, prov-n)."""
        from datamill import provenance

        lin = provenance.Lineage(self.home)
        query = lin.downstream if down else lin.upstream
        return provenance.render(query(self.actor, path, version, depth), fmt)

    def lineage_graph(
        self, path: str, version: int | None = None, down: bool = False, depth: int | None = None
    ) -> LineageGraph:
        """An item version's lineage graph: what it was derived from (or, with ``down``, what was derived from it)."""
        from datamill import provenance

        lin = provenance.Lineage(self.home)
        query = lin.downstream if down else lin.upstream
        return query(self.actor, path, version, depth)

    def export_crate(self, path: str, dest: str | Path, version: int | None = None) -> None:
        """Write the RO-Crate of the run that made an item version at ``dest`` (a directory or a .zip)."""
        from datamill import provenance

        provenance.lineage_crate(self.home, self.actor, path, Path(dest), version)


#: Client-side names of dataflow fields -> the dataflow's configuration keys.
_FIELD_NAMES = {"dest": "destination", "destination": "destination"}
_EDITABLE = (
    "source",
    "dest",
    "destination",
    "pipeline",
    "image",
    "trigger",
    "params",
    "description",
    "webhooks",
    "directory",
    "watch",
    "topic",
    "broker",
    "partial_timeout_s",
    "recursive",
)


def dataflow_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """``edit_dataflow`` keyword arguments as configuration changes; None values are left out.

    Raises InvalidDataflow naming an unknown field.
    """
    unknown = sorted(set(changes) - set(_EDITABLE))
    if unknown:
        raise InvalidDataflow(
            f"cannot change {', '.join(unknown)}; editable fields: source, dest, pipeline, image, trigger, params, "
            "description, webhooks, directory, watch, recursive (stream dataflows: topic, broker, partial_timeout_s)"
        )
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if value is None:
            continue
        if key == "webhooks":
            value = list(value)
        out[_FIELD_NAMES.get(key, key)] = value
    return out
