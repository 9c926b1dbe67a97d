"""Item bytes: streaming upload and download, with ranges.

* ``PUT /api/v1/content/{folder}/{name}``: the raw body becomes a new version. Headers:
  ``Content-Type``, ``Content-Length``, ``X-Datamill-Metadata`` (a JSON object) and
  ``X-Datamill-Digest`` (the digest the bytes must have). The body is streamed into a blob writer
  in bounded chunks, never held whole; write access is checked before the first byte is stored.
  A body that ends early (client gone, fewer bytes than ``Content-Length``) or hashes to another
  digest is thrown away: no item, no version, no file. With an ``Idempotency-Key`` header (per
  user, remembered 24 h) a retry of the same upload answers the version the first request made,
  with the same status and body and ``Idempotent-Replayed: true``, instead of adding a second
  version; the same key for other bytes or another item is a 409 ``idempotency_key_reused``.
* ``POST /api/v1/content/{folder}``: many small files at once, a ``multipart/form-data`` body (a
  JSON manifest, then the files; see :mod:`datamill.api.batch`), stored in one transaction.
* ``GET|HEAD /api/v1/content/{path}?version=N``: the bytes, with ``Content-Length``, ``ETag`` (the
  digest), ``X-Datamill-Digest``, ``X-Datamill-Version``, ``X-Datamill-Info`` (the version as
  JSON) and ``Accept-Ranges: bytes``; ``Range: bytes=a-b | a- | -n`` gives 206, an unsatisfiable
  range 416.

The blob store verifies the digest as the last bytes are read. So that a corrupted blob is never
served as a clean 200, the stream always holds one chunk back: the last chunk goes out only once
the whole blob verified, and on a mismatch the connection is dropped short of ``Content-Length``.
A file of one chunk is thus read whole before the headers go out and fails with a JSON 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any, BinaryIO
from urllib.parse import quote

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from datamill.api.batch import MAX_BATCH_BYTES, boundary_of, parse_batch
from datamill.api.deps import ActorDep, HomeDep, blocking
from datamill.api.ids import VersionQuery
from datamill.api.openapi import ERROR_DESCRIPTIONS, Error, binary, errors
from datamill.api.paths import UrlPath
from datamill.api.protocol import CAN_LAND, SOCKET_BODY, SocketBody
from datamill.api.schemas import VersionOut
from datamill.api.sendfile import ZEROCOPY
from datamill.errors import (
    BlobCorrupted,
    DatamillError,
    InvalidMetadata,
    RangeNotSatisfiable,
    TooLarge,
    Unavailable,
    UploadIncomplete,
)
from datamill.limits import INT64_MAX, loads_bounded
from datamill.store.blobs import ALGORITHM, CHUNK, BlobWriter, check_digest, hasher
from datamill.store.blobs.base import corrupted
from datamill.store.names import split_item_path
from datamill.store.store import VersionInfo, check_idempotency_key, check_metadata

log = logging.getLogger("datamill.api")

router = APIRouter(tags=["content"])

#: Bytes of an upload's body handed to the blob writer at once (hashed and written in a worker
#: thread while the next block is received). 1 MiB: a 4 MiB block cost three times the CPU in the
#: writing thread (fresh allocations of that size are page-faulted in anew each time).
BODY_BLOCK = CHUNK

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)

# What clients send when they have no idea (curl --data-binary); the name's type is better.
_NO_TYPE = {"", "application/x-www-form-urlencoded"}


def parse_metadata_header(value: str | None) -> dict[str, Any]:
    """The ``X-Datamill-Metadata`` header as a checked metadata dict (``{}`` when absent)."""
    if value is None or not value.strip():
        return {}
    return check_metadata(loads_bounded(value, "X-Datamill-Metadata", InvalidMetadata))


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``Range`` -> inclusive ``(first, last)``; None to ignore it (several ranges, other units, bad syntax).

    ``bytes=0-9`` -> (0, 9); ``bytes=10-`` -> (10, size-1); ``bytes=-5`` -> (size-5, size-1).
    Raises :class:`RangeNotSatisfiable` when no byte of the file is in the range.
    """
    m = _RANGE.match(header)
    if not m:
        return None
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(f"the file has {size} bytes; ask for a range within it", size=size)
        return max(0, size - n), size - 1
    a = int(first)
    if last and int(last) < a:
        return None
    b = int(last) if last else size - 1
    if a >= size:
        raise RangeNotSatisfiable(f"the range starts at byte {a} but the file has {size} bytes", size=size, start=a)
    return a, min(b, size - 1)


