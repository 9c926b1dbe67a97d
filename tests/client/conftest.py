"""Fixtures for the client tests of runs and dataflows.

* ``home``: a fresh SQLite home whose executor is ``inline`` (fast, in-process).
* ``local``: a :class:`LocalClient` on it, as the admin, with folders ``Raw`` (two items) and ``Out``.
* ``server``: the home served on loopback *with services* (scheduler, triggers, notifier).
* ``remote``: a :class:`RemoteClient` on that server, as the admin.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from datamill.api import ServerHandle
from datamill.client.local import LocalClient
from datamill.client.remote import RemoteClient
from datamill.home import Home
from tests.helpers import open_home, serve

from .counting_pipeline import COUNTING_REF

__all__ = ["COUNTING_REF"]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    h = open_home(tmp_path / "home", executor="inline")
    yield h
    h.close()


@pytest.fixture
def local(home: Home) -> LocalClient:
    client = LocalClient(home)
    client.create_folder("Raw")
    client.create_folder("Out")
    client.put("Raw", "a.txt", b"1\n2\n")
    client.put("Raw", "b.txt", b"3\n")
    return client


@pytest.fixture
def server(home: Home, local: LocalClient) -> Iterator[ServerHandle]:
    with serve(home, services=True) as handle:
        yield handle


@pytest.fixture
def remote(server: ServerHandle, home: Home) -> Iterator[RemoteClient]:
    client = RemoteClient(server.url, home.admin_token())
    try:
        yield client
    finally:
        client.close()
