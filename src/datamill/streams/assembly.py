"""Reassembling files from chunks: which generation of a path wins, and a directory receiver.

The generation rules are OpenMSIStream's (1.8.8 ``add_chunk``): another ``file_hash`` for a path is
another version of the file. Against the version in progress, one with more chunks replaces it, one
with fewer is stale; with the same count, the strictly newer mtime wins. The same hash with another
chunk count is corruption. :func:`decide` states the rules once; the directory receiver below
(``datamill stream receive``) and the stream dataflow's database staging both follow it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from datamill.errors import BadChunk
from datamill.streams.chunks import MAX_CHUNK_SIZE, Chunk

#: Staging files of the directory receiver live here, inside the output directory.
PARTIAL_DIR = ".datamill-partial"


class Decision(StrEnum):
    """What to do with an incoming chunk, given the version of its file in progress."""

    ADD = "add"  # a chunk of the version in progress (or the first chunk of a new file)
    DUPLICATE = "duplicate"  # an offset already held: ignore
    SWITCH = "switch"  # a newer generation: drop the partial one, start over with this chunk
    STALE = "stale"  # an older generation: drop the chunk


@dataclass(frozen=True, slots=True)
class Generation:
    """The version of a file in progress: its hash, chunk count and producer's mtime."""

    file_hash: bytes
    total: int
    mtime: float | None


def decide(current: Generation | None, chunk: Chunk, have_offset: bool) -> Decision:
    """The generation rule for ``chunk`` against ``current`` (``have_offset``: its offset is already held)."""
    if current is None:
        return Decision.ADD
    if chunk.file_hash == current.file_hash:
        if chunk.total != current.total:
            raise BadChunk(
                f"{chunk.path!r}: chunks with one file hash give two chunk counts ({current.total} and "
                f"{chunk.total}); the producer is corrupt",
                path=chunk.path,
            )
        return Decision.DUPLICATE if have_offset else Decision.ADD
    if chunk.total != current.total:
        return Decision.SWITCH if chunk.total > current.total else Decision.STALE
    if (chunk.mtime or 0.0) > (current.mtime or 0.0):
        return Decision.SWITCH
    return Decision.STALE


def check_bounds(chunk: Chunk) -> None:
    """A chunk's data must fit where its offset says (no writes past what its count allows)."""
    if chunk.offset > (chunk.total - 1) * MAX_CHUNK_SIZE:
        raise BadChunk(f"{chunk.path!r}: chunk offset {chunk.offset} is impossible", path=chunk.path)


@dataclass
class _Partial:
    generation: Generation
    staging: Path
    offsets: set[int] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)


@dataclass
class Landed:
    """A file the receiver completed, verified and moved into place."""

    path: str
    size: int


class DirectoryReceiver:
    """Rebuilds files in a directory from chunks, staging each on disk (memory stays flat).

    Partial files are staging files under ``DIR/.datamill-partial``; a complete one is checked
    against its SHA-512 and renamed into place (a rename: a reader never sees half a file).
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.staging_dir = self.root / PARTIAL_DIR
        self.partials: dict[str, _Partial] = {}
        #: (path, file hash) of files already landed: their late duplicates are dropped, not landed again.
        self.done: set[tuple[str, bytes]] = set()

    def _staging_file(self, path: str, file_hash: bytes) -> Path:
        name = hashlib.sha256(path.encode() + file_hash).hexdigest()
        return self.staging_dir / name

    def add(self, chunk: Chunk) -> Landed | None:
        """Take one chunk; the file it completes, if any. :class:`BadChunk` for a file whose hash fails."""
        check_bounds(chunk)
        path = chunk.path
        if (path, chunk.file_hash) in self.done:
            return None
        partial = self.partials.get(path)
        current = partial.generation if partial else None
        decision = decide(current, chunk, partial is not None and chunk.offset in partial.offsets)
        if decision in (Decision.DUPLICATE, Decision.STALE):
            return None
        if decision == Decision.SWITCH and partial is not None:
            partial.staging.unlink(missing_ok=True)
            partial = None
        if partial is None:
            self.staging_dir.mkdir(parents=True, exist_ok=True)
            partial = _Partial(
                Generation(chunk.file_hash, chunk.total, chunk.mtime), self._staging_file(path, chunk.file_hash)
            )
            partial.staging.touch()
            self.partials[path] = partial
        with open(partial.staging, "r+b") as f:
            f.seek(chunk.offset)
            f.write(chunk.data)
        partial.offsets.add(chunk.offset)
        if len(partial.offsets) < partial.generation.total:
            return None
        return self._finish(path, partial)

    def _finish(self, path: str, partial: _Partial) -> Landed:
        del self.partials[path]
        self.done.add((path, partial.generation.file_hash))
        h = hashlib.sha512()
        with open(partial.staging, "rb") as f:
            while piece := f.read(1 << 20):
                h.update(piece)
        if h.digest() != partial.generation.file_hash:
            partial.staging.unlink(missing_ok=True)
            raise BadChunk(f"{path!r}: the reassembled file does not match its SHA-512; it was not written", path=path)
        target = self.root.joinpath(*path.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        size = partial.staging.stat().st_size
        os.replace(partial.staging, target)
        if partial.generation.mtime:
            os.utime(target, (partial.generation.mtime, partial.generation.mtime))
        return Landed(path, size)

    def expire(self, older_than: float) -> list[str]:
        """Drop partial files started more than ``older_than`` seconds ago; their paths."""
        now = time.monotonic()
        gone = [p for p, part in self.partials.items() if now - part.started > older_than]
        for p in gone:
            self.partials.pop(p).staging.unlink(missing_ok=True)
        return gone

    def close(self) -> None:
        """Remove the staging directory when nothing is left in it."""
        for part in self.partials.values():
            part.staging.unlink(missing_ok=True)
        self.partials.clear()
        with contextlib.suppress(OSError):  # other files are still in it
            self.staging_dir.rmdir()
