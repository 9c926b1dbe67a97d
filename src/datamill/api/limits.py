"""Bounds on what a request may bring: header sizes, JSON bodies, metadata headers.

Two layers, so that every oversized request gets a clear answer in the JSON error shape and
never a reset connection:

* :class:`BoundedH11Protocol` (the HTTP protocol uvicorn runs): a request head larger than
  :data:`MAX_HEAD_BYTES` is answered 431 (any other malformed request 400) and the connection is
  closed *gracefully*: our side is shut down first and what the client still sends is read and
  dropped for a moment. uvicorn's own answer closes at once, and closing a socket with unread
  data makes the kernel send a reset, so the client never sees the answer.
* :class:`RequestLimits` (ASGI middleware, before the token check): one header over
  :data:`MAX_HEADER_BYTES` (``X-Datamill-Metadata`` over :data:`MAX_METADATA_BYTES`) is refused
  with 431 (413), and so is a body over :data:`MAX_JSON_BODY` on any route but uploads.
"""

from __future__ import annotations

import asyncio
import json

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from datamill.api.errors import error_body, error_response
from datamill.errors import DatamillError, HeadersTooLarge, TooLarge

#: The whole request head (request line and headers) may be at most this large.
MAX_HEAD_BYTES = 128 * 1024
#: One header may be at most this large (a token is under 100 bytes)...
MAX_HEADER_BYTES = 8 * 1024
#: ... but for item metadata sent with an upload.
MAX_METADATA_BYTES = 64 * 1024
METADATA_HEADER = b"x-datamill-metadata"
#: Bodies of every route but uploads (JSON requests) may be at most this large.
MAX_JSON_BODY = 1024 * 1024
#: Uploads stream their bytes under this prefix: no body limit there.
UPLOAD_PREFIX = "/api/v1/content/"

#: How long, and how much, a refused client's remaining bytes are read and dropped before closing.
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 1024 * 1024


def _kib(n: int) -> str:
    return f"{n // 1024} KiB"


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering a malformed or oversized request head in the JSON error shape.

    The head limit is uvicorn's ``h11_max_incomplete_event_size`` (set to :data:`MAX_HEAD_BYTES`).
    """

    _lingering = False
    _dropped = 0

    def send_400_response(self, msg: str) -> None:
        """Answer 431 (head too large) or 400 as JSON, then close without losing the answer."""
        buffered = len(self.conn.trailing_data[0])
        if buffered > MAX_HEAD_BYTES:
            status, code = 431, HeadersTooLarge.code
            message = (
                f"the request's headers are larger than {_kib(MAX_HEAD_BYTES)}; send shorter headers "
                "(a token is under 100 characters)"
            )
        else:
            status, code = 400, "invalid_http"
            message = "the request is not valid HTTP/1.1; check the client sending it"
        body = json.dumps(error_body(status, code, message)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=status, headers=headers)) or b"")
            self.transport.write(self.conn.send(h11.Data(data=body)) or b"")
            self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:  # a response had already begun: nothing more can be said
            self.transport.close()
            return
        self._linger()

    def _linger(self) -> None:
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()  # after what is buffered: the answer goes out first
        asyncio.get_running_loop().call_later(LINGER_SECONDS, self.transport.close)

    def data_received(self, data: bytes) -> None:
        """Drop what a refused client still sends (up to a bound), else handle it as uvicorn does."""
        if self._lingering:
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES:
                self.transport.close()
            return
        super().data_received(data)


class RequestLimits:
    """Refuse oversized headers (431, 413 for metadata) and JSON bodies (413) before anything reads them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            length = self._check_headers(scope)
        except DatamillError as exc:
            await error_response(exc)(scope, receive, send)
            return
        if scope.get("path", "").startswith(UPLOAD_PREFIX):
            await self.app(scope, receive, send)
            return
        if length is not None:
            if length > MAX_JSON_BODY:
                await error_response(self._body_too_large(length))(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        # No Content-Length (chunked, or no body): read at most the limit first, then replay it.
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > MAX_JSON_BODY:
                await error_response(self._body_too_large(None))(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _body_too_large(length: int | None) -> TooLarge:
        sent = f" ({length} bytes)" if length is not None else ""
        return TooLarge(
            f"the request body is larger than {_kib(MAX_JSON_BODY)}{sent}; JSON requests may be at most "
            f"{_kib(MAX_JSON_BODY)} (upload bytes with PUT /api/v1/content/...)",
            limit=MAX_JSON_BODY,
        )

    @staticmethod
    def _check_headers(scope: Scope) -> int | None:
        """The Content-Length, if any; raises for an oversized header."""
        length = None
        for name, value in scope.get("headers", []):
            if name == METADATA_HEADER:
                if len(value) > MAX_METADATA_BYTES:
                    raise TooLarge(
                        f"the X-Datamill-Metadata header is {len(value)} bytes long; metadata sent with an "
                        f"upload may be at most {_kib(MAX_METADATA_BYTES)} (set larger metadata afterwards "
                        "with PATCH /api/v1/metadata/...)",
                        limit=MAX_METADATA_BYTES,
                    )
            elif len(value) > MAX_HEADER_BYTES:
                shown = name[:64].decode("latin-1")
                raise HeadersTooLarge(
                    f"the {shown} header is {len(value)} bytes long; headers may be at most "
                    f"{_kib(MAX_HEADER_BYTES)} (a token is under 100 characters)",
                    limit=MAX_HEADER_BYTES,
                )
            elif name == b"content-length" and value.strip().isdigit():
                length = int(value)
        return length
