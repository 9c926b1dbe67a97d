"""Oversized requests get a clear 4xx in the JSON error shape, never a reset connection.

Raw sockets where the client must keep sending while the server has already refused (a reset
would lose the answer), httpx otherwise; a real server on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from datamill.api import ServerHandle
from datamill.api.errors import MAX_MESSAGE, bounded
from datamill.api.limits import MAX_HEAD_BYTES, MAX_JSON_BODY, MAX_METADATA_BYTES
from datamill.client.local import LocalClient
from datamill.home import Home


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"ok", "status", "code", "error", "detail"}
    assert body["ok"] is False and body["status"] == status and body["code"] == code
    return body


def raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` (and ``body``) over a plain socket; the status, headers and body of the answer."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        # The server may refuse before reading all of it; its answer must still be there.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_part, _, rest = data.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, rest


@pytest.mark.parametrize("size", [100 * 1024, MAX_HEAD_BYTES + 1024, 4 * MAX_HEAD_BYTES])
def test_an_oversized_bearer_header_gets_431_not_a_reset(server: ServerHandle, size: int) -> None:
    head = (
        b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + b"a" * size
        + b"\r\nConnection: close\r\n\r\n"
    )
    status, headers, body = raw_request(server.url, head)
    assert status == 431
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["ok"] is False and error["status"] == 431 and error["code"] == "headers_too_large"
    assert "header" in error["error"]
    assert b"aaaa" not in body  # nothing of what was sent is quoted back


def test_oversized_headers_over_httpx(server: ServerHandle, home: Home) -> None:
    token = home.admin_token()
    r = httpx.get(f"{server.url}/api/v1/whoami", headers={"Authorization": f"Bearer {'x' * 100_000}"}, timeout=60)
    body = assert_error(r, 431, "headers_too_large")
    assert "Authorization" in body["error"] or "authorization" in body["error"]
    # Any header, with a valid token too.
    r = httpx.get(
        f"{server.url}/api/v1/whoami",
        headers={"Authorization": f"Bearer {token}", "X-Anything": "y" * 20_000},
        timeout=60,
    )
    assert_error(r, 431, "headers_too_large")
    # Still served normally afterwards.
    assert httpx.get(f"{server.url}/api/v1/whoami", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_a_malformed_request_gets_a_json_400(server: ServerHandle) -> None:
    status, _, body = raw_request(server.url, b"NOT HTTP AT ALL\r\n\r\n")
    assert status == 400
    assert json.loads(body)["code"] == "invalid_http"


def test_json_bodies_are_bounded(server: ServerHandle, home: Home) -> None:
    LocalClient(home).create_folder("f")
    auth = {"Authorization": f"Bearer {home.admin_token()}", "Content-Type": "application/json"}
    big = json.dumps({"x": "y" * MAX_JSON_BODY}).encode()
    url = f"{server.url}/api/v1/folder-metadata/f"
    with httpx.Client(timeout=60) as c:
        body = assert_error(c.patch(url, content=big, headers=auth), 413, "too_large")
        assert "1024 KiB" in body["error"]
        # Sent chunked (no Content-Length): refused the same way once past the limit.
        chunks = iter([big[i : i + 65536] for i in range(0, len(big), 65536)])
        assert_error(c.patch(url, content=chunks, headers=auth), 413, "too_large")
        # Under the limit, chunked or not, the request goes through.
        small = json.dumps({"set": {"k": "v"}}).encode()
        assert c.patch(url, content=small, headers=auth).status_code == 200
        assert c.patch(url, content=iter([small]), headers=auth).status_code == 200


def test_uploads_are_not_bounded_by_the_json_limit(server: ServerHandle, home: Home) -> None:
    LocalClient(home).create_folder("f")
    data = b"z" * (MAX_JSON_BODY * 2)
    r = httpx.put(
        f"{server.url}/api/v1/content/f/big.bin",
        content=data,
        headers={"Authorization": f"Bearer {home.admin_token()}"},
        timeout=60,
    )
    assert r.status_code in (200, 201), r.text


def test_metadata_header_is_bounded(server: ServerHandle, home: Home) -> None:
    LocalClient(home).create_folder("f")
    meta = json.dumps({"k": "v" * MAX_METADATA_BYTES})
    r = httpx.put(
        f"{server.url}/api/v1/content/f/a.txt",
        content=b"a",
        headers={"Authorization": f"Bearer {home.admin_token()}", "X-Datamill-Metadata": meta},
        timeout=60,
    )
    body = assert_error(r, 413, "too_large")
    assert "X-Datamill-Metadata" in body["error"]
    # Metadata well over a plain header's limit but within its own is accepted.
    meta = json.dumps({"k": "v" * (MAX_METADATA_BYTES // 2)})
    r = httpx.put(
        f"{server.url}/api/v1/content/f/b.txt",
        content=b"b",
        headers={"Authorization": f"Bearer {home.admin_token()}", "X-Datamill-Metadata": meta},
        timeout=60,
    )
    assert r.status_code in (200, 201), r.text


def test_error_messages_quote_a_bounded_amount() -> None:
    assert bounded("x" * 10) == "x" * 10
    cut = bounded("x" * 100_000)
    assert len(cut) < MAX_MESSAGE + 100
    assert "99000 more characters left out" in cut


def test_a_long_name_in_an_error_is_cut(server: ServerHandle, home: Home) -> None:
    # A folder name far over the name limit: the error names it, but not all 60,000 characters.
    name = "n" * 6000
    r = httpx.post(
        f"{server.url}/api/v1/folders/{name}",
        headers={"Authorization": f"Bearer {home.admin_token()}"},
        timeout=60,
    )
    assert 400 <= r.status_code < 500
    assert len(r.content) < 4 * MAX_MESSAGE
