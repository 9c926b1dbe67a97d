"""Helpers every test folder shares, kept here once: ``from tests.helpers import open_home, wait_for``.

* Homes: :func:`open_home` (SQLite inside the directory, or any database URL; never reads the
  caller's ``DATAMILL_*`` variables), :func:`add_user`; PostgreSQL databases: :func:`libpq_url`,
  :func:`create_database`, :func:`drop_database`.
* Worlds: :class:`HomeWorld`, a home with the folders ``Raw`` and ``Out`` and the checks tests
  repeat; the engine's and the dataflows' worlds build on it. :func:`world_of` makes their
  ``world``/``db_world`` fixtures.
* Waiting: :func:`wait_for` (poll a condition, fail after a timeout), :func:`until` (the same in
  asyncio), :class:`Clock` (a clock that moves only when told to).
* Servers: :func:`free_port`, :func:`serve` (the app on a loopback port in this process),
  :class:`Up` (a real ``datamill up`` subprocess), :func:`datamill` and :func:`cli_env` for
  running the command.
* Events: :func:`all_events`, :func:`check_fold`, :func:`finished_per_task`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from datamill.api import ServerHandle, start_background_server
from datamill.config import load_settings
from datamill.db import Database
from datamill.engine import runs
from datamill.engine.engine import Engine
from datamill.engine.scheduler import Scheduler
from datamill.events import EventRecord
from datamill.home import Home
from datamill.store import users
from datamill.store.access import Actor
from datamill.store.store import ItemInfo, VersionInfo

#: The folders a world's pipelines read from and publish into.
SOURCE = "Raw"
DEST = "Out"
#: 2026-01-01 00:00:00 UTC: a round time, so cron ticks fall on easy-to-read values.
T0 = 1767225600.0

# ---------------------------------------------------------------------------------- homes


def open_home(path: Path, db_url: str | None = None, *, blob_url: str = "", **settings: Any) -> Home:
    """A home in ``path`` on ``db_url`` (SQLite inside ``path`` when None); blobs under ``path`` or at
    ``blob_url``; no demo. The caller's ``DATAMILL_*`` variables are ignored, so tests are hermetic."""
    return Home(
        load_settings(environ={}, home=str(path), database_url=db_url or "", blob_url=blob_url, demo=False, **settings)
    )


def add_user(home: Home, name: str, password: str | None = None, is_admin: bool = False) -> Actor:
    """Create a user directly in the home's database."""
    with home.db.write() as conn:
        return users.create_user(conn, name, password, is_admin)


def libpq_url(url: str, dbname: str | None = None) -> str:
    """``url`` as libpq reads it (``postgresql://``, no ``+driver``), optionally naming another database."""
    parts = urlsplit(url)._replace(scheme="postgresql")
    if dbname is not None:
        parts = parts._replace(path=f"/{dbname}")
    return urlunsplit(parts)


def create_database(server_url: str, template: str | None = None) -> str:
    """Create a new, uniquely named PostgreSQL database on the server (a copy of ``template``); its name."""
    name = f"t_{uuid.uuid4().hex}"
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
    with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
        conn.execute(query)
    return name


def drop_database(server_url: str, name: str) -> None:
    """Drop a database made by :func:`create_database`, closing connections still open to it."""
    with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# ---------------------------------------------------------------------------------- waiting


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float = 30.0,
    poll: float = 0.02,
    progress: Callable[[], Any] | None = None,
) -> Any:
    """Poll ``check`` until it returns something true (returned), failing after ``timeout`` seconds.

    For conditions with no event to await from outside (another process's state, a server's
    counters); the timeout only bounds how long a failing test takes. With ``progress``, the
    timeout counts from the last change of what it returns: a long job on a loaded machine (a
    thousand tasks on two busy cores) fails only when it stops moving, not when it moves slowly.
    """
    deadline = time.monotonic() + timeout
    seen = progress() if progress is not None else None
    while True:
        got = check()
        if got:
            return got
        if progress is not None and (now := progress()) != seen:
            seen, deadline = now, time.monotonic() + timeout
        if time.monotonic() > deadline:
            stalled = f" (no progress: {seen!r})" if progress is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{stalled}")
        time.sleep(poll)


async def until(what: str, check: Callable[[], Any], timeout: float = 60.0, poll: float = 0.05) -> None:
    """:func:`wait_for` inside an event loop: ``check`` runs in a thread (it may query the database)."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(poll)


class Clock:
    """A clock that moves only when told to (pass it where code takes ``clock=time.time``)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def set(self, now: float) -> float:
        self.now = now
        return now


# ---------------------------------------------------------------------------------- servers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def serve(home: Home, **options: Any) -> Iterator[ServerHandle]:
    """``home`` served over HTTP on 127.0.0.1 (a free port) in this process, stopped afterwards.

    ``options`` go to :func:`~datamill.api.start_background_server` (``services=True`` runs the
    scheduler, triggers and notifier too)."""
    handle = start_background_server(home, **options)
    try:
        yield handle
    finally:
        handle.stop()


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment without ``DATAMILL_*`` settings, a wide terminal, and ``extra``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DATAMILL_")}
    return {**environ, "COLUMNS": "200", **extra}


def datamill(*args: str) -> list[str]:
    """The command line of the real ``datamill`` command with ``args``."""
    return [sys.executable, "-m", "datamill.cli", *args]


