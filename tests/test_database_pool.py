"""PostgreSQL's connection pool: a connection the server closed is never handed out, and a healthy
one is handed out without a round trip to check it (no ``pool_pre_ping``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from sqlalchemy import text

from datamill.db.database import Database

pytestmark = pytest.mark.postgres

#: Generous: a loaded machine may be slow. Nothing here asserts how long anything took.
TIMEOUT = 120.0


@pytest.fixture
def db(postgres_db_url: str) -> Iterator[Database]:
    database = Database(postgres_db_url)
    try:
        yield database
    finally:
        database.dispose()


def _backend(db: Database) -> int:
    with db.read() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_pooled_connection_is_reused_without_a_ping(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _backend(db)
    pings: list[object] = []
    ping = db.engine.dialect.do_ping

    def counted(dbapi_conn: object) -> bool:
        pings.append(dbapi_conn)
        return ping(dbapi_conn)

    monkeypatch.setattr(db.engine.dialect, "do_ping", counted)
    assert _backend(db) == first
    assert _backend(db) == first
    assert pings == []  # no round trip on checkout


def test_a_connection_the_server_closed_is_replaced(db: Database, postgres_db_url: str) -> None:
    """The server ends a pooled connection (a restart, an administrator): the next transaction gets a
    new connection instead of failing on the dead one."""
    first = _backend(db)
    parts = urlsplit(postgres_db_url)
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        deadline = time.monotonic() + TIMEOUT
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (first,)).fetchone() is not None:
            assert time.monotonic() < deadline, "the backend never ended"
            time.sleep(0.01)
    second = _backend(db)
    assert second != first
    assert _backend(db) == second  # and the new one is kept
