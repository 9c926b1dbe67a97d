"""Who may do what over HTTP: every role against every operation, and what leaks.

A caller without read access must get 404 (never 403) and must not find the folder's or item's
name anywhere in the answer; events of folders they cannot read must never reach them, not by
page and not by SSE.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from datamill.api import ServerHandle
from datamill.client.local import LocalClient
from datamill.client.remote import quote_path
from datamill.errors import NotFound
from datamill.home import Home

FOLDER = "Secret Project"
ITEM = "plan.csv"
F = quote_path(FOLDER)
I = quote_path(ITEM)  # noqa: E741
SHAPE = {"ok", "status", "code", "error", "detail"}

ROLES = ["anonymous", "invalid", "revoked", "reader", "writer", "folder_admin", "other", "site_admin"]

# operation -> (method, url, request kwargs)
OPERATIONS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "list": ("GET", f"/api/v1/folder-items/{F}", {}),
    "list_subfolders": ("GET", f"/api/v1/subfolders/{F}", {}),
    "get_folder": ("GET", f"/api/v1/folders/{F}", {}),
    "get_item": ("GET", f"/api/v1/items/{F}/{I}", {}),
    "versions": ("GET", f"/api/v1/versions/{F}/{I}", {}),
    "download": ("GET", f"/api/v1/content/{F}/{I}", {}),
    "find": ("GET", f"/api/v1/find/{F}", {"params": {"name": "*"}}),
    "upload": ("PUT", f"/api/v1/content/{F}/new.txt", {"content": b"new bytes"}),
    "set_metadata": ("PATCH", f"/api/v1/metadata/{F}/{I}", {"json": {"set": {"a": 1}}}),
    "delete_item": ("DELETE", f"/api/v1/items/{F}/{I}", {}),
    "create_subfolder": ("POST", f"/api/v1/folders/{F}/sub", {"json": {}}),
    "access_list": ("GET", f"/api/v1/access/{F}", {}),
    "share": ("PUT", f"/api/v1/access/{F}", {"json": {"user": "other", "level": "read"}}),
    "rename": ("PATCH", f"/api/v1/folders/{F}", {"json": {"parent": "", "name": "Renamed"}}),
    "delete_folder": ("DELETE", f"/api/v1/folders/{F}", {"params": {"recursive": "true"}}),
    "read_events": ("GET", "/api/v1/events", {}),
}

# Expected status per operation, for roles in ROLES order.
EXPECTED: dict[str, list[int]] = {
    #                  anon invalid revoked reader writer fadmin other site
    "list": [401, 401, 401, 200, 200, 200, 404, 200],
    "list_subfolders": [401, 401, 401, 200, 200, 200, 404, 200],
    "get_folder": [401, 401, 401, 200, 200, 200, 404, 200],
    "get_item": [401, 401, 401, 200, 200, 200, 404, 200],
    "versions": [401, 401, 401, 200, 200, 200, 404, 200],
    "download": [401, 401, 401, 200, 200, 200, 404, 200],
    "find": [401, 401, 401, 200, 200, 200, 404, 200],
    "upload": [401, 401, 401, 403, 201, 201, 404, 201],
    "set_metadata": [401, 401, 401, 403, 200, 200, 404, 200],
    "delete_item": [401, 401, 401, 403, 200, 200, 404, 200],
    "create_subfolder": [401, 401, 401, 403, 201, 201, 404, 201],
    "access_list": [401, 401, 401, 200, 200, 200, 404, 200],
    "share": [401, 401, 401, 403, 403, 200, 404, 200],
    "rename": [401, 401, 401, 403, 403, 200, 404, 200],
    "delete_folder": [401, 401, 401, 403, 403, 200, 404, 200],
    "read_events": [401, 401, 401, 200, 200, 200, 200, 200],
}


def reset(local: LocalClient) -> None:
    """The secret folder with one item, shared with reader/writer/folder_admin; nothing else."""
    for f in local.list_folders():
        local.delete_folder(f.path, recursive=True)
    local.create_folder(FOLDER)
    local.put(FOLDER, ITEM, b"a,b\n1,2\n", metadata={"budget": 1})
    local.share(FOLDER, "reader", "read")
    local.share(FOLDER, "writer", "write")
    local.share(FOLDER, "folder_admin", "admin")


@pytest.fixture
def tokens(server: ServerHandle, home: Home, local: LocalClient) -> dict[str, str | None]:
    """A token per role (None for the anonymous caller)."""
    for name in ["reader", "writer", "folder_admin", "other"]:
        local.create_user(name)
    local.create_user("site_admin", admin=True)
    out: dict[str, str | None] = {"anonymous": None, "invalid": "dm_" + "x" * 43}
    for name in ["reader", "writer", "folder_admin", "other", "site_admin"]:
        out[name] = local.create_token(name).token
    revoked = local.create_token("reader")
    local.revoke_token(revoked.id)
    out["revoked"] = revoked.token
    return out


@pytest.fixture
def http(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def call(http: httpx.Client, token: str | None, op: str) -> httpx.Response:
    method, url, kwargs = OPERATIONS[op]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return http.request(method, url, headers=headers, **kwargs)


def assert_no_leak(text: str) -> None:
    for secret in (FOLDER, ITEM, F, I, "Secret", "plan"):
        assert secret not in text


def test_access_matrix(http: httpx.Client, local: LocalClient, tokens: dict[str, str | None]) -> None:
    failures = []
    for op, expected in EXPECTED.items():
        for role, status in zip(ROLES, expected, strict=True):
            reset(local)
            r = call(http, tokens[role], op)
            assert r.status_code < 500, (op, role, r.text)
            if r.status_code != status:
                failures.append(f"{op} as {role}: {r.status_code}, expected {status}: {r.text[:200]}")
                continue
            if status >= 400:
                body = r.json()
                assert set(body) == SHAPE and body["status"] == status, (op, role, body)
            if role in {"anonymous", "invalid", "revoked", "other"}:
                assert_no_leak(r.text)
                assert_no_leak(json.dumps(dict(r.headers)))
    assert not failures, "\n".join(failures)


def test_missing_and_forbidden_folders_answer_alike(
    http: httpx.Client, local: LocalClient, tokens: dict[str, str | None]
) -> None:
    reset(local)
    headers = {"Authorization": f"Bearer {tokens['other']}"}
    hidden = http.get(f"/api/v1/folders/{F}", headers=headers)
    missing = http.get("/api/v1/folders/No%20Such%20Folder", headers=headers)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json()


def test_events_of_unshared_folders_never_reach_other_users(
    server: ServerHandle, local: LocalClient, tokens: dict[str, str | None]
) -> None:
    reset(local)
    local.set_metadata(f"{FOLDER}/{ITEM}", {"more": True})
    local.put(FOLDER, "second.csv", b"x")
    local.delete_item(f"{FOLDER}/second.csv")
    other = {"Authorization": f"Bearer {tokens['other']}"}
    page = httpx.get(f"{server.url}/api/v1/events", params={"since": 0}, headers=other)
    assert page.status_code == 200
    assert page.json()["events"] == []
    assert page.json()["next"] == local.home.events.latest()
    assert_no_leak(page.text)
    # A folder of their own, made after all that: the stream delivers it and nothing before.
    with (
        httpx.Client(timeout=10) as c,
        c.stream("GET", f"{server.url}/api/v1/events/stream", params={"since": 0}, headers=other) as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines) == "retry: 3000"
        local.as_user("other").create_folder("Other's", metadata={"mine": True})
        seen = []
        for line in lines:
            seen.append(line)
            if line.startswith("data:") and "Other's" in line:
                break
    text = "\n".join(seen)
    assert_no_leak(text)
    kinds = [line.removeprefix("event: ") for line in seen if line.startswith("event:")]
    assert kinds == ["folder.created"]
    # Readers of the folder do see its events.
    reader = {"Authorization": f"Bearer {tokens['reader']}"}
    events = httpx.get(f"{server.url}/api/v1/events", headers=reader).json()["events"]
    assert {"item.created", "metadata.changed", "item.deleted"} <= {e["kind"] for e in events}
    assert not any(e["kind"].startswith("user.") or e["kind"].startswith("token.") for e in events)


def test_remote_client_raises_typed_errors_for_roles(
    server: ServerHandle, local: LocalClient, tokens: dict[str, str | None]
) -> None:
    from datamill.client.remote import RemoteClient
    from datamill.errors import PermissionDenied

    reset(local)
    with RemoteClient(server.url, tokens["reader"]) as reader, RemoteClient(server.url, tokens["other"]) as other:
        assert reader.get(f"{FOLDER}/{ITEM}") == b"a,b\n1,2\n"
        with pytest.raises(PermissionDenied):
            reader.put(FOLDER, "x.txt", b"x")
        with pytest.raises(NotFound) as hidden:
            other.item(f"{FOLDER}/{ITEM}")
        assert FOLDER not in str(hidden.value)
        # A large body to a folder the caller may not write: refused before a byte is stored,
        # and the client still gets the typed answer, not a broken pipe.
        with pytest.raises(NotFound):
            other.put(FOLDER, "big.bin", b"\0" * (8 << 20))
        with pytest.raises(PermissionDenied):
            reader.put(FOLDER, "big.bin", _Stream(16 << 20), size=16 << 20)


class _Stream:
    """A file-like object producing ``size`` zero bytes without holding them."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return b"\0" * n
