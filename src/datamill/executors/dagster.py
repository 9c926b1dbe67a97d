"""The Dagster executor: a :class:`DagsterCall` runs a Dagster job in a worker subprocess.

The worker is ``python -m datamill.dagster.runner REQUEST`` (see :mod:`datamill.dagster.runner`),
started like a command (:class:`~datamill.executors.command.CommandExecutor`): in a process group
of its own, so a timeout or a cancellation stops it with every process it started, and nothing of
it outlives the call. What it writes to stdout and stderr (Dagster logs to stderr) becomes the
task's log, line by line as written. It writes its outcome to the request's ``result`` file:

* success: the result (``{"success": true, "run_id": ..., "job": ..., "outputs": [...]}``) is returned;
* a failed op: ``StepFailed`` whose message names the op and carries its error
  (``detail``: ``op``, ``error_type``, ``run_id``, ``traceback``);
* a job that could not be loaded or started: ``StepFailed`` saying why;
* a worker killed by a signal with no outcome written: ``WorkerCrashed``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datamill.errors import StepFailed, TaskTimeout, WorkerCrashed

from .base import Call, CommandCall, DagsterCall, Executor, OnMessage
from .command import CommandExecutor

__all__ = ["RUNNER_MODULE", "DagsterCall", "DagsterExecutor"]

#: The module the worker runs (``python -m``).
RUNNER_MODULE = "datamill.dagster.runner"


class DagsterExecutor(Executor):
    """Runs :class:`DagsterCall` s in worker subprocesses; see the module docstring.

    ``kill_grace``: seconds between SIGTERM and SIGKILL when stopping a worker. ``slots``: how
    many jobs run at once (more wait inside :meth:`run`, their timeout not yet counting).
    """

    name = "dagster"

    def __init__(
        self, kill_grace: float = 2.0, clock: Callable[[], float] = time.time, slots: int | None = None
    ) -> None:
        self._commands = CommandExecutor(kill_grace=kill_grace, clock=clock, slots=slots)

    @property
    def capacity(self) -> int | None:
        """``slots``: how many jobs run at once."""
        return self._commands.capacity

    def supports(self, call: Call) -> bool:
        """Only Dagster calls."""
        return isinstance(call, DagsterCall)

    async def close(self) -> None:
        """Nothing stays running between calls: each worker ends with its call."""
        await self._commands.close()

    async def run(self, call: Call, on_message: OnMessage, timeout: float | None = None) -> dict[str, Any]:
        """Run the job; return the worker's result, or raise (see :meth:`Executor.run` and the module docstring)."""
        self._check(call)
        assert isinstance(call, DagsterCall)
        result_path = _result_path(call.request)
        result_path.unlink(missing_ok=True)
        command = CommandCall(
            [call.python, "-m", RUNNER_MODULE, call.request], cwd=call.cwd, env=call.env, merge_stderr=True
        )
        try:
            await self._commands.run(command, on_message, timeout)
        except TaskTimeout:
            raise TaskTimeout(
                f"The Dagster job ran past its timeout of {timeout:g} s; its worker and every process it "
                "started were killed. Raise the step's timeout or make the job faster.",
                timeout=timeout,
            ) from None
        except StepFailed as exc:
            raise _failure(exc, _read(result_path)) from None
        outcome = _read(result_path)
        if outcome is None or not outcome.get("success"):
            raise StepFailed(
                "The Dagster worker exited without a result. See the task's log for its output.", reason="no_result"
            )
        return outcome


def _result_path(request: str) -> Path:
    """Where the worker writes its outcome, as the request says."""
    try:
        data = json.loads(Path(request).read_text(encoding="utf-8"))
        return Path(data["result"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StepFailed(
            f"The Dagster request {request!r} cannot be read ({type(exc).__name__}); the engine writes it "
            "before the call.",
            reason="bad_request",
        ) from None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _failure(exc: StepFailed, outcome: dict[str, Any] | None) -> StepFailed | WorkerCrashed:
    """The error of a worker that exited non-zero: the failing op's, the loader's, or a crash."""
    detail = exc.detail if isinstance(exc.detail, dict) else {}
    error = (outcome or {}).get("error")
    if isinstance(error, dict):
        op = error.get("op")
        what = f"op '{op}' failed" if op else "the Dagster job failed"
        kind = error.get("type") or "Error"
        message = str(error.get("message") or "").strip()
        return StepFailed(
            f"{what}: {kind}: {message}" if message else f"{what}: {kind}",
            op=op,
            error_type=kind,
            run_id=(outcome or {}).get("run_id"),
            traceback=error.get("traceback") or "",
            reason="op_failed" if op else "job_failed",
        )
    code = detail.get("exit_code")
    if isinstance(code, int) and code < 0:
        return WorkerCrashed(
            f"The Dagster worker was killed (exit status {code}) before it wrote a result. "
            "See the task's log for its last output.",
            exit_code=code,
        )
    return StepFailed(
        f"The Dagster worker failed: {exc.message}", exit_code=code, stderr=detail.get("stderr"), reason="worker"
    )
