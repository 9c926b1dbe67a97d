"""Fixtures for the security tests: the world of :mod:`world`, served over real HTTP.

``world`` runs once on SQLite and once on PostgreSQL (``db_url``); ``sqlite_world`` on SQLite only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import open_home, serve

from .world import World, build


def _world(path: Path, database_url: str) -> Iterator[World]:
    home = open_home(path, database_url)
    try:
        with serve(home) as server:
            yield build(home, server)
    finally:
        home.close()


@pytest.fixture
def world(tmp_path: Path, db_url: str) -> Iterator[World]:
    """The world on SQLite, then on PostgreSQL."""
    yield from _world(tmp_path / "home", db_url)


@pytest.fixture
def sqlite_world(tmp_path: Path, sqlite_db_url: str) -> Iterator[World]:
    """The world on SQLite only (for checks that do not depend on the database)."""
    yield from _world(tmp_path / "home", sqlite_db_url)


@pytest.fixture
def http(world: World) -> Iterator[httpx.Client]:
    """An HTTP client on the world's server."""
    with httpx.Client(base_url=world.url, timeout=30) as c:
        yield c
