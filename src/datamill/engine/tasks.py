"""Tasks as records: claims, ends, retries and progress, each a row update plus an event in one transaction.

The functions here take an open write connection, so the scheduler can batch many transitions
into one transaction (that is what makes thousands of recorded tasks per second possible on
SQLite). A task belongs to a run (see :mod:`datamill.engine.runs`); who holds a running task is
in :mod:`datamill.engine.leases`.
"""

from __future__ import annotations

import json
import operator
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import orjson
from sqlalchemy import Connection, and_, bindparam, func, insert, or_, select, update

from datamill import events
from datamill.db.models import Task, TaskInput, TaskOutput
from datamill.engine import paramsets
from datamill.records import DONE_OK, TaskStatus
from datamill.records import FINISHED_TASK as FINISHED_TASK  # the engine reads tasks.FINISHED_TASK

#: ``tasks.failure`` of a task whose step raised or exited non-zero after its retries: the same
#: key fails again, so runs made by triggers do not run it again (see :func:`failed_earlier`).
STEP_FAILURE = "step"


@dataclass(frozen=True)
class NewTask:
    """A planned task to record when its run is created."""

    planned_id: str
    step: str
    step_code: str
    key: str | None
    deps: Sequence[str]
    params: Mapping[str, Any]
    max_attempts: int = 1
    item_version_id: int | None = None
    item_name: str | None = None
    item_digest: str | None = None
    #: a task answered from the cache when its run is recorded: the task that made its outputs
    cached_from: int | None = None
    #: the outputs of a task recorded as cached (with ``cached_from``)
    outputs: Sequence[OutputRecord] = ()


