"""Connections, transactions and migrations for SQLite and PostgreSQL.

SQLite has one writer. Rather than let writers collide and retry on "database is locked", every
write transaction starts with ``BEGIN IMMEDIATE`` (taking the write lock up front, so a reader never
has to upgrade mid-transaction) and waits on ``busy_timeout`` for other processes; threads of one
process queue on a lock first, so they never spin on SQLite's busy handler at all.
"""

from __future__ import annotations

import functools
import re
import select
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, OperationalError
from sqlalchemy.pool import NullPool

from datamill.config import Settings
from datamill.errors import AlreadyExists, ConfigError, DatamillError

SQLITE_BUSY_TIMEOUT_MS = 60_000
#: PostgreSQL advisory lock every write transaction takes first ("datm" in ASCII); see :meth:`Database.write`.
LOG_LOCK_KEY = 0x6461746D
#: ``Connection.info`` key set while a transaction holds :data:`LOG_LOCK_KEY`.
LOG_LOCKED = "datamill.log_locked"
#: ``Connection.info`` key: the newest event ``seq`` the write transaction in progress appended
#: (``events.append_rows``), or :data:`UNKNOWN_SEQ` when it added events some other way.
LAST_SEQ = "datamill.last_seq"
UNKNOWN_SEQ = -1
#: ``Connection.info`` key: what the write transaction in progress appended, for :meth:`Database.own_events`:
#: ``(first seq, {(kind, folder_id), ...})``, or None when its first seq is not known.
EVENT_FACTS = "datamill.event_facts"
#: How many of this process's recent event-writing commits :meth:`Database.own_events` remembers.
OWN_COMMITS_KEPT = 128

#: One commit of this process that added events: its first and last seq, and the distinct
#: ``(kind, folder_id)`` of its events.
OwnCommit = tuple[int, int, frozenset[tuple[str, int | None]]]


def family(kind: str) -> str:
    """The family of an event kind: what comes before its first dot (``run`` for ``run.queued``).

    Services wait for the families they act on (:meth:`datamill.events.EventLog.wait`): a scheduler
    looking for runs is not woken by the task events of a run another process drives.
    """
    return kind.split(".", 1)[0]


@dataclass(frozen=True)
class Keepalives:
    """How a PostgreSQL connection notices a peer that went away without a word.

    A connection cut silently (a network partition, a host gone: no FIN, no RST) otherwise leaves
    a query, or the event log's LISTEN, waiting on its socket forever, and the thread waiting
    with it (a scheduler's: its runs stop). With these the kernel probes a connection idle for
    ``idle`` seconds every ``interval`` seconds and drops it after ``count`` probes unanswered;
    ``user_timeout_ms`` (``TCP_USER_TIMEOUT``) drops it when data sent stays unacknowledged that
    long. The defaults find a dead peer in about a minute (30 + 3 x 10 s; 60 s). 0 leaves a
    value to the operating system.
    """

    idle: int = 30
    interval: int = 10
    count: int = 3
    user_timeout_ms: int = 60_000

    @classmethod
    def of(cls, settings: Settings) -> Keepalives:
        """The keepalives ``settings`` ask for (``database_keepalives_*``, ``database_tcp_user_timeout_ms``)."""
        return cls(
            idle=settings.database_keepalives_idle,
            interval=settings.database_keepalives_interval,
            count=settings.database_keepalives_count,
            user_timeout_ms=settings.database_tcp_user_timeout_ms,
        )

    def options(self, url: str) -> dict[str, str]:
        """The libpq connection parameters, less the ones ``url``'s query sets (the user's own win)."""
        given = set(make_url(normalize_url(url)).query)
        wanted = {
            "keepalives": "1",
            "keepalives_idle": str(self.idle),
            "keepalives_interval": str(self.interval),
            "keepalives_count": str(self.count),
            "tcp_user_timeout": str(self.user_timeout_ms),
        }
        return {key: value for key, value in wanted.items() if key not in given}


