"""Failures through the engine: raising steps, crashing workers, timeouts, retries, cancellation, retry of a run.

The input item's text says what its task does (see ``pipelines.py``). Fail-fast is off: one failing
item never stops the others. Tests that need a process to kill use the local executor.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from datamill.errors import InvalidInput
from tests.helpers import wait_for

from .engine_world import World
from .pipelines import executions, pids, ref

BASIC = ref("basic")
PERITEM = ref("peritem")


def run_in_thread(world: World, pipeline: str, **options: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``world.run`` in a thread; the dict gets ``run`` (or ``error``) when it returns."""
    out: dict[str, Any] = {}

    def go() -> None:
        try:
            out["run"] = world.run(pipeline, **options)
        except BaseException as exc:  # reported by the test, not as an unhandled thread exception
            out["error"] = exc

    thread = threading.Thread(target=go, name="engine-run", daemon=True)
    thread.start()
    return thread, out


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("executor", ["inline", "local"])
def test_raising_step_fails_its_task_and_the_others_succeed(db_world: World, executor: str) -> None:
    db_world.put("a.txt", "fine words")
    db_world.put("b.txt", "raise broken input")
    db_world.put("c.txt", "more fine words")
    run = db_world.run(BASIC, executor=executor)
    assert run["status"] == "failed"
    tasks = db_world.tasks(run["id"])
    assert {pid: str(t.status) for pid, t in tasks.items()} == {
        "parse[Raw/a.txt]": "succeeded",
        "parse[Raw/b.txt]": "failed",
        "parse[Raw/c.txt]": "succeeded",
        "count[Raw/a.txt]": "succeeded",
        "count[Raw/b.txt]": "failed",
        "count[Raw/c.txt]": "succeeded",
        "total": "failed",
    }
    bad = tasks["parse[Raw/b.txt]"]
    assert bad.error == "ValueError: cannot process b.txt: broken input"
    assert bad.traceback is not None
    assert "Traceback (most recent call last)" in bad.traceback
    assert "in behave" in bad.traceback and "ValueError: cannot process b.txt" in bad.traceback
    assert bad.outputs == [] and bad.attempts == 1
    assert "parse[Raw/b.txt] failed" in (tasks["count[Raw/b.txt]"].error or "")
    assert "ValueError: cannot process b.txt" in db_world.engine.log_text(db_world.admin, bad.id)
    # Outputs of the failed task and everything downstream of it are not published.
    assert sorted(db_world.out()) == ["a.count.json", "a.parse.txt", "c.count.json", "c.parse.txt"]
    db_world.check_fold()


def test_step_killing_its_worker_fails_only_that_task(world: World) -> None:
    world.put("a.txt", "exit 3")
    for name in "bcd":
        world.put(f"{name}.txt", f"item {name}")
    run = world.run(PERITEM, executor="local", workers=1)
    assert run["status"] == "failed"
    tasks = world.tasks(run["id"])
    crashed = tasks["parse[Raw/a.txt]"]
    assert crashed.status == "failed"
    assert crashed.error is not None
    assert "worker process" in crashed.error and "exited with code 3" in crashed.error
    # The pool replaced the worker: every other item went through.
    assert {pid: str(t.status) for pid, t in tasks.items() if "a.txt" not in pid} == dict.fromkeys(
        [f"{s}[Raw/{n}.txt]" for s in ("parse", "count") for n in "bcd"], "succeeded"
    )
    assert tasks["count[Raw/a.txt]"].status == "failed"
    assert not any(name.startswith("a.") for name in world.out())
    world.check_fold()


@pytest.mark.parametrize("executor", ["inline", "local"])
def test_step_hanging_past_its_timeout_fails_with_a_timeout(world: World, executor: str) -> None:
    # The inline executor cannot kill a thread: keep the abandoned sleep short.
    world.put("a.txt", "sleep 30" if executor == "local" else "sleep 3")
    world.put("b.txt", "quick")
    started = time.monotonic()
    run = world.run(ref("timed"), executor=executor)
    assert time.monotonic() - started < 10
    assert run["status"] == "failed"
    tasks = world.tasks(run["id"])
    hung = tasks["parse[Raw/a.txt]"]
    assert hung.status == "failed"
    assert hung.error is not None and "ran past its timeout of 2 s" in hung.error
    assert tasks["parse[Raw/b.txt]"].status == "succeeded"
    assert sorted(world.out()) == ["b.parse.txt"]
    world.check_fold()


