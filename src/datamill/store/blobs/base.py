"""Blobs: immutable bytes addressed by their BLAKE3 digest, behind a small interface.

A digest reads ``blake3:<64 hex>``; the algorithm is part of the name so a store can say what it
holds. Writing streams the bytes through the hasher into a temporary file, fsyncs it and renames
it into place, so a crash or a broken upload never leaves a partial blob under a real digest.
Reading hashes again and raises :class:`BlobCorrupted` at the end of a stream whose bytes changed.
"""

from __future__ import annotations

import io
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import blake3

from datamill.errors import BlobCorrupted, DigestMismatch, InvalidInput

ALGORITHM = "blake3"
#: Bytes per read and per streamed chunk.
CHUNK = 1 << 20


def hasher() -> blake3.blake3:
    """A fresh hasher of the store's algorithm (multi-threaded for large inputs)."""
    return blake3.blake3(max_threads=blake3.blake3.AUTO)


def digest_bytes(data: bytes) -> str:
    """The digest of ``data``: ``blake3:<hex>``."""
    return f"{ALGORITHM}:{blake3.blake3(data).hexdigest()}"


_HEX64 = re.compile("[0-9a-f]{64}")


def check_digest(digest: str) -> str:
    """Validate a digest's form and return its hex part; raise :class:`InvalidInput` otherwise."""
    algo, _, hexpart = digest.partition(":")
    if algo != ALGORITHM or _HEX64.fullmatch(hexpart) is None:
        raise InvalidInput(f"not a {ALGORITHM} digest: {digest!r}; expected '{ALGORITHM}:' and 64 hex digits")
    return hexpart


#: Digests one a line (:func:`check_digests`): a line that is not one whole digest fails the match.
_DIGEST_LINES = re.compile(f"(?:{ALGORITHM}:[0-9a-f]{{64}}\n)*")


def check_digests(digests: list[str]) -> None:
    """:func:`check_digest` for many digests in one regex match (no Python call per digest); raise
    :class:`InvalidInput` naming the first that is not one."""
    lines = "\n".join(digests) + "\n" if digests else ""
    # As many lines as digests: none holds a newline, so each line is one whole digest given (two
    # strings that are not digests cannot join into two that are, nor one hold two).
    if lines.count("\n") != len(digests) or _DIGEST_LINES.fullmatch(lines) is None:
        for digest in digests:
            check_digest(digest)
        raise RuntimeError("a digest failed the batch check and passed check_digest")


def corrupted(digest: str, actual: str) -> BlobCorrupted:
    """The error for a blob whose bytes now hash to ``actual`` instead of ``digest``."""
    return BlobCorrupted(
        f"blob {digest} is corrupted: its bytes now hash to {actual}. "
        "Restore it from a backup or upload the file again.",
        digest=digest,
    )


@dataclass(frozen=True)
class BlobInfo:
    """What a finished write produced."""

    digest: str
    size: int


class BlobWriter(ABC):
    """An open write: feed bytes with :meth:`write`, then :meth:`commit` or :meth:`abort`."""

    def __init__(self, expected_digest: str | None = None, expected_size: int | None = None) -> None:
        self._hasher = hasher()
        self.size = 0
        self.expected_digest = expected_digest
        self.expected_size = expected_size
        self.closed = False
        self._adopted: str | None = None

    def write(self, chunk: bytes) -> None:
        """Append bytes."""
        self._hasher.update(chunk)
        self.size += len(chunk)
        self._write(chunk)

    def fileno(self) -> int | None:
        """The descriptor of the file the bytes go to, open for reading and writing, when a backend
        has one that others may write into (then hash it and :meth:`adopt`); None otherwise."""
        return None

    def adopt(self, hexdigest: str, size: int) -> None:
        """Account for ``size`` bytes a backend wrote past :meth:`write` (a kernel copy), whose hash it took.

        Only instead of :meth:`write`, never mixed with it: the digest is then ``hexdigest``.
        """
        self._adopted = hexdigest
        self.size += size

    def commit(self) -> BlobInfo:
        """Finish: verify what was announced, make the blob visible under its digest."""
        digest = f"{ALGORITHM}:{self._adopted or self._hasher.hexdigest()}"
        try:
            if self.expected_size is not None and self.size != self.expected_size:
                raise DigestMismatch(
                    f"received {self.size} bytes but {self.expected_size} were announced; nothing was stored",
                    received=self.size,
                    expected=self.expected_size,
                )
            if self.expected_digest is not None and digest != self.expected_digest:
                raise DigestMismatch(
                    f"received bytes hash to {digest}, not the announced {self.expected_digest}; nothing was stored",
                    received=digest,
                    expected=self.expected_digest,
                )
        except DigestMismatch:
            self.abort()
            raise
        self._commit(digest)
        self.closed = True
        return BlobInfo(digest, self.size)

    def abort(self) -> None:
        """Throw away what was written; safe to call more than once."""
        if not self.closed:
            self.closed = True
            self._abort()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    @abstractmethod
    def _write(self, chunk: bytes) -> None: ...

    @abstractmethod
    def _commit(self, digest: str) -> None: ...

    @abstractmethod
    def _abort(self) -> None: ...


