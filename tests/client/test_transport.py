"""The remote client's standard-library transport, against real servers on loopback.

Kept-alive connections are reused and dropped when the server closed them; TLS is verified (a
self-signed server is refused, and accepted with its certificate as the CA); a refused connection and
a server that never answers give the client's usual errors.
"""

from __future__ import annotations

import http.server
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from datamill.api import ServerHandle
from datamill.client.connections import IDLE_SECONDS
from datamill.client.remote import RemoteClient
from datamill.client.transport import StdlibTransport
from datamill.errors import DatamillError
from tests.helpers import free_port


class _Hello(http.server.BaseHTTPRequestHandler):
    """Answers every GET with ``hello``; with ``?close`` it closes the connection after answering."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        if self.path.endswith("?close"):
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def hello() -> Iterator[tuple[http.server.ThreadingHTTPServer, str]]:
    """A plain HTTP/1.1 server with kept-alive connections on loopback."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_connections_are_kept_alive_and_dropped_when_the_server_closed_them(
    hello: tuple[http.server.ThreadingHTTPServer, str],
) -> None:
    _, url = hello
    transport = StdlibTransport()
    with httpx.Client(transport=transport) as http:
        key = ("http", "127.0.0.1", int(url.rsplit(":", 1)[1]))
        assert http.get(url + "/a").text == "hello"
        ((conn, _),) = transport.connections._idle[key]
        assert http.get(url + "/b").text == "hello"
        ((again, _),) = transport.connections._idle[key]
        assert again is conn  # the same connection, kept alive
        assert http.get(url + "/c?close").text == "hello"
        # the server closed that one: the next request goes on a new connection and succeeds
        assert http.get(url + "/d").text == "hello"
        ((fresh, since),) = transport.connections._idle[key]
        assert fresh is not conn
        # one idle for longer than IDLE_SECONDS is not reused (the server may be closing it)
        transport.connections._idle[key] = [(fresh, since - IDLE_SECONDS - 1)]
        assert http.get(url + "/e").text == "hello"
        ((newest, _),) = transport.connections._idle[key]
        assert newest is not fresh and fresh.sock is None  # closed, not reused


def test_a_streamed_upload_and_download(server_and_token: tuple[ServerHandle, str], tmp_path: Path) -> None:
    handle, token = server_and_token
    with RemoteClient(handle.url, token) as client:
        client.create_folder("T")
        data = bytes(range(256)) * 5000  # over a megabyte, sent in chunks
        client.put("T", "big.bin", _Chunks(data), size=None)
        info, chunks = client.iter_bytes("T/big.bin")
        assert info.size == len(data) and b"".join(chunks) == data


class _Chunks:
    """A file-like object without a size: the client streams it (chunked transfer encoding)."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._at = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._at + n
        out = bytes(self._data[self._at : end])
        self._at += len(out)
        return out


@pytest.fixture
def server_and_token(home: object) -> Iterator[tuple[ServerHandle, str]]:
    from datamill.home import Home
    from tests.helpers import serve

    assert isinstance(home, Home)
    with serve(home) as handle:
        token = home.admin_token()
        assert token
        yield handle, token


def test_a_refused_connection_and_a_silent_server_are_the_usual_errors() -> None:
    with (
        RemoteClient(f"http://127.0.0.1:{free_port()}", "dm_x") as client,
        pytest.raises(DatamillError, match="is not reachable"),
    ):
        client.whoami()
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does) and never answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with RemoteClient(url, "dm_x", timeout=0.3) as client, pytest.raises(DatamillError) as failed:
            client.whoami()
        assert "failed: timed out" in str(failed.value) and str(failed.value).endswith("; try again")
    finally:
        silent.close()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on loopback with a self-signed certificate for 127.0.0.1; its URL and certificate."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{srv.server_address[1]}", cert
    finally:
        srv.shutdown()
        srv.server_close()


def test_tls_is_verified(tls_server: tuple[str, Path]) -> None:
    url, cert = tls_server
    # certifi's CAs: a self-signed server is refused
    with httpx.Client(transport=StdlibTransport()) as http, pytest.raises(httpx.ConnectError) as refused:
        http.get(url + "/")
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
    with RemoteClient(url, "dm_x") as client, pytest.raises(DatamillError) as failed:
        client.whoami()
    assert "is not reachable" in str(failed.value) and "CERTIFICATE_VERIFY_FAILED" in str(failed.value)
    trusting = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(transport=StdlibTransport(tls=trusting)) as http:
        assert http.get(url + "/").text == "hello"


def test_a_proxy_in_the_environment_is_honoured(
    monkeypatch: pytest.MonkeyPatch, server_and_token: tuple[ServerHandle, str]
) -> None:
    """With a proxy variable set, requests go through httpx's own transport, which sends them via the proxy."""
    handle, token = server_and_token
    with RemoteClient(handle.url, token) as client:
        assert client.whoami().name == "admin"
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # a proxy that is not there
    with RemoteClient(handle.url, token) as client, pytest.raises(DatamillError, match="is not reachable"):
        client.whoami()
