"""A retried upload whose answer was lost makes no second version (real `datamill up` subprocess).

The first PUT goes over a raw socket and its answer is never read; once its version is in the
database the server is SIGKILLed. A new server on the same home then gets the same request with
the same ``Idempotency-Key``: it answers the version already made.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from datamill.store.blobs import digest_bytes
from tests.helpers import Up, cli_env, datamill

#: Servers, CLI processes or crashes in subprocesses: left out of the quick loop (-m "not slow").
pytestmark = pytest.mark.slow

MIB = 1 << 20


def _versions(url: str, auth: dict[str, str]) -> list[dict[str, object]]:
    r = httpx.get(f"{url}/api/v1/versions/d/x.bin", headers=auth)
    if r.status_code == 404:
        return []
    assert r.status_code == 200, r.text
    got: list[dict[str, object]] = r.json()
    return got


def test_retry_after_the_server_died_with_the_answer(up: Up, tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {up.token}"}
    assert httpx.post(f"{up.url}/api/v1/folders/d", headers=auth, json={}).status_code == 201
    body = bytes(range(256)) * (2 * MIB // 256)
    key = "7f9c2ba4e88f827d616045507605853e"
    host, port = urlsplit(up.url).hostname, urlsplit(up.url).port
    assert host is not None and port is not None
    with socket.create_connection((host, port), timeout=60) as sock:
        head = (
            f"PUT /api/v1/content/d/x.bin HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {up.token}\r\nIdempotency-Key: {key}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        # The answer is never read: wait for the version to be committed, then crash the server.
        deadline = time.monotonic() + 60
        while not _versions(up.url, auth):
            assert time.monotonic() < deadline, "the upload was never committed"
            time.sleep(0.05)
        up.kill()

    again = Up(tmp_path / "home")
    try:
        auth = {"Authorization": f"Bearer {again.token}"}
        before = _versions(again.url, auth)
        assert len(before) == 1
        retry = httpx.put(f"{again.url}/api/v1/content/d/x.bin", content=body, headers={**auth, "Idempotency-Key": key})
        assert retry.status_code == 201, retry.text
        assert retry.headers.get("Idempotent-Replayed") == "true"
        assert retry.json()["version_id"] == before[0]["version_id"]
        assert retry.json()["digest"] == digest_bytes(body)
        assert len(_versions(again.url, auth)) == 1

        other = httpx.put(
            f"{again.url}/api/v1/content/d/x.bin", content=b"other bytes", headers={**auth, "Idempotency-Key": key}
        )
        assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused", other.text
        assert "new key" in other.json()["error"]
        assert len(_versions(again.url, auth)) == 1

        # `datamill put` through the server sends a key of its own: a new upload is a new version.
        src = tmp_path / "x.bin"
        src.write_bytes(body)
        put = subprocess.run(
            datamill("--url", again.url, "--token", again.token, "put", str(src), "d"),
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=120,
        )
        assert put.returncode == 0, put.stderr
        assert [v["version"] for v in _versions(again.url, auth)] == [1, 2]
    finally:
        again.stop()
