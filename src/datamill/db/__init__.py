"""Schema, connections and migrations (SQLAlchemy 2 + Alembic) for SQLite and PostgreSQL."""

from datamill.db.database import Database, normalize_url

__all__ = ["Database", "normalize_url"]
