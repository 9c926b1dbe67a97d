"""A task's end as the scheduler computes it off the database, before it is recorded in a batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datamill.engine.planner import PlannedTask
from datamill.engine.tasks import STEP_FAILURE, OutputRecord, TaskRow, TaskStatus
from datamill.errors import (
    BlobNotFound,
    Cancelled,
    DatamillError,
    InvalidPipeline,
    StepFailed,
    TaskTimeout,
    WorkerCrashed,
)

#: Longest error message kept on a task row.
MAX_ERROR = 2000

#: The status a driver gives, in its own view, to a task another scheduler holds (never stored).
HELD_ELSEWHERE = "elsewhere"

#: The status a driver gives, in its own view, to a task whose claim is being committed (never
#: stored): it is not claimed again, and it starts only once the claim is committed.
CLAIMING = "claiming"


@dataclass
class Done:
    """A task's end, computed off the database and recorded later in a batch."""

    task: TaskRow
    planned: PlannedTask
    status: TaskStatus
    outputs: list[OutputRecord] = field(default_factory=list)
    publish: list[tuple[str, str, str]] = field(default_factory=list)  # (output name, published name, ctype)
    error: str | None = None
    traceback: str | None = None
    cached_from: int | None = None
    key: str | None = None
    retry_at: float | None = None
    log_path: Path | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    #: the attempt's directory (``WorkDirs.attempt_base``), if it may have made one: removed once its
    #: end is recorded, if it is there (looked for once per batch, not once per task)
    work_base: str | None = None
    #: why it failed (see ``tasks.failure``); ``step`` makes the key fail earlier for later runs
    failure: str | None = None
    note: str | None = None
    #: the published name being recorded, named if recording it fails
    publishing: str | None = None
    #: an output blob was written without a sync: the recorder syncs the blob store before recording it
    unsynced: bool = False


def failure_kind(exc: DatamillError) -> str:
    """``tasks.failure`` for an error from running a step.

    Only ``step`` (the step raised or its command exited non-zero) says that the same key fails
    again; a timeout, a crashed worker or a cancellation may well pass another time.
    """
    if isinstance(exc, TaskTimeout):
        return "timeout"
    if isinstance(exc, WorkerCrashed):
        return "crashed"
    if isinstance(exc, Cancelled):
        return "cancelled"
    if isinstance(exc, InvalidPipeline):
        return "pipeline"
    if type(exc) is not StepFailed:
        return "error"
    # An input's blob missing from the store (found by the step that read it, in its worker) is
    # not the key's failure: it passes once the blob is restored.
    return "error" if exc.detail.get("error_type") == BlobNotFound.__name__ else STEP_FAILURE