@pytest.mark.parametrize("executor", ["inline", "local"])
def test_retries_with_backoff_until_an_attempt_succeeds(world: World, tmp_path: Path, executor: str) -> None:
    marks = tmp_path / "marks"
    world.put("a.txt", "flaky 2")  # fails twice; retries=2 gives it three attempts
    world.put("b.txt", "flaky 5")  # fails more often than it may retry
    world.put("c.txt", "steady")
    run = world.run(ref("retrying"), executor=executor, params={"marks": str(marks)})
    assert run["status"] == "failed"
    tasks = world.tasks(run["id"])
    a, b, c = (tasks[f"parse[Raw/{n}.txt]"] for n in "abc")
    assert (a.status, a.attempts, a.error) == ("succeeded", 3, None)
    assert (b.status, b.attempts, b.error) == ("failed", 3, "RuntimeError: flaky failure 3 of 5")
    assert (c.status, c.attempts) == ("succeeded", 1)
    assert (executions(marks, "a"), executions(marks, "b"), executions(marks, "c")) == (3, 3, 1)
    assert tasks["count[Raw/a.txt]"].status == "succeeded"
    assert world.per_task("task.retrying", run["id"])[a.id] == 2
    started = [e for e in world.events("task.started", run["id"]) if e.task_id == a.id]
    assert [e.data["attempt"] for e in started] == [1, 2, 3]
    # Backoff: 0.05 s before the first retry, then doubling.
    gaps = [later.ts - earlier.ts for earlier, later in itertools.pairwise(started)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1, gaps
    world.check_fold()


def test_cancel_mid_run_kills_the_running_task_and_cancels_the_rest(world: World, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    world.put("a.txt", "sleep 60")
    world.put("b.txt", "sleep 60")
    world.put("c.txt", "quick")
    world.put("d.txt", "quick")
    thread, out = run_in_thread(world, ref("partial"), executor="local", workers=1, params={"marks": str(marks)})
    wait_for("a task to start executing", lambda: executions(marks) > 0)
    (run_id,) = [r["id"] for r in world.engine.list_runs(world.admin)]
    (worker,) = pids(marks)
    started = time.monotonic()
    assert world.engine.cancel(world.admin, run_id) is True
    thread.join(30)
    assert not thread.is_alive() and "error" not in out, out
    assert time.monotonic() - started < 15
    run = out["run"]
    assert run["status"] == "cancelled" and run["cancel_requested"] is True
    assert world.status_counts(run_id) == {"cancelled": 8}
    assert executions(marks) == 1  # the second sleeper never got the (only) worker
    wait_for("the worker running the task to be killed", lambda: not alive(worker), timeout=10)
    assert world.out() == {}  # not even the output written before the sleep
    assert not [p for p in (world.home.path / "work").rglob("*") if p.is_file()]
    assert world.engine.cancel(world.admin, run_id) is False  # already over
    world.check_fold()


def test_cancel_before_the_run_starts_and_retry_it(db_world: World) -> None:
    db_world.put("a.txt", "one two")
    db_world.put("b.txt", "three")
    run_id = db_world.submit(BASIC)
    assert db_world.engine.cancel(db_world.admin, run_id) is True
    run = db_world.engine.get_run(db_world.admin, run_id)
    assert run["status"] == "cancelled"
    assert db_world.status_counts(run_id) == {"cancelled": 5}
    again = db_world.engine.retry(db_world.admin, run_id)
    run = db_world.run_submitted(again)
    assert (run["status"], run["parent_run_id"]) == ("succeeded", run_id)
    assert db_world.status_counts(again) == {"succeeded": 5}
    db_world.check_fold()


def test_retry_of_a_failed_run_reruns_only_the_failed_tasks(db_world: World, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    db_world.put("a.txt", "some words")
    db_world.put("b.txt", "flaky 1")  # fails once, then works: the "fixed" step
    db_world.put("c.txt", "other words here")
    first = db_world.run(BASIC, params={"marks": str(marks)})
    assert first["status"] == "failed"
    assert db_world.statuses(first["id"])["parse[Raw/b.txt]"] == "failed"

    retry_id = db_world.engine.retry(db_world.admin, first["id"])
    retried = db_world.run_submitted(retry_id)
    assert (retried["status"], retried["parent_run_id"]) == ("succeeded", first["id"])
    assert retried["inputs"] == first["inputs"] and retried["params"] == first["params"]
    assert db_world.statuses(retry_id) == {
        "parse[Raw/a.txt]": "cached",
        "parse[Raw/b.txt]": "succeeded",
        "parse[Raw/c.txt]": "cached",
        "count[Raw/a.txt]": "cached",
        "count[Raw/b.txt]": "succeeded",
        "count[Raw/c.txt]": "cached",
        "total": "succeeded",
    }
    assert (executions(marks, "a"), executions(marks, "b"), executions(marks, "c")) == (1, 2, 1)
    assert "total.json" in db_world.out() and "b.count.json" in db_world.out()
    with pytest.raises(InvalidInput, match="only failed or cancelled runs can be retried"):
        db_world.engine.retry(db_world.admin, retry_id)
    db_world.check_fold()


def test_the_command_executor_is_refused_as_a_runs_executor(world: World) -> None:
    # It runs commands only (every task of a Python step failed with it); command steps run on it
    # whatever the run's executor, so a run names where its Python steps run.
    world.put("a.csv", "x\n1\n")
    with pytest.raises(InvalidInput, match="executor 'command' runs command steps only"):
        world.run(PERITEM, executor="command")
    with pytest.raises(InvalidInput, match="choose where the run's Python steps run: 'inline' or 'local'"):
        world.submit(PERITEM, executor="command")
    assert world.engine.list_runs(world.admin) == []
