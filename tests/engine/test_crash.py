"""A scheduler killed with SIGKILL in the middle of a run, then another one started: every task ends
exactly once, and no output is lost or published twice.

The killed scheduler (``crash_child.py``, a separate process) holds its tasks under 1 s leases. A new
scheduler started right away waits for them to expire, requeues those tasks (``task.reclaimed``) and
finishes the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from datamill.engine import runs
from tests.helpers import open_home, wait_for

from .engine_world import World
from .pipelines import executions

#: Servers, CLI processes or crashes in subprocesses: left out of the quick loop (-m "not slow").
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ITEMS = [f"item{i:02}" for i in range(8)]


def test_scheduler_killed_mid_run_then_restarted(tmp_path: Path, db_url: str) -> None:
    # Starting the child takes seconds (imports, fork server): one restart executor per database.
    restart = "local" if db_url.startswith("sqlite") else "inline"
    home_dir, marks = tmp_path / "home", tmp_path / "marks"
    world = World(open_home(home_dir, db_url))
    for name in ITEMS:
        world.put(f"{name}.txt", f"sleep 0.2 {name}")
    stderr = tmp_path / "child.err"
    with open(stderr, "w") as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.engine.crash_child", str(home_dir), db_url, str(marks)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
        )
    try:
        assert child.stdout is not None
        run_id = int(child.stdout.readline() or 0)
        assert run_id, stderr.read_text()

        def some_done_and_some_running() -> bool:
            assert child.poll() is None, f"the child ended early:\n{stderr.read_text()}"
            statuses = world.status_counts(run_id)
            return statuses["succeeded"] >= 2 and statuses["running"] >= 1

        # The bound only limits how long a failing test takes: a loaded machine starts the child's
        # pool slowly (28 s was seen at load 27), so it is generous.
        wait_for("the child to finish a few tasks", some_done_and_some_running, timeout=180)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()  # type: ignore[union-attr]

    before = world.status_counts(run_id)
    assert before["running"] >= 1 and before["queued"] >= 1, before
    # Restarted at once: the new scheduler waits for the dead one's leases to expire, then takes over.
    world.drive(executor=restart, lease_seconds=1.0)

    run = world.engine.get_run(world.admin, run_id)
    assert run["status"] == "succeeded", run
    tasks = world.tasks(run_id)
    assert len(tasks) == 2 * len(ITEMS)
    finished = world.per_task("task.finished", run_id)
    assert finished == {t.id: 1 for t in tasks.values()}  # every task ended exactly once
    assert world.per_task("task.reclaimed", run_id).total() == before["running"]
    # Each output exactly once, with one version, made by the task that finally ended.
    out = world.out()
    assert sorted(out) == sorted(f"{n}.{s}" for n in ITEMS for s in ("parse.txt", "count.json"))
    for name in out:
        (version,) = world.versions(name)
        stem, step = name.split(".")[:2]
        assert version.task_id == tasks[f"{step}[Raw/{stem}.txt]"].id
    assert world.read("item03.parse.txt") == b"sleep 0.2 item03"
    assert executions(marks) >= len(ITEMS)  # tasks running when it was killed may have run twice
    world.check_fold()
    with world.home.db.read() as conn:
        assert runs.fold(world.home.events.read(0, 10**9)) == runs.state_from_tables(conn)
    world.home.close()