def _content_disposition(name: str) -> str:
    ascii_name = name.encode("ascii", "replace").decode("ascii").replace('"', "_").replace("\\", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def content_headers(info: VersionInfo) -> dict[str, str]:
    """Headers describing a version's bytes (the length is added per response)."""
    return {
        "Content-Type": info.content_type,
        "ETag": f'"{info.digest}"',
        "X-Datamill-Digest": info.digest,
        "X-Datamill-Version": str(info.version),
        # ASCII JSON: header values are Latin-1 on the wire, names may be any Unicode.
        "X-Datamill-Info": json.dumps(info.to_dict(), ensure_ascii=True, separators=(",", ":")),
        "Accept-Ranges": "bytes",
        "Content-Disposition": _content_disposition(info.name),
        "Cache-Control": "private, no-cache",
    }


class HeldBackStream:
    """Serve a verifying chunk iterator one chunk behind, so a failed check can still abort.

    :meth:`prime` reads the first two chunks before the response starts; a blob of at most one
    chunk (and any range read, which the store verifies up front) is thus fully checked while a
    proper JSON error can still be sent.
    """

    def __init__(self, chunks: Iterator[bytes], what: str, length: int) -> None:
        self._chunks = chunks
        self._what = what
        self._length = length
        self._held: bytes | None = None
        self._ahead: bytes | None = None

    async def _next(self) -> bytes | None:
        return await blocking(next, self._chunks, None)

    async def prime(self) -> None:
        """Read ahead before the headers go out; raises what the store raises."""
        try:
            self._held = await self._next()
            if self._held is not None:
                self._ahead = await self._next()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the underlying reader (cheap: closes a file)."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        try:
            held, ahead = self._held, self._ahead
            while held is not None:
                if ahead is None:  # the reader is exhausted, so the blob verified
                    yield held
                    return
                sent += len(held)
                if sent > self._length:
                    raise BlobCorrupted(f"{self._what}: the stored file is longer than recorded")
                yield held
                held, ahead = ahead, await self._next()
        except DatamillError as exc:
            log.error("aborting the download of %s after %d bytes: %s", self._what, sent, exc.message)
            raise
        finally:
            self.close()


class BodySink:
    """Feeds a request body to a blob writer in large blocks, one block written while the next arrives.

    The body comes in network-sized pieces (64-256 KiB); each :data:`BODY_BLOCK` of them goes to
    the writer (hash and write, in a worker thread) in one call, and the event loop keeps receiving
    the next block meanwhile, so receiving overlaps hashing and writing instead of alternating with
    them. At most two blocks are held at once.
    """

    def __init__(self, writer: BlobWriter) -> None:
        self._writer = writer
        self._pending: asyncio.Future[Any] | None = None
        self._buf: list[bytes] = []
        self._buffered = 0
        self.received = 0
        self._handed_off = False  # a landing thread aborts the writer itself (see land())

    async def add(self, chunk: bytes) -> None:
        """Take the next piece of the body; hands a full block to the writer."""
        self._buf.append(chunk)
        self._buffered += len(chunk)
        self.received += len(chunk)
        if self._buffered >= BODY_BLOCK:
            await self._hand_over()

    async def _hand_over(self) -> None:
        block = self._buf[0] if len(self._buf) == 1 else b"".join(self._buf)
        self._buf, self._buffered = [], 0
        if self._pending is not None:
            await self._pending  # raises the previous block's error (disk full, ...)
        self._pending = asyncio.ensure_future(blocking(self._writer.write, block))

    async def put(self, block: memoryview) -> None:
        """Hand ``block`` to the writer as it is, once the previous block is written (so that the
        caller may refill that one); nothing may be buffered by :meth:`add` before."""
        self.received += len(block)
        if self._pending is not None:
            await self._pending
        self._pending = asyncio.ensure_future(blocking(_write_view, self._writer, block))

    async def land(self, body: SocketBody, fd: int) -> None:
        """Have the rest of ``body`` land in the writer's file ``fd`` (see :meth:`SocketBody.land`),
        hashed as it lands; nothing may have been given to the writer before."""
        try:
            hexdigest, n = await asyncio.shield(body.land(fd, self._writer.abort))
        finally:
            # Still landing (an error or a cancellation here): the landing thread throws the
            # writer's file away once it has stopped writing into it, not this one.
            self._handed_off = body.close()
            self.received = body.received  # also for the error's message when the body fell short
        self._writer.adopt(hexdigest, n)

    async def flush(self) -> None:
        """Write what is left and wait for every block to be written."""
        if self._buf:
            await self._hand_over()
        if self._pending is not None:
            await self._pending  # kept until done: abort() must know whether a thread still writes
            self._pending = None

    def abort(self) -> None:
        """Throw the writer's bytes away (a no-op after commit) once no block is being written."""
        if self._handed_off:
            return
        pending, self._pending = self._pending, None
        if pending is None or pending.done():
            self._writer.abort()
        else:
            # A worker thread is writing into the temporary file: close it only once it is done.
            pending.add_done_callback(self._abort_after)

    def _abort_after(self, done: asyncio.Future[None]) -> None:
        if not done.cancelled():
            done.exception()  # retrieved: the upload already failed for another reason
        self._writer.abort()


def _write_view(writer: BlobWriter, block: memoryview) -> None:
    # Every writer takes what it is given at once (hashes it, writes it to a file or copies it
    # into a part buffer), so a view of a block that is refilled afterwards is safe to pass.
    writer.write(block)  # type: ignore[arg-type]


async def _read_socket_body(body: SocketBody, sink: BodySink) -> None:
    """Feed an upload's body to ``sink`` from the socket (see :class:`SocketBody`), one block
    written while the next is received."""
    try:
        while (block := await body.read_block()) is not None:
            await sink.put(block)
    finally:
        body.close()


@router.put(
    "/content/{path:names}",
    response_model=VersionOut,
    status_code=201,
    summary="Upload bytes as a new version",
    responses={
        **errors(400, 403, 404, 409),
        201: {
            "description": "The new version, or (with `Idempotent-Replayed: true`) the one an earlier request "
            "with the same Idempotency-Key made.",
            "headers": {
                "Idempotent-Replayed": {
                    "description": "`true` when this answers a retry of an upload already recorded.",
                    "schema": {"type": "string"},
                }
            },
        },
        409: {
            **errors(409)[409],
            "description": "The item changed meanwhile, or the Idempotency-Key was already used for another upload.",
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload(
    request: Request,
    path: UrlPath,
    actor: ActorDep,
    home: HomeDep,
    content_type: str | None = Header(None, description="The bytes' MIME type; guessed from the name if absent."),
    # The body's length, known to HTTP itself: not a parameter to document (or to fuzz).
    content_length: int | None = Header(None, ge=0, le=INT64_MAX, include_in_schema=False),
    x_datamill_metadata: str | None = Header(None, description="A JSON object of item metadata."),
    x_datamill_digest: str | None = Header(None, description="The digest the bytes must hash to."),
    idempotency_key: str | None = Header(
        None,
        alias="Idempotency-Key",
        description="A fresh value (e.g. a UUID) per upload, sent again on its retries: a retry of an upload "
        "already recorded answers its version instead of making another one.",
    ),
) -> JSONResponse:
    """Stream the raw request body into a new version of ``{folder}/{name}`` (created when new)."""
    folder, name = split_item_path(path)
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)  # refused before any byte is read
    meta = parse_metadata_header(x_datamill_metadata)
    digest = x_datamill_digest.strip() if x_datamill_digest else None
    if digest:
        check_digest(digest)
    ctype = None if content_type is None or content_type.strip() in _NO_TYPE else content_type.strip()
    # Access is checked here, before any byte is read or stored.
    writer = await blocking(home.store.begin_upload, actor, folder, name, digest, content_length)
    sink = BodySink(writer)
    socket_body: SocketBody | None = request.scope.get("extensions", {}).get(SOCKET_BODY)
    try:
        try:
            fd = writer.fileno()
            if socket_body is not None and fd is not None and CAN_LAND:
                await sink.land(socket_body, fd)
            elif socket_body is not None:
                await _read_socket_body(socket_body, sink)
            else:
                async for chunk in request.stream():
                    await sink.add(chunk)
        except ClientDisconnect:
            log.warning("upload of %s aborted: the client went away after %d bytes", path, sink.received)
            raise UploadIncomplete(received=sink.received, expected=content_length) from None
        except asyncio.CancelledError:
            if not request.app.state.guard.stopping:
                raise
            # uvicorn cancels what is still running once a stop's grace period is over: the client
            # is told why (if it still listens), not handed a bare 500.
            log.warning("upload of %s aborted: the server stopped after %d bytes", path, sink.received)
            raise Unavailable(
                "the server stopped before the upload was complete; nothing was stored. "
                "Send the file again once the server is back."
            ) from None
        await sink.flush()
        if content_length is not None and sink.received != content_length:
            log.warning("upload of %s aborted: %d of %d bytes arrived", path, sink.received, content_length)
            raise UploadIncomplete(received=sink.received, expected=content_length)
        blob = await blocking(writer.commit)
    finally:
        # Cheap and must not be skipped by a cancellation, so not sent to a thread.
        sink.abort()
    info, replayed = await blocking(home.store.commit_upload, actor, folder, name, blob, ctype, meta, idempotency_key)
    return JSONResponse(info.to_dict(), status_code=201, headers={"Idempotent-Replayed": "true"} if replayed else None)


@router.post(
    "/content/{path:names}",
    status_code=201,
    summary="Upload many small files into a folder at once",
    responses={
        **errors(400, 403, 404),
        413: {"model": Error, "description": "The batch is larger than the server takes."},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "manifest": {"type": "string", "description": "JSON: metadata, files (name, size, digest)"},
                            "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        },
                    }
                }
            },
        }
    },
)
async def upload_batch(
    request: Request,
    path: UrlPath,
    actor: ActorDep,
    home: HomeDep,
    content_type: str | None = Header(None, description="multipart/form-data with its boundary."),
    content_length: int | None = Header(None, ge=0, le=INT64_MAX, include_in_schema=False),
) -> JSONResponse:
    """Store the files of a multipart batch (see :mod:`datamill.api.batch`) as new versions in folder ``{path}``.

    All or nothing, in one transaction; a body cut short, damaged or not matching its manifest
    stores nothing. Each version is an ``item.created``/``item.updated`` event as with a PUT.
    """
    boundary_of(content_type)  # refused before anything is read
    if content_length is not None and content_length > MAX_BATCH_BYTES:
        raise TooLarge(_batch_too_large(), limit=MAX_BATCH_BYTES)
    # Access is checked here, before any byte is read.
    await blocking(home.store.check_writable, actor, path)
    buf: list[bytes] = []
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > MAX_BATCH_BYTES:
                raise TooLarge(_batch_too_large(), limit=MAX_BATCH_BYTES)
            buf.append(chunk)
    except ClientDisconnect:
        raise UploadIncomplete(received=received, expected=content_length) from None
    if content_length is not None and received != content_length:
        raise UploadIncomplete(received=received, expected=content_length)
    batch = await blocking(parse_batch, b"".join(buf), content_type)
    infos = await blocking(
        home.store.put_many,
        actor,
        path,
        [(f.name, f.data) for f in batch.files],
        batch.metadata,
        "upload",
        [f.metadata for f in batch.files],
    )
    return JSONResponse({"versions": [i.to_dict() for i in infos]}, status_code=201)


