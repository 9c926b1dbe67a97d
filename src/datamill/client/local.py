"""The embedded client: works directly on a home directory, with the same access checks as the API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, BinaryIO

from datamill.client.base import Client, ProgressFn, absolute_ref
from datamill.dataflows.dataflow import Dataflows
from datamill.engine.engine import Engine
from datamill.engine.registry import Pipelines
from datamill.engine.runs import FINISHED_RUN
from datamill.errors import PermissionDenied
from datamill.events import EventRecord
from datamill.home import Home
from datamill.store import users
from datamill.store.access import Actor, Level
from datamill.store.blobs import CHUNK
from datamill.store.groups import GroupInfo
from datamill.store.store import FolderInfo, ItemInfo, VersionInfo
from datamill.store.users import NewToken

#: Longest wait between two looks at a run another process executes (new events end it sooner).
FOLLOW_POLL_SECONDS = 1.0


class LocalClient(Client):
    """A client on a local :class:`~datamill.home.Home`, acting as one user (the admin by default)."""

    #: the store's reader verifies every full read against the digest
    verified_streams = True

    def __init__(self, home: Home, actor: Actor | None = None, owns_home: bool = False, serving: bool = False) -> None:
        self.home = home
        self.actor = actor or home.admin
        self._owns_home = owns_home
        #: Acting for a request received over the API: a pipeline reference is taken as sent,
        #: never interpreted against this process's working directory or user's home.
        self.serving = serving

    def _pipeline(self, text: str) -> str:
        """What the caller named as a pipeline: in the caller's own process a file path it gave is
        made absolute (so a dataflow finds it from anywhere); served over the API, as it came."""
        return text if self.serving else absolute_ref(text)

    @property
    def store(self) -> Any:
        """The underlying :class:`~datamill.store.store.Store`."""
        return self.home.store

    def close(self) -> None:
        if self._owns_home:
            self.home.close()

    def as_user(self, name: str) -> LocalClient:
        """A client on the same home acting as another user (to try access rules)."""
        return LocalClient(self.home, self.home.actor(name))

    def whoami(self) -> dict[str, Any]:
        return {"id": self.actor.id, "name": self.actor.name, "is_admin": self.actor.is_admin}

    # folders
    def create_folder(
        self,
        path: str,
        parents: bool = True,
        exist_ok: bool = False,
        metadata: Mapping[str, Any] | None = None,
    ) -> FolderInfo:
        return self.store.create_folder(
            self.actor, path, parents=parents, exist_ok=exist_ok, metadata=metadata
        )

    def folder(self, path: str) -> FolderInfo:
        return self.store.get_folder(self.actor, path)

    def list_folders(self, path: str = "") -> list[FolderInfo]:
        return self.store.list_folders(self.actor, path)

    def move_folder(self, path: str, new_parent: str, new_name: str | None = None) -> FolderInfo:
        return self.store.move_folder(self.actor, path, new_parent, new_name)

    def delete_folder(self, path: str, recursive: bool = False) -> int:
        return self.store.delete_folder(self.actor, path, recursive)

    def set_folder_metadata(
        self, path: str, set_: Mapping[str, Any] | None = None, unset: Iterable[str] = ()
    ) -> FolderInfo:
        return self.store.set_folder_metadata(self.actor, path, set_, unset)

    def share(self, path: str, user: str, level: str) -> None:
        self.store.share(self.actor, path, user, Level.parse(level))

    def share_group(self, path: str, group: str, level: str) -> None:
        self.store.share_group(self.actor, path, group, Level.parse(level))

    def set_public(self, path: str, public: bool) -> None:
        self.store.set_public(self.actor, path, public)

    def access_list(self, path: str) -> list[dict[str, Any]]:
        return self.store.access_list(self.actor, path)

    # items
    def put(
        self,
        folder: str,
        name: str,
        data: bytes | BinaryIO,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        progress: ProgressFn | None = None,
        size: int | None = None,
    ) -> VersionInfo:
        if progress is None or isinstance(data, bytes | bytearray):
            info: VersionInfo = self.store.put(self.actor, folder, name, data, content_type, metadata)
            if progress:
                progress(info.size)
            return info

        def chunks() -> Iterator[bytes]:
            while chunk := data.read(CHUNK):
                progress(len(chunk))
                yield chunk

        return self.store.put(self.actor, folder, name, chunks(), content_type, metadata)

    def put_many(
        self, folder: str, files: list[tuple[str, bytes]], metadata: Mapping[str, Any] | None = None
    ) -> list[VersionInfo]:
        return self.store.put_many(self.actor, folder, files, metadata)

    def item(self, path: str) -> ItemInfo:
        return self.store.get_item(self.actor, path)

    def list_items(self, folder: str) -> list[ItemInfo]:
        return self.store.list_items(self.actor, folder)

    def versions(self, path: str) -> list[VersionInfo]:
        return self.store.versions(self.actor, path)

    def version(self, path: str, version: int | None = None) -> VersionInfo:
        return self.store.get_version(self.actor, path, version)

    def iter_bytes(self, path: str, version: int | None = None) -> tuple[VersionInfo, Iterator[bytes]]:
        return self.store.iter_bytes(self.actor, path, version)

    def set_metadata(
        self, path: str, set_: Mapping[str, Any] | None = None, unset: Iterable[str] = ()
    ) -> ItemInfo:
        return self.store.set_item_metadata(self.actor, path, set_, unset)

    def find(
        self,
        folder: str,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        recursive: bool = True,
    ) -> list[ItemInfo]:
        return self.store.find_items(self.actor, folder, name, metadata, recursive)

    def delete_item(self, path: str) -> None:
        self.store.delete_item(self.actor, path)

    # users
    def _require_admin(self) -> None:
        if not self.actor.is_admin:
            raise PermissionDenied("only a site admin may manage users")

    def create_user(self, name: str, password: str | None = None, admin: bool = False) -> dict[str, Any]:
        self._require_admin()
        with self.home.db.write() as conn:
            user = users.create_user(conn, name, password, admin, by=self.actor)
        return {"id": user.id, "name": user.name, "is_admin": user.is_admin}

    def list_users(self) -> list[dict[str, Any]]:
        self._require_admin()
        with self.home.db.read() as conn:
            return [{"id": u.id, "name": u.name, "is_admin": u.is_admin} for u in users.list_users(conn)]

    def create_token(self, user: str | None = None, name: str = "", ttl: float | None = None) -> NewToken:
        if user is not None and user != self.actor.name:
            self._require_admin()
        with self.home.db.write() as conn:
            target = users.get_user(conn, user) if user else self.actor
            return users.create_token(conn, target, name, ttl, by=self.actor)

    def revoke_token(self, token_id: int) -> None:
        with self.home.db.write() as conn:
            users.revoke_token(conn, token_id, self.actor)

    # groups
    def create_group(self, name: str) -> GroupInfo:
        return self.store.create_group(self.actor, name)

    def groups(self) -> list[GroupInfo]:
        return self.store.list_groups(self.actor)

    def group(self, name: str) -> GroupInfo:
        return self.store.get_group(self.actor, name)

    def delete_group(self, name: str) -> int:
        return self.store.delete_group(self.actor, name)

    def add_group_member(self, group: str, user: str, admin: bool | None = None) -> GroupInfo:
        return self.store.add_group_member(self.actor, group, user, admin)

    def remove_group_member(self, group: str, user: str) -> None:
        self.store.remove_group_member(self.actor, group, user)

    # events
    def events(
        self, since: int = 0, limit: int = 1000, kinds: Iterable[str] | None = None
    ) -> list[EventRecord]:
        records = self.home.events.read(since, limit, kinds)
        return self.store.visible_events(self.actor, records)

    def wait_events(self, since: int, timeout: float) -> bool:
        return self.home.events.wait(since, timeout)

    # pipelines
    @property
    def registry(self) -> Pipelines:
        """The home's :class:`~datamill.engine.registry.Pipelines`."""
        return Pipelines(self.home.db)

    def pipelines(self) -> list[dict[str, Any]]:
        return self.registry.list(self.actor)

    def add_pipeline(self, name: str, ref: str, description: str = "") -> dict[str, Any]:
        return self.registry.add(self.actor, name, self._pipeline(ref), description)

    def remove_pipeline(self, name: str) -> None:
        self.registry.remove(self.actor, name)

    # runs
    @property
    def engine(self) -> Engine:
        """The :class:`~datamill.engine.engine.Engine` of the home."""
        return Engine(self.home)

    def plan(
        self,
        pipeline_ref: str,
        folder: str,
        params: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        engine = self.engine
        inputs = engine.inputs_from_folder(self.actor, folder)
        return engine.plan(self._pipeline(pipeline_ref), inputs, params, force, actor=self.actor).to_dict()

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

    def run(
        self,
        pipeline_ref: str,
        folder: str,
        dest: str | None = None,
        params: Mapping[str, Any] | None = None,
        force: bool = False,
        executor: str | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        executor = executor or self.home.settings.executor
        run_id = self.submit_run(pipeline_ref, folder, dest, params, force, executor=executor)
        if on_start is not None:
            on_start(run_id)
        return self.execute(run_id, executor)

    def execute(self, run_id: int, executor: str | None = None, workers: int | None = None) -> dict[str, Any]:
        """Execute a recorded run in this process until it ends; returns it (as :meth:`run_info`).

        What ``Engine.run`` does after submitting. A ``datamill up`` on the same home may execute
        some or all of its tasks meanwhile: this waits for those too, so the run has ended on return.
        Ctrl-C cancels the run (its running tasks here are marked cancelled at once).
        """
        self.run_info(run_id)  # access check: a run you may not see is not yours to execute
        from datamill.engine.scheduler import Scheduler

        sched = Scheduler(self.home, executor or self.home.settings.executor, workers=workers)

        async def go() -> None:
            async with sched:
                while True:
                    await sched.run_until_idle([run_id])
                    if await self._follow_elsewhere(sched, run_id):
                        break
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                # Ctrl-C arrived while the scheduler was closing, which waits through cancellation:
                # let asyncio.run turn it into KeyboardInterrupt all the same.
                raise asyncio.CancelledError

        try:
            asyncio.run(go())
        except KeyboardInterrupt:
            self._abandon(run_id, sched.owner)
            raise
        return self.run_info(run_id)

    async def _follow_elsewhere(self, sched: Any, run_id: int) -> bool:
        """Wait while another scheduler (a ``datamill up`` on this home) holds the run's remaining tasks.

        True once the run has ended; False when it has queued tasks again (requeued because the
        scheduler holding them died and their leases expired, or made ready by its progress), which
        this process then drives itself. Whoever executes a run, the caller sees it to its end.
        """
        events = self.home.events
        while True:
            cursor = await asyncio.to_thread(events.latest)
            await asyncio.to_thread(sched.pending_runs)  # requeues the tasks of a scheduler that died
            status, queued = await asyncio.to_thread(self._run_progress, run_id)
            if status in FINISHED_RUN:
                return True
            if queued:
                return False
            await asyncio.to_thread(events.wait, cursor, FOLLOW_POLL_SECONDS)

    def _run_progress(self, run_id: int) -> tuple[str, bool]:
        """A run's status, and whether it has queued tasks."""
        from sqlalchemy import select

        from datamill.db.models import Run, Task
        from datamill.engine import runs

        with self.home.db.read() as conn:
            status = conn.execute(select(Run.status).where(Run.id == run_id)).scalar_one()
            queued = conn.execute(
                select(Task.id).where(Task.run_id == run_id, Task.status == runs.TaskStatus.QUEUED).limit(1)
            ).first()
        return str(status), queued is not None

    def _abandon(self, run_id: int, owner: str) -> None:
        """Cancel a run whose in-process scheduler was interrupted, ending the tasks it held."""
        from sqlalchemy import select

        from datamill.db.models import Task
        from datamill.engine import runs

        with self.home.db.write() as conn:
            folder_id = runs.run_folder_id(conn, run_id)
            held = conn.execute(
                select(Task.id).where(
                    Task.run_id == run_id, Task.lease_owner == owner, Task.status == runs.TaskStatus.RUNNING
                )
            ).scalars()
            for tid in list(held):
                runs.finish_task(conn, tid, run_id, runs.TaskStatus.CANCELLED, folder_id, error="interrupted")
            runs.request_cancel(conn, run_id, self.actor.id, folder_id)
            runs.finish_run_if_done(conn, run_id, folder_id)

    def runs(self, limit: int = 50, status: str | None = None) -> list[dict[str, Any]]:
        return self.engine.list_runs(self.actor, limit, status)

    def run_info(self, run_id: int) -> dict[str, Any]:
        return self.engine.get_run(self.actor, run_id)

    def tasks(self, run_id: int) -> list[dict[str, Any]]:
        return [t.to_dict() for t in self.engine.tasks(self.actor, run_id)]

    def task(self, task_id: int) -> dict[str, Any]:
        return self.engine.task(self.actor, task_id).to_dict()

    def cancel_run(self, run_id: int) -> bool:
        return self.engine.cancel(self.actor, run_id)

    def retry_run(self, run_id: int) -> int:
        return self.engine.retry(self.actor, run_id)

    def why(self, task_id: int) -> dict[str, Any]:
        return self.engine.why(self.actor, task_id)

    def logs(self, task_id: int, follow: bool = False) -> Iterator[str]:
        return self.engine.iter_log(self.actor, task_id, follow=follow)

    def wait_run(self, run_id: int, timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        events = self.home.events
        while True:
            cursor = events.latest()
            info = self.run_info(run_id)
            if info["status"] in FINISHED_RUN:
                return info
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if left <= 0:
                return info
            events.wait(cursor, left)

    # dataflows
    @property
    def flows(self) -> Dataflows:
        """The home's :class:`~datamill.dataflows.dataflow.Dataflows`."""
        return Dataflows(self.home.db)

    def create_dataflow(
        self,
        name: str,
        source: str,
        dest: str,
        pipeline: str,
        trigger: str = "new-items",
        params: Mapping[str, Any] | None = None,
        description: str = "",
        webhooks: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        config = {
            "source": source,
            "destination": dest,
            "pipeline": self._pipeline(pipeline),
            "trigger": trigger,
            "params": dict(params or {}),
            "description": description,
            "webhooks": list(webhooks or []),
        }
        return self.flows.create(self.actor, name, config).to_dict()

    def dataflows(self) -> list[dict[str, Any]]:
        return [f.to_dict() for f in self.flows.all(self.actor)]

    def dataflow(self, name: str, recent: int = 10) -> dict[str, Any]:
        from datamill.engine import runs

        out = self.flows.get(self.actor, name).to_dict()
        with self.home.db.read() as conn:
            out["recent_runs"] = [
                {k: r[k] for k in ("id", "status", "reason", "requested_at", "finished_at", "dataflow_version")}
                for r in runs.list_runs(conn, recent, dataflow_id=out["id"])
            ]
        return out

    def edit_dataflow(self, name: str, **changes: Any) -> dict[str, Any]:
        if isinstance(changes.get("pipeline"), str):
            changes["pipeline"] = self._pipeline(changes["pipeline"])
        return self.flows.edit(self.actor, name, dataflow_changes(changes)).to_dict()

    def start_dataflow(self, name: str) -> dict[str, Any]:
        return self.flows.set_state(self.actor, name, "running").to_dict()

    def stop_dataflow(self, name: str, cancel: bool = False) -> dict[str, Any]:
        from datamill.dataflows.triggers import active_runs

        out = self.flows.set_state(self.actor, name, "stopped").to_dict()
        cancelled = []
        if cancel:
            engine = self.engine
            for run_id in active_runs(self.home, out["id"]):
                if engine.cancel(self.actor, run_id):
                    cancelled.append(run_id)
        out["cancelled"] = cancelled
        return out

    def run_dataflow(self, name: str) -> int | None:
        from datamill.dataflows.triggers import Triggers

        self.flows.get(self.actor, name)  # not visible: NotFound, as everywhere else
        # The run is submitted as this actor: the engine checks read on the source, write on the destination.
        return Triggers(self.home).run_now(name, self.actor)

    def dataflow_history(self, name: str) -> list[dict[str, Any]]:
        return self.flows.history(self.actor, name)

    def delete_dataflow(self, name: str) -> None:
        self.flows.delete(self.actor, name)


#: Client-side names of dataflow fields -> the dataflow's configuration keys.
_FIELD_NAMES = {"dest": "destination", "destination": "destination"}
_EDITABLE = ("source", "dest", "destination", "pipeline", "trigger", "params", "description", "webhooks")


def dataflow_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """``edit_dataflow`` keyword arguments as configuration changes; None values are left out.

    Raises InvalidDataflow naming an unknown field.
    """
    from datamill.errors import InvalidDataflow

    unknown = sorted(set(changes) - set(_EDITABLE))
    if unknown:
        raise InvalidDataflow(
            f"cannot change {', '.join(unknown)}; editable fields: source, dest, pipeline, trigger, params, "
            "description, webhooks"
        )
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if value is None:
            continue
        if key == "webhooks":
            value = list(value)
        out[_FIELD_NAMES.get(key, key)] = value
    return out
