"""Kept-alive HTTP connections of the standard library (``http.client``), by server.

Shared by the remote client's plain JSON requests and its httpx transport
(:mod:`datamill.client.transport`): a connection is taken for one request and given back once its
answer was read to the end, and one the server closed while it sat idle is dropped, not reused.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
import time

#: A server: scheme, host and port.
Key = tuple[str, str, int]
#: Idle connections older than this are closed, not reused: well before the server's keep-alive
#: timeout (uvicorn's: 5 s), since a request sent on a connection the server closes at that moment
#: fails with "Server disconnected", and a POST cannot simply be sent again.
IDLE_SECONDS = 2.0


def tls_context() -> ssl.SSLContext:
    """The context httpx would use: verification on, certifi's CA bundle (the system's without certifi)."""
    try:
        import certifi  # only for https: parsing the bundle costs tens of ms
    except ImportError:  # pragma: no cover - certifi comes with httpx
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def _readable(sock: socket.socket | None) -> bool:
    """Whether an idle kept-alive socket has something to read: the server closed it (or it is broken)."""
    if sock is None:
        return True
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class Connections:
    """Idle kept-alive connections by server; thread-safe (each request holds its connection alone)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: the context for ``https://`` servers (default: :func:`tls_context`, made on first use)."""
        self._idle: dict[Key, list[tuple[http.client.HTTPConnection, float]]] = {}
        self._lock = threading.Lock()
        self._tls = tls

    def take(self, key: Key) -> http.client.HTTPConnection | None:
        """An idle connection to ``key`` that is still open, if there is one."""
        with self._lock:
            pool = self._idle.get(key, [])
            now = time.monotonic()
            while pool:
                conn, since = pool.pop()
                if now - since < IDLE_SECONDS and not _readable(conn.sock):
                    return conn
                conn.close()
        return None

    def release(self, key: Key, conn: http.client.HTTPConnection) -> None:
        """Give back a connection whose answer was read to the end, for the next request."""
        with self._lock:
            self._idle.setdefault(key, []).append((conn, time.monotonic()))

    def connect(self, key: Key, timeout: float | None) -> http.client.HTTPConnection:
        """A new connection to ``key`` (TLS for ``https``); the OSError (TimeoutError, ssl.SSLError) if none."""
        scheme, host, port = key
        conn: http.client.HTTPConnection
        if scheme == "https":
            if self._tls is None:
                self._tls = tls_context()
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.connect()
        except OSError:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        """Close the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for pool in idle.values():
            for conn, _since in pool:
                conn.close()
