"""One attempt at a Dagster step: its request written, its job run on the Dagster executor, its outputs read.

Dagster steps run on the Dagster executor whatever the run's executor is, like command steps on
the command executor: the job runs in a worker subprocess (``python -m datamill.dagster.runner``)
in a process group of its own, so a timeout or a cancellation stops it and all it started.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from datamill.errors import InvalidPipeline, StepFailed, TaskTimeout
from datamill.executors.base import DagsterCall, Executor, OnMessage
from datamill.pipeline.runner import ItemInput, StepCall, StepResult, collect_outputs, prepare_dirs, resolve_step
from datamill.pipeline.step import Step

__all__ = ["dagster_request", "run_dagster_step"]

#: The Python that runs Dagster workers: this one (``datamill[dagster]`` installed) unless set.
PYTHON_ENV = "DATAMILL_DAGSTER_PYTHON"


def _item(i: ItemInput) -> dict[str, Any]:
    r = i.ref
    return {
        "path": str(i.path) if i.path is not None else None,
        "folder": r.folder,
        "name": r.name,
        "version": r.version,
        "digest": r.digest,
        "size": r.size,
        "content_type": r.content_type,
    }


def dagster_request(call: StepCall, step: Step) -> dict[str, Any]:
    """The request the worker reads for ``call`` of the Dagster step ``step`` (see ``DagsterJob.request``)."""
    if step.dagster is None:
        raise InvalidPipeline(f"step '{step.name}' is not a Dagster step", step=step.name)
    items = [call.item] if call.item is not None else list(call.items)
    params = {**step.params, **dict(call.params)}
    upstream = {arg: [str(o.path) for outs in up.outputs for o in outs] for arg, up in call.upstream.items()}
    return step.dagster.request(
        step=step.name,
        task=call.task_id,
        run_config=params.get("config") or {},
        output_dir=call.output_dir,
        scratch_dir=call.scratch_dir,
        items=[_item(i) for i in items],
        upstream=upstream,
        result_path=call.scratch_dir / "dagster-result.json",
    )


async def run_dagster_step(
    executor: Executor,
    call: StepCall,
    on_message: OnMessage,
    timeout: float | None = None,
    step: Step | None = None,
) -> StepResult:
    """Run a Dagster step on ``executor`` (the Dagster executor); returns what the job wrote to ``call.output_dir``.

    Raises ``StepFailed`` (an op failed: the message names it and carries its error; the job could
    not be loaded) and ``TaskTimeout``, naming the step.
    """
    started = time.perf_counter()
    step = step or resolve_step(call)
    prepare_dirs(call)
    request = call.scratch_dir / "dagster-request.json"
    request.write_text(json.dumps(dagster_request(call, step)), encoding="utf-8")
    python = os.environ.get(PYTHON_ENV) or sys.executable
    # Unbuffered: the task log shows each line as the job writes it.
    env = {"PYTHONUNBUFFERED": "1"}
    limit = step.timeout if timeout is None else timeout
    try:
        await executor.run(DagsterCall(str(request), python, cwd=str(call.scratch_dir), env=env), on_message, limit)
    except TaskTimeout:
        raise TaskTimeout(
            f"step '{step.name}': the Dagster job ran past its timeout of {limit:g} s and was stopped with the "
            "processes it started; raise the step's timeout or make the job faster",
            step=step.name,
        ) from None
    except StepFailed as exc:
        detail = exc.detail if isinstance(exc.detail, dict) else {}
        raise type(exc)(f"step '{step.name}': {exc.message}", step=step.name, **detail) from None
    return StepResult(tuple(collect_outputs(call.output_dir)), time.perf_counter() - started)
