"""Blobs in an S3-compatible object store (AWS S3, SeaweedFS, MinIO, Ceph): ``s3://bucket/prefix``.

Objects are named ``<prefix>blobs/ab/cd/<hex>`` after their digest. A write streams: bytes are
hashed as they arrive and sent as parts of a multipart upload (a few parts in flight at once, so
memory stays at a few part sizes whatever the file's size). Where the digest is known before the
bytes (a file on disk is hashed first, or the caller announced it), the parts go straight to the
final name; otherwise to ``<prefix>tmp/<uuid>``, copied to the final name inside the store when
the digest is known, then removed. A write that is aborted or breaks off aborts its multipart
upload; :meth:`S3BlobStore.clean_tmp` removes what a killed process left (uploads and temporary
objects older than an hour). Nothing is visible under a digest until its bytes are complete and
verified, which is the same promise the local store makes with its rename.

Credentials come from the settings (``s3_access_key_id`` / ``s3_secret_access_key``), else
boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` or
``s3_profile`` in ``~/.aws/credentials``, instance roles). They are never logged or shown: wrong
ones give one :class:`~datamill.errors.ConfigError` when the store opens.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from datamill.errors import BlobCorrupted, BlobNotFound, ConfigError, Unavailable
from datamill.store.blobs.base import CHUNK, BlobInfo, BlobStore, BlobWriter, check_digest, corrupted, hasher

log = logging.getLogger("datamill.store")

#: Bytes per multipart part (S3 allows 5 MiB to 5 GiB for every part but the last).
PART_SIZE = 8 << 20
#: Parts uploaded at once by one write; memory per write is about this many part sizes.
PARTS_IN_FLIGHT = 4
#: Ranged GETs in flight for a download to a file (:meth:`S3BlobStore.copy_to`; boto3's
#: ``download_file`` runs 10); each writes its chunks into the file as they come.
DOWNLOAD_PARTS_IN_FLIGHT = 8
#: Temporary objects and multipart uploads older than this are left-overs of a process that died.
STALE_SECONDS = 3600.0
#: Clients already made and checked, by options and bucket: making one loads botocore's service
#: models (0.3-1 s), and a process opens the same store many times (tests, a CLI beside a server).
_CLIENTS: dict[tuple[S3Options, str], Any] = {}
_CLIENTS_LOCK = threading.Lock()
#: Digests whose whole bytes this process has verified (ranged reads skip re-reading them).
VERIFIED_CACHE = 4096


@dataclass(frozen=True)
class S3Options:
    """How to reach the store; secrets are kept out of ``repr``."""

    endpoint_url: str = ""
    region: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""
    profile: str = ""

    def __repr__(self) -> str:
        return f"S3Options(endpoint_url={self.endpoint_url!r}, region={self.region!r}, profile={self.profile!r})"


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix/")``; the prefix may be empty."""
    parts = urlsplit(url)
    bucket = parts.netloc
    if parts.scheme != "s3" or not bucket or "@" in bucket:
        raise ConfigError(
            f"not an S3 blob store URL: {url!r}; expected s3://BUCKET or s3://BUCKET/PREFIX", key="blob_url"
        )
    prefix = parts.path.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _is_missing(exc: Exception) -> bool:
    return _error_code(exc) in {"404", "NoSuchKey", "NotFound"}


