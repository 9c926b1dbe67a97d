"""PostgreSQL's connections: a pooled one the server closed is never handed out, a healthy one is
handed out without a round trip to check it (no ``pool_pre_ping``), and every one carries TCP
keepalives, so one cut silently is found dead."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from sqlalchemy import text

from datamill.config import load_settings
from datamill.db.database import Database, Keepalives
from datamill.events import EventLog, _PostgresListener
from datamill.home import Home

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


def _tcp_options(fd: int) -> dict[str, int]:
    """The keepalive options the kernel holds for the TCP socket ``fd`` (a duplicate is asked)."""
    sock = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)
    try:
        return {
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }
    finally:
        sock.close()


def _pooled_fd(db: Database) -> int:
    with db.read() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        return int(raw.fileno())


def _listener_fd(log: EventLog) -> int:
    """The socket of the event log's LISTEN connection, once it listens."""
    assert log.watcher == "notify"
    listener = log._listener
    assert isinstance(listener, _PostgresListener)
    deadline = time.monotonic() + TIMEOUT
    while listener.connection is None:
        assert time.monotonic() < deadline, "the listener never connected"
        time.sleep(0.01)
    return int(listener.connection.fileno())


@pytest.fixture
def tcp_url(postgres_db_url: str) -> str:
    if not urlsplit(postgres_db_url).hostname:
        pytest.skip("the test PostgreSQL is reached over a Unix socket: no TCP options to see")
    return postgres_db_url


def test_every_connection_has_tcp_keepalives(tcp_url: str) -> None:
    """A connection cut silently is found dead by the kernel: the pool's connections and the event
    log's LISTEN connection carry keepalives and a user timeout (the defaults: about a minute)."""
    database = Database(tcp_url, Keepalives(idle=7, interval=3, count=4, user_timeout_ms=21_000))
    log = EventLog(database)
    try:
        wanted = {"keepalive": 1, "idle": 7, "interval": 3, "count": 4, "user_timeout_ms": 21_000}
        assert _tcp_options(_pooled_fd(database)) == wanted
        assert _tcp_options(_listener_fd(log)) == wanted
    finally:
        log.close()
        database.dispose()
    plain = Database(tcp_url)
    try:
        assert _tcp_options(_pooled_fd(plain)) == {
            "keepalive": 1,
            "idle": 30,
            "interval": 10,
            "count": 3,
            "user_timeout_ms": 60_000,
        }
    finally:
        plain.dispose()


def test_the_urls_own_keepalive_parameters_win(tcp_url: str) -> None:
    sep = "&" if "?" in tcp_url else "?"
    database = Database(f"{tcp_url}{sep}keepalives_idle=11&tcp_user_timeout=5000", Keepalives(idle=7))
    log = EventLog(database)
    try:
        for fd in (_pooled_fd(database), _listener_fd(log)):
            options = _tcp_options(fd)
            assert (options["idle"], options["user_timeout_ms"]) == (11, 5000)
            assert (options["keepalive"], options["interval"]) == (1, 10)  # the rest from Keepalives
    finally:
        log.close()
        database.dispose()


def test_keepalive_settings_reach_the_home(tcp_url: str, tmp_path: Path) -> None:
    settings = load_settings(
        environ={},
        home=str(tmp_path / "home"),
        database_url=tcp_url,
        database_keepalives_idle=13,
        database_tcp_user_timeout_ms=17_000,
    )
    home = Home(settings)
    try:
        options = _tcp_options(_pooled_fd(home.db))
        assert (options["idle"], options["user_timeout_ms"]) == (13, 17_000)
    finally:
        home.close()
