"""The remote client's HTTP transport: the standard library's ``http.client`` under httpx's interface.

httpx's own transport loads httpcore and h11 (with anyio's parts), a third of a remote command's
start-up; this one does the same for the requests the client makes (HTTP/1.1 with kept-alive
connections, TLS with certifi's CA bundle on ``https://``, request and response bodies streamed) with
modules the interpreter has anyway. httpx still builds the requests and reads the responses
(decoding, ``.json()``, errors), so the client above it is unchanged.

Errors are httpx's: a refused or timed-out connection is :class:`httpx.ConnectError` /
:class:`httpx.ConnectTimeout`, a slow answer :class:`httpx.ReadTimeout`, a broken one
:class:`httpx.ReadError` or :class:`httpx.RemoteProtocolError`.
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import httpx

from datamill.client.connections import Connections
from datamill.client.connections import Key as _Key

#: Bytes read from a response at a time, at most: a read returns what has arrived (one ``recv``), so
#: an event stream is not held back; a download gets a few large reads where 64 KiB made sixteen
#: times as many trips through Python (and httpx) per MiB.
CHUNK = 1 << 20


#: Bytes handed to ``sendfile`` per call when a file is sent as a request body: large (few calls), yet
#: a progress report every few hundred milliseconds.
SENDFILE_STEP = 16 << 20


class FileBody(httpx.SyncByteStream):
    """``length`` bytes of a regular file from ``offset``, as a request body.

    :class:`StdlibTransport` sends it with ``sendfile(2)``: the kernel moves the bytes from the page
    cache to the socket, and they never pass through Python. Any other transport iterates it in
    chunks. The file's position is not used or moved. ``progress`` is called with each count of
    bytes sent.
    """

    def __init__(self, file: BinaryIO, offset: int, length: int, progress: Callable[[int], None] | None = None) -> None:
        self.file = file
        self.offset = offset
        self.length = length
        self.progress = progress

    def __iter__(self) -> Iterator[bytes]:
        fd = self.file.fileno()
        at, end = self.offset, self.offset + self.length
        while at < end:
            chunk = os.pread(fd, min(CHUNK, end - at), at)
            if not chunk:
                raise OSError(f"the file shrank while it was sent ({at - self.offset} of {self.length} bytes)")
            at += len(chunk)
            if self.progress is not None:
                self.progress(len(chunk))
            yield chunk

    def send_to(self, sock: socket.socket) -> None:
        """Send the bytes on ``sock`` by ``sendfile``; raises OSError if the file shrank meanwhile."""
        sent = 0
        while sent < self.length:
            step = min(SENDFILE_STEP, self.length - sent)
            n = sock.sendfile(self.file, self.offset + sent, step)
            if n == 0:
                raise OSError(f"the file shrank while it was sent ({sent} of {self.length} bytes)")
            sent += n
            if self.progress is not None:
                self.progress(n)


#: The key in a response's ``extensions`` under which :class:`StdlibTransport` leaves its body
#: stream, so that a download can have it written straight into a file (:meth:`_ResponseStream.write_to`).
BODY_STREAM = "datamill.body_stream"

#: Bytes moved per ``splice`` call (the pipe between socket and file is enlarged to this).
SPLICE_STEP = 1 << 20
_F_SETPIPE_SZ = 1031


class _Dropped(Exception):
    """The server closed the connection before answering (a kept-alive one may have timed out)."""


class _ResponseStream(httpx.SyncByteStream):
    """A response body read from its connection as it arrives; the connection is kept when it ends cleanly."""

    def __init__(self, transport: StdlibTransport, key: _Key, conn: http.client.HTTPConnection, response: Any) -> None:
        self._transport = transport
        self._key = key
        self._conn: http.client.HTTPConnection | None = conn
        self._response = response
        self._request: httpx.Request | None = None
        self._started = False
        self._finished = False

    def __iter__(self) -> Iterator[bytes]:
        self._started = True
        while True:
            with self._reading():
                chunk = self._response.read1(CHUNK)
            if not chunk:
                self._finished = True
                return
            yield chunk

    def write_to(self, fd: int, progress: Callable[[int], None] | None = None) -> int | None:
        """Write the body (all of it, unread so far) into the file ``fd`` at its position; the bytes written.

        Over plain TCP on Linux the bytes go from the socket to the file by ``splice(2)``, never
        through Python; over TLS they are read into one reused buffer and written from it. None
        (and nothing read) when the body has no ``Content-Length`` or reading it has begun: iterate
        it then. A body cut short raises :class:`httpx.RemoteProtocolError`, as iterating does.
        """
        conn, response = self._conn, self._response
        sock = conn.sock if conn is not None else None
        if sock is None or self._started or response.chunked or response.length is None:
            return None
        self._started = True
        with self._reading():
            # What http.client read with the head (then its buffer is empty), or one read.
            first = response.read1(CHUNK)
            _write_all(fd, first)
            if progress is not None and first:
                progress(len(first))
            left = response.length or 0
            if left:
                splice = getattr(os, "splice", None)
                if splice is not None and not isinstance(sock, ssl.SSLSocket):
                    _splice_into(sock, fd, left, progress)
                else:
                    _recv_into(sock, fd, left, progress)
        self._finished = True
        return len(first) + left

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Reading the body: what the socket or http.client raises, as the httpx error it means."""
        try:
            yield
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "timed out reading the response", request=self._request) from exc
        except http.client.IncompleteRead as exc:
            raise httpx.RemoteProtocolError("the server closed the connection mid-answer") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=self._request) from exc

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        # Read to its end, the connection can carry the next request (unless the server said it closes it).
        done = self._finished and not self._response.will_close
        self._response.close()
        if done:
            self._transport._release(self._key, conn)
        else:
            conn.close()


