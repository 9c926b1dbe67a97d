"""The migrations in ``datamill/db/migrations`` build exactly the schema the models declare."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from datamill.db import Database
from datamill.db.database import alembic_config
from datamill.db.models import Base


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
