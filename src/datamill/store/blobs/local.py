"""Blobs as files on a local file system: ``root/ab/cd/<hex>``, uploads in a temporary directory per process."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from datamill.errors import BlobNotFound, DigestMismatch
from datamill.store.blobs.base import (
    ALGORITHM,
    BlobInfo,
    BlobStore,
    BlobWriter,
    check_digest,
    check_digests,
    corrupted,
    digest_bytes,
)
from datamill.store.blobs.transfer import copy_hashed, start_writeback

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


#: A blob file at least this large that is replaced by the same bytes (an upload of a file stored
#: before) is unlinked after the upload, not by it: freeing a 1 GiB file's blocks and page cache
#: took 0.3-0.45 s here, a fifth of a 1 GiB API upload.
SET_ASIDE_MIN = 64 << 20
#: Errors meaning "the file system cannot link these two names" (another device, no hard links).
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOSYS}


class _LocalWriter(BlobWriter):
    def __init__(
        self, store: LocalBlobStore, expected_digest: str | None, expected_size: int | None, durable: bool = True
    ) -> None:
        super().__init__(expected_digest, expected_size)
        self._store = store
        self._durable = durable
        # mkstemp opens for reading too: a kernel copy into the file is hashed from it.
        fd, name = tempfile.mkstemp(dir=store.own_tmp_dir(), prefix="upload-")
        self._tmp = Path(name)
        self._file = os.fdopen(fd, "wb", buffering=0)

    def fileno(self) -> int:
        """The temporary file's descriptor (open for reading and writing)."""
        return self._file.fileno()

    def _write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            n = self._file.write(view)
            view = view[n or 0 :]

    def _commit(self, digest: str) -> None:
        self._file.flush()
        os.fchmod(self._file.fileno(), 0o444)
        if self._durable:
            os.fsync(self._file.fileno())
        self._file.close()
        final = self._store.path_of(digest)
        # Same digest, same bytes: replacing an existing file stores nothing twice, and it repairs
        # a file that was corrupted on disk (BlobCorrupted tells the user to upload again).
        old = self._set_aside(final) if self.size >= SET_ASIDE_MIN else None
        try:
            try:
                os.replace(self._tmp, final)
            except FileNotFoundError:
                # Its directory is new (the rename is tried first: for many small blobs in known
                # directories, a mkdir per blob costs more than the blob).
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self._tmp, final)
        finally:
            if old is not None:
                threading.Thread(
                    target=old.unlink, kwargs={"missing_ok": True}, name="datamill-unlink", daemon=True
                ).start()
        if not self._durable:
            return  # the caller calls store.sync() before recording the blob anywhere
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _set_aside(self, final: Path) -> Path | None:
        """A second name, in this process's temporary directory, for a blob file about to be replaced
        (None if there is none): the rename then drops a name, not the file, whose blocks and pages
        are freed by a thread of its own once the new file is in place (the caller does not wait).
        Left behind by a crash, it goes with the temporary directory (:meth:`LocalBlobStore.clean_tmp`)."""
        aside = self._tmp.with_name(self._tmp.name + ".old")
        try:
            os.link(final, aside)
        except FileNotFoundError:
            return None  # not stored yet (the usual case)
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            return None  # no hard links here: the rename frees it, as before
        return aside

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
        self._root = str(self.root)
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
        return Path(self._file_name(check_digest(digest)))  # one parse, not one per part

    def _file_name(self, h: str) -> str:
        """The file of the blob whose digest's hex is ``h``, as a string (the store's one layout rule)."""
        return f"{self._root}/{h[:2]}/{h[2:4]}/{h}"

    def writer(
        self, expected_digest: str | None = None, expected_size: int | None = None, durable: bool = True
    ) -> BlobWriter:
        return _LocalWriter(self, expected_digest, expected_size, durable)

    def put(
        self,
        data: bytes | BinaryIO | Iterable[bytes],
        expected_digest: str | None = None,
        expected_size: int | None = None,
        durable: bool = True,
    ) -> BlobInfo:
        """As :meth:`BlobStore.put`; small bytes written without ``durable`` go straight to their place.

        A batch (``put_many``) syncs once for all its blobs, so a temporary file and a rename
        per blob is most of its cost. Bytes in memory have a known digest: the blob's file is
        created under its final name (``O_EXCL``). If that name exists (the same bytes stored
        before, or a file left half-written by a crash) the usual temporary-file-and-rename
        replaces it, which repairs a damaged one; no version refers to the new file before the
        caller's sync and commit.
        """
        if durable or expected_digest is not None or expected_size is not None or not isinstance(data, bytes):
            return super().put(data, expected_digest, expected_size, durable)
        digest = digest_bytes(data)
        # The digest was made here: its path is built as a string, without path_of's check and Path
        # (a stream writes thousands of small blobs a second, each on a worker thread that needs the GIL).
        h = digest[len(ALGORITHM) + 1 :]
        final = self._file_name(h)
        try:
            fd = _create(final, self._root, h)
        except FileExistsError:
            return super().put(data, expected_digest, expected_size, durable)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            # The caller's sync() comes once for a whole batch: its bytes go to disk meanwhile.
            start_writeback(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(final)
            raise
        os.close(fd)
        return BlobInfo(digest, len(data))

    def adopt(self, path: Path, digest: str, size: int, durable: bool = True) -> BlobInfo:
        """As :meth:`BlobStore.adopt`: ``path`` is hard-linked as the blob file (no copy, no read) when it is
        on the blob file system, else copied. The size is checked; the digest is the caller's word, so
        the caller must have hashed exactly the bytes in the file (a stream's staging file, hashed as
        its chunks were written). A blob already stored under ``digest`` is kept (same bytes)."""
        check_digest(digest)
        actual = os.stat(path).st_size
        if actual != size:
            raise DigestMismatch(
                f"the file to adopt has {actual} bytes, not the announced {size}; nothing was stored",
                received=actual,
                expected=size,
            )
        final = self.path_of(digest)
        try:
            try:
                os.link(path, final)
            except FileNotFoundError:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, final)
        except FileExistsError:
            return BlobInfo(digest, size)
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            return super().adopt(path, digest, size, durable)
        os.chmod(final, 0o444)  # one file under two names: a blob now, read-only like every other
        if durable:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            dir_fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return BlobInfo(digest, size)

    def put_file(
        self,
        file: BinaryIO,
        expected_digest: str | None = None,
        expected_size: int | None = None,
        durable: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> BlobInfo:
        """As :meth:`BlobStore.put_file`; a regular file is copied by the kernel, hashed as it lands.

        The digest is that of the bytes in the new blob file (read back from the page cache
        while the next step is copied), so nothing is stored under a digest its bytes lack.
        """
        src = _regular_fileno(file)
        if src is None:
            return super().put_file(file, expected_digest, expected_size, durable, progress)
        start = file.tell()
        writer = _LocalWriter(self, expected_digest, expected_size, durable)
        try:
            hexdigest, n = copy_hashed(src, writer.fileno(), start, 0, progress=progress)
            writer.adopt(hexdigest, n)
            info = writer.commit()
        finally:
            writer.abort()
        file.seek(start + n)
        return info

    def copy_to(self, digest: str, fd: int, progress: Callable[[int], None] | None = None) -> int:
        """As :meth:`BlobStore.copy_to`, by a kernel copy from the blob file, hashed from ``fd`` as it lands.

        ``fd`` must be open for reading too: what was written is what is checked.
        """
        src = self._open_raw(digest)
        try:
            at = os.lseek(fd, 0, os.SEEK_CUR)
            hexdigest, n = copy_hashed(src.fileno(), fd, 0, at, progress=progress)
        finally:
            src.close()
        os.lseek(fd, at + n, os.SEEK_SET)
        if f"{ALGORITHM}:{hexdigest}" != digest:
            raise corrupted(digest, f"{ALGORITHM}:{hexdigest}")
        return n

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
        # A string's isfile, not a Path's: a batch's writer checks each of its blobs (hold_blobs).
        return self.local_file(digest) is not None

    def local_path(self, digest: str) -> Path | None:
        path = self.local_file(digest)
        return None if path is None else Path(path)

    def local_file(self, digest: str) -> str | None:
        # Checked as a string: a Path's is_file costs several times the stat (a task asks per item).
        path = self._file_name(check_digest(digest))
        return path if os.path.isfile(path) else None

    def local_places(self, digests: Iterable[str]) -> dict[str, str]:
        # A blob's file is where its digest says: not looked for. A stat per claimed item cost the
        # group commit's thread ~4.5 µs a task (the most of anything it does but commit), and its
        # step reads the file (or links it) in a worker, which finds it missing just as well.
        # The digests may come from anyone (a plan's inputs are given by the caller of
        # ``Engine.submit``): checked all at once, before any becomes a path, so none names a file
        # outside the store; each one's hex is then its text after the algorithm's prefix.
        distinct = list(dict.fromkeys(digests))
        check_digests(distinct)
        name, at = self._file_name, len(ALGORITHM) + 1
        return {digest: name(digest[at:]) for digest in distinct}

    def local_files(self, digests: Iterable[str]) -> dict[str, str]:
        # The places, then a stat each (once per distinct digest), without the four calls a
        # local_file makes around it.
        found = {}
        is_reg = stat.S_ISREG
        for digest, path in self.local_places(digests).items():
            try:
                if is_reg(os.stat(path).st_mode):
                    found[digest] = path
            except (OSError, ValueError):  # as os.path.isfile: not there, or not a path
                pass
        return found

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


def _regular_fileno(file: BinaryIO) -> int | None:
    """The descriptor of ``file`` if it is a regular file the kernel can copy from, else None."""
    try:
        fd = file.fileno()
        file.tell()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None
    return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None


def _create(path: str, root: str, h: str) -> int:
    """A new read-only file at ``path`` (``root/h[:2]/h[2:4]/h``) open for writing, its directories made
    if missing (one ``mkdir`` when only the last is, not pathlib's walk); FileExistsError if it is there."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o444)
    except FileNotFoundError:
        pass
    leaf = f"{root}/{h[:2]}/{h[2:4]}"
    try:
        os.mkdir(leaf)
    except FileExistsError:  # another thread made it meanwhile
        pass
    except FileNotFoundError:  # its parent is new too (at most 256 times in a store's life)
        Path(leaf).mkdir(parents=True, exist_ok=True)
    return os.open(path, flags, 0o444)


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