class StdlibTransport(httpx.BaseTransport):
    """HTTP/1.1 over ``http.client``, one kept-alive connection per server and concurrent request."""

    def __init__(self, tls: ssl.SSLContext | None = None, connections: Connections | None = None) -> None:
        """``tls``: the context for ``https://`` servers (default: verified against certifi's CA bundle);
        ``connections``: kept-alive connections to share (with the client's own requests)."""
        self.connections = connections or Connections(tls)

    def _release(self, key: _Key, conn: http.client.HTTPConnection) -> None:
        self.connections.release(key, conn)

    def _idle_connection(self, key: _Key) -> http.client.HTTPConnection | None:
        return self.connections.take(key)

    def _connect(self, key: _Key, request: httpx.Request, timeouts: dict[str, Any]) -> http.client.HTTPConnection:
        try:
            return self.connections.connect(key, timeouts.get("connect"))
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "timed out connecting", request=request) from exc
        except OSError as exc:  # refused, unreachable, no such host, TLS failures (ssl.SSLError)
            raise httpx.ConnectError(str(exc), request=request) from exc

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; the response with its body still to read (httpx reads or streams it)."""
        url = request.url
        scheme = url.scheme.lower()
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"cannot send a request over {scheme!r}", request=request)
        key: _Key = (scheme, url.host, url.port or (443 if scheme == "https" else 80))
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        # A body given as bytes can be sent again on a fresh connection when a kept-alive one turns out
        # to be closed by the server; a streamed body (an upload) cannot, so it opens a fresh one.
        replayable = isinstance(request.stream, httpx.ByteStream)
        conn = self._idle_connection(key) if replayable else None
        if conn is not None:
            try:
                return self._exchange(key, conn, request, timeouts)
            except _Dropped:
                pass  # went stale while idle: once more, on a new connection
        try:
            return self._exchange(key, self._connect(key, request, timeouts), request, timeouts)
        except _Dropped as exc:
            raise httpx.RemoteProtocolError(
                f"the server closed the connection: {exc.__cause__}", request=request
            ) from exc

    def _exchange(
        self, key: _Key, conn: http.client.HTTPConnection, request: httpx.Request, timeouts: dict[str, Any]
    ) -> httpx.Response:
        sock = conn.sock
        assert sock is not None
        sock.settimeout(timeouts.get("read"))
        chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
        try:
            conn.putrequest(request.method, url_target(request.url), skip_host=True, skip_accept_encoding=True)
            for name, value in request.headers.multi_items():
                conn.putheader(name, value)
            conn.endheaders()
            body = request.stream
            if isinstance(body, FileBody) and not chunked:
                body.send_to(sock)  # by the kernel, from the page cache
            else:
                for chunk in body:  # type: ignore[union-attr]  # a sync request's stream
                    if chunked:
                        if chunk:
                            conn.send(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    else:
                        conn.send(chunk)
            if chunked:
                conn.send(b"0\r\n\r\n")
            response = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
            conn.close()
            raise _Dropped from exc
        except TimeoutError as exc:
            conn.close()
            raise httpx.ReadTimeout(str(exc) or "timed out waiting for the answer", request=request) from exc
        except http.client.HTTPException as exc:
            conn.close()
            raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__, request=request) from exc
        except OSError as exc:
            conn.close()
            raise httpx.WriteError(str(exc), request=request) from exc
        stream = _ResponseStream(self, key, conn, response)
        stream._request = request
        return httpx.Response(
            status_code=response.status,
            headers=response.getheaders(),
            stream=stream,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": response.reason.encode("latin-1"),
                BODY_STREAM: stream,
            },
        )

    def close(self) -> None:
        """Close the kept-alive connections."""
        self.connections.close()


def url_target(url: httpx.URL) -> str:
    """The request target of ``url``: its path and query, as sent on the request line."""
    return url.raw_path.decode("ascii")


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _wait_readable(sock: socket.socket) -> None:
    """Wait until ``sock`` has bytes (or EOF) within its timeout; TimeoutError past it."""
    timeout = sock.gettimeout()
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    if not poller.poll(None if timeout is None else int(timeout * 1000) + 1):
        raise TimeoutError("timed out reading the response")


def _short(got: int, wanted: int) -> http.client.IncompleteRead:
    return http.client.IncompleteRead(b"", wanted - got)


def _splice_into(sock: socket.socket, fd: int, length: int, progress: Callable[[int], None] | None) -> None:
    """``length`` bytes from ``sock`` into ``fd`` through a pipe, by ``splice(2)`` (no copy through Python)."""
    r, w = os.pipe()
    try:
        try:
            import fcntl

            fcntl.fcntl(w, _F_SETPIPE_SZ, SPLICE_STEP)
        except OSError:  # a lower pipe-max-size: the default pipe works, in smaller steps
            pass
        got = 0
        while got < length:
            try:
                n = os.splice(sock.fileno(), w, min(SPLICE_STEP, length - got))
            except BlockingIOError:  # a socket with a timeout is non-blocking underneath
                _wait_readable(sock)
                continue
            if n == 0:
                raise _short(got, length)
            left = n
            while left:
                left -= os.splice(r, fd, left)
            got += n
            if progress is not None:
                progress(n)
    finally:
        os.close(r)
        os.close(w)


def _recv_into(sock: socket.socket, fd: int, length: int, progress: Callable[[int], None] | None) -> None:
    """``length`` bytes from ``sock`` into ``fd`` through one reused buffer."""
    view = memoryview(bytearray(min(CHUNK, length)))
    got = 0
    while got < length:
        n = sock.recv_into(view, min(len(view), length - got))
        if n == 0:
            raise _short(got, length)
        _write_all(fd, view[:n])
        got += n
        if progress is not None:
            progress(n)
