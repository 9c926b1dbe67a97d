"""The schema: every table datamill keeps, as SQLAlchemy 2 declarative models.

Times are UNIX epoch seconds as floats: portable across SQLite and PostgreSQL, exact enough for
latency figures, and free of the naive/aware datetime trap SQLite sets.
Migrations in ``db/migrations`` must match these models; ``tests/test_migrations.py`` checks it.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JSONType = JSON().with_variant(JSONB(), "postgresql")


def json_text(data: Any) -> str:
    """``data`` as the JSON text a :data:`JSONType` column holds, for statements run by the driver
    (PostgreSQL: bound as ``CAST(%s AS jsonb)``). Callers pass values already checked for JSON
    (no NaN: orjson would write null where the json module refuses)."""
    try:
        return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # what orjson refuses (an int beyond 64 bits, ...) the json module may say
        return json.dumps(data)


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base for every datamill table."""


class Meta(Base):
    """Store-wide facts fixed at creation, e.g. the digest algorithm."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class User(Base):
    """A person or service account."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)


class Token(Base):
    """An API token. Only its SHA-256 is kept; the token itself is shown once, at creation."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Folder(Base):
    """A node of the folder tree. ``path`` is the full slash-joined path, kept for fast look-up."""

    __tablename__ = "folders"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("folders.id", ondelete="CASCADE"), nullable=True, index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(String(1024), unique=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    public_read: Mapped[bool] = mapped_column(Boolean, default=False)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class FolderAccess(Base):
    """One grant of a level (1 read, 2 write, 3 admin) on a folder to a user; inherited downwards."""

    __tablename__ = "folder_access"
    folder_id: Mapped[int] = mapped_column(ForeignKey("folders.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    level: Mapped[int] = mapped_column(Integer)


class Group(Base):
    """A named set of users that folders can be shared with, like a user."""

    __tablename__ = "groups"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class GroupMembership(Base):
    """One user in one group; ``is_admin`` members (group admins) may add and remove members."""

    __tablename__ = "group_members"
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)
    # Indexed: every access check looks up the groups of one user.
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    added_at: Mapped[float] = mapped_column(Float)


class GroupAccess(Base):
    """One grant of a level (1 read, 2 write, 3 admin) on a folder to a group; inherited downwards."""

    __tablename__ = "group_access"
    folder_id: Mapped[int] = mapped_column(ForeignKey("folders.id", ondelete="CASCADE"), primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True, index=True)
    level: Mapped[int] = mapped_column(Integer)


class Blob(Base):
    """Bytes known to the blob store, by digest."""

    __tablename__ = "blobs"
    digest: Mapped[str] = mapped_column(String(80), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)


class Item(Base):
    """A named file in a folder; its content lives in versions."""

    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("folder_id", "name", name="uq_items_folder_name"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    folder_id: Mapped[int] = mapped_column(ForeignKey("folders.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    current_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class Version(Base):
    """One immutable version of an item, pointing at a blob by digest."""

    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("item_id", "number", name="uq_versions_item_number"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(80), ForeignKey("blobs.digest"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(255))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_via: Mapped[str] = mapped_column(String(64), default="upload")
    run_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    task_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    created_at: Mapped[float] = mapped_column(Float)


class Event(Base):
    """One row of the append-only log. ``seq`` strictly increases in commit order."""

    __tablename__ = "events"
    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    actor_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    folder_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    item_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    run_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    task_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    dataflow_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


Index("ix_items_folder_name", Item.folder_id, Item.name)
Index("ix_events_run", Event.run_id)


class Run(Base):
    """One execution of a pipeline on a set of exact input item versions."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    pipeline_ref: Mapped[str] = mapped_column(String(1024))
    pipeline_name: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), index=True)
    requested_at: Mapped[float] = mapped_column(Float)
    requested_by: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reason: Mapped[str] = mapped_column(String(255), default="")
    force: Mapped[bool] = mapped_column(Boolean, default=False)
    #: the parameters the user gave, a row of ``params`` (:class:`ParamSet`); None when none were given
    params_digest: Mapped[str | None] = mapped_column(String(80), nullable=True)
    #: the rest of the run's parameters (:func:`datamill.engine.paramsets.run_params`): ``steps``, each
    #: step's overrides as a row of ``params``, and the image digests resolved for the run, if any
    params_meta: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    source_folder: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    dest_folder: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    dest_folder_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    dataflow_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    dataflow_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    executor: Mapped[str] = mapped_column(String(32), default="local")
    parent_run_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    inputs: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: tasks that failed earlier on the same key are not run again (runs made by triggers)
    skip_failed: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    #: what the run's plan depends on, hashed (:func:`datamill.engine.replay.plan_identity`): an
    #: unchanged re-run finds an earlier run with the same one and is recorded as its copy
    plan_digest: Mapped[str | None] = mapped_column(String(80), nullable=True, index=True)


