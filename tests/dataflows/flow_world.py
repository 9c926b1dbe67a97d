"""A home with ``Raw`` and ``Out`` folders, dataflows over them, and a clock the tests move by hand.

Triggers are polled directly with clock values (``world.poll(t)``) and runs are driven to their
end by an inline scheduler in this process (``world.drive()``): nothing sleeps.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flow_pipelines import ref

from datamill.config import load_settings
from datamill.dataflows.dataflow import DataflowInfo, Dataflows
from datamill.dataflows.triggers import Triggers
from datamill.db.models import Dataflow
from datamill.engine import runs
from datamill.engine.engine import Engine
from datamill.engine.scheduler import Scheduler
from datamill.events import EventRecord
from datamill.home import Home
from datamill.store import users
from datamill.store.access import Actor
from datamill.store.store import ItemInfo, VersionInfo

SOURCE = "Raw"
DEST = "Out"
#: 2026-01-01 00:00:00 UTC: a round time, so cron ticks fall on easy-to-read values.
T0 = 1767225600.0


def open_home(path: Path, db_url: str | None = None) -> Home:
    """A home in ``path``: SQLite inside it, or the database at ``db_url``."""
    if db_url is None:
        return Home.open(path, demo=False)
    return Home(load_settings(home=str(path), database_url=db_url, demo=False))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0, poll: float = 0.05) -> Any:
    """Poll ``check`` until it returns something true (returned), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def set(self, now: float) -> float:
        self.now = now
        return now


class FlowWorld:
    """Folders ``Raw`` and ``Out``, the dataflow API, a triggers object on a manual clock, and checks."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.admin = home.admin
        self.flows = Dataflows(home.db)
        self.engine = Engine(home)
        self.clock = Clock()
        self.triggers = Triggers(home, self.engine, clock=self.clock)
        for folder in (SOURCE, DEST):
            home.store.create_folder(self.admin, folder, exist_ok=True)

    # ------------------------------------------------------------------ setup

    def user(self, name: str) -> Actor:
        with self.home.db.write() as conn:
            return users.create_user(conn, name)

    def put(self, name: str, data: bytes | str, folder: str = SOURCE, actor: Actor | None = None) -> VersionInfo:
        raw = data.encode() if isinstance(data, str) else data
        return self.home.store.put(actor or self.admin, folder, name, raw, "text/plain")

    def create(self, name: str = "flow", actor: Actor | None = None, **config: Any) -> DataflowInfo:
        """A dataflow ``Raw`` -> ``Out`` running the echo pipeline, with ``config`` on top."""
        cfg: dict[str, Any] = {"source": SOURCE, "destination": DEST, "pipeline": ref("echo_pipeline")}
        cfg.update(config)
        return self.flows.create(actor or self.admin, name, cfg)

    def start(self, name: str = "flow") -> DataflowInfo:
        return self.flows.set_state(self.admin, name, "running")

    def stop(self, name: str = "flow") -> DataflowInfo:
        return self.flows.set_state(self.admin, name, "stopped")

    # ------------------------------------------------------------------ running

    def poll(self, at: float | None = None) -> list[int]:
        """One trigger pass at clock time ``at`` (the clock moves there); the runs it recorded."""
        if at is not None:
            self.clock.set(at)
        return self.triggers.poll()

    def drive(self, run_ids: list[int] | None = None) -> None:
        """Run recorded runs (all pending ones by default) to their end with an inline scheduler."""

        async def go() -> None:
            async with Scheduler(self.home, "inline") as scheduler:
                await scheduler.run_until_idle(run_ids)

        asyncio.run(go())

    def run(self, run_id: int) -> dict[str, Any]:
        return self.engine.get_run(self.admin, run_id)

    def run_inputs(self, run_id: int) -> list[str]:
        """Names of a run's input items, in order."""
        return [i["name"] for i in self.run(run_id)["inputs"]]

    def flow_row(self, name: str = "flow") -> Any:
        from sqlalchemy import select

        with self.home.db.read() as conn:
            return conn.execute(select(Dataflow).where(Dataflow.name == name)).one()

    # ------------------------------------------------------------------ outputs

    def out(self, folder: str = DEST) -> dict[str, ItemInfo]:
        """Items of a folder by name."""
        return {i.name: i for i in self.home.store.list_items(self.admin, folder)}

    def read(self, name: str, folder: str = DEST) -> bytes:
        _info, chunks = self.home.store.iter_bytes(self.admin, f"{folder}/{name}")
        return b"".join(chunks)

    def versions(self, name: str, folder: str = DEST) -> list[VersionInfo]:
        return self.home.store.versions(self.admin, f"{folder}/{name}")

    # ------------------------------------------------------------------ events

    def events(self, kind: str | None = None) -> list[EventRecord]:
        return all_events(self.home, kind)

    def check_fold(self) -> Mapping[str, Any]:
        return check_fold(self.home)


def all_events(home: Home, kind: str | None = None) -> list[EventRecord]:
    """Every event of the log (in pages), or those of one kind."""
    out: list[EventRecord] = []
    after = 0
    while True:
        page = home.events.read(after, 1000)
        if not page:
            break
        out += page
        after = page[-1].seq
    return [e for e in out if kind is None or e.kind == kind]


def check_fold(home: Home) -> Mapping[str, Any]:
    """Run and task state folded from the events equals what the tables say; returns it."""
    folded = runs.fold(all_events(home))
    with home.db.read() as conn:
        tables = runs.state_from_tables(conn)
    assert folded == tables
    return tables


def finished_per_task(home: Home) -> Counter[int]:
    """How many ``task.finished`` events each task has."""
    return Counter(e.task_id for e in all_events(home, "task.finished") if e.task_id is not None)
