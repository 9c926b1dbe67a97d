"""Large transfers past Python's copies: downloads by ``sendfile`` (api/sendfile.py) written to a file by
``splice`` in the client (client/transport.py), uploads read from the socket by the route (SocketBody)."""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from datamill.api import ServerHandle
from datamill.api.protocol import DIRECT_BODY_MIN
from datamill.api.routes.content import SENDFILE_MIN
from datamill.client.remote import RemoteClient
from datamill.errors import BlobCorrupted, PermissionDenied
from datamill.home import Home
from datamill.store.blobs import LocalBlobStore, digest_bytes
from tests.api.test_upload_body import read_response
from tests.helpers import wait_for

SIZE = SENDFILE_MIN + 12345  # past the threshold, not a whole number of chunks


def auth(home: Home) -> dict[str, str]:
    return {"Authorization": f"Bearer {home.admin_token()}"}


@pytest.fixture
def big(admin: RemoteClient) -> bytes:
    """A blob large enough to go out by sendfile, as ``f/big.bin``."""
    data = os.urandom(SIZE)
    admin.create_folder("f")
    assert admin.put("f", "big.bin", data).digest == digest_bytes(data)
    return data


def test_a_large_download_is_byte_identical(
    server: ServerHandle, home: Home, admin: RemoteClient, big: bytes, tmp_path: Path
) -> None:
    dest = tmp_path / "out.bin"
    shown: list[int] = []
    info = admin.download("f/big.bin", dest, progress=shown.append)  # socket -> file by splice
    assert dest.read_bytes() == big and info.digest == digest_bytes(big)
    assert sum(shown) == SIZE
    assert admin.get("f/big.bin") == big  # the same response iterated in chunks
    with httpx.Client(base_url=server.url, headers=auth(home)) as c:
        for _ in range(2):  # the kept-alive connection serves the next request after a file response
            r = c.get("/api/v1/content/f/big.bin")
            assert r.status_code == 200 and r.content == big
            assert r.headers["Content-Length"] == str(SIZE)
            assert r.headers["ETag"] == f'"{digest_bytes(big)}"'
        assert c.get("/api/v1/content/f/big.bin", headers={"If-None-Match": r.headers["ETag"]}).status_code == 304
        head = c.head("/api/v1/content/f/big.bin")
        assert head.status_code == 200 and head.content == b"" and head.headers["Content-Length"] == str(SIZE)


def test_ranges_of_a_large_blob(server: ServerHandle, home: Home, big: bytes) -> None:
    cases = [("bytes=0-9", 0, 9), (f"bytes={SIZE - 100}-", SIZE - 100, SIZE - 1), ("bytes=-5", SIZE - 5, SIZE - 1)]
    cases.append(("bytes=1000000-3000000", 1000000, 3000000))
    with httpx.Client(base_url=server.url, headers=auth(home)) as c:
        for header, first, last in cases:
            r = c.get("/api/v1/content/f/big.bin", headers={"Range": header})
            assert r.status_code == 206, header
            assert r.content == big[first : last + 1], header
            assert r.headers["Content-Range"] == f"bytes {first}-{last}/{SIZE}"


def test_a_corrupted_large_blob_is_never_served_as_complete(
    server: ServerHandle, home: Home, admin: RemoteClient, big: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="datamill")
    assert isinstance(home.blobs, LocalBlobStore)
    path = home.blobs.path_of(digest_bytes(big))
    path.chmod(0o644)
    with open(path, "r+b") as f:  # one byte flipped in the middle
        f.seek(SIZE // 2)
        f.write(bytes([big[SIZE // 2] ^ 0xFF]))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(BlobCorrupted):
        admin.download("f/big.bin", dest)
    assert list(dest.iterdir()) == []
    received = 0
    with (
        pytest.raises(httpx.TransportError),
        httpx.stream("GET", f"{server.url}/api/v1/content/f/big.bin", headers=auth(home)) as r,
    ):
        assert r.status_code == 200 and int(r.headers["Content-Length"]) == SIZE
        for chunk in r.iter_bytes():
            received += len(chunk)
    assert received < SIZE
    assert wait_for("the aborted download in the log", lambda: "aborting the download of f/big.bin" in caplog.text)
    assert "big.bin" not in path.parent.name and str(path) not in caplog.text  # no server path in the log line


def test_a_client_gone_mid_download_leaves_the_server_serving(
    server: ServerHandle, home: Home, admin: RemoteClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    data = os.urandom(24 << 20)  # more than the socket buffers hold: the server is mid-sendfile
    admin.create_folder("f")
    admin.put("f", "huge.bin", data)
    url = urlsplit(server.url)
    get = (
        f"GET /api/v1/content/f/huge.bin HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer "
        f"{home.admin_token()}\r\n\r\n"
    ).encode()
    for _ in range(3):
        with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
            sock.sendall(get)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        # closed with most of the body unread: the kernel resets the connection
    assert admin.get("f/huge.bin") == data
    assert admin.whoami().name
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_an_upload_waiting_for_100_continue_gets_it(server: ServerHandle, home: Home, admin: RemoteClient) -> None:
    data = os.urandom(2 * DIRECT_BODY_MIN + 3)
    admin.create_folder("f")
    url = urlsplit(server.url)
    head = (
        f"PUT /api/v1/content/f/expect.bin HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer "
        f"{home.admin_token()}\r\nContent-Length: {len(data)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock, sock.makefile("rb") as f:
        sock.sendall(head)
        assert f.readline().startswith(b"HTTP/1.1 100")  # before any byte of the body is sent
        assert f.readline() == b"\r\n"
        sock.sendall(data)
        status, _, body = read_response(f)
    assert status == 201, body
    assert admin.get("f/expect.bin") == data


def test_a_large_upload_without_write_access_is_refused_and_stores_nothing(
    admin: RemoteClient, user_client: Callable[..., RemoteClient]
) -> None:
    admin.create_folder("f")
    reader = user_client("reader")
    admin.share("f", "reader", "read")
    with pytest.raises(PermissionDenied):
        reader.put("f", "big.bin", os.urandom(SENDFILE_MIN))
    assert admin.list_items("f") == []
    data = os.urandom(DIRECT_BODY_MIN * 2)  # the connection-level state is clean for the next upload
    assert admin.put("f", "after.bin", data).size == len(data)
    assert reader.get("f/after.bin") == data


def test_a_client_gone_mid_download_stops_the_servers_check(
    server: ServerHandle, home: Home, big: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """The server hashes a file response's blob while sendfile sends it; a client that goes away stops
    that work instead of leaving the server reading the rest of a blob nobody receives.

    The blob's file is made to run on (sparse, far past anything the server could hash while the
    test runs): the check can end only by being stopped, and says where it stopped.
    """
    caplog.set_level(logging.INFO, logger="datamill.api")
    assert isinstance(home.blobs, LocalBlobStore)
    path = home.blobs.path_of(digest_bytes(big))
    path.chmod(0o644)
    endless = 1 << 40
    os.truncate(path, endless)
    url = urlsplit(server.url)
    get = (
        f"GET /api/v1/content/f/big.bin HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer "
        f"{home.admin_token()}\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
            sock.sendall(get)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        # closed with most of the body unread: the kernel resets the connection
        stopped = re.compile(r"stopped checking the download of f/big\.bin v1 after (\d+) bytes")
        found = wait_for("the stopped check in the log", lambda: stopped.search(caplog.text), timeout=120)
        assert int(found.group(1)) < endless
    finally:
        os.truncate(path, SIZE)  # whatever happens, no later reader hashes a terabyte