def _batch_too_large() -> str:
    return (
        f"a batch upload is at most {MAX_BATCH_BYTES // (1024 * 1024)} MiB; send smaller batches "
        "(or large files one by one with PUT)"
    )


@router.head(
    "/content/{path:names}",
    name="content_headers",
    response_class=Response,
    responses={
        200: {"description": "The headers of the bytes, without them."},
        206: {"description": "The headers of the requested range."},
        304: {"description": "Not modified (If-None-Match matched the ETag)."},
        **{s: {"description": ERROR_DESCRIPTIONS[s]} for s in (400, 404, 416)},
    },
    summary="A version's headers, without the bytes",
)
@router.get(
    "/content/{path:names}",
    summary="Download a version's bytes",
    response_class=StreamingResponse,
    responses={
        **errors(400, 404, 416),
        200: binary("The bytes, with the item's own content type.", "*/*"),
        307: {"description": "With s3_presign_downloads: the bytes are at the Location (a presigned URL)."},
        206: binary("The requested range.", "*/*"),
        304: {"description": "Not modified (If-None-Match matched the ETag)."},
    },
)
async def download(
    request: Request,
    path: UrlPath,
    actor: ActorDep,
    home: HomeDep,
    version: VersionQuery = None,
    range_header: str | None = Header(None, alias="Range", description="bytes=a-b, bytes=a- or bytes=-n."),
    if_none_match: str | None = Header(None),
) -> Response:
    """Stream a version's bytes (the current version by default)."""
    info = await blocking(home.store.get_version, actor, path, version)
    headers = content_headers(info)
    if if_none_match and (
        if_none_match.strip() == "*" or headers["ETag"] in [t.strip() for t in if_none_match.split(",")]
    ):
        return Response(status_code=304, headers={"ETag": headers["ETag"]})
    status, start, end = 200, 0, None
    length = info.size
    if range_header:
        wanted = parse_range(range_header, info.size)
        if wanted is not None:
            status, (start, end) = 206, wanted
            length = end - start + 1
            headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    headers["Content-Length"] = str(length)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    if status == 200 and home.settings.s3_presign_downloads and info.size > 0:
        # The bytes come from the object store itself; the client verifies them against the digest.
        url = home.store.blobs.presigned_url(info.digest, home.settings.s3_presign_seconds, info.name)
        if url is not None:
            keep = ("ETag", "X-Datamill-Info", "X-Datamill-Digest", "X-Datamill-Version", "Cache-Control")
            return Response(status_code=307, headers={"Location": url, **{k: headers[k] for k in keep if k in headers}})
    if status == 200 and length >= SENDFILE_MIN and ZEROCOPY in request.scope.get("extensions", {}):
        local = home.store.blobs.local_file(info.digest)
        if local is not None:
            try:
                file = open(local, "rb", buffering=0)  # noqa: SIM115 - the response closes it
            except FileNotFoundError:  # removed meanwhile: the stream below reports it
                pass
            else:
                return BlobFileResponse(file, info, headers)
    chunks = home.store.blobs.iter_range(info.digest, start, end)
    stream = HeldBackStream(chunks, f"{info.path} v{info.version}", length)
    await stream.prime()
    return StreamingResponse(stream, status_code=status, headers=headers)


