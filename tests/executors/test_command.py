"""The command executor: subprocesses in their own process group, output lines as log messages."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from datamill.errors import StepFailed, TaskTimeout
from datamill.executors import CommandCall, LogMessage, Message, PythonCall


@pytest.fixture
def ex(make_harness: Callable[..., Any]) -> Any:
    return make_harness("command", kill_grace=0.3)


def lines(messages: list[Message]) -> list[str]:
    return [m.line for m in messages if isinstance(m, LogMessage)]


def sh(script: str, **kwargs: Any) -> CommandCall:
    return CommandCall(["sh", "-c", script], **kwargs)


async def run_until_started(executor: Any, call: CommandCall, timeout: float | None = None) -> tuple[Any, list[str]]:
    """Start ``call`` as a task and return once it printed its first line (the pids it announces)."""
    messages: list[Message] = []
    started = asyncio.Event()

    def on_message(message: Message) -> None:
        messages.append(message)
        started.set()

    task = asyncio.ensure_future(executor.run(call, on_message, timeout))
    await started.wait()
    return task, lines(messages)


def test_exit_code_zero_is_the_result(ex: Any) -> None:
    assert ex.call(CommandCall(["true"])) == (0, [])


def test_output_lines_become_log_messages(ex: Any) -> None:
    result, messages = ex.call(sh("echo out1; echo err1 >&2; echo out2; printf 'no newline'"))
    assert result == 0
    got = lines(messages)
    assert [line for line in got if not line.startswith("stderr: ")] == ["out1", "out2", "no newline"]
    assert [line for line in got if line.startswith("stderr: ")] == ["stderr: err1"]
    assert all(m.time > 0 for m in messages)


def test_a_very_long_line_arrives_in_pieces(ex: Any) -> None:
    _, messages = ex.call(CommandCall([sys.executable, "-c", "print('x' * 3_000_000)"]))
    assert "".join(lines(messages)) == "x" * 3_000_000


def test_non_zero_exit_fails_the_step(ex: Any) -> None:
    with pytest.raises(StepFailed) as info:
        ex.call(sh("echo first problem >&2; echo the real problem >&2; exit 7"))
    error = info.value
    assert type(error) is StepFailed
    assert "exited with code 7" in error.message and "the real problem" in error.message
    assert error.detail["exit_code"] == 7
    assert error.detail["stderr"] == ["first problem", "the real problem"]


def test_missing_program(ex: Any) -> None:
    with pytest.raises(StepFailed, match=r"not found: 'no-such-program-here'.*PATH"):
        ex.call(CommandCall(["no-such-program-here", "--help"]))


def test_missing_working_directory(ex: Any, tmp_path: Path) -> None:
    with pytest.raises(StepFailed, match="working directory"):
        ex.call(CommandCall(["true"], cwd=str(tmp_path / "nope")))


def test_env_and_cwd_are_honoured(ex: Any, tmp_path: Path) -> None:
    _, messages = ex.call(
        sh('echo "$GREETING"; pwd; echo "${PATH:+path kept}"', cwd=str(tmp_path), env={"GREETING": "hi"})
    )
    greeting, cwd, path = lines(messages)
    assert greeting == "hi" and os.path.realpath(cwd) == os.path.realpath(tmp_path) and path == "path kept"


def test_timeout_kills_the_whole_group(ex: Any, procs: Any) -> None:
    async def scenario() -> list[str]:
        task, announced = await run_until_started(ex.executor, sh('sleep 100 & echo "$$ $!"; sleep 100'), timeout=0.5)
        with pytest.raises(TaskTimeout, match=r"timeout of 0\.5 s"):
            await task
        return announced

    leader, child = (int(p) for p in ex.run(scenario())[0].split())
    assert procs.eventually(lambda: procs.group_members(leader) == [])
    assert not procs.alive(child)


def test_a_command_ignoring_sigterm_is_killed(ex: Any, procs: Any) -> None:
    async def scenario() -> list[str]:
        task, announced = await run_until_started(ex.executor, sh('trap "" TERM; echo $$; sleep 100'), timeout=0.3)
        with pytest.raises(TaskTimeout):
            await task
        return announced

    leader = int(ex.run(scenario())[0])
    assert procs.eventually(lambda: procs.group_members(leader) == [])


def test_cancel_kills_the_whole_group(ex: Any, procs: Any) -> None:
    async def scenario() -> list[str]:
        task, announced = await run_until_started(ex.executor, sh('sleep 100 & echo "$$ $!"; sleep 100'))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return announced

    leader, child = (int(p) for p in ex.run(scenario())[0].split())
    assert procs.eventually(lambda: procs.group_members(leader) == [])
    assert not procs.alive(child)


def test_processes_left_behind_are_killed_when_the_command_ends(ex: Any, procs: Any) -> None:
    # One child keeps the output pipes open (so reading waits kill_grace), one closes them.
    _, messages = ex.call(sh("sleep 100 & echo $!; sleep 100 >/dev/null 2>&1 & echo $!; echo $$"))
    first, second, leader = (int(line) for line in lines(messages))
    assert procs.eventually(lambda: procs.group_members(leader) == [])
    assert not procs.alive(first) and not procs.alive(second)


def test_supports_commands_only(ex: Any) -> None:
    assert ex.executor.supports(CommandCall(["true"]))
    assert not ex.executor.supports(PythonCall(print))
    with pytest.raises(TypeError):
        ex.run(ex.executor.run(PythonCall(print), lines))


def test_merged_stderr_keeps_the_order_and_no_prefix(ex: Any) -> None:
    # How command steps log: one stream, as a terminal shows it; a failure's last lines are of both.
    script = "echo out1; echo err1 >&2; echo out2; echo err2 >&2; exit 4"
    with pytest.raises(StepFailed) as info:
        ex.call(sh(script, merge_stderr=True))
    assert info.value.detail["stderr"] == ["out1", "err1", "out2", "err2"]
    assert info.value.detail["reason"] == "exited" and info.value.detail["exit_code"] == 4
    _, messages = ex.call(sh("echo a; echo b >&2; echo c", merge_stderr=True))
    assert lines(messages) == ["a", "b", "c"]


def test_slots_limit_how_many_commands_run_at_once(make_harness: Callable[..., Any], tmp_path: Path) -> None:
    h = make_harness("command", slots=1)
    assert h.executor.capacity == 1
    log = tmp_path / "log"
    # Each command appends its start and end; with one slot they never overlap.
    call = sh(f"echo start >> {log}; sleep 0.05; echo end >> {log}")

    async def both() -> None:
        await asyncio.gather(*(h.executor.run(call, lambda m: None) for _ in range(3)))

    h.run(both())
    assert log.read_text().split() == ["start", "end"] * 3
