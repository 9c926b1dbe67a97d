"""Fixtures for the engine tests: a :class:`~engine_world.World` on SQLite, or on each database in turn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_world import World, open_home


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A world on an embedded SQLite home."""
    home = open_home(tmp_path / "home")
    yield World(home)
    home.close()


@pytest.fixture
def db_world(tmp_path: Path, db_url: str) -> Iterator[World]:
    """A world on SQLite, then on PostgreSQL."""
    home = open_home(tmp_path / "home", db_url)
    yield World(home)
    home.close()