#: Whole-blob downloads at least this large go out by ``sendfile`` where the server offers it.
SENDFILE_MIN = 4 * CHUNK


def _verify_file(file: BinaryIO, digest: str, size: int, stop: threading.Event) -> int | None:
    """Hash the whole file (its recorded ``size`` and nothing after) into one reused buffer; raises
    :class:`BlobCorrupted` when it is not ``digest``. Once ``stop`` is set it stops, unchecked, and
    returns how many bytes it had hashed; None when it checked the whole file."""
    h = hasher()
    buf = memoryview(bytearray(CHUNK))
    fd, at = file.fileno(), 0
    while not stop.is_set():
        n = os.preadv(fd, [buf], at)
        if n == 0:
            break
        h.update(buf[:n])
        at += n
    else:
        return at
    actual = f"{ALGORITHM}:{h.hexdigest()}"
    if at != size or actual != digest:
        raise corrupted(digest, actual)
    return None


async def _until_disconnected(receive: Receive, stop: threading.Event) -> None:
    """Set ``stop`` when the client goes away (the ASGI ``http.disconnect`` message)."""
    while (await receive())["type"] != "http.disconnect":
        pass  # the (empty) request body of the GET
    stop.set()


class BlobFileResponse(Response):
    """A whole blob's bytes sent from its file by ``sendfile`` (:data:`ZEROCOPY`), checked while they go out.

    The file is hashed in a worker thread while ``sendfile`` sends all but its last chunk; that chunk
    goes only once the hash matched, and on a mismatch the connection is dropped short of
    ``Content-Length``, as :class:`HeldBackStream` does. A client that goes away stops the hash
    (the server would otherwise read the rest of a blob nobody receives): its download was
    incomplete anyway, and the check is only of use to a client that gets the last chunk.
    """

    def __init__(self, file: BinaryIO, info: VersionInfo, headers: dict[str, str]) -> None:
        super().__init__(status_code=200, headers=headers)
        self._file = file
        self._info = info

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        info, file = self._info, self._file
        what = f"{info.path} v{info.version}"
        stop = threading.Event()
        check = asyncio.ensure_future(blocking(_verify_file, file, info.digest, info.size, stop))
        # sendfile returns without a word when the client resets the connection, and the hash
        # goes on in its thread: the disconnect itself is what stops it.
        gone = asyncio.ensure_future(_until_disconnected(receive, stop))
        tail = min(info.size, CHUNK)
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            body = {"type": ZEROCOPY, "file": file, "offset": 0, "count": info.size - tail, "more_body": True}
            await send(body)
            try:
                hashed = await check
            except DatamillError as exc:
                log.error("aborting the download of %s after %d bytes: %s", what, info.size - tail, exc.message)
                raise
            if hashed is not None:
                log.info("stopped checking the download of %s after %d bytes: the client went away", what, hashed)
                return
            await send({**body, "offset": info.size - tail, "count": tail, "more_body": False})
        finally:
            gone.cancel()
            if check.done():
                file.close()
            else:
                stop.set()  # the client went away: the hash is of no use
                check.add_done_callback(lambda done: _close_after(done, file))


def _close_after(done: asyncio.Future[int | None], file: BinaryIO) -> None:
    """Close the file once the thread hashing it has stopped (its outcome no longer matters)."""
    if not done.cancelled():
        done.exception()
    file.close()
