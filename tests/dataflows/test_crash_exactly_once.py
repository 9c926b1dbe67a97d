"""Exactly once under crashes: a server running a dataflow is SIGKILLed and restarted while items land.

The server is a process of its own (``datamill.api.server.serve`` with its services: scheduler,
triggers, notifier) on an embedded SQLite home, with the inline executor and a short task lease
(``DATAMILL_LEASE_SECONDS``) so that tasks of a killed server are reclaimed quickly. Server
processes are forked by a launcher subprocess that has imported the server once, so a restart
costs milliseconds rather than seconds of imports. This process puts 200 items into the source one
at a time through the store (safe alongside the server: SQLite WAL, ``BEGIN IMMEDIATE``) while
timers SIGKILL the server at seeded random moments; it is started again before the next batch.
Once every run has ended, each input must have exactly one result per published output, each with
one version, made by exactly one task per step that finished exactly once, and the run state
folded from the event log must equal the tables.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlalchemy import select as sql_select

from datamill.dataflows.dataflow import Dataflows
from datamill.db.models import Folder, Item, Run, Task, Version
from datamill.home import Home
from tests.helpers import check_fold, finished_per_task, open_home, wait_for

from .flow_pipelines import ref

ITEMS = 200
KILLS = 5
SEED = int(os.environ.get("DATAMILL_CRASH_SEED", "20260101"))
LEASE_SECONDS = "1.5"
READY_SECONDS = 60.0

#: The launcher imports the server once (the slow part of starting one: seconds on a busy machine),
#: then for each line on stdin forks a new server process and prints its pid; the server prints its
#: URL once it listens. Each server is a process of its own, killed with SIGKILL by the test.
LAUNCHER = """
import os, signal, sys
import alembic.command  # what opening a home (it migrates) would import in every server
from datamill.api.server import serve
from datamill.home import Home

signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # a killed server is reaped at once
for _line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        home = Home.open(sys.argv[1], demo=False)
        serve(home, host="127.0.0.1", port=0, on_ready=lambda url: print(url, flush=True), services=True)
        os._exit(0)
    print(pid, flush=True)
"""


class Servers:
    """Server processes started one at a time from a launcher subprocess; their logs go to ``log``."""

    def __init__(self, home: Path, log: Path) -> None:
        self.log = log
        env = {
            **os.environ,
            "DATAMILL_EXECUTOR": "inline",
            "DATAMILL_LEASE_SECONDS": LEASE_SECONDS,
            "DATAMILL_LOG_LEVEL": "warning",
            "DATAMILL_DEMO": "false",
        }
        with open(log, "ab") as err:
            self.launcher = subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, str(home)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
            )
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, name="launcher-stdout", daemon=True)
        self.reader.start()
        self.pid: int | None = None
        self.starts = 0

    def _read(self) -> None:
        assert self.launcher.stdout is not None
        for line in self.launcher.stdout:
            self.lines.put(line.decode().strip())
        self.lines.put("")  # the launcher ended

    def _line(self, what: str) -> str:
        try:
            line = self.lines.get(timeout=READY_SECONDS)
        except queue.Empty:
            line = ""
        if not line:
            raise AssertionError(f"no {what} from the server launcher:\n{self.tail()}")
        return line

    def start(self) -> None:
        """Start a server and wait until it listens (its services are running by then)."""
        assert self.pid is None and self.launcher.stdin is not None
        self.launcher.stdin.write(b"start\n")
        self.launcher.stdin.flush()
        self.pid = int(self._line("server pid"))
        self.starts += 1
        url = self._line("server URL")
        assert url.startswith("http://"), url

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the running server and wait until it is gone."""
        pid, self.pid = self.pid, None
        assert pid is not None
        os.kill(pid, sig)
        deadline = time.monotonic() + 20
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 20
            time.sleep(0.01)

    def close(self) -> None:
        if self.pid is not None:
            self.kill(signal.SIGTERM)
        if self.launcher.stdin is not None:
            self.launcher.stdin.close()
        try:
            self.launcher.wait(10)
        except subprocess.TimeoutExpired:
            self.launcher.kill()
            self.launcher.wait(10)
        self.reader.join(5)
        if self.launcher.stdout is not None:
            self.launcher.stdout.close()

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _out_state(home: Home) -> tuple[int, int]:
    """(items in Out, runs not ended)."""
    with home.db.read() as conn:
        out = conn.execute(sql_select(Folder.id).where(Folder.path == "Out")).scalar_one()
        made = conn.execute(sql_select(func.count()).select_from(Item).where(Item.folder_id == out)).scalar_one()
        busy = conn.execute(
            sql_select(func.count()).select_from(Run).where(Run.status.in_(["queued", "running"]))
        ).scalar_one()
    return int(made), int(busy)


