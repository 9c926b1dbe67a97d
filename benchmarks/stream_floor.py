"""The floor of a stream ingest: the least work any consumer that honours issue 11's rules must do, in plain code.

Used by ``stream.py`` (``floor_files`` and ``floor_recorded``), reading the topic its bare consumer read,
with the same librdkafka settings. No datamill code here: confluent-kafka, msgpack, hashlib, blake3, ``os``
and ``sqlite3`` only, so what it measures is the work the rules require, not datamill's way of doing it:

* every OpenMSIStream chunk message decoded (msgpack) and its chunk's SHA-512 checked;
* every file's SHA-512 checked (a one-chunk file's is its chunk's: one pass), and its BLAKE3 computed (the
  content digest datamill addresses a blob by);
* every complete file written to a file of its own in one flat directory (a multi-chunk file's chunks at
  their offsets, as they come, in any order);
* each batch made durable (one ``syncfs`` of the file system, as datamill does) before the batch's offsets
  would be committed;
* with a database (``floor_recorded``): one plain ``sqlite3`` transaction per batch (WAL,
  ``synchronous=NORMAL``, as datamill's SQLite) inserting a row per landed file and per staged chunk of a
  multi-chunk file (what a restart needs to know) and storing each partition's next offset.

Less than datamill on purpose: no per-message bookkeeping beyond that, no staging file and link, no item
versions, events, permissions or status, no bound on memory (a chunk that comes before the bytes below it
is held in memory until they come, where datamill hashes it later from its staging file), and a refused
message stops the run (:class:`FloorError`) instead of being recorded. The hashing and writing run on a
pool of ``workers`` threads (hashlib, blake3 and file I/O release the GIL); a multi-chunk file's SHA-512
and BLAKE3 each on a thread of its own, in order; a batch's durability and transaction on a committing
thread while the next batch is read and prepared (a pipeline ``ahead`` batches deep: 1 by default, as
datamill's; more measured no faster).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import blake3
import msgpack

#: Most messages taken per batch: one waited for, then what librdkafka has queued behind it (as datamill).
BATCH = 500
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
_SCHEMA = """
CREATE TABLE files (name TEXT PRIMARY KEY, size INTEGER NOT NULL, sha512 BLOB NOT NULL, blake3 TEXT NOT NULL,
                    landed_at REAL NOT NULL);
CREATE TABLE chunks (name TEXT NOT NULL, offset INTEGER NOT NULL, size INTEGER NOT NULL, PRIMARY KEY (name, offset));
CREATE TABLE offsets (partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL);
"""
_SET_OFFSET = (
    "INSERT INTO offsets (partition, next_offset) VALUES (?, ?) "
    "ON CONFLICT (partition) DO UPDATE SET next_offset = excluded.next_offset"
)


class FloorError(Exception):
    """A message the rules refuse (bad chunk or file hash, a path that is not plainly relative)."""


def _load_syncfs() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # pragma: no cover - glibc has it
        return None
    fn.argtypes = [ctypes.c_int]
    return fn


_syncfs = _load_syncfs()


def syncfs(fd: int) -> None:
    """``syncfs(2)`` of the file system ``fd`` is on (``sync`` where the C library lacks it)."""
    if _syncfs is None or _syncfs(fd) != 0:
        os.sync()


def flat_name(subdir: str, filename: str, append: str) -> str:
    """A chunk's file as one name in a flat directory (``subdir/name`` joined by ``%``), ``append``
    inserted before the suffix as OpenMSIStream does; :class:`FloorError` for a path that is not plainly relative."""
    if append:
        stem, dot, suffix = filename.rpartition(".")
        filename = f"{stem}{append}.{suffix}" if dot and stem else f"{filename}{append}"
    parts = [*(subdir.split("/") if subdir else []), filename]
    for part in parts:
        if part in ("", ".", "..") or "\x00" in part or "\\" in part:
            raise FloorError(f"path {subdir!r}/{filename!r} is not plainly relative")
    return "%".join(parts)


class Landed(NamedTuple):
    """A file written whole, its hashes checked."""

    name: str
    size: int
    sha512: bytes
    blake3: str


class Piece(NamedTuple):
    """A chunk of a multi-chunk file, checked and written at its offset."""

    name: str
    offset: int
    total: int
    file_hash: bytes
    data: bytes


def unpack(value: bytes) -> tuple[str, bytes, bytes, int, int, bytes]:
    """A chunk message as (flat name, file SHA-512, chunk SHA-512, offset, chunk count, data), its chunk
    hash checked."""
    fields = msgpack.unpackb(value, raw=False)
    if not isinstance(fields, list) or len(fields) not in (9, 10):
        raise FloorError("not an OpenMSIStream chunk message")
    filename, file_hash, chunk_hash, offset, index, total, subdir, append, data = fields[:9]
    if not isinstance(data, bytes) or not isinstance(offset, int) or offset < 0 or not 1 <= index <= total:
        raise FloorError(f"chunk {index} of {total} of {filename!r}: malformed")
    if hashlib.sha512(data).digest() != chunk_hash:
        raise FloorError(f"chunk {index} of {total} of {filename!r}: SHA-512 does not match")
    return flat_name(subdir, filename, append), file_hash, chunk_hash, offset, total, data


def _write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    view = memoryview(data)
    at = 0
    while at < len(view):
        at += os.write(fd, view[at:]) if offset is None else os.pwrite(fd, view[at:], offset + at)


@dataclass(eq=False)
class _Open:
    """A multi-chunk file being written: its hashes advance in order on the two hashing threads."""

    fd: int
    total: int
    file_hash: bytes
    got: set[int] = field(default_factory=set)
    next: int = 0
    pending: dict[int, bytes] = field(default_factory=dict)
    sha: Any = field(default_factory=hashlib.sha512)
    b3: Any = field(default_factory=blake3.blake3)


def thread_cpu() -> dict[int, tuple[str, float, float]]:
    """Every OS thread of this process by thread id: a name (the Python thread's, else the kernel's:
    librdkafka names its threads ``rdk:...``), the seconds it ran on a CPU and the seconds it waited for
    one (``/proc/.../schedstat``: nanoseconds, where ``/proc/.../stat`` counts 10 ms ticks)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[int, tuple[str, float, float]] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                ran, waited = f.read().split()[:2]
            with open(f"/proc/self/task/{tid}/comm") as f:
                comm = f.read().strip()
        except FileNotFoundError:
            continue  # ended meanwhile
        out[int(tid)] = (names.get(int(tid)) or comm, int(ran) / 1e9, int(waited) / 1e9)
    return out


