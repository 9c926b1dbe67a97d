"""The migrations in ``datamill/db/migrations`` build exactly the schema the models declare."""

from __future__ import annotations

import json
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Boolean, Column, Float, Integer, String, insert, inspect, text
from sqlalchemy import table as sa_table

from datamill.db import Database
from datamill.db.database import alembic_config
from datamill.db.models import Base
from tests.helpers import migrate_to


def _schema_diff(db: Database) -> list[Any]:
    """What ``alembic revision --autogenerate`` would emit against the migrated database."""
    with db.engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def test_migrations_match_models(db_url: str) -> None:
    db = Database(db_url)
    try:
        db.migrate()
        assert _schema_diff(db) == []
        with db.engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
        assert set(Base.metadata.tables) <= tables
        assert "alembic_version" in tables
    finally:
        db.dispose()


def test_migrate_is_idempotent(db_url: str) -> None:
    head = ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
    db = Database(db_url)
    try:
        db.migrate()
        db.migrate()
        again = Database(db_url)  # as another process starting on an existing database would
        try:
            again.migrate()
        finally:
            again.dispose()
        assert _schema_diff(db) == []
        with db.read() as conn:
            versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
        assert versions == [head]
    finally:
        db.dispose()


#: parameters of the tasks recorded before 0015: a big set shared by two tasks, a small one, none
_BIG = {"table": {f"key-{i:05}": f"value {i} " + "x" * 40 for i in range(3000)}, "threshold": 0.5}
_OLD_PARAMS = [_BIG, _BIG, {"salt": "a", "n": [1, 2, {"deep": None}], "ok": True}, {}]


def test_0015_moves_task_params_to_their_own_table_without_loss(db_url: str) -> None:
    """Tasks recorded before 0015 read back with the same parameters after it (each set stored
    once), and again after a downgrade to 0014."""
    from datamill.db.models import JSONType
    from datamill.engine import tasks

    db = Database(db_url)
    try:
        migrate_to(db, "0014_taskkey")
        old_tasks = sa_table(
            "tasks",
            *(
                Column(name, type_)
                for name, type_ in [
                    ("id", Integer()),
                    ("run_id", Integer()),
                    ("planned_id", String()),
                    ("step", String()),
                    ("step_code", String()),
                    ("status", String()),
                    ("attempts", Integer()),
                    ("max_attempts", Integer()),
                    ("progress", Float()),
                    ("message", String()),
                    ("deps", JSONType),
                    ("params", JSONType),
                    ("queued_at", Float()),
                ]
            ),
        )
        with db.write() as conn:
            conn.execute(
                text(
                    "INSERT INTO runs (id, pipeline_ref, pipeline_name, status, requested_at, reason, force, params, "
                    "executor, inputs, cancel_requested, skip_failed) VALUES (1, 'p.py:p', 'p', 'succeeded', 0, '', "
                    "false, '{}', 'inline', '[]', false, false)"
                )
            )
            conn.execute(
                insert(old_tasks),
                [
                    {
                        "id": i + 1,
                        "run_id": 1,
                        "planned_id": f"s[{i}]",
                        "step": "s",
                        "step_code": "py:x",
                        "status": "succeeded",
                        "attempts": 1,
                        "max_attempts": 1,
                        "progress": 1.0,
                        "message": "",
                        "deps": [],
                        "params": p,
                        "queued_at": 0.0,
                    }
                    for i, p in enumerate(_OLD_PARAMS)
                ],
            )
            conn.execute(
                text(
                    "INSERT INTO task_outputs (task_id, name, digest, size, content_type, codec) "
                    "VALUES (1, 'return.txt', 'blake3:00', 1, 'text/plain', '')"
                )
            )
        db.migrate()
        with db.read() as conn:
            got = [t.params for t in tasks.list_tasks(conn, 1)]
            one = tasks.get_task(conn, 3)
            stored = conn.execute(text("SELECT count(*) FROM params")).scalar_one()
            digests = [t.params_digest for t in tasks.list_tasks(conn, 1)]
            outputs = conn.execute(text("SELECT count(*) FROM task_outputs")).scalar_one()
        assert got == _OLD_PARAMS
        assert outputs == 1  # tasks altered in place: a copied table's drop would cascade to its outputs
        assert one is not None and one.params == _OLD_PARAMS[2]
        assert stored == 2  # the big set once, the small one once, none for no parameters
        assert digests[0] == digests[1] and digests[3] is None
        migrate_to(db, "0014_taskkey", down=True)
        with db.read() as conn:
            back = [
                r[0] if not isinstance(r[0], str) else json.loads(r[0])
                for r in conn.execute(text("SELECT params FROM tasks ORDER BY id"))
            ]
        assert back == _OLD_PARAMS
    finally:
        db.dispose()


