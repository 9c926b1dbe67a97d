"""The Dataflow object: name, description, kind, folders, implementation, parameters, trigger, state.

Configuration is versioned: every edit writes a new immutable :class:`DataflowVersion` row and
bumps ``dataflows.version``; runs record the version they used. Validation happens before
anything is saved: the folders exist and the user may read the source and write the destination,
the pipeline is one the user may choose (a registered name; a reference only for site admins, see
:mod:`datamill.engine.registry`) and loads, the cron expression parses, and the destination is not
inside the source (a dataflow would otherwise feed on its own results).

A dataflow's triggers run its pipeline as its owner chose it: a registered name resolves to its
reference at each run, and a reference runs only while the owner is a site admin.

Instead of a pipeline a dataflow may name a container ``image`` (the DMS's shape): its runs run
``image://IMAGE`` (:func:`~datamill.pipeline.loader.image_pipeline`), the image's default command
once per item. The image must match the ``allowed_images`` setting when the dataflow is saved
(:class:`~datamill.errors.ImageNotAllowed`) and when its trigger runs it.

Nor may dataflows feed on each other's results in a cycle (``a`` writes where ``b`` watches and
``b`` writes where ``a`` watches): each run of one would start a run of the other, forever, with
names growing on every turn. A cycle is refused when a dataflow is saved and when it is started,
over the dataflows that are running plus the one saved or started (see :func:`find_cycle`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy import text as sql_text

from datamill import events
from datamill.dataflows import owners
from datamill.dataflows.records import DataflowInfo, DataflowVersionInfo, VersionRun
from datamill.db.models import Dataflow, DataflowVersion, Run, User
from datamill.errors import AlreadyExists, Conflict, InvalidDataflow, InvalidInput, NotFound, PermissionDenied
from datamill.events import EventKind
from datamill.refs import image_ref
from datamill.store import lookups
from datamill.store.access import Actor, Level, level_on
from datamill.store.names import split_path
from datamill.store.visibility import Visibility

#: The events a dataflow's start, stop, edit or deletion appends (``dataflow.*``): what the services
#: running dataflows' watchers and consumers wait for (:meth:`datamill.events.EventLog.wait`).
FLOW_FAMILIES = ("dataflow",)


class DataflowKind(StrEnum):
    """What a dataflow is; stored in ``dataflows.kind`` and shown as its value."""

    #: runs a pipeline over the items of a source folder into a destination folder
    WORKFLOW = "workflow"
    #: lands the files of a Kafka topic (OpenMSIStream's chunk format) in a destination folder
    STREAM = "stream"
    #: lands the files of a directory on the server's machine in a folder (site admins only)
    DIRECTORY = "directory"


class DataflowState(StrEnum):
    """Whether a dataflow's trigger acts; stored in ``dataflows.state`` and shown as its value."""

    #: saved, its trigger does nothing (every dataflow starts stopped)
    STOPPED = "stopped"
    #: its trigger starts runs (new items, cron or on request)
    RUNNING = "running"
    #: stopped by the trigger service after an error it cannot get past; ``state_reason`` says which
    FAILED = "failed"


KINDS = tuple(DataflowKind)
#: PostgreSQL advisory lock key taken while a dataflow is checked for cycles ("dmflows" in ASCII).
_CYCLE_LOCK = 0x646D666C6F7773
STATES = tuple(DataflowState)
#: The event each state change appends.
_STATE_EVENTS = {
    DataflowState.RUNNING: EventKind.DATAFLOW_STARTED,
    DataflowState.STOPPED: EventKind.DATAFLOW_STOPPED,
    DataflowState.FAILED: EventKind.DATAFLOW_FAILED,
}
CONFIG_KEYS = (
    "description",
    "kind",
    "source",
    "destination",
    "topic",
    "pipeline",
    "image",
    "params",
    "trigger",
    "webhooks",
    "batch_window_ms",
    "directory",
    "watch",
    "broker",
    "partial_timeout_s",
    "recursive",
)
#: What a non-admin sees instead of a directory dataflow's server directory.
HIDDEN_DIRECTORY = "(a directory on the server; shown to site admins)"
#: What a stream dataflow's configuration holds besides its kind and destination.
STREAM_KEYS = ("description", "kind", "destination", "topic", "broker", "partial_timeout_s")


@dataclass(frozen=True)
class Trigger:
    """When a dataflow runs: on new items, on a cron schedule, or only when asked."""

    kind: str
    cron: str | None = None

    @classmethod
    def parse(cls, text: str) -> Trigger:
        """``"new-items"``, ``"manual"`` or ``"cron:*/5 * * * *"`` -> a trigger; InvalidDataflow otherwise."""
        text = (text or "").strip()
        if text in ("new-items", "manual"):
            return cls(text)
        if text.startswith("cron:"):
            expr = text[5:].strip()
            from croniter import croniter

            if not croniter.is_valid(expr):
                raise InvalidDataflow(
                    f"trigger: {expr!r} is not a cron expression; use five fields, e.g. 'cron:*/5 * * * *'",
                    field="trigger",
                )
            _check_fires(expr)
            return cls("cron", expr)
        raise InvalidDataflow(
            f"trigger: {text!r} is not a trigger; use new-items, manual or 'cron:<expression>'", field="trigger"
        )

    def __str__(self) -> str:
        return f"cron:{self.cron}" if self.kind == "cron" else self.kind

    def next_fire(self, after: float, count: int = 1) -> list[float]:
        """The next ``count`` fire times (epoch seconds, UTC) after ``after`` for a cron trigger."""
        if self.kind != "cron" or not self.cron:
            return []
        from datetime import UTC, datetime

        from croniter import croniter

        it = croniter(self.cron, datetime.fromtimestamp(after, UTC))
        return [float(it.get_next(float)) for _ in range(count)]


