"""Batch uploads: many small files in one ``multipart/form-data`` request (``POST /api/v1/content/{folder}``).

The body holds, in this order:

* a part named ``manifest`` (no file name): a JSON object ``{"metadata": {...}, "files": [{"name":
  "a.csv", "size": 12, "digest": "blake3:...", "metadata": {...}}, ...]}``; ``metadata`` (for all
  files) and each file's ``metadata`` (merged over it) are optional, ``size`` and ``digest``
  required: they are how a damaged or cut body is told from a good one;
* one part per file, named ``file``, its ``filename`` the item name, in the manifest's order.

The whole body is read (at most :data:`MAX_BATCH_BYTES`) before anything is stored, and every file
is checked against the manifest (count, names, sizes, digests): a body that is cut short, damaged
or does not match stores nothing and says what is wrong. Then the files land in one transaction
(``Store.put_many``): all or none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from datamill.errors import DigestMismatch, InvalidInput, TooLarge, UploadIncomplete
from datamill.limits import loads_bounded
from datamill.store.blobs import check_digest
from datamill.store.blobs.base import digest_bytes

#: Files per batch request, at most.
MAX_BATCH_FILES = 1000
#: Bytes per batch request (the whole multipart body), at most; larger files go one by one (PUT).
MAX_BATCH_BYTES = 64 * 1024 * 1024
#: The manifest part, at most.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


@dataclass(frozen=True)
class BatchFile:
    """One file of a batch: its item name, bytes and metadata (None: the batch's)."""

    name: str
    data: bytes
    metadata: dict[str, Any] | None


@dataclass(frozen=True)
class Batch:
    """A parsed, checked batch: the metadata for all files and the files in order."""

    metadata: dict[str, Any]
    files: list[BatchFile]


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary of a ``multipart/form-data`` content type; InvalidInput otherwise."""
    from python_multipart.multipart import parse_options_header

    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        raise InvalidInput(
            "a batch upload is a multipart/form-data body (a 'manifest' part, then one 'file' part per file); "
            f"this request's Content-Type is {(content_type or 'missing')[:80]!r}"
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidInput("the multipart Content-Type has no boundary; send 'multipart/form-data; boundary=...'")
    return boundary


def _split(body: bytes, boundary: bytes) -> list[_Part]:
    """The parts of a multipart body; UploadIncomplete when it is cut short, InvalidInput when malformed."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    parts: list[_Part] = []
    header: list[bytes] = [b"", b""]
    ended = [False]

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        if header[0].strip().lower() == b"content-disposition":
            _, opts = parse_options_header(header[1])
            parts[-1].name = opts.get(b"name", b"").decode("utf-8", "replace")
            fname = opts.get(b"filename")
            parts[-1].filename = None if fname is None else fname.decode("utf-8", "replace")
        header[0], header[1] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data += data[start:end]

    def on_end() -> None:
        ended[0] = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": lambda: parts.append(_Part()),
            "on_part_data": on_part_data,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_end": on_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # python-multipart raises its own errors for malformed bodies
        raise InvalidInput(f"the multipart body is malformed ({type(exc).__name__}); nothing was stored") from None
    if not ended[0]:
        raise UploadIncomplete(
            "the multipart body ends before its closing boundary (cut short?); nothing was stored. "
            "Send the batch again",
            received=len(body),
        )
    return parts


def _manifest(part: _Part | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if part is None or part.name != "manifest" or part.filename is not None:
        raise InvalidInput("the first part of a batch upload must be the JSON 'manifest' (no filename)")
    if len(part.data) > MAX_MANIFEST_BYTES:
        raise TooLarge(f"the manifest is larger than {MAX_MANIFEST_BYTES // (1024 * 1024)} MiB; send smaller batches")
    try:
        text = bytes(part.data).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the manifest is not UTF-8 JSON; nothing was stored") from None
    doc = loads_bounded(text, "the manifest")
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise InvalidInput('the manifest must be a JSON object with a "files" list')
    meta = doc.get("metadata") or {}
    if not isinstance(meta, dict):
        raise InvalidInput('manifest "metadata" must be a JSON object')
    files = doc["files"]
    if len(files) > MAX_BATCH_FILES:
        raise TooLarge(f"a batch holds at most {MAX_BATCH_FILES} files, this one {len(files)}; send smaller batches")
    for i, f in enumerate(files):
        if not isinstance(f, dict) or not isinstance(f.get("name"), str):
            raise InvalidInput(f'manifest files[{i}] must be an object with a "name"')
        if (
            isinstance(f.get("size"), bool)
            or not isinstance(f.get("size"), int)
            or not isinstance(f.get("digest"), str)
        ):
            raise InvalidInput(f'manifest files[{i}] ({f["name"][:100]!r}) needs "size" (bytes) and "digest"')
        check_digest(f["digest"])
        if f.get("metadata") is not None and not isinstance(f["metadata"], dict):
            raise InvalidInput(f'manifest files[{i}] ({f["name"][:100]!r}): "metadata" must be a JSON object')
    return meta, files


def parse_batch(body: bytes, content_type: str | None) -> Batch:
    """Parse and check a batch upload body (see the module); raises before anything is stored."""
    parts = _split(body, boundary_of(content_type))
    meta, entries = _manifest(parts[0] if parts else None)
    given = parts[1:]
    if len(given) != len(entries):
        raise UploadIncomplete(
            f"the manifest lists {len(entries)} files but the body holds {len(given)}; nothing was stored",
            received=len(body),
        )
    files: list[BatchFile] = []
    for i, (entry, part) in enumerate(zip(entries, given, strict=True)):
        name = entry["name"]
        if part.name != "file" or part.filename != name:
            raise InvalidInput(
                f"part {i + 2} should be the file {name[:100]!r} (named 'file', filename {name[:100]!r}); "
                "nothing was stored"
            )
        data = bytes(part.data)
        if len(data) != entry["size"]:
            raise UploadIncomplete(
                f"file {name[:100]!r}: {len(data)} bytes arrived, the manifest says {entry['size']}; "
                "nothing was stored",
                received=len(data),
                expected=entry["size"],
            )
        if digest_bytes(data) != entry["digest"]:
            raise DigestMismatch(
                f"file {name[:100]!r}: the bytes do not hash to the manifest's digest (damaged on the way?); "
                "nothing was stored"
            )
        files.append(BatchFile(name, data, entry.get("metadata")))
    return Batch(meta, files)
