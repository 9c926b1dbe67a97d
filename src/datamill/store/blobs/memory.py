"""Blobs in memory: for tests and throw-away stores."""

from __future__ import annotations

import io
import threading
from typing import BinaryIO

from datamill.errors import BlobNotFound
from datamill.store.blobs.base import BlobStore, BlobWriter, check_digest


class _MemoryWriter(BlobWriter):
    def __init__(self, store: MemoryBlobStore, expected_digest: str | None, expected_size: int | None) -> None:
        super().__init__(expected_digest, expected_size)
        self._store = store
        self._buf = io.BytesIO()

    def _write(self, chunk: bytes) -> None:
        self._buf.write(chunk)

    def _commit(self, digest: str) -> None:
        with self._store.lock:
            self._store.data.setdefault(digest, self._buf.getvalue())

    def _abort(self) -> None:
        self._buf = io.BytesIO()


class MemoryBlobStore(BlobStore):
    """Blobs in a dict: for tests and throw-away stores. Passes the same contract suite."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def writer(
        self, expected_digest: str | None = None, expected_size: int | None = None, durable: bool = True
    ) -> BlobWriter:
        return _MemoryWriter(self, expected_digest, expected_size)

    def _open_raw(self, digest: str) -> BinaryIO:
        try:
            return io.BytesIO(self.data[digest])
        except KeyError:
            raise BlobNotFound(f"blob {digest} is not in memory", digest=digest) from None

    def exists(self, digest: str) -> bool:
        check_digest(digest)
        return digest in self.data

    def delete(self, digest: str) -> None:
        check_digest(digest)
        with self.lock:
            self.data.pop(digest, None)

    def size(self, digest: str) -> int:
        check_digest(digest)
        try:
            return len(self.data[digest])
        except KeyError:
            raise BlobNotFound(f"blob {digest} is not in memory", digest=digest) from None
