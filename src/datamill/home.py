"""A datamill home: the settings, database, blob store and event log of one installation.

Opening a home migrates its database, records the digest algorithm and, the first time, creates
the ``admin`` user with a token. The token's plain text is kept in ``HOME/admin.token`` (mode 0600)
so that ``datamill up`` can print a login URL on every start, as Jupyter does.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import select

from datamill.config import Settings, load_settings
from datamill.db.database import Database
from datamill.db.models import User
from datamill.events import EventLog
from datamill.store import users
from datamill.store.access import Actor
from datamill.store.blobs import LocalBlobStore, open_blob_store
from datamill.store.store import Store

ADMIN_NAME = "admin"
TOKEN_FILE = "admin.token"


class Home:
    """Everything one datamill installation consists of, opened from settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path: Path = settings.home_path
        self.path.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.resolved_database_url)
        self.blobs = open_blob_store(settings.resolved_blob_url)
        self.store = Store(self.db, self.blobs)
        self.events = EventLog(self.db)
        self.store.initialize()
        if isinstance(self.blobs, LocalBlobStore):
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
            row = conn.execute(
                select(User.id, User.name, User.is_admin).where(User.name == ADMIN_NAME)
            ).first()
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
        """Release connections and background threads."""
        self.events.close()
        self.db.dispose()


def open_home(settings: Settings | None = None) -> Home:
    """Open the home described by ``settings`` (or by the environment and config file)."""
    return Home(settings or load_settings())
