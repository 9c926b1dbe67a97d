"""Batch uploads over HTTP (``POST /api/v1/content/{folder}``): one transaction; bad bodies refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from datamill.api import ServerHandle
from datamill.client.local import LocalClient
from datamill.client.remote import RemoteClient, _encode_batch
from datamill.errors import NotFound, PermissionDenied
from datamill.home import Home
from tests.helpers import add_user, serve


@pytest.fixture
def server(home: Home, local: LocalClient) -> Iterator[ServerHandle]:
    with serve(home) as handle:
        yield handle


def post(server: ServerHandle, token: str, folder: str, body: bytes, ctype: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/v1/content/{folder}",
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": ctype},
    )


def item_events(local: LocalClient, after: int) -> list[Any]:
    return [e for e in local.events(after) if e.kind.startswith("item.")]


def test_put_many_over_http_is_one_batch_with_per_file_metadata(
    server: ServerHandle, home: Home, local: LocalClient
) -> None:
    local.create_folder("Raw")
    files = [(f"f{i}.txt", f"data {i}".encode()) for i in range(30)] + [('odd "name"; é.txt', b"odd")]
    metas = [{"watch": {"path": n}} for n, _ in files]
    with RemoteClient(server.url, home.admin_token()) as remote:
        infos = remote.put_many("Raw", files, metadata={"lab": "xrd"}, item_metadata=metas)
        assert not remote._no_batches  # the batch route answered, not a PUT per file
    assert [i.name for i in infos] == [n for n, _ in files]
    assert local.get('Raw/odd "name"; é.txt') == b"odd"
    assert local.get("Raw/f7.txt") == b"data 7"
    assert local.item("Raw/f7.txt").metadata == {"lab": "xrd", "watch": {"path": "f7.txt"}}
    # One transaction: the versions are consecutive events of one batch, each an item.created.
    assert [e.kind for e in item_events(local, 0)] == ["item.created"] * len(files)


def test_a_cut_or_damaged_body_stores_nothing_and_says_what_is_wrong(
    server: ServerHandle, home: Home, local: LocalClient
) -> None:
    local.create_folder("Raw")
    token = home.admin_token() or ""
    body, ctype = _encode_batch([("a.txt", b"aaaa", None), ("b.txt", b"bbbb", None)], {})
    cursor = local.events()[-1].seq

    cut = post(server, token, "Raw", body[: len(body) - 40], ctype)
    assert cut.status_code == 400 and cut.json()["code"] == "upload_incomplete"
    assert "closing boundary" in cut.json()["error"]

    damaged = post(server, token, "Raw", body.replace(b"bbbb", b"bxbb"), ctype)
    assert damaged.status_code == 400 and damaged.json()["code"] == "digest_mismatch"
    assert "b.txt" in damaged.json()["error"]

    shorter = post(server, token, "Raw", body.replace(b"bbbb", b"bbb"), ctype)
    assert shorter.json()["code"] == "upload_incomplete" and "3 bytes arrived" in shorter.json()["error"]

    not_multipart = post(server, token, "Raw", b"{}", "application/json")
    assert not_multipart.status_code == 400 and "multipart/form-data" in not_multipart.json()["error"]

    no_manifest, ctype2 = _encode_batch([("a.txt", b"a", None)], {})
    garbled = no_manifest.replace(b'name="manifest"', b'name="other"')
    assert "manifest" in post(server, token, "Raw", garbled, ctype2).json()["error"]

    assert local.list_items("Raw") == []
    assert item_events(local, cursor) == []


def test_batch_uploads_check_write_access_before_reading(server: ServerHandle, home: Home, local: LocalClient) -> None:
    local.create_folder("Shared")
    local.create_folder("Secret")
    add_user(home, "bob")
    local.share("Shared", "bob", "read")
    with RemoteClient(server.url, local.create_token("bob").token) as bob:
        with pytest.raises(PermissionDenied):
            bob.put_many("Shared", [("a.txt", b"a")])
        with pytest.raises(NotFound):  # a folder bob may not read is not there for him
            bob.put_many("Secret", [("a.txt", b"a")])
    assert local.list_items("Shared") == [] and local.list_items("Secret") == []