@dataclass(frozen=True)
class OutputRecord:
    """One output of a task as stored: inline bytes for small outputs, else a blob digest."""

    name: str
    digest: str
    size: int
    content_type: str
    codec: str
    inline: bytes | None = None
    version_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (without inline bytes)."""
        return {
            "name": self.name,
            "digest": self.digest,
            "size": self.size,
            "content_type": self.content_type,
            "codec": self.codec,
            "version_id": self.version_id,
        }


@dataclass
class TaskRow:
    """A task as the engine reads it."""

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
    #: the row of ``params`` its parameters are (:mod:`datamill.engine.paramsets`); None: it has none
    params_digest: str | None
    queued_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    traceback: str | None
    log_digest: str | None
    cached_from: int | None
    executor: str | None
    not_before: float | None = None
    #: why it failed (``step``, ``timeout``, ``input``, ``publish``, ...), for failed tasks
    failure: str | None = None
    #: how it ended, when that needs saying: "failed earlier (see run 3)", "superseded by run 9: ..."
    note: str | None = None
    #: its parameters, read from ``params`` (the tasks of a step share the one dict: read, never changed)
    params: dict[str, Any] = field(default_factory=dict)
    outputs: list[OutputRecord] = field(default_factory=list)
    #: the scheduler's note that the cache had nothing for its key (not stored, not shown)
    cache_missed: bool = False
    #: the scheduler's note that it worked ``key`` out itself (the row has none yet): the task's
    #: end writes it; other ends leave the indexed key column out of their UPDATE
    new_key: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        d = {k: v for k, v in self.__dict__.items() if k not in ("outputs", "cache_missed", "new_key", "params_digest")}
        d["outputs"] = [o.to_dict() for o in self.outputs]
        return d


def task_row(r: Any, params: Mapping[str, dict[str, Any]]) -> TaskRow:
    """A task row as read from the ``tasks`` table (without its outputs); ``params`` is what
    :func:`~datamill.engine.paramsets.load` read for it (and maybe others)."""
    return TaskRow(
        id=r.id,
        run_id=r.run_id,
        planned_id=r.planned_id,
        step=r.step,
        step_code=r.step_code,
        key=r.key,
        status=r.status,
        attempts=r.attempts,
        max_attempts=r.max_attempts,
        progress=r.progress,
        message=r.message,
        item_version_id=r.item_version_id,
        item_name=r.item_name,
        deps=list(r.deps or []),
        params_digest=r.params_digest,
        params=paramsets.params_of(params, r.params_digest),
        queued_at=r.queued_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
        error=r.error,
        traceback=r.traceback,
        log_digest=r.log_digest,
        cached_from=r.cached_from,
        executor=r.executor,
        not_before=r.not_before,
        failure=r.failure,
        note=r.note,
    )


#: Ids per statement of :func:`claim_tasks` and :func:`unfinished` (SQLite allows 32,766 variables).
IDS_PER_STATEMENT = 500


#: Rows per statement of the SQLite multi-row statements below (11 values a row at most: far
#: below SQLite's 32,766 variables).
ROWS_PER_STATEMENT = 500


def _one_step(conn: Connection) -> bool:
    """Whether batches go to the database as one statement each, returning one row (SQLite).

    Python's sqlite3 gives the GIL up for every step of a statement (every row executed or read):
    from the database thread of a scheduler whose event loop runs tasks meanwhile, each of those
    was a turn of the GIL, and an ``executemany`` of 500 rows took many times its own work.
    PostgreSQL's driver sends a batch in one round trip, and keeps the usual statements.
    """
    return conn.dialect.name == "sqlite"


def _values_sql(conn: Connection, head: str, rows: list[tuple[Any, ...]], tail: str = "") -> None:
    """``head VALUES (?, ...), (?, ...) tail`` for ``rows`` (SQLite), :data:`ROWS_PER_STATEMENT` a statement."""
    for i in range(0, len(rows), ROWS_PER_STATEMENT):
        some = rows[i : i + ROWS_PER_STATEMENT]
        marks = "(" + ", ".join("?" * len(some[0])) + ")"
        # chain: flattened in C (a generator's step per value cost ~1 µs a row)
        conn.exec_driver_sql(f"{head} VALUES {', '.join([marks] * len(some))}{tail}", tuple(chain.from_iterable(some)))


def _driver_sql(conn: Connection, sql: str, params: tuple[Any, ...]) -> Any:
    """``sql`` (written with ``?`` marks) run by the driver: no SQLAlchemy compilation or per-value
    coercion of an IN list, which cost more than the database for a batch of claims or ends."""
    if conn.dialect.paramstyle != "qmark":
        sql = sql.replace("?", "%s")
    return conn.exec_driver_sql(sql, params)


#: A claim of queued tasks (around its id marks).
_CLAIM_SQL = (
    "UPDATE tasks SET status = 'running', lease_owner = ?, lease_expires = ?, attempts = attempts + 1, "
    "started_at = ?, executor = ?, progress = 0.0, message = '' WHERE id IN ({marks}) AND status = 'queued'"
)


#: The ``task.started`` events of a claim on SQLite, made by SQLite from the rows it claimed (around
#: the id marks): one statement, no Python object or JSON encoding per event. Their data is the
#: same JSON as :func:`claim_tasks` writes elsewhere (``json_object`` keeps the keys' order).
_STARTED_FROM_CLAIM_SQL = (
    "INSERT INTO events (ts, kind, actor_id, folder_id, item_id, run_id, task_id, dataflow_id, data) "
    "SELECT ?, 'task.started', NULL, ?, NULL, run_id, id, NULL, "
    "json_object('attempt', attempts, 'step', step, 'executor', ?, 'owner', ?) FROM tasks WHERE id IN (",
    ") AND status = 'running' AND lease_owner = ? AND started_at = ? ORDER BY id",
)


def claim_tasks(
    conn: Connection, task_ids: Sequence[int], owner: str, lease_seconds: float, executor: str, folder_id: int | None
) -> list[int]:
    """Atomically claim queued tasks for ``owner``; returns the ids actually claimed (in the order asked).

    The ``status = 'queued'`` condition in the UPDATE is what keeps two schedulers from running
    the same task: only one UPDATE can flip each row. Each claimed task gets a ``task.started``
    event, in the order asked for.
    """
    if not task_ids:
        return []
    now = time.time()
    # Ascending ids, compared in C (a generator's step per claimed task cost more than the compare)
    if _one_step(conn) and all(map(operator.lt, task_ids, task_ids[1:])):
        return _claim_in_sqlite(conn, task_ids, owner, now, lease_seconds, executor, folder_id)
    returned: list[Any] = []
    for i in range(0, len(task_ids), IDS_PER_STATEMENT):
        some = list(task_ids[i : i + IDS_PER_STATEMENT])
        marks = ", ".join("?" * len(some))
        claim = _CLAIM_SQL.format(marks=marks)
        params = (owner, now + lease_seconds, now, executor, *some)
        if _one_step(conn):
            # The rows this UPDATE claimed (in this write transaction, nobody else's are running
            # under this owner since this instant), read back as one row: not a step per row.
            conn.exec_driver_sql(claim, params)
            got = conn.exec_driver_sql(
                "SELECT json_group_array(json_array(id, run_id, attempts, step)) FROM tasks "
                f"WHERE id IN ({marks}) AND status = 'running' AND lease_owner = ? AND started_at = ?",
                (*some, owner, now),
            ).scalar_one()
            returned += orjson.loads(got)
        else:
            # RETURNING what the events need: no second query for the rows just claimed.
            returned += _driver_sql(conn, claim + " RETURNING id, run_id, attempts, step", params).all()
    # Events in the order asked for (RETURNING's order is the database's).
    order = {tid: i for i, tid in enumerate(task_ids)}
    rows = sorted(returned, key=lambda r: order.get(r[0], 0))
    events.append_rows(
        conn,
        [
            (
                now,
                "task.started",
                None,
                folder_id,
                None,
                run_id,
                tid,
                None,
                {"attempt": attempts, "step": step, "executor": executor, "owner": owner},
            )
            for tid, run_id, attempts, step in rows
        ],
    )
    return [int(r[0]) for r in rows]


def _claim_in_sqlite(
    conn: Connection,
    task_ids: Sequence[int],
    owner: str,
    now: float,
    lease_seconds: float,
    executor: str,
    folder_id: int | None,
) -> list[int]:
    """:func:`claim_tasks` on SQLite for ids in ascending order: per 500 ids, the UPDATE, then the
    claimed rows' ``task.started`` events made by SQLite from them (:data:`_STARTED_FROM_CLAIM_SQL`,
    in id order: the order asked for). The ids claimed are read back only when some were not."""
    claimed: list[int] = []
    for i in range(0, len(task_ids), IDS_PER_STATEMENT):
        some = list(task_ids[i : i + IDS_PER_STATEMENT])
        marks = ", ".join("?" * len(some))
        conn.exec_driver_sql(_CLAIM_SQL.format(marks=marks), (owner, now + lease_seconds, now, executor, *some))
        # This write transaction holds SQLite's one lock: the rows running under this owner since
        # this instant are the ones this UPDATE claimed.
        added = conn.exec_driver_sql(
            marks.join(_STARTED_FROM_CLAIM_SQL), (now, folder_id, executor, owner, *some, owner, now)
        ).rowcount
        if added == len(some):
            claimed += some
        elif added:
            got = conn.exec_driver_sql(
                f"SELECT json_group_array(id) FROM tasks WHERE id IN ({marks}) AND status = 'running' "
                "AND lease_owner = ? AND started_at = ?",
                (*some, owner, now),
            ).scalar_one()
            mine = set(orjson.loads(got))
            claimed += [t for t in some if t in mine]
    if claimed:
        events.appended(conn, len(claimed), {("task.started", folder_id)})
    return claimed


def set_key(conn: Connection, task_id: int, key: str) -> None:
    """Record a task's key once its inputs are known."""
    conn.execute(update(Task).where(Task.id == task_id).values(key=key))


