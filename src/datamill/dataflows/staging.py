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
they share the staging files). A file is assembled by reading its staging file once, in pieces,
into a blob while hashing it, and is committed only if the whole file's SHA-512 matches; a
one-chunk file never touches a staging file, and its checked chunk hash is its file hash.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update

from datamill import events
from datamill.db.models import StreamChunk, StreamFile, StreamOffset
from datamill.errors import BadChunk, DatamillError
from datamill.events import EventKind
from datamill.home import Home
from datamill.store import folders, lookups
from datamill.store.access import Actor, Level
from datamill.store.blobs import BlobInfo
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
#: A batch of more bytes than this is decoded (and its chunk hashes checked) on two threads.
DECODE_THREADS_OVER = 1 << 21
#: Messages decoded ahead of the one being applied.
DECODE_WINDOW = 8


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


class _Batch:
    """What one batch touched outside the database: staging files open for writing, files to remove
    once it commits, and the versions it lands (written together at its end)."""

    def __init__(self) -> None:
        self.fds: dict[Path, int] = {}
        self.written: set[Path] = set()
        self.unlink: set[Path] = set()
        self.folders: dict[str, Any] = {}
        self.versions: dict[str, list[NewVersion]] = {}
        self.landed = False

    def fd(self, path: Path) -> int:
        fd = self.fds.get(path)
        if fd is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = self.fds[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        return fd

    def write(self, path: Path, offset: int, data: bytes) -> None:
        self.unlink.discard(path)  # staged again after a reject or restart in this batch: keep it
        fd = self.fd(path)
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
        self.written.add(path)

    def sync(self) -> None:
        """Staged bytes reach the disk before the transaction that records them commits."""
        for path in self.written - self.unlink:
            os.fdatasync(self.fds[path])

    def close(self, committed: bool) -> None:
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

    def _staging_file(self, path: str, file_hash: str) -> Path:
        return self.staging_dir / hashlib.sha256(f"{path}\x00{file_hash}".encode()).hexdigest()

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
        """The stored offsets of ``partitions``, their rows created and (PostgreSQL) locked for this transaction."""
        now = time.time()
        have = {
            int(r.partition)
            for r in conn.execute(
                select(StreamOffset.partition).where(
                    StreamOffset.dataflow_id == self.t.dataflow_id, StreamOffset.topic == self.t.topic
                )
            )
        }
        for p in sorted(partitions - have):
            _insert_ignore(
                conn,
                StreamOffset,
                {"dataflow_id": self.t.dataflow_id, "topic": self.t.topic, "partition": p, "next_offset": 0,
                 "updated_at": now},
            )  # fmt: skip
        q = select(StreamOffset.partition, StreamOffset.next_offset).where(
            StreamOffset.dataflow_id == self.t.dataflow_id,
            StreamOffset.topic == self.t.topic,
            StreamOffset.partition.in_(sorted(partitions)),
        )
        if conn.dialect.name == "postgresql":
            q = q.order_by(StreamOffset.partition).with_for_update()
        return {int(r.partition): int(r.next_offset) for r in conn.execute(q)}

    # ------------------------------------------------------------------ one batch

    def apply(self, batch: Sequence[Message]) -> Outcome:
        """Apply ``batch`` (in offset order per partition) in one transaction; see the module docstring."""
        out = Outcome()
        self._b = _Batch()
        committed = False
        try:
            self._apply(batch, out)
            committed = True
        finally:
            self._b.close(committed)
        return out

    def _apply(self, batch: Sequence[Message], out: Outcome) -> None:
        with self.home.db.write() as conn:
            stored = self._lock_offsets(conn, {m.partition for m in batch})
            ends: dict[int, int] = {}
            fresh = [m for m in batch if m.offset >= stored.get(m.partition, 0)]
            decoded = _decode_all(fresh)
            for m in batch:
                if m.offset < stored.get(m.partition, 0):
                    out.skipped += 1  # applied before (a restart, or another member before a rebalance)
                    continue
                ends[m.partition] = max(ends.get(m.partition, 0), m.offset + 1)
                out.messages += 1
                out.bytes += len(m.value or b"")
                self._one(conn, m, out, next(decoded))
            for p, nxt in ends.items():
                conn.execute(
                    update(StreamOffset)
                    .where(
                        StreamOffset.dataflow_id == self.t.dataflow_id,
                        StreamOffset.topic == self.t.topic,
                        StreamOffset.partition == p,
                    )
                    .values(next_offset=nxt, updated_at=time.time())
                )
            for folder, new in self._b.versions.items():
                write_versions(conn, self.home.blobs, self.t.owner, self._b.folders[folder], new, {}, "stream")
            self._reject_events(conn, out.rejected)
            self._b.sync()
            if self._b.landed:
                # The blobs were written without a sync each: one sync makes them durable before the commit.
                self.home.blobs.sync()

    def _one(self, conn: Connection, m: Message, out: Outcome, decoded: Chunk | BadChunk) -> bool:
        """One message (``decoded`` by :func:`_decode_all`); True when it landed a file."""
        try:
            if isinstance(decoded, BadChunk):
                raise decoded
            chunk = decoded
            check_bounds(chunk)
            path = chunk.path
            for seg in path.split("/"):
                check_name(seg, "stream path segment")
            return self._chunk(conn, m, chunk, path, out)
        except (BadChunk, DatamillError) as exc:
            out.rejected.append(f"partition {m.partition} offset {m.offset}: {exc.message}")
            return False

    def _file_row(self, conn: Connection, path: str) -> Any:
        q = select(StreamFile).where(StreamFile.dataflow_id == self.t.dataflow_id, StreamFile.path == path)
        if conn.dialect.name == "postgresql":
            q = q.with_for_update()  # another server may be staging a chunk of the same file
        return conn.execute(q).first()

    def _chunk(self, conn: Connection, m: Message, chunk: Chunk, path: str, out: Outcome) -> bool:
        row = self._file_row(conn, path)
        if row is None and conn.dialect.name == "postgresql":
            # Two servers may see the first chunks of one file at once: one insert wins, both then lock it.
            self._new_file(conn, path, chunk, ignore_conflict=True)
            row = self._file_row(conn, path)
        if row is not None and row.state == LANDED:
            if row.file_hash == chunk.file_hash.hex():
                out.duplicates += 1  # a late copy of a chunk of a file already landed
                return False
            current = None
        else:
            current = None if row is None or row.chunks_staged == 0 else _generation(row)
        have = current is not None and self._has_chunk(conn, row.id, chunk.offset)
        decision = decide(current, chunk, have)
        if decision == Decision.DUPLICATE:
            out.duplicates += 1
            return False
        if decision == Decision.STALE:
            out.stale += 1
            return False
        if row is None:
            row = self._new_file(conn, path, chunk)
        elif current is None or decision == Decision.SWITCH or row.file_hash != chunk.file_hash.hex():
            row = self._restart_file(conn, row, chunk)
        return self._stage(conn, row, m, chunk, path, out)

    def _has_chunk(self, conn: Connection, file_id: int, offset: int) -> bool:
        return (
            conn.execute(
                select(StreamChunk.offset).where(StreamChunk.file_id == file_id, StreamChunk.offset == offset)
            ).first()
            is not None
        )

    def _new_file(self, conn: Connection, path: str, chunk: Chunk, ignore_conflict: bool = False) -> Any:
        now = time.time()
        values = {
            "dataflow_id": self.t.dataflow_id,
            "path": path,
            "state": PARTIAL,
            "file_hash": chunk.file_hash.hex(),
            "n_chunks": chunk.total,
            "mtime": chunk.mtime,
            "chunks_staged": 0,
            "bytes_staged": 0,
            "messages": {},
            "first_seen": now,
            "updated_at": now,
        }
        if ignore_conflict:
            _insert_ignore(conn, StreamFile, values)
            return None
        conn.execute(_INSERT_FILE, values)
        return self._file_row(conn, path)

    def _restart_file(self, conn: Connection, row: Any, chunk: Chunk) -> Any:
        """Make ``row`` the new generation ``chunk`` starts (its staged chunks, if any, dropped)."""
        conn.execute(delete(StreamChunk).where(StreamChunk.file_id == row.id))
        self._b.unlink.add(self._staging_file(row.path, row.file_hash))
        now = time.time()
        _set_file(
            conn,
            row.id,
            state=PARTIAL,
            file_hash=chunk.file_hash.hex(),
            n_chunks=chunk.total,
            mtime=chunk.mtime,
            chunks_staged=0,
            bytes_staged=0,
            messages={},
            first_seen=now,
            updated_at=now,
        )
        return self._file_row(conn, row.path)

    def _stage(self, conn: Connection, row: Any, m: Message, chunk: Chunk, path: str, out: Outcome) -> bool:
        msgs = dict(row.messages or {})
        first, last = msgs.get(str(m.partition), [m.offset, m.offset])
        msgs[str(m.partition)] = [min(first, m.offset), max(last, m.offset)]
        staged = row.chunks_staged + 1
        if staged < row.n_chunks:
            self._b.write(self._staging_file(row.path, row.file_hash), chunk.offset, chunk.data)
            conn.execute(_INSERT_CHUNK, {"file_id": row.id, "offset": chunk.offset, "size": len(chunk.data)})
            _set_file(
                conn,
                row.id,
                chunks_staged=staged,
                bytes_staged=row.bytes_staged + len(chunk.data),
                messages=msgs,
                updated_at=time.time(),
            )
            return False
        return self._land(conn, row, chunk, msgs, path, out)

    def _assemble(self, conn: Connection, row: Any, last: Chunk) -> tuple[BlobInfo, bytes]:
        """The file's blob from its staging file plus ``last``, read once in pieces; with its SHA-512."""
        if row.n_chunks == 1:  # the usual small file: no staging file, one hash pass each
            if last.offset != 0:
                raise BadChunk(f"{row.path!r}: its only chunk starts at byte {last.offset}", path=row.path)
            # decode() checked the chunk hash, the SHA-512 of these very bytes: no second pass.
            return self.home.blobs.put(last.data, durable=False), last.chunk_hash
        staged = conn.execute(
            select(StreamChunk.offset, StreamChunk.size)
            .where(StreamChunk.file_id == row.id)
            .order_by(StreamChunk.offset)
        ).all()
        pieces = sorted(
            [(int(r.offset), int(r.size), None) for r in staged] + [(last.offset, len(last.data), last.data)]
        )
        fd = self._b.fd(self._staging_file(row.path, row.file_hash)) if staged else -1
        writer = self.home.blobs.writer(durable=False)
        h = hashlib.sha512()
        written = 0
        try:
            for offset, size, data in pieces:
                if offset != written:
                    raise BadChunk(
                        f"{row.path!r}: its chunks do not fit together (a chunk at byte {offset}, expected {written})",
                        path=row.path,
                    )
                for piece in [data] if data is not None else _read_range(fd, offset, size, row.path):
                    writer.write(piece)
                    h.update(piece)
                written += size
            blob = writer.commit()
        finally:
            writer.abort()
        return blob, h.digest()

    def _folder(self, conn: Connection, folder: str) -> Any:
        """The destination folder row (made when missing, write access checked), once per batch."""
        frow = self._b.folders.get(folder)
        if frow is None:
            if folder != self.t.destination:
                folders.create_folder(conn, self.t.owner, folder, True, True, None, False)
            frow = self._b.folders[folder] = folders.readable_folder(conn, self.t.owner, folder, Level.WRITE)
        return frow

    def _land(self, conn: Connection, row: Any, last: Chunk, msgs: dict[str, Any], path: str, out: Outcome) -> bool:
        staging = self._staging_file(row.path, row.file_hash)
        try:
            blob, digest = self._assemble(conn, row, last)
            if digest.hex() != row.file_hash:
                raise BadChunk(
                    f"{path!r}: the reassembled file does not match its SHA-512 ({row.n_chunks} chunk(s)); "
                    "nothing was committed; send the file again",
                    path=path,
                )
            folder, _, name = f"{self.t.destination}/{path}".rpartition("/")
            self._folder(conn, folder)
            meta = {
                "stream": {
                    "topic": self.t.topic,
                    "offsets": msgs,
                    "sha512": row.file_hash,
                    "mtime": row.mtime,
                    "path": path,
                    "dataflow": self.t.name,
                    "dataflow_id": self.t.dataflow_id,
                },
                # The keys OpenMSIStream's Girder uploader writes, for tools that read them.
                "KafkaTopic": self.t.topic,
                "dataflow": self.t.name,
            }
            new = NewVersion(check_name(name, "item name"), blob, None, check_metadata(meta))
        except (BadChunk, DatamillError) as exc:
            conn.execute(delete(StreamChunk).where(StreamChunk.file_id == row.id))
            conn.execute(delete(StreamFile).where(StreamFile.id == row.id))
            if row.n_chunks > 1:
                self._b.unlink.add(staging)
            out.rejected.append(exc.message)
            return False
        self._b.versions.setdefault(folder, []).append(new)
        self._b.landed = True
        if row.n_chunks > 1:
            conn.execute(delete(StreamChunk).where(StreamChunk.file_id == row.id))
            self._b.unlink.add(staging)
        _set_file(
            conn, row.id, state=LANDED, chunks_staged=row.n_chunks, bytes_staged=0, messages={}, updated_at=time.time()
        )
        out.files.append(path)
        return True

    def _reject_events(self, conn: Connection, rejected: list[str]) -> None:
        if not rejected:
            return
        folder_id = lookups.folder_id(conn, self.t.destination)
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
            ]
            for r in rows:
                conn.execute(delete(StreamChunk).where(StreamChunk.file_id == r.id))
                conn.execute(delete(StreamFile).where(StreamFile.id == r.id))
            self._reject_events(conn, reasons)
        for r in rows:
            self._staging_file(r.path, r.file_hash).unlink(missing_ok=True)
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
                select(StreamFile.path, StreamFile.file_hash).where(
                    StreamFile.dataflow_id == self.t.dataflow_id, StreamFile.state == PARTIAL
                )
            ).all()
        keep = {self._staging_file(r.path, r.file_hash).name for r in rows}
        for e in old:
            if e.name not in keep:
                Path(e.path).unlink(missing_ok=True)

    def in_progress(self) -> list[dict[str, Any]]:
        """Files being received: path, chunks staged and expected, bytes staged."""
        return in_progress(self.home, self.t.dataflow_id)


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


