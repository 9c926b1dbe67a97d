"""Fixtures for the watched-directory tests.

* ``roots``: the directory the home's ``watch_roots`` allows (directory dataflows read below it).
* ``home``: a fresh SQLite home (inline executor) with ``watch_roots`` set to ``roots``.
* ``local``: a :class:`LocalClient` on it, as the admin.
* ``src``: a directory below ``roots`` to watch, empty.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from datamill.client.local import LocalClient
from datamill.home import Home
from tests.helpers import open_home


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    d = tmp_path / "roots"
    d.mkdir()
    return d


@pytest.fixture
def home(tmp_path: Path, roots: Path) -> Iterator[Home]:
    h = open_home(tmp_path / "home", executor="inline", watch_roots=str(roots))
    yield h
    h.close()


@pytest.fixture
def local(home: Home) -> LocalClient:
    return LocalClient(home)


@pytest.fixture
def src(roots: Path) -> Path:
    d = roots / "instrument"
    d.mkdir()
    return d
