"""The Dagster executor: the executors' contract where it applies (results, log lines, failures, timeouts,
cancellation, nothing left running, refusing other calls), with real Dagster jobs in worker subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from datamill.errors import StepFailed, TaskTimeout
from datamill.executors import DagsterCall, LogMessage, Message, PythonCall, get_executor
from datamill.pipeline.dagster_job import DagsterJob

pytest.importorskip("dagster", reason="Dagster is not installed: install the extra, uv sync --extra dagster")
pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1] / "dagster"


@pytest.fixture
def ex(make_harness: Callable[..., Any]) -> Any:
    return make_harness("dagster", kill_grace=0.5)


def request(tmp_path: Path, job_name: str, run_config: dict[str, Any] | None = None) -> DagsterCall:
    """A call running ``job_name`` of the test project over one item, in ``tmp_path``."""
    job = DagsterJob.parse("s", "wordproj.definitions:defs", job_name, None, PROJECT, None)
    item = tmp_path / "a.txt"
    item.write_text("the quick brown fox")
    body = job.request(
        step="s",
        task="t",
        run_config=run_config or {},
        output_dir=tmp_path / "out",
        scratch_dir=tmp_path,
        items=[{"path": str(item), "folder": "Raw", "name": "a.txt", "version": 1, "digest": "blake3:00", "size": 19}],
        upstream={},
        result_path=tmp_path / "result.json",
    )
    (tmp_path / "out").mkdir()
    path = tmp_path / "request.json"
    path.write_text(json.dumps(body))
    import sys

    return DagsterCall(str(path), sys.executable, cwd=str(tmp_path))


def lines(messages: list[Message]) -> list[str]:
    return [m.line for m in messages if isinstance(m, LogMessage)]


def workers_of(call: DagsterCall) -> list[int]:
    """Live processes whose command line names the call's request (its worker and anything it started)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if call.request.encode() in cmdline and state != "Z":
            found.append(int(entry))
    return found


def test_a_job_returns_its_run_and_outputs_and_logs_dagsters_lines(ex: Any, tmp_path: Path) -> None:
    call = request(tmp_path, "counts")
    result, messages = ex.call(call)
    assert result["success"] is True and result["job"] == "counts"
    assert result["outputs"] == ["summary.txt", "words.json"]
    assert (tmp_path / "out" / "words.json").read_text() == '{"a.txt": 4}\n'
    text = "\n".join(lines(messages))
    assert "STEP_SUCCESS" in text and result["run_id"] in text
    assert workers_of(call) == []


def test_a_failing_op_is_a_step_failure_naming_the_op(ex: Any, tmp_path: Path) -> None:
    with pytest.raises(StepFailed, match="op 'explode' failed: ValueError: row 7 has no value") as info:
        ex.call(request(tmp_path, "failing"))
    assert info.value.detail["op"] == "explode"
    assert info.value.detail["error_type"] == "ValueError"
    assert "raise ValueError" in info.value.detail["traceback"]


def test_a_job_that_is_not_there_fails_saying_so(ex: Any, tmp_path: Path) -> None:
    with pytest.raises(StepFailed, match="no job 'nope'"):
        ex.call(request(tmp_path, "nope"))


def test_a_timeout_kills_the_worker_and_the_executor_goes_on(ex: Any, tmp_path: Path) -> None:
    (tmp_path / "slow").mkdir()
    call = request(tmp_path / "slow", "sleepy")
    with pytest.raises(TaskTimeout, match=r"timeout of 1 s"):
        ex.call(call, timeout=1.0)
    assert workers_of(call) == []
    assert ex.call(request(tmp_path, "counts"))[0]["success"] is True


def test_cancelling_a_running_op_leaves_no_process(ex: Any, tmp_path: Path, procs: Any) -> None:
    call = request(tmp_path, "sleepy", {"ops": {"nap": {"config": {"seconds": 600}}}})

    async def scenario() -> int:
        napping = asyncio.Event()
        pids: list[int] = []

        def on_message(message: Message) -> None:
            if isinstance(message, LogMessage) and message.line.startswith("napping in "):
                pids.append(int(message.line.split()[-1]))
                napping.set()

        task = asyncio.ensure_future(ex.executor.run(call, on_message, 300))
        await napping.wait()  # the op runs
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pids[0]

    pid = ex.run(scenario())
    assert procs.eventually(lambda: not procs.alive(pid))
    assert workers_of(call) == []


def test_supports_dagster_calls_only(ex: Any) -> None:
    assert ex.executor.supports(DagsterCall("r.json", "python"))
    assert not ex.executor.supports(PythonCall(print))
    with pytest.raises(TypeError, match="cannot run a PythonCall"):
        ex.call(PythonCall(print))


def test_get_executor_knows_dagster() -> None:
    executor = get_executor("dagster", slots=2)
    assert executor.name == "dagster" and executor.capacity == 2
