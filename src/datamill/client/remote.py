"""The remote client: the :class:`~datamill.client.base.Client` interface over the REST API.

Uploads and downloads stream (a file is sent and received in chunks, never held whole). Errors
the server reports come back as the same :mod:`datamill.errors` classes the embedded client
raises, looked up by their ``code``. The token travels in the ``Authorization`` header only,
never in a URL, so it stays out of server and proxy logs; ``repr()`` does not show it either.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import http.client
import io
import json
import os
import ssl
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import orjson

from datamill import errors
from datamill._version import __version__
from datamill.client.base import Client, ProgressFn, absolute_ref
from datamill.client.connections import IDLE_SECONDS, Connections, Key
from datamill.errors import BlobCorrupted, DatamillError, InvalidInput, Unauthorized
from datamill.records import (
    FINISHED_RUN,
    EventRecord,
    FolderInfo,
    GroupInfo,
    ItemInfo,
    Level,
    NewToken,
    VersionInfo,
    check_metadata,
)
from datamill.store.blobs import ALGORITHM, CHUNK, digest_bytes, hasher
from datamill.store.records import AccessGrant, UserInfo

if TYPE_CHECKING:  # imported where a method makes one: `datamill ls` needs neither module
    from datamill.dataflows.records import BatchInfo, BatchStatus, DataflowInfo, DataflowVersionInfo
    from datamill.engine.records import PipelineInfo, PlanInfo, RunInfo, TaskInfo, WhyInfo


class _LazyHttpx:
    """httpx, imported on first use: a plain JSON request (``datamill ls``) goes without it (~0.1 s)."""

    def __getattr__(self, name: str) -> Any:
        # httpx imports its own command line (click, rich.syntax, pygments) whenever click is installed,
        # and Typer brings click: ~0.08 s of CPU for code never used here. A None entry makes that one
        # import fail, which httpx expects (its `main` becomes a stub); an httpx imported earlier in
        # the process is left as it is.
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
        import httpx as module

        globals()["httpx"] = module
        return getattr(module, name)


if TYPE_CHECKING:
    import httpx

    from datamill.client.transport import FileBody
else:
    httpx = _LazyHttpx()


API = "/api/v1"
#: Environment variables that make httpx send through a proxy (either case).
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")

NO_TOKEN = (
    "no token given for the datamill server: pass --token or set DATAMILL_TOKEN "
    "(`datamill up` prints one; `datamill token create` makes more)"
)

#: Metadata longer than this (as JSON) is not sent in a header, which servers cap at ~8-16 KiB;
#: it is set with a second request right after the upload instead.
MAX_HEADER_METADATA = 6000

#: The longest one long-poll request waits; the client loops for longer waits.
LONG_POLL_SECONDS = 25.0

#: How many times an upload is sent when the connection breaks or a proxy answers 502/503/504,
#: and the pause before each retry (doubling). Retries carry the first attempt's Idempotency-Key,
#: so an upload whose answer was lost is never recorded twice.
PUT_ATTEMPTS = 4
PUT_BACKOFF_SECONDS = 0.5
RETRY_STATUSES = frozenset({502, 503, 504})
#: Items per answer while :meth:`RemoteClient.find` pages through a search.
FIND_PAGE = 1000


def _error_classes() -> dict[str, type[DatamillError]]:
    """``code`` -> class for every error class in :mod:`datamill.errors` (the first one per code)."""
    out: dict[str, type[DatamillError]] = {}
    for obj in vars(errors).values():
        if isinstance(obj, type) and issubclass(obj, DatamillError):
            out.setdefault(obj.code, obj)
    return out


ERRORS_BY_CODE = _error_classes()

#: For error bodies without a known code (a proxy's page, a route-level 404).
ERRORS_BY_STATUS: dict[int, type[DatamillError]] = {
    400: errors.InvalidInput,
    401: errors.Unauthorized,
    403: errors.PermissionDenied,
    404: errors.NotFound,
    409: errors.Conflict,
    416: errors.RangeNotSatisfiable,
    422: errors.InvalidInput,
}

T = TypeVar("T")


def _query_pairs(params: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """Query parameters as httpx writes them: lists repeated, booleans as true/false, None as empty."""
    for key, value in params.items():
        for one in value if isinstance(value, list | tuple) else [value]:
            if isinstance(one, bool):
                yield key, "true" if one else "false"
            else:
                yield key, "" if one is None else str(one)


def quote_segment(name: str) -> str:
    """Percent-encode one name for a URL path; ``.`` and ``..`` too, which URL libraries collapse."""
    q = quote(name, safe="")
    return q.replace(".", "%2E") if q in {".", ".."} else q


def quote_path(path: str) -> str:
    """``"Raw Data/été.csv"`` -> ``"Raw%20Data/%C3%A9t%C3%A9.csv"``; outer slashes are ignored."""
    inner = path.strip("/")
    return "/".join(quote_segment(p) for p in inner.split("/")) if inner else ""


def _build(cls: type[T], data: Mapping[str, Any]) -> T:
    """A dataclass from a JSON dict, ignoring keys it does not have (such as ``path``)."""
    names = _field_names(cls)  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return False


def _page_loads(body: bytes) -> Any:
    """A page of items: orjson (a 10,000-item page in a fraction of the json module's time), unless
    it refuses the body (NaN) or an item's metadata holds a float, which may be an integer beyond 64
    bits that orjson reads as a float: then the json module, which reads it exactly."""
    try:
        page = orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)
    items = page.get("items") if isinstance(page, dict) else None
    if isinstance(items, list) and any(
        isinstance(d, dict) and d.get("metadata") and _has_float(d["metadata"]) for d in items
    ):
        return json.loads(body)
    return page


def _item(d: Mapping[str, Any]) -> ItemInfo:
    """An :class:`ItemInfo` from the API's dict: :func:`_build` without its per-key filter, for listings."""
    return ItemInfo(
        d["id"],
        d["folder"],
        d["name"],
        d["metadata"],
        d["version"],
        d["digest"],
        d["size"],
        d["content_type"],
        d["created_at"],
        d["updated_at"],
        d.get("version_id", 0),
    )


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def error_from_response(status: int, body: Any, url: str) -> DatamillError:
    """The typed error for an API error body (``{"ok": false, "code", "error", "detail"}``)."""
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        cls = ERRORS_BY_CODE.get(body["code"]) or ERRORS_BY_STATUS.get(status, DatamillError)
        err = cls(str(body.get("error") or "") or None)
        detail = body.get("detail")
        err.detail = dict(detail) if isinstance(detail, dict) else {}
        return err
    cls = ERRORS_BY_STATUS.get(status, DatamillError)
    return cls(f"the server at {url} answered HTTP {status} without a datamill error body")


def _tell(data: BinaryIO) -> int | None:
    """Where a file object stands, if it can be rewound there to send it again; else None."""
    try:
        return data.tell() if data.seekable() else None
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


def _put_headers(content_type: str | None, meta: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """An upload's headers, and the metadata too large for a header (set after the upload)."""
    headers: dict[str, str] = {}
    if content_type:
        headers["Content-Type"] = content_type
    if meta:
        text = json.dumps(meta, ensure_ascii=True, separators=(",", ":"))
        if len(text) > MAX_HEADER_METADATA:
            return headers, meta
        headers["X-Datamill-Metadata"] = text
    return headers, {}


def _regular(data: BinaryIO) -> bool:
    """Whether ``data`` is an open regular file (one ``sendfile`` can send from)."""
    try:
        return stat.S_ISREG(os.fstat(data.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return False


def _file_body(
    data: BinaryIO, start: int | None, length: int | None, progress: ProgressFn | None, reported: list[int]
) -> FileBody | None:
    """The rest of a regular file as a request body the kernel sends (``sendfile``); None for other streams.

    ``reported`` is as in :meth:`RemoteClient._chunks`: a retry sends the bytes again, and the
    progress shown only grows past what it showed.
    """
    if start is None or length is None or not _regular(data):
        return None
    from datamill.client.transport import FileBody  # with httpx, which a plain `datamill ls` goes without

    if isinstance(data, io.BufferedIOBase) and not isinstance(data, io.BufferedRandom | io.BufferedReader):
        return None  # a wrapper whose bytes need not be the file descriptor's
    sent = [0]

    def advance(n: int) -> None:
        sent[0] += n
        if progress is not None and sent[0] > reported[0]:
            progress(sent[0] - reported[0])
            reported[0] = sent[0]

    return FileBody(data, start, length, advance)


def _remaining_size(data: BinaryIO) -> int | None:
    """Bytes left in a file object, when that can be known without reading it."""
    try:
        st = os.fstat(data.fileno())
        if stat.S_ISREG(st.st_mode):
            return max(0, st.st_size - data.tell())
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass
    try:
        if data.seekable():
            here = data.tell()
            end = data.seek(0, io.SEEK_END)
            data.seek(here)
            return max(0, end - here)
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass
    return None


class _Download(Iterator[bytes]):
    """A download's body: iterated in chunks as they arrive, or written into a file by :meth:`write_to`.

    Either way it is checked at its end: its length (and, with ``verify``, its digest) must be the
    version's; a body broken off is asked about (:meth:`RemoteClient._diagnose`), so that a blob
    the server found corrupted raises :class:`BlobCorrupted`.
    """

    def __init__(self, client: RemoteClient, path: str, info: VersionInfo, response: httpx.Response, verify: bool):
        self._client = client
        self._path = path
        self._info = info
        self._response = response
        self._hasher = hasher() if verify else None
        self._chunks: Iterator[bytes] | None = None

    def __next__(self) -> bytes:
        if self._chunks is None:
            self._chunks = self._iterate()
        return next(self._chunks)

    def close(self) -> None:
        """Stop reading (the connection is dropped unless the body was read to its end)."""
        if self._chunks is not None and hasattr(self._chunks, "close"):
            self._chunks.close()
        self._response.close()

    def write_to(self, fd: int, progress: ProgressFn | None = None) -> bool:
        """Write the whole body into the file ``fd`` at its position, checked; False (nothing read) if
        this response cannot (a digest to take here, another transport, no length): iterate it then.

        Over plain HTTP the bytes go from the socket into the file in the kernel (``splice``).
        """
        from datamill.client.transport import BODY_STREAM  # loaded with httpx by now

        body = self._response.extensions.get(BODY_STREAM)
        if self._hasher is not None or self._chunks is not None or body is None:
            return False
        try:
            try:
                written = body.write_to(fd, progress)
            except httpx.TransportError as exc:
                raise self._broken(0, exc) from exc
        finally:
            self._response.close()
        if written is None:
            return False
        self._check(written)
        return True

    def _iterate(self) -> Iterator[bytes]:
        h = self._hasher
        received = 0
        try:
            try:
                # As the transport reads them (up to 1 MiB): re-chunking to a fixed size costs a copy.
                for chunk in self._response.iter_bytes():
                    if h is not None:
                        h.update(chunk)
                    received += len(chunk)
                    yield chunk
            except httpx.TransportError as exc:
                raise self._broken(received, exc) from exc
        finally:
            self._response.close()
        self._check(received)

    def _broken(self, received: int, exc: httpx.TransportError) -> DatamillError:
        # The server drops the connection when the blob fails its check at the end; ask it which
        # it was, so a corrupted blob surfaces as BlobCorrupted, as it does locally.
        self._client._diagnose(self._path, self._info)
        return DatamillError(
            f"the download of {self._path!r} broke off after {received or 'some'} of {self._info.size} bytes "
            f"({exc}); try again",
            path=self._path,
        )

    def _check(self, received: int) -> None:
        h, info = self._hasher, self._info
        if received != info.size or (h is not None and f"{ALGORITHM}:{h.hexdigest()}" != info.digest):
            raise BlobCorrupted(
                f"the bytes received for {self._path!r} do not match digest {info.digest}; try again",
                digest=info.digest,
            )


class RemoteClient(Client):
    """A client on a datamill server at ``url``, acting as the owner of ``token``."""

    #: :meth:`iter_bytes` raises at the end of bytes that are not the version's: a download checks once.
    verified_streams = True

    def __init__(
        self,
        url: str,
        token: str | None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        verify_downloads: bool = False,
    ) -> None:
        """``verify_downloads``: hash every download here too, not only what a presigned URL of the
        blob store sends. The server verifies a blob as it sends it and breaks the answer off short
        of its length when the bytes do not match (the client then raises :class:`BlobCorrupted`),
        so by default the client checks the length only and spends no CPU on a second hash."""
        if not token:
            raise Unauthorized(NO_TOKEN)
        self.url = url.rstrip("/")
        #: set once the server answered a batch upload with 405 (an older server): PUT per file
        self._no_batches = False
        self._token = token
        self._timeout = timeout
        self._transport = transport
        parts = urlsplit(self.url)
        scheme = parts.scheme.lower()
        self._server: Key = (scheme, parts.hostname or "", parts.port or (443 if scheme == "https" else 80))
        self._prefix = parts.path + API
        self._headers = {
            "Host": parts.netloc,
            "Accept": "application/json",
            "Authorization": f"Bearer {token}",
            "User-Agent": f"datamill/{__version__}",
        }
        #: kept-alive connections, shared by plain JSON requests and httpx's (datamill.client.transport)
        self._connections = Connections()
        # With a proxy variable set, every request goes through httpx's own transport, which honours it.
        self._proxied = any(os.environ.get(name) for name in PROXY_VARIABLES)
        self._plain_gets = transport is None and not self._proxied
        #: for presigned download URLs of the blob store (made on first use; never sends our token)
        self._store_http: httpx.Client | None = None
        self.verify_downloads = verify_downloads

    @functools.cached_property
    def _http(self) -> httpx.Client:
        """httpx, for what is more than a plain JSON request: uploads, streams, bodies, custom timeouts."""
        from datamill.client.transport import StdlibTransport

        # httpx's default TLS context parses certifi's whole CA bundle (~0.05-0.1 s of CPU per start)
        # even for a plain-http server. There no TLS happens (every request goes to base_url and
        # redirects are not followed), so such a client gets a context that trusts nothing: any TLS
        # would fail verification, never pass unverified.
        https = self._server[0] == "https"
        return httpx.Client(
            base_url=self.url + API,
            headers={"Authorization": f"Bearer {self._token}", "User-Agent": f"datamill/{__version__}"},
            timeout=httpx.Timeout(self._timeout, connect=10.0),
            # The standard library's HTTP under httpx (not httpcore and h11): a third of a remote
            # command's start-up; see datamill.client.transport.
            # (httpx reads the proxy variables only when it is given no transport.)
            transport=self._transport or (None if self._proxied else StdlibTransport(connections=self._connections)),
            follow_redirects=False,
            verify=True if https else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
            # Idle connections expire before the server's keep-alive timeout (datamill.client.connections);
            # with a proxy, httpx's own pool does the same.
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=IDLE_SECONDS),
        )

    def __repr__(self) -> str:
        return f"RemoteClient({self.url!r})"

    def close(self) -> None:
        if "_http" in self.__dict__:
            self._http.close()
        self._connections.close()
        if self._store_http is not None:
            self._store_http.close()

    # --- transport ------------------------------------------------------------------------
    def _unreachable(self, exc: Exception) -> DatamillError:
        return DatamillError(
            f"the datamill server at {self.url} is not reachable ({exc}); start it with `datamill up` or check the URL",
            url=self.url,
        )

    def _send(self, request: httpx.Request, stream: bool = False) -> httpx.Response:
        try:
            response = self._http.send(request, stream=stream)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        return self._checked(response, stream)

    def _transport_error(self, exc: httpx.TransportError) -> DatamillError:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return self._unreachable(exc)
        return self._failed(exc)

    def _checked(self, response: httpx.Response, stream: bool = False) -> httpx.Response:
        """``response`` if it succeeded; else the typed error the server reported, raised."""
        if response.status_code >= 400:
            try:
                if stream:
                    response.read()
                body = response.json()
            except (ValueError, httpx.HTTPError):
                body = None
            finally:
                response.close()
            raise error_from_response(response.status_code, body, self.url)
        return response

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One JSON request; the decoded JSON answer."""
        if method == "GET" and set(kwargs) <= {"params"} and self._plain_gets:
            return self._get_json(path, kwargs.get("params"))
        request = self._http.build_request(method, path, **kwargs)
        return self._send(request).json()

    def _get_json(self, path: str, params: Mapping[str, Any] | None, loads: Callable[[bytes], Any] = json.loads) -> Any:
        """A GET answered with JSON, over ``http.client`` alone (httpx is not even imported for it)."""
        target = self._prefix + path + ("?" + urlencode(list(_query_pairs(params))) if params else "")
        for reused in (True, False):
            conn = self._connections.take(self._server) if reused else None
            if reused and conn is None:
                continue
            if conn is None:
                try:
                    conn = self._connections.connect(self._server, 10.0)
                except OSError as exc:  # refused, unreachable, timed out, TLS refused
                    raise self._unreachable(exc) from exc
            try:
                assert conn.sock is not None
                conn.sock.settimeout(self._timeout)
                conn.request("GET", target, headers=self._headers)
                response = conn.getresponse()
                body = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if reused:
                    continue  # the server closed the idle connection: once more on a new one
                raise self._failed(exc) from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise self._failed(exc) from exc
            if response.will_close:
                conn.close()
            else:
                self._connections.release(self._server, conn)
            return self._json_answer(response.status, body, loads)
        raise AssertionError("unreachable")  # pragma: no cover - the second pass returns or raises

    def _failed(self, exc: BaseException) -> DatamillError:
        return DatamillError(
            f"the request to the datamill server at {self.url} failed: {exc or type(exc).__name__}; try again",
            url=self.url,
        )

    def _json_answer(self, status: int, body: bytes, loads: Callable[[bytes], Any] = json.loads) -> Any:
        try:
            data = loads(body) if body else None
        except ValueError:
            if status < 400:
                raise DatamillError(
                    f"the datamill server at {self.url} answered what is not JSON", url=self.url
                ) from None
            data = None
        if status >= 400:
            raise error_from_response(status, data, self.url)
        return data

    # --- identity -------------------------------------------------------------------------
    def whoami(self) -> UserInfo:
        return UserInfo.from_dict(self._call("GET", "/whoami"))

    # --- folders --------------------------------------------------------------------------
    def create_folder(
        self,
        path: str,
        parents: bool = True,
        exist_ok: bool = False,
        metadata: Mapping[str, Any] | None = None,
    ) -> FolderInfo:
        meta = check_metadata(metadata) if metadata is not None else None
        body = {"parents": parents, "exist_ok": exist_ok, "metadata": meta}
        return _build(FolderInfo, self._call("POST", f"/folders/{quote_path(path)}", json=body))

    def folder(self, path: str) -> FolderInfo:
        return _build(FolderInfo, self._call("GET", f"/folders/{quote_path(path)}"))

    def list_folders(self, path: str = "") -> list[FolderInfo]:
        where = f"/subfolders/{quote_path(path)}" if path.strip("/") else "/subfolders"
        return [_build(FolderInfo, d) for d in self._call("GET", where)]

    def move_folder(self, path: str, new_parent: str, new_name: str | None = None) -> FolderInfo:
        body = {"parent": new_parent, "name": new_name}
        return _build(FolderInfo, self._call("PATCH", f"/folders/{quote_path(path)}", json=body))

    def delete_folder(self, path: str, recursive: bool = False) -> int:
        result = self._call("DELETE", f"/folders/{quote_path(path)}", params={"recursive": recursive})
        return int(result["items"])

    def set_folder_metadata(
        self, path: str, set_: Mapping[str, Any] | None = None, unset: Iterable[str] = ()
    ) -> FolderInfo:
        body = {"set": check_metadata(set_ or {}), "unset": list(unset)}
        return _build(FolderInfo, self._call("PATCH", f"/folder-metadata/{quote_path(path)}", json=body))

    def share(self, path: str, user: str, level: str) -> None:
        parsed = Level.parse(level)  # raises ValueError on a bad level, as the embedded client does
        self._call("PUT", f"/access/{quote_path(path)}", json={"user": user, "level": parsed.name.lower()})

    def share_group(self, path: str, group: str, level: str) -> None:
        parsed = Level.parse(level)
        self._call("PUT", f"/access/{quote_path(path)}", json={"group": group, "level": parsed.name.lower()})

    def set_public(self, path: str, public: bool) -> None:
        self._call("PUT", f"/public/{quote_path(path)}", json={"public": public})

    def access_list(self, path: str) -> list[AccessGrant]:
        return [AccessGrant.from_dict(g) for g in self._call("GET", f"/access/{quote_path(path)}")]

    # --- items ----------------------------------------------------------------------------
    def put(
        self,
        folder: str,
        name: str,
        data: bytes | BinaryIO,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        progress: ProgressFn | None = None,
        size: int | None = None,
    ) -> VersionInfo:
        meta = check_metadata(metadata or {})
        if not folder.strip("/"):
            raise InvalidInput("the root is not a folder; name one, e.g. 'Raw Data'")
        headers, late_meta = _put_headers(content_type, meta)
        # One key per logical upload, sent again on each retry: the server records it with the
        # version, so a retry of an upload that was committed answers that version.
        headers["Idempotency-Key"] = uuid.uuid4().hex
        path = f"{quote_path(folder)}/{quote_segment(name)}"
        payload: bytes | None = None
        stream: BinaryIO | None = None
        start: int | None = None
        length: int | None = None
        if isinstance(data, bytes | bytearray | memoryview):
            payload = bytes(data)
            # Cheap for bytes in memory: lets the server refuse anything damaged on the way.
            headers["X-Datamill-Digest"] = digest_bytes(payload)
        else:
            stream = data
            length = size if size is not None else _remaining_size(stream)
            if length is not None:
                headers["Content-Length"] = str(length)
            start = _tell(stream)
        reported = [0]  # bytes shown to ``progress`` so far, over all attempts
        response: httpx.Response | None = None
        for attempt in range(PUT_ATTEMPTS):
            if attempt:
                time.sleep(PUT_BACKOFF_SECONDS * 2 ** (attempt - 1))
                if stream is not None and start is not None:
                    stream.seek(start)
            body = _file_body(stream, start, length, progress, reported) if stream is not None else None
            content = payload if stream is None or body is not None else self._chunks(stream, progress, reported)
            request = self._http.build_request("PUT", f"/content/{path}", content=content, headers=headers)
            if body is not None:
                request.stream = body  # sent by sendfile(2) on our transport
            # A stream that cannot be rewound is sent once.
            retry = attempt + 1 < PUT_ATTEMPTS and (stream is None or start is not None)
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                if retry:
                    continue
                raise self._transport_error(exc) from exc
            if response.status_code in RETRY_STATUSES and retry:
                response.close()
                continue
            break
        assert response is not None
        info = _build(VersionInfo, self._checked(response).json())
        if stream is not None and start is not None and length is not None and _regular(stream):
            stream.seek(start + length)  # where reading it would have left it
        if payload is not None and progress:
            progress(info.size)
        if late_meta:
            self.set_metadata(info.path, late_meta)
        return info

    def put_many(
        self,
        folder: str,
        files: list[tuple[str, bytes]],
        metadata: Mapping[str, Any] | None = None,
        item_metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[VersionInfo]:
        """Upload small files in batches (``POST /content/{folder}``, one transaction per batch).

        Batches hold at most :data:`BATCH_FILES` files and :data:`BATCH_BYTES` bytes; a server
        without batch uploads (405) gets one PUT per file.
        """
        if item_metadata is not None and len(item_metadata) != len(files):
            raise InvalidInput(f"item_metadata: {len(item_metadata)} entries for {len(files)} files; give one per file")
        if not folder.strip("/"):
            raise InvalidInput("the root is not a folder; name one, e.g. 'Raw Data'")
        meta = check_metadata(metadata or {})
        per = [check_metadata(m) if m else None for m in item_metadata] if item_metadata is not None else None
        entries = [(n, bytes(d), per[i] if per else None) for i, (n, d) in enumerate(files)]
        out: list[VersionInfo] = []
        for batch in _batches(entries):
            if self._no_batches:
                out += super().put_many(folder, [(n, d) for n, d, _ in batch], meta, [m for _, _, m in batch])
                continue
            body, ctype = _encode_batch(batch, meta)
            request = self._http.build_request(
                "POST", f"/content/{quote_path(folder)}", content=body, headers={"Content-Type": ctype}
            )
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                raise self._transport_error(exc) from exc
            if response.status_code == 405:  # an older server: no batch uploads
                response.close()
                self._no_batches = True
                out += super().put_many(folder, [(n, d) for n, d, _ in batch], meta, [m for _, _, m in batch])
                continue
            out += [_build(VersionInfo, d) for d in self._checked(response).json()["versions"]]
        return out

    @staticmethod
    def _chunks(data: BinaryIO, progress: ProgressFn | None, reported: list[int]) -> Iterator[bytes]:
        sent = 0
        while chunk := data.read(CHUNK):
            sent += len(chunk)
            if progress and sent > reported[0]:
                # A retry sends bytes again; the progress shown only grows past what it showed.
                progress(sent - reported[0])
                reported[0] = sent
            yield chunk

    def item(self, path: str) -> ItemInfo:
        return _build(ItemInfo, self._call("GET", f"/items/{quote_path(path)}"))

    def list_items(self, folder: str) -> list[ItemInfo]:
        return [_build(ItemInfo, d) for d in self._call("GET", f"/folder-items/{quote_path(folder)}")]

    def items_page(
        self, folder: str, cursor: str | None = None, limit: int = 1000, sort: str = "name", descending: bool = False
    ) -> tuple[list[ItemInfo], str | None]:
        params: dict[str, Any] = {"limit": limit, "sort": sort}
        if descending:
            params["descending"] = "true"
        if cursor:
            params["cursor"] = cursor
        path = f"/item-pages/{quote_path(folder)}"
        # Up to 10,000 items at once, decoded and made into objects: the cyclic collector would walk
        # them (and all else) several times over while they are made, which cost more than making them.
        paused = gc.isenabled()
        gc.disable()
        try:
            plain = self._plain_gets
            page = self._get_json(path, params, _page_loads) if plain else self._call("GET", path, params=params)
            return [_item(d) for d in page["items"]], page["next"]
        finally:
            if paused:
                gc.enable()

    def versions(self, path: str) -> list[VersionInfo]:
        return [_build(VersionInfo, d) for d in self._call("GET", f"/versions/{quote_path(path)}")]

    def version(self, path: str, version: int | None = None) -> VersionInfo:
        params = {"version": version} if version is not None else {}
        return _build(VersionInfo, self._call("GET", f"/version/{quote_path(path)}", params=params))

    def iter_bytes(self, path: str, version: int | None = None) -> tuple[VersionInfo, Iterator[bytes]]:
        """The version's info and its bytes as they arrive (an iterator that can also write them into
        a file in the kernel: :meth:`_Download.write_to`, which :meth:`download` uses)."""
        params = {"version": version} if version is not None else {}
        request = self._http.build_request("GET", f"/content/{quote_path(path)}", params=params)
        response = self._send(request, stream=True)
        try:
            info = _build(VersionInfo, json.loads(response.headers["X-Datamill-Info"]))
        except (KeyError, ValueError):
            response.close()
            raise DatamillError(f"the server at {self.url} sent no version info; is it a datamill server?") from None
        verify = self.verify_downloads
        if response.status_code == 307 and "location" in response.headers:
            response.close()
            response = self._from_store(response.headers["location"])
            verify = True  # the bytes come from the object store, which checks nothing
        return info, self._stream(path, info, response, verify)

    def _from_store(self, url: str) -> httpx.Response:
        """The bytes at a presigned URL of the blob store, by a client of its own: no token goes there."""
        if self._store_http is None:
            self._store_http = httpx.Client(timeout=self._http.timeout, follow_redirects=False)
        try:
            response = self._store_http.send(self._store_http.build_request("GET", url), stream=True)
        except httpx.TransportError as exc:
            raise DatamillError(f"the blob store at the presigned URL could not be reached ({exc}); try again") from exc
        if response.status_code != 200:
            response.close()
            raise DatamillError(f"the blob store answered {response.status_code} for the presigned URL; try again")
        return response

    def _stream(self, path: str, info: VersionInfo, response: httpx.Response, verify: bool) -> _Download:
        """The body of ``response``; raises at its end if it is not the bytes of ``info``.

        With ``verify`` the bytes are hashed here; without, the server's own check stands (it breaks
        the answer off on a mismatch, which :meth:`_diagnose` turns into :class:`BlobCorrupted`)
        and the length is checked.
        """
        return _Download(self, path, info, response, verify)

    def _diagnose(self, path: str, info: VersionInfo) -> None:
        """Raise the server's error if the version cannot be read (a range read verifies the blob first)."""
        if info.size == 0:
            return
        request = self._http.build_request(
            "GET", f"/content/{quote_path(path)}", params={"version": info.version}, headers={"Range": "bytes=-1"}
        )
        try:
            self._send(request).read()
        except BlobCorrupted:
            raise
        except DatamillError:
            pass

    def set_metadata(self, path: str, set_: Mapping[str, Any] | None = None, unset: Iterable[str] = ()) -> ItemInfo:
        body = {"set": check_metadata(set_ or {}), "unset": list(unset)}
        return _build(ItemInfo, self._call("PATCH", f"/metadata/{quote_path(path)}", json=body))

    def find(
        self,
        folder: str,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        recursive: bool = True,
    ) -> list[ItemInfo]:
        params: dict[str, Any] = {"recursive": recursive}
        if name:
            params["name"] = name
        if metadata:
            params["metadata"] = json.dumps(check_metadata(metadata), separators=(",", ":"))
        # Page by page, so that no one answer holds a whole large search.
        found: list[ItemInfo] = []
        while True:
            page = self._call("GET", f"/find/{quote_path(folder)}", params={**params, "limit": FIND_PAGE})
            found += [_build(ItemInfo, d) for d in page]
            if len(page) < FIND_PAGE:
                return found
            params["after"] = found[-1].path

    def delete_item(self, path: str) -> None:
        self._call("DELETE", f"/items/{quote_path(path)}")

    # --- users ----------------------------------------------------------------------------
    def create_user(self, name: str, password: str | None = None, admin: bool = False) -> UserInfo:
        return UserInfo.from_dict(
            self._call("POST", "/users", json={"name": name, "password": password, "admin": admin})
        )

    def list_users(self) -> list[UserInfo]:
        return [UserInfo.from_dict(u) for u in self._call("GET", "/users")]

    def create_token(self, user: str | None = None, name: str = "", ttl: float | None = None) -> NewToken:
        return _build(NewToken, self._call("POST", "/tokens", json={"user": user, "name": name, "ttl": ttl}))

    def revoke_token(self, token_id: int) -> None:
        self._call("DELETE", f"/tokens/{int(token_id)}")

    # --- groups ---------------------------------------------------------------------------
    @staticmethod
    def _group_url(name: str, *rest: str) -> str:
        return "/".join(["/groups", quote_segment(name), *(quote_segment(r) for r in rest)])

    def create_group(self, name: str) -> GroupInfo:
        return GroupInfo.from_dict(self._call("POST", "/groups", json={"name": name}))

    def groups(self) -> list[GroupInfo]:
        return [GroupInfo.from_dict(d) for d in self._call("GET", "/groups")]

    def group(self, name: str) -> GroupInfo:
        return GroupInfo.from_dict(self._call("GET", self._group_url(name)))

    def delete_group(self, name: str) -> int:
        return int(self._call("DELETE", self._group_url(name))["grants"])

    def add_group_member(self, group: str, user: str, admin: bool | None = None) -> GroupInfo:
        return GroupInfo.from_dict(self._call("PUT", self._group_url(group, "members", user), json={"admin": admin}))

    def remove_group_member(self, group: str, user: str) -> None:
        self._call("DELETE", self._group_url(group, "members", user))

    # --- events ---------------------------------------------------------------------------
    def _events_page(
        self, since: int, limit: int, kinds: Iterable[str] | None, wait: float = 0.0
    ) -> tuple[list[EventRecord], int]:
        params: list[tuple[str, Any]] = [("since", since), ("limit", limit)]
        params += [("kinds", k) for k in kinds or []]
        if wait > 0:
            params.append(("wait", round(wait, 3)))
        timeout = self._http.timeout.read
        request = self._http.build_request(
            "GET",
            "/events",
            params=params,
            # The read must outlast the server's wait.
            timeout=httpx.Timeout(self._http.timeout.connect or 10.0, read=wait + (timeout or 60.0)),
        )
        page = self._send(request).json()
        return [_build(EventRecord, e) for e in page["events"]], int(page["next"])

    def events(self, since: int = 0, limit: int = 1000, kinds: Iterable[str] | None = None) -> list[EventRecord]:
        return self._events_page(since, limit, kinds)[0]

    def wait_events(self, since: int, timeout: float) -> bool:
        """Long-poll the server until an event you may see follows ``since`` (or ``timeout`` passes)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            events, _ = self._events_page(since, 100, None, wait=max(0.0, min(remaining, LONG_POLL_SECONDS)))
            if events:
                return True
            if deadline - time.monotonic() <= 0:
                return False

    def follow(
        self, since: int = 0, kinds: Iterable[str] | None = None, stop: Callable[[], bool] | None = None
    ) -> Iterator[EventRecord]:
        """As :meth:`Client.follow`, long-polling; the cursor skips events you may not see."""
        cursor = since
        wanted = list(kinds) if kinds else None
        while not (stop and stop()):
            batch, cursor = self._events_page(cursor, 1000, wanted, wait=1.0)
            yield from batch

    # --- pipelines ------------------------------------------------------------------------
    def pipelines(self) -> list[PipelineInfo]:
        from datamill.engine.records import PipelineInfo

        return [PipelineInfo.from_dict(p) for p in self._call("GET", "/pipelines")]

    def add_pipeline(self, name: str, ref: str, description: str = "") -> PipelineInfo:
        body = {"name": name, "ref": absolute_ref(ref), "description": description}
        from datamill.engine.records import PipelineInfo

        return PipelineInfo.from_dict(self._call("POST", "/pipelines", json=body))

    def remove_pipeline(self, name: str) -> None:
        self._call("DELETE", f"/pipelines/{quote_segment(name)}")

    # --- runs -----------------------------------------------------------------------------
    def plan(
        self,
        pipeline_ref: str,
        folder: str,
        params: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> PlanInfo:
        body = {"pipeline": absolute_ref(pipeline_ref), "folder": folder, "params": dict(params or {}), "force": force}
        from datamill.engine.records import PlanInfo

        return PlanInfo.from_dict(self._call("POST", "/plan", json=body))

    def _submit(self, body: dict[str, Any]) -> int:
        return int(self._call("POST", "/runs", json=body)["id"])

    def submit_run(
        self,
        pipeline_ref: str,
        folder: str,
        dest: str | None = None,
        params: Mapping[str, Any] | None = None,
        force: bool = False,
        reason: str = "",
        executor: str | None = None,
    ) -> int:
        return self._submit(_run_body(pipeline_ref, folder, dest, params, force, reason, executor))

    def run(
        self,
        pipeline_ref: str,
        folder: str,
        dest: str | None = None,
        params: Mapping[str, Any] | None = None,
        force: bool = False,
        executor: str | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> RunInfo:
        body = _run_body(pipeline_ref, folder, dest, params, force, "", executor)
        # Refused before anything is recorded when the server runs no scheduler to execute it.
        body["require_scheduler"] = True
        run_id = self._submit(body)
        if on_start is not None:
            on_start(run_id)
        return self.wait_run(run_id)

    def wait_run(self, run_id: int, timeout: float | None = None) -> RunInfo:
        """Long-poll the run until it has ended (the server answers as soon as it does)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = LONG_POLL_SECONDS if deadline is None else min(LONG_POLL_SECONDS, deadline - time.monotonic())
            info = self._run_page(run_id, max(0.0, left))
            if info.status in FINISHED_RUN or (deadline is not None and time.monotonic() >= deadline):
                return info

    def _run_page(self, run_id: int, wait: float = 0.0) -> RunInfo:
        params = {"wait": round(wait, 3)} if wait > 0 else {}
        read = self._http.timeout.read or 60.0
        request = self._http.build_request(
            "GET",
            f"/runs/{int(run_id)}",
            params=params,
            timeout=httpx.Timeout(self._http.timeout.connect or 10.0, read=wait + read),
        )
        from datamill.engine.records import RunInfo

        return RunInfo.from_dict(self._send(request).json())

    def runs(self, limit: int = 50, status: str | None = None) -> list[RunInfo]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        from datamill.engine.records import RunInfo

        return [RunInfo.from_dict(r) for r in self._call("GET", "/runs", params=params)]

    def run_info(self, run_id: int) -> RunInfo:
        return self._run_page(run_id)

    #: tasks asked for per page of ``GET /runs/{id}/tasks``
    TASK_PAGE = 1000

    def tasks(self, run_id: int) -> list[TaskInfo]:
        """A run's tasks, each with its full parameters.

        Read page by page; a parameter set too big to be listed inline is read once by its digest,
        however many tasks share it (each task's ``params`` is that one dict: read, never change it).
        """
        from datamill.engine.records import TaskInfo

        listed: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self._call("GET", f"/runs/{int(run_id)}/tasks", params={"after": after, "limit": self.TASK_PAGE})
            # Only ids past the cursor: a server that ignores it (no paging) answers every task each time.
            new = [t for t in page if t["id"] > after]
            listed += new
            if len(page) < self.TASK_PAGE or not new:
                break
            after = new[-1]["id"]
        sets: dict[str, dict[str, Any]] = {}
        for t in listed:
            digest = t.get("params_digest")
            if t.get("params") is None and digest:
                if digest not in sets:
                    sets[digest] = self._call("GET", f"/runs/{int(run_id)}/params/{quote_segment(digest)}")
                t["params"] = sets[digest]
        return [TaskInfo.from_dict(t) for t in listed]

    def task(self, task_id: int) -> TaskInfo:
        from datamill.engine.records import TaskInfo

        return TaskInfo.from_dict(self._call("GET", f"/tasks/{int(task_id)}"))

    def cancel_run(self, run_id: int) -> bool:
        return bool(self._call("POST", f"/runs/{int(run_id)}/cancel")["cancelled"])

    def retry_run(self, run_id: int) -> int:
        return int(self._call("POST", f"/runs/{int(run_id)}/retry")["id"])

    def why(self, task_id: int) -> WhyInfo:
        from datamill.engine.records import WhyInfo

        return WhyInfo.from_dict(self._call("GET", f"/tasks/{int(task_id)}/why"))

    def logs(self, task_id: int, follow: bool = False) -> Iterator[str]:
        # A followed log may stay quiet for long: no read timeout then.
        timeout = httpx.Timeout(self._http.timeout.connect or 10.0, read=None if follow else self._http.timeout.read)
        request = self._http.build_request(
            "GET", f"/tasks/{int(task_id)}/logs", params={"follow": follow}, timeout=timeout
        )
        response = self._send(request, stream=True)
        return self._text_chunks(response)

    def _text_chunks(self, response: httpx.Response) -> Iterator[str]:
        try:
            try:
                yield from response.iter_text()
            except httpx.TransportError as exc:
                raise DatamillError(f"the log stream from {self.url} broke off ({exc}); try again") from exc
        finally:
            response.close()

    # --- dataflows ------------------------------------------------------------------------
    # --- batches ----------------------------------------------------------------------------
    def create_batch(
        self,
        name: str,
        pipeline: str,
        dest: str,
        *,
        folders: Iterable[str] = (),
        recursive: bool = False,
        search: Mapping[str, Any] | None = None,
        paths: Iterable[str] = (),
        from_batch: str | None = None,
        params: Mapping[str, Any] | None = None,
        description: str = "",
    ) -> BatchInfo:
        from datamill.dataflows.records import BatchInfo

        body = {
            "name": name,
            "pipeline": pipeline,
            "dest": dest,
            "folders": list(folders),
            "recursive": recursive,
            "search": dict(search) if search else None,
            "paths": list(paths),
            "from_batch": from_batch,
            "params": dict(params or {}),
            "description": description,
        }
        return BatchInfo.from_dict(self._call("POST", "/batches", json=body))

    def batches(self) -> list[BatchInfo]:
        from datamill.dataflows.records import BatchInfo

        return [BatchInfo.from_dict(b) for b in self._call("GET", "/batches")]

    def batch(self, name: str) -> BatchInfo:
        from datamill.dataflows.records import BatchInfo

        return BatchInfo.from_dict(self._call("GET", f"/batches/{quote_segment(name)}"))

    def batch_status(self, name: str) -> BatchStatus:
        from datamill.dataflows.records import BatchStatus

        return BatchStatus.from_dict(self._call("GET", f"/batches/{quote_segment(name)}/status"))

    def start_batch(self, name: str, executor: str | None = None) -> int:
        params = {"executor": executor} if executor else {}
        run_id: int = self._call("POST", f"/batches/{quote_segment(name)}/start", params=params)["run"]
        return run_id

    def retry_batch(self, name: str) -> int:
        run_id: int = self._call("POST", f"/batches/{quote_segment(name)}/retry")["run"]
        return run_id

    def duplicate_batch(self, name: str, new_name: str) -> BatchInfo:
        from datamill.dataflows.records import BatchInfo

        body = {"name": new_name}
        return BatchInfo.from_dict(self._call("POST", f"/batches/{quote_segment(name)}/duplicate", json=body))

    def delete_batch(self, name: str) -> None:
        self._call("DELETE", f"/batches/{quote_segment(name)}")

    def batch_zip(self, name: str) -> Iterator[bytes]:
        request = self._http.build_request("GET", f"/batches/{quote_segment(name)}/download")
        response = self._send(request, stream=True)
        return self._zip_chunks(response)

    @staticmethod
    def _zip_chunks(response: httpx.Response) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes(CHUNK)
        finally:
            response.close()

    def create_dataflow(
        self,
        name: str,
        source: str,
        dest: str,
        pipeline: str | None = None,
        trigger: str = "new-items",
        params: Mapping[str, Any] | None = None,
        description: str = "",
        webhooks: Iterable[str] | None = None,
        kind: str = "workflow",
        directory: str | None = None,
        watch: Mapping[str, Any] | None = None,
        image: str | None = None,
        recursive: bool = False,
    ) -> DataflowInfo:
        body = {
            "name": name,
            "source": source,
            "dest": dest,
            "pipeline": absolute_ref(pipeline) if pipeline else None,
            "image": image,
            "trigger": trigger,
            "params": dict(params or {}),
            "description": description,
            "webhooks": list(webhooks or []),
            "kind": kind,
            "directory": directory,
            "watch": dict(watch) if watch is not None else None,
            "recursive": recursive,
        }
        from datamill.dataflows.records import DataflowInfo

        return DataflowInfo.from_dict(self._call("POST", "/dataflows", json=body))

    def create_stream_dataflow(
        self,
        name: str,
        topic: str,
        dest: str,
        broker: Mapping[str, Any] | None = None,
        description: str = "",
        partial_timeout_s: float | None = None,
    ) -> DataflowInfo:
        from datamill.dataflows.records import DataflowInfo

        body = {
            "name": name,
            "kind": "stream",
            "topic": topic,
            "dest": dest,
            "broker": dict(broker or {}),
            "description": description,
            "partial_timeout_s": partial_timeout_s,
        }
        return DataflowInfo.from_dict(self._call("POST", "/dataflows", json=body))

    def dataflows(self) -> list[DataflowInfo]:
        from datamill.dataflows.records import DataflowInfo

        return [DataflowInfo.from_dict(f) for f in self._call("GET", "/dataflows")]

    def dataflow(self, name: str) -> DataflowInfo:
        from datamill.dataflows.records import DataflowInfo

        return DataflowInfo.from_dict(self._call("GET", f"/dataflows/{quote_segment(name)}"))

    def edit_dataflow(self, name: str, **changes: Any) -> DataflowInfo:
        body = {k: v for k, v in changes.items() if v is not None}
        if isinstance(body.get("pipeline"), str):
            body["pipeline"] = absolute_ref(body["pipeline"])
        if "webhooks" in body:
            body["webhooks"] = list(body["webhooks"])
        from datamill.dataflows.records import DataflowInfo

        return DataflowInfo.from_dict(self._call("PATCH", f"/dataflows/{quote_segment(name)}", json=body))

    def start_dataflow(self, name: str) -> DataflowInfo:
        from datamill.dataflows.records import DataflowInfo

        return DataflowInfo.from_dict(self._call("POST", f"/dataflows/{quote_segment(name)}/start"))

    def stop_dataflow(self, name: str, cancel: bool = False) -> DataflowInfo:
        from datamill.dataflows.records import DataflowInfo

        return DataflowInfo.from_dict(
            self._call("POST", f"/dataflows/{quote_segment(name)}/stop", params={"cancel": cancel})
        )

    def run_dataflow(self, name: str) -> int | None:
        run_id = self._call("POST", f"/dataflows/{quote_segment(name)}/run")["id"]
        return None if run_id is None else int(run_id)

    def dataflow_history(self, name: str) -> list[DataflowVersionInfo]:
        versions = self._call("GET", f"/dataflows/{quote_segment(name)}/history")
        from datamill.dataflows.records import DataflowVersionInfo

        return [DataflowVersionInfo.from_dict(v) for v in versions]

    def delete_dataflow(self, name: str) -> None:
        self._call("DELETE", f"/dataflows/{quote_segment(name)}")

    def execute(self, run_id: int, executor: str | None = None, workers: int | None = None) -> RunInfo:
        """The server's scheduler executes runs: this waits for it to end the run (``executor`` and
        ``workers`` were fixed when the run was recorded and by the server)."""
        return self.wait_run(run_id)

    def _lineage_request(
        self, path: str, version: int | None, down: bool, depth: int | None, fmt: str
    ) -> httpx.Request:
        params: dict[str, Any] = {"format": fmt, "down": "true" if down else "false"}
        if version is not None:
            params["version"] = version
        if depth is not None:
            params["depth"] = depth
        return self._http.build_request("GET", f"/lineage/{quote_path(path)}", params=params)

    def lineage(
        self, path: str, version: int | None = None, down: bool = False, depth: int | None = None, fmt: str = "tree"
    ) -> str:
        response = self._send(self._lineage_request(path, version, down, depth, fmt))
        if fmt == "json":
            return json.dumps(response.json(), indent=2, ensure_ascii=False) + "\n"
        text: str = response.text
        return text

    def export_crate(self, path: str, dest: str | os.PathLike[str], version: int | None = None) -> None:
        import shutil
        import tempfile
        import zipfile
        from pathlib import Path

        target = Path(dest)
        with tempfile.TemporaryDirectory(prefix="datamill-crate-") as tmp:
            zip_path = Path(tmp) / "crate.zip"
            response = self._send(self._lineage_request(path, version, False, None, "ro-crate"), stream=True)
            try:
                with open(zip_path, "wb") as f:
                    for chunk in response.iter_bytes():
                        f.write(chunk)
            finally:
                response.close()
            if target.suffix.lower() == ".zip":
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(zip_path, target)
            else:
                target.mkdir(parents=True, exist_ok=True)
                with zipfile.ZipFile(zip_path) as zf:
                    zf.extractall(target)  # extractall drops absolute paths and '..'


def _run_body(
    pipeline_ref: str,
    folder: str,
    dest: str | None,
    params: Mapping[str, Any] | None,
    force: bool,
    reason: str,
    executor: str | None,
) -> dict[str, Any]:
    """The JSON body of ``POST /runs``."""
    return {
        "pipeline": absolute_ref(pipeline_ref),
        "folder": folder,
        "dest": dest,
        "params": dict(params or {}),
        "force": force,
        "reason": reason,
        "executor": executor,
    }


#: Files per batch upload request, at most (the server takes up to 1,000).
BATCH_FILES = 500
#: Bytes per batch upload request, at most (the server takes up to 64 MiB).
BATCH_BYTES = 16 * 1024 * 1024


def _batches(
    entries: list[tuple[str, bytes, dict[str, Any] | None]],
) -> Iterator[list[tuple[str, bytes, dict[str, Any] | None]]]:
    batch: list[tuple[str, bytes, dict[str, Any] | None]] = []
    size = 0
    for e in entries:
        if batch and (len(batch) >= BATCH_FILES or size + len(e[1]) > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(e)
        size += len(e[1])
    if batch:
        yield batch


def _encode_batch(files: list[tuple[str, bytes, dict[str, Any] | None]], metadata: dict[str, Any]) -> tuple[bytes, str]:
    """A batch upload body (``multipart/form-data``: a JSON manifest, then the files): ``(body, content type)``."""
    boundary = f"datamill-{uuid.uuid4().hex}"
    manifest = {
        "metadata": metadata,
        "files": [
            {"name": n, "size": len(d), "digest": digest_bytes(d), **({"metadata": m} if m else {})}
            for n, d, m in files
        ],
    }
    out = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="manifest"\r\n'
        "Content-Type: application/json\r\n\r\n".encode(),
        json.dumps(manifest, ensure_ascii=True, separators=(",", ":")).encode(),
        b"\r\n",
    ]
    for name, data, _ in files:
        # A quoted string in UTF-8 with '"' and '\\' escaped (item names hold no line breaks).
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        out += [
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode(),
            data,
            b"\r\n",
        ]
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"
