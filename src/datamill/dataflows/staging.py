"""A stream dataflow's durable side: chunks staged, files landed, offsets stored, all at once.

:meth:`Stager.apply` takes a batch of Kafka messages and, in **one** write transaction, records each
staged chunk (``stream_chunks``), lands every file the batch completes as an item version in the
destination (subfolders kept, provenance in its metadata; all of the batch's versions in one
write), records what it refused, and moves the stored offset of each partition past the batch
(``stream_offsets``). A process killed at any moment leaves either all of that or none of it; the
consumer seeks to the stored offsets on restart, so every message is applied exactly once. A
message below the stored offset (already applied, e.g. by another server before a rebalance) is
skipped inside the same transaction.

A chunk's bytes go to its file's **staging file** (one per path and file hash, in
``.staging/streams/<dataflow id>/`` of a local blob store, else of the home), written at the
chunk's offset and fdatasync'd before the transaction that records the chunk commits; the database
holds which chunks are there. A staging file is removed only after the transaction that drops its
chunks commits, so a rolled-back batch never loses staged bytes (bytes written by a batch that did
not commit are written again, identical, when it is re-read). Partial files are keyed by
(dataflow, path), not by partition: chunks of one file land on every partition, and whichever
consumer stages the last chunk completes it (servers on one database share the blob store, so
they share the staging files). A file is committed only if the whole file's SHA-512 matches; a
one-chunk file never touches a staging file, and its checked chunk hash is its file hash.

A multi-chunk file's SHA-512 and BLAKE3 (its blob digest) are computed **as its chunks are
staged**, in order (a chunk that arrives before the gap below it is filled is hashed from the
staging file once it is), so completing a file reads nothing again: its last chunk is written to
the staging file, which the blob store then **adopts** as the blob (a hard link on a local store;
a copy elsewhere). The hash state lives in memory for chunks this process staged in committed
batches; after a restart, a rolled-back batch, or chunks staged by another server, the part not
covered is read from the staging file at completion.

Three threads besides the batch's own take a multi-chunk file's bytes, each in order: the staging
thread writes chunks to their staging files (a batch waits for it before its ``fdatasync``), the
hashing thread advances the file's SHA-512 and the BLAKE3 thread its BLAKE3. A batch commits
without waiting for its hashes (they are not needed before the file completes, and the offsets may
only move past bytes that are durable, which they are); the hashing may fall at most
:data:`HASH_BEHIND` bytes behind, and a completing file waits for its own.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
from sqlalchemy import Connection, bindparam, delete, func, insert, select, update

from datamill import events
from datamill.db.bulk import insert_rows
from datamill.db.models import Dataflow, StreamChunk, StreamFile, StreamOffset, json_text
from datamill.errors import BadChunk, DatamillError
from datamill.events import EventKind
from datamill.home import Home
from datamill.store import folders
from datamill.store.access import Actor, Level
from datamill.store.blobs import BlobInfo, BlobStore
from datamill.store.blobs.base import ALGORITHM
from datamill.store.metadata import check_metadata
from datamill.store.names import check_name
from datamill.store.versions import NewVersion, write_versions
from datamill.streams.assembly import Decision, Generation, check_bounds, decide
from datamill.streams.chunks import Chunk, decode

PARTIAL = "partial"
LANDED = "landed"
#: How many ``stream.rejected`` events one batch may append (the status keeps the count and the last one).
MAX_REJECT_EVENTS = 20
#: How much of a staging file is read at once while assembling (memory stays at this).
READ_PIECE = 1 << 22
#: A batch is prepared (decoded, chunk hashes checked, one-chunk files' blobs written) on two threads
#: in windows of at most this many messages or bytes; the file rows of a window are read in one statement.
WINDOW_MESSAGES = 128
WINDOW_BYTES = 8 << 20
#: Windows being prepared ahead of the one the database takes (2 was tried: no gain measurable at load
#: 6-8 for 100 KB files, and one more window of decoded chunks in memory).
WINDOWS_AHEAD = 1
#: Multi-chunk files whose hashes are kept while they arrive; beyond that the oldest is dropped (it is
#: then hashed from its staging file when it completes).
MAX_HASHING = 256
#: How far (bytes of chunks) the hashing thread may fall behind the staging: batches commit without
#: waiting for their hashes (only a file's completion waits for its own), so its queue is bounded here.
#: Its chunks stay in memory until hashed: 4 MiB (was 16; issue 11, RSS growth for a 2 GiB file).
HASH_BEHIND = 4 << 20


@dataclass(frozen=True, slots=True)
class Message:
    """A Kafka message as the stager needs it."""

    partition: int
    offset: int
    value: bytes | None


@dataclass
class Outcome:
    """What one batch did."""

    messages: int = 0
    bytes: int = 0
    skipped: int = 0
    duplicates: int = 0
    stale: int = 0
    files: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """Where and as whom a stream dataflow lands its files."""

    dataflow_id: int
    name: str
    topic: str
    destination: str
    owner: Actor


@dataclass(slots=True)
class _FileRow:
    """A ``stream_files`` row as a batch sees and changes it; written back once, at the batch's end."""

    id: int | None
    path: str
    state: str
    file_hash: str
    n_chunks: int
    mtime: float | None
    chunks_staged: int
    bytes_staged: int
    messages: dict[str, Any]
    first_seen: float
    updated_at: float
    dirty: bool = False

    @classmethod
    def of(cls, r: Any) -> _FileRow:
        return cls(
            int(r.id), r.path, r.state, r.file_hash, int(r.n_chunks), r.mtime, int(r.chunks_staged),
            int(r.bytes_staged), dict(r.messages or {}), float(r.first_seen), float(r.updated_at),
        )  # fmt: skip

    @classmethod
    def new(cls, path: str, chunk: Chunk) -> _FileRow:
        now = time.time()
        return cls(None, path, PARTIAL, chunk.file_hash.hex(), chunk.total, chunk.mtime, 0, 0, {}, now, now, True)

    def values(self) -> dict[str, Any]:
        """The changeable columns."""
        return {
            "state": self.state,
            "file_hash": self.file_hash,
            "n_chunks": self.n_chunks,
            "mtime": self.mtime,
            "chunks_staged": self.chunks_staged,
            "bytes_staged": self.bytes_staged,
            "messages": self.messages,
            "first_seen": self.first_seen,
            "updated_at": self.updated_at,
        }

    def columns(self) -> tuple[Any, ...]:
        """The changeable columns' values in :data:`FILE_COLUMNS` order, ``messages`` as JSON text."""
        return (
            self.state, self.file_hash, self.n_chunks, self.mtime, self.chunks_staged, self.bytes_staged,
            json_text(self.messages), self.first_seen, self.updated_at,
        )  # fmt: skip


