"""What the dataflows service answers, as records (see :mod:`datamill.record`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from datamill.record import Record, build

__all__ = [
    "BatchCell",
    "BatchCounts",
    "BatchInfo",
    "BatchRow",
    "BatchStatus",
    "DataflowInfo",
    "DataflowVersionInfo",
    "RecentRun",
    "VersionRun",
]


@dataclass(frozen=True, slots=True)
class DataflowInfo(Record):
    """A dataflow as callers see it.

    ``recent_runs`` is filled when one dataflow is read (:class:`RecentRun`), ``cancelled`` (run
    ids) when it is stopped with ``cancel``; otherwise both are absent from :meth:`to_dict`.
    """

    _optional = frozenset({"recent_runs", "cancelled", "directory", "watch", "stream", "status"})

    id: int
    name: str
    kind: str
    state: str
    state_reason: str | None
    version: int
    owner: str | None
    description: str
    source: str
    destination: str
    topic: str | None
    pipeline: str
    params: dict[str, Any]
    trigger: str
    webhooks: list[str]
    batch_window_ms: int | None
    cursor: int
    created_at: float
    updated_at: float
    next_fire_times: list[float] = field(default_factory=list)
    #: the container image whose default command runs on each item, when that is the
    #: implementation (``pipeline`` is then empty)
    image: str | None = None
    #: a stream dataflow's broker fields (the SASL password masked) and partial-file timeout
    broker: dict[str, Any] = field(default_factory=dict)
    partial_timeout_s: float | None = None
    #: a workflow dataflow: items landed in the source's subfolders fire it too, and each output lands
    #: in the destination's subfolder mirroring its item's
    recursive: bool = False
    #: a stream dataflow's live status (counters, lag, files in progress, last error), when one is read
    stream: dict[str, Any] | None = None
    recent_runs: list[RecentRun] | None = None
    cancelled: list[int] | None = None
    #: a directory dataflow's server directory (site admins see it; others a placeholder)
    directory: str | None = None
    #: a directory dataflow's rules: include, exclude, stable_seconds, poll, poll_interval, existing
    watch: dict[str, Any] | None = None
    #: whether the caller may change this dataflow (its owner, a site admin or an admin of its destination)
    may_change: bool = False
    #: a directory dataflow's live status as its server last reported it (files seen, landed, skipped,
    #: bytes landed, files waiting, last landed, last error; ``owner``, ``running``, ``reported_at``)
    status: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataflowInfo:
        """As :meth:`Record.from_dict`, with ``recent_runs`` as records."""
        data = dict(data)
        if data.get("recent_runs") is not None:
            data["recent_runs"] = [RecentRun.from_dict(r) for r in data["recent_runs"]]
        return build(cls, data)


@dataclass(frozen=True, slots=True)
class RecentRun(Record):
    """One of a dataflow's latest runs, as ``datamill flow show`` lists them."""

    id: int
    status: str
    reason: str
    requested_at: float
    finished_at: float | None
    dataflow_version: int | None


@dataclass(frozen=True, slots=True)
class VersionRun(Record):
    """A run made under one configuration version of a dataflow."""

    id: int
    status: str
    requested_at: float


@dataclass(frozen=True, slots=True)
class DataflowVersionInfo(Record):
    """One configuration version of a dataflow, with the runs made under it."""

    version: int
    config: dict[str, Any]
    created_at: float
    created_by: str | None
    runs: list[VersionRun]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataflowVersionInfo:
        """As :meth:`Record.from_dict`, with ``runs`` as records."""
        return cls(
            version=data["version"],
            config=data["config"],
            created_at=data["created_at"],
            created_by=data.get("created_by"),
            runs=[VersionRun.from_dict(r) for r in data.get("runs") or []],
        )


# ---------------------------------------------------------------------------------- batches


@dataclass(frozen=True, slots=True)
class BatchCounts(Record):
    """How a batch's items stand: ``completed`` = ``successful`` + ``failed``; the rest run or wait."""

    items: int
    completed: int
    successful: int
    failed: int
    running: int
    unstarted: int


@dataclass(frozen=True, slots=True)
class BatchInfo(Record):
    """A batch as its viewer sees it (``items``: the paths of items they may read)."""

    id: int
    name: str
    owner: str | None
    pipeline: str
    params: dict[str, Any]
    dest: str
    description: str
    source: dict[str, Any]
    items: list[str]
    runs: list[int]
    status: str
    counts: BatchCounts
    created_at: float
    updated_at: float

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchInfo:
        """As :meth:`Record.from_dict`, with ``counts`` as a record."""
        return build(cls, {**data, "counts": BatchCounts.from_dict(data["counts"])})


@dataclass(frozen=True, slots=True)
class BatchCell(Record):
    """One task of the grid: an item's step."""

    step: str
    status: str
    progress: float
    task: int | None = None
    message: str = ""
    error: str | None = None


@dataclass(frozen=True, slots=True)
class BatchRow(Record):
    """One item of the grid: its overall status and one cell per step."""

    item: str
    status: str
    cells: list[BatchCell] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchRow:
        """As :meth:`Record.from_dict`, with the cells as records."""
        return build(cls, {**data, "cells": [BatchCell.from_dict(c) for c in data.get("cells") or []]})


@dataclass(frozen=True, slots=True)
class BatchStatus(Record):
    """The per-item by per-step grid of a batch's latest run (``run`` None: never started)."""

    batch: str
    run: int | None
    run_status: str | None
    steps: list[str]
    counts: BatchCounts
    rows: list[BatchRow]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchStatus:
        """As :meth:`Record.from_dict`, with nested records."""
        return build(
            cls,
            {
                **data,
                "counts": BatchCounts.from_dict(data["counts"]),
                "rows": [BatchRow.from_dict(r) for r in data.get("rows") or []],
            },
        )
