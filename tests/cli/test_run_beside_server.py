"""``datamill run`` and ``datamill runs retry`` on a local home while ``datamill up`` serves the same home.

Issue 8, item 14: the server's scheduler takes some of the run's tasks, the CLI's in-process
scheduler runs out of tasks it can claim, and the CLI used to exit 1 ("did not succeed: it is
running") while the server finished the run. Whoever executes the tasks, the CLI must follow the
run to its end.

Both are real processes: ``datamill up`` and the ``datamill`` command, each with a local process
pool. Every task waits for a gate file the test creates, so the test decides when each task ends:
it lets every task end except one the server holds, then that one.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from datamill.db.models import Run, Task
from datamill.home import Home
from tests.helpers import Up, cli_env, datamill, open_home, wait_for

#: Servers, CLI processes or crashes in subprocesses: left out of the quick loop (-m "not slow").
pytestmark = pytest.mark.slow

#: One more than what the CLI's scheduler keeps in flight with one worker (max(16, 8 per worker)),
#: so the server's scheduler must hold at least one task.
ITEMS = 17

PIPELINE = '''
import os
import time
from pathlib import Path

import datamill

GATES = Path({gates!r})


@datamill.step
def held(item: datamill.InputFile) -> dict:
    """Waits until the test creates the gate named like the item; fails while a 'fail' file exists."""
    while not (GATES / item.name).exists():
        time.sleep(0.02)
    if (GATES / "fail").exists():
        raise ValueError("told to fail")
    return {{"item": item.name, "pid": os.getpid()}}


pipeline = datamill.Pipeline("held", [held])
'''


class Setup:
    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.home_dir = tmp_path / "home"
        self.gates = tmp_path / "gates"
        self.gates.mkdir()
        self.pipeline = tmp_path / "held_pipeline.py"
        self.pipeline.write_text(PIPELINE.format(gates=str(self.gates)))
        base = {"DATAMILL_DATABASE_URL": db_url, "DATAMILL_EXECUTOR": "local"}
        self.server_env = {**base, "DATAMILL_WORKERS": "2"}
        self.cli_env = cli_env(**base, DATAMILL_WORKERS="1")
        self.db_url = db_url
        self.server: Up | None = None
        self.home: Home | None = None

    def start_server(self) -> None:
        self.server = Up(self.home_dir, env=self.server_env)
        self.home = open_home(self.home_dir, self.db_url)
        store, admin = self.home.store, self.home.admin
        store.create_folder(admin, "In")
        store.create_folder(admin, "Out")
        for i in range(ITEMS):
            store.put(admin, "In", f"f{i:02d}.txt", f"{i}\n".encode())

    def cli(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            datamill("--home", str(self.home_dir), *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.cli_env,
        )

    def newest_run(self) -> int | None:
        assert self.home is not None
        with self.home.db.read() as conn:
            return conn.execute(select(Run.id).order_by(Run.id.desc()).limit(1)).scalar()

    def tasks(self, run_id: int) -> list[Any]:
        assert self.home is not None
        with self.home.db.read() as conn:
            return list(conn.execute(select(Task).where(Task.run_id == run_id).order_by(Task.id)).all())

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.home is not None:
            self.home.close()


def running(tmp_path: Path, db_url: str) -> Iterator[Setup]:
    s = Setup(tmp_path, db_url)
    try:
        s.start_server()
        yield s
    finally:
        s.close()


@pytest.fixture
def setup(tmp_path: Path, db_url: str) -> Iterator[Setup]:
    """A ``datamill up`` on a home on SQLite, then on PostgreSQL."""
    yield from running(tmp_path, db_url)


@pytest.fixture
def sqlite_setup(tmp_path: Path, sqlite_db_url: str) -> Iterator[Setup]:
    """A ``datamill up`` on a home on SQLite (retry takes the same path as run: one database is enough)."""
    yield from running(tmp_path, sqlite_db_url)


def follow_to_the_end(s: Setup, cli: subprocess.Popen[str], after: int | None) -> dict[str, Any]:
    """Let every task of the CLI's new run end except one the server holds, then that one; the CLI's JSON."""
    assert s.server is not None
    run_id = wait_for("the run", lambda: (r := s.newest_run()) is not None and r != after and r, timeout=120)
    wait_for(
        f"all {ITEMS} tasks of run {run_id} claimed",
        lambda: all(t.status == "running" for t in s.tasks(run_id)),
        timeout=120,
    )
    mine = f"{os.uname().nodename}:{s.server.proc.pid}:"
    tasks = s.tasks(run_id)
    by_server = [t for t in tasks if (t.lease_owner or "").startswith(mine)]
    # The server holds at least one task, so the CLI runs out of tasks it can claim and must wait
    # for the server's. (It may hold them all: a server that saw the first run's calls end fast
    # keeps more in flight, and may claim the retried run's tasks before the CLI's first pass.)
    assert by_server, [t.lease_owner for t in tasks]
    last = by_server[0]
    for t in tasks:
        if t.id != last.id:
            (s.gates / t.item_name.rsplit("/", 1)[1]).touch()
    wait_for(
        "every other task to end",
        lambda: all(t.status == "succeeded" for t in s.tasks(run_id) if t.id != last.id),
        timeout=120,
    )
    # The CLI's scheduler has nothing left to claim now; before the fix it gave up here.
    (s.gates / last.item_name.rsplit("/", 1)[1]).touch()
    out, err = cli.communicate(timeout=120)
    assert cli.returncode == 0, err
    info = json.loads(out)
    assert info["id"] == run_id
    return info


def test_run_on_a_local_home_waits_for_the_tasks_the_server_executes(setup: Setup) -> None:
    s = setup
    cli = s.cli("run", f"{s.pipeline}:pipeline", "--on", "In", "--to", "Out", "--json")
    info = follow_to_the_end(s, cli, None)
    assert info["status"] == "succeeded" and info["counts"] == {"succeeded": ITEMS}
    assert s.home is not None
    assert len(s.home.store.list_items(s.home.admin, "Out")) == ITEMS


def test_runs_retry_on_a_local_home_waits_for_the_tasks_the_server_executes(sqlite_setup: Setup) -> None:
    s = sqlite_setup
    (s.gates / "fail").touch()
    for i in range(ITEMS):
        (s.gates / f"f{i:02d}.txt").touch()
    failed = s.cli("run", f"{s.pipeline}:pipeline", "--on", "In", "--to", "Out", "--json")
    out, err = failed.communicate(timeout=120)
    assert failed.returncode == 1, err
    first = json.loads(out)
    assert first["status"] == "failed" and first["counts"] == {"failed": ITEMS}
    for gate in s.gates.iterdir():
        gate.unlink()
    cli = s.cli("runs", "retry", str(first["id"]), "--json")
    info = follow_to_the_end(s, cli, first["id"])
    assert info["status"] == "succeeded" and info["counts"] == {"succeeded": ITEMS}