def _decode_one(value: bytes) -> Chunk | BadChunk:
    try:
        return decode(value)
    except BadChunk as exc:
        return exc


def _decode_all(batch: Sequence[Message]) -> Iterator[Chunk | BadChunk]:
    """The batch's chunks (or why each is bad), in order; big chunks checked on two threads, since
    hashlib's SHA-512 releases the GIL and the chunk check is the bulk of a big chunk's CPU. Decoded
    a few at a time, so a big batch is not held twice in memory."""
    values = [m.value or b"" for m in batch]
    if len(values) < 2 or sum(map(len, values)) < DECODE_THREADS_OVER:
        yield from map(_decode_one, values)
        return
    for i in range(0, len(values), DECODE_WINDOW):
        yield from _pool().map(_decode_one, values[i : i + DECODE_WINDOW])


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="stream-decode")


# Statements built once and given their values as parameters: SQLAlchemy caches their compiled form
# (``.values(...)`` with literal values would be keyed and compiled again for every chunk).
_INSERT_FILE = insert(StreamFile)
_INSERT_CHUNK = insert(StreamChunk)
_UPDATE_FILE = update(StreamFile).where(StreamFile.id == bindparam("file_id_"))


def _set_file(conn: Connection, file_id: int, **values: Any) -> None:
    conn.execute(_UPDATE_FILE, {"file_id_": file_id, **values})


def _generation(row: Any) -> Generation:
    return Generation(bytes.fromhex(row.file_hash), int(row.n_chunks), row.mtime)


def _insert_ignore(conn: Connection, model: Any, values: dict[str, Any]) -> None:
    """INSERT that does nothing when the row's key exists (another server inserted it first)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        conn.execute(pg_insert(model).values(**values).on_conflict_do_nothing())
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        conn.execute(sqlite_insert(model).values(**values).on_conflict_do_nothing())


__all__ = ["Message", "Outcome", "Stager", "Target", "in_progress", "staged_bytes"]
