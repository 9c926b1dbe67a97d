"""The Dataflow object: name, description, kind, folders, implementation, parameters, trigger, state.

Configuration is versioned: every edit writes a new immutable :class:`DataflowVersion` row and
bumps ``dataflows.version``; runs record the version they used. Validation happens before
anything is saved: the folders exist and the user may read the source and write the destination,
the pipeline reference imports, the cron expression parses, and the destination is not inside the
source (a dataflow would otherwise feed on its own results).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from datamill import events
from datamill.db.models import Dataflow, DataflowVersion, Folder, Run, User
from datamill.errors import AlreadyExists, Conflict, InvalidDataflow, NotFound, PermissionDenied
from datamill.store.access import Actor, Level, level_on
from datamill.store.names import split_path

KINDS = ("workflow", "stream")
STATES = ("stopped", "running", "failed")
CONFIG_KEYS = (
    "description",
    "kind",
    "source",
    "destination",
    "topic",
    "pipeline",
    "params",
    "trigger",
    "webhooks",
    "batch_window_ms",
)


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


@dataclass
class DataflowInfo:
    """A dataflow as callers see it."""

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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return dict(self.__dict__)


def _info(conn: Connection, row: Any) -> DataflowInfo:
    cfg = dict(row.config or {})
    owner = conn.execute(select(User.name).where(User.id == row.owner_id)).scalar() if row.owner_id else None
    trig = cfg.get("trigger", "manual")
    fires: list[float] = []
    if str(trig).startswith("cron:") and row.state == "running":
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
        params=dict(cfg.get("params") or {}),
        trigger=str(trig),
        webhooks=list(cfg.get("webhooks") or []),
        batch_window_ms=cfg.get("batch_window_ms"),
        cursor=row.cursor,
        created_at=row.created_at,
        updated_at=row.updated_at,
        next_fire_times=fires,
    )


def check_name(name: str) -> str:
    """Dataflow names: 1-100 letters, digits, ``-``, ``_``, ``.``, starting with a letter or digit."""
    ok = 0 < len(name) <= 100 and name[0].isalnum() and all(c.isalnum() or c in "-_." for c in name)
    if not ok:
        raise InvalidDataflow(
            f"name: {name!r} is not allowed; use 1-100 letters, digits, '-', '_' or '.'", field="name"
        )
    return name


def validate_config(
    conn: Connection, actor: Actor, cfg: Mapping[str, Any], check_pipeline: bool = True
) -> dict[str, Any]:
    """Check a full configuration and return it normalised; raise :class:`InvalidDataflow` naming the field."""
    unknown = sorted(set(cfg) - set(CONFIG_KEYS))
    if unknown:
        raise InvalidDataflow(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(CONFIG_KEYS)}")
    out: dict[str, Any] = {k: cfg.get(k) for k in CONFIG_KEYS}
    out["description"] = str(cfg.get("description") or "")
    kind = cfg.get("kind") or "workflow"
    if kind not in KINDS:
        raise InvalidDataflow(f"kind: {kind!r} is not a kind; use workflow or stream", field="kind")
    if kind == "stream":
        raise InvalidDataflow("kind: stream dataflows (Kafka ingest) are not available yet; use workflow", field="kind")
    out["kind"] = kind
    for key, needed in (("source", Level.READ), ("destination", Level.WRITE)):
        path = cfg.get(key)
        if not path:
            raise InvalidDataflow(f"{key}: a {key} folder is required", field=key)
        norm = "/".join(split_path(str(path)))
        if not norm or not conn.execute(select(Folder.id).where(Folder.path == norm)).first():
            raise InvalidDataflow(
                f"{key}: folder {norm!r} does not exist (or you may not see it); create it first", field=key
            )
        have = level_on(conn, actor, norm)
        if have < needed:
            if have < Level.READ:
                raise InvalidDataflow(
                    f"{key}: folder {norm!r} does not exist (or you may not see it); create it first", field=key
                )
            raise PermissionDenied(
                f"{key}: you need {needed.name.lower()} access on {norm!r} to use it as the {key}", field=key
            )
        out[key] = norm
    src, dst = out["source"], out["destination"]
    if dst == src or dst.startswith(src + "/"):
        raise InvalidDataflow(
            f"destination: {dst!r} lies inside the source {src!r}; the dataflow would process its own results. "
            "Choose a destination outside the source.",
            field="destination",
        )
    pipeline = str(cfg.get("pipeline") or "")
    if not pipeline:
        raise InvalidDataflow("pipeline: a pipeline reference is required (module:attr, file.py:attr or file.yaml)")
    out["pipeline"] = pipeline
    params = cfg.get("params") or {}
    if not isinstance(params, Mapping):
        raise InvalidDataflow("params: must be a mapping of step parameters", field="params")
    out["params"] = dict(params)
    if check_pipeline:
        _check_pipeline(pipeline, out["params"])
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


def _check_pipeline(ref: str, params: Mapping[str, Any]) -> None:
    """The pipeline imports, and parameters name real steps and parameters with the right types."""
    from datamill.errors import DatamillError
    from datamill.pipeline import load_pipeline

    try:
        pipeline = load_pipeline(ref)
    except DatamillError as exc:
        raise InvalidDataflow(f"pipeline: {exc.message}", field="pipeline") from exc
    except Exception as exc:  # an import error in user code
        raise InvalidDataflow(f"pipeline: {ref!r} does not import: {type(exc).__name__}: {exc}") from exc
    from datamill.engine.params import split_params

    try:
        split_params(pipeline, params)
    except DatamillError as exc:
        raise InvalidDataflow(f"params: {exc.message}", field="params") from exc


class Dataflows:
    """Create, edit, list and switch dataflows; every change is an event."""

    def __init__(self, db: Any) -> None:
        self.db = db

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
            conn.execute(select(Folder.id).where(Folder.path == p)).first() and level_on(conn, actor, p) >= Level.READ
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

    def _folder_id(self, conn: Connection, path: str) -> int | None:
        return conn.execute(select(Folder.id).where(Folder.path == path)).scalar()

    def create(self, actor: Actor, name: str, config: Mapping[str, Any], check_pipeline: bool = True) -> DataflowInfo:
        """Validate and save a new dataflow (stopped)."""
        name = check_name(name)
        with self.db.write() as conn:
            if conn.execute(select(Dataflow.id).where(Dataflow.name == name)).first():
                raise AlreadyExists(f"a dataflow named {name!r} exists; choose another name", name=name)
            cfg = validate_config(conn, actor, config, check_pipeline)
            now = time.time()
            fid = conn.execute(
                insert(Dataflow)
                .values(
                    name=name,
                    kind=cfg["kind"],
                    state="stopped",
                    owner_id=actor.id,
                    version=1,
                    config=cfg,
                    source_folder_id=self._folder_id(conn, cfg["source"]),
                    dest_folder_id=self._folder_id(conn, cfg["destination"]),
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
                "dataflow.created",
                actor_id=actor.id,
                dataflow_id=fid,
                folder_id=self._folder_id(conn, cfg["destination"]),
                data={"name": name, "version": 1},
            )
            return _info(conn, self._row(conn, name))

    def edit(self, actor: Actor, name: str, changes: Mapping[str, Any], check_pipeline: bool = True) -> DataflowInfo:
        """Apply changes as a new configuration version; runs already recorded keep theirs."""
        with self.db.write() as conn:
            row = self._visible_row(conn, actor, name, edit=True)
            merged = {**dict(row.config or {}), **{k: v for k, v in changes.items() if v is not None}}
            cfg = validate_config(conn, actor, merged, check_pipeline)
            if cfg == row.config:
                return _info(conn, row)
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
                    source_folder_id=self._folder_id(conn, cfg["source"]),
                    dest_folder_id=self._folder_id(conn, cfg["destination"]),
                    next_fire_at=None,
                )
            )
            events.append(
                conn,
                "dataflow.updated",
                actor_id=actor.id,
                dataflow_id=row.id,
                folder_id=self._folder_id(conn, cfg["destination"]),
                data={
                    "name": name,
                    "version": number,
                    "changed": sorted(k for k in cfg if cfg[k] != row.config.get(k)),
                },
            )
            return _info(conn, self._row(conn, name))

    def get(self, actor: Actor, name: str) -> DataflowInfo:
        """One dataflow."""
        with self.db.read() as conn:
            return _info(conn, self._visible_row(conn, actor, name))

    def all(self, actor: Actor) -> list[DataflowInfo]:
        """The dataflows the actor may see, by name."""
        with self.db.read() as conn:
            rows = conn.execute(select(Dataflow).order_by(Dataflow.name)).all()
            return [_info(conn, r) for r in rows if self._may_see(conn, actor, r)]

    def history(self, actor: Actor, name: str) -> list[dict[str, Any]]:
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
            for v in versions:
                by = conn.execute(select(User.name).where(User.id == v.created_by)).scalar() if v.created_by else None
                out.append(
                    {
                        "version": v.number,
                        "config": v.config,
                        "created_at": v.created_at,
                        "created_by": by,
                        "runs": [
                            {"id": r.id, "status": r.status, "requested_at": r.requested_at}
                            for r in runs
                            if r.dataflow_version == v.number
                        ],
                    }
                )
            return out

    def set_state(self, actor: Actor, name: str, state: str, reason: str | None = None) -> DataflowInfo:
        """Switch a dataflow to running or stopped (or failed, by the trigger service)."""
        if state not in STATES:
            raise InvalidDataflow(f"state {state!r} is not one of {', '.join(STATES)}")
        with self.db.write() as conn:
            row = self._visible_row(conn, actor, name, edit=True)
            if row.state == state and state != "failed":
                return _info(conn, row)
            values: dict[str, Any] = {"state": state, "state_reason": reason, "updated_at": time.time()}
            if state == "running" and row.state != "running":
                # Start from the newest event: items already there are found by the backfill,
                # which looks for items without a result for the current configuration.
                values["cursor"] = events.latest_seq(conn)
                values["backfilled_version"] = None
                values["next_fire_at"] = None
            conn.execute(update(Dataflow).where(Dataflow.id == row.id).values(**values))
            kind = {"running": "dataflow.started", "stopped": "dataflow.stopped", "failed": "dataflow.failed"}[state]
            events.append(
                conn,
                kind,
                actor_id=actor.id,
                dataflow_id=row.id,
                folder_id=row.dest_folder_id,
                data={"name": name, "reason": reason},
            )
            return _info(conn, self._row(conn, name))

    def delete(self, actor: Actor, name: str) -> None:
        """Remove a stopped dataflow (its runs and results stay)."""
        with self.db.write() as conn:
            row = self._visible_row(conn, actor, name, edit=True)
            if row.state == "running":
                raise Conflict(f"dataflow {name!r} is running; stop it first with `datamill flow stop {name}`")
            conn.execute(delete(DataflowVersion).where(DataflowVersion.dataflow_id == row.id))
            conn.execute(delete(Dataflow).where(Dataflow.id == row.id))
            events.append(
                conn,
                "dataflow.deleted",
                actor_id=actor.id,
                dataflow_id=row.id,
                folder_id=row.dest_folder_id,
                data={"name": name},
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
