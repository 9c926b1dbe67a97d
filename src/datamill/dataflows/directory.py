"""Directory dataflows: the server lands the files of a directory on its own machine in a folder.

A ``directory`` dataflow (site admins only, a directory below the ``watch_roots`` setting; see
:func:`~datamill.dataflows.dataflow.check_watch_directory`) runs, while it is running, one
:class:`~datamill.dataflows.watcher.Watcher` thread in the server, landing files through the
store as the dataflow's owner. The rules are those of ``datamill watch`` (one implementation):
stable files only, include/exclude, hidden files skipped, subfolders kept, nothing sent twice
(a restarted server resumes by comparing digests). Each item's ``watch`` metadata names the
path relative to the directory, the file's mtime and the dataflow. Its destination can be the
source of a ``new-items`` dataflow: the versions it writes are ordinary ``item.*`` events.

A watcher that cannot go on (the directory went away, the owner is no longer a site admin, the
destination refuses writes) marks its dataflow failed, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from sqlalchemy import select

from datamill.dataflows.dataflow import (
    DataflowKind,
    DataflowState,
    check_watch_directory,
    fail_dataflow,
    parse_watch_roots,
)
from datamill.dataflows.watcher import Known, SmallFile, Watcher, WatchEvent, WatchRules
from datamill.db.models import Dataflow, User
from datamill.errors import DatamillError, NotFound, PermissionDenied
from datamill.home import Home
from datamill.store.access import Actor
from datamill.store.store import Store

log = logging.getLogger("datamill.directories")

#: How often the running directory dataflows are looked up (started, stopped, edited).
SYNC_SECONDS = 1.0
#: How each landed version is marked (``created_via``).
CREATED_VIA = "directory"


class StoreLanding:
    """Where a directory dataflow lands files: the store, acting as the dataflow's owner."""

    def __init__(self, store: Store, actor: Actor) -> None:
        self.store = store
        self.actor = actor
        self._exists: set[str] = set()

    def current(self, folder: str) -> dict[str, Known]:
        """The current versions in ``folder`` ({} when it does not exist yet)."""
        try:
            items = self.store.list_items(self.actor, folder)
        except NotFound:
            return {}
        self._exists.add(folder)
        return {i.name: Known.of(i.digest, i.size, i.metadata) for i in items}

    def _ensure(self, folder: str) -> None:
        if folder not in self._exists:
            self.store.create_folder(self.actor, folder, parents=True, exist_ok=True)
            self._exists.add(folder)

    def land_many(self, folder: str, files: list[SmallFile]) -> list[tuple[str, int]]:
        """Small files in one transaction."""
        self._ensure(folder)
        infos = self.store.put_many(
            self.actor,
            folder,
            [(f.name, f.data) for f in files],
            created_via=CREATED_VIA,
            item_metadata=[f.metadata for f in files],
        )
        return [(i.digest, i.version) for i in infos]

    def land_stream(
        self,
        folder: str,
        name: str,
        stream: BinaryIO,
        size: int,
        metadata: dict[str, Any],
        progress: Callable[[int], None] | None,
    ) -> tuple[str, int, int]:
        """One large file, streamed into the blob store."""
        self._ensure(folder)
        info = self.store.put(self.actor, folder, name, stream, metadata=metadata, created_via=CREATED_VIA)
        return info.digest, info.size, info.version


@dataclass
class _Running:
    version: int
    thread: threading.Thread
    stop: threading.Event
    watcher: Watcher | None = None


