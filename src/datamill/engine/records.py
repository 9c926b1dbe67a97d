"""What the engine answers, as records: runs, tasks, plans, explanations and registered pipelines.

Each is a frozen, slotted dataclass whose :meth:`~datamill.record.Record.to_dict` is the JSON the
API answers and ``--json`` prints (the shapes :func:`datamill.engine.runs.run_dict`,
``TaskRow.to_dict`` and ``Plan.to_dict`` make); the remote client rebuilds them with ``from_dict``.
Free-form parts (a run's ``params`` and ``inputs``, a plan's tasks, key parts) stay dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from datamill.record import Record


@dataclass(frozen=True, slots=True)
class RunInfo(Record):
    """A run; ``counts`` (status -> n) and ``steps`` (step -> status -> n) when read one at a time."""

    _optional = frozenset({"counts", "steps"})

    id: int
    pipeline_ref: str
    pipeline: str
    status: str
    requested_at: float
    requested_by: int | None
    reason: str
    force: bool
    params: dict[str, Any]
    source_folder: str | None
    dest_folder: str | None
    dataflow_id: int | None
    dataflow_version: int | None
    executor: str | None
    parent_run_id: int | None
    started_at: float | None
    finished_at: float | None
    cancel_requested: bool
    error: str | None
    skip_failed: bool
    inputs: list[Any]
    counts: dict[str, int] | None = None
    steps: dict[str, dict[str, int]] | None = None

    @property
    def finished(self) -> bool:
        """Whether the run has ended (succeeded, failed or cancelled)."""
        from datamill.engine.runs import FINISHED_RUN

        return self.status in FINISHED_RUN


@dataclass(frozen=True, slots=True)
class TaskInfo(Record):
    """A task of a run, with its outputs (``{"name", "digest", "size", "content_type", "codec", "version_id"}``)."""

    id: int
    run_id: int
    planned_id: str
    step: str
    step_code: str
    key: str | None
    status: str
    attempts: int
    max_attempts: int
    progress: float
    message: str
    item_version_id: int | None
    item_name: str | None
    deps: list[str]
    params: dict[str, Any]
    queued_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    traceback: str | None
    log_digest: str | None
    cached_from: int | None
    executor: str | None
    not_before: float | None = None
    failure: str | None = None
    note: str | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PlanInfo(Record):
    """A dry run: the inputs, task counts by decision, the tasks (each with its ``decision``) and edges."""

    pipeline: str
    inputs: list[str]
    counts: dict[str, int]
    tasks: list[dict[str, Any]]
    edges: list[list[str]]


@dataclass(frozen=True, slots=True)
class WhyInfo(Record):
    """Why a task ran or was cached: its key parts and, when it ran, the nearest earlier task's difference."""

    _optional = frozenset({"nearest", "image"})

    task: int
    run: int
    step: str
    status: str
    key: str | None
    parts: dict[str, Any]
    explanation: str
    nearest: dict[str, Any] | None = None
    #: a container step's image as named (its digest is ``parts["image"]``)
    image: str | None = None


@dataclass(frozen=True, slots=True)
class PipelineInfo(Record):
    """A registered pipeline; ``ref`` and who registered it only for site admins, ``steps`` once loaded."""

    _optional = frozenset({"package", "ref", "registered_by", "registered_at", "steps", "error"})

    name: str
    description: str
    origin: str
    package: str | None = None
    ref: str | None = None
    registered_by: str | None = None
    registered_at: float | None = None
    steps: list[str] | None = None
    error: str | None = None
