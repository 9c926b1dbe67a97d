"""Fixtures for the dataflow tests: a :class:`~.flow_world.FlowWorld` on SQLite, or on each database in turn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import world_of

from .flow_world import FlowWorld


@pytest.fixture
def world(tmp_path: Path) -> Iterator[FlowWorld]:
    """A world on an embedded SQLite home."""
    yield from world_of(FlowWorld, tmp_path / "home")


@pytest.fixture
def db_world(tmp_path: Path, db_url: str) -> Iterator[FlowWorld]:
    """A world on SQLite, then on PostgreSQL."""
    yield from world_of(FlowWorld, tmp_path / "home", db_url)