class ParamSet(Base):
    """A step's resolved parameters, stored once however many tasks use them (:mod:`datamill.engine.paramsets`).

    ``digest`` is the BLAKE3 hash of ``data``, their canonical JSON: a step's tasks, and every run
    with the same parameters, refer to one row, so a big parameter is not stored per task.
    """

    __tablename__ = "params"
    digest: Mapped[str] = mapped_column(String(80), primary_key=True)
    data: Mapped[str] = mapped_column(Text)


class Task(Base):
    """One step applied to concrete inputs inside a run."""

    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("run_id", "planned_id", name="uq_tasks_run_planned"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    planned_id: Mapped[str] = mapped_column(String(2048))
    step: Mapped[str] = mapped_column(String(255))
    step_code: Mapped[str] = mapped_column(String(255))
    key: Mapped[str | None] = mapped_column(String(80), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=1)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    item_version_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    item_name: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    deps: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    #: the task's parameters, a row of ``params`` (:class:`ParamSet`); None when it has none
    params_digest: Mapped[str | None] = mapped_column(String(80), nullable=True)
    queued_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    not_before: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    traceback: Mapped[str | None] = mapped_column(Text, nullable=True)
    log_digest: Mapped[str | None] = mapped_column(String(80), nullable=True)
    cached_from: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    executor: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: why a failed task failed: ``step`` (the step raised or exited non-zero: the same key fails
    #: again), ``timeout``, ``crashed``, ``input``, ``publish``, ``scheduler``, ...
    failure: Mapped[str | None] = mapped_column(String(16), nullable=True)
    #: a note on how the task ended: "failed earlier (see run N)", "superseded by run N", ...
    note: Mapped[str | None] = mapped_column(Text, nullable=True)


class TaskInput(Base):
    """One exact input of a task: an item version, or an output of an upstream task."""

    __tablename__ = "task_inputs"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    param: Mapped[str] = mapped_column(String(255))
    digest: Mapped[str] = mapped_column(String(80))
    version_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    upstream_task_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    output_name: Mapped[str | None] = mapped_column(String(1024), nullable=True)


class TaskOutput(Base):
    """One output of a finished task. Small outputs are kept inline instead of as a blob file."""

    __tablename__ = "task_outputs"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(1024))
    digest: Mapped[str] = mapped_column(String(80))
    size: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(255))
    codec: Mapped[str] = mapped_column(String(32))
    inline: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    version_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)


# Only outputs kept as blobs are looked up by digest (whether a blob is still referred to, see
# store/garbage.py): an inline output's bytes are in its row. The digests of small outputs are random
# and repeat across runs, and their index entries were a page written per recorded task (0017_outputblobs).
Index(
    "ix_task_outputs_blob",
    TaskOutput.digest,
    sqlite_where=TaskOutput.inline.is_(None),
    postgresql_where=TaskOutput.inline.is_(None),
)
Index("ix_tasks_run_status", Task.run_id, Task.status)
# The key alone: a status change (twice per attempt) then leaves this index alone (see 0014_taskkey).
Index("ix_tasks_key", Task.key)
Index("ix_tasks_step_code", Task.step, Task.step_code)


class RegisteredPipeline(Base):
    """A pipeline a site admin registered by name: what users who may not give references run.

    Pipelines of installed packages (entry points in the group ``datamill.pipelines``) are
    registered too, but live in the packages' metadata, not here.
    """

    __tablename__ = "pipelines"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    ref: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class Dataflow(Base):
    """A dataflow: watches a source folder and runs a pipeline into a destination folder."""

    __tablename__ = "dataflows"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="workflow")
    state: Mapped[str] = mapped_column(String(16), default="stopped")
    state_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    owner_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    source_folder_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    dest_folder_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cursor: Mapped[int] = mapped_column(BigInteger, default=0)
    backfilled_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    next_fire_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class RunOwner(Base):
    """Which scheduler drives a run (a lease it renews; another takes the run over once it expires)."""

    __tablename__ = "run_owners"
    run_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    owner: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    #: the owner has more than it can do soon: other schedulers may drive the run too
    wants_help: Mapped[bool] = mapped_column(Boolean, default=False)


