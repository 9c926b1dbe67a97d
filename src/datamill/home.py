"""A datamill home: the settings, database, blob store and event log of one installation.

Opening a home migrates its database, records the digest algorithm and, the first time, creates
the ``admin`` user with a token. The token's plain text is kept in ``HOME/admin.token`` (mode 0600)
so that ``datamill up`` can print a login URL on every start, as Jupyter does.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from sqlalchemy import select

from datamill.config import Settings, load_settings
from datamill.db.database import Database, Keepalives
from datamill.db.models import User
from datamill.errors import HomeInUse
from datamill.events import EventLog
from datamill.store import users
from datamill.store.access import Actor
from datamill.store.blobs import open_blob_store
from datamill.store.store import Store

ADMIN_NAME = "admin"
TOKEN_FILE = "admin.token"
#: Held (``flock``) by the one ``datamill up`` serving a SQLite home; holds its pid and URL.
SERVER_LOCK = "server.lock"


class Home:
    """Everything one datamill installation consists of, opened from settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path: Path = settings.home_path
        self.path.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.resolved_database_url, Keepalives.of(settings))
        self.blobs = open_blob_store(settings.resolved_blob_url, settings)
        self.store = Store(self.db, self.blobs)
        self.events = EventLog(self.db)
        self.store.initialize()
        self.blobs.clean_tmp()
        self.admin = self._ensure_admin()

    @classmethod
    def open(cls, home: str | Path | None = None, **overrides: object) -> Home:
        """Open (creating if needed) the home at ``home``, other settings from file and environment."""
        settings = load_settings(home=str(home) if home is not None else None, **overrides)  # type: ignore[arg-type]
        return cls(settings)

    @property
    def token_file(self) -> Path:
        """Where the first admin token is kept for ``datamill up`` to print."""
        return self.path / TOKEN_FILE

    def _ensure_admin(self) -> Actor:
        with self.db.write() as conn:
            row = conn.execute(select(User.id, User.name, User.is_admin).where(User.name == ADMIN_NAME)).first()
            if row is not None:
                return Actor(row.id, row.name, row.is_admin)
            admin = users.create_user(conn, ADMIN_NAME, is_admin=True)
            token = users.create_token(conn, admin, name="first start")
        # Written after commit: a crash in between leaves an admin without a saved token, which
        # `datamill token create --user admin` fixes; never a token file for a user that is not there.
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token.token + "\n")
        return admin

    def admin_token(self) -> str | None:
        """The saved first admin token, if it is still on disk."""
        try:
            return self.token_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def actor(self, name: str | None = None) -> Actor:
        """The user called ``name`` (the admin when None)."""
        if name is None:
            return self.admin
        with self.db.read() as conn:
            return users.get_user(conn, name)

    def close(self) -> None:
        """Release connections, background threads and this process's temporary directory."""
        self.events.close()
        self.db.dispose()
        self.blobs.close()


class ServerLock:
    """The lock that makes ``datamill up`` the only server of a SQLite home.

    One SQLite file has one writer at a time and no way to tell a second server's scheduler what
    the first one does, so a second server on the same home is refused; CLI commands on the home
    work beside the server (they queue on SQLite's write lock). PostgreSQL homes take no lock:
    several servers may share one database. The lock is an ``flock`` on ``HOME/server.lock``,
    released by the kernel when the server ends however it ends, so a crash never leaves it stuck.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, settings: Settings) -> ServerLock | None:
        """Take the lock for ``settings``' home, or raise :class:`HomeInUse`; None for PostgreSQL."""
        if not settings.resolved_database_url.startswith("sqlite"):
            return None
        home = settings.home_path
        home.mkdir(parents=True, exist_ok=True)
        path = home / SERVER_LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise HomeInUse(_in_use_message(home, path), home=str(home)) from None
        lock = cls(path, fd)
        lock.note()
        return lock

    def note(self, url: str | None = None) -> None:
        """Record this process (and, once it listens, its URL) for a second server to report."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n{url or ''}\n".encode(), 0)

    def release(self) -> None:
        """Let another server start on the home."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def _in_use_message(home: Path, path: Path) -> str:
    try:
        pid, _, url = path.read_text().partition("\n")
    except OSError:
        pid, url = "", ""
    pid, url = pid.strip(), url.strip()
    who = f"process {pid}" if pid else "another process"
    where = f" at {url}" if url else ""
    stop = f"`kill {pid}`" if pid else "Ctrl-C in its terminal"
    return (
        f"another datamill server ({who}) already serves the home {home}{where}; two servers on one "
        f"SQLite home are not supported. Use that server (CLI commands on this home work beside it), "
        f"or stop it first ({stop}) and run `datamill up` again"
    )


def open_home(settings: Settings | None = None) -> Home:
    """Open the home described by ``settings`` (or by the environment and config file)."""
    return Home(settings or load_settings())