@dataclass(slots=True)
class _Hashing:
    """A multi-chunk file's SHA-512 and BLAKE3 over its bytes ``[0, done)``; ``ahead``: offset → (size,
    its write) of chunks this process staged past ``done``, hashed from the staging file once the gap is
    filled. ``done`` and ``ahead`` belong to the batch's thread (:meth:`feed`); the hashing itself runs
    on the hashing thread (SHA-512) and the BLAKE3 thread, each in order, and is not waited for by a
    batch's commit, only by the completion of its file (:meth:`digests`)."""

    sha: Any = field(default_factory=hashlib.sha512)
    b3: Any = field(default_factory=blake3.blake3)
    done: int = 0
    ahead: dict[int, tuple[int, Future[None]]] = field(default_factory=dict)
    #: a staged chunk could not be read back (or hashing failed): completion reads the whole file again
    broken: bool = False
    #: the BLAKE3 update last handed to the BLAKE3 thread
    b3_last: Future[None] | None = None

    def update(self, data: bytes) -> None:
        """Hash ``data``, the next bytes of the file: SHA-512 here while the BLAKE3 thread takes the
        previous piece (at most two pieces wait for BLAKE3: memory stays flat)."""
        self.sha.update(data)
        prev, self.b3_last = self.b3_last, _b3_thread().submit(self.b3.update, data)
        if prev is not None:
            prev.result()

    def feed(self, staging: Path, offset: int, data: bytes, written: Future[None]) -> Future[None] | None:
        """On the batch's thread: a chunk staged at ``offset`` (``written``: its pwrite) handed to the
        hashing thread if it is next, with those staged before that it joins up with; None if it waits."""
        if offset != self.done:
            if offset > self.done:
                self.ahead[offset] = (len(data), written)
            return None
        self.done += len(data)
        later: list[tuple[int, int, Future[None]]] = []
        while (waiting := self.ahead.pop(self.done, None)) is not None:
            later.append((self.done, *waiting))
            self.done += waiting[0]
        return _hasher_thread().submit(self._hash, staging, data, later)

    def _hash(self, staging: Path, data: bytes, later: list[tuple[int, int, Future[None]]]) -> None:
        """On the hashing thread: ``data``, then the chunks ``later`` read back from the staging file
        (the page cache still holds them) once their writes are done."""
        try:
            self.update(data)
            if later:
                fd = os.open(staging, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    for offset, size, written in later:
                        written.result()
                        for piece in _read_range(fd, offset, size, staging.name):
                            self.update(piece)
                finally:
                    os.close(fd)
        except Exception:  # read back or written wrong: never a wrong hash, the file is read again at completion
            self.broken = True

    def digests(self) -> tuple[bytes, str]:
        """The SHA-512 and the BLAKE3 (hex) of ``[0, done)``, once every update handed out is done."""
        if self.b3_last is not None:
            self.b3_last.result()
        return self.sha.digest(), self.b3.hexdigest()


@dataclass(slots=True)
class _Ready:
    """A decoded chunk, its checked path, and (one-chunk files) its blob, written on a worker thread."""

    chunk: Chunk
    path: str
    blob: BlobInfo | None = None


class _Batch:
    """What one batch touched outside the database: staging files open for writing, files to remove
    once it commits, the versions it lands (written together at its end) and the file rows it read."""

    def __init__(self) -> None:
        self.fds: dict[Path, int] = {}
        self.written: set[Path] = set()
        self.unlink: set[Path] = set()
        self.folders: dict[str, Any] = {}
        self.versions: dict[str, list[NewVersion]] = {}
        self.landed = False
        #: file rows by path, loaded a window at a time (None: no row)
        self.rows: dict[str, _FileRow | None] = {}
        #: staging files whose hash state this batch advanced (dropped if it does not commit)
        self.hashed: set[Path] = set()
        #: chunks being written to their staging files on the staging thread (in order), until :meth:`wait`
        self.writing: list[Future[None]] = []
        #: staged chunks (offset -> size) of the multi-chunk files this batch touched, by file id: read
        #: once per file and batch, not a statement per chunk
        self.chunks: dict[int, dict[int, int]] = {}
        #: chunk rows staged by this batch, inserted in one statement before it commits
        self.new_chunks: list[dict[str, int]] = []

    def fd(self, path: Path) -> int:
        fd = self.fds.get(path)
        if fd is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            except PermissionError:
                # Adopted as a blob (read-only) by a batch that then did not commit: it is staged again,
                # with the same bytes, and adopted again when the file completes.
                os.chmod(path, 0o600)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            self.fds[path] = fd
        return fd

    def write(self, path: Path, offset: int, data: bytes) -> Future[None]:
        """Stage a chunk: written at ``offset`` on the staging thread, in order, while this thread goes
        on with the batch (:meth:`wait` before its bytes are synced or read). Its bytes are not sent to
        disk chunk by chunk (measured, that halved big files' throughput): the batch's fdatasync writes
        them in large extents."""
        self.unlink.discard(path)  # staged again after a reject or restart in this batch: keep it
        fd = self.fd(path)
        self.written.add(path)
        written = _stage_thread().submit(_pwrite, fd, offset, data)
        self.writing.append(written)
        return written

    def wait(self) -> None:
        """Until the staging thread has written this batch's chunks (before the staging files are synced,
        read or closed); a failed write is raised here. Their hashing is not waited for."""
        for f in self.writing:
            f.result()
        self.writing.clear()

    def sync(self) -> None:
        """Staged bytes reach the disk before the transaction that records them commits."""
        for path in self.written - self.unlink:
            os.fdatasync(self.fds[path])

    def close(self, committed: bool) -> None:
        for f in self.writing:  # nothing may write to a descriptor closed under it
            f.exception()
        self.writing.clear()
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        if committed:
            for path in self.unlink:
                path.unlink(missing_ok=True)


class Stager:
    """Applies batches of one stream dataflow's messages to the database (see the module docstring)."""

    def __init__(self, home: Home, target: Target) -> None:
        self.home = home
        self.t = target
        self.staging_dir = staging_root(home) / str(target.dataflow_id)
        self._b = _Batch()
        #: hash states of multi-chunk files being received, by staging file (see the module docstring)
        self._hashing: dict[Path, _Hashing] = {}
        #: chunks handed to the hashing thread and not known to be hashed yet, with their sizes
        self._hash_queue: deque[tuple[Future[None], int]] = deque()
        self._hash_queued = 0

    def _staging_file(self, path: str, file_hash: str, first_seen: float) -> Path:
        # One name per generation *and* incarnation of a file row (``first_seen`` is reset whenever
        # a row starts over): a staging file another server removes after its commit (a rejected or
        # dropped file) is never the one a re-sent file is being staged into.
        key = f"{path}\x00{file_hash}\x00{first_seen:.6f}"
        return self.staging_dir / hashlib.sha256(key.encode()).hexdigest()

    def _row_staging(self, row: _FileRow) -> Path:
        return self._staging_file(row.path, row.file_hash, row.first_seen)

    # ------------------------------------------------------------------ offsets

    def positions(self, partitions: Sequence[int]) -> dict[int, int]:
        """The stored next offset of each of ``partitions`` that has one."""
        with self.home.db.read() as conn:
            rows = conn.execute(
                select(StreamOffset.partition, StreamOffset.next_offset).where(
                    StreamOffset.dataflow_id == self.t.dataflow_id,
                    StreamOffset.topic == self.t.topic,
                    StreamOffset.partition.in_(list(partitions)),
                )
            ).all()
        return {int(r.partition): int(r.next_offset) for r in rows}

    def _lock_offsets(self, conn: Connection, partitions: set[int]) -> dict[int, int]:
        """The stored offsets of ``partitions``, their rows created and (PostgreSQL) locked for this transaction.

        By the driver, statements built once: SQLAlchemy built and compiled its two ``SELECT``s (one with an
        ``IN`` list expanded per batch) again for every batch, ~1.5-2 ms of the writer's CPU a batch.
        """
        style = conn.dialect.paramstyle
        key = (self.t.dataflow_id, self.t.topic)
        stored = {int(p): int(n) for p, n in conn.exec_driver_sql(_offsets_sql(style), key)}
        missing = sorted(partitions - stored.keys())
        if missing:
            now = time.time()
            insert_rows(conn, _INSERT_OFFSET_SQL, [(*key, p, 0, now) for p in missing], " ON CONFLICT DO NOTHING")
        if conn.dialect.name != "postgresql":
            # SQLite: this transaction has held the database's one write lock since its BEGIN IMMEDIATE, so
            # no one inserted or moved an offset since the read above.
            return {p: stored.get(p, 0) for p in partitions}
        want = sorted(partitions)
        lock = _offsets_sql(style, len(want), lock=True)
        return {int(p): int(n) for p, n in conn.exec_driver_sql(lock, (*key, *want))}

    # ------------------------------------------------------------------ one batch

    def prepare(self, batch: Sequence[Message]) -> Prepared:
        """Start the work on ``batch`` that needs no database (see :class:`Prepared`), for :meth:`apply`."""
        return Prepared(batch, self.home.blobs)

    def apply(self, batch: Sequence[Message], prepared: Prepared | None = None) -> Outcome:
        """Apply ``batch`` (in offset order per partition; ``prepared`` by :meth:`prepare`, else prepared
        here) in one transaction; see the module docstring."""
        out = Outcome()
        self._b = _Batch()
        committed = False
        try:
            self._apply(prepared or Prepared(batch, self.home.blobs), out)
            committed = True
        finally:
            self._b.close(committed)
            if not committed:
                for path in self._b.hashed:  # they counted chunks that are not recorded: start over
                    self._hashing.pop(path, None)
        return out

    def _apply(self, prepared: Prepared, out: Outcome) -> None:
        with self.home.db.write() as conn:
            stored = self._lock_offsets(conn, {m.partition for w in prepared.windows for m in w})
            ends: dict[int, int] = {}
            for whole in prepared:
                # Messages below the stored offset were applied before (a restart, or another member
                # before a rebalance): skipped here, under the offsets' lock.
                window = [(m, r) for m, r in whole if m.offset >= stored.get(m.partition, 0)]
                out.skipped += len(whole) - len(window)
                self._load_rows(conn, {r.path: r.chunk for _m, r in window if isinstance(r, _Ready)})
                for m, ready in window:
                    ends[m.partition] = max(ends.get(m.partition, 0), m.offset + 1)
                    out.messages += 1
                    out.bytes += len(m.value or b"")
                    self._one(conn, m, out, ready)
            self._flush_rows(conn)
            self._flush_chunks(conn)
            if ends:
                conn.execute(
                    _UPDATE_OFFSET,
                    [
                        {"dataflow_id_": self.t.dataflow_id, "topic_": self.t.topic, "partition_": p,
                         "next_offset": nxt, "updated_at": time.time()}
                        for p, nxt in ends.items()
                    ],
                )  # fmt: skip
            for folder, new in self._b.versions.items():
                write_versions(conn, self.home.blobs, self.t.owner, self._b.folders[folder], new, {}, "stream")
            self._reject_events(conn, out.rejected)
            self._b.wait()
            self._b.sync()
            if self._b.landed:
                # The blobs were written without a sync each: one sync makes them durable before the commit.
                self.home.blobs.sync()

    def _load_rows(self, conn: Connection, chunks: dict[str, Chunk]) -> None:
        """Read (PostgreSQL: create and lock) the file rows of a window's paths, one statement per 500."""
        want = sorted(p for p in chunks if p not in self._b.rows)
        pg = conn.dialect.name == "postgresql"
        for i in range(0, len(want), 500):
            part = want[i : i + 500]
            if pg:
                # Two servers may see the first chunks of one file at once: one insert wins, both then lock it.
                now = time.time()
                insert_rows(
                    conn,
                    _INSERT_FILE_SQL,
                    [(self.t.dataflow_id, p, PARTIAL, chunks[p].file_hash.hex(), chunks[p].total, chunks[p].mtime,
                      0, 0, "{}", now, now) for p in part],
                    " ON CONFLICT DO NOTHING",
                    json_at=(8,),
                )  # fmt: skip
            q = select(StreamFile).where(StreamFile.dataflow_id == self.t.dataflow_id, StreamFile.path.in_(part))
            if pg:
                q = q.order_by(StreamFile.path).with_for_update()
            found = {r.path: _FileRow.of(r) for r in conn.execute(q)}
            for p in part:
                self._b.rows[p] = found.get(p)

    def _flush_rows(self, conn: Connection) -> None:
        """Write the batch's new and changed file rows: new ones many a statement, changed ones one
        executemany, both as plain tuples run by the driver (SQLAlchemy's per-row work was most of
        the writer's CPU for a batch of small files)."""
        rows = [r for r in self._b.rows.values() if r is not None and r.dirty]
        new = [(self.t.dataflow_id, r.path, *r.columns()) for r in rows if r.id is None]
        changed = [(*r.columns(), r.id) for r in rows if r.id is not None]
        insert_rows(conn, _INSERT_FILE_SQL, new, json_at=(8,))
        if changed:
            conn.exec_driver_sql(_update_file_sql(conn.dialect.paramstyle, conn.dialect.name), changed)

    def _one(self, conn: Connection, m: Message, out: Outcome, ready: _Ready | BadChunk) -> bool:
        """One message (prepared by :class:`Prepared`); True when it landed a file."""
        try:
            if isinstance(ready, BadChunk):
                raise ready
            chunk = ready.chunk
            check_bounds(chunk)
            for seg in ready.path.split("/"):
                check_name(seg, "stream path segment")
            return self._chunk(conn, m, ready, out)
        except (BadChunk, DatamillError) as exc:
            out.rejected.append(f"partition {m.partition} offset {m.offset}: {exc.message}")
            return False

    def _chunk(self, conn: Connection, m: Message, ready: _Ready, out: Outcome) -> bool:
        chunk, path = ready.chunk, ready.path
        row = self._b.rows.get(path)
        file_hash = chunk.file_hash.hex()
        if row is not None and row.state == LANDED:
            if row.file_hash == file_hash:
                out.duplicates += 1  # a late copy of a chunk of a file already landed
                return False
            current = None
        else:
            current = None if row is None or row.chunks_staged == 0 else _generation(row)
        have = current is not None and row is not None and self._has_chunk(conn, row, chunk.offset)
        decision = decide(current, chunk, have)
        if decision == Decision.DUPLICATE:
            out.duplicates += 1
            return False
        if decision == Decision.STALE:
            out.stale += 1
            return False
        if row is None:
            row = self._b.rows[path] = _FileRow.new(path, chunk)
        elif current is None or decision == Decision.SWITCH or row.file_hash != file_hash:
            self._restart_file(conn, row, chunk)
        return self._stage(conn, row, m, ready, out)

    def _has_chunk(self, conn: Connection, row: _FileRow, offset: int) -> bool:
        return row.id is not None and offset in self._staged(conn, row.id)

    def _staged(self, conn: Connection, file_id: int) -> dict[int, int]:
        """The chunks staged for a file (offset -> size): its rows read once per batch (they are locked
        with the file row on PostgreSQL), then kept up to date by this batch."""
        have = self._b.chunks.get(file_id)
        if have is None:
            rows = conn.execute(_STAGED_CHUNKS, {"file_id_": file_id}).all()
            have = self._b.chunks[file_id] = {int(r.offset): int(r.size) for r in rows}
        return have

    def _drop_chunks(self, conn: Connection, file_id: int) -> None:
        """Delete a file's chunk rows: those committed before and those this batch has not inserted yet."""
        conn.execute(delete(StreamChunk).where(StreamChunk.file_id == file_id))
        self._b.new_chunks = [c for c in self._b.new_chunks if c["file_id"] != file_id]
        self._b.chunks[file_id] = {}

    def _flush_chunks(self, conn: Connection) -> None:
        if self._b.new_chunks:
            conn.execute(_INSERT_CHUNK, self._b.new_chunks)
            self._b.new_chunks = []

    def _restart_file(self, conn: Connection, row: _FileRow, chunk: Chunk) -> None:
        """Make ``row`` the new generation ``chunk`` starts (its staged chunks, if any, dropped)."""
        self._hashing.pop(self._row_staging(row), None)
        if row.id is not None and row.chunks_staged:
            self._drop_chunks(conn, row.id)
            self._b.unlink.add(self._row_staging(row))
        now = time.time()
        row.state, row.file_hash, row.n_chunks, row.mtime = PARTIAL, chunk.file_hash.hex(), chunk.total, chunk.mtime
        row.chunks_staged, row.bytes_staged, row.messages = 0, 0, {}
        row.first_seen = row.updated_at = now
        row.dirty = True

    def _stage(self, conn: Connection, row: _FileRow, m: Message, ready: _Ready, out: Outcome) -> bool:
        chunk = ready.chunk
        msgs = dict(row.messages)
        first, last = msgs.get(str(m.partition), [m.offset, m.offset])
        msgs[str(m.partition)] = [min(first, m.offset), max(last, m.offset)]
        row.messages = msgs
        staged = row.chunks_staged + 1
        if staged < row.n_chunks:
            if row.id is None:  # its chunk rows need the file's id now
                values = {"dataflow_id": self.t.dataflow_id, "path": row.path, **row.values()}
                row.id = int(conn.execute(insert(StreamFile).values(values).returning(StreamFile.id)).scalar_one())
            staging = self._row_staging(row)
            written = self._b.write(staging, chunk.offset, chunk.data)
            h = self._hash_state(staging, row)
            if h is not None:
                self._behind(h.feed(staging, chunk.offset, chunk.data, written), len(chunk.data))
            self._staged(conn, row.id)[chunk.offset] = len(chunk.data)
            self._b.new_chunks.append({"file_id": row.id, "offset": chunk.offset, "size": len(chunk.data)})
            row.chunks_staged = staged
            row.bytes_staged += len(chunk.data)
            row.updated_at = time.time()
            row.dirty = True
            return False
        return self._land(conn, row, ready, out)

    def _hash_state(self, staging: Path, row: _FileRow) -> _Hashing | None:
        """The hash state of a file being staged: made at its first chunk, None when its earlier chunks
        were staged before a restart or by another server (completion then reads the file)."""
        h = self._hashing.get(staging)
        if h is None:
            if row.chunks_staged:
                return None
            if len(self._hashing) >= MAX_HASHING:
                self._hashing.pop(next(iter(self._hashing)))
            h = self._hashing[staging] = _Hashing()
        self._b.hashed.add(staging)
        return h

    def _behind(self, hashing: Future[None] | None, size: int) -> None:
        """Keep the hashing thread at most :data:`HASH_BEHIND` bytes behind the staging (its queue holds
        the chunks' bytes): a batch commits without waiting for its hashes, the next ones wait here."""
        if hashing is not None:
            self._hash_queue.append((hashing, size))
            self._hash_queued += size
        while self._hash_queue and (self._hash_queued > HASH_BEHIND or self._hash_queue[0][0].done()):
            done, n = self._hash_queue.popleft()
            done.result()
            self._hash_queued -= n

    def _hashed(self) -> None:
        """Until the hashing thread has taken every chunk handed to it (a file completes)."""
        while self._hash_queue:
            self._hash_queue.popleft()[0].result()
        self._hash_queued = 0

    def _assemble(self, conn: Connection, row: _FileRow, ready: _Ready) -> tuple[BlobInfo, bytes]:
        """The file's blob and SHA-512: its staging file (the last chunk written to it) adopted as the blob,
        hashed as far as the chunks staged here in order allow, the rest read once from the file."""
        last = ready.chunk
        if row.n_chunks == 1:  # the usual small file: no staging file, one hash pass each
            if last.offset != 0:
                raise BadChunk(f"{row.path!r}: its only chunk starts at byte {last.offset}", path=row.path)
            # decode() checked the chunk hash, the SHA-512 of these very bytes: no second pass; the
            # blob was written on a worker thread while earlier messages were applied.
            blob = ready.blob or self.home.blobs.put(last.data, durable=False)
            return blob, last.chunk_hash
        staged = self._staged(conn, row.id) if row.id is not None else {}
        pieces = sorted([*staged.items(), (last.offset, len(last.data))])
        written = 0
        for offset, size in pieces:
            if offset != written:
                raise BadChunk(
                    f"{row.path!r}: its chunks do not fit together (a chunk at byte {offset}, expected {written})",
                    path=row.path,
                )
            written += size
        staging = self._row_staging(row)
        # The whole file in its staging file, which becomes the blob.
        self._b.write(staging, last.offset, last.data)
        self._b.wait()
        self._hashed()
        h = self._hashing.pop(staging, None)
        if h is None or h.broken or h.done not in {offset for offset, _size in pieces}:
            h = _Hashing()  # not hashed here as it arrived (a restart, another server): one pass now
        fd = self._b.fd(staging)
        for offset, size in pieces:
            if offset < h.done:
                continue
            if offset == last.offset:
                h.update(last.data)
            else:
                for piece in _read_range(fd, offset, size, row.path):
                    h.update(piece)
        digest, b3 = h.digests()
        if digest.hex() != row.file_hash:
            raise _mismatch(row)  # before the adoption: nothing is stored
        # Not durable yet: the batch syncs the blob store (which holds the staging files) before it commits.
        blob = self.home.blobs.adopt(staging, f"{ALGORITHM}:{b3}", written, durable=False)
        return blob, digest

    def _folder(self, conn: Connection, folder: str) -> Any:
        """The destination folder row (made when missing, write access checked), once per batch."""
        frow = self._b.folders.get(folder)
        if frow is None:
            if folder != self.t.destination:
                folders.create_folder(conn, self.t.owner, folder, True, True, None, False)
            frow = self._b.folders[folder] = folders.readable_folder(conn, self.t.owner, folder, Level.WRITE)
        return frow

    def _land(self, conn: Connection, row: _FileRow, ready: _Ready, out: Outcome) -> bool:
        path = ready.path
        # A one-chunk file has no staging file: its name (a SHA-256 of the row's key) is not computed.
        staging = self._row_staging(row) if row.n_chunks > 1 else None
        try:
            blob, digest = self._assemble(conn, row, ready)
            if digest.hex() != row.file_hash:
                raise _mismatch(row)
            folder, _, name = f"{self.t.destination}/{path}".rpartition("/")
            self._folder(conn, folder)
            new = NewVersion(check_name(name, "item name"), blob, None, self._metadata(row, path))
        except (BadChunk, DatamillError) as exc:
            if row.id is not None:
                self._drop_chunks(conn, row.id)
                conn.execute(delete(StreamFile).where(StreamFile.id == row.id))
            self._b.rows[row.path] = None
            if staging is not None:
                self._hashing.pop(staging, None)
                self._b.unlink.add(staging)
            # A chunk error names the file already; a store error (the folder, the name) says which file.
            out.rejected.append(exc.message if isinstance(exc, BadChunk) else f"{path!r}: {exc.message}; not landed")
            return False
        self._b.versions.setdefault(folder, []).append(new)
        self._b.landed = True
        if staging is not None and row.id is not None:
            self._drop_chunks(conn, row.id)
            self._b.unlink.add(staging)
        row.state, row.chunks_staged, row.bytes_staged, row.messages = LANDED, row.n_chunks, 0, {}
        row.updated_at = time.time()
        row.dirty = True
        out.files.append(path)
        return True

    def _metadata(self, row: _FileRow, path: str) -> dict[str, Any]:
        """A landed file's metadata: where it came from, with the keys OpenMSIStream's Girder uploader writes.

        Built here in the form :func:`~datamill.store.metadata.check_metadata` returns (keys sorted, JSON
        values only), without that check's JSON round trip and walk (~20 µs of the writer's ~0.3 ms of CPU
        per small file): the shape is fixed, the path was checked, the offsets are numbers by partition. Only
        the producer's mtime can be out of JSON's range (NaN, infinity): then the check runs and refuses
        it as it always did.
        """
        if row.mtime is not None and not math.isfinite(row.mtime):
            return check_metadata({"stream": {"mtime": row.mtime}})  # raises InvalidMetadata
        return {
            # The keys OpenMSIStream's Girder uploader writes, for tools that read them.
            "KafkaTopic": self.t.topic,
            "dataflow": self.t.name,
            "stream": {
                "dataflow": self.t.name,
                "dataflow_id": self.t.dataflow_id,
                "mtime": row.mtime,
                "offsets": {p: list(span) for p, span in sorted(row.messages.items())},
                "path": path,
                "sha512": row.file_hash,
                "topic": self.t.topic,
            },
        }

    def _reject_events(self, conn: Connection, rejected: list[str]) -> None:
        if not rejected:
            return
        folder_id = destination_folder_id(conn, self.t.dataflow_id)
        rows = [
            {
                "kind": EventKind.STREAM_REJECTED,
                "dataflow_id": self.t.dataflow_id,
                "folder_id": folder_id,
                "data": {"name": self.t.name, "topic": self.t.topic, "reason": reason},
            }
            for reason in rejected[:MAX_REJECT_EVENTS]
        ]
        events.append_many(conn, rows)

    # ------------------------------------------------------------------ partial files

    def expire(self, older_than: float) -> list[str]:
        """Drop partial files that got no chunk for ``older_than`` seconds; one message per file, also as events."""
        cutoff = time.time() - older_than
        with self.home.db.write() as conn:
            rows = conn.execute(
                select(StreamFile).where(
                    StreamFile.dataflow_id == self.t.dataflow_id,
                    StreamFile.state == PARTIAL,
                    StreamFile.updated_at < cutoff,
                )
            ).all()
            reasons = [
                f"{r.path!r}: {r.chunks_staged} of {r.n_chunks} chunk(s) arrived and none for {older_than:.0f} s; "
                "the partial file was dropped (truncated); send it again"
                for r in rows
                # A row with no chunk is a placeholder whose chunk was refused (PostgreSQL): no file to report.
                if r.chunks_staged > 0
            ]
            for r in rows:
                conn.execute(delete(StreamChunk).where(StreamChunk.file_id == r.id))
                conn.execute(delete(StreamFile).where(StreamFile.id == r.id))
            self._reject_events(conn, reasons)
        for r in rows:
            self._staging_file(r.path, r.file_hash, r.first_seen).unlink(missing_ok=True)
        self._sweep(cutoff)
        return reasons

    def _sweep(self, cutoff: float) -> None:
        """Remove staging files no partial file owns that were last written before ``cutoff`` (left by a
        process killed between a commit and its clean-up); a newer one may be another server's batch."""
        try:
            old = [e for e in os.scandir(self.staging_dir) if e.is_file() and e.stat().st_mtime < cutoff]
        except FileNotFoundError:
            return
        if not old:
            return
        with self.home.db.read() as conn:
            rows = conn.execute(
                select(StreamFile.path, StreamFile.file_hash, StreamFile.first_seen).where(
                    StreamFile.dataflow_id == self.t.dataflow_id, StreamFile.state == PARTIAL
                )
            ).all()
        keep = {self._staging_file(r.path, r.file_hash, r.first_seen).name for r in rows}
        for e in old:
            if e.name not in keep:
                Path(e.path).unlink(missing_ok=True)

    def in_progress(self) -> list[dict[str, Any]]:
        """Files being received: path, chunks staged and expected, bytes staged."""
        return in_progress(self.home, self.t.dataflow_id)


def destination_folder_id(conn: Connection, dataflow_id: int) -> int | None:
    """The folder a stream dataflow's events are about: its destination **by id**, as recorded when the
    dataflow was made or edited. Never looked up by path: after the destination is moved, another
    user's folder of the old name must not receive events naming the stream's files."""
    return conn.execute(select(Dataflow.dest_folder_id).where(Dataflow.id == dataflow_id)).scalar()


def in_progress(home: Home, dataflow_id: int, limit: int = 100) -> list[dict[str, Any]]:
    """A stream dataflow's partial files (at most ``limit``), oldest first."""
    with home.db.read() as conn:
        rows = conn.execute(
            select(StreamFile.path, StreamFile.chunks_staged, StreamFile.n_chunks, StreamFile.bytes_staged)
            .where(StreamFile.dataflow_id == dataflow_id, StreamFile.state == PARTIAL, StreamFile.chunks_staged > 0)
            .order_by(StreamFile.first_seen)
            .limit(limit)
        ).all()
    return [{"path": r.path, "chunks": r.chunks_staged, "of": r.n_chunks, "bytes": r.bytes_staged} for r in rows]


def staged_bytes(home: Home, dataflow_id: int) -> int:
    """Bytes of chunks staged for a dataflow's partial files."""
    with home.db.read() as conn:
        return int(
            conn.execute(
                select(func.coalesce(func.sum(StreamFile.bytes_staged), 0)).where(
                    StreamFile.dataflow_id == dataflow_id, StreamFile.state == PARTIAL
                )
            ).scalar_one()
        )


def remove_orphan_staging(home: Home) -> list[int]:
    """Remove the staging directories of stream dataflows that no longer exist (deleted: their partial
    files were dropped with them); the ids removed. The directories are listed before the dataflows are
    read: a directory is made only for a dataflow that exists, so one made meanwhile is never taken."""
    root = staging_root(home)
    try:
        names = [e.name for e in os.scandir(root) if e.is_dir() and e.name.isdigit()]
    except FileNotFoundError:
        return []
    if not names:
        return []
    with home.db.read() as conn:
        ids = {int(i) for i in conn.execute(select(Dataflow.id)).scalars()}
    gone = sorted(int(n) for n in names if int(n) not in ids)
    for i in gone:
        shutil.rmtree(root / str(i), ignore_errors=True)
    return gone


def _pwrite(fd: int, offset: int, data: bytes) -> None:
    """On the staging thread: a chunk written to its staging file at ``offset`` (an error is the batch's)."""
    view = memoryview(data)
    at = offset
    while view:
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n


def _read_range(fd: int, offset: int, size: int, path: str) -> Iterator[bytes]:
    """``size`` bytes of a staging file from ``offset``, in pieces of at most :data:`READ_PIECE`."""
    end = offset + size
    while offset < end:
        piece = os.pread(fd, min(READ_PIECE, end - offset), offset)
        if not piece:
            raise BadChunk(
                f"{path!r}: its staging file is shorter than its staged chunks; send the file again", path=path
            )
        yield piece
        offset += len(piece)


def staging_root(home: Home) -> Path:
    """Where stream dataflows keep their staging files: beside a local blob store's files (servers on
    one database share the blob store, and a file's chunks may be staged by any of them; also the
    same file system, so staging costs no extra disk), else in the home."""
    root = getattr(home.blobs, "root", None)
    base = Path(root) if isinstance(root, Path | str) else Path(home.settings.home)
    return base / ".staging" / "streams"


def _prepare(value: bytes, blobs: BlobStore) -> _Ready | BadChunk:
    """Decode one message (its chunk hash checked) and, for a one-chunk file, write its blob: the
    work that needs no database, done on a worker thread (SHA-512, BLAKE3 and file I/O release the GIL)."""
    try:
        chunk = decode(value)
        ready = _Ready(chunk, chunk.path)
    except BadChunk as exc:
        return exc
    if chunk.total == 1 and chunk.offset == 0:
        # Not durable yet: the batch syncs the blob store once before it commits. A blob of a
        # message that turns out stale or refused is garbage the collector removes.
        ready.blob = blobs.put(chunk.data, durable=False)
    return ready


class Prepared:
    """A batch being prepared (:func:`_prepare`: decoded, chunk hashes checked, one-chunk files' blobs
    written) on two threads, in windows of at most :data:`WINDOW_MESSAGES` messages or
    :data:`WINDOW_BYTES`. The first :data:`WINDOWS_AHEAD` windows start at once, so a consumer can have
    the next batch prepared while the current one commits; each further window is started when one
    before is taken (memory: a few windows, not the whole batch, decoded at a time; the prepare
    threads are not left idle while the database takes a window)."""

    def __init__(self, batch: Sequence[Message], blobs: BlobStore) -> None:
        self.blobs = blobs
        self.windows: list[list[Message]] = []
        size = 0
        for m in batch:
            if not self.windows or len(self.windows[-1]) >= WINDOW_MESSAGES or size >= WINDOW_BYTES:
                self.windows.append([])
                size = 0
            self.windows[-1].append(m)
            size += len(m.value or b"")
        self._ahead = [self._submit(i) for i in range(WINDOWS_AHEAD)]

    def _submit(self, i: int) -> list[Future[_Ready | BadChunk]]:
        if i >= len(self.windows):
            return []
        return [_pool().submit(_prepare, m.value or b"", self.blobs) for m in self.windows[i]]

    def __iter__(self) -> Iterator[list[tuple[Message, _Ready | BadChunk]]]:
        for i, w in enumerate(self.windows):
            current = self._ahead.pop(0)
            self._ahead.append(self._submit(i + WINDOWS_AHEAD))
            yield [(m, f.result()) for m, f in zip(w, current, strict=True)]


@functools.cache
def _hasher_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-hash")


@functools.cache
def _b3_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-b3")


@functools.cache
def _stage_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-stage")


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="stream-prepare")


