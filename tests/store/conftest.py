"""Fixtures for the store tests: a real Home on each database (see ``db_url`` in tests/conftest.py).

``postgres_db_url`` and ``sqlite_db_url`` are overridden here to clone a database that was migrated
once per session (``CREATE DATABASE ... TEMPLATE``; a copy of the SQLite file), instead of running
every migration for every test. The clone is the schema the migrations make (tests/test_migrations.py
checks them against the models).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from datamill.db.database import Database
from datamill.home import Home
from tests.helpers import create_database, drop_database, libpq_url, open_home


@pytest.fixture(scope="session")
def migrated_template(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL database with every migration applied, to clone."""
    name = create_database(postgres_url)
    db = Database(libpq_url(postgres_url, name))
    try:
        db.migrate()
    finally:
        db.dispose()
    try:
        yield name
    finally:
        drop_database(postgres_url, name)


@pytest.fixture
def postgres_db_url(postgres_url: str, migrated_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test; dropped afterwards."""
    name = create_database(postgres_url, template=migrated_template)
    try:
        yield libpq_url(postgres_url, name)
    finally:
        drop_database(postgres_url, name)


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file with every migration applied, all connections to it closed."""
    path = tmp_path_factory.mktemp("sqlite-template") / "datamill.db"
    db = Database(f"sqlite:///{path}")
    try:
        db.migrate()
    finally:
        db.dispose()  # the last connection to close checkpoints the WAL into the file
    return path


@pytest.fixture
def sqlite_db_url(tmp_path: Path, migrated_sqlite_file: Path) -> str:
    """A fresh, migrated SQLite file in the test's ``tmp_path``."""
    path = tmp_path / "datamill.db"
    shutil.copyfile(migrated_sqlite_file, path)
    wal = migrated_sqlite_file.with_name(migrated_sqlite_file.name + "-wal")
    if wal.exists():
        shutil.copyfile(wal, path.with_name(path.name + "-wal"))
    return f"sqlite:///{path}"


@pytest.fixture
def home(db_url: str, tmp_path: Path) -> Iterator[Home]:
    """A fresh Home on SQLite, then on PostgreSQL."""
    h = open_home(tmp_path / "home", db_url)
    try:
        yield h
    finally:
        h.close()
