"""File-to-file transfers that hash what they wrote, with the copy done by the kernel.

:func:`copy_hashed` moves bytes from one open file to another with ``copy_file_range`` (a
reflink on file systems that share extents, an in-kernel copy elsewhere; ``sendfile`` or a
read/write loop where neither works) in one thread, while the calling thread hashes the
*destination's* bytes as each step lands. The two run at once (both release the GIL), so a
transfer costs about the longer of the copy and the hash, not their sum; and the digest is that
of the bytes actually written, so a source that changes half-way yields a digest that does not
match what it would have been, never a blob stored under a digest it does not have.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import threading
from collections.abc import Callable

import blake3

#: Bytes per ``copy_file_range`` call: large, so that the hashing thread is woken rarely, yet
#: small enough that it starts hashing early and finishes right after the copy.
COPY_STEP = 16 << 20
#: Bytes hashed per read of the destination (read back from the page cache) where it cannot be mapped.
HASH_STEP = 4 << 20

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


class _Copier(threading.Thread):
    """Copies in steps, telling the hashing thread how far the destination is written."""

    def __init__(self, src: int, dst: int, src_offset: int, dst_offset: int, limit: int | None) -> None:
        super().__init__(name="datamill-copy", daemon=True)
        self.src, self.dst = src, dst
        self.src_offset, self.dst_offset = src_offset, dst_offset
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
                n = _kernel_copy(self.src, self.dst, self.src_offset + self.copied, self.dst_offset + self.copied, want)
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
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hash_range = _Mapped(dst) if _mappable(dst) else _Read(dst)
    copier = _Copier(src, dst, src_offset, dst_offset, limit)
    copier.start()
    hashed = 0
    try:
        while True:
            copied, done = copier.wait_for(hashed)
            if hashed < copied:
                hash_range(h, dst_offset + hashed, dst_offset + copied)
                if progress is not None:
                    progress(copied - hashed)
                hashed = copied
            if done:
                break
    finally:
        copier.stop = True
        copier.join()
    if copier.error is not None:
        raise copier.error
    return h.hexdigest(), hashed


def _mappable(fd: int) -> bool:
    """Whether ``fd`` is a regular file open for reading (what ``mmap`` can map)."""
    try:
        readable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_WRONLY
        return readable and stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


class _Mapped:
    """Hashes a written range of a file where it lies in the page cache, mapped: no copy into a buffer.

    BLAKE3 reads the mapping on its own threads (the GIL released), without the copy a read into
    a buffer makes. The file must not be truncated meanwhile (a mapped page past its end is a
    SIGBUS): it is a blob's temporary file or a download's ``.part`` file, which only we write.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __call__(self, h: blake3.blake3, start: int, end: int) -> None:
        base = start - start % mmap.ALLOCATIONGRANULARITY
        try:
            m = mmap.mmap(self.fd, end - base, offset=base, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:  # a file system that cannot map files
            raise OSError(errno.EIO, f"the file being written could not be mapped to hash it: {exc}") from exc
        try:
            if len(m) < end - base:
                raise OSError(errno.EIO, "the file being written shrank while it was hashed")
            with memoryview(m) as whole, whole[start - base : end - base] as part:
                h.update(part)
        finally:
            m.close()


class _Read:
    """Hashes a written range of a file by reading it back into one reused buffer."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray(HASH_STEP)

    def __call__(self, h: blake3.blake3, start: int, end: int) -> None:
        view = memoryview(self.buf)
        while start < end:
            n = os.preadv(self.fd, [view[: min(HASH_STEP, end - start)]], start)
            if n <= 0:
                raise OSError(errno.EIO, "the file being written shrank while it was hashed")
            h.update(view[:n])
            start += n
