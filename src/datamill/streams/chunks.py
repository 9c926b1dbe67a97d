"""OpenMSIStream's file-chunk messages: one Kafka message per chunk of a file, msgpack-encoded.

Written from the wire table (docs/streams.md), with ``msgpack`` and ``hashlib`` only. A message's
value is a msgpack array of 9 fields, or 10 with the file's mtime (OpenMSIStream 1.8.6.1+):

``[filename, file_hash, chunk_hash, offset, chunk_i, n_chunks, subdir, filename_append, data, (mtime)]``

Hashes are raw SHA-512 digests (64 bytes): ``chunk_hash`` of ``data``, ``file_hash`` of the whole file.
The key is ``{subdir with / as _}_{filename}_chunk_{i}_of_{n}``; readers use the value only.

Unlike OpenMSIStream, every path is checked (no ``..``, no absolute or empty segments) and an empty
file is sent as one empty chunk instead of nothing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from datamill.errors import BadChunk, InvalidInput, Unavailable

#: OpenMSIStream's default chunk size (512 KiB).
DEFAULT_CHUNK_SIZE = 1 << 19
#: Bytes a message adds around its chunk (names, hashes, framing); brokers must allow chunk size + this.
MESSAGE_OVERHEAD = 4096
#: The largest chunk size accepted (64 MiB).
MAX_CHUNK_SIZE = 1 << 26
HASH_SIZE = 64
EMPTY_HASH = hashlib.sha512(b"").digest()
#: How much of a file is read at once while hashing it.
_READ = 1 << 20


def msgpack_module() -> Any:
    """The ``msgpack`` module (the ``[kafka]`` extra), imported only when a stream is used."""
    try:
        import msgpack
    except ImportError:  # pragma: no cover - the extra is installed wherever tests run
        raise Unavailable("streams need the Kafka extra: pip install 'datamill[kafka]'") from None
    return msgpack


def check_chunk_size(size: int) -> int:
    """A chunk size must be a power of two from 1 KiB to 64 MiB (OpenMSIStream insists on a power of two)."""
    if not isinstance(size, int) or size < 1024 or size > MAX_CHUNK_SIZE or size & (size - 1):
        raise InvalidInput(
            f"chunk size {size!r} is not allowed; use a power of two from 1024 to 67108864 bytes, e.g. 524288"
        )
    return size


def _check_segment(seg: str, whole: str) -> None:
    if seg in ("", ".", ".."):
        what = "an empty segment" if seg == "" else f"a {seg!r} segment"
        raise BadChunk(f"path {whole!r} has {what}; only plain relative paths are accepted", path=whole)
    if "\\" in seg or "\x00" in seg or any(ord(c) < 0x20 for c in seg):
        raise BadChunk(f"path {whole!r} has a backslash or control character; rename the file", path=whole)


def check_relative_path(subdir: str, filename: str) -> str:
    """``subdir/filename`` as a checked relative POSIX path; :class:`BadChunk` for absolute, ``..`` or empty parts."""
    whole = f"{subdir}/{filename}" if subdir else filename
    if subdir.startswith("/") or filename.startswith("/"):
        raise BadChunk(f"path {whole!r} is absolute; only relative paths are accepted", path=whole)
    if "/" in filename:
        raise BadChunk(f"file name {filename!r} contains '/'; the directory goes in the subdir field", path=whole)
    for seg in (subdir.split("/") if subdir else []) + [filename]:
        _check_segment(seg, whole)
    return whole


def _with_append(filename: str, append: str) -> str:
    """OpenMSIStream inserts ``filename_append`` before the suffix of the output name."""
    if not append:
        return filename
    p = PurePosixPath(filename)
    return f"{p.stem}{append}{p.suffix}"


def chunk_key(subdir: str, filename: str, index: int, total: int) -> str:
    """The message key OpenMSIStream gives chunk ``index`` (1-based) of ``total``."""
    return f"{'_'.join(subdir.split('/'))}_{filename}_chunk_{index}_of_{total}"


@dataclass(frozen=True, slots=True)
class Chunk:
    """One decoded chunk message."""

    filename: str
    file_hash: bytes
    chunk_hash: bytes
    offset: int
    index: int
    total: int
    subdir: str
    filename_append: str
    data: bytes
    mtime: float | None = None

    @property
    def path(self) -> str:
        """The file's checked relative path (``subdir/name``), ``filename_append`` applied."""
        return check_relative_path(self.subdir, _with_append(self.filename, self.filename_append))

    @property
    def key(self) -> str:
        """The message key OpenMSIStream would give this chunk."""
        return chunk_key(self.subdir, self.filename, self.index, self.total)

    def encode(self, with_mtime: bool = True) -> bytes:
        """The message value: 10 fields with ``with_mtime`` (the mtime, 0.0 when unknown), else 9."""
        fields: list[Any] = [
            self.filename,
            self.file_hash,
            self.chunk_hash,
            self.offset,
            self.index,
            self.total,
            self.subdir,
            self.filename_append,
            self.data,
        ]
        if with_mtime:
            fields.append(float(self.mtime or 0.0))
        packed: bytes = msgpack_module().packb(fields, use_bin_type=True)
        return packed