def record_inputs(conn: Connection, task_id: int, inputs: Iterable[Mapping[str, Any]]) -> None:
    """Record the exact upstream outputs a task consumed (item inputs are recorded at creation)."""
    record_many_inputs(conn, [{"task_id": task_id, **dict(i)} for i in inputs])


def record_many_inputs(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """:func:`record_inputs` for several tasks at once: each row names its ``task_id``."""
    if rows:
        conn.execute(insert(TaskInput), list(rows))


@dataclass(slots=True)
class TaskEnd:
    """How a task ended, for :func:`finish_tasks` (not frozen: a frozen dataclass is made field by
    field through ``object.__setattr__``, a cost paid once per recorded task)."""

    task_id: int
    run_id: int
    status: TaskStatus
    folder_id: int | None = None
    outputs: Sequence[OutputRecord] = ()
    error: str | None = None
    traceback: str | None = None
    log_digest: str | None = None
    cached_from: int | None = None
    key: str | None = None
    failure: str | None = None
    note: str | None = None


_UNFINISHED = (TaskStatus.QUEUED, TaskStatus.RUNNING)

# One statement for every end, given to the driver's executemany with one tuple per end (no IN
# list: executemany cannot expand one; no SQLAlchemy parameter processing per row, which cost more
# than the database for a batch of thousands). ``NULL`` keeps a column as it is.
_FINISH_SQL = (
    "UPDATE tasks SET status = ?, finished_at = ?, error = ?, traceback = ?, lease_owner = NULL, "
    "lease_expires = NULL, progress = coalesce(?, progress), log_digest = coalesce(?, log_digest), "
    "cached_from = coalesce(?, cached_from), key = coalesce(?, key), failure = ?, note = ? "
    "WHERE id = ? AND status IN ('queued', 'running')"
)
#: :data:`_FINISH_SQL` for many ends in one statement (SQLite's ``UPDATE ... FROM``; the columns of
#: a ``VALUES`` list are named ``column1``, ``column2``, ...), around the ``VALUES`` list.
_FINISH_FROM_SQL = (
    "UPDATE tasks SET status = v.column1, finished_at = v.column2, error = v.column3, traceback = v.column4, "
    "lease_owner = NULL, lease_expires = NULL, progress = coalesce(v.column5, tasks.progress), "
    "log_digest = coalesce(v.column6, tasks.log_digest), cached_from = coalesce(v.column7, tasks.cached_from), "
    "key = coalesce(v.column8, tasks.key), failure = v.column9, note = v.column10 FROM (",
    ") AS v WHERE tasks.id = v.column11 AND tasks.status IN ('queued', 'running')",
)
#: :data:`_FINISH_FROM_SQL` for ends without a key to write (the row has it, or the task has none):
#: SQLite rewrites a row's entry in every index whose column an UPDATE sets, even to the same value,
#: and the key index is ordered by a random hash (a page written per task).
_FINISH_FROM_SQL_KEPT_KEY = (_FINISH_FROM_SQL[0].replace("key = coalesce(v.column8, tasks.key), ", ""),) + (
    _FINISH_FROM_SQL[1],
)
#: Ends alike but for their task (a batch of trivial tasks that succeeded: same status, time, no
#: error, log or note) in one UPDATE by an id list (around its marks): each row then costs SQLite
#: what a claim's does, without a ``VALUES`` list to build, bind and join (~2 against ~5 µs a row).
_FINISH_ALIKE_SQL = (
    "UPDATE tasks SET status = ?, finished_at = ?, error = ?, traceback = ?, lease_owner = NULL, "
    "lease_expires = NULL, progress = coalesce(?, progress), log_digest = coalesce(?, log_digest), "
    "cached_from = coalesce(?, cached_from), failure = ?, note = ? "
    "WHERE id IN ({marks}) AND status IN ('queued', 'running')"
)
#: At least this many ends alike go in one :data:`_FINISH_ALIKE_SQL`; the others in a ``VALUES`` list.
ALIKE_ENDS = 8
_OUTPUTS_SQL = (
    "INSERT INTO task_outputs (task_id, name, digest, size, content_type, codec, inline, version_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def _executemany(conn: Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """``sql`` (written with ``?`` marks) run by the driver once per row of ``rows``."""
    if conn.dialect.paramstyle != "qmark":
        sql = sql.replace("?", "%s")
    conn.exec_driver_sql(sql, rows)


def unfinished(conn: Connection, task_ids: Sequence[int], owner: str | None = None) -> set[int]:
    """Which of ``task_ids`` may still be ended: queued, or running (under ``owner``'s lease, when given).

    On PostgreSQL the rows are locked until the transaction ends, so what this returns stays
    true until then; on SQLite the write transaction already excludes every other writer.
    """
    out: set[int] = set()
    lock = "" if conn.dialect.name == "sqlite" else " FOR UPDATE"
    for i in range(0, len(task_ids), IDS_PER_STATEMENT):
        some = list(task_ids[i : i + IDS_PER_STATEMENT])
        which = f"FROM tasks WHERE id IN ({', '.join('?' * len(some))}) AND status IN ('queued', 'running')"
        params: list[Any] = some
        if owner is not None:
            which += " AND (lease_owner = ? OR status = 'queued')"
            params = [*some, owner]
        if _one_step(conn):  # one row, not one per id (see _one_step)
            out.update(
                orjson.loads(conn.exec_driver_sql(f"SELECT json_group_array(id) {which}", tuple(params)).scalar_one())
            )
        else:
            out.update(int(r[0]) for r in _driver_sql(conn, f"SELECT id {which}{lock}", tuple(params)))
    return out


def finish_tasks(
    conn: Connection, ends: Sequence[TaskEnd], owner: str | None = None, endable: set[int] | None = None
) -> set[int]:
    """End tasks with their outputs, in a few statements for the whole batch; returns the ids ended.

    A task that had already ended (or, when ``owner`` is given, that another scheduler holds) is
    left alone and not returned, so a task ends exactly once even if two schedulers race on it.
    ``endable`` is what :func:`unfinished` returned for them earlier in the same transaction
    (their rows locked since): it is not asked again.
    """
    if endable is None:
        endable = unfinished(conn, [e.task_id for e in ends], owner) if ends else set()
    ids = endable & {e.task_id for e in ends}
    todo = [e for e in ends if e.task_id in ids]
    if not todo:
        return set()
    now = time.time()
    outputs = [
        (e.task_id, o.name, o.digest, o.size, o.content_type, o.codec, o.inline, o.version_id)
        for e in todo
        for o in e.outputs
    ]
    if _one_step(conn):  # a statement per 500 ends, not a step per end (see _one_step)
        shape = _common_shape(todo)
        if (
            shape is not None
            and len(todo) >= ALIKE_ENDS
            and len(set(map(_ROW_REST, todo))) == 1
            and todo[0].key is None
        ):
            # Alike but for their task (a run's trivial tasks that succeeded): one row's values for
            # them all, with no Python per end (the group commit's thread holds the loop's GIL).
            r = _end_rows(todo[:1], now)[0]
            _finish_alike(conn, r[:7] + r[8:10], [e.task_id for e in todo])
        else:
            rows = _end_rows(todo, now)
            keyed = [r for r in rows if r[7] is not None]
            if keyed:
                _values_sql(conn, _FINISH_FROM_SQL[0], keyed, _FINISH_FROM_SQL[1])
            if len(keyed) < len(rows):
                _finish_kept_keys(conn, [r for r in rows if r[7] is None])
        if outputs:
            _values_sql(conn, _OUTPUTS_SQL.split(" VALUES ")[0], outputs)
        if shape is not None:
            _finished_events(conn, [e.task_id for e in todo], now, *shape)
            return ids
    else:
        _executemany(conn, _FINISH_SQL, _end_rows(todo, now))
        if outputs:
            _executemany(conn, _OUTPUTS_SQL, outputs)
    events.append_rows(
        conn,
        [
            (
                now,
                "task.finished",
                None,
                e.folder_id,
                None,
                e.run_id,
                e.task_id,
                None,
                {
                    "status": str(e.status),
                    "error": e.error,
                    "outputs": [{"name": o.name, "digest": o.digest, "size": o.size} for o in e.outputs],
                    "cached_from": e.cached_from,
                    **({"note": e.note} if e.note else {}),
                },
            )
            for e in todo
        ],
    )
    return ids


#: The ``task.finished`` events of ends of the common shape (one run, one status, no error, not
#: cached, no note, one output; :func:`_common_shape`) made by SQLite from the outputs the
#: same transaction just wrote, in the order of a JSON array of the tasks' ids: the data is what
#: :func:`finish_tasks` gives ``append_rows``, byte for byte (``json_object`` writes the keys in
#: the order given and compact JSON, as orjson does).
_FINISHED_FROM_OUTPUTS_SQL = (
    "INSERT INTO events (ts, kind, actor_id, folder_id, item_id, run_id, task_id, dataflow_id, data) "
    "SELECT ?, 'task.finished', NULL, ?, NULL, ?, o.task_id, NULL, json_object('status', ?, 'error', NULL, "
    "'outputs', json_array(json_object('name', o.name, 'digest', o.digest, 'size', o.size)), 'cached_from', NULL) "
    "FROM json_each(?) AS j JOIN task_outputs AS o ON o.task_id = j.value ORDER BY j.key"
)
#: Strings that orjson and SQLite's JSON functions both write as they are (printable ASCII but
#: the quote and the backslash): others (escaped differently by each) keep the Python path.
_PLAIN_JSON = re.compile(r"[ !#-\[\]-~]*")


def _end_rows(todo: list[TaskEnd], now: float) -> list[tuple[Any, ...]]:
    """The values of :data:`_FINISH_SQL` for each end of ``todo`` (the key at 7, the task's id last)."""
    return [
        (
            str(e.status),
            now,
            e.error,
            e.traceback,
            1.0 if e.status in DONE_OK else None,
            e.log_digest,
            e.cached_from,
            e.key,
            e.failure if e.status == TaskStatus.FAILED else None,
            e.note,
            e.task_id,
        )
        for e in todo
    ]


#: What decides the shape of an end's ``task.finished`` event, read in one C call per end.
_EVENT_SHAPE = operator.attrgetter("status", "error", "cached_from", "note", "run_id", "folder_id")
#: The rest of what an end writes to its task's row, but for the task's id.
_ROW_REST = operator.attrgetter("traceback", "log_digest", "key", "failure")
_OUTPUTS_OF = operator.attrgetter("outputs")


def _common_shape(todo: list[TaskEnd]) -> tuple[TaskStatus, int, int | None] | None:
    """``(status, run, folder)`` when every end of ``todo`` has the common shape of a step that
    returned a small value (one run and status, no error, not cached, no note, one output whose
    name and digest :data:`_PLAIN_JSON` keeps as they are): their events can then be made by
    :data:`_FINISHED_FROM_OUTPUTS_SQL`. None otherwise. Found with no Python loop over the ends, in
    the thread whose Python the scheduler's event loop waits for."""
    shapes = set(map(_EVENT_SHAPE, todo))
    if len(shapes) != 1:
        return None
    status, error, cached_from, note, run_id, folder_id = shapes.pop()
    if error is not None or cached_from is not None or note or set(map(len, map(_OUTPUTS_OF, todo))) != {1}:
        return None
    # Plain is a property of each character: the strings joined are plain if and only if each is.
    firsts = [e.outputs[0] for e in todo]
    if _PLAIN_JSON.fullmatch("".join([o.name for o in firsts]) + "".join([o.digest for o in firsts])) is None:
        return None
    return status, run_id, folder_id


def _finished_events(
    conn: Connection, task_ids: list[int], now: float, status: TaskStatus, run_id: int, folder_id: int | None
) -> None:
    """:data:`_FINISHED_FROM_OUTPUTS_SQL` for ``task_ids`` (one orjson encoding for the batch), noted."""
    ids = orjson.dumps(task_ids).decode()
    added = conn.exec_driver_sql(_FINISHED_FROM_OUTPUTS_SQL, (now, folder_id, run_id, str(status), ids)).rowcount
    if added != len(task_ids):
        # An ended task has only the outputs its end wrote: anything else is a bug, and the
        # transaction (its ends with their events) is not committed.
        raise RuntimeError(f"{added} task.finished events made for {len(task_ids)} ends")
    events.appended(conn, added, {("task.finished", folder_id)})


def _finish_kept_keys(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    """The SQLite statements of :func:`finish_tasks` for ends that write no key: those alike but for
    their task id (:data:`ALIKE_ENDS` or more) by id lists, the others in ``VALUES`` lists."""
    alike: dict[tuple[Any, ...], list[int]] = {}
    for r in rows:
        alike.setdefault(r[:7] + r[8:10], []).append(r[10])
    rest: list[tuple[Any, ...]] = []
    for values, ids in alike.items():
        if len(ids) < ALIKE_ENDS:
            rest += [(*values[:7], None, *values[7:], tid) for tid in ids]
            continue
        _finish_alike(conn, values, ids)
    if rest:
        _values_sql(conn, _FINISH_FROM_SQL_KEPT_KEY[0], rest, _FINISH_FROM_SQL_KEPT_KEY[1])


def _finish_alike(conn: Connection, values: tuple[Any, ...], ids: list[int]) -> None:
    """End the tasks ``ids`` alike (``values``: a row of :func:`_end_rows` without its key and id)
    by :data:`_FINISH_ALIKE_SQL`, a statement per 500 of them."""
    for i in range(0, len(ids), IDS_PER_STATEMENT):
        some = ids[i : i + IDS_PER_STATEMENT]
        conn.exec_driver_sql(_FINISH_ALIKE_SQL.format(marks=", ".join("?" * len(some))), (*values, *some))


def finish_task(
    conn: Connection,
    task_id: int,
    run_id: int,
    status: TaskStatus,
    folder_id: int | None,
    outputs: Sequence[OutputRecord] = (),
    error: str | None = None,
    traceback: str | None = None,
    log_digest: str | None = None,
    cached_from: int | None = None,
    key: str | None = None,
    owner: str | None = None,
    failure: str | None = None,
    note: str | None = None,
) -> bool:
    """End one task (see :func:`finish_tasks`); False if it had already ended (or another owner holds it)."""
    end = TaskEnd(
        task_id, run_id, status, folder_id, outputs, error, traceback, log_digest, cached_from, key, failure, note
    )
    return bool(finish_tasks(conn, [end], owner))


def requeue_task(
    conn: Connection, task_id: int, run_id: int, folder_id: int | None, not_before: float, error: str
) -> bool:
    """Put a failed attempt back in the queue for a retry after ``not_before``; False if it was not running.

    No event without a change: the task may have been reclaimed or ended meanwhile.
    """
    n = conn.execute(
        update(Task)
        .where(Task.id == task_id, Task.status == TaskStatus.RUNNING)
        .values(status=TaskStatus.QUEUED, not_before=not_before, error=error, lease_owner=None, lease_expires=None)
    ).rowcount
    if not n:
        return False
    events.append(
        conn,
        "task.retrying",
        run_id=run_id,
        task_id=task_id,
        folder_id=folder_id,
        data={"error": error, "not_before": not_before},
    )
    return True


def set_progress(
    conn: Connection, task_id: int, run_id: int, folder_id: int | None, fraction: float, message: str
) -> bool:
    """Record a running task's progress (0..1) and message; False (and no event) if it is not running.

    Progress can arrive after the task's end was recorded; it must not leave an event that
    :func:`fold` would apply to a finished task.
    """
    fraction = max(0.0, min(1.0, float(fraction)))
    n = conn.execute(
        update(Task)
        .where(Task.id == task_id, Task.status == TaskStatus.RUNNING)
        .values(progress=fraction, message=message[:1000])
    ).rowcount
    if not n:
        return False
    events.append(
        conn,
        "task.progress",
        run_id=run_id,
        task_id=task_id,
        folder_id=folder_id,
        data={"progress": fraction, "message": message[:1000]},
    )
    return True


# ------------------------------------------------------------------------------------ queries


#: The columns of a :class:`TaskRow`, in the order of its fields (:func:`list_tasks` reads them so).
_TASK_COLUMNS = (
    "id, run_id, planned_id, step, step_code, key, status, attempts, max_attempts, progress, message, "
    "item_version_id, item_name, deps, params_digest, queued_at, started_at, finished_at, error, traceback, "
    "log_digest, cached_from, executor, not_before, failure, note"
)


def _json_column(value: Any) -> Any:
    """A JSON column read by the driver: text on SQLite (decoded here), already decoded on PostgreSQL."""
    if not isinstance(value, (str, bytes)):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:  # what the json module writes and orjson refuses (NaN, ...)
        return json.loads(value)


def list_tasks(
    conn: Connection,
    run_id: int,
    with_outputs: bool = True,
    with_params: bool = True,
    after: int = 0,
    limit: int | None = None,
) -> list[TaskRow]:
    """A run's tasks in creation order, with their outputs and parameters.

    Read by the driver, not through SQLAlchemy's ORM columns and type processing: a scheduler
    reads every task of a run it drives, and that cost more than running thousands of small ones.
    Each parameter set is read and decoded once, however many tasks share it. Without
    ``with_params`` their ``params`` stay empty: a scheduler runs tasks with the parameters of its
    plan (made from the run's), never from these, and a run a trigger makes has a task or two
    (a big set decoded per run would be decoded per task).

    With ``after`` and ``limit``, one page: at most ``limit`` tasks whose id is above ``after``.
    """
    rows: list[TaskRow] = []
    sql = f"SELECT {_TASK_COLUMNS} FROM tasks WHERE run_id = ? AND id > ? ORDER BY id"
    args: tuple[Any, ...] = (run_id, after)
    if limit is not None:
        sql, args = sql + " LIMIT ?", (*args, limit)
    for r in _driver_sql(conn, sql, args):
        t = TaskRow(*r)
        t.deps = list(_json_column(t.deps) or [])
        rows.append(t)
    if with_params:
        found = paramsets.load(conn, {t.params_digest for t in rows})
        for t in rows:
            t.params = paramsets.params_of(found, t.params_digest)
    if with_outputs and rows:
        by_task: dict[int, list[OutputRecord]] = {}
        for o in _driver_sql(
            conn,
            "SELECT o.task_id, o.name, o.digest, o.size, o.content_type, o.codec, o.inline, o.version_id "
            "FROM task_outputs o JOIN tasks t ON t.id = o.task_id WHERE t.run_id = ? AND t.id > ? AND t.id <= ? "
            "ORDER BY o.id",
            (run_id, after, rows[-1].id),
        ):
            by_task.setdefault(o[0], []).append(OutputRecord(*o[1:]))
        for t in rows:
            t.outputs = by_task.get(t.id, [])
    return rows


def item_page(conn: Connection, run_id: int, offset: int, limit: int) -> tuple[list[TaskRow], int]:
    """The tasks of one page of a run's items, and how many items the run has.

    Items come in the order of their first task (plan order); the tasks of no item (aggregates)
    count as one item, last. So a page of a run of 10,000 tasks reads only that page's tasks.
    """
    firsts = (
        select(Task.item_name, func.min(Task.id).label("first"))
        .where(Task.run_id == run_id)
        .group_by(Task.item_name)
        .subquery()
    )
    total = int(conn.execute(select(func.count()).select_from(firsts)).scalar_one())
    names = list(
        conn.execute(select(firsts.c.item_name).order_by(firsts.c.first).offset(offset).limit(limit)).scalars()
    )
    named = [n for n in names if n is not None]
    which = [Task.item_name.in_(named)] if named else []
    if len(named) < len(names):
        which.append(Task.item_name.is_(None))
    if not which:
        return [], total
    rows = conn.execute(select(Task).where(Task.run_id == run_id, or_(*which)).order_by(Task.id)).all()
    found = paramsets.load(conn, {r.params_digest for r in rows})
    return [task_row(r, found) for r in rows], total


def step_links(conn: Connection, run_id: int) -> tuple[list[str], list[tuple[str, str]]]:
    """A run's steps in plan order and which step feeds which (``(upstream, downstream)``, sorted).

    Read from one task per step (its first): the steps its dependencies belong to.
    """
    firsts = conn.execute(
        select(Task.step, func.min(Task.id).label("first")).where(Task.run_id == run_id).group_by(Task.step)
    ).all()
    order = [step for step, _ in sorted(firsts, key=lambda r: r.first)]
    deps = conn.execute(select(Task.step, Task.deps).where(Task.id.in_([r.first for r in firsts]))).all()
    wanted = sorted({d for _, ds in deps for d in ds or []})
    step_of: dict[str, str] = {}
    for i in range(0, len(wanted), 500):
        found = conn.execute(
            select(Task.planned_id, Task.step).where(Task.run_id == run_id, Task.planned_id.in_(wanted[i : i + 500]))
        )
        step_of.update({planned: step for planned, step in found})
    edges = {(step_of[d], step) for step, ds in deps for d in ds or [] if d in step_of and step_of[d] != step}
    return order, sorted(edges)


def task_log_states(conn: Connection, task_ids: Iterable[int]) -> dict[int, tuple[str, str | None]]:
    """``task id -> (status, log digest)`` for the tasks that exist: what a log follower waits for."""
    ids = sorted(set(task_ids))
    out: dict[int, tuple[str, str | None]] = {}
    for i in range(0, len(ids), 500):
        rows = conn.execute(select(Task.id, Task.status, Task.log_digest).where(Task.id.in_(ids[i : i + 500])))
        out.update((int(r.id), (str(r.status), r.log_digest)) for r in rows)
    return out


def get_task(conn: Connection, task_id: int) -> TaskRow | None:
    """One task with its outputs."""
    r = conn.execute(select(Task).where(Task.id == task_id)).first()
    if r is None:
        return None
    t = task_row(r, paramsets.load(conn, [r.params_digest]))
    t.outputs = [
        _output(o)
        for o in conn.execute(select(TaskOutput).where(TaskOutput.task_id == task_id).order_by(TaskOutput.id))
    ]
    return t


def _output(o: Any) -> OutputRecord:
    return OutputRecord(
        name=o.name,
        digest=o.digest,
        size=o.size,
        content_type=o.content_type,
        codec=o.codec,
        inline=o.inline,
        version_id=o.version_id,
    )


def lookup_cache(conn: Connection, key: str) -> tuple[int, list[OutputRecord]] | None:
    """The newest succeeded task with ``key`` and its outputs, if any."""
    tid = conn.execute(
        select(Task.id)
        .where(Task.key == key, Task.status == TaskStatus.SUCCEEDED)
        .order_by(Task.finished_at.desc())
        .limit(1)
    ).scalar()
    if tid is None:
        return None
    outs = conn.execute(select(TaskOutput).where(TaskOutput.task_id == tid).order_by(TaskOutput.id)).all()
    return int(tid), [_output(o) for o in outs]


#: the statement of :func:`failed_earlier`, built once
_FAILED_EARLIER = (
    select(Task.key, func.max(Task.run_id))
    .where(
        Task.key.in_(bindparam("keys", expanding=True)),
        Task.status == TaskStatus.FAILED,
        Task.failure == STEP_FAILURE,
    )
    .group_by(Task.key)
)


def failed_earlier(conn: Connection, keys: Sequence[str]) -> dict[str, int]:
    """For each of ``keys`` whose step failed before (``failure = 'step'``): the newest run it failed in.

    One query per 500 keys, as cache look-ups are: a run made by a trigger asks this for all its
    ready tasks at once.
    """
    out: dict[str, int] = {}
    for i in range(0, len(keys), 500):
        rows = conn.execute(_FAILED_EARLIER, {"keys": list(keys[i : i + 500])}).all()
        out.update({str(k): int(r) for k, r in rows if k is not None})
    return out


#: Keys per cache look-up query: one IN-list of this many keys (SQLite allows 32,766 variables).
LOOKUP_CHUNK = 1000


#: what :func:`lookup_cache_many` reads of a task and its outputs
_CACHE_COLUMNS = (
    Task.key,
    Task.id,
    TaskOutput.name,
    TaskOutput.digest,
    TaskOutput.size,
    TaskOutput.content_type,
    TaskOutput.codec,
    TaskOutput.inline,
)
#: the statement of :func:`lookup_cache_many`, built once (a trigger looks up a few keys per landed item)
_LOOKUP_MANY = (
    select(*_CACHE_COLUMNS)
    .outerjoin(TaskOutput, TaskOutput.task_id == Task.id)
    .where(Task.key.in_(bindparam("keys", expanding=True)), Task.status == TaskStatus.SUCCEEDED)
    .order_by(Task.finished_at, Task.id, TaskOutput.id)
)
#: the same, with the tasks whose step failed too (and their run): :func:`failed_earlier` in the same statement
_LOOKUP_MANY_OR_FAILED = (
    select(*_CACHE_COLUMNS, Task.status, Task.run_id)
    .outerjoin(TaskOutput, TaskOutput.task_id == Task.id)
    .where(
        Task.key.in_(bindparam("keys", expanding=True)),
        or_(
            Task.status == TaskStatus.SUCCEEDED,
            and_(Task.status == TaskStatus.FAILED, Task.failure == STEP_FAILURE),
        ),
    )
    .order_by(Task.finished_at, Task.id, TaskOutput.id)
)


def lookup_cache_many(
    conn: Connection, keys: Sequence[str], failed: dict[str, int] | None = None
) -> dict[str, tuple[int, list[OutputRecord]]]:
    """:func:`lookup_cache` for many keys: one query (tasks joined with their outputs) per 1,000 keys.

    The outputs come without version ids: a task answered from the cache publishes them anew.
    With ``failed``, the same queries also put there what :func:`failed_earlier` would answer
    for ``keys`` (a trigger's run asks both; one statement instead of two).
    """
    out: dict[str, tuple[int, list[OutputRecord]]] = {}
    for i in range(0, len(keys), LOOKUP_CHUNK):
        chunk = {"keys": list(keys[i : i + LOOKUP_CHUNK])}
        rows = conn.execute(_LOOKUP_MANY if failed is None else _LOOKUP_MANY_OR_FAILED, chunk)
        newest: dict[str, int] = {}
        by_task: dict[int, list[OutputRecord]] = {}
        for key, tid, name, digest, size, ctype, codec, inline, *status_run in rows:
            if failed is not None and status_run[0] != TaskStatus.SUCCEEDED:
                failed[str(key)] = max(failed.get(str(key), 0), int(status_run[1]))
                continue
            newest[str(key)] = tid  # ordered oldest first: the newest task of a key comes last
            outs = by_task.setdefault(tid, [])
            if name is not None:
                outs.append(OutputRecord(name, digest, size, ctype, codec, inline))
        out.update((k, (int(tid), by_task[tid])) for k, tid in newest.items())
    return out
