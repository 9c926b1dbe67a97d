"""File-to-file transfers that hash what they wrote, with the copy done by the kernel.

:func:`copy_hashed` moves bytes from one open file to another with ``copy_file_range`` (a
reflink on file systems that share extents, an in-kernel copy elsewhere; ``sendfile`` or a
read/write loop where neither works) in one thread, while the calling thread hashes the
*destination's* bytes as each step lands. The two run at once (both release the GIL), so a
transfer costs about the longer of the copy and the hash, not their sum; and the digest is that
of the bytes actually written, so a source that changes half-way yields a digest that does not
match what it would have been, never a blob stored under a digest it does not have.

:func:`land_hashed` is the same pipeline for any source that can put its bytes into the
destination by itself (an upload's socket, spliced into the file by the API server).
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable
from typing import Any

import blake3

#: Bytes per ``copy_file_range`` call: large, so that the hashing thread is woken rarely, yet
#: small enough that it starts hashing early and finishes right after the copy.
COPY_STEP = 16 << 20
#: Bytes hashed per read of the destination (read back from the page cache).
HASH_STEP = 4 << 20


def _libc(name: str, *argtypes: Any) -> Any:
    """A function of the C library (Linux system calls Python's ``os`` lacks), or None."""
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = list(argtypes)
    return fn


_sync_file_range = _libc("sync_file_range", ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
_SYNC_FILE_RANGE_WRITE = 2
_fallocate = _libc("fallocate", ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Ask the kernel to start writing ``length`` bytes of ``fd`` from ``offset`` (0: to the end) to
    disk now, without waiting: a later ``fdatasync``/``syncfs`` then finds them written (or being
    written) instead of writing everything at once while its caller waits. Not a durability promise."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def preallocate(fd: int, offset: int, length: int) -> None:
    """Reserve ``length`` bytes of ``fd`` from ``offset`` on disk (``fallocate(2)``; the file grows to
    cover them), where the file system can do it without writing: ext4 then takes the writes into
    blocks it already has instead of reserving and allocating them page by page. Nothing otherwise
    (no fallocate, or a file system without it: glibc's ``posix_fallocate`` would write zeros)."""
    if _fallocate is not None and length > 0:
        _fallocate(fd, 0, offset, length)  # an error (EOPNOTSUPP, ENOSPC) leaves the file as it was


# Errors meaning "this kernel or file system cannot copy these two files this way".
_UNSUPPORTED = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.ETXTBSY}


def _kernel_copy(src: int, dst: int, src_offset: int, dst_offset: int, count: int) -> int:
    """Copy up to ``count`` bytes between explicit offsets; 0 at the end of the source."""
    try:
        return os.copy_file_range(src, dst, count, src_offset, dst_offset)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
    data = os.pread(src, min(count, HASH_STEP), src_offset)
    view = memoryview(data)
    written = 0
    while written < len(data):
        written += os.pwrite(dst, view[written:], dst_offset + written)
    return len(data)


#: ``step(done, want)``: put up to ``want`` more bytes of the source into the destination, right
#: after the ``done`` bytes already there; returns how many it put (0: the source has ended).
Step = Callable[[int, int], int]


class _Copier(threading.Thread):
    """Runs the steps, telling the hashing thread how far the destination is written."""

    def __init__(self, step: Step, limit: int | None) -> None:
        super().__init__(name="datamill-copy", daemon=True)
        self.step = step
        self.limit = limit
        self.copied = 0
        self.done = False
        self.error: BaseException | None = None
        self.stop = False
        self.cond = threading.Condition()

    def run(self) -> None:
        try:
            while not self.stop:
                want = COPY_STEP if self.limit is None else min(COPY_STEP, self.limit - self.copied)
                if want <= 0:
                    break
                n = self.step(self.copied, want)
                if n == 0:
                    break
                with self.cond:
                    self.copied += n
                    self.cond.notify()
        except BaseException as exc:  # handed to the caller's thread
            self.error = exc
        finally:
            with self.cond:
                self.done = True
                self.cond.notify()

    def wait_for(self, hashed: int) -> tuple[int, bool]:
        """Block until more than ``hashed`` bytes are copied or the copy ended; ``(copied, done)``."""
        with self.cond:
            while self.copied <= hashed and not self.done:
                self.cond.wait()
            return self.copied, self.done


def copy_hashed(
    src: int,
    dst: int,
    src_offset: int = 0,
    dst_offset: int = 0,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[str, int]:
    """Copy ``src`` (from ``src_offset`` to its end, or ``limit`` bytes) into ``dst`` at ``dst_offset``.

    Returns the BLAKE3 hex digest of the bytes written and their number. ``dst`` must be open
    for reading too (it is hashed from what was written). File positions are not used or moved.
    ``progress`` is called with each count of bytes hashed.
    """

    def step(done: int, want: int) -> int:
        return _kernel_copy(src, dst, src_offset + done, dst_offset + done, want)

    return land_hashed(step, dst, dst_offset, limit, progress)


def land_hashed(
    step: Step,
    dst: int,
    dst_offset: int = 0,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
    write_back: bool = False,
) -> tuple[str, int]:
    """Run ``step`` in a thread of its own until the source ends (or ``limit`` bytes) while this
    thread hashes what it wrote into ``dst`` from ``dst_offset`` on, read back as each step lands.

    Returns the BLAKE3 hex digest of the bytes written and their number; an error of a step is
    raised here, once the stepping thread has ended (nothing writes into ``dst`` after this returns).
    With ``write_back``, each hashed range is sent on to the disk (:func:`start_writeback`) by this
    thread, so that the caller's ``fsync`` finds little left to write: for a source slower than the
    disk (a socket), not for a kernel copy (which it made disk-bound, w-blobspeed).
    """
    h = blake3.blake3()
    buf = bytearray(HASH_STEP)
    view = memoryview(buf)
    copier = _Copier(step, limit)
    copier.start()
    hashed = 0
    try:
        while True:
            copied, done = copier.wait_for(hashed)
            while hashed < copied:
                n = os.preadv(dst, [view[: min(HASH_STEP, copied - hashed)]], dst_offset + hashed)
                if n <= 0:
                    raise OSError(errno.EIO, "the file being written shrank while it was hashed")
                h.update(view[:n])
                if write_back:
                    start_writeback(dst, dst_offset + hashed, n)
                hashed += n
                if progress is not None:
                    progress(n)
            if done:
                break
    finally:
        copier.stop = True
        copier.join()
    if copier.error is not None:
        raise copier.error
    return h.hexdigest(), hashed
