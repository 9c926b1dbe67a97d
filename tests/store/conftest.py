"""Fixtures for the store tests: a real Home on each database (see ``db_url`` in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from datamill.config import load_settings
from datamill.home import Home
from datamill.store import users
from datamill.store.access import Actor


def open_home(path: Path, db_url: str) -> Home:
    """A Home on ``db_url`` with blobs under ``path``, ignoring any DATAMILL_* in the environment."""
    return Home(load_settings(environ={}, home=str(path), database_url=db_url, demo=False))


@pytest.fixture
def home(db_url: str, tmp_path: Path) -> Iterator[Home]:
    """A fresh Home on SQLite, then on PostgreSQL."""
    h = open_home(tmp_path / "home", db_url)
    try:
        yield h
    finally:
        h.close()


def add_user(home: Home, name: str, password: str | None = None, is_admin: bool = False) -> Actor:
    """Create a user directly in the home's database."""
    with home.db.write() as conn:
        return users.create_user(conn, name, password, is_admin)