class DataflowOwner(Base):
    """Which server runs a directory dataflow (a lease it renews) and the live status it reports."""

    __tablename__ = "dataflow_owners"
    dataflow_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("dataflows.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    owner: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[float] = mapped_column(Float)
    status: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    updated_at: Mapped[float] = mapped_column(Float)


class Node(Base):
    """One process of a deployment (a server or a worker), renewed while it runs; ``datamill doctor`` reads them."""

    __tablename__ = "nodes"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    role: Mapped[str] = mapped_column(String(32))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(64))
    schema: Mapped[str] = mapped_column(String(64))
    url: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    started_at: Mapped[float] = mapped_column(Float)
    seen_at: Mapped[float] = mapped_column(Float)


class DataflowVersion(Base):
    """One immutable configuration of a dataflow; every edit makes a new one."""

    __tablename__ = "dataflow_versions"
    __table_args__ = (UniqueConstraint("dataflow_id", "number", name="uq_dataflow_versions_number"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataflow_id: Mapped[int] = mapped_column(ForeignKey("dataflows.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_by: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class Cursor(Base):
    """Where a consumer of the event log (the notifier, a trigger service) has read up to."""

    __tablename__ = "cursors"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)


class Delivery(Base):
    """One webhook notification to deliver, retried with backoff until it succeeds or gives up."""

    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataflow_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    run_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    event_seq: Mapped[int] = mapped_column(BigInteger)
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class IdempotencyKey(Base):
    """An upload's ``Idempotency-Key``, per user: a retry with the same key replays the first answer.

    Recorded in the transaction that commits the version, so a key exists exactly when its
    version does. ``fingerprint`` identifies what was uploaded (item and bytes), so reusing a key
    for something else is refused. Keys are kept for a bounded time, then pruned.
    """

    __tablename__ = "idempotency_keys"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[float] = mapped_column(Float, index=True)


class Batch(Base):
    """A named selection of items a pipeline runs over (Chowda's batches); see ``datamill.dataflows.batches``.

    ``items`` are item ids (the current version is taken when the batch starts); ``runs`` the ids of
    the runs it started, oldest first; ``source`` says how the selection was made.
    """

    __tablename__ = "batches"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    owner_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    pipeline: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    dest: Mapped[str] = mapped_column(Text)
    items: Mapped[list[int]] = mapped_column(JSONType, default=list)
    source: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    runs: Mapped[list[int]] = mapped_column(JSONType, default=list)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class StreamOffset(Base):
    """Where a stream dataflow's consumer stands in one partition: the next offset to read.

    Written in the transaction that makes what came before it durable (a staged chunk, a landed
    file), so a consumer that restarts seeks here and neither loses nor repeats a message.
    """

    __tablename__ = "stream_offsets"
    dataflow_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("dataflows.id", ondelete="CASCADE"), primary_key=True
    )
    topic: Mapped[str] = mapped_column(String(255), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[float] = mapped_column(Float)


class StreamFile(Base):
    """A file of a stream dataflow by path: the generation being received (``partial``) or the last
    one landed (``landed``, kept so late duplicates of its chunks are recognised)."""

    __tablename__ = "stream_files"
    __table_args__ = (UniqueConstraint("dataflow_id", "path", name="uq_stream_files_path"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataflow_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("dataflows.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    file_hash: Mapped[str] = mapped_column(String(128))
    n_chunks: Mapped[int] = mapped_column(Integer)
    mtime: Mapped[float | None] = mapped_column(Float, nullable=True)
    chunks_staged: Mapped[int] = mapped_column(Integer, default=0)
    bytes_staged: Mapped[int] = mapped_column(BigInteger, default=0)
    #: partition -> [first, last] offset of the messages that carried its chunks, for provenance
    messages: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    first_seen: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class StreamChunk(Base):
    """One staged chunk of a partial stream file (its bytes are in the file's staging file at ``offset``),
    until the file is complete (then it is deleted)."""

    __tablename__ = "stream_chunks"
    file_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("stream_files.id", ondelete="CASCADE"), primary_key=True
    )
    offset: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)


class StreamStatus(Base):
    """What one consumer of a stream dataflow last reported: counters, lag, in-progress files, last error."""

    __tablename__ = "stream_status"
    dataflow_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("dataflows.id", ondelete="CASCADE"), primary_key=True
    )
    member: Mapped[str] = mapped_column(String(255), primary_key=True)
    status: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    updated_at: Mapped[float] = mapped_column(Float)
