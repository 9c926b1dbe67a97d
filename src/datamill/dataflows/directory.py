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

**One server per dataflow.** Servers sharing a database each run this; a server runs a
directory dataflow's watcher only while it holds the dataflow's lease
(:mod:`datamill.dataflows.owners`), renewed at each sync. When the owner dies, another server
takes over once the lease (``lease_seconds``) expired, and resumes without re-sending.

**Live status.** With each renewal the owner writes the watcher's status (files seen, landed,
skipped, bytes landed, files waiting, the last file landed, the last error): it is the
dataflow's ``status`` in ``flow show`` and the API. When it changed, at most every
:data:`HEARTBEAT_SECONDS`, a ``dataflow.heartbeat`` event carries it into the event log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from sqlalchemy import select

from datamill import events
from datamill.dataflows import owners
from datamill.dataflows.dataflow import (
    FLOW_FAMILIES,
    DataflowKind,
    DataflowState,
    check_watch_directory,
    fail_dataflow,
    parse_watch_roots,
)
from datamill.dataflows.watcher import Known, SmallFile, Watcher, WatchEvent, WatchRules
from datamill.db.models import Dataflow, User
from datamill.errors import DatamillError, NotFound, PermissionDenied
from datamill.events import EventKind
from datamill.home import Home
from datamill.store.access import Actor
from datamill.store.store import Store

log = logging.getLogger("datamill.directories")

#: How often the running directory dataflows are looked up (started, stopped, edited).
SYNC_SECONDS = 1.0
#: How long :meth:`DirectoryFlows.serve` waits for an event when no directory dataflow runs anywhere.
IDLE_SECONDS = 30.0
#: How each landed version is marked (``created_via``).
CREATED_VIA = "directory"
#: At most one ``dataflow.heartbeat`` event per dataflow this often (and only when its status changed).
HEARTBEAT_SECONDS = 10.0
#: Event kinds counted as files left alone (already there, or left out by the rules).
_SKIPPED = ("unchanged", "hidden", "excluded")


#: What a directory dataflow's status and failure reason say instead of a directory on the server.
SERVER_DIRECTORY = "(a directory on the server)"


def without_server_paths(message: str, directory: Any, roots: tuple[str, ...]) -> str:
    """``message`` with the watched directory and the watch roots replaced by :data:`SERVER_DIRECTORY`.

    Longest first, so that a directory below a root is replaced whole.
    """
    paths = set(roots)
    if isinstance(directory, str) and directory.strip():
        paths |= {directory, os.path.realpath(os.path.expanduser(directory)), os.path.expanduser(directory)}
    for path in sorted((p for p in paths if p and p != os.sep), key=len, reverse=True):
        message = message.replace(path, SERVER_DIRECTORY)
    return message


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
        return Known.by_name(items)

    def current_tree(self, folder: str) -> dict[str, dict[str, Known]]:
        """The current versions in ``folder`` and below, by folder ({} when it does not exist yet)."""
        try:
            items = self.store.find_items(self.actor, folder, recursive=True)
        except NotFound:
            return {}
        out = Known.by_folder(items)
        self._exists.update(out)
        return out

    def _ensure(self, folder: str) -> None:
        if folder not in self._exists:
            self.store.create_folder(self.actor, folder, parents=True, exist_ok=True)
            self._exists.add(folder)

    def land_folders(self, batches: list[tuple[str, list[SmallFile]]]) -> list[list[tuple[str, int]]]:
        """Small files of several folders: one sync and one transaction for all of them."""
        new = [f for f, _ in batches if f not in self._exists]
        infos = self.store.put_folders(
            self.actor,
            [(folder, [(f.name, f.data) for f in files], [f.metadata for f in files]) for folder, files in batches],
            created_via=CREATED_VIA,
            create=bool(new),
        )
        self._exists.update(new)
        return [[(i.digest, i.version) for i in landed] for landed in infos]

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


