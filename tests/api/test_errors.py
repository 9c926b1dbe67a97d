"""Rejected input, the one error shape, and failures half-way: cut-off uploads, corrupted blobs."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from datamill.api import ServerHandle
from datamill.client.local import LocalClient
from datamill.client.remote import RemoteClient, quote_path
from datamill.errors import BlobCorrupted, DatamillError, NotFound
from datamill.home import Home
from datamill.store.blobs import LocalBlobStore
from tests.helpers import free_port, wait_for

SHAPE = {"ok", "status", "code", "error", "detail"}


def auth(home: Home) -> dict[str, str]:
    return {"Authorization": f"Bearer {home.admin_token()}"}


def blob_files(home: Home) -> list[Path]:
    """Every file under the blob directory, its temporary directory included (not its lock files)."""
    assert isinstance(home.blobs, LocalBlobStore)
    return sorted(p for p in home.blobs.root.rglob("*") if p.is_file() and p.name != "lock")


def test_every_error_has_the_one_shape(server: ServerHandle, home: Home, local: LocalClient) -> None:
    local.create_folder("f")
    local.put("f", "a.txt", b"0123456789")
    local.create_user("reader")
    local.share("f", "reader", "read")
    reader = {"Authorization": f"Bearer {local.create_token('reader').token}"}
    h = auth(home)
    with httpx.Client(base_url=server.url) as c:
        cases = {
            400: c.put("/api/v1/content/f/a%2Fb", content=b"x", headers=h),
            401: c.get("/api/v1/whoami"),
            403: c.put("/api/v1/content/f/b.txt", content=b"x", headers=reader),
            404: c.get("/api/v1/items/f/missing", headers=h),
            405: c.delete("/api/v1/whoami", headers=h),
            409: c.post("/api/v1/folders/f", json={}, headers=h),
            416: c.get("/api/v1/content/f/a.txt", headers={**h, "Range": "bytes=10-"}),
            422: c.get("/api/v1/events", params={"limit": "lots"}, headers=h),
        }
        unknown_route = c.get("/api/v1/no/such/route", headers=h)
    for status, r in {**cases, 0: unknown_route}.items():
        body = r.json()
        assert set(body) == SHAPE, (status, body)
        assert body["ok"] is False and body["status"] == r.status_code
        assert isinstance(body["error"], str) and body["error"]
        assert isinstance(body["detail"], dict)
        if status:
            assert r.status_code == status
    assert cases[401].headers["WWW-Authenticate"].startswith("Bearer")
    assert cases[416].headers["Content-Range"] == "bytes */10"


def test_unexpected_errors_are_logged_not_shown(
    server: ServerHandle, home: Home, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret detail postgresql://u:hunter2@db/x")

    monkeypatch.setattr(home.store, "list_folders", broken)
    caplog.set_level(logging.ERROR, logger="datamill")
    r = httpx.get(f"{server.url}/api/v1/subfolders", headers=auth(home))
    assert r.status_code == 500
    assert r.json() == {
        "ok": False,
        "status": 500,
        "code": "internal",
        "error": "internal error; see the server log",
        "detail": {},
    }
    assert "hunter2" not in r.text
    assert wait_for("the error in the server log", lambda: "secret detail" in caplog.text)


BAD_NAMES = {
    "empty": "",
    "dot": "%2E",
    "dotdot": "%2E%2E",
    "literal dotdot": "..",
    "slash": "a%2Fb",
    "backslash": "a%5Cb",
    "nul": "a%00b",
    "control": "a%01b",
    "newline": "a%0Ab",
    "delete": "a%7Fb",
    "too long": "x" * 256,
    "too long in utf-8": quote_path("é" * 128),
    "leading space": "%20a",
    "bad utf-8": "a%FFb",
}


def test_rejected_names_are_400_invalid_name(server: ServerHandle, home: Home, local: LocalClient) -> None:
    local.create_folder("f")
    before = blob_files(home)
    # Raw requests so that no client normalises the path ('..' included).
    host, port = urlsplit(server.url).hostname, urlsplit(server.url).port
    assert host and port
    failures = []
    for what, raw in BAD_NAMES.items():
        for method, target, body in [
            ("PUT", f"/api/v1/content/f/{raw}", b"data"),
            ("POST", f"/api/v1/folders/f/{raw}", b"{}"),
            ("POST", f"/api/v1/folders/{raw}/sub", b"{}"),
            ("GET", f"/api/v1/items/f/{raw}", b""),
        ]:
            status, payload = raw_request(host, port, method, target, body, home.admin_token() or "")
            if status != 400 or b'"code":"invalid_name"' not in payload:
                failures.append(f"{what}: {method} {target} -> {status} {payload[:120]!r}")
    assert not failures, "\n".join(failures)
    assert local.list_items("f") == []
    assert [f.name for f in local.list_folders("f")] == []
    assert blob_files(home) == before


def raw_request(host: str, port: int, method: str, target: str, body: bytes, token: str) -> tuple[int, bytes]:
    """One HTTP/1.1 request over a bare socket: the target goes out exactly as given."""
    with socket.create_connection((host, port), timeout=10) as s:
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        s.sendall(head.encode("ascii") + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def test_unicode_names_round_trip(admin: RemoteClient, local: LocalClient) -> None:
    admin.create_folder("Données")
    v = admin.put("Données", "été 2026 ✓.csv", b"a;b\n", metadata={"lieu": "Genève ✓"})
    assert v.path == "Données/été 2026 ✓.csv"
    assert local.item("Données/été 2026 ✓.csv").metadata == {"lieu": "Genève ✓"}
    assert admin.get("Données/été 2026 ✓.csv") == b"a;b\n"
    assert [i.name for i in admin.find("Données", name="été*")] == ["été 2026 ✓.csv"]


def test_invalid_metadata_is_400(server: ServerHandle, home: Home, local: LocalClient) -> None:
    local.create_folder("f")
    local.put("f", "a.txt", b"x")
    before = blob_files(home)
    h = auth(home)
    with httpx.Client(base_url=server.url, headers=h) as c:
        for header in ["{not json", "[1, 2]", '"text"', "NaN", '{"": 1}']:
            r = c.put("/api/v1/content/f/b.txt", content=b"x", headers={"X-Datamill-Metadata": header})
            assert r.status_code == 400 and r.json()["code"] == "invalid_metadata", (header, r.text)
        r = c.patch("/api/v1/metadata/f/a.txt", content=b"{nope", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["code"] == "invalid_input"
        r = c.patch("/api/v1/metadata/f/a.txt", json={"set": [1, 2]})
        assert r.status_code == 400 and r.json()["code"] == "invalid_metadata"
        r = c.patch("/api/v1/folder-metadata/f", json={"set": "x"})
        assert r.status_code == 400 and r.json()["code"] == "invalid_metadata"
        r = c.get("/api/v1/find/f", params={"metadata": "{oops"})
        assert r.status_code == 400 and r.json()["code"] == "invalid_metadata"
        r = c.post("/api/v1/folders/g", json={"metadata": [1]})
        assert r.status_code == 400 and r.json()["code"] == "invalid_metadata"
    with pytest.raises(NotFound):
        local.item("f/b.txt")
    assert blob_files(home) == before


def test_upload_cut_off_half_way_leaves_nothing(
    server: ServerHandle, home: Home, local: LocalClient, caplog: pytest.LogCaptureFixture
) -> None:
    local.create_folder("inbox")
    before = blob_files(home)
    caplog.set_level(logging.INFO, logger="datamill")
    url = urlsplit(server.url)
    assert url.hostname and url.port
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(
            (
                f"PUT /api/v1/content/inbox/big.bin HTTP/1.1\r\nHost: {url.hostname}\r\n"
                f"Authorization: Bearer {home.admin_token()}\r\nContent-Length: {10 << 20}\r\n\r\n"
            ).encode()
        )
        s.sendall(os.urandom(1 << 20))
        # The server must be writing by now: its temporary file exists.
        assert wait_for("the upload's temporary file", lambda: len(blob_files(home)) > len(before))
    assert wait_for("the aborted upload in the log", lambda: "upload of inbox/big.bin aborted" in caplog.text)
    assert wait_for("the temporary file removed", lambda: blob_files(home) == before)
    with pytest.raises(NotFound):
        local.item("inbox/big.bin")
    assert local.list_items("inbox") == []
    assert not [e for e in local.events() if e.kind.startswith("item.")]


def corrupt(home: Home, digest: str) -> None:
    """Flip one byte in the middle of a stored blob (blob files are read-only)."""
    assert isinstance(home.blobs, LocalBlobStore)
    path = home.blobs.path_of(digest)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_blob_is_never_served_as_complete(
    server: ServerHandle, home: Home, admin: RemoteClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="datamill")
    big = os.urandom(3 << 20)  # several chunks: the error comes at the end of the stream
    small = b"small file"
    admin.create_folder("f")
    corrupt(home, admin.put("f", "big.bin", big).digest)
    corrupt(home, admin.put("f", "small.txt", small).digest)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(BlobCorrupted):
        admin.download("f/big.bin", dest)
    with pytest.raises(BlobCorrupted):
        admin.download("f/small.txt", dest)
    assert list(dest.iterdir()) == []
    # Raw HTTP: the big one breaks off short of its length; the small one is a JSON 500.
    received = 0
    with (
        pytest.raises(httpx.TransportError),
        httpx.stream("GET", f"{server.url}/api/v1/content/f/big.bin", headers=auth(home)) as r,
    ):
        assert r.status_code == 200
        assert int(r.headers["Content-Length"]) == len(big)
        for chunk in r.iter_bytes():
            received += len(chunk)
    assert received < len(big)
    r = httpx.get(f"{server.url}/api/v1/content/f/small.txt", headers=auth(home))
    assert r.status_code == 500 and r.json()["code"] == "blob_corrupted"
    r = httpx.get(f"{server.url}/api/v1/content/f/big.bin", headers={**auth(home), "Range": "bytes=0-9"})
    assert r.status_code == 500 and r.json()["code"] == "blob_corrupted"
    assert wait_for("the aborted download in the log", lambda: "aborting the download of f/big.bin" in caplog.text)


def test_client_errors_without_a_server(tmp_path: Path) -> None:
    port = free_port()
    client = RemoteClient(f"http://127.0.0.1:{port}", "dm_whatever")
    with pytest.raises(DatamillError) as exc:
        client.whoami()
    assert "not reachable" in str(exc.value) and "datamill up" in str(exc.value)
    assert "dm_whatever" not in repr(client) and "dm_whatever" not in str(exc.value)
    from datamill.errors import Unauthorized

    with pytest.raises(Unauthorized) as missing:
        RemoteClient(f"http://127.0.0.1:{port}", None)
    assert "--token" in str(missing.value) and "DATAMILL_TOKEN" in str(missing.value)
