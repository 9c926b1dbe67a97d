"""Alembic environment: runs migrations on the connection datamill hands over."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic import context
from sqlalchemy import Connection, create_engine

from datamill.db.models import Base
from datamill.errors import DatamillError

config = context.config
target_metadata = Base.metadata


class ForeignKeysLeftOn(RuntimeError):
    """A SQLite migration was handed a connection inside a transaction: its foreign keys stay on."""


@contextmanager
def _sqlite_foreign_keys_off(connection: Connection) -> Iterator[None]:
    """Migrate a SQLite database with its foreign keys off, and check them before committing.

    SQLite changes most of a table (dropping a column, a constraint, a type) by copying it into a
    new table and dropping the old one (Alembic's batch mode). With ``foreign_keys=ON``, which
    every datamill connection sets, dropping ``runs`` or ``tasks`` so deletes every row that refers
    to them by ``ON DELETE CASCADE``: all tasks, their inputs and outputs. SQLite's own procedure
    for such changes is to turn foreign keys off outside the transaction and run
    ``PRAGMA foreign_key_check`` before committing; this does that, for every migration.
    """
    if connection.dialect.name != "sqlite":
        yield
        return
    raw = connection.connection.driver_connection
    assert raw is not None
    # The pragma is a no-op inside a transaction: set it on the bare connection, before BEGIN.
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        if raw.execute("PRAGMA foreign_keys").fetchone()[0]:
            raise ForeignKeysLeftOn(
                "a SQLite migration needs a connection outside a transaction (commit or roll back first): "
                "with foreign keys on, copying a table would delete the rows that refer to it"
            )
        yield
    finally:
        raw.execute("PRAGMA foreign_keys=ON")


def _check_foreign_keys(connection: Connection) -> None:
    """Refuse to commit a SQLite migration that left a row referring to nothing."""
    if connection.dialect.name != "sqlite":
        return
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        table, rowid, parent, _ = broken[0]
        raise DatamillError(
            f"a migration left {len(broken)} row(s) referring to missing rows (first: {table} rowid {rowid} -> "
            f"{parent}); nothing was changed: report this with the output of `datamill doctor`",
            table=table,
        )


def run_migrations_online() -> None:
    """Migrate on the connection in ``config.attributes`` or one made from the URL."""
    connection = config.attributes.get("connection")
    if connection is None:
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
        with engine.connect() as conn, _sqlite_foreign_keys_off(conn), conn.begin():
            context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
            context.run_migrations()
            _check_foreign_keys(conn)
        return
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with _sqlite_foreign_keys_off(connection), context.begin_transaction():
        context.run_migrations()
        _check_foreign_keys(connection)


run_migrations_online()