class WatchStatus:
    """What a directory dataflow's watcher did so far: counts, bytes, the last file landed, the last error."""

    def __init__(self) -> None:
        self.bytes_landed = 0
        self.last_landed: dict[str, Any] | None = None
        self.last_error: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def hear(self, ev: WatchEvent) -> None:
        """Take in one watcher event."""
        with self._lock:
            if ev.kind == "uploaded":
                self.bytes_landed += ev.size
                self.last_landed = {"path": ev.item, "version": ev.version, "size": ev.size, "at": time.time()}
            elif ev.kind in ("failed", "vanished", "changed"):
                self.last_error = {"path": ev.path, "kind": ev.kind, "message": ev.detail, "at": time.time()}

    def stopped(self, message: str) -> None:
        """The watcher stopped with an error."""
        with self._lock:
            self.last_error = {"path": None, "kind": "stopped", "message": message, "at": time.time()}

    def snapshot(self, watcher: Watcher | None) -> dict[str, Any]:
        """The status as JSON: ``files_seen``, ``files_landed``, ``files_skipped``, ``bytes_landed``, ..."""
        counts = dict(watcher.counts) if watcher is not None else {}
        with self._lock:
            return {
                "files_seen": sum(counts.values()) - counts.get("changed", 0),
                "files_landed": counts.get("uploaded", 0),
                "files_skipped": sum(counts.get(k, 0) for k in _SKIPPED),
                "files_failed": counts.get("failed", 0),
                "files_waiting": watcher.pending if watcher is not None else 0,
                "bytes_landed": self.bytes_landed,
                "last_landed": self.last_landed,
                "last_error": self.last_error,
                "counts": counts,
            }


@dataclass
class _Running:
    version: int
    thread: threading.Thread
    stop: threading.Event
    dest_folder_id: int | None
    status: WatchStatus
    watcher: Watcher | None = None
    heartbeat_at: float = 0.0
    heartbeat: dict[str, Any] | None = None
    #: when this server last renewed its lease (monotonic clock)
    renewed_at: float = field(default_factory=time.monotonic)

    def snapshot(self) -> dict[str, Any]:
        return self.status.snapshot(self.watcher)


