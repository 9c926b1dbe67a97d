"""A home with a source and a destination folder, an engine, and the checks engine tests repeat."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from datamill.config import load_settings
from datamill.engine import runs
from datamill.engine.engine import Engine
from datamill.engine.scheduler import Scheduler
from datamill.events import EventRecord
from datamill.home import Home
from datamill.pipeline import InputRef
from datamill.store.store import ItemInfo, VersionInfo

SOURCE = "Raw"
DEST = "Out"


def open_home(path: Path, db_url: str | None = None) -> Home:
    """A home in ``path``: SQLite inside it, or the database at ``db_url``."""
    if db_url is None:
        return Home.open(path, demo=False)
    return Home(load_settings(home=str(path), database_url=db_url, demo=False))


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0, poll: float = 0.02) -> Any:
    """Poll ``check`` until it returns something true (returned), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


class World:
    """A home with folders ``Raw`` (inputs) and ``Out`` (outputs) and an :class:`Engine` over it."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.engine = Engine(home)
        self.admin = home.admin
        for folder in (SOURCE, DEST):
            home.store.create_folder(self.admin, folder, exist_ok=True)

    # ------------------------------------------------------------------ inputs

    def put(self, name: str, data: bytes | str, folder: str = SOURCE, **metadata: Any) -> VersionInfo:
        raw = data.encode() if isinstance(data, str) else data
        return self.home.store.put(self.admin, folder, name, raw, "text/plain", metadata or None)

    def inputs(self, folder: str = SOURCE) -> list[InputRef]:
        return self.engine.inputs_from_folder(self.admin, folder)

    # ------------------------------------------------------------------ runs

    def run(self, pipeline: str, executor: str = "inline", **options: Any) -> dict[str, Any]:
        """Run ``pipeline`` over the current items of ``Raw`` into ``Out``; returns the finished run."""
        options.setdefault("source", SOURCE)
        options.setdefault("dest", DEST)
        return self.engine.run(self.admin, pipeline, self.inputs(), executor=executor, **options)

    def submit(self, pipeline: str, **options: Any) -> int:
        options.setdefault("source", SOURCE)
        options.setdefault("dest", DEST)
        return self.engine.submit(self.admin, pipeline, self.inputs(), **options)

    def drive(self, run_ids: list[int] | None = None, executor: str = "inline", **options: Any) -> None:
        """Drive recorded runs (all pending ones by default) to the end with a scheduler of our own."""

        async def go() -> None:
            async with Scheduler(self.home, executor, **options) as scheduler:
                await scheduler.run_until_idle(run_ids)

        asyncio.run(go())

    def run_submitted(self, run_id: int, executor: str = "inline") -> dict[str, Any]:
        """Drive a recorded run here; returns it, finished."""
        self.drive([run_id], executor)
        return self.engine.get_run(self.admin, run_id)

    def tasks(self, run_id: int) -> dict[str, runs.TaskRow]:
        """A run's tasks by planned id (``"parse[Raw/a.txt]"``)."""
        return {t.planned_id: t for t in self.engine.tasks(self.admin, run_id)}

    def statuses(self, run_id: int) -> dict[str, str]:
        return {pid: str(t.status) for pid, t in self.tasks(run_id).items()}

    def status_counts(self, run_id: int) -> Counter[str]:
        return Counter(self.statuses(run_id).values())

    # ------------------------------------------------------------------ outputs

    def out(self, folder: str = DEST) -> dict[str, ItemInfo]:
        """Items of the destination by name."""
        return {i.name: i for i in self.home.store.list_items(self.admin, folder)}

    def read(self, name: str, folder: str = DEST) -> bytes:
        _info, chunks = self.home.store.iter_bytes(self.admin, f"{folder}/{name}")
        return b"".join(chunks)

    def versions(self, name: str, folder: str = DEST) -> list[VersionInfo]:
        return self.home.store.versions(self.admin, f"{folder}/{name}")

    # ------------------------------------------------------------------ events

    def events(self, kind: str | None = None, run_id: int | None = None) -> list[EventRecord]:
        evs = self.home.events.read(0, 10**9, run_id=run_id)
        return [e for e in evs if kind is None or e.kind == kind]

    def per_task(self, kind: str, run_id: int | None = None) -> Counter[int]:
        """How many events of ``kind`` each task has."""
        return Counter(e.task_id for e in self.events(kind, run_id) if e.task_id is not None)

    def check_fold(self) -> Mapping[str, Any]:
        """Run and task state folded from the events equals what the tables say; returns it."""
        folded = runs.fold(self.home.events.read(0, 10**9))
        with self.home.db.read() as conn:
            tables = runs.state_from_tables(conn)
        assert folded == tables
        return tables