def normalize_url(url: str) -> str:
    """Pick the driver datamill uses for a URL: psycopg 3 for PostgreSQL."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:") or url.startswith("postgresql+psycopg://"):
        return url
    raise ConfigError(
        f"unsupported database URL scheme in {url.split('://', 1)[0]!r}; use sqlite:/// or postgresql://",
        key="database_url",
    )


class Database:
    """One database: an engine for reads, an engine (or lock) for writes, and migrations."""

    def __init__(self, url: str, keepalives: Keepalives | None = None) -> None:
        self.url = normalize_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        #: libpq parameters every PostgreSQL connection of this database is opened with, besides its
        #: URL's (:class:`Keepalives`): the pool's, and the event log's listener's
        self.connect_options: dict[str, str] = {} if self.is_sqlite else (keepalives or Keepalives()).options(self.url)
        self._write_lock = threading.RLock()
        self._writing = threading.local()
        # Wakes in-process waiters as soon as a write commits; other processes are noticed by polling
        # (SQLite) or LISTEN/NOTIFY (PostgreSQL) in ``events.EventLog``.
        self.committed = threading.Condition()
        #: commits seen by this process (its own, and others' as ``events.EventLog`` notices them);
        #: a waiter compares it under ``committed`` so that no wake-up falls between a check and a wait
        self.commits = 0
        #: the newest event seq committed by this process's own write transactions (events commit in
        #: seq order, so every smaller seq is committed too), and the count of the last commit whose
        #: events are not known that way (another process's, or events added without ``append_rows``):
        #: while none came after the log's head was last read, the head is known without reading it
        self.known_seq = 0
        self.unknown_at = 0
        #: by event family (:func:`family`), the newest seq known committed, from this process's own
        #: commits and from other processes' notifications that say their families (PostgreSQL); and
        #: ``wild_seq``, the newest seq read from the log whose family is not known (an event of any family
        #: up to it may be new): a waiter for some families wakes when either passes its cursor
        self.family_seq: dict[str, int] = {}
        self.wild_seq = 0
        #: the latest of this process's commits that added events (:meth:`own_events`), under ``committed``
        self._own: deque[OwnCommit] = deque(maxlen=OWN_COMMITS_KEPT)
        if self.is_sqlite:
            self.engine = self._sqlite_engine(immediate=False)
            self.write_engine = self._sqlite_engine(immediate=True)
        else:
            self.engine = create_engine(
                self.url, pool_size=10, max_overflow=20, connect_args=dict(self.connect_options)
            )
            # Instead of a ping per checkout (a round trip per transaction), the socket tells whether
            # the server said anything while the connection sat in the pool: see _closed_by_server.
            event.listen(self.engine, "checkout", _closed_by_server)
            self.write_engine = self.engine
        # Events appended inside a savepoint rolled back are gone (and SQLite gives their seqs again):
        # the transaction's newest seq is not known any more.
        event.listen(self.write_engine, "rollback_savepoint", _seq_unknown)

    def _sqlite_engine(self, immediate: bool) -> Engine:
        engine = create_engine(
            self.url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            poolclass=NullPool if ":memory:" in self.url else None,
        )

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event emit BEGIN itself instead of pysqlite's implicit one.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            # 64 MiB of page cache (default 2 MiB), taken only as pages are read: inserting thousands
            # of rows into tables with several indexes (tasks, events) otherwise re-reads index pages.
            cur.execute("PRAGMA cache_size=-65536")
            cur.close()

        begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql(begin)

        return engine

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction; committed on exit, rolled back on error.

        On PostgreSQL it first takes the event log's advisory lock (:data:`LOG_LOCK_KEY`), which
        an event-writing transaction holds until it commits anyway (events commit in ``seq``
        order). Taken first, before any row lock, it orders writers from other processes as the
        in-process lock orders this process's threads: without it, a transaction holding an item
        row and waiting for the log lock deadlocked with one holding the log lock and waiting for
        that row. A write nested in another on the same thread (a second connection) does not
        take it again: it would wait for its own outer transaction.

        Driver errors are translated here so nothing above ``db/`` sees them.
        """
        wrote: int | None = None
        facts: tuple[int, set[tuple[str, int | None]]] | None = None
        with self._write_lock:
            depth = getattr(self._writing, "depth", 0)
            self._writing.depth = depth + 1
            try:
                with self.write_engine.begin() as conn:
                    # The pooled connection's own dict, held here: after an interrupt inside a
                    # statement the connection is invalidated, and reading ``conn.info`` then raises
                    # instead of letting the interrupt through.
                    info = conn.info
                    if depth == 0 and not self.is_sqlite:
                        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOG_LOCK_KEY})
                        info[LOG_LOCKED] = True
                    try:
                        yield conn
                    finally:
                        info.pop(LOG_LOCKED, None)
                        wrote = info.pop(LAST_SEQ, None)
                        facts = info.pop(EVENT_FACTS, None)
            except IntegrityError as exc:
                raise AlreadyExists(f"that already exists ({_constraint(exc)})") from exc
            except OperationalError as exc:
                raise DatamillError(_operational_message(exc)) from exc
            finally:
                self._writing.depth = depth
        self.notify_commit(known=True, seq=wrote, facts=facts)

    def notify_commit(
        self, known: bool = False, seq: int | None = None, facts: tuple[int, set[tuple[str, int | None]]] | None = None
    ) -> None:
        """Wake the threads waiting for a commit (this process's, or one noticed from another).

        ``known``: a write transaction of this process, whose newest event is ``seq`` (None: it
        added none; :data:`UNKNOWN_SEQ`: not known), and ``facts`` what it added (see :data:`EVENT_FACTS`).
        """
        with self.committed:
            self.commits += 1
            if known and seq != UNKNOWN_SEQ:
                self.known_seq = max(self.known_seq, seq or 0)
                if seq is not None and facts is not None:
                    self._own.append((facts[0], seq, frozenset(facts[1])))
                    self._note_families({family(kind) for kind, _ in facts[1]}, seq)
                elif seq is not None:
                    self.wild_seq = max(self.wild_seq, seq)
            else:
                self.unknown_at = self.commits
            self.committed.notify_all()

    def notice(self, seq: int, families: set[str]) -> bool:
        """Another process committed events of ``families``, the newest ``seq`` (its notification says
        so): every smaller seq is committed too (events commit in seq order, see :mod:`datamill.events`),
        so the log's head is known without reading it. Wakes the waiters when it is news; returns that.
        """
        with self.committed:
            # Its families are noted even when its seq is not news: a commit of this process with a
            # later seq may have told the head first, not what came before it.
            news = self._note_families(families, seq) or seq > self.known_seq
            self.known_seq = max(self.known_seq, seq)
            if news:
                self.commits += 1
                self.committed.notify_all()
            return news

    def _note_families(self, families: set[str], seq: int) -> bool:
        """Under ``committed``: events of ``families`` up to ``seq`` are committed; whether that was news."""
        news = False
        for name in families:
            if self.family_seq.get(name, 0) < seq:
                self.family_seq[name] = seq
                news = True
        return news

    def family_head(self, families: tuple[str, ...]) -> int:
        """The newest seq committed that may be an event of ``families`` (:attr:`family_seq`, :attr:`wild_seq`)."""
        with self.committed:
            return max(self.wild_seq, *(self.family_seq.get(f, 0) for f in families))

    def own_events(self, after: int, upto: int) -> set[tuple[str, int | None]] | None:
        """The distinct ``(kind, folder_id)`` of the events with ``after < seq <= upto``, when this
        process's own recent commits added every one of them; None when it cannot tell (another
        process's events, a gap, events added without :func:`datamill.events.append_rows`, or
        commits older than the :data:`OWN_COMMITS_KEPT` remembered): then read the log.

        A service that looks at what happened since its last look (the triggers) reads nothing
        after this process's own commits: most of them are the runs and tasks it records itself.
        """
        if upto <= after:
            return set()
        with self.committed:
            spans = sorted(c for c in self._own if c[1] > after and c[0] <= upto)
        need, seen = after + 1, set[tuple[str, int | None]]()
        for first, last, facts in spans:
            if first > need or last > upto:
                return None  # seqs not ours (or not yet known as ours) in between, or beyond the look
            seen |= facts
            need = max(need, last + 1)
        return seen if need > upto else None

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction with a consistent snapshot."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise DatamillError(_operational_message(exc)) from exc

    def data_version(self, conn: Connection) -> int:
        """SQLite's counter of commits by other connections; a cheap way to notice new events."""
        return int(conn.exec_driver_sql("PRAGMA data_version").scalar_one())

    def migrate(self) -> None:
        """Bring the schema to the newest migration (``alembic upgrade head``).

        A database already at the head is left alone without loading Alembic: every command
        opens its home this way, and Alembic (with Mako and Pygments) costs a command that
        lands a few files more than the files do.
        """
        if self._at_head():
            return
        from alembic import command

        cfg = alembic_config(self.url)
        with self._write_lock, self.write_engine.connect() as conn:
            if self.is_sqlite:
                conn.commit()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()

    def _at_head(self) -> bool:
        """Whether the database's ``alembic_version`` is the one head of the shipped migrations."""
        head = head_revision()
        if head is None:
            return False
        try:
            with self.engine.connect() as conn:
                rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        except DBAPIError:
            return False  # a new database: no table yet
        return [r[0] for r in rows] == [head]

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
        if self.write_engine is not self.engine:
            self.write_engine.dispose()

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self.read() as conn:
            conn.execute(text("SELECT 1"))


