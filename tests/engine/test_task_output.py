"""What a step prints and logs is in its task's log, for every executor (issue 8, item 15).

Before, ``print()`` and ``logging`` of a step went to the terminal of the process running it (the
server's, interleaved; or the CLI's stdout, so ``datamill run --json`` was not JSON).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.helpers import wait_for

from .engine_world import World
from .output_pipelines import ref

NOISY = "print {n}\nstderr: error {n}\nWARNING noisy: warned {n}\npartial {n}\n"


def by_stream(log: str) -> tuple[list[str], list[str]]:
    """A log's stdout lines and stderr lines, each in order (two pipes: their lines may interleave either way)."""
    lines = log.splitlines()
    return [x for x in lines if not x.startswith("stderr: ")], [x for x in lines if x.startswith("stderr: ")]


LOW_LEVEL = (["fd1 a.txt", "child a.txt"], ["stderr: fd2 a.txt"])


@pytest.mark.parametrize("executor", ["inline", "local"])
def test_print_stderr_and_logging_of_a_step_are_in_its_task_log(
    world: World, executor: str, capfd: pytest.CaptureFixture[str]
) -> None:
    world.put("a.txt", "a")
    world.put("b.txt", "b")
    run = world.run(ref("noisy_pipeline"), executor=executor)
    assert run["status"] == "succeeded", run
    for name in ("a.txt", "b.txt"):
        task = world.tasks(run["id"])[f"noisy[Raw/{name}]"]
        assert world.engine.log_text(world.admin, task.id) == NOISY.format(n=name)
    out, err = capfd.readouterr()
    assert "print a.txt" not in out + err and "warned" not in out + err  # nothing reached this process's output


def test_the_pool_captures_file_descriptors_and_child_processes(
    world: World, capfd: pytest.CaptureFixture[str]
) -> None:
    world.put("a.txt", "a")
    run = world.run(ref("low_level_pipeline"), executor="local", workers=1)
    assert run["status"] == "succeeded", run
    task = world.tasks(run["id"])["low_level[Raw/a.txt]"]
    assert by_stream(world.engine.log_text(world.admin, task.id)) == LOW_LEVEL
    # The same worker ran the other step first: each task has only its own lines.
    first = world.tasks(run["id"])["noisy[Raw/a.txt]"]
    assert world.engine.log_text(world.admin, first.id) == NOISY.format(n="a.txt")
    out, err = capfd.readouterr()
    assert "fd1" not in out + err and "child" not in out + err


def test_what_a_pool_call_left_buffered_or_without_a_newline_is_in_its_own_log(world: World) -> None:
    """A worker looks at its pipes' partial lines and Python's buffers only when a call wrote
    something: still, a line a call left without its newline, and one a thread of it printed into
    the buffer of stdout, are that call's, and the quiet call after it on the same worker has none."""
    world.put("a.txt", "a")
    world.put("b.txt", "b")
    run = world.run(ref("unflushed_pipeline"), executor="local", workers=1)
    assert run["status"] == "succeeded", run
    tasks = world.tasks(run["id"])
    for name in ("a.txt", "b.txt"):
        log = world.engine.log_text(world.admin, tasks[f"unflushed[Raw/{name}]"].id)
        assert by_stream(log) == ([f"thread {name}"], [f"stderr: fd2 tail {name}"])
        assert world.engine.log_text(world.admin, tasks[f"quiet[Raw/{name}]"].id) == ""


def test_inline_tasks_running_at_once_each_get_their_own_lines(world: World) -> None:
    world.put("a.txt", "a")
    world.put("b.txt", "b")
    run = world.run(ref("together_pipeline"), executor="inline")
    assert run["status"] == "succeeded", run
    for name in ("a.txt", "b.txt"):
        task = world.tasks(run["id"])[f"together[Raw/{name}]"]
        assert world.engine.log_text(world.admin, task.id) == "".join(
            f"{name} line {i}\nWARNING together: {name} record {i}\n" for i in range(3)
        )


@pytest.mark.parametrize("executor", ["inline", "local"])
def test_command_step_output_is_in_its_task_log(world: World, executor: str) -> None:
    world.put("a.txt", "a")
    run = world.run(ref("command_pipeline"), executor=executor)
    assert run["status"] == "succeeded", run
    (task,) = world.tasks(run["id"]).values()
    lines = world.engine.log_text(world.admin, task.id).splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["out", "err"]
    assert all(line.endswith("a.txt") for line in lines)


@pytest.mark.parametrize("executor", ["inline", "local"])
def test_following_a_log_shows_printed_lines_while_the_task_runs(world: World, executor: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    world.put("a.txt", "a")
    errors: list[BaseException] = []

    def go() -> None:
        try:
            world.run(ref("gated_pipeline"), executor=executor, params={"gate": str(gate)})
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    runs = wait_for("the run to be recorded", lambda: world.engine.list_runs(world.admin))
    (task,) = world.tasks(runs[0]["id"]).values()
    # Not a synchronisation: only so that a log that never shows the first line fails the test
    # (below) instead of hanging it.
    failsafe = threading.Timer(120, gate.touch)
    failsafe.start()
    seen = ""
    for chunk in world.engine.iter_log(world.admin, task.id, follow=True, poll=0.05):
        seen += chunk
        if "before the gate" in seen and not gate.exists():
            gate.touch()  # the task cannot end before this: the line came while it ran
            seen += "|"
    failsafe.cancel()
    thread.join(60)
    assert not errors and not thread.is_alive()
    assert seen == "before the gate a.txt\n|after the gate a.txt\n"


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["inline", "local"])
def test_datamill_run_json_prints_only_json(tmp_path: Path, executor: str) -> None:
    """The real command: steps print, log and write to fds 1 and 2, and stdout still parses as JSON."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAMILL_")}
    files = tmp_path / "files"
    files.mkdir()
    (files / "a.txt").write_text("a")

    def dm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "datamill.cli", "--home", str(home), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    for args in (("folder", "create", "Raw"), ("folder", "create", "Out"), ("put", str(files / "a.txt"), "Raw")):
        assert dm(*args).returncode == 0
    done = dm("run", ref("low_level_pipeline"), "--on", "Raw", "--to", "Out", "--executor", executor, "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)  # nothing else on stdout
    assert info["status"] == "succeeded"
    shown = json.loads(dm("runs", "show", str(info["id"]), "--json").stdout)
    logs = {t["step"]: dm("logs", str(t["id"])).stdout for t in shown["tasks"]}
    assert logs["noisy"] == NOISY.format(n="a.txt")
    if executor == "local":
        assert by_stream(logs["low_level"]) == LOW_LEVEL
    else:  # inline: file descriptors are the CLI's own, and it keeps stdout for results
        assert logs["low_level"] == ""
        assert "fd1 a.txt" in done.stderr and "child a.txt" in done.stderr
