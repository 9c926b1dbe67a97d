"""Fixtures for the dataflow tests: a :class:`~flow_world.FlowWorld` on SQLite, or on each database in turn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flow_world import FlowWorld, open_home


@pytest.fixture
def world(tmp_path: Path) -> Iterator[FlowWorld]:
    """A world on an embedded SQLite home."""
    home = open_home(tmp_path / "home")
    yield FlowWorld(home)
    home.close()


@pytest.fixture
def db_world(tmp_path: Path, db_url: str) -> Iterator[FlowWorld]:
    """A world on SQLite, then on PostgreSQL."""
    home = open_home(tmp_path / "home", db_url)
    yield FlowWorld(home)
    home.close()