@pytest.mark.slow
def test_every_item_is_processed_exactly_once_while_the_server_is_killed(tmp_path: Path) -> None:
    home_dir = tmp_path / "home"
    home = open_home(home_dir)
    server = Servers(home_dir, tmp_path / "server.log")
    try:
        admin = home.admin
        home.store.create_folder(admin, "Raw")
        home.store.create_folder(admin, "Out")
        flows = Dataflows(home.db)
        flows.create(admin, "crash", {"source": "Raw", "destination": "Out", "pipeline": ref("twostep")})
        flows.set_state(admin, "crash", "running")

        # Items land in KILLS + 1 batches. Before each batch the server starts; while the batch
        # lands, a timer kills it at a random moment (no kill during the last batch).
        rng = random.Random(SEED)
        size = -(-ITEMS // (KILLS + 1))
        for cycle in range(KILLS + 1):
            server.start()
            killer = None
            if cycle < KILLS:
                killer = threading.Timer(rng.uniform(0.05, 1.0), server.kill)
                killer.start()
            for i in range(cycle * size, min(ITEMS, (cycle + 1) * size)):
                home.store.put(admin, "Raw", f"item-{i:03d}.txt", f"item {i}\n".encode(), "text/plain")
                time.sleep(rng.uniform(0.0, 0.04))
            if killer is not None:
                killer.join()
        assert server.starts == KILLS + 1

        try:
            wait_for(
                "every run to end with both outputs of every item",
                lambda: _out_state(home) == (2 * ITEMS, 0),
                timeout=90,
                poll=0.1,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}: (outputs, runs not ended) = {_out_state(home)}\n{server.tail()}") from None
        server.close()

        # Every input has exactly one result per published output, each with exactly one version.
        with home.db.read() as conn:
            out_id = conn.execute(sql_select(Folder.id).where(Folder.path == "Out")).scalar_one()
            versions = dict(
                conn.execute(
                    sql_select(Item.name, func.count(Version.id))
                    .join(Version, Version.item_id == Item.id)
                    .where(Item.folder_id == out_id)
                    .group_by(Item.name)
                ).all()
            )
            tasks = conn.execute(sql_select(Task.id, Task.step, Task.item_version_id, Task.status)).all()
            run_status = Counter(conn.execute(sql_select(Run.status)).scalars())
        expected = {f"item-{i:03d}.{suffix}" for i in range(ITEMS) for suffix in ("upper.bin", "size.json")}
        assert set(versions) == expected
        assert set(versions.values()) == {1}
        for i in rng.sample(range(ITEMS), 20):
            _info, chunks = home.store.iter_bytes(admin, f"Out/item-{i:03d}.upper.bin")
            assert b"".join(chunks) == f"ITEM {i}\n".encode()

        # Each item was taken by exactly one run: one task per step and input, each ended once.
        assert run_status == {"succeeded": run_status.total()}, run_status
        per_input = Counter((t.step, t.item_version_id) for t in tasks)
        assert len(per_input) == 2 * ITEMS
        assert set(per_input.values()) == {1}, [k for k, n in per_input.items() if n > 1][:5]
        assert {t.status for t in tasks} == {"succeeded"}
        finished = finished_per_task(home)
        assert set(finished) == {t.id for t in tasks}
        assert set(finished.values()) == {1}, [tid for tid, n in finished.items() if n > 1][:5]
        check_fold(home)
    finally:
        server.close()
        home.close()