#: PostgreSQL's codes for a transaction it stopped to end a conflict with another one.
_CONFLICT_STATES = {"40P01": "a deadlock", "40001": "a serialization failure", "55P03": "a lock it could not get"}


def _operational_message(exc: OperationalError) -> str:
    """What a driver's operational error means for the user, and what to do about it.

    Nothing of the transaction was written in any of these cases; the text says so, because "check
    that the database is reachable" is wrong advice for a conflict or a long-held lock.
    """
    orig = exc.orig
    state = getattr(orig, "sqlstate", None)
    if state in _CONFLICT_STATES:
        return (
            f"database error: PostgreSQL stopped this transaction ({_CONFLICT_STATES[state]} with another "
            "transaction); nothing of it was written. Try again."
        )
    if getattr(orig, "sqlite_errorname", None) in {"SQLITE_BUSY", "SQLITE_LOCKED"}:
        return (
            f"database error: {orig}: another process held the database's write lock for over "
            f"{SQLITE_BUSY_TIMEOUT_MS // 1000} s; nothing was written. Try again, or look for a stuck datamill process."
        )
    return f"database error: {orig}. Check that the database is reachable."


def _closed_by_server(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """A pooled PostgreSQL connection being checked out: refuse it if the server closed it.

    An idle connection in the pool gets no message from the server (none LISTENs; the event
    log's listener has its own connection), except when the server ends it: a restart, a
    ``pg_terminate_backend``, an idle timeout send a FATAL error and close the socket. So a
    socket with something to read is one to throw away; SQLAlchemy then checks out another
    (``DisconnectionError``). This replaces ``pool_pre_ping``, which made a round trip per
    transaction for the same answer.
    """
    try:
        fd = -1 if dbapi_conn.closed else dbapi_conn.fileno()
    except Exception as exc:  # psycopg raises when its connection is no longer usable
        raise DisconnectionError("the connection is broken") from exc
    if fd < 0:
        raise DisconnectionError("the connection is closed")
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    if poller.poll(0):
        raise DisconnectionError("the server sent something to an idle connection (it closed it)")


def _seq_unknown(conn: Connection, _name: Any, _context: Any) -> None:
    if LAST_SEQ in conn.info:
        conn.info[LAST_SEQ] = UNKNOWN_SEQ
        conn.info[EVENT_FACTS] = None


def alembic_config(url: str) -> Any:
    """An Alembic config pointing at the migrations shipped inside the package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("datamill.db") / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _constraint(exc: IntegrityError) -> str:
    orig = exc.orig
    diag = getattr(orig, "diag", None)
    name = getattr(diag, "constraint_name", None) if diag is not None else None
    return str(name or orig).splitlines()[0]


_REVISION = re.compile(r"^revision\s*(?::[^=]*)?=\s*[\"']([^\"']+)[\"']", re.MULTILINE)
_DOWN = re.compile(r"^down_revision\s*(?::[^=]*)?=(.*)$", re.MULTILINE)


@functools.cache
def head_revision() -> str | None:
    """The one head revision of the migrations shipped in the package, read from their text (None: not one)."""
    revisions: set[str] = set()
    downs: set[str] = set()
    for path in (Path(__file__).parent / "migrations" / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        rev, down = _REVISION.search(text), _DOWN.search(text)
        if rev is None or down is None:
            return None  # a file this reading does not understand: let Alembic decide
        revisions.add(rev.group(1))
        downs.update(re.findall(r"[\"']([^\"']+)[\"']", down.group(1)))
    heads = revisions - downs
    return heads.pop() if len(heads) == 1 else None