class _S3Writer(BlobWriter):
    """A streamed write: parts go out while later bytes are still arriving."""

    def __init__(self, store: S3BlobStore, expected_digest: str | None, expected_size: int | None) -> None:
        super().__init__(expected_digest, expected_size)
        self._store = store
        # Bytes already stored under the announced digest need not travel again: hash them only.
        self._skip = expected_digest is not None and store.exists(expected_digest)
        self._key = store.key_of(expected_digest) if expected_digest else store.tmp_key()
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[Future[dict[str, Any]]] = []
        self._slots = threading.Semaphore(PARTS_IN_FLIGHT)
        self._tmp_written = False

    def _write(self, chunk: bytes) -> None:
        if self._skip:
            return
        self._buf += chunk
        size = self._store.part_size
        while len(self._buf) >= size:
            part = bytes(self._buf[:size])
            del self._buf[:size]
            self._send(part)

    def _send(self, part: bytes) -> None:
        client, bucket = self._store.client, self._store.bucket
        if self._upload_id is None:
            self._upload_id = client.create_multipart_upload(Bucket=bucket, Key=self._key)["UploadId"]
        number = len(self._parts) + 1
        upload_id = self._upload_id
        # The semaphore bounds memory: a fast producer waits for a part to finish uploading.
        self._slots.acquire()

        def upload() -> dict[str, Any]:
            try:
                answer = client.upload_part(
                    Bucket=bucket, Key=self._key, UploadId=upload_id, PartNumber=number, Body=part
                )
                return {"PartNumber": number, "ETag": answer["ETag"]}
            finally:
                self._slots.release()

        self._parts.append(self._store.pool.submit(upload))

    def _commit(self, digest: str) -> None:
        store = self._store
        final = store.key_of(digest)
        if self._skip:
            return
        if self._upload_id is None:
            # Small: one request straight to its final name.
            if not store.exists(digest):
                store.client.put_object(Bucket=store.bucket, Key=final, Body=bytes(self._buf))
            self._buf = bytearray()
            return
        if self._buf:
            self._send(bytes(self._buf))
            self._buf = bytearray()
        parts = [f.result() for f in self._parts]
        store.client.complete_multipart_upload(
            Bucket=store.bucket, Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": parts}
        )
        self._upload_id = None
        if self._key == final:
            return
        self._tmp_written = True
        try:
            if not store.exists(digest):
                store.client.copy(
                    {"Bucket": store.bucket, "Key": self._key}, store.bucket, final, Config=store.transfer_config()
                )
        finally:
            store.client.delete_object(Bucket=store.bucket, Key=self._key)
            self._tmp_written = False

    def _abort(self) -> None:
        for f in self._parts:
            f.cancel()
        self._buf = bytearray()
        store = self._store
        try:
            if self._upload_id is not None:
                for f in self._parts:
                    if not f.cancelled():
                        f.exception()  # wait: a part finishing after the abort would outlive it
                store.client.abort_multipart_upload(Bucket=store.bucket, Key=self._key, UploadId=self._upload_id)
                self._upload_id = None
            if self._tmp_written:
                store.client.delete_object(Bucket=store.bucket, Key=self._key)
        except Exception:
            # The write failed already; what is left is removed by clean_tmp at the next start.
            log.warning("could not abort an S3 upload to %s; clean_tmp will remove it", self._key)


class _Body(io.RawIOBase):
    """A ``get_object`` body as a raw stream (the reader above it verifies the digest)."""

    def __init__(self, body: Any) -> None:
        super().__init__()
        self._body = body

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        return bytes(self._body.read(None if size is None or size < 0 else size))

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


