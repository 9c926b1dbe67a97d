"""Keyset pages of a folder's items: ``GET /item-pages/{folder}`` and ``Client.iter_item_pages``.

Pages in every order join up to the whole listing with nothing repeated or skipped; a cursor
continues only its own folder and order; an edited cursor is a clear 400; access is checked on every
page, whatever the cursor says.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import httpx
import pytest

from datamill.api import ServerHandle
from datamill.client import Client
from datamill.client.local import LocalClient
from datamill.client.remote import RemoteClient
from datamill.errors import InvalidInput, NotFound
from datamill.records import ItemInfo

FOLDER = "Paged"
N = 23


@pytest.fixture
def filled(local: LocalClient) -> list[ItemInfo]:
    """``Paged`` with 23 items of varied sizes (some equal: ties broken by name), one updated twice."""
    local.create_folder(FOLDER)
    local.create_folder("Other")
    for i in range(N):
        local.put(FOLDER, f"f{i:02d}.txt", b"x" * (i % 5))
    local.put(FOLDER, "f07.txt", b"a newer, longer version")
    local.put("Other", "o.txt", b"o")
    return local.list_items(FOLDER)


def _all(client: Client, limit: int, sort: str = "name", descending: bool = False) -> list[list[ItemInfo]]:
    return list(client.iter_item_pages(FOLDER, limit=limit, sort=sort, descending=descending))


KEYS: dict[str, Callable[[ItemInfo], object]] = {
    "name": lambda i: i.name,
    "size": lambda i: (i.size, i.name),
    "version": lambda i: (i.version, i.name),
    "updated": lambda i: (i.updated_at, i.name),
}


@pytest.mark.parametrize("sort", list(KEYS))
@pytest.mark.parametrize("descending", [False, True])
def test_pages_join_up_to_the_whole_listing_in_every_order(
    admin: RemoteClient, local: LocalClient, filled: list[ItemInfo], sort: str, descending: bool
) -> None:
    expected = [i.name for i in sorted(filled, key=KEYS[sort], reverse=descending)]  # type: ignore[arg-type,return-value]
    for client in (admin, local):
        pages = _all(client, 5, sort, descending)
        assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
        assert [i.name for p in pages for i in p] == expected
    whole = _all(admin, 1000, sort, descending)
    assert len(whole) == 1 and [i.name for i in whole[0]] == expected


def test_a_page_answer_has_items_and_the_next_cursor(
    server: ServerHandle, local: LocalClient, filled: list[ItemInfo]
) -> None:
    token = local.home.admin_token()
    with httpx.Client(base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {token}"}) as http:
        first = http.get(f"/item-pages/{FOLDER}", params={"limit": 20}).json()
        assert [i["name"] for i in first["items"]] == [i.name for i in filled[:20]]
        assert first["items"][0] == {**filled[0].to_dict()}
        last = http.get(f"/item-pages/{FOLDER}", params={"limit": 20, "cursor": first["next"]}).json()
        assert [i["name"] for i in last["items"]] == [i.name for i in filled[20:]] and last["next"] is None
        # the unpaged listing still answers as before, for older clients
        assert http.get(f"/folder-items/{FOLDER}").json() == [i.to_dict() for i in filled]
        too_small = http.get(f"/item-pages/{FOLDER}", params={"limit": 0})
        assert too_small.status_code == 422 and "limit" in too_small.text  # FastAPI's check of the query
        bad = http.get(f"/item-pages/{FOLDER}", params={"sort": "colour"})
        assert bad.status_code == 400 and "sort by one of name, size, version, updated" in bad.json()["error"]


def _cursor(client: Client, sort: str = "name", folder: str = FOLDER) -> str:
    items, cursor = client.items_page(folder, None, 5, sort)
    assert items and cursor
    return cursor


def test_a_tampered_cursor_is_a_clear_400(admin: RemoteClient, filled: list[ItemInfo]) -> None:
    cursor = _cursor(admin)
    body, _, check = cursor.partition(".")
    raw = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[-1] = "f20.txt"  # skip ahead by editing the position
    edited = base64.urlsafe_b64encode(json.dumps(raw, separators=(",", ":")).encode()).decode().rstrip("=")
    for bad in (f"{edited}.{check}", cursor[:-3], "not-a-cursor", cursor + "x", ""):
        if not bad:
            continue
        with pytest.raises(InvalidInput, match="not one this server gave out"):
            admin.items_page(FOLDER, bad, 5)
    assert [i.name for i in admin.items_page(FOLDER, cursor, 5)[0]] == [i.name for i in filled[5:10]]


def test_a_cursor_continues_only_its_folder_and_order(admin: RemoteClient, local: LocalClient, filled: list) -> None:
    cursor = _cursor(admin, "size")
    with pytest.raises(InvalidInput, match="sorted by size; ask for the next page in that order"):
        admin.items_page(FOLDER, cursor, 5, "name")
    with pytest.raises(InvalidInput, match="sorted by size"):
        admin.items_page(FOLDER, cursor, 5, "size", descending=True)
    with pytest.raises(InvalidInput, match="not one this server gave out"):
        admin.items_page("Other", cursor, 5, "size")
    with pytest.raises(InvalidInput, match="not one this server gave out"):
        local.items_page("Other", cursor, 5, "size")


def test_a_cursor_grants_no_access(
    admin: RemoteClient, local: LocalClient, user_client: Callable[..., RemoteClient], filled: list[ItemInfo]
) -> None:
    reader = user_client("reader")
    outsider = user_client("outsider")
    local.share(FOLDER, "reader", "read")
    cursor = _cursor(reader)
    assert [i.name for i in reader.items_page(FOLDER, cursor, 5)[0]] == [i.name for i in filled[5:10]]
    # the cursor does not open the folder to someone who cannot read it: the answer a missing folder gets
    with pytest.raises(NotFound) as denied:
        outsider.items_page(FOLDER, cursor, 5)
    with pytest.raises(NotFound) as missing:
        outsider.items_page("Nope", None, 5)
    assert str(denied.value) == str(missing.value)
    # the reader's access taken away: the next page is refused although the cursor is good
    local.share(FOLDER, "reader", "none")
    with pytest.raises(NotFound):
        reader.items_page(FOLDER, cursor, 5)


def test_pages_carry_metadata_exactly_and_redact_provenance_per_reader(
    server: ServerHandle, local: LocalClient, user_client: Callable[..., RemoteClient]
) -> None:
    # Metadata goes out as stored (not re-parsed) where it can: what it holds must arrive unchanged,
    # including what orjson alone would read differently (an integer beyond 64 bits) or refuse.
    local.create_folder("Meta")
    local.create_folder("Secret")
    odd = {"big": 2**70, "neg": -(2**65), "f": 1.5, "text": "é ✓ \ud800", "nested": {"l": [1, None, True]}}
    local.put("Meta", "odd.txt", b"o", metadata=odd)
    local.put("Meta", "plain.txt", b"p")
    prov = {"wasDerivedFrom": [{"folder": "Secret", "name": "s.txt"}, {"folder": "Meta", "name": "plain.txt"}]}
    local.put("Meta", "derived.txt", b"d", metadata={"provenance": prov, "k": 1})
    reader = user_client("reader")
    local.share("Meta", "reader", "read")
    expected = {i.name: i.to_dict() for i in local.list_items("Meta")}
    token = local.home.admin_token()
    with httpx.Client(base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {token}"}) as http:
        raw = http.get("/item-pages/Meta").json()["items"]
    assert {d["name"]: d for d in raw} == expected
    assert expected["odd.txt"]["metadata"] == odd
    for client in (local, server_admin := RemoteClient(server.url, token)):
        got = {i.name: i for p in client.iter_item_pages("Meta", limit=2) for i in p}
        assert {n: i.to_dict() for n, i in got.items()} == expected
    server_admin.close()
    # the reader sees the item, but not which unreadable folder it came from
    seen = {i.name: i.metadata for p in reader.iter_item_pages("Meta", limit=2) for i in p}
    shown = seen["derived.txt"]["provenance"]["wasDerivedFrom"]
    assert shown[1] == {"folder": "Meta", "name": "plain.txt"}
    assert "Secret" not in json.dumps(shown) and seen["derived.txt"]["k"] == 1
    assert seen["odd.txt"] == odd