class VerifyingReader(io.RawIOBase):
    """A read stream that hashes what passes through and raises at the end if it does not match."""

    def __init__(self, raw: BinaryIO, digest: str, size: int | None = None) -> None:
        super().__init__()
        self._raw = raw
        self._digest = digest
        self._size = size
        self._hasher = hasher()
        self._seen = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._raw.read(len(buffer))
        if not data:
            self._finish()
            return 0
        self._hasher.update(data)
        self._seen += len(data)
        buffer[: len(data)] = data
        return len(data)

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        actual = f"{ALGORITHM}:{self._hasher.hexdigest()}"
        if actual != self._digest or (self._size is not None and self._seen != self._size):
            raise corrupted(self._digest, actual)

    def close(self) -> None:
        self._raw.close()
        super().close()


class BlobStore(ABC):
    """Where blob bytes live. Implementations: :class:`LocalBlobStore`, :class:`MemoryBlobStore`."""

    algorithm = ALGORITHM

    @abstractmethod
    def writer(
        self, expected_digest: str | None = None, expected_size: int | None = None, durable: bool = True
    ) -> BlobWriter:
        """Start a write; the digest is known only when it commits.

        With ``durable=False`` the bytes need not be on stable storage at commit: the caller
        must call :meth:`sync` before it records the blob anywhere (batched uploads do, so that
        many small files cost one sync instead of two fsyncs each).
        """

    def sync(self) -> None:
        """Make every blob written so far durable (see ``durable=False``)."""

    @abstractmethod
    def _open_raw(self, digest: str) -> BinaryIO:
        """The stored bytes, unverified; raise :class:`BlobNotFound` if absent."""

    @abstractmethod
    def exists(self, digest: str) -> bool:
        """Whether bytes for ``digest`` are stored."""

    @abstractmethod
    def delete(self, digest: str) -> None:
        """Remove the bytes for ``digest``; no error if already gone."""

    @abstractmethod
    def size(self, digest: str) -> int:
        """The stored size in bytes."""

    def local_path(self, digest: str) -> Path | None:
        """A file on this machine holding the bytes of ``digest``, or None.

        None for a backend without local files (memory, object storage) and for a blob that is
        not there; callers then read through :meth:`open`. The file is the store's own: never
        write to it (it is read-only), and link or read it only while a reference keeps the blob.
        """
        return None

    def local_file(self, digest: str) -> str | None:
        """:meth:`local_path` as a string (no Path made: a task asks this for each input item)."""
        path = self.local_path(digest)
        return None if path is None else str(path)

    def local_files(self, digests: Iterable[str]) -> dict[str, str]:
        """:meth:`local_file` for many digests: the files found on this machine, by digest."""
        found = {}
        for digest in digests:
            path = self.local_file(digest)
            if path is not None:
                found[digest] = path
        return found

    def local_places(self, digests: Iterable[str]) -> dict[str, str]:
        """Where the blob files of ``digests`` are on this machine, for readers that say themselves
        that a file is missing (:class:`~datamill.pipeline.inputs.InputFile`). A store that can
        tell where a blob's file is only by looking (this one) looks: :meth:`local_files`."""
        return self.local_files(digests)

    def presigned_url(self, digest: str, seconds: int, filename: str | None = None) -> str | None:
        """A URL that downloads the blob without this server for ``seconds``, or None (no such thing here)."""
        return None

    def clean_tmp(self) -> int:
        """Remove temporary files left by processes that ended; returns how many (0 if none are kept)."""
        return 0

    def close(self) -> None:
        """Release what this open store holds (temporary files, connections); it stays usable."""

    def put(
        self,
        data: bytes | BinaryIO | Iterable[bytes],
        expected_digest: str | None = None,
        expected_size: int | None = None,
        durable: bool = True,
    ) -> BlobInfo:
        """Store bytes from a buffer, a file object (see :meth:`put_file`) or an iterable of chunks."""
        if not isinstance(data, bytes | bytearray | memoryview) and hasattr(data, "read"):
            return self.put_file(data, expected_digest, expected_size, durable)  # type: ignore[arg-type]
        w = self.writer(expected_digest, expected_size, durable)
        try:
            if isinstance(data, bytes | bytearray | memoryview):
                w.write(bytes(data))
            else:
                for chunk in data:
                    w.write(chunk)
            return w.commit()
        finally:
            w.abort()

    def put_file(
        self,
        file: BinaryIO,
        expected_digest: str | None = None,
        expected_size: int | None = None,
        durable: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> BlobInfo:
        """Store the rest of an open file, from its current position (left at its end).

        A backend with files of its own copies a regular file in the kernel while it hashes
        the copy (:meth:`LocalBlobStore.put_file`); this default reads it in chunks.
        ``progress`` is called with each count of bytes stored.
        """
        w = self.writer(expected_digest, expected_size, durable)
        try:
            while chunk := file.read(CHUNK):
                w.write(chunk)
                if progress is not None:
                    progress(len(chunk))
            return w.commit()
        finally:
            w.abort()

    def adopt(self, path: Path, digest: str, size: int, durable: bool = True) -> BlobInfo:
        """Make the local file ``path`` the blob ``digest`` of ``size`` bytes, whose hash the caller took
        while it wrote the file (a stream's staging file), without copying it where the store allows.

        A backend whose blobs are files on the same file system links the file in place (it becomes
        read-only, and the caller never writes to it again; it may unlink its own name for it). This
        default stores a copy (read and checked: :class:`DigestMismatch` when the bytes are not
        ``digest`` and ``size``), and leaves ``path`` as it was.
        """
        with open(path, "rb") as f:
            return self.put_file(f, expected_digest=digest, expected_size=size, durable=durable)

    def open(self, digest: str) -> BinaryIO:
        """A stream of the blob's bytes that verifies the digest as it reaches the end."""
        check_digest(digest)
        raw = self._open_raw(digest)
        return io.BufferedReader(VerifyingReader(raw, digest), buffer_size=CHUNK)

    def copy_to(self, digest: str, fd: int, progress: Callable[[int], None] | None = None) -> int:
        """Write the blob's bytes into the open file ``fd`` at its position, verified; returns their number.

        Raises :class:`BlobCorrupted` once the bytes are written if they do not hash to
        ``digest`` (the caller throws the file away). A backend with files of its own copies in
        the kernel while it hashes what it wrote; this default writes what :meth:`iter_range`
        yields for the whole blob (verified as it streams).
        """
        n = 0
        for chunk in self.iter_range(digest):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            n += len(chunk)
            if progress is not None:
                progress(len(chunk))
        return n

    def read(self, digest: str) -> bytes:
        """All bytes of a (small) blob, verified."""
        with self.open(digest) as f:
            return f.read()

    def iter_range(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``start``..``end`` (inclusive) of a blob, in chunks.

        A whole-blob read is verified as it streams (the last chunk raises on a mismatch); a
        partial read verifies the whole blob first, since a range alone cannot be checked.
        """
        total = self.size(digest)
        last = total - 1 if end is None else min(end, total - 1)
        if start == 0 and last == total - 1:
            yield from self._iter_verified(digest)
            return
        self.verify(digest)
        with self._open_raw(digest) as raw:
            raw.seek(start)
            remaining = last - start + 1
            while remaining > 0:
                chunk = raw.read(min(CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk

    def _iter_verified(self, digest: str) -> Iterator[bytes]:
        """The whole blob in chunks read straight from the raw stream (no buffered reader's copy),
        hashed as they pass; raises :class:`BlobCorrupted` after the last chunk if they do not match."""
        check_digest(digest)
        h = hasher()
        with self._open_raw(digest) as raw:
            while chunk := raw.read(CHUNK):
                h.update(chunk)
                yield chunk
        actual = f"{ALGORITHM}:{h.hexdigest()}"
        if actual != digest:
            raise corrupted(digest, actual)

    def verify(self, digest: str) -> None:
        """Read the whole blob and raise :class:`BlobCorrupted` if its bytes changed."""
        with self.open(digest) as f:
            while f.read(CHUNK):
                pass