class S3BlobStore(BlobStore):
    """Blobs as objects in one bucket (under a prefix). Passes the same contract suite as the others."""

    def __init__(self, url: str, options: S3Options | None = None, part_size: int = PART_SIZE) -> None:
        if part_size < 5 << 20:
            raise ConfigError("an S3 multipart part must be at least 5 MiB", key="blob_url")
        self.url = url
        self.part_size = part_size
        self.bucket, self.prefix = parse_s3_url(url)
        self.options = options or S3Options()
        self.client = self._connect()
        workers = max(2 * PARTS_IN_FLIGHT, DOWNLOAD_PARTS_IN_FLIGHT)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="datamill-s3")
        self._verified: OrderedDict[str, None] = OrderedDict()
        self._verified_lock = threading.Lock()

    # ------------------------------------------------------------------------------- connecting
    def _connect(self) -> Any:
        cache_key = (self.options, self.bucket)
        with _CLIENTS_LOCK:
            client = _CLIENTS.get(cache_key)
        if client is not None:
            return client
        client = self._new_client()
        self._check(client)
        with _CLIENTS_LOCK:
            _CLIENTS[cache_key] = client
        return client

    def _new_client(self) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ConfigError(
                "blob_url names an S3 store but boto3 is not installed; install datamill[s3]", key="blob_url"
            ) from None
        o = self.options
        session = boto3.session.Session(
            aws_access_key_id=o.access_key_id or None,
            aws_secret_access_key=o.secret_access_key or None,
            region_name=o.region or None,
            profile_name=o.profile or None,
        )
        config = Config(
            signature_version="s3v4",
            retries={"max_attempts": 5, "mode": "standard"},
            max_pool_connections=4 * PARTS_IN_FLIGHT,
            s3={"addressing_style": "path"} if o.endpoint_url else {},
            connect_timeout=10,
            read_timeout=120,
        )
        return session.client("s3", endpoint_url=o.endpoint_url or None, config=config)

    def _check(self, client: Any) -> None:
        """One clear error at start-up instead of one per request later."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = f"bucket {self.bucket!r}" + (f" at {self.options.endpoint_url}" if self.options.endpoint_url else "")
        try:
            client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise ConfigError(
                f"no S3 credentials for {where}: set s3_access_key_id and s3_secret_access_key "
                "(or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials)",
                key="s3_access_key_id",
            ) from None
        except ClientError as exc:
            code = _error_code(exc)
            if code in {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}:
                raise ConfigError(
                    f"the S3 store refused the credentials for {where} ({code}): check s3_access_key_id and "
                    "s3_secret_access_key (or the AWS_* variables) and the bucket's policy",
                    key="s3_secret_access_key",
                ) from None
            if _is_missing(exc) or code == "NoSuchBucket":
                raise ConfigError(
                    f"{where} does not exist: create it (e.g. `aws s3 mb s3://{self.bucket}`) or fix blob_url",
                    key="blob_url",
                ) from None
            raise ConfigError(f"the S3 store answered {code} for {where}", key="blob_url") from None
        except BotoCoreError as exc:
            raise Unavailable(
                f"cannot reach the S3 store for {where}: {type(exc).__name__}; check s3_endpoint_url and the network"
            ) from None

    def transfer_config(self) -> Any:
        """boto3's managed-transfer settings for server-side copies (parts of ``part_size``)."""
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.part_size, multipart_chunksize=self.part_size, max_concurrency=PARTS_IN_FLIGHT
        )

    # ------------------------------------------------------------------------------------ names
    def key_of(self, digest: str) -> str:
        """The object name of a digest's bytes."""
        h = check_digest(digest)
        return f"{self.prefix}blobs/{h[:2]}/{h[2:4]}/{h}"

    def tmp_key(self) -> str:
        """A fresh temporary object name (the time in it lets clean_tmp judge its age)."""
        return f"{self.prefix}tmp/{int(time.time())}-{uuid.uuid4().hex}"

    # ---------------------------------------------------------------------------------- writing
    def writer(
        self, expected_digest: str | None = None, expected_size: int | None = None, durable: bool = True
    ) -> BlobWriter:
        # An S3 write is durable when it returns: ``durable=False`` changes nothing.
        if expected_digest is not None:
            check_digest(expected_digest)
        return _S3Writer(self, expected_digest, expected_size)

    def put(
        self,
        data: Any,
        expected_digest: str | None = None,
        expected_size: int | None = None,
        durable: bool = True,
    ) -> BlobInfo:
        """As :meth:`BlobStore.put`; a seekable file is hashed first so its parts go to the final name."""
        if expected_digest is None and hasattr(data, "read") and hasattr(data, "seek") and _seekable(data):
            start = data.tell()
            h = hasher()
            while chunk := data.read(CHUNK):
                h.update(chunk)
            data.seek(start)
            expected_digest = f"{self.algorithm}:{h.hexdigest()}"
        return super().put(data, expected_digest, expected_size, durable)

    def put_file(
        self,
        file: BinaryIO,
        expected_digest: str | None = None,
        expected_size: int | None = None,
        durable: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> BlobInfo:
        """As :meth:`BlobStore.put_file`; a seekable file is hashed first so its parts go to the final name."""
        if expected_digest is None and _seekable(file):
            start = file.tell()
            h = hasher()
            while chunk := file.read(CHUNK):
                h.update(chunk)
            file.seek(start)
            expected_digest = f"{self.algorithm}:{h.hexdigest()}"
        return super().put_file(file, expected_digest, expected_size, durable, progress)

    # ---------------------------------------------------------------------------------- reading
    def _open_raw(self, digest: str) -> BinaryIO:
        check_digest(digest)
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key_of(digest))
        except Exception as exc:
            if _is_missing(exc):
                raise BlobNotFound(f"blob {digest} is not in the S3 store", digest=digest) from None
            raise
        return io.BufferedReader(_Body(answer["Body"]), buffer_size=CHUNK)

    def iter_range(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``start``..``end`` (inclusive), fetched as parallel ranged GETs and yielded in order.

        A whole-blob read is verified as it streams (the last chunk raises on a mismatch). A
        partial range cannot be checked on its own, so the whole object is verified first, once
        per process and digest (objects never change under their digest), and a range after that
        costs only its own bytes, as a video player's seeks need.
        """
        total = self.size(digest)
        last = total - 1 if end is None else min(end, total - 1)
        if start > last:
            return
        whole = start == 0 and last == total - 1
        if not whole and not self._is_verified(digest):
            self.verify(digest)
        h = hasher() if whole else None
        for chunk in self._fetch(digest, start, last):
            if h is not None:
                h.update(chunk)
            yield chunk
        if h is not None:
            actual = f"{self.algorithm}:{h.hexdigest()}"
            if actual != digest:
                raise corrupted(digest, actual)
            self._mark_verified(digest)

    def verify(self, digest: str) -> None:
        """Read the whole object (in parallel ranges) and raise :class:`BlobCorrupted` if it changed."""
        for _ in self.iter_range(digest):
            pass

    def _read_range(self, digest: str, a: int, b: int, sink: Callable[[int, bytes], None]) -> None:
        """Bytes ``a``..``b`` (inclusive) of the object, a chunk at a time to ``sink(offset, chunk)``.

        Chunks, not the whole part: urllib3 copies what it reads, so a read of a whole part would
        hold two more part-sized copies of it.
        """
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key_of(digest), Range=f"bytes={a}-{b}")
        except Exception as exc:
            if _is_missing(exc):
                raise BlobNotFound(f"blob {digest} is not in the S3 store", digest=digest) from None
            raise
        body = answer["Body"]
        at = a
        try:
            while at <= b and (chunk := body.read(min(CHUNK, b + 1 - at))):
                sink(at, chunk)
                at += len(chunk)
        finally:
            body.close()
        if at != b + 1:
            raise Unavailable(
                f"the S3 store sent {at - a} of the {b + 1 - a} bytes asked for blob {digest}; try again",
                digest=digest,
            )

    def _get_range(self, digest: str, a: int, b: int) -> bytearray:
        """Bytes ``a``..``b`` (inclusive) of the object, in one buffer."""
        buf = bytearray(b - a + 1)

        def into(offset: int, chunk: bytes) -> None:
            buf[offset - a : offset - a + len(chunk)] = chunk

        self._read_range(digest, a, b, into)
        return buf

    def _fetch(self, digest: str, start: int, last: int) -> Iterator[bytes]:
        """The bytes ``start``..``last`` as part-sized ranged GETs, a few in flight, in order."""
        ranges = [(a, min(a + self.part_size, last + 1) - 1) for a in range(start, last + 1, self.part_size)]
        pending: deque[Future[bytearray]] = deque()
        try:
            for a, b in ranges:
                # Bounded read-ahead: memory stays at a few parts whatever the object's size.
                while len(pending) >= PARTS_IN_FLIGHT:
                    yield from _slices(pending.popleft().result())
                pending.append(self.pool.submit(self._get_range, digest, a, b))
            while pending:
                yield from _slices(pending.popleft().result())
        finally:
            for f in pending:
                f.cancel()

    def copy_to(self, digest: str, fd: int, progress: Callable[[int], None] | None = None) -> int:
        """As :meth:`BlobStore.copy_to`: parallel ranged GETs, each written at its offset as it arrives
        (``os.pwrite``) by the thread that fetches it, while this thread hashes the finished parts in
        order, read back from ``fd`` (the page cache), so what is checked is what was written.

        Memory is a chunk per part in flight, whatever the size. A descriptor open for writing only
        gets the default (parts fetched ahead and hashed in memory as they are written in order).
        Raises :class:`BlobCorrupted` once the bytes are written if they do not hash to ``digest``.
        """
        if not _readable_and_positional(fd):
            return super().copy_to(digest, fd, progress)
        total = self.size(digest)
        at = os.lseek(fd, 0, os.SEEK_CUR)

        def write(offset: int, chunk: bytes) -> None:
            with memoryview(chunk) as view:
                done = 0
                while done < len(view):
                    done += os.pwrite(fd, view[done:], at + offset + done)

        def fetch(a: int, b: int) -> tuple[int, int]:
            self._read_range(digest, a, b, write)
            return a, b + 1 - a

        h = hasher()
        pending: deque[Future[tuple[int, int]]] = deque()

        def hash_next() -> None:
            a, n = pending.popleft().result()
            end = a + n
            while a < end:
                data = os.pread(fd, min(CHUNK, end - a), at + a)
                if not data:
                    raise BlobCorrupted(f"blob {digest}: the file written was cut short meanwhile", digest=digest)
                h.update(data)  # BLAKE3 lets go of the GIL: the fetching threads go on meanwhile
                a += len(data)
            if progress is not None:
                progress(n)

        try:
            for a in range(0, total, self.part_size):
                while len(pending) >= DOWNLOAD_PARTS_IN_FLIGHT:
                    hash_next()
                pending.append(self.pool.submit(fetch, a, min(a + self.part_size, total) - 1))
            while pending:
                hash_next()
        finally:
            for f in pending:
                f.cancel()
            # A part still being fetched writes into ``fd``: it must be done before the caller closes it.
            wait_futures([f for f in pending if not f.cancelled()])
        os.lseek(fd, at + total, os.SEEK_SET)
        actual = f"{self.algorithm}:{h.hexdigest()}"
        if actual != digest:
            raise corrupted(digest, actual)
        self._mark_verified(digest)
        return total

    def _is_verified(self, digest: str) -> bool:
        with self._verified_lock:
            return digest in self._verified

    def _mark_verified(self, digest: str) -> None:
        with self._verified_lock:
            self._verified[digest] = None
            self._verified.move_to_end(digest)
            while len(self._verified) > VERIFIED_CACHE:
                self._verified.popitem(last=False)

    def exists(self, digest: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key_of(digest))
        except Exception as exc:
            if _is_missing(exc):
                return False
            raise
        return True

    def size(self, digest: str) -> int:
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=self.key_of(digest))
        except Exception as exc:
            if _is_missing(exc):
                raise BlobNotFound(f"blob {digest} is not in the S3 store", digest=digest) from None
            raise
        return int(answer["ContentLength"])

    def delete(self, digest: str) -> None:
        key = self.key_of(digest)
        self.client.delete_object(Bucket=self.bucket, Key=key)
        with self._verified_lock:
            self._verified.pop(digest, None)

    def presigned_url(self, digest: str, seconds: int, filename: str | None = None) -> str | None:
        """A URL that downloads the blob straight from the store for ``seconds``."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key_of(digest)}
        if filename:
            safe = filename.replace('"', "").replace("\\", "")
            params["ResponseContentDisposition"] = f'attachment; filename="{safe}"'
        return str(self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=int(seconds)))

    def digests(self) -> Iterator[str]:
        """Every digest stored under this prefix (for migrations and checks)."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}blobs/"):
            for obj in page.get("Contents", []):
                yield f"{self.algorithm}:{obj['Key'].rsplit('/', 1)[-1]}"

    # ----------------------------------------------------------------------------- housekeeping
    def clean_tmp(self, older_than: float = STALE_SECONDS) -> int:
        """Abort multipart uploads and remove temporary objects left by writes that never finished."""
        removed = 0
        cutoff = time.time() - older_than
        try:
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for up in page.get("Uploads", []):
                    if up["Initiated"].timestamp() <= cutoff:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                        removed += 1
            objects = self.client.get_paginator("list_objects_v2")
            for page in objects.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}tmp/"):
                for obj in page.get("Contents", []):
                    if obj["LastModified"].timestamp() <= cutoff:
                        self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])
                        removed += 1
        except Exception:
            log.warning("could not list S3 left-overs in bucket %r; will try again at the next start", self.bucket)
        return removed

    def close(self) -> None:
        """Wait for nothing: writes finish or abort on their own; the connection pool stays usable."""


def _slices(data: bytes | bytearray) -> Iterator[bytes]:
    """``data`` in chunks of ``CHUNK`` (what readers of a blob expect), without copying."""
    view = memoryview(data)
    for i in range(0, len(view), CHUNK):
        yield bytes(view[i : i + CHUNK])


def _seekable(data: Any) -> bool:
    try:
        return bool(data.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _readable_and_positional(fd: int) -> bool:
    """Whether ``fd`` can be read back, and written and read at offsets (POSIX ``pwrite``/``pread``)."""
    try:
        import fcntl  # POSIX only
    except ImportError:  # pragma: no cover - Windows
        return False
    return hasattr(os, "pwrite") and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_WRONLY
