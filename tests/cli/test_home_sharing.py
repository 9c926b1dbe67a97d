"""One home, several processes: CLI commands beside a running `datamill up`, and a second server refused.

Everything is real: `datamill up` and `datamill ls` are subprocesses, the upload is raw HTTP on
loopback whose body is held back half-way, so it is in flight while the CLI opens the same home.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from datamill.store.blobs import digest_bytes
from tests.helpers import Up, cli_env, datamill, wait_for

#: Servers, CLI processes or crashes in subprocesses: left out of the quick loop (-m "not slow").
pytestmark = pytest.mark.slow

MIB = 1 << 20


def _temp_uploads(home: Path) -> list[Path]:
    return [p for p in (home / "blobs" / ".tmp").rglob("upload-*") if p.is_file()]


def test_cli_beside_a_server_leaves_its_uploads_in_flight_alone(up: Up, tmp_path: Path) -> None:
    home = tmp_path / "home"
    auth = {"Authorization": f"Bearer {up.token}"}
    assert httpx.post(f"{up.url}/api/v1/folders/big", headers=auth, json={}).status_code == 201
    body = bytes(range(256)) * (24 * MIB // 256)
    half = len(body) // 2
    host, port = urlsplit(up.url).hostname, urlsplit(up.url).port
    assert host is not None and port is not None
    with socket.create_connection((host, port), timeout=120) as sock:
        head = (
            f"PUT /api/v1/content/big/data.bin HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {up.token}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(head.encode() + body[:half])
        # The server has opened its temporary file: the upload is in flight.
        wait_for("the server to start writing the upload", lambda: _temp_uploads(home), timeout=60)
        ls = subprocess.run(
            datamill("--home", str(home), "ls", "big", "--json"),
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=120,
        )
        assert ls.returncode == 0, ls.stderr
        assert "data.bin" not in ls.stdout  # not there until the upload ends
        assert _temp_uploads(home), "opening the home removed the server's upload in flight"
        sock.sendall(body[half:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 201 " in status_line, answer[:2000]
    info = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert info["digest"] == digest_bytes(body) and info["size"] == len(body)
    got = httpx.get(f"{up.url}/api/v1/content/big/data.bin", headers=auth, timeout=120)
    assert got.status_code == 200 and digest_bytes(got.content) == digest_bytes(body)


def test_a_second_server_on_a_sqlite_home_is_refused(up: Up, tmp_path: Path) -> None:
    second = subprocess.run(
        datamill("--home", str(tmp_path / "home"), "up", "--port", "0", "--no-demo"),
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )
    assert second.returncode != 0
    message = " ".join(second.stderr.split())
    assert "already serves the home" in message, second.stderr
    assert f"process {up.proc.pid}" in message and up.url in message
    assert "not supported" in message and f"kill {up.proc.pid}" in message
    # The first server is unharmed; once it stops, a new one may start.
    assert httpx.get(f"{up.url}/api/v1/whoami", headers={"Authorization": f"Bearer {up.token}"}).status_code == 200
    up.stop()
    again = Up(tmp_path / "home")
    again.stop()