#: parameters of runs recorded before 0016: a big table given twice (two runs, one set), the same
#: table with image digests, small ones per step, and none at all
_RUN_TABLE = {f"key-{i:05}": f"value {i} " + "x" * 40 for i in range(3000)}
_OLD_RUN_PARAMS: list[dict[str, Any]] = [
    {"user": {"table": _RUN_TABLE}, "steps": {"look": {"table": _RUN_TABLE}}},
    {"user": {"table": _RUN_TABLE}, "steps": {"look": {"table": _RUN_TABLE}}},
    {
        "user": {"look.table": _RUN_TABLE, "n": 2},
        "steps": {"look": {"table": _RUN_TABLE}, "count": {"n": 2}, "idle": {}},
        "images": {"busybox:1": "sha256:00ff"},
        "step_images": {"look": "busybox:1"},
    },
    {"user": {}, "steps": {}},
]


def test_0016_moves_run_params_to_the_params_table_without_loss(db_url: str) -> None:
    """Runs recorded before 0016 read back with the same parameters after it, their tasks kept, the
    table stored once; and again as they were after a downgrade to 0015."""
    from datamill.db.models import JSONType
    from datamill.engine import runs as runs_mod

    db = Database(db_url)
    try:
        migrate_to(db, "0015_params")
        old_runs = sa_table(
            "runs",
            *(
                Column(name, type_)
                for name, type_ in [
                    ("id", Integer()),
                    ("pipeline_ref", String()),
                    ("pipeline_name", String()),
                    ("status", String()),
                    ("requested_at", Float()),
                    ("reason", String()),
                    ("force", Boolean()),
                    ("params", JSONType),
                    ("executor", String()),
                    ("inputs", JSONType),
                    ("cancel_requested", Boolean()),
                    ("skip_failed", Boolean()),
                ]
            ),
        )
        with db.write() as conn:
            conn.execute(
                insert(old_runs),
                [
                    {
                        "id": i + 1,
                        "pipeline_ref": "p.py:p",
                        "pipeline_name": "p",
                        "status": "succeeded",
                        "requested_at": 0.0,
                        "reason": "",
                        "force": False,
                        "params": p,
                        "executor": "inline",
                        "inputs": [],
                        "cancel_requested": False,
                        "skip_failed": False,
                    }
                    for i, p in enumerate(_OLD_RUN_PARAMS)
                ],
            )
            conn.execute(
                text(
                    "INSERT INTO tasks (id, run_id, planned_id, step, step_code, status, attempts, max_attempts, "
                    "progress, message, deps, queued_at) VALUES (1, 1, 'look', 'look', 'py:x', 'succeeded', 1, 1, "
                    "1.0, '', '[]', 0)"
                )
            )
        db.migrate()
        with db.read() as conn:
            got = runs_mod.list_runs(conn)
            digests = conn.execute(text("SELECT params_digest FROM runs ORDER BY id")).scalars().all()
            stored = conn.execute(text("SELECT count(*) FROM params")).scalar_one()
            kept = conn.execute(text("SELECT count(*) FROM tasks WHERE run_id = 1")).scalar_one()
        assert [r["params"] for r in sorted(got, key=lambda r: r["id"])] == _OLD_RUN_PARAMS
        assert digests[0] == digests[1] and digests[3] is None
        # {"table": T} (two runs' and the first step's), {"look.table": T, "n": 2}, {"n": 2}: nothing twice
        assert stored == 3
        assert kept == 1  # the runs table was altered in place: its tasks are still there
        migrate_to(db, "0015_params", down=True)
        with db.read() as conn:
            back = [
                r[0] if not isinstance(r[0], str) else json.loads(r[0])
                for r in conn.execute(text("SELECT params FROM runs ORDER BY id"))
            ]
        assert back == _OLD_RUN_PARAMS
    finally:
        db.dispose()


