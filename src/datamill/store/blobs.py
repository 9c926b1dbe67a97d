"""Blobs: immutable bytes addressed by their BLAKE3 digest, behind a small interface.

A digest reads ``blake3:<64 hex>``; the algorithm is part of the name so a store can say what it
holds. Writing streams the bytes through the hasher into a temporary file, fsyncs it and renames
it into place, so a crash or a broken upload never leaves a partial blob under a real digest.
Reading hashes again and raises :class:`BlobCorrupted` at the end of a stream whose bytes changed.
"""

from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import blake3

from datamill.errors import BlobCorrupted, BlobNotFound, ConfigError, DigestMismatch, InvalidInput

ALGORITHM = "blake3"

log = logging.getLogger("datamill.store")

#: The lock file in each process's temporary directory, held (``flock``) while the process lives.
TMP_LOCK = "lock"
#: Temporary entries not made by this version's protocol (older versions' ``upload-*`` files, a
#: directory whose creation was interrupted) are removed once they are this old.
STALE_SECONDS = 3600.0


def _load_syncfs() -> Any:
    """Linux ``syncfs(2)``, if the C library has it (else ``os.sync`` is used)."""
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).syncfs
        fn.argtypes = [ctypes.c_int]
        return fn
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()
CHUNK = 1 << 20


def hasher() -> blake3.blake3:
    """A fresh hasher of the store's algorithm (multi-threaded for large inputs)."""
    return blake3.blake3(max_threads=blake3.blake3.AUTO)


def digest_bytes(data: bytes) -> str:
    """The digest of ``data``: ``blake3:<hex>``."""
    return f"{ALGORITHM}:{blake3.blake3(data).hexdigest()}"


def check_digest(digest: str) -> str:
    """Validate a digest's form and return its hex part; raise :class:`InvalidInput` otherwise."""
    algo, _, hexpart = digest.partition(":")
    if algo != ALGORITHM or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise InvalidInput(f"not a {ALGORITHM} digest: {digest!r}; expected '{ALGORITHM}:' and 64 hex digits")
    return hexpart


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

    def write(self, chunk: bytes) -> None:
        """Append bytes."""
        self._hasher.update(chunk)
        self.size += len(chunk)
        self._write(chunk)

    def commit(self) -> BlobInfo:
        """Finish: verify what was announced, make the blob visible under its digest."""
        digest = f"{ALGORITHM}:{self._hasher.hexdigest()}"
        try:
            if self.expected_size is not None and self.size != self.expected_size:
                raise DigestMismatch(
                    f"received {self.size} bytes but {self.expected_size} were announced; nothing was stored",
                    received=self.size,
                    expected=self.expected_size,
                )
            if self.expected_digest is not None and digest != self.expected_digest:
                raise DigestMismatch(
                    f"received bytes hash to {digest}, not the announced {self.expected_digest}; "
                    "nothing was stored",
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
            raise BlobCorrupted(
                f"blob {self._digest} is corrupted: its bytes now hash to {actual}. "
                "Restore it from a backup or upload the file again.",
                digest=self._digest,
            )

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

    def put(
        self,
        data: bytes | BinaryIO | Iterable[bytes],
        expected_digest: str | None = None,
        expected_size: int | None = None,
        durable: bool = True,
    ) -> BlobInfo:
        """Store bytes from a buffer, a file object or an iterable of chunks."""
        w = self.writer(expected_digest, expected_size, durable)
        try:
            if isinstance(data, bytes | bytearray | memoryview):
                w.write(bytes(data))
            elif hasattr(data, "read"):
                while chunk := data.read(CHUNK):
                    w.write(chunk)
            else:
                for chunk in data:
                    w.write(chunk)
            return w.commit()
        finally:
            w.abort()

    def open(self, digest: str) -> BinaryIO:
        """A stream of the blob's bytes that verifies the digest as it reaches the end."""
        check_digest(digest)
        raw = self._open_raw(digest)
        return io.BufferedReader(VerifyingReader(raw, digest), buffer_size=CHUNK)

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
            with self.open(digest) as f:
                while chunk := f.read(CHUNK):
                    yield chunk
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

    def verify(self, digest: str) -> None:
        """Read the whole blob and raise :class:`BlobCorrupted` if its bytes changed."""
        with self.open(digest) as f:
            while f.read(CHUNK):
                pass

    def local_path(self, digest: str) -> Path | None:
        """A file on this machine holding the bytes of ``digest``, to read or link to; None if there is none.

        The file must not be written to. Backends that keep no local files (memory, S3) return None
        and callers copy the bytes with :meth:`iter_range` instead.
        """
        return None


class _LocalWriter(BlobWriter):
    def __init__(
        self, store: LocalBlobStore, expected_digest: str | None, expected_size: int | None, durable: bool = True
    ) -> None:
        super().__init__(expected_digest, expected_size)
        self._store = store
        self._durable = durable
        fd, name = tempfile.mkstemp(dir=store.own_tmp_dir(), prefix="upload-")
        self._tmp = Path(name)
        self._file = os.fdopen(fd, "wb", buffering=0)

    def _write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            n = self._file.write(view)
            view = view[n or 0 :]

    def _commit(self, digest: str) -> None:
        self._file.flush()
        if self._durable:
            os.fsync(self._file.fileno())
        self._file.close()
        final = self._store.path_of(digest)
        # Same digest, same bytes: replacing an existing file stores nothing twice, and it repairs
        # a file that was corrupted on disk (BlobCorrupted tells the user to upload again).
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self._tmp, 0o444)
        os.replace(self._tmp, final)
        if not self._durable:
            return  # the caller calls store.sync() before recording the blob anywhere
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)


