"""What the dataflows service answers, as records (see :mod:`datamill.record`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from datamill.record import Record, build

__all__ = ["DataflowInfo", "DataflowVersionInfo", "RecentRun", "VersionRun"]


@dataclass(frozen=True, slots=True)
class DataflowInfo(Record):
    """A dataflow as callers see it.

    ``recent_runs`` is filled when one dataflow is read (:class:`RecentRun`), ``cancelled`` (run
    ids) when it is stopped with ``cancel``; otherwise both are absent from :meth:`to_dict`.
    """

    _optional = frozenset({"recent_runs", "cancelled", "directory", "watch", "status"})

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
    recent_runs: list[RecentRun] | None = None
    cancelled: list[int] | None = None
    #: a directory dataflow's server directory (site admins see it; others a placeholder)
    directory: str | None = None
    #: a directory dataflow's rules: include, exclude, stable_seconds, poll, poll_interval, existing
    watch: dict[str, Any] | None = None
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
