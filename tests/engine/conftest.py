"""Fixtures for the engine tests: a :class:`~.engine_world.World` on SQLite, or on each database in turn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import world_of

from .engine_world import World


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A world on an embedded SQLite home."""
    yield from world_of(World, tmp_path / "home")


@pytest.fixture
def db_world(tmp_path: Path, db_url: str) -> Iterator[World]:
    """A world on SQLite, then on PostgreSQL."""
    yield from world_of(World, tmp_path / "home", db_url)