class LocalBlobStore(BlobStore):
    """Blobs as read-only files under ``root/ab/cd/<hex>``; temporary files under ``root/.tmp``.

    Each open store writes its temporary files in a directory of its own,
    ``root/.tmp/<pid>-<random>/``, and holds an exclusive ``flock`` on the ``lock`` file in it for
    as long as it lives. The kernel drops that lock when the process ends, however it ends, so
    :meth:`clean_tmp` (run by every process that opens the home) removes exactly the directories
    of processes that are gone, and never the uploads in flight of a live server or CLI.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / ".tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._own_tmp: Path | None = None
        self._owner_pid = 0
        self._own_lock = threading.Lock()
        self._release: weakref.finalize | None = None

    def own_tmp_dir(self) -> Path:
        """This store's temporary directory, made (and locked) on first use."""
        with self._own_lock:
            if self._own_tmp is None or os.getpid() != self._owner_pid:
                # A forked child shares its parent's lock and directory; it may write there too,
                # but it makes its own for a store it uses after the fork.
                self._own_tmp, fd = _make_locked_dir(self.tmp_dir)
                self._owner_pid = os.getpid()
                self._release = weakref.finalize(self, _release_tmp_dir, self._own_tmp, fd, os.getpid())
            return self._own_tmp

    def close(self) -> None:
        """Remove this store's temporary directory and drop its lock (also done at exit)."""
        with self._own_lock:
            if self._release is not None:
                self._release()
            self._own_tmp, self._release = None, None

    def path_of(self, digest: str) -> Path:
        """Where the bytes of ``digest`` live on disk."""
        h = check_digest(digest)
        return self.root / h[:2] / h[2:4] / h

    def writer(
        self, expected_digest: str | None = None, expected_size: int | None = None, durable: bool = True
    ) -> BlobWriter:
        return _LocalWriter(self, expected_digest, expected_size, durable)

    def sync(self) -> None:
        """One ``syncfs`` of the blob file system: file data and renames reach the disk together."""
        fd = os.open(self.root, os.O_RDONLY)
        try:
            if _syncfs is None or _syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    def _open_raw(self, digest: str) -> BinaryIO:
        try:
            return open(self.path_of(digest), "rb", buffering=0)
        except FileNotFoundError:
            raise BlobNotFound(
                # the blob directory is the server's business: callers are not told where it is
                f"blob {digest} is missing from the blob store. Restore the blob directory from a backup.",
                digest=digest,
            ) from None

    def exists(self, digest: str) -> bool:
        return self.path_of(digest).is_file()

    def delete(self, digest: str) -> None:
        self.path_of(digest).unlink(missing_ok=True)

    def size(self, digest: str) -> int:
        try:
            return self.path_of(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} is missing from the blob store", digest=digest) from None

    def clean_tmp(self) -> int:
        """Remove temporary files of processes that are gone; returns how many files were removed.

        A directory is removed only while this call holds its lock, which a live owner never
        lets go of; a live process's uploads are left alone.
        """
        n = 0
        now = time.time()
        for entry in list(self.tmp_dir.iterdir()):
            try:
                if entry.is_dir() and not entry.name.startswith("."):
                    n += _remove_if_unlocked(entry)
                elif now - entry.lstat().st_mtime > STALE_SECONDS:
                    # An older datamill's upload-* file, or a directory whose creation stopped
                    # half-way: nothing can tell whether its writer lives, so only age decides.
                    n += _count_files(entry)
                    if entry.is_dir():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
            except FileNotFoundError:
                continue  # another process cleaned it at the same time
        return n

    def local_path(self, digest: str) -> Path | None:
        """Where the bytes of ``digest`` live (see :meth:`BlobStore.local_path`)."""
        return self.path_of(digest)