#: A cron expression with no fire time within this many years is refused (Feb 29 recurs within 8).
CRON_HORIZON_YEARS = 10


def _check_fires(expr: str) -> None:
    """Refuse a cron expression that parses but never fires (``0 0 31 2 *``) or not for years.

    Else the dataflow is saved and then fails when started, when the first fire time is computed.
    """
    from datetime import UTC, datetime

    from croniter import CroniterError, croniter

    now = datetime.now(UTC)
    try:
        first = croniter(expr, now).get_next(datetime)
    except (CroniterError, ValueError, OverflowError):
        first = None
    if first is None or first.year - now.year > CRON_HORIZON_YEARS:
        raise InvalidDataflow(
            f"trigger: cron {expr!r} never fires (no such date, e.g. 31 February); "
            "check the day-of-month and month fields",
            field="trigger",
        )


def _info(conn: Connection, row: Any) -> DataflowInfo:
    cfg = dict(row.config or {})
    owner = conn.execute(select(User.name).where(User.id == row.owner_id)).scalar() if row.owner_id else None
    trig = cfg.get("trigger", "manual")
    fires: list[float] = []
    if str(trig).startswith("cron:") and row.state == DataflowState.RUNNING:
        fires = Trigger.parse(trig).next_fire(time.time(), 3)
    return DataflowInfo(
        id=row.id,
        name=row.name,
        kind=row.kind,
        state=row.state,
        state_reason=row.state_reason,
        version=row.version,
        owner=owner,
        description=cfg.get("description", ""),
        source=cfg.get("source", ""),
        destination=cfg.get("destination", ""),
        topic=cfg.get("topic"),
        pipeline=cfg.get("pipeline", ""),
        image=cfg.get("image"),
        params=dict(cfg.get("params") or {}),
        trigger=str(trig),
        webhooks=list(cfg.get("webhooks") or []),
        batch_window_ms=cfg.get("batch_window_ms"),
        broker=mask_broker(cfg.get("broker")),
        partial_timeout_s=cfg.get("partial_timeout_s"),
        recursive=bool(cfg.get("recursive")),
        cursor=row.cursor,
        created_at=row.created_at,
        updated_at=row.updated_at,
        next_fire_times=fires,
        directory=cfg.get("directory"),
        watch=cfg.get("watch"),
        status=owners.status_of(conn, row.id) if row.kind == DataflowKind.DIRECTORY else None,
    )


def mask_broker(broker: Any) -> dict[str, Any]:
    """A stream dataflow's broker fields for any answer: the SASL password is never shown."""
    out = dict(broker or {})
    if out.get("sasl_password"):
        out["sasl_password"] = "***"
    return out


def check_name(name: str) -> str:
    """Dataflow names: 1-100 letters, digits, ``-``, ``_``, ``.``, starting with a letter or digit."""
    ok = 0 < len(name) <= 100 and name[0].isalnum() and all(c.isalnum() or c in "-_." for c in name)
    if not ok:
        raise InvalidDataflow(
            f"name: {name!r} is not allowed; use 1-100 letters, digits, '-', '_' or '.'", field="name"
        )
    return name


def _checked_folder(conn: Connection, actor: Actor, key: str, path: Any, needed: Level) -> str:
    """The normalised path of the dataflow's ``key`` folder, which must exist and grant ``actor`` ``needed``.

    A missing folder and one the actor may not read get the same answer: no existence oracle.
    """
    if not path:
        raise InvalidDataflow(f"{key}: a {key} folder is required", field=key)
    norm = "/".join(split_path(str(path)))
    missing = f"{key}: folder {norm!r} does not exist (or you may not see it); create it first"
    if not norm or lookups.folder_id(conn, norm) is None:
        raise InvalidDataflow(missing, field=key)
    have = level_on(conn, actor, norm)
    if have < Level.READ:
        raise InvalidDataflow(missing, field=key)
    if have < needed:
        raise PermissionDenied(
            f"{key}: you need {needed.name.lower()} access on {norm!r} to use it as the {key}", field=key
        )
    return norm