class DirectoryFlows:
    """Keeps one watcher thread per running directory dataflow this server owns, in step with the dataflows."""

    def __init__(self, home: Home, lease_seconds: float | None = None) -> None:
        self.home = home
        self.lease_seconds = lease_seconds if lease_seconds is not None else home.settings.lease_seconds
        #: this server's name in ``dataflow_owners``: unique per process
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        #: at most one heartbeat event per dataflow this often
        self.heartbeat_seconds = HEARTBEAT_SECONDS
        self._running: dict[int, _Running] = {}
        #: whether the last sync saw a running directory dataflow (held here or elsewhere)
        self._others = False
        self._lock = threading.Lock()

    def counts(self, dataflow_id: int) -> dict[str, int]:
        """What the watcher of a running directory dataflow did so far (``uploaded``, ``unchanged``, ...)."""
        with self._lock:
            run = self._running.get(dataflow_id)
        return dict(run.watcher.counts) if run is not None and run.watcher is not None else {}

    def owned(self) -> set[int]:
        """The directory dataflows whose watchers run in this server now."""
        with self._lock:
            return {fid for fid, run in self._running.items() if run.thread.is_alive()}

    def sync(self) -> None:
        """Claim (or renew) the running directory dataflows and run their watchers; stop the others."""
        with self.home.db.read() as conn:
            rows = conn.execute(
                select(
                    Dataflow.id,
                    Dataflow.name,
                    Dataflow.version,
                    Dataflow.owner_id,
                    Dataflow.config,
                    Dataflow.dest_folder_id,
                ).where(Dataflow.state == DataflowState.RUNNING, Dataflow.kind == DataflowKind.DIRECTORY)
            ).all()
        wanted = {r.id: r for r in rows}
        self._others = bool(wanted)
        with self._lock:
            running = dict(self._running)
        for fid, had in running.items():
            row = wanted.get(fid)
            if row is None or row.version != had.version or not had.thread.is_alive():
                # Stopped, edited (restarted with the new configuration) or ended: let it go.
                self._let_go(fid, had)
        for fid, row in wanted.items():
            with self._lock:
                run = self._running.get(fid)
            status = run.snapshot() if run is not None else None
            if not owners.claim(self.home.db, fid, self.owner, self.lease_seconds, status):
                if run is not None:
                    log.warning("directory dataflow %s: another server holds it now; stopping here", row.name)
                    run.stop.set()
                    with self._lock:
                        self._running.pop(fid, None)
                continue
            if run is None:
                self._start(row)
            else:
                run.renewed_at = time.monotonic()
                self._heartbeat(fid, run)

    def _start(self, row: Any) -> None:
        stop = threading.Event()
        run = _Running(row.version, threading.Thread(), stop, row.dest_folder_id, WatchStatus())
        run.thread = threading.Thread(
            target=self._watch,
            args=(row.id, row.name, row.owner_id, dict(row.config or {}), run),
            name=f"datamill-directory-{row.name}",
            daemon=True,
        )
        with self._lock:
            self._running[row.id] = run
        run.thread.start()

    def _let_go(self, fid: int, run: _Running) -> None:
        run.stop.set()
        with self._lock:
            self._running.pop(fid, None)
        owners.release(self.home.db, fid, self.owner, run.snapshot())

    def _stop_unrenewed(self) -> None:
        """Stop the watchers whose lease this server could not renew for ``lease_seconds``: another may run them."""
        now = time.monotonic()
        with self._lock:
            stale = [fid for fid, run in self._running.items() if now - run.renewed_at > self.lease_seconds]
            for fid in stale:
                self._running.pop(fid).stop.set()
        for fid in stale:
            log.warning("directory dataflow %d: its lease could not be renewed; stopped here", fid)

    def _heartbeat(self, fid: int, run: _Running) -> None:
        """A ``dataflow.heartbeat`` event with the status, when it changed and the last one is old enough."""
        snap = run.snapshot()
        now = time.time()
        if snap == run.heartbeat or now - run.heartbeat_at < self.heartbeat_seconds:
            return
        run.heartbeat, run.heartbeat_at = snap, now
        with self.home.db.write() as conn:
            events.append(
                conn,
                EventKind.DATAFLOW_HEARTBEAT,
                dataflow_id=fid,
                folder_id=run.dest_folder_id,
                data={"status": snap},
            )

    def _owner(self, owner_id: int | None) -> Actor:
        with self.home.db.read() as conn:
            u = conn.execute(select(User.id, User.name, User.is_admin).where(User.id == owner_id)).first()
        if u is None or not u.is_admin:
            raise PermissionDenied(
                "its owner is no longer a site admin, and only site admins may run directory dataflows; "
                "a site admin may edit it (becoming its chooser) and start it again"
            )
        return Actor(u.id, u.name, u.is_admin)

    def _watch(self, fid: int, name: str, owner_id: int | None, cfg: dict[str, Any], run: _Running) -> None:
        message: str | None = None
        roots = parse_watch_roots(self.home.settings.watch_roots)
        try:
            actor = self._owner(owner_id)
            # Again at each start: the roots may have been narrowed since the dataflow was saved.
            directory = check_watch_directory(cfg.get("directory"), roots)

            def on_event(ev: WatchEvent) -> None:
                run.status.hear(ev)
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
            run.watcher = watcher
            watcher.run(run.stop)
        except DatamillError as exc:
            message = exc.message
        except OSError as exc:
            message = f"the directory cannot be read: {exc.strerror or type(exc).__name__}"
        except Exception:
            log.exception("directory dataflow %s stopped with an unexpected error", name)
            message = "stopped by an unexpected error; see the server log"
        if message is not None:
            log.warning("directory dataflow %s stopped: %s", name, message)
            # The status, the failure reason and its event reach every reader of the destination:
            # they name the server's directories only as such (the server log has them).
            message = without_server_paths(message, cfg.get("directory"), roots)
            run.status.stopped(message)
            fail_dataflow(self.home.db, fid, message)
            owners.release(self.home.db, fid, self.owner, run.snapshot())

    def close(self, timeout: float = 5.0) -> None:
        """Stop every watcher, wait for their threads (a file being landed is finished first), give up the leases."""
        with self._lock:
            running, self._running = dict(self._running), {}
        for run in running.values():
            run.stop.set()
        for fid, run in running.items():
            run.thread.join(timeout)
            try:
                owners.release(self.home.db, fid, self.owner, run.snapshot())
            except DatamillError as exc:  # the database went first: the lease runs out by itself
                log.warning("could not give up the lease on directory dataflow %d: %s", fid, exc.message)

    async def serve(self, stop: asyncio.Event) -> None:
        """Keep the watchers in step with the dataflows until ``stop`` is set, then stop them all."""
        try:
            last = -events.PACE_SECONDS
            while not stop.is_set():
                # Only a dataflow's start, stop or edit concerns it: not every commit of landing items.
                last = await events.pace(last, stop)
                if stop.is_set():
                    break
                head = await asyncio.to_thread(self.home.events.latest, FLOW_FAMILIES)
                try:
                    await asyncio.to_thread(self.sync)
                except DatamillError as exc:
                    # The database is away: leases cannot be renewed (others may take over once
                    # they expire); try again at the next round.
                    log.warning("directory dataflows: %s", exc.message)
                    self._stop_unrenewed()
                if self._running or self._others:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), SYNC_SECONDS)
                else:
                    # None runs anywhere: only an event (a dataflow started) can change that.
                    await self.home.events.wait_or_stop(head, IDLE_SECONDS, stop, FLOW_FAMILIES)
        finally:
            await asyncio.to_thread(self.close)