def _make_locked_dir(parent: Path) -> tuple[Path, int]:
    """A new directory under ``parent`` holding a ``lock`` file this process has locked.

    The directory is made and locked under a dot-name that :meth:`LocalBlobStore.clean_tmp` leaves
    alone, then renamed into view, so no other process can ever see it unlocked.
    """
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=".new-"))
    fd = os.open(staging / TMP_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        final = parent / f"{os.getpid()}-{staging.name.removeprefix('.new-')}"
        os.rename(staging, final)
    except BaseException:
        os.close(fd)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final, fd


def _release_tmp_dir(path: Path, fd: int, pid: int) -> None:
    """Remove a store's temporary directory, then let go of its lock (in the process that made it)."""
    if os.getpid() != pid:
        return  # a forked child exiting must not take its parent's directory away
    shutil.rmtree(path, ignore_errors=True)
    os.close(fd)


def _remove_if_unlocked(path: Path) -> int:
    """Remove ``path`` if no live process holds its lock; returns how many files it held."""
    try:
        fd = os.open(path / TMP_LOCK, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        if time.time() - path.lstat().st_mtime <= STALE_SECONDS:
            return 0
        n = _count_files(path)
        shutil.rmtree(path, ignore_errors=True)
        return n
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return 0  # its process is alive
            raise
        n = _count_files(path) - 1  # not the lock file
        shutil.rmtree(path, ignore_errors=True)
        if n:
            log.info("removed %d temporary files left by a process that ended", n)
        return n
    finally:
        os.close(fd)


def _count_files(path: Path) -> int:
    if not path.is_dir():
        return 1
    return sum(len(files) for _, _, files in os.walk(path))


class _MemoryWriter(BlobWriter):
    def __init__(
        self, store: MemoryBlobStore, expected_digest: str | None, expected_size: int | None
    ) -> None:
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


def open_blob_store(url: str) -> BlobStore:
    """The blob store for a URL: ``file:///path`` or ``memory://``."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return LocalBlobStore(parts.path)
    if parts.scheme == "memory":
        return MemoryBlobStore()
    if parts.scheme == "" and url:
        return LocalBlobStore(url)
    raise ConfigError(
        f"unsupported blob store URL {url!r}: use file:///path (S3-compatible storage comes later)",
        key="blob_url",
    )