def _text(value: Any, name: str) -> str:
    if isinstance(value, str):
        return value
    raise BadChunk(f"chunk field {name} must be text, not {type(value).__name__}")


def _int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadChunk(f"chunk field {name} must be a whole number >= {minimum}, not {value!r}")
    return value


def _bin(value: Any, name: str, size: int | None = None) -> bytes:
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        want = f"{size} bytes" if size is not None else "bytes"
        raise BadChunk(f"chunk field {name} must be {want}")
    return value


def decode(value: bytes) -> Chunk:
    """A message value as a :class:`Chunk`; :class:`BadChunk` when it is not msgpack, has 9 or 10 fields of
    the wrong types, a chunk hash that does not match its data, or a path that is not plainly relative."""
    msgpack = msgpack_module()
    try:
        # raw=False keeps msgpack str (text) apart from bin (bytes), so a field of the wrong kind shows.
        fields = msgpack.unpackb(value, raw=False, strict_map_key=False)
    except UnicodeDecodeError:
        raise BadChunk("message has a text field that is not UTF-8") from None
    except Exception as exc:  # msgpack raises several unrelated classes for garbage
        raise BadChunk(f"message is not msgpack ({type(exc).__name__}); is the producer OpenMSIStream?") from None
    if not isinstance(fields, list | tuple):
        raise BadChunk(f"message is msgpack but a {type(fields).__name__}, not a chunk array")
    if len(fields) not in (9, 10):
        raise BadChunk(f"chunk message has {len(fields)} fields; OpenMSIStream sends 9 or 10")
    mtime: float | None = None
    if len(fields) == 10:
        raw = fields[9]
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise BadChunk(f"chunk field file_mtime must be a number, not {type(raw).__name__}")
        mtime = float(raw) or None
    chunk = Chunk(
        filename=_text(fields[0], "filename"),
        file_hash=_bin(fields[1], "file_hash", HASH_SIZE),
        chunk_hash=_bin(fields[2], "chunk_hash", HASH_SIZE),
        offset=_int(fields[3], "chunk_offset_write", 0),
        index=_int(fields[4], "chunk_i", 1),
        total=_int(fields[5], "n_total_chunks", 1),
        subdir=_text(fields[6], "subdir_str"),
        filename_append=_text(fields[7], "filename_append"),
        data=_bin(fields[8], "data"),
        mtime=mtime,
    )
    if chunk.index > chunk.total:
        raise BadChunk(f"chunk {chunk.index} of {chunk.total}: its number is past the count")
    path = chunk.path  # checks the path
    if hashlib.sha512(chunk.data).digest() != chunk.chunk_hash:
        where = f"chunk {chunk.index} of {chunk.total} of {path!r}"
        raise BadChunk(f"{where}: SHA-512 of its data does not match", path=path)
    return chunk


def file_sha512(path: Path) -> bytes:
    """The raw SHA-512 of a file, read in pieces."""
    h = hashlib.sha512()
    with open(path, "rb") as f:
        while piece := f.read(_READ):
            h.update(piece)
    return h.digest()


def chunk_file(
    path: Path, rootdir: Path, chunk_size: int = DEFAULT_CHUNK_SIZE, with_mtime: bool = True
) -> Iterator[tuple[str, bytes]]:
    """``(key, value)`` messages for one file below ``rootdir``, read in pieces (never whole in memory).

    The file is hashed first, then read again chunk by chunk; a file that changes in between is
    refused (its chunks would not add up to the hash sent with them). An empty file is one empty chunk.
    """
    check_chunk_size(chunk_size)
    rel = path.relative_to(rootdir).as_posix()
    subdir = PurePosixPath(rel).parent.as_posix()
    subdir = "" if subdir == "." else subdir
    check_relative_path(subdir, path.name)
    before = os.stat(path)
    file_hash = file_sha512(path)
    size = before.st_size
    total = max(1, -(-size // chunk_size))
    mtime = float(before.st_mtime)
    with open(path, "rb") as f:
        for i in range(total):
            data = f.read(chunk_size)
            if (i < total - 1 and len(data) != chunk_size) or (i == total - 1 and f.read(1)):
                raise InvalidInput(f"{rel}: the file changed while it was being sent; send it again")
            digest = hashlib.sha512(data).digest()
            chunk = Chunk(path.name, file_hash, digest, i * chunk_size, i + 1, total, subdir, "", data, mtime)
            yield chunk.key, chunk.encode(with_mtime)
    after = os.stat(path)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise InvalidInput(f"{rel}: the file changed while it was being sent; send it again")
