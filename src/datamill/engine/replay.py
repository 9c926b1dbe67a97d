"""Replays: an unchanged re-run recorded as a copy of the earlier run it repeats, in a few statements.

A run's plan depends only on the pipeline's steps (code, parameters, wiring, publishing rules,
image digests), on the exact input versions, and on the cache's answers for its keys. The first
two are hashed into the run's *plan identity* (``runs.plan_digest``, :func:`plan_identity`). When
a new run has the identity of an earlier run whose every task succeeded or was cached, and the
cache would still give the answers that run got, its plan is that run's plan with every task
cached: the same task ids, keys, outputs and item inputs. So it is recorded by copying the
earlier run's rows inside the database (``INSERT ... SELECT``), with its ``task.queued`` and
``task.finished`` events made there too, instead of planning 20,000 keys in Python, looking
them up, and sending 100,000 rows back.

What must still hold, checked with set-based queries in the transaction that records the copy
(:func:`replayable`):

* every task of the earlier run is ``succeeded`` or ``cached``, with a key;
* each task's answer (the task it was cached from, or itself) still exists, succeeded, and is the
  newest succeeded task of its key: the cache would answer the same;
* with a destination, every output the earlier run published (or referenced) is still the current
  version of its item, directly in the destination folder, and no output it should have published
  was left unpublished (superseded by a newer run).

When any of that fails, the run is planned as usual. Steps whose answers a copy cannot repeat are
never replayed: a step declared ``force=True`` or ``cache=False`` (it always runs), HTTP app steps
(their app's version is asked at plan time) and Dagster steps (their provenance output decides
what is published).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import blake3
from sqlalchemy import Connection, text

from datamill import events
from datamill.canonical import canonical_json
from datamill.engine.keys import canonical_params
from datamill.engine.params import RunParams
from datamill.pipeline.inputs import InputRef
from datamill.pipeline.pipeline import Pipeline

__all__ = ["IDENTITY_SCHEMA", "can_replay", "copy_tasks", "find_earlier", "plan_identity", "replayable", "task_count"]

#: Bumped when what the identity covers changes, so that an old identity never matches a new one.
IDENTITY_SCHEMA = 1


def can_replay(pipeline: Pipeline) -> bool:
    """Whether runs of ``pipeline`` may be recorded as copies at all (see the module's notes)."""
    return all(s.cache and not s.force and s.kind not in ("http", "dagster") for s in pipeline.steps)


def plan_identity(
    pipeline: Pipeline,
    inputs: Sequence[InputRef],
    params: Mapping[str, Mapping[str, Any]],
    images: Mapping[str, str],
    source: str | None,
    dest_folder_id: int | None,
    run_params: RunParams | None = None,
) -> str:
    """The hash of everything a run's plan and its recorded rows depend on, besides the cache.

    Steps in order with their identity (code, resolved parameters, image digest), wiring, retries
    and publishing rules; the pipeline's name (part of published names); the exact input versions
    (``inputs``, in canonical order: :func:`~datamill.engine.planner.canonical_inputs`); the source
    (outputs mirror its subfolders) and the destination folder's id. With ``run_params`` (``params``
    resolved and encoded already), the steps' parameters are hashed from their canonical JSON made
    there: the same bytes, not encoded again.

    Raises:
        InvalidPipeline: a parameter has no canonical form (as planning would).
    """
    steps = []
    texts: list[str] = []
    # Where a step's encoded parameters go: a string no step's fields can hold (a new nonce each time).
    marker = f"\0{secrets.token_hex(16)}:"
    for s in pipeline.steps:
        step_params: Any
        if run_params is not None:
            step_params = f"{marker}{len(texts)}"
            texts.append(run_params.encoder.canonical_text(run_params.resolved[s.name]))
        else:
            step_params = canonical_params(s.name, s.resolve_params(params.get(s.name)))
        steps.append(
            {
                "name": s.name,
                "kind": s.kind,
                "code": s.code,
                "params": step_params,
                "args": [[a.name, str(a.role.value), a.source] for a in s.args],
                "per_item": pipeline.per_item(s.name),
                "publish": s.publish if isinstance(s.publish, bool) else list(s.publish),
                "template": s.name_template,
                "codec": s.codec,
                "retries": s.retries,
                "image": images.get(s.image) if s.image else None,
            }
        )
    head = canonical_json(
        {"v": IDENTITY_SCHEMA, "pipeline": pipeline.name, "steps": steps, "source": source, "dest": dest_folder_id}
    )
    h = blake3.blake3()
    for i, step_text in enumerate(texts):  # the head with each marker replaced by its step's parameters
        before, found, head = head.partition(json.dumps(f"{marker}{i}", ensure_ascii=False))
        assert found, i
        h.update(before.encode("utf-8"))
        h.update(step_text.encode("utf-8"))
    h.update(head.encode("utf-8"))
    # One line per input, no JSON per input (10,000 inputs: ~10 ms).
    h.update("".join([f"\n{r.folder.strip('/')}\0{r.name}\0{r.version_id}\0{r.digest}" for r in inputs]).encode())
    return "plan:" + h.hexdigest()


def find_earlier(conn: Connection, identity: str) -> int | None:
    """The newest succeeded run with plan identity ``identity``, or None."""
    found = conn.execute(_FIND_EARLIER, {"d": identity}).scalar()
    return None if found is None else int(found)


#: built once: every run a trigger records asks it
_FIND_EARLIER = text("SELECT max(id) FROM runs WHERE plan_digest = :d AND status = 'succeeded'")


_TASKS_OK = text(
    """
    SELECT count(*) FROM tasks t
    LEFT JOIN tasks a ON a.id = COALESCE(t.cached_from, t.id)
    WHERE t.run_id = :r AND (
        t.status NOT IN ('succeeded', 'cached') OR t.key IS NULL
        OR a.id IS NULL OR a.status != 'succeeded' OR a.key IS NULL OR a.key != t.key
        OR EXISTS (
            SELECT 1 FROM tasks x
            WHERE x.key = t.key AND x.status = 'succeeded' AND x.id != a.id
              AND (x.finished_at > a.finished_at OR (x.finished_at = a.finished_at AND x.id > a.id))
        )
    )
    """
)

_PUBLISHED_GONE = text(
    """
    SELECT count(*) FROM task_outputs o
    JOIN tasks t ON t.id = o.task_id
    LEFT JOIN versions v ON v.id = o.version_id
    LEFT JOIN items i ON i.id = v.item_id
    WHERE t.run_id = :r AND o.version_id IS NOT NULL
      AND (i.id IS NULL OR i.current_version != v.number OR i.folder_id != :dest)
    """
)

_UNPUBLISHED = text(
    """
    SELECT DISTINCT t.step, o.name FROM task_outputs o
    JOIN tasks t ON t.id = o.task_id
    WHERE t.run_id = :r AND o.version_id IS NULL
    """
)

_LOCK_PUBLISHED = text(
    """
    SELECT i.id FROM items i
    WHERE i.id IN (
        SELECT v.item_id FROM versions v
        JOIN task_outputs o ON o.version_id = v.id
        JOIN tasks t ON t.id = o.task_id
        WHERE t.run_id = :r
    )
    ORDER BY i.id FOR UPDATE
    """
)


def replayable(
    conn: Connection, earlier: int, pipeline: Pipeline, dest_folder_id: int | None, *, lock: bool = False
) -> bool:
    """Whether run ``earlier`` may be copied now: the cache and the destination would answer as they did.

    With ``lock`` (in the write transaction that copies it) on PostgreSQL, the destination items it
    published are locked first (``FOR UPDATE``, in id order), so that what is checked stays true until
    the transaction commits, as
    :meth:`~datamill.engine.publish.Publisher.current_at` does for a planned run.
    """
    if conn.execute(_TASKS_OK, {"r": earlier}).scalar():
        return False
    if dest_folder_id is None:
        return True
    if lock and conn.dialect.name == "postgresql":
        conn.execute(_LOCK_PUBLISHED, {"r": earlier}).all()
    if conn.execute(_PUBLISHED_GONE, {"r": earlier, "dest": dest_folder_id}).scalar():
        return False
    # An output recorded without a version although its step publishes it: the earlier run was
    # superseded there, and this one (newer) would publish it.
    for step, name in conn.execute(_UNPUBLISHED, {"r": earlier}).tuples():
        if step not in pipeline or pipeline.step(step).publishes(name):
            return False
    return True


_COPY_TASKS = text(
    """
    INSERT INTO tasks (run_id, planned_id, step, step_code, key, status, attempts, max_attempts, progress,
                       message, item_version_id, item_name, deps, params_digest, queued_at, finished_at, cached_from)
    SELECT :run, planned_id, step, step_code, key, 'cached', 0, max_attempts, 1.0,
           '', item_version_id, item_name, deps, params_digest, :now, :now, COALESCE(cached_from, id)
    FROM tasks WHERE run_id = :r ORDER BY id
    """
)

_COPY_INPUTS = text(
    """
    INSERT INTO task_inputs (task_id, param, digest, version_id)
    SELECT n.id, i.param, i.digest, i.version_id
    FROM task_inputs i
    JOIN tasks o ON o.id = i.task_id
    JOIN tasks n ON n.run_id = :run AND n.planned_id = o.planned_id
    WHERE o.run_id = :r AND i.param = 'item' AND i.upstream_task_id IS NULL
    ORDER BY n.id, i.id
    """
)

_COPY_OUTPUTS = text(
    """
    INSERT INTO task_outputs (task_id, name, digest, size, content_type, codec, inline, version_id)
    SELECT n.id, o.name, o.digest, o.size, o.content_type, o.codec, o.inline, o.version_id
    FROM task_outputs o
    JOIN tasks ot ON ot.id = o.task_id
    JOIN tasks n ON n.run_id = :run AND n.planned_id = ot.planned_id
    WHERE ot.run_id = :r
    ORDER BY n.id, o.id
    """
)

#: the events a scheduler would append for the copied tasks: every ``task.queued``, then every
#: ``task.finished`` (status cached), in task order, with the data :func:`runs.create_run` gives them
_EVENTS = {
    "sqlite": (
        "json_object('step', t.step, 'planned_id', t.planned_id)",
        """json_object('status', 'cached', 'error', NULL, 'outputs', json(COALESCE((
               SELECT json_group_array(json_object('name', x.name, 'digest', x.digest, 'size', x.size))
               FROM (SELECT o.name, o.digest, o.size FROM task_outputs o WHERE o.task_id = t.id ORDER BY o.id) x
           ), '[]')), 'cached_from', t.cached_from)""",
    ),
    "postgresql": (
        "jsonb_build_object('step', t.step, 'planned_id', t.planned_id)",
        """jsonb_build_object('status', 'cached', 'error', NULL, 'outputs', COALESCE((
               SELECT jsonb_agg(jsonb_build_object('name', o.name, 'digest', o.digest, 'size', o.size) ORDER BY o.id)
               FROM task_outputs o WHERE o.task_id = t.id
           ), '[]'::jsonb), 'cached_from', t.cached_from)""",
    ),
}


def _events_sql(dialect: str, kind: str, data: str) -> Any:
    return text(
        f"""
        INSERT INTO events (ts, kind, actor_id, folder_id, item_id, run_id, task_id, dataflow_id, data)
        SELECT :now, '{kind}', NULL, :folder, NULL, :run, t.id, NULL, {data}
        FROM tasks t WHERE t.run_id = :run ORDER BY t.id
        """
    )


def copy_tasks(conn: Connection, earlier: int, run_id: int, folder_id: int | None, now: float) -> int:
    """Record run ``earlier``'s tasks as tasks of ``run_id``, every one cached, with their events.

    The caller appended ``run.queued`` already, in this transaction (on PostgreSQL that took the
    event log's lock, so the events made here get their ``seq`` in commit order). Returns how many
    tasks were copied.
    """
    n = conn.execute(_COPY_TASKS, {"run": run_id, "r": earlier, "now": now}).rowcount
    conn.execute(_COPY_INPUTS, {"run": run_id, "r": earlier})
    conn.execute(_COPY_OUTPUTS, {"run": run_id, "r": earlier})
    queued, finished = _EVENTS["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
    params = {"run": run_id, "folder": folder_id, "now": now}
    conn.execute(_events_sql(conn.dialect.name, "task.queued", queued), params)
    conn.execute(_events_sql(conn.dialect.name, "task.finished", finished), params)
    events.wrote(conn, events.UNKNOWN_SEQ)  # seqs this process's waiters must read
    return int(n)


def task_count(conn: Connection, run_id: int) -> int:
    """How many tasks run ``run_id`` has."""
    return int(conn.execute(text("SELECT count(*) FROM tasks WHERE run_id = :r"), {"r": run_id}).scalar_one())
