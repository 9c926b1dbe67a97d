"""Upload bodies past h11 (api/protocol.py) and file bodies sent by sendfile (client/transport.py)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import httpx
import pytest

from datamill.api import ServerHandle, start_background_server
from datamill.api.protocol import DIRECT_BODY_MIN, LAND_RESERVE
from datamill.client.local import LocalClient
from datamill.client.remote import RemoteClient
from datamill.errors import DatamillError
from datamill.home import Home
from datamill.store.blobs import digest_bytes


def read_response(f: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length from ``f``: status, headers, body."""
    status = int(f.readline().split()[1])
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, f.read(int(headers["content-length"]))


def put_head(server: ServerHandle, home: Home, path: str, length: int) -> bytes:
    """The head of an admin's raw upload of ``length`` bytes to ``path``."""
    return (
        f"PUT /api/v1/content/{path} HTTP/1.1\r\nHost: {urlsplit(server.url).netloc}\r\n"
        f"Authorization: Bearer {home.admin_token()}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_a_request_pipelined_right_after_a_large_body_is_answered(server: ServerHandle, home: Home) -> None:
    data = os.urandom(2 * DIRECT_BODY_MIN + 17)  # past h11, ending mid-read
    RemoteClient(server.url, home.admin_token()).create_folder("f")
    url = urlsplit(server.url)
    token = home.admin_token()
    put = (
        f"PUT /api/v1/content/f/big.bin HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    get = (
        f"GET /api/v1/content/f/big.bin HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {token}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock, sock.makefile("rb") as f:
        sock.sendall(put + data + get)  # the GET follows the body's last byte in the same stream
        status, _, body = read_response(f)
        assert status == 201, body
        assert json.loads(body)["digest"] == digest_bytes(data)
        status, headers, body = read_response(f)
        assert status == 200 and body == data
        assert headers["x-datamill-digest"] == digest_bytes(data)


def test_a_body_cut_short_past_h11_stores_nothing(server: ServerHandle, home: Home) -> None:
    admin = RemoteClient(server.url, home.admin_token())
    admin.create_folder("f")
    url = urlsplit(server.url)
    head = put_head(server, home, "f/cut.bin", 4 * DIRECT_BODY_MIN)
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        sock.sendall(head + os.urandom(2 * DIRECT_BODY_MIN))
        sock.shutdown(socket.SHUT_WR)  # the client is gone half-way
        sock.recv(1)  # the server closes its side once it has given up
    assert admin.list_items("f") == []
    # The connection-level path leaves the server serving the next upload as before.
    data = os.urandom(DIRECT_BODY_MIN + 1)
    assert admin.put("f", "next.bin", data).digest == digest_bytes(data)
    assert admin.get("f/next.bin") == data


def test_a_file_is_sent_from_its_position_with_progress(admin: RemoteClient, tmp_path: Path) -> None:
    data = os.urandom(3 * DIRECT_BODY_MIN)
    src = tmp_path / "src.bin"
    src.write_bytes(b"skip me" + data)
    admin.create_folder("f")
    shown: list[int] = []
    with open(src, "rb") as f:
        f.seek(7)
        info = admin.put("f", "rest.bin", f, progress=shown.append)
        assert f.tell() == 7 + len(data)  # where reading the file would have left it
    assert info.size == len(data) and info.digest == digest_bytes(data)
    assert sum(shown) == len(data)
    assert admin.get("f/rest.bin") == data


def test_an_upload_cut_by_a_server_shutdown_stores_nothing(home: Home) -> None:
    """A server stopping while an upload's body arrives (past its grace period) commits nothing,
    leaves no temporary file behind, and the client is told the upload failed."""
    handle = start_background_server(home, graceful=0.5)
    admin = RemoteClient(handle.url, home.admin_token())
    admin.create_folder("f")
    size = 8 * DIRECT_BODY_MIN
    read_end, write_end = os.pipe()  # a source that cannot be rewound: the client sends it once
    failures: list[BaseException] = []

    def upload() -> None:
        with open(read_end, "rb", buffering=0) as source:
            try:
                admin.put("f", "big.bin", source, size=size)
            except BaseException as exc:  # examined by the test
                failures.append(exc)

    uploader = threading.Thread(target=upload)
    uploader.start()
    os.write(write_end, os.urandom(size // 2))  # half the body, then nothing more
    tmp = home.blobs.own_tmp_dir()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size >= size // 4 for p in tmp.glob("upload-*")):
        assert time.monotonic() < deadline, "the server never received the first half"
        time.sleep(0.01)
    handle.stop()  # the upload is cancelled after 0.5 s
    os.close(write_end)
    uploader.join(60)
    assert len(failures) == 1 and isinstance(failures[0], DatamillError), failures
    admin.close()
    assert LocalClient(home).list_items("f") == []
    # The landing thread throws its file away once it has stopped writing into it.
    while list(tmp.glob("upload-*")):
        assert time.monotonic() < deadline, "the abandoned upload's file was left behind"
        time.sleep(0.01)


@pytest.mark.parametrize("right", [True, False])
def test_a_large_body_is_checked_against_its_announced_digest(server: ServerHandle, home: Home, right: bool) -> None:
    # Past DIRECT_BODY_MIN on plain TCP into a local store, the body lands in its file by splice(2):
    # what is hashed there is what is checked, and a mismatch leaves no blob and no temporary file.
    data = os.urandom(3 * DIRECT_BODY_MIN + 5)
    admin = RemoteClient(server.url, home.admin_token())
    admin.create_folder("f")
    digest = digest_bytes(data) if right else digest_bytes(data + b"!")
    r = httpx.put(
        f"{server.url}/api/v1/content/f/big.bin",
        content=data,
        headers={"Authorization": f"Bearer {home.admin_token()}", "X-Datamill-Digest": digest},
        timeout=60,
    )
    if right:
        assert r.status_code == 201, r.text
        assert admin.get("f/big.bin") == data
    else:
        assert r.status_code == 400 and r.json()["code"] == "digest_mismatch", r.text
        assert admin.list_items("f") == []
        blobs = Path(home.settings.resolved_blob_url.removeprefix("file://"))
        assert [p for p in blobs.rglob("*") if p.is_file() and p.name != "lock"] == []


def test_a_huge_announced_body_reserves_the_disk_only_as_it_arrives(server: ServerHandle, home: Home) -> None:
    admin = RemoteClient(server.url, home.admin_token())
    admin.create_folder("f")
    url = urlsplit(server.url)
    head = put_head(server, home, "f/huge.bin", 1 << 40)
    tmp = home.blobs.own_tmp_dir()  # type: ignore[attr-defined]
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        sock.sendall(head + os.urandom(2 * DIRECT_BODY_MIN))
        deadline = time.monotonic() + 60
        while not (files := [p.stat() for p in tmp.glob("upload-*")]) or files[0].st_size < 2 * DIRECT_BODY_MIN:
            assert time.monotonic() < deadline, "the server never received the bytes"
            time.sleep(0.01)
        # A terabyte announced, two MiB sent: what is reserved on disk stays near what arrived.
        assert files[0].st_blocks * 512 <= LAND_RESERVE + 4 * DIRECT_BODY_MIN
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)
    assert admin.list_items("f") == []
