"""Groups over real HTTP: the routes, their answers per role, folder grants to groups, and an open
event stream that stops carrying a folder's events the moment its reader leaves the group.

Runs on SQLite and on PostgreSQL (``home`` is overridden to take ``db_url``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from datamill.api import ServerHandle
from datamill.client.local import LocalClient
from datamill.client.remote import RemoteClient
from datamill.errors import InvalidInput, NotFound, PermissionDenied
from datamill.home import Home

SHAPE = {"ok", "status", "code", "error", "detail"}


@pytest.fixture
def home(make_home: Callable[..., Home], db_url: str) -> Home:
    """A fresh home on SQLite, then on PostgreSQL."""
    return make_home(db_url)


@pytest.fixture
def http(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=10) as c:
        yield c


def bearer(local: LocalClient, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {local.create_token(user).token}"}


def test_group_routes_per_role(http: httpx.Client, local: LocalClient) -> None:
    for name in ("ana", "bo", "cy"):
        local.create_user(name)
    ana, bo, cy = (bearer(local, n) for n in ("ana", "bo", "cy"))
    admin = bearer(local, "admin")

    r = http.post("/groups", json={"name": "imaging"}, headers=ana)
    assert r.status_code == 201, r.text
    assert [(m["user"], m["admin"]) for m in r.json()["members"]] == [("ana", True)]
    for bad, status in (({"name": "has space"}, 400), ({"name": "imaging"}, 409), ({}, 422)):
        r = http.post("/groups", json=bad, headers=bo)
        assert r.status_code == status and set(r.json()) == SHAPE, r.text
    assert http.post("/groups", json={"name": "x"}).status_code == 401

    assert http.put("/groups/imaging/members/bo", headers=ana).status_code == 200
    r = http.put("/groups/imaging/members/cy", json={"admin": False}, headers=bo)
    assert r.status_code == 403 and r.json()["code"] == "permission_denied"
    assert [g["name"] for g in http.get("/groups", headers=bo).json()] == ["imaging"]
    assert http.get("/groups", headers=cy).json() == []
    assert [g["name"] for g in http.get("/groups", headers=admin).json()] == ["imaging"]

    # An outsider: 404 for every route of the group, byte for byte the answer for a missing group
    # (with the name swapped), and the group's members never in it.
    for method, url in (
        ("GET", "/groups/{}"),
        ("DELETE", "/groups/{}"),
        ("PUT", "/groups/{}/members/cy"),
        ("DELETE", "/groups/{}/members/bo"),
    ):
        hidden = http.request(method, url.format("imaging"), headers=cy)
        missing = http.request(method, url.format("nosuch"), headers=cy)
        assert hidden.status_code == missing.status_code == 404, (method, url, hidden.text)
        assert hidden.text.replace("imaging", "X") == missing.text.replace("nosuch", "X")
        assert "ana" not in hidden.text and "bo" not in hidden.text.replace("imaging", "")
    assert http.get("/groups/imaging", headers=bo).json()["name"] == "imaging"
    assert http.get("/groups/imaging", headers=admin).status_code == 200

    # Members leave on their own; group admins remove others; only group admins delete.
    assert http.delete("/groups/imaging", headers=bo).status_code == 403
    assert http.delete("/groups/imaging/members/bo", headers=bo).status_code == 200
    assert http.get("/groups/imaging", headers=bo).status_code == 404
    r = http.delete("/groups/imaging", headers=ana)
    assert r.status_code == 200 and r.json() == {"ok": True, "grants": 0}
    assert http.get("/groups/imaging", headers=ana).status_code == 404


def test_sharing_a_folder_with_a_group_over_http(http: httpx.Client, local: LocalClient, server: ServerHandle) -> None:
    for name in ("ana", "bo", "cy"):
        local.create_user(name)
    local.create_folder("Lab/2026")
    local.put("Lab/2026", "a.csv", b"a")
    local.create_group("lab")
    local.add_group_member("lab", "bo")
    bo_h, cy_h = bearer(local, "bo"), bearer(local, "cy")
    admin_h = bearer(local, "admin")

    assert http.get("/folders/Lab/2026", headers=bo_h).status_code == 404
    r = http.put("/access/Lab", json={"group": "lab", "level": "write"}, headers=admin_h)
    assert r.status_code == 200, r.text
    assert http.get("/access/Lab", headers=bo_h).json() == [{"group": "lab", "level": "write"}]
    assert http.put("/content/Lab/2026/b.csv", content=b"b", headers=bo_h).status_code == 201
    assert http.get("/folders/Lab/2026", headers=cy_h).status_code == 404
    # The grant's holders may not share further without admin on the folder.
    r = http.put("/access/Lab", json={"group": "lab", "level": "admin"}, headers=bo_h)
    assert r.status_code == 403
    # Exactly one of user and group.
    for body in ({"level": "read"}, {"user": "cy", "group": "lab", "level": "read"}):
        r = http.put("/access/Lab", json=body, headers=admin_h)
        assert r.status_code == 400 and set(r.json()) == SHAPE, r.text
    assert http.delete("/access/Lab", headers=admin_h).status_code == 400
    # A user grant and a group grant side by side; each entry names one of them.
    assert http.put("/access/Lab", json={"user": "cy", "level": "read"}, headers=admin_h).status_code == 200
    assert http.get("/access/Lab", headers=admin_h).json() == [
        {"user": "cy", "level": "read"},
        {"group": "lab", "level": "write"},
    ]
    assert http.delete("/access/Lab", params={"group": "lab"}, headers=admin_h).status_code == 200
    assert http.get("/folders/Lab", headers=bo_h).status_code == 404

    # The same through the remote client, with typed errors.
    with RemoteClient(server.url, bo_h["Authorization"].removeprefix("Bearer ")) as bo:
        group = bo.group("lab")
        assert [m.user for m in group.members] == ["admin", "bo"] and group.grants == []
        with pytest.raises(PermissionDenied):
            bo.add_group_member("lab", "cy")
        with pytest.raises(NotFound):
            bo.share_group("Lab", "lab", "read")
        mine = bo.create_group("bo-team")
        assert mine.admins() == ["bo"]
        assert bo.add_group_member("bo-team", "cy", admin=True).admins() == ["bo", "cy"]
        assert [g.name for g in bo.groups()] == ["bo-team", "lab"]
        with pytest.raises(InvalidInput):
            bo.create_group("../x")
        bo.remove_group_member("bo-team", "cy")
        assert bo.delete_group("bo-team") == 0
        with pytest.raises(NotFound):
            bo.group("bo-team")


def read_until(lines: Iterator[str], marker: str) -> list[str]:
    """Lines of the stream up to and including the first data line holding ``marker``."""
    seen = []
    for line in lines:
        seen.append(line)
        if line.startswith("data:") and marker in line:
            return seen
    raise AssertionError(f"the stream ended before {marker!r}: {seen}")


def test_leaving_a_group_stops_an_open_event_stream_at_once(server: ServerHandle, local: LocalClient) -> None:
    local.create_user("bo")
    local.create_folder("Team Data")
    local.create_group("team")
    local.add_group_member("team", "bo")
    local.share_group("Team Data", "team", "read")
    bo = local.as_user("bo")
    headers = bearer(local, "bo")
    start = local.home.events.latest()
    with (
        httpx.Client(timeout=30) as c,
        c.stream("GET", f"{server.url}/api/v1/events/stream", params={"since": start}, headers=headers) as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines) == "retry: 3000"
        local.put("Team Data", "before.csv", b"1")
        assert any("before.csv" in line for line in read_until(lines, "before.csv"))

        local.remove_group_member("team", "bo")
        local.put("Team Data", "after-removal.csv", b"2")
        local.create_group("secret-board")
        # A marker bo may see, appended after all that: whatever the stream was going to deliver
        # before it has been delivered by the time the marker arrives (events go in seq order).
        bo.create_folder("bo's marker")
        seen = read_until(lines, "bo's marker")

        local.add_group_member("team", "bo")
        local.put("Team Data", "rejoined.csv", b"3")
        again = read_until(lines, "rejoined.csv")
    text = "\n".join(seen)
    assert "after-removal.csv" not in text and "Team Data" not in text
    assert "secret-board" not in text and "group." not in text
    assert [line.removeprefix("event: ") for line in seen if line.startswith("event:")] == ["folder.created"]
    # Back in the group: its events flow again on the same stream (group.member_added included).
    kinds = [line.removeprefix("event: ") for line in again if line.startswith("event:")]
    assert kinds == ["group.member_added", "item.created"]
