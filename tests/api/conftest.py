"""Fixtures for the API tests: a fresh home served over real HTTP on loopback.

* ``make_home(database_url=None)``: a fresh Home (SQLite in its own directory by default).
* ``home``: a SQLite home; ``test_crud.py`` overrides it to run on SQLite and PostgreSQL.
* ``server``: ``home`` served by ``start_background_server`` on 127.0.0.1 and a free port.
* ``admin``: a :class:`RemoteClient` with the home's admin token; ``local``: a LocalClient on it.
* ``user_client(name, admin=False)``: creates a user and returns a RemoteClient with its token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from datamill.api import ServerHandle
from datamill.client.local import LocalClient
from datamill.client.remote import RemoteClient
from datamill.home import Home
from tests.helpers import open_home, serve


@pytest.fixture
def make_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Home]]:
    """A factory of fresh homes, closed at the end of the test."""
    homes: list[Home] = []

    def make(database_url: str | None = None) -> Home:
        path: Path = tmp_path_factory.mktemp("home")
        h = open_home(path, database_url)
        homes.append(h)
        return h

    yield make
    for h in homes:
        h.close()


@pytest.fixture
def home(make_home: Callable[..., Home]) -> Home:
    """A fresh SQLite home."""
    return make_home()


@pytest.fixture
def server(home: Home) -> Iterator[ServerHandle]:
    """``home`` served over HTTP on 127.0.0.1 (a free port)."""
    with serve(home) as handle:
        yield handle


@pytest.fixture
def http(server: ServerHandle, home: Home) -> Iterator[httpx.Client]:
    """Raw HTTP as the admin, on ``/api/v1``."""
    with httpx.Client(
        base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {home.admin_token()}"}, timeout=60
    ) as client:
        yield client


@pytest.fixture
def admin(server: ServerHandle, home: Home) -> Iterator[RemoteClient]:
    """A remote client acting as the home's admin."""
    client = RemoteClient(server.url, home.admin_token())
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def local(home: Home) -> LocalClient:
    """An embedded client on the served home, as its admin (to set up and inspect state)."""
    return LocalClient(home)


@pytest.fixture
def user_client(server: ServerHandle, local: LocalClient) -> Iterator[Callable[..., RemoteClient]]:
    """Create a user and return a remote client with a token of theirs."""
    clients: list[RemoteClient] = []

    def make(name: str, admin: bool = False) -> RemoteClient:
        local.create_user(name, admin=admin)
        client = RemoteClient(server.url, local.create_token(name).token)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()