class DirectoryFlows:
    """Keeps one watcher thread per running directory dataflow, in step with the dataflows' state."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self._running: dict[int, _Running] = {}
        self._lock = threading.Lock()

    def counts(self, dataflow_id: int) -> dict[str, int]:
        """What the watcher of a running directory dataflow did so far (``uploaded``, ``unchanged``, ...)."""
        with self._lock:
            run = self._running.get(dataflow_id)
        return dict(run.watcher.counts) if run is not None and run.watcher is not None else {}

    def sync(self) -> None:
        """Start watchers for directory dataflows that run, stop those that no longer do (or changed)."""
        with self.home.db.read() as conn:
            rows = conn.execute(
                select(Dataflow.id, Dataflow.name, Dataflow.version, Dataflow.owner_id, Dataflow.config).where(
                    Dataflow.state == DataflowState.RUNNING, Dataflow.kind == DataflowKind.DIRECTORY
                )
            ).all()
        wanted = {r.id: r for r in rows}
        with self._lock:
            for fid, run in list(self._running.items()):
                row = wanted.get(fid)
                if row is None or row.version != run.version or not run.thread.is_alive():
                    # Stopped, edited (restarted with the new configuration) or ended: let it go.
                    run.stop.set()
                    del self._running[fid]
            for fid, row in wanted.items():
                if fid in self._running:
                    continue
                stop = threading.Event()
                thread = threading.Thread(
                    target=self._watch,
                    args=(fid, row.name, row.owner_id, dict(row.config or {}), stop),
                    name=f"datamill-directory-{row.name}",
                    daemon=True,
                )
                self._running[fid] = _Running(row.version, thread, stop)
                thread.start()

    def _owner(self, owner_id: int | None) -> Actor:
        with self.home.db.read() as conn:
            u = conn.execute(select(User.id, User.name, User.is_admin).where(User.id == owner_id)).first()
        if u is None or not u.is_admin:
            raise PermissionDenied(
                "its owner is no longer a site admin, and only site admins may run directory dataflows; "
                "a site admin may edit it (becoming its chooser) and start it again"
            )
        return Actor(u.id, u.name, u.is_admin)

    def _watch(self, fid: int, name: str, owner_id: int | None, cfg: dict[str, Any], stop: threading.Event) -> None:
        try:
            actor = self._owner(owner_id)
            roots = parse_watch_roots(self.home.settings.watch_roots)
            # Again at each start: the roots may have been narrowed since the dataflow was saved.
            directory = check_watch_directory(cfg.get("directory"), roots)

            def on_event(ev: WatchEvent) -> None:
                if ev.kind in ("changed", "vanished", "failed"):
                    log.warning("directory dataflow %s: %s: %s %s", name, ev.path, ev.kind, ev.detail)

            watcher = Watcher(
                directory,
                str(cfg.get("destination") or ""),
                StoreLanding(self.home.store, actor),
                WatchRules.from_dict(cfg.get("watch")),
                on_event=on_event,
                origin={"dataflow": name},
            )
            with self._lock:
                if fid in self._running:
                    self._running[fid].watcher = watcher
            watcher.run(stop)
        except DatamillError as exc:
            log.warning("directory dataflow %s stopped: %s", name, exc.message)
            fail_dataflow(self.home.db, fid, exc.message)
        except OSError as exc:
            message = f"the directory cannot be read: {exc.strerror or type(exc).__name__}"
            log.warning("directory dataflow %s stopped: %s", name, message)
            fail_dataflow(self.home.db, fid, message)
        except Exception:
            log.exception("directory dataflow %s stopped with an unexpected error", name)
            fail_dataflow(self.home.db, fid, "stopped by an unexpected error; see the server log")

    def close(self, timeout: float = 5.0) -> None:
        """Stop every watcher and wait for their threads (a file being landed is finished first)."""
        with self._lock:
            running, self._running = list(self._running.values()), {}
        for run in running:
            run.stop.set()
        for run in running:
            run.thread.join(timeout)

    async def serve(self, stop: asyncio.Event) -> None:
        """Keep the watchers in step with the dataflows until ``stop`` is set, then stop them all."""
        try:
            while not stop.is_set():
                await asyncio.to_thread(self.sync)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), SYNC_SECONDS)
        finally:
            await asyncio.to_thread(self.close)