#: The changeable columns of ``stream_files`` (:meth:`_FileRow.columns`).
FILE_COLUMNS = "state, file_hash, n_chunks, mtime, chunks_staged, bytes_staged, messages, first_seen, updated_at"
_INSERT_FILE_SQL = f"INSERT INTO stream_files (dataflow_id, path, {FILE_COLUMNS})"


@functools.cache
def _update_file_sql(paramstyle: str, dialect: str) -> str:
    """The driver-level UPDATE of a ``stream_files`` row's :data:`FILE_COLUMNS` by its id (the last value)."""
    mark = "?" if paramstyle == "qmark" else "%s"
    json_mark = f"CAST({mark} AS jsonb)" if dialect == "postgresql" else mark
    sets = ", ".join(f"{c} = {json_mark if c == 'messages' else mark}" for c in FILE_COLUMNS.split(", "))
    return f"UPDATE stream_files SET {sets} WHERE id = {mark}"


_INSERT_OFFSET_SQL = "INSERT INTO stream_offsets (dataflow_id, topic, partition, next_offset, updated_at)"


@functools.cache
def _offsets_sql(paramstyle: str, partitions: int = 0, lock: bool = False) -> str:
    """The driver-level ``SELECT partition, next_offset`` of a dataflow's and topic's offsets: every stored
    partition's, or (``partitions`` > 0) those of that many partitions given after them, in partition order,
    with ``lock`` locked (``FOR UPDATE``)."""
    mark = "?" if paramstyle == "qmark" else "%s"
    sql = f"SELECT partition, next_offset FROM stream_offsets WHERE dataflow_id = {mark} AND topic = {mark}"
    if partitions:
        sql += f" AND partition IN ({', '.join([mark] * partitions)}) ORDER BY partition"
    return sql + (" FOR UPDATE" if lock else "")


# Statements built once and given their values as parameters: SQLAlchemy caches their compiled form
# (``.values(...)`` with literal values would be keyed and compiled again for every chunk).
_INSERT_CHUNK = insert(StreamChunk)
_UPDATE_OFFSET = update(StreamOffset).where(
    StreamOffset.dataflow_id == bindparam("dataflow_id_"),
    StreamOffset.topic == bindparam("topic_"),
    StreamOffset.partition == bindparam("partition_"),
)
_STAGED_CHUNKS = select(StreamChunk.offset, StreamChunk.size).where(StreamChunk.file_id == bindparam("file_id_"))


def _mismatch(row: _FileRow) -> BadChunk:
    return BadChunk(
        f"{row.path!r}: the reassembled file does not match its SHA-512 ({row.n_chunks} chunk(s)); "
        "nothing was committed; send the file again",
        path=row.path,
    )


def _generation(row: Any) -> Generation:
    return Generation(bytes.fromhex(row.file_hash), int(row.n_chunks), row.mtime)


__all__ = [
    "Message",
    "Outcome",
    "Prepared",
    "Stager",
    "Target",
    "destination_folder_id",
    "in_progress",
    "remove_orphan_staging",
    "staged_bytes",
]
