"""Typed records: the values that cross layers and the wire (folders, items, versions, groups, tokens,
events, run and task states, access levels).

Plain dataclasses and enums with no SQL and no I/O. They sit in the lowest layer so that a remote
client, and the command line talking to a server, can hold them without loading the database layer
(SQLAlchemy alone costs more start-up time than the whole ``datamill --help``). The modules that make
them (:mod:`datamill.store.store`, :mod:`datamill.store.groups`, :mod:`datamill.events`,
:mod:`datamill.engine.runs`, ...) import them from here, and their old names there still work.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

from datamill.errors import InvalidMetadata
from datamill.limits import MAX_JSON_DEPTH, too_deep, value_depth


def _join(folder: str, name: str) -> str:
    # datamill.store.names.join_path(folder, name); that module is a layer above this one.
    return "/".join(p.strip("/") for p in (folder, name) if p and p.strip("/"))


# ---------------------------------------------------------------------------------- access


class Level(IntEnum):
    """Access levels, each including the ones below it."""

    NONE = 0
    #: see the folder, its items and their bytes
    READ = 1
    #: add, change and remove items and subfolders
    WRITE = 2
    #: share, rename, move and delete the folder itself
    ADMIN = 3

    @classmethod
    def parse(cls, text: str) -> Level:
        """``"read"`` -> ``Level.READ``."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown access level {text!r}; use read, write or admin") from None


# ---------------------------------------------------------------------------------- folders, items, versions


@dataclass(frozen=True)
class FolderInfo:
    """A folder as callers see it."""

    id: int
    path: str
    name: str
    parent: str | None
    owner: str | None
    public_read: bool
    metadata: dict[str, Any]
    created_at: float
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


@dataclass(frozen=True)
class VersionInfo:
    """One version of an item."""

    item_id: int
    version_id: int
    folder: str
    name: str
    version: int
    digest: str
    size: int
    content_type: str
    created_by: str | None
    created_via: str
    created_at: float
    run_id: int | None = None
    task_id: int | None = None

    @property
    def path(self) -> str:
        """``folder/name``."""
        return _join(self.folder, self.name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {**asdict(self), "path": self.path}


@dataclass(slots=True)
class ItemInfo:
    """An item with its current version.

    Not frozen: listings build 100,000 of these, and a frozen dataclass's ``__init__`` costs
    several times more.
    """

    id: int
    folder: str
    name: str
    metadata: dict[str, Any]
    version: int
    digest: str
    size: int
    content_type: str
    created_at: float
    updated_at: float
    version_id: int = 0

    @property
    def path(self) -> str:
        """``folder/name``."""
        return _join(self.folder, self.name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        # Written out rather than asdict(): asdict deep-copies, and API listings call this 100k times.
        return {
            "id": self.id,
            "folder": self.folder,
            "name": self.name,
            "metadata": self.metadata,
            "version": self.version,
            "digest": self.digest,
            "size": self.size,
            "content_type": self.content_type,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "version_id": self.version_id,
            "path": self.path,
        }


def check_metadata(meta: Any) -> dict[str, Any]:
    """Metadata must be a JSON object with string keys whose values round-trip through JSON."""
    if not isinstance(meta, Mapping):
        raise InvalidMetadata(f"metadata must be a JSON object, not {type(meta).__name__}")
    if value_depth(dict(meta)) > MAX_JSON_DEPTH:  # json.dumps recurses; refuse before it overflows
        raise InvalidMetadata(too_deep("metadata"), max_depth=MAX_JSON_DEPTH)
    try:
        text = json.dumps(meta, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidMetadata(f"metadata is not valid JSON: {exc}") from None
    out: dict[str, Any] = json.loads(text)
    for key in out:
        if not key or len(key) > 255:
            raise InvalidMetadata(f"metadata key {key[:40]!r} must be 1-255 characters")
    return out


# ---------------------------------------------------------------------------------- groups and tokens


@dataclass(frozen=True)
class GroupMember:
    """A member of a group; ``admin`` members may manage the group's members."""

    user: str
    admin: bool
    added_at: float


@dataclass(frozen=True)
class GroupGrant:
    """A folder shared with a group, and at which level."""

    folder: str
    level: str


@dataclass(frozen=True)
class GroupInfo:
    """A group as its members (and site admins) see it."""

    id: int
    name: str
    created_by: str | None
    created_at: float
    members: list[GroupMember] = field(default_factory=list)
    grants: list[GroupGrant] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupInfo:
        """The inverse of :meth:`to_dict` (for answers of the API)."""
        return cls(
            id=int(data["id"]),
            name=str(data["name"]),
            created_by=data.get("created_by"),
            created_at=float(data["created_at"]),
            members=[GroupMember(m["user"], bool(m["admin"]), float(m["added_at"])) for m in data.get("members", [])],
            grants=[GroupGrant(g["folder"], g["level"]) for g in data.get("grants", [])],
        )

    def admins(self) -> list[str]:
        """Names of the group admins."""
        return [m.user for m in self.members if m.admin]


@dataclass(frozen=True)
class NewToken:
    """A freshly created token: the secret is only ever available here."""

    id: int
    user: str
    token: str
    expires_at: float | None


# ---------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class EventRecord:
    """One event as readers see it."""

    seq: int
    ts: float
    kind: str
    actor_id: int | None = None
    folder_id: int | None = None
    item_id: int | None = None
    run_id: int | None = None
    task_id: int | None = None
    dataflow_id: int | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
            "actor_id": self.actor_id,
            "folder_id": self.folder_id,
            "item_id": self.item_id,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "dataflow_id": self.dataflow_id,
            "data": self.data,
        }


# ---------------------------------------------------------------------------------- runs and tasks


class RunStatus(StrEnum):
    """Where a run stands."""

    #: recorded; no task has started yet
    QUEUED = "queued"
    #: at least one task started and not all have ended
    RUNNING = "running"
    #: every task succeeded or was cached
    SUCCEEDED = "succeeded"
    #: every task ended and at least one failed
    FAILED = "failed"
    #: cancelled on request; unfinished tasks were cancelled
    CANCELLED = "cancelled"


class TaskStatus(StrEnum):
    """Where a task stands."""

    #: waiting for its inputs or for a free executor slot
    QUEUED = "queued"
    #: claimed by a scheduler (under a lease) and running on an executor
    RUNNING = "running"
    #: ran and recorded its outputs
    SUCCEEDED = "succeeded"
    #: ran out of attempts, or an input failed
    FAILED = "failed"
    #: its key was seen before; the earlier outputs were reused
    CACHED = "cached"
    #: the run was cancelled before the task ended
    CANCELLED = "cancelled"
    #: not run: it failed earlier on the same key (its note says in which run); not a new failure
    SKIPPED = "skipped"


FINISHED_TASK = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CACHED, TaskStatus.CANCELLED, TaskStatus.SKIPPED}
)
DONE_OK = frozenset({TaskStatus.SUCCEEDED, TaskStatus.CACHED})
FINISHED_RUN = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})