def cpu_by_thread(
    before: dict[int, tuple[str, float, float]], after: dict[int, tuple[str, float, float]]
) -> tuple[dict[str, float], float]:
    """CPU seconds between two :func:`thread_cpu` snapshots by thread name (librdkafka's threads as one,
    a pool's threads by their own names), biggest first; and the seconds they all waited for a core."""
    used: dict[str, float] = {}
    waited = 0.0
    for tid, (name, ran, wait) in after.items():
        key = "librdkafka" if name.startswith("rdk:") else name
        _, ran0, wait0 = before.get(tid, (name, 0.0, 0.0))
        used[key] = used.get(key, 0.0) + ran - ran0
        waited += wait - wait0
    return {k: round(v, 3) for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v >= 0.0005}, waited


class Floor:
    """Lands chunk messages as files in ``outdir`` (and records them in the SQLite file ``db``, if given), on
    ``workers`` pool threads, the consumer reading at most ``ahead`` batches past the one committing."""

    def __init__(self, outdir: Path, db: Path | None = None, workers: int = 2, ahead: int = 1) -> None:
        self.ahead = ahead
        outdir.mkdir(parents=True, exist_ok=True)
        self.outdir = str(outdir)
        self._dirfd = os.open(outdir, os.O_RDONLY)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="floor-prepare")
        self._sha = ThreadPoolExecutor(1, thread_name_prefix="floor-sha")
        self._b3 = ThreadPoolExecutor(1, thread_name_prefix="floor-b3")
        self._commit = ThreadPoolExecutor(1, thread_name_prefix="floor-commit")
        self._fds: dict[str, int] = {}
        self._fds_lock = threading.Lock()
        self._open: dict[str, _Open] = {}  # touched by the committing thread only
        self.landed: list[Landed] = []
        #: wall seconds: the committing thread waiting for prepared messages, in syncfs, in its transaction;
        #: the consumer's thread waiting for the previous batch's commit
        self.wall = dict.fromkeys(
            ("commit: waiting for prepare", "commit: syncfs", "commit: sqlite", "consumer: waiting for commit"), 0.0
        )
        self.db: sqlite3.Connection | None = None
        if db is not None:
            self.db = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)

    # -------------------------------------------------------------- worker threads

    def _fd(self, name: str) -> int:
        with self._fds_lock:
            fd = self._fds.get(name)
            if fd is None:
                fd = self._fds[name] = os.open(os.path.join(self.outdir, name), _FLAGS, 0o644)
            return fd

    def prepare(self, value: bytes) -> Landed | Piece:
        """One message, on a pool thread: checked, and written (a one-chunk file whole, its BLAKE3 taken)."""
        name, file_hash, chunk_hash, offset, total, data = unpack(value)
        if total == 1:
            if file_hash != chunk_hash:  # a one-chunk file's SHA-512 is its chunk's, checked above
                raise FloorError(f"{name}: file SHA-512 does not match")
            digest = blake3.blake3(data).hexdigest()
            fd = os.open(os.path.join(self.outdir, name), _FLAGS, 0o644)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            return Landed(name, len(data), file_hash, digest)
        _write_all(self._fd(name), data, offset)
        return Piece(name, offset, total, file_hash, data)

    # -------------------------------------------------------------- the committing thread

    def _hash(self, f: _Open, data: bytes) -> None:
        self._sha.submit(f.sha.update, data)
        self._b3.submit(f.b3.update, data)
        f.next += len(data)

    def _add(self, p: Piece) -> _Open | None:
        """Feed a written chunk to its file's hashes in order; the file once all its chunks are in."""
        f = self._open.get(p.name)
        if f is None:
            f = self._open[p.name] = _Open(self._fd(p.name), p.total, p.file_hash)
        if p.offset in f.got:
            raise FloorError(f"{p.name}: chunk at {p.offset} twice")
        f.got.add(p.offset)
        if p.offset == f.next:
            self._hash(f, p.data)
            while f.next in f.pending:
                self._hash(f, f.pending.pop(f.next))
        else:
            f.pending[p.offset] = p.data
        if len(f.got) < f.total:
            return None
        if f.pending:
            raise FloorError(f"{p.name}: its chunks leave a gap")
        del self._open[p.name]
        return f

    def _complete(self, name: str, f: _Open) -> Landed:
        sha, b3 = self._sha.submit(f.sha.digest), self._b3.submit(f.b3.hexdigest)
        if sha.result() != f.file_hash:
            raise FloorError(f"{name}: file SHA-512 does not match")
        with self._fds_lock:
            os.close(self._fds.pop(name))  # its bytes are made durable by the batch's syncfs, below
        return Landed(name, f.next, f.file_hash, b3.result())

    def commit(self, prepared: list[Future[Landed | Piece]], ends: dict[int, int]) -> int:
        """A batch, in message order: its files completed, its bytes made durable, then recorded; files landed."""
        landed: list[Landed] = []
        chunks: list[tuple[str, int, int]] = []
        wall = self.wall
        for fut in prepared:
            if not fut.done():
                t = time.perf_counter()
                fut.result()
                wall["commit: waiting for prepare"] += time.perf_counter() - t
            r = fut.result()
            if isinstance(r, Landed):
                landed.append(r)
                continue
            chunks.append((r.name, r.offset, len(r.data)))
            done = self._add(r)
            if done is not None:
                landed.append(self._complete(r.name, done))
        t = time.perf_counter()
        syncfs(self._dirfd)  # the batch's files and chunks durable before its offsets are stored
        wall["commit: syncfs"] += time.perf_counter() - t
        if self.db is not None:
            t = time.perf_counter()
            now = time.time()
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO files (name, size, sha512, blake3, landed_at) VALUES (?, ?, ?, ?, ?)",
                [(x.name, x.size, x.sha512, x.blake3, now) for x in landed],
            )
            if chunks:
                self.db.executemany("INSERT INTO chunks (name, offset, size) VALUES (?, ?, ?)", chunks)
            self.db.executemany(_SET_OFFSET, list(ends.items()))
            self.db.execute("COMMIT")
            wall["commit: sqlite"] += time.perf_counter() - t
        self.landed.extend(landed)
        return len(landed)

    # -------------------------------------------------------------- the consumer's thread

    def consume(self, consumer: Any, messages: int, other_cpu: Callable[[], float] | None = None) -> dict[str, Any]:
        """Read ``messages`` messages from ``consumer`` (subscribed) and land them: the window from the first
        message to the last batch committed, bytes, files, the CPU this process spent in it (by thread),
        and ``other_cpu``'s growth in it (another process's CPU seconds, e.g. the broker's)."""
        n = size = batches = 0
        first = 0.0
        other0 = 0.0
        threads0: dict[int, tuple[str, float, float]] = {}
        pending: deque[Future[int]] = deque()
        while n < messages:
            m = consumer.poll(1.0)
            if m is None:
                continue
            values: list[bytes] = []
            ends: dict[int, int] = {}
            for msg in [m, *consumer.consume(num_messages=BATCH - 1, timeout=0)]:
                if msg.error():
                    continue
                if not first:
                    first = time.perf_counter()
                    threads0 = thread_cpu()
                    other0 = other_cpu() if other_cpu else 0.0
                value = msg.value() or b""
                values.append(value)
                size += len(value)
                ends[msg.partition()] = msg.offset() + 1
            n += len(values)
            batches += 1
            prepared = [self._pool.submit(self.prepare, v) for v in values]
            # One committing thread: batches commit (and store their offsets) in order. The consumer reads
            # at most ``ahead`` batches past the one committing (memory: that many batches).
            while len(pending) >= self.ahead:
                t = time.perf_counter()
                pending.popleft().result()
                self.wall["consumer: waiting for commit"] += time.perf_counter() - t
            pending.append(self._commit.submit(self.commit, prepared, ends))
        for fut in pending:
            fut.result()
        last = time.perf_counter()
        threads, waited = cpu_by_thread(threads0, thread_cpu())
        other = other_cpu() - other0 if other_cpu else 0.0
        return {
            "seconds": last - first,
            "bytes": size,
            "files": len(self.landed),
            "cpu": sum(threads.values()),
            "waited_for_cpu": waited,
            "other_cpu": other,
            "threads": threads,
            "wall": dict(self.wall),
            "batches": batches,
        }

    def close(self) -> None:
        for pool in (self._pool, self._sha, self._b3, self._commit):
            pool.shutdown(wait=True)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        os.close(self._dirfd)
        if self.db is not None:
            self.db.close()