_LOGIN_URL = re.compile(r"(http://127\.0\.0\.1:\d+)/\?token=(dm_[\w-]+)")


class Up:
    """A real ``datamill up`` on ``home`` in a subprocess, with the URL and admin token it printed.

    ``env`` adds variables to :func:`cli_env` (``DATAMILL_EXECUTOR`` …), ``cwd`` is its working
    directory. After start-up its stderr is read by a thread (:meth:`stderr`), so a chatty server
    never blocks on a full pipe.
    """

    def __init__(
        self, home: Path, *, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout: float = 120.0
    ) -> None:
        self.proc = subprocess.Popen(
            datamill("--home", str(home), "up", "--port", "0", "--no-demo"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(**(env or {})),
            cwd=cwd,
        )
        assert self.proc.stderr is not None
        self._lines: list[str] = []
        self._started = 0
        deadline = time.monotonic() + timeout
        match = None
        while match is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self._lines.append(line)
            match = _LOGIN_URL.search(line)
        if match is None:
            self.stop()
            raise AssertionError("datamill up did not start:\n" + self.stderr())
        self.url, self.token = match.group(1), match.group(2)
        self._started = len(self._lines)
        self._drain = threading.Thread(target=self._read_rest, name="datamill-up-stderr", daemon=True)
        self._drain.start()

    def _read_rest(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.append(line)

    def stderr(self, after_start: bool = False) -> str:
        """What the server wrote to stderr so far (all of it once it has ended); with ``after_start``
        only what came after the line with the login URL."""
        return "".join(self._lines[self._started if after_start else 0 :])

    def _ended(self) -> None:
        drain = getattr(self, "_drain", None)
        if drain is not None:
            drain.join(timeout=30)
        elif self.proc.stderr is not None:
            self._lines.append(self.proc.stderr.read())
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        self._ended()

    def stop(self) -> int | None:
        """Stop the server as Ctrl-C would (SIGKILL if it has not ended 30 s later); its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._ended()
        return self.proc.returncode

    def __enter__(self) -> Up:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------- events


def all_events(home: Home, kind: str | None = None, run_id: int | None = None) -> list[EventRecord]:
    """Every event of the log (read in pages), or those of one kind and/or run."""
    out: list[EventRecord] = []
    after = 0
    while True:
        page = home.events.read(after, 1000, run_id=run_id)
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


# ---------------------------------------------------------------------------------- worlds


class HomeWorld:
    """A home with the folders ``Raw`` (inputs) and ``Out`` (outputs), an engine, and checks."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.admin = home.admin
        self.engine = Engine(home)
        for folder in (SOURCE, DEST):
            home.store.create_folder(self.admin, folder, exist_ok=True)

    def put(
        self, name: str, data: bytes | str, folder: str = SOURCE, actor: Actor | None = None, **metadata: Any
    ) -> VersionInfo:
        """Put ``data`` (text/plain) into ``folder``, with ``metadata`` if any."""
        raw = data.encode() if isinstance(data, str) else data
        return self.home.store.put(actor or self.admin, folder, name, raw, "text/plain", metadata or None)

    def drive(self, run_ids: list[int] | None = None, executor: str = "inline", **options: Any) -> None:
        """Drive recorded runs (all pending ones by default) to their end with a scheduler of our own."""

        async def go() -> None:
            async with Scheduler(self.home, executor, **options) as scheduler:
                await scheduler.run_until_idle(run_ids)

        asyncio.run(go())

    def out(self, folder: str = DEST) -> dict[str, ItemInfo]:
        """Items of a folder (the destination by default) by name."""
        return {i.name: i for i in self.home.store.list_items(self.admin, folder)}

    def read(self, name: str, folder: str = DEST) -> bytes:
        _info, chunks = self.home.store.iter_bytes(self.admin, f"{folder}/{name}")
        return b"".join(chunks)

    def versions(self, name: str, folder: str = DEST) -> list[VersionInfo]:
        return self.home.store.versions(self.admin, f"{folder}/{name}")

    def events(self, kind: str | None = None, run_id: int | None = None) -> list[EventRecord]:
        return all_events(self.home, kind, run_id)

    def per_task(self, kind: str, run_id: int | None = None) -> Counter[int]:
        """How many events of ``kind`` each task has."""
        return Counter(e.task_id for e in self.events(kind, run_id) if e.task_id is not None)

    def check_fold(self) -> Mapping[str, Any]:
        """Run and task state folded from the events equals what the tables say; returns it."""
        return check_fold(self.home)


W = TypeVar("W", bound=HomeWorld)


def world_of(cls: type[W], path: Path, db_url: str | None = None) -> Iterator[W]:
    """A ``cls`` world on a home in ``path`` (see :func:`open_home`), closed afterwards; for fixtures."""
    home = open_home(path, db_url)
    try:
        yield cls(home)
    finally:
        home.close()


def migrate_to(db: Database, revision: str, down: bool = False) -> None:
    """Upgrade (or downgrade) the database to ``revision``, on the database's write connection as ``migrate`` does."""
    from alembic import command

    from datamill.db.database import alembic_config

    cfg = alembic_config(db.url)
    with db.write_engine.connect() as conn:
        if db.is_sqlite:
            conn.commit()
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)
        conn.commit()