def _run_with_a_task(conn: Any, run_params: str, task_params: bool) -> None:
    """Run 1 with its one succeeded task 1, as rows of the schema at hand: ``run_params`` names the
    runs column with its parameters, ``task_params`` whether tasks hold theirs (before 0015)."""
    conn.execute(
        text(
            "INSERT INTO runs (id, pipeline_ref, pipeline_name, status, requested_at, reason, force, "
            f"{run_params}, executor, inputs, cancel_requested, skip_failed) "
            "VALUES (1, 'p.py:p', 'p', 'succeeded', 0, '', false, '{}', 'inline', '[]', false, false)"
        )
    )
    params = ("params, ", "'{}', ") if task_params else ("", "")
    conn.execute(
        text(
            "INSERT INTO tasks (id, run_id, planned_id, step, step_code, status, attempts, max_attempts, progress, "
            f"message, deps, {params[0]}queued_at) "
            f"VALUES (1, 1, 's[0]', 's', 'py:x', 'succeeded', 1, 1, 1.0, '', '[]', {params[1]}0)"
        )
    )


def test_sqlite_tables_copied_by_a_migration_keep_the_rows_that_refer_to_them(db_url: str) -> None:
    """On SQLite a migration that drops a column copies the table and drops the old one; with foreign
    keys on that deleted every row referring to it (``ON DELETE CASCADE``). 0013's downgrade copies
    ``runs``: its tasks, their inputs and outputs must all still be there, and again after upgrading."""
    db = Database(db_url)
    try:
        migrate_to(db, "0013_rerun")
        with db.write() as conn:
            _run_with_a_task(conn, "params", task_params=True)
            conn.execute(
                text(
                    "INSERT INTO task_outputs (task_id, name, digest, size, content_type, codec) "
                    "VALUES (1, 'return.txt', 'blake3:00', 1, 'text/plain', '')"
                )
            )

        def counts() -> tuple[int, int, int]:
            with db.read() as conn:
                return (
                    conn.execute(text("SELECT count(*) FROM runs")).scalar_one(),
                    conn.execute(text("SELECT count(*) FROM tasks")).scalar_one(),
                    conn.execute(text("SELECT count(*) FROM task_outputs")).scalar_one(),
                )

        migrate_to(db, "0012_scale", down=True)
        assert counts() == (1, 1, 1)
        db.migrate()
        assert counts() == (1, 1, 1)
        with db.read() as conn:  # and the connection handed back enforces foreign keys again
            on = conn.exec_driver_sql("PRAGMA foreign_keys").scalar() if db.is_sqlite else 1
        assert on == 1
    finally:
        db.dispose()


def test_0017_indexes_the_digests_of_outputs_kept_as_blobs_only(db_url: str) -> None:
    """After 0017 the digest index holds the outputs without inline bytes (what garbage collection asks
    about); the outputs recorded before it are all still there, and downgrading gives the full index back."""
    db = Database(db_url)
    try:
        migrate_to(db, "0016_runparams")
        with db.write() as conn:
            _run_with_a_task(conn, "params_meta", task_params=False)
            conn.execute(
                text(
                    "INSERT INTO task_outputs (task_id, name, digest, size, content_type, codec, inline) VALUES "
                    "(1, 'small.txt', 'blake3:01', 2, 'text/plain', '', :small), "
                    "(1, 'big.txt', 'blake3:02', 9000, 'text/plain', '', NULL)"
                ),
                {"small": b"hi"},
            )

        def indexes() -> dict[str, str]:
            with db.read() as conn:
                if db.is_sqlite:
                    q = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'task_outputs'"
                else:
                    q = "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'task_outputs'"
                return {name: sql or "" for name, sql in conn.exec_driver_sql(q)}

        def blob_digests() -> list[str]:
            with db.read() as conn:
                q = "SELECT digest FROM task_outputs WHERE digest IN ('blake3:01', 'blake3:02') AND inline IS NULL"
                return list(conn.exec_driver_sql(q).scalars())

        assert "ix_task_outputs_digest" in indexes()
        db.migrate()
        after = indexes()
        assert "ix_task_outputs_digest" not in after
        assert "inline IS NULL" in after["ix_task_outputs_blob"].replace("(", "").replace(")", "")
        assert blob_digests() == ["blake3:02"]
        if db.is_sqlite:  # the question garbage collection asks is answered from the partial index
            with db.read() as conn:
                plan = " ".join(
                    str(r[-1])
                    for r in conn.exec_driver_sql(
                        "EXPLAIN QUERY PLAN SELECT DISTINCT digest FROM task_outputs "
                        "WHERE digest IN ('blake3:01', 'blake3:02') AND inline IS NULL"
                    )
                )
            assert "ix_task_outputs_blob" in plan, plan
        migrate_to(db, "0016_runparams", down=True)
        back = indexes()
        assert "ix_task_outputs_digest" in back and "ix_task_outputs_blob" not in back
        with db.read() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM task_outputs").scalar_one() == 2
        db.migrate()
        assert _schema_diff(db) == []
    finally:
        db.dispose()