def validate_config(
    conn: Connection,
    actor: Actor,
    cfg: Mapping[str, Any],
    check_pipeline: bool = True,
    chooser: Actor | None = None,
    allowed_images: tuple[str, ...] | None = None,
    watch_roots: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Check a full configuration and return it normalised; raise :class:`InvalidDataflow` naming the field.

    The pipeline must be one ``chooser`` (by default ``actor``) may choose
    (:func:`~datamill.engine.registry.choose`); it is loaded only then. Its container images must
    match ``allowed_images`` (glob patterns; None: not checked). A directory dataflow's
    directory must lie below one of ``watch_roots`` (see :func:`check_watch_directory`).
    """
    unknown = sorted(set(cfg) - set(CONFIG_KEYS))
    if unknown:
        raise InvalidDataflow(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(CONFIG_KEYS)}")
    out: dict[str, Any] = {k: cfg.get(k) for k in CONFIG_KEYS}
    out["description"] = str(cfg.get("description") or "")
    kind = cfg.get("kind") or DataflowKind.WORKFLOW
    if kind not in KINDS:
        raise InvalidDataflow(f"kind: {kind!r} is not a kind; use workflow, stream or directory", field="kind")
    out["kind"] = str(kind)
    out["recursive"] = _recursive(cfg, str(kind))
    cfg = {k: v for k, v in cfg.items() if k != "recursive"}  # checked: the other kinds need not know it
    if kind == DataflowKind.STREAM:
        return _validate_stream(conn, actor, cfg, out)
    if kind == DataflowKind.DIRECTORY:
        return _directory_config(conn, actor, cfg, out, watch_roots)
    if cfg.get("directory") or cfg.get("watch"):
        raise InvalidDataflow("directory, watch: only a directory dataflow (kind directory) watches a directory")
    for key, needed in (("source", Level.READ), ("destination", Level.WRITE)):
        out[key] = _checked_folder(conn, actor, key, cfg.get(key), needed)
    src, dst = out["source"], out["destination"]
    if dst == src or dst.startswith(src + "/"):
        raise InvalidDataflow(
            f"destination: {dst!r} lies inside the source {src!r}; the dataflow would process its own results. "
            "Choose a destination outside the source.",
            field="destination",
        )
    params = cfg.get("params") or {}
    if not isinstance(params, Mapping):
        raise InvalidDataflow("params: must be a mapping of step parameters", field="params")
    out["params"] = dict(params)
    _check_implementation(conn, chooser or actor, cfg, out, check_pipeline, allowed_images)
    out["trigger"] = str(Trigger.parse(str(cfg.get("trigger") or "new-items")))
    hooks = cfg.get("webhooks") or []
    if isinstance(hooks, str):
        hooks = [hooks]
    for h in hooks:
        if not str(h).startswith(("http://", "https://")):
            raise InvalidDataflow(f"webhooks: {h!r} is not an http(s) URL", field="webhooks")
    out["webhooks"] = [str(h) for h in hooks]
    window = cfg.get("batch_window_ms")
    if window is not None and (not isinstance(window, int) or window < 0 or window > 60_000):
        raise InvalidDataflow("batch_window_ms: must be a whole number of milliseconds from 0 to 60000")
    out["batch_window_ms"] = window
    out["topic"] = cfg.get("topic")
    return out


def _recursive(cfg: Mapping[str, Any], kind: str) -> bool:
    """The ``recursive`` field: true or false (absent: false), and true only for a workflow dataflow."""
    value = cfg.get("recursive")
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidDataflow(
            f"recursive: must be true or false, not {value!r}; true makes items landed in the source's "
            "subfolders fire the dataflow too",
            field="recursive",
        )
    if value and kind != DataflowKind.WORKFLOW:
        raise InvalidDataflow(
            f"recursive: only a workflow dataflow watches the subfolders of a source; a {kind} dataflow "
            "lands files (keeping their subfolders) and has no source",
            field="recursive",
        )
    return value


def parse_watch_roots(text: str) -> tuple[str, ...]:
    """The ``watch_roots`` setting (directories separated by ``os.pathsep``) as resolved absolute paths."""
    import os

    return tuple(os.path.realpath(os.path.expanduser(p)) for p in text.split(os.pathsep) if p.strip())


def check_watch_directory(directory: Any, watch_roots: tuple[str, ...]) -> str:
    """The server directory a directory dataflow watches, resolved; refused unless below a watch root.

    Called for site admins only (the message names server paths). With no roots configured no
    directory may be watched: the server's disk is not open by default.
    """
    import os

    if not isinstance(directory, str) or not directory.strip():
        raise InvalidDataflow("directory: a directory on the server is required", field="directory")
    if not os.path.isabs(os.path.expanduser(directory)):
        raise InvalidDataflow(f"directory: {directory!r} must be an absolute path on the server", field="directory")
    if not watch_roots:
        raise PermissionDenied(
            "directory: no directory may be watched on this server; set watch_roots (DATAMILL_WATCH_ROOTS or "
            "datamill.toml) to the directories directory dataflows may read, then try again",
            field="directory",
        )
    real = os.path.realpath(os.path.expanduser(directory))
    if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in watch_roots):
        raise PermissionDenied(
            f"directory: {directory!r} is outside the allowed watch roots ({', '.join(watch_roots)}); "
            "choose a directory below one of them, or add its root to watch_roots",
            field="directory",
        )
    if not os.path.isdir(real):
        raise InvalidDataflow(
            f"directory: {directory!r} does not exist on the server (or is not a directory); create it first",
            field="directory",
        )
    return real


def _directory_config(
    conn: Connection, actor: Actor, cfg: Mapping[str, Any], out: dict[str, Any], watch_roots: tuple[str, ...]
) -> dict[str, Any]:
    """Check a directory dataflow: site admins only, a directory below a watch root, a writable destination."""
    from datamill.dataflows.watcher import WatchRules
    from datamill.errors import DatamillError

    if not actor.is_admin:
        # Before anything else, so that no answer tells a non-admin about the server's disk.
        raise PermissionDenied(
            "kind: only a site admin may create or change a directory dataflow (it reads the server's disk); "
            "ask one, or upload from your machine with `datamill watch DIR FOLDER`",
            field="kind",
        )
    if cfg.get("source") or cfg.get("pipeline") or cfg.get("image"):
        raise InvalidDataflow(
            "source, pipeline, image: a directory dataflow has none (its source is the directory); make a workflow "
            "dataflow with its destination as source to process what lands",
        )
    out["directory"] = check_watch_directory(cfg.get("directory"), watch_roots)
    try:
        out["watch"] = WatchRules.from_dict(cfg.get("watch")).to_dict()
    except DatamillError as exc:
        raise InvalidDataflow(f"watch: {exc.message}", field="watch") from exc
    out["destination"] = _checked_folder(conn, actor, "destination", cfg.get("destination"), Level.WRITE)
    out.update(source="", pipeline="", params={}, trigger="manual", webhooks=[], batch_window_ms=None)
    out["topic"] = None
    return out


def _check_implementation(
    conn: Connection,
    chooser: Actor,
    cfg: Mapping[str, Any],
    out: dict[str, Any],
    check_pipeline: bool,
    allowed_images: tuple[str, ...] | None,
) -> None:
    """Exactly one of ``pipeline`` and ``image`` is set, and it is one ``chooser`` may run; into ``out``.

    An image is checked against ``allowed_images`` (glob patterns; None: not checked) before
    anything else, and refused with :class:`ImageNotAllowed` naming the setting.
    """
    from datamill.engine.registry import check_image, choose

    pipeline = str(cfg.get("pipeline") or "").strip()
    image = str(cfg.get("image") or "").strip()
    if pipeline and image:
        raise InvalidDataflow(
            "pipeline, image: give one of them, not both: a pipeline (a registered name) or a container image "
            "whose default command runs on each item",
            field="image",
        )
    if not pipeline and not image:
        raise InvalidDataflow(
            "pipeline: a pipeline (a registered name; site admins: module:attr, file.py:attr or file.yaml) or a "
            "container image (image) is required",
            field="pipeline",
        )
    out["pipeline"] = pipeline
    out.pop("image", None)  # absent unless used: configurations saved before images compare equal
    if image:
        _check_pipeline(image_ref(image), out["params"], None, field="image")  # the name's form; no file read
        if allowed_images is not None:
            check_image(image, allowed_images)
        out["image"] = image
        return
    choice = choose(conn, chooser, pipeline)  # before anything is loaded
    if check_pipeline:
        _check_pipeline(choice.ref, out["params"], allowed_images)


def implementation(cfg: Mapping[str, Any]) -> str:
    """What a dataflow's runs run: its ``pipeline``, or ``image://IMAGE`` for an image's default command."""
    image = cfg.get("image")
    return image_ref(str(image)) if image else str(cfg.get("pipeline") or "")


def _validate_stream(conn: Connection, actor: Actor, cfg: Mapping[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """A stream dataflow: a topic, a destination it may write, broker fields (optional: the server's
    ``kafka_*`` settings fill the rest) and the partial-file timeout; no source, pipeline or trigger."""
    from datamill.streams.broker import Broker
    from datamill.streams.sender import check_topic

    # What a saved stream dataflow holds in those fields (an edit merges them back in) is no field set.
    extra = sorted(k for k in set(cfg) - set(STREAM_KEYS) if cfg.get(k) not in (None, "", [], {}, "stream"))
    if extra:
        raise InvalidDataflow(
            f"a stream dataflow has no {', '.join(extra)}: it lands a topic's files in its destination; "
            "run a workflow dataflow on that folder for what follows",
            field=extra[0],
        )
    try:
        out["topic"] = check_topic(str(cfg.get("topic") or ""))
    except InvalidInput as exc:
        raise InvalidDataflow(f"topic: {exc.message}", field="topic") from None
    out["destination"] = _checked_folder(conn, actor, "destination", cfg.get("destination"), Level.WRITE)
    broker = dict(cfg.get("broker") or {})
    if not isinstance(cfg.get("broker") or {}, Mapping):
        raise InvalidDataflow("broker: must be a mapping of bootstrap, security_protocol, sasl_*", field="broker")
    try:
        # Checked with a stand-in address when the server's settings are to supply it.
        checked = Broker.parse({**broker, "bootstrap": broker.get("bootstrap") or "settings:1"})
    except InvalidInput as exc:
        raise InvalidDataflow(exc.message, field="broker") from None
    stored = checked.stored()
    if not broker.get("bootstrap"):
        stored.pop("bootstrap")
    timeout = cfg.get("partial_timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0):
        raise InvalidDataflow("partial_timeout_s: must be a positive number of seconds", field="partial_timeout_s")
    out.update(
        source="",
        pipeline="",
        params={},
        trigger="stream",
        webhooks=[],
        batch_window_ms=None,
        broker=stored,
        partial_timeout_s=timeout,
    )
    return out


def _feeds(dest: str, source: str) -> bool:
    """Whether results published into ``dest`` can land where a dataflow watching ``source`` sees them.

    Outputs may be published into subfolders of the destination, and a destination inside a
    source is treated like the source itself (as for one dataflow's own destination): so the two
    folders feed each other when either holds the other.
    """
    return dest == source or dest.startswith(source + "/") or source.startswith(dest + "/")


@dataclass(frozen=True)
class FlowEnds:
    """A dataflow as the cycle check sees it: its id (None: not saved yet), name, source and destination."""

    id: int | None
    name: str
    source: str
    destination: str


def flow_ends(row: Any) -> FlowEnds:
    """The :class:`FlowEnds` of a ``dataflows`` row."""
    cfg = row.config or {}
    return FlowEnds(row.id, row.name, str(cfg.get("source") or ""), str(cfg.get("destination") or ""))


def find_cycle(start: FlowEnds, others: list[FlowEnds]) -> list[FlowEnds] | None:
    """The shortest chain ``start -> ... -> start`` of dataflows each writing where the next watches, or None.

    ``others`` are the dataflows that run besides ``start`` (its own saved row, if any, is left out).
    """
    flows = [start] + [f for f in others if (f.id is None or f.id != start.id) and f.source and f.destination]
    # Breadth first from start: the first time start is reached again closes the shortest cycle.
    previous: dict[int, int] = {}
    queue = [0]
    seen = {0}
    while queue:
        nxt = []
        for i in queue:
            for j, f in enumerate(flows):
                if j == i or not _feeds(flows[i].destination, f.source):
                    continue
                if j == 0:
                    chain = [i]
                    while chain[-1] != 0:
                        chain.append(previous[chain[-1]])
                    return [flows[k] for k in reversed(chain)] + [start]
                if j not in seen:
                    seen.add(j)
                    previous[j] = i
                    nxt.append(j)
        queue = nxt
    return None


def _check_pipeline(
    ref: str, params: Mapping[str, Any], allowed_images: tuple[str, ...] | None = None, field: str = "pipeline"
) -> None:
    """The pipeline imports, its images are allowed, and parameters name real steps and parameters."""
    from datamill.errors import DatamillError
    from datamill.pipeline import load_pipeline

    try:
        pipeline = load_pipeline(ref)
    except DatamillError as exc:
        raise InvalidDataflow(f"{field}: {exc.message}", field=field) from exc
    except Exception as exc:  # an import error in user code
        raise InvalidDataflow(f"pipeline: {ref!r} does not import: {type(exc).__name__}: {exc}") from exc
    from datamill.engine.containers import check_images
    from datamill.engine.params import split_params

    try:
        check_images(pipeline, allowed_images)
    except DatamillError as exc:
        raise InvalidDataflow(f"pipeline: {exc.message}", field="pipeline", setting="allowed_images") from exc

    try:
        split_params(pipeline, params)
    except DatamillError as exc:
        raise InvalidDataflow(f"params: {exc.message}", field="params") from exc


def fail_dataflow(db: Any, dataflow_id: int, message: str) -> None:
    """Mark a running dataflow failed with ``message`` (a trigger or a watcher cannot go on); an event says so."""
    with db.write() as conn:
        row = conn.execute(select(Dataflow.state, Dataflow.dest_folder_id).where(Dataflow.id == dataflow_id)).first()
        if row is None or row.state != DataflowState.RUNNING:
            return
        conn.execute(
            update(Dataflow).where(Dataflow.id == dataflow_id).values(state=DataflowState.FAILED, state_reason=message)
        )
        events.append(
            conn,
            EventKind.DATAFLOW_FAILED,
            dataflow_id=dataflow_id,
            folder_id=row.dest_folder_id,
            data={"reason": message},
        )


def _keep_password(merged: dict[str, Any], old: Mapping[str, Any]) -> None:
    """A broker edited with the masked password sent back (``***``) keeps the stored one."""
    broker = merged.get("broker")
    if isinstance(broker, Mapping) and broker.get("sasl_password") == "***":
        kept = dict(old.get("broker") or {}).get("sasl_password")
        merged["broker"] = (
            {**broker, "sasl_password": kept} if kept else {k: v for k, v in broker.items() if k != "sasl_password"}
        )


def _delete_stream_state(conn: Connection, dataflow_id: int) -> dict[str, int]:
    """A stream dataflow's offsets, staged files and status go with it (SQLite does not cascade); how many
    partial files (and staged bytes) were dropped. Its staging directory goes with the next reconcile of
    stream dataflows (``StreamIngest``), which removes those of dataflows that are gone."""
    from datamill.db.models import StreamChunk, StreamFile, StreamOffset, StreamStatus

    dropped = conn.execute(
        select(func.count(StreamFile.id), func.coalesce(func.sum(StreamFile.bytes_staged), 0)).where(
            StreamFile.dataflow_id == dataflow_id, StreamFile.state == "partial", StreamFile.chunks_staged > 0
        )
    ).one()
    files = select(StreamFile.id).where(StreamFile.dataflow_id == dataflow_id)
    conn.execute(delete(StreamChunk).where(StreamChunk.file_id.in_(files)))
    for model in (StreamFile, StreamOffset, StreamStatus):
        conn.execute(delete(model).where(model.dataflow_id == dataflow_id))
    return {"dropped_partial_files": int(dropped[0]), "dropped_bytes": int(dropped[1])}


def _user(conn: Connection, user_id: int | None) -> Actor:
    """The user ``user_id`` as an actor; a missing one is no one in particular (and no admin)."""
    u = conn.execute(select(User.id, User.name, User.is_admin).where(User.id == user_id)).first() if user_id else None
    return Actor(None, "(nobody)") if u is None else Actor(u.id, u.name, u.is_admin)


def _check_owner_may_run(conn: Connection, owner: Actor, pipeline: str, name: str) -> None:
    """Triggers run a dataflow's pipeline as its owner chose it: refuse now what they would refuse."""
    from datamill.engine.registry import HOW_TO, choose
    from datamill.errors import UnknownPipeline

    try:
        choose(conn, owner, pipeline)
    except UnknownPipeline:
        raise UnknownPipeline(
            f"pipeline: dataflow {name!r} runs as its owner {owner.name!r}, who is not a site admin, so its "
            f"pipeline must be a registered name; {HOW_TO}",
            field="pipeline",
        ) from None


class Dataflows:
    """Create, edit, list and switch dataflows; every change is an event."""

    def __init__(
        self, db: Any, allowed_images: tuple[str, ...] | None = None, watch_roots: tuple[str, ...] = ()
    ) -> None:
        self.db = db
        #: glob patterns of the container images a dataflow's pipeline may name (None: no check)
        self.allowed_images = allowed_images
        #: the server directories directory dataflows may watch (resolved; see :func:`parse_watch_roots`)
        self.watch_roots = watch_roots

    def _row(self, conn: Connection, name: str) -> Any:
        row = conn.execute(select(Dataflow).where(Dataflow.name == name)).first()
        if row is None:
            raise NotFound(f"no dataflow {name!r}; list them with `datamill flow ls`", name=name)
        return row

    def _may_see(self, conn: Connection, actor: Actor, row: Any) -> bool:
        if actor.is_admin or row.owner_id == actor.id:
            return True
        cfg = row.config or {}
        return any(
            lookups.readable_folder_id(conn, actor, p) is not None
            for p in (cfg.get("source"), cfg.get("destination"))
            if p
        )

    def _may_edit(self, conn: Connection, actor: Actor, row: Any) -> bool:
        if actor.is_admin or row.owner_id == actor.id:
            return True
        dst = (row.config or {}).get("destination")
        return bool(dst) and level_on(conn, actor, str(dst)) >= Level.ADMIN

    def _visible_row(self, conn: Connection, actor: Actor, name: str, edit: bool = False) -> Any:
        row = self._row(conn, name)
        if not self._may_see(conn, actor, row):
            raise NotFound(f"no dataflow {name!r}; list them with `datamill flow ls`", name=name)
        if edit and not self._may_edit(conn, actor, row):
            raise PermissionDenied(f"only the owner of dataflow {name!r} or an admin of its destination may change it")
        return row

    def _shown(self, conn: Connection, actor: Actor, row: Any) -> DataflowInfo:
        """A dataflow as ``actor`` may see it: a folder they may not read is hidden, and the webhook
        URLs (secrets) are masked unless they may change the dataflow."""
        info = _info(conn, row)
        destination = info.destination
        vis = Visibility(conn, actor)
        sides = [info.source, info.destination]
        vis.load(sides)
        may_change = self._may_edit(conn, actor, row)
        cfg = vis.dataflow_config(
            {"source": info.source, "destination": info.destination, "webhooks": info.webhooks},
            may_change=may_change,
        )
        info = replace(
            info,
            may_change=may_change,
            source=cfg["source"],
            destination=cfg["destination"],
            webhooks=cfg["webhooks"],
            state_reason=vis.text(info.state_reason, sides),
        )
        if info.directory and not actor.is_admin:
            info = replace(info, directory=HIDDEN_DIRECTORY)
        if info.status and cfg["destination"] != destination:
            # Paths of files landed in a folder the caller may not read are not theirs to see.
            err = info.status.get("last_error")
            info = replace(
                info,
                status={**info.status, "last_landed": None, "last_error": err and {**err, "path": None}},
            )
        return info

    def _refuse_cycle(
        self, conn: Connection, actor: Actor, name: str, cfg: Mapping[str, Any], row_id: int | None, starting: bool
    ) -> None:
        """Raise when dataflow ``name`` with ``cfg`` would close a cycle with the running dataflows.

        Dataflows and folders the actor may not see are not named in the message.
        """
        if conn.dialect.name == "postgresql":
            # Two dataflows started at once must not each miss the other: checks take turns.
            conn.execute(sql_text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CYCLE_LOCK})
        rows = conn.execute(select(Dataflow).where(Dataflow.state == DataflowState.RUNNING)).all()
        start = FlowEnds(row_id, name, str(cfg["source"]), str(cfg["destination"]))
        chain = find_cycle(start, [flow_ends(r) for r in rows])
        if chain is None:
            return
        by_id = {r.id: r for r in rows}

        def flow_name(f: FlowEnds) -> str:
            row = by_id.get(f.id) if f.id is not None else None
            if f.name == name or row is None or self._may_see(conn, actor, row):
                return repr(f.name)
            return "a dataflow you cannot see"

        def folder_name(path: str) -> str:
            seen = lookups.readable_folder_id(conn, actor, path) is not None
            return repr(path) if seen else "a folder you cannot see"

        names = [flow_name(f) for f in chain]
        steps = [
            f"{names[i]} writes into {folder_name(chain[i].destination)}, which {names[i + 1]} watches"
            + (f" ({folder_name(chain[i + 1].source)})" if chain[i + 1].source != chain[i].destination else "")
            for i in range(len(chain) - 1)
        ]
        message = (
            f"dataflows would form a cycle: {' → '.join(names)}: {'; '.join(steps)}. Each run would start "
            "another run on its own results, forever. "
            + (
                f"Stop one of the others first, or change the source or destination of {name!r} to break the chain."
                if starting
                else "Choose a destination (or source) outside that chain."
            )
        )
        if starting:
            raise Conflict(f"cannot start dataflow {name!r}: {message}", name=name)
        raise InvalidDataflow(f"destination: {message}", field="destination")

    def create(self, actor: Actor, name: str, config: Mapping[str, Any], check_pipeline: bool = True) -> DataflowInfo:
        """Validate and save a new dataflow (stopped)."""
        name = check_name(name)
        with self.db.write() as conn:
            if conn.execute(select(Dataflow.id).where(Dataflow.name == name)).first():
                raise AlreadyExists(f"a dataflow named {name!r} exists; choose another name", name=name)
            cfg = validate_config(
                conn, actor, config, check_pipeline, allowed_images=self.allowed_images, watch_roots=self.watch_roots
            )
            self._refuse_cycle(conn, actor, name, cfg, None, starting=False)
            now = time.time()
            fid = conn.execute(
                insert(Dataflow)
                .values(
                    name=name,
                    kind=cfg["kind"],
                    state=DataflowState.STOPPED,
                    owner_id=actor.id,
                    version=1,
                    config=cfg,
                    source_folder_id=lookups.folder_id(conn, cfg["source"]),
                    dest_folder_id=lookups.folder_id(conn, cfg["destination"]),
                    cursor=0,
                    created_at=now,
                    updated_at=now,
                )
                .returning(Dataflow.id)
            ).scalar_one()
            conn.execute(
                insert(DataflowVersion).values(
                    dataflow_id=fid, number=1, config=cfg, created_by=actor.id, created_at=now
                )
            )
            events.append(
                conn,
                EventKind.DATAFLOW_CREATED,
                actor_id=actor.id,
                dataflow_id=fid,
                folder_id=lookups.folder_id(conn, cfg["destination"]),
                data={"name": name, "version": 1},
            )
            return self._shown(conn, actor, self._row(conn, name))

    def edit(self, actor: Actor, name: str, changes: Mapping[str, Any], check_pipeline: bool = True) -> DataflowInfo:
        """Apply changes as a new configuration version; runs already recorded keep theirs."""
        with self.db.write() as conn:
            row = self._visible_row(conn, actor, name, edit=True)
            for key in ("source", "destination"):
                kept = (row.config or {}).get(key)
                if changes.get(key) is None and kept and level_on(conn, actor, str(kept)) < Level.READ:
                    # Validation would name the kept folder in its error: refuse without naming it.
                    raise PermissionDenied(
                        f"{key}: you may not read the {key} of dataflow {name!r}, so you cannot change it "
                        f"without giving a new {key}; ask its owner",
                        field=key,
                    )
            merged = {**dict(row.config or {}), **{k: v for k, v in changes.items() if v is not None}}
            # A new implementation replaces the other kind: a pipeline for an image, or the reverse.
            if changes.get("image"):
                merged["pipeline"] = "" if not changes.get("pipeline") else merged["pipeline"]
            elif changes.get("pipeline"):
                merged.pop("image", None)
            _keep_password(merged, row.config or {})
            owner = _user(conn, row.owner_id)
            chosen = merged.get("pipeline") != (row.config or {}).get("pipeline")
            # Whoever changes the pipeline chooses it; an unchanged one stays the owner's choice.
            cfg = validate_config(
                conn,
                actor,
                merged,
                check_pipeline,
                chooser=actor if chosen else owner,
                allowed_images=self.allowed_images,
                watch_roots=self.watch_roots,
            )
            if chosen and owner != actor and cfg["pipeline"]:
                _check_owner_may_run(conn, owner, cfg["pipeline"], name)
            if cfg == row.config:
                return self._shown(conn, actor, row)
            self._refuse_cycle(conn, actor, name, cfg, row.id, starting=False)
            number = row.version + 1
            now = time.time()
            conn.execute(
                insert(DataflowVersion).values(
                    dataflow_id=row.id, number=number, config=cfg, created_by=actor.id, created_at=now
                )
            )
            conn.execute(
                update(Dataflow)
                .where(Dataflow.id == row.id)
                .values(
                    version=number,
                    config=cfg,
                    updated_at=now,
                    source_folder_id=lookups.folder_id(conn, cfg["source"]),
                    dest_folder_id=lookups.folder_id(conn, cfg["destination"]),
                    next_fire_at=None,
                )
            )
            events.append(
                conn,
                EventKind.DATAFLOW_UPDATED,
                actor_id=actor.id,
                dataflow_id=row.id,
                folder_id=lookups.folder_id(conn, cfg["destination"]),
                data={
                    "name": name,
                    "version": number,
                    "changed": sorted(k for k in cfg if cfg[k] != row.config.get(k)),
                },
            )
            return self._shown(conn, actor, self._row(conn, name))

    def get(self, actor: Actor, name: str) -> DataflowInfo:
        """One dataflow."""
        with self.db.read() as conn:
            return self._shown(conn, actor, self._visible_row(conn, actor, name))

    def all(self, actor: Actor) -> list[DataflowInfo]:
        """The dataflows the actor may see, by name."""
        with self.db.read() as conn:
            rows = conn.execute(select(Dataflow).order_by(Dataflow.name)).all()
            return [self._shown(conn, actor, r) for r in rows if self._may_see(conn, actor, r)]

    def history(self, actor: Actor, name: str) -> list[DataflowVersionInfo]:
        """Every configuration version, oldest first, with the runs made under it."""
        with self.db.read() as conn:
            row = self._visible_row(conn, actor, name)
            versions = conn.execute(
                select(DataflowVersion).where(DataflowVersion.dataflow_id == row.id).order_by(DataflowVersion.number)
            ).all()
            runs = conn.execute(
                select(Run.id, Run.dataflow_version, Run.status, Run.requested_at)
                .where(Run.dataflow_id == row.id)
                .order_by(Run.id)
            ).all()
            out = []
            vis = Visibility(conn, actor)
            vis.load(p for v in versions for p in ((v.config or {}).get("source"), (v.config or {}).get("destination")))
            may_change = self._may_edit(conn, actor, row)
            for v in versions:
                shown = vis.dataflow_config(dict(v.config or {}), may_change)
                if shown.get("directory") and not actor.is_admin:
                    shown["directory"] = HIDDEN_DIRECTORY
                by = conn.execute(select(User.name).where(User.id == v.created_by)).scalar() if v.created_by else None
                out.append(
                    DataflowVersionInfo(
                        version=v.number,
                        config={
                            **shown,
                            **(
                                {"broker": mask_broker(v.config.get("broker"))}
                                if (v.config or {}).get("broker")
                                else {}
                            ),
                        },
                        created_at=v.created_at,
                        created_by=by,
                        runs=[
                            VersionRun(id=r.id, status=r.status, requested_at=r.requested_at)
                            for r in runs
                            if r.dataflow_version == v.number
                        ],
                    )
                )
            return out

    def set_state(self, actor: Actor, name: str, state: str, reason: str | None = None) -> DataflowInfo:
        """Switch a dataflow to running or stopped (or failed, by the trigger service)."""
        if state not in STATES:
            raise InvalidDataflow(f"state {state!r} is not one of {', '.join(STATES)}")
        with self.db.write() as conn:
            row = self._visible_row(conn, actor, name, edit=True)
            if row.state == state and state != DataflowState.FAILED:
                return self._shown(conn, actor, row)
            values: dict[str, Any] = {"state": state, "state_reason": reason, "updated_at": time.time()}
            if state == DataflowState.RUNNING and row.state != DataflowState.RUNNING:
                self._refuse_cycle(conn, actor, name, dict(row.config or {}), row.id, starting=True)
                # Start from the newest event: items already there are found by the backfill,
                # which looks for items without a result for the current configuration.
                values["cursor"] = events.latest_seq(conn)
                values["backfilled_version"] = None
                values["next_fire_at"] = None
            conn.execute(update(Dataflow).where(Dataflow.id == row.id).values(**values))
            events.append(
                conn,
                _STATE_EVENTS[DataflowState(state)],
                actor_id=actor.id,
                dataflow_id=row.id,
                folder_id=row.dest_folder_id,
                data={"name": name, "reason": reason},
            )
            return self._shown(conn, actor, self._row(conn, name))

    def delete(self, actor: Actor, name: str) -> None:
        """Remove a stopped dataflow (its runs and results stay)."""
        with self.db.write() as conn:
            row = self._visible_row(conn, actor, name, edit=True)
            if row.state == DataflowState.RUNNING:
                raise Conflict(f"dataflow {name!r} is running; stop it first with `datamill flow stop {name}`")
            conn.execute(delete(DataflowVersion).where(DataflowVersion.dataflow_id == row.id))
            dropped = _delete_stream_state(conn, row.id)
            conn.execute(delete(Dataflow).where(Dataflow.id == row.id))
            events.append(
                conn,
                EventKind.DATAFLOW_DELETED,
                actor_id=actor.id,
                dataflow_id=row.id,
                folder_id=row.dest_folder_id,
                data={"name": name, **(dropped if row.kind == DataflowKind.STREAM else {})},
            )

    def version_config(self, conn: Connection, dataflow_id: int, number: int) -> dict[str, Any]:
        """The configuration of one version."""
        cfg = conn.execute(
            select(DataflowVersion.config).where(
                DataflowVersion.dataflow_id == dataflow_id, DataflowVersion.number == number
            )
        ).scalar()
        if cfg is None:
            raise NotFound(f"dataflow {dataflow_id} has no version {number}")
        return dict(cfg)


def follow_folder_move(conn: Connection, actor_id: int, old: str, new: str) -> list[str]:
    """Rewrite the folder paths of the dataflows whose source or destination is ``old`` or below it.

    Called in the transaction that moves the folder (:data:`datamill.hooks.folder_moved`). A
    dataflow keeps working on the folders it was made for: without this its runs would name a
    path that no longer exists, or — once someone makes a new folder there — a folder that is not
    the one its owner chose. Each change is a new configuration version made by the mover, with a
    ``dataflow.updated`` event; runs already recorded keep theirs. Returns the dataflows changed.
    """

    def moved(path: object) -> str | None:
        if not isinstance(path, str) or not path:
            return None
        if path == old:
            return new
        return new + path[len(old) :] if path.startswith(old + "/") else None

    changed_names: list[str] = []
    now = time.time()
    for row in conn.execute(select(Dataflow).order_by(Dataflow.id)).all():
        cfg = dict(row.config or {})
        keys = [k for k in ("source", "destination") if moved(cfg.get(k)) is not None]
        if not keys:
            continue
        for key in keys:
            cfg[key] = moved(cfg[key])
        number = row.version + 1
        conn.execute(
            insert(DataflowVersion).values(
                dataflow_id=row.id, number=number, config=cfg, created_by=actor_id, created_at=now
            )
        )
        conn.execute(update(Dataflow).where(Dataflow.id == row.id).values(version=number, config=cfg, updated_at=now))
        events.append(
            conn,
            EventKind.DATAFLOW_UPDATED,
            actor_id=actor_id,
            dataflow_id=row.id,
            folder_id=row.dest_folder_id,
            data={"name": row.name, "version": number, "changed": sorted(keys), "reason": "folder moved"},
        )
        changed_names.append(row.name)
    return changed_names
