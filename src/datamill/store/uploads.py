"""Uploads: bytes in, versions out, once per ``Idempotency-Key``.

The access check comes before any byte is stored; the bytes are durable before the transaction
that records them; the versions are written by the one writer (:mod:`datamill.store.versions`).
An upload whose answer was lost can be sent again with the same key and gets the version the
first request made (:func:`commit_upload`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, BinaryIO

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from datamill.db.database import Database
from datamill.db.models import IdempotencyKey
from datamill.errors import IdempotencyKeyReused, InvalidInput
from datamill.store.access import Actor, Level
from datamill.store.blobs import BlobInfo, BlobStore, BlobWriter
from datamill.store.folders import create_folder, readable_folder
from datamill.store.garbage import discard_upload
from datamill.store.metadata import check_metadata
from datamill.store.names import check_name, split_path
from datamill.store.records import VersionInfo
from datamill.store.versions import NewVersion, write_versions

#: How long an upload's Idempotency-Key is remembered (a retry after that makes a new version).
IDEMPOTENCY_TTL = 24 * 3600.0


def check_idempotency_key(key: str) -> str:
    """An ``Idempotency-Key`` must be 1-255 visible ASCII characters (a UUID is a good choice)."""
    if not 0 < len(key) <= 255 or any(not 0x21 <= ord(c) <= 0x7E for c in key):
        raise InvalidInput(
            "Idempotency-Key must be 1-255 visible ASCII characters, e.g. a UUID; send a fresh one per upload"
        )
    return key


def check_writable(db: Database, actor: Actor, folder: str) -> None:
    """Raise unless the actor may write in ``folder``; called before any byte is stored."""
    with db.read() as conn:
        readable_folder(conn, actor, folder, Level.WRITE)


def begin_upload(
    db: Database,
    blobs: BlobStore,
    actor: Actor,
    folder: str,
    name: str,
    expected_digest: str | None,
    expected_size: int | None,
) -> BlobWriter:
    """Check the name and write access, then open a blob writer for a new version of ``folder/name``."""
    check_name(name, "item name")
    check_writable(db, actor, folder)
    return blobs.writer(expected_digest, expected_size)


def put(
    db: Database,
    blobs: BlobStore,
    actor: Actor,
    folder: str,
    name: str,
    data: bytes | BinaryIO | Iterable[bytes],
    content_type: str | None,
    metadata: Mapping[str, Any] | None,
    expected_digest: str | None,
    created_via: str,
    progress: Callable[[int], None] | None = None,
) -> VersionInfo:
    """Store bytes (bytes, a readable file or chunks) as a new version of ``folder/name``.

    A readable file goes to :meth:`BlobStore.put_file` (on local storage a kernel copy, hashed
    as it lands); ``progress`` is called with each count of bytes stored (not for bytes in memory).
    """
    meta = check_metadata(metadata or {})
    if not isinstance(data, bytes | bytearray | memoryview) and hasattr(data, "read"):
        check_name(name, "item name")
        check_writable(db, actor, folder)  # before any byte is stored
        blob = blobs.put_file(data, expected_digest, progress=progress)  # type: ignore[arg-type]
    else:
        writer = begin_upload(db, blobs, actor, folder, name, expected_digest, None)
        try:
            if isinstance(data, bytes | bytearray | memoryview):
                writer.write(bytes(data))
            else:
                for chunk in data:
                    writer.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
            blob = writer.commit()
        finally:
            writer.abort()
    with db.write() as conn:
        return commit_version(conn, blobs, actor, folder, name, blob, content_type, meta, created_via)


def commit_version(
    conn: Connection,
    blobs: BlobStore,
    actor: Actor,
    folder: str,
    name: str,
    blob: BlobInfo,
    content_type: str | None,
    metadata: Mapping[str, Any] | None,
    created_via: str,
    run_id: int | None = None,
    task_id: int | None = None,
) -> VersionInfo:
    """Record stored bytes as the next version of ``folder/name`` in the caller's transaction."""
    name = check_name(name, "item name")
    meta = check_metadata(metadata or {})
    frow = readable_folder(conn, actor, folder, Level.WRITE)
    (info,) = write_versions(
        conn, blobs, actor, frow, [NewVersion(name, blob, content_type)], meta, created_via, run_id, task_id
    )
    return info


def put_many(
    db: Database,
    blobs: BlobStore,
    actor: Actor,
    folder: str,
    entries: Iterable[tuple[str, bytes | BinaryIO]],
    metadata: Mapping[str, Any] | None,
    created_via: str,
    item_metadata: Sequence[Mapping[str, Any] | None] | None = None,
) -> list[VersionInfo]:
    """Store many (small) files in one folder: one sync, one transaction (see ``Store.put_many``)."""
    meta = check_metadata(metadata or {})
    entries = list(entries)
    per_item: list[dict[str, Any] | None] = [None] * len(entries)
    if item_metadata is not None:
        if len(item_metadata) != len(entries):
            raise InvalidInput(
                f"item_metadata: {len(item_metadata)} entries for {len(entries)} files; give one per file"
            )
        per_item = [check_metadata(m) if m else None for m in item_metadata]
    check_writable(db, actor, folder)
    new = [
        NewVersion(check_name(name, "item name"), blobs.put(data, durable=False), metadata=m)
        for (name, data), m in zip(entries, per_item, strict=True)
    ]
    if not new:
        return []
    # The bytes must be durable before any version points at them.
    blobs.sync()
    with db.write() as conn:
        frow = readable_folder(conn, actor, folder, Level.WRITE)
        return write_versions(conn, blobs, actor, frow, new, meta, created_via)


#: One folder's part of :func:`put_folders`: ``(folder, [(name, bytes)], [item metadata or None] or None)``.
FolderBatch = tuple[str, Sequence[tuple[str, bytes]], Sequence[Mapping[str, Any] | None] | None]


def put_folders(
    db: Database,
    blobs: BlobStore,
    actor: Actor,
    batches: Sequence[FolderBatch],
    created_via: str,
    create: bool = False,
) -> list[list[VersionInfo]]:
    """Small files into several folders at once: one sync, one transaction (see ``Store.put_folders``)."""
    checked: list[tuple[str, list[NewVersion]]] = []
    prepared: list[tuple[str, list[tuple[str, bytes, dict[str, Any] | None]]]] = []
    for folder, entries, item_metadata in batches:
        if item_metadata is not None and len(item_metadata) != len(entries):
            raise InvalidInput(
                f"item_metadata: {len(item_metadata)} entries for {len(entries)} files in {folder!r}; give one per file"
            )
        metas = [check_metadata(m) if m else None for m in item_metadata or [None] * len(entries)]
        prepared.append(
            (folder, [(check_name(n, "item name"), d, m) for (n, d), m in zip(entries, metas, strict=True)])
        )
    # Access first (and the folders, when asked), before any byte is stored.
    with db.write() if create else db.read() as conn:
        for folder, _files in prepared:
            if create:
                create_folder(conn, actor, folder, True, True, None, False)
            readable_folder(conn, actor, folder, Level.WRITE)
    for folder, files in prepared:
        checked.append((folder, [NewVersion(n, blobs.put(d, durable=False), metadata=m) for n, d, m in files]))
    if not any(new for _f, new in checked):
        return [[] for _ in checked]
    # The bytes must be durable before any version points at them: one sync for every folder.
    blobs.sync()
    with db.write() as conn:
        return [
            write_versions(conn, blobs, actor, readable_folder(conn, actor, folder, Level.WRITE), new, {}, created_via)
            if new
            else []
            for folder, new in checked
        ]


def commit_upload(
    db: Database,
    blobs: BlobStore,
    actor: Actor,
    folder: str,
    name: str,
    blob: BlobInfo,
    content_type: str | None,
    metadata: Mapping[str, Any] | None,
    idempotency_key: str,
) -> tuple[VersionInfo, bool]:
    """Record an upload once per ``idempotency_key``; returns ``(version, replayed)`` (see ``Store.commit_upload``)."""
    key = check_idempotency_key(idempotency_key)
    name = check_name(name, "item name")
    what = json.dumps(["/".join(split_path(folder)), name, blob.digest, blob.size])
    fingerprint = hashlib.sha256(what.encode()).hexdigest()
    replay: dict[str, Any] | None = None
    with db.write() as conn:
        if _claim(conn, actor, key, fingerprint):
            info = commit_version(conn, blobs, actor, folder, name, blob, content_type, metadata, "upload")
            conn.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.user_id == actor.id, IdempotencyKey.key == key)
                .values(response=info.to_dict())
            )
            return info, False
        # Taken by a committed upload (on PostgreSQL the insert waited for it to commit).
        row = conn.execute(
            select(IdempotencyKey.fingerprint, IdempotencyKey.response).where(
                IdempotencyKey.user_id == actor.id, IdempotencyKey.key == key
            )
        ).one()
        if row.fingerprint == fingerprint:
            replay = dict(row.response)
    # The bytes this request stored are referred to by nothing new: let them go if unused.
    discard_upload(db, blobs, blob)
    if replay is None:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was already used for another upload (other bytes or another item); "
            "send a new key for a new upload",
            key=key,
        )
    names = {f.name for f in dataclasses.fields(VersionInfo)}
    return VersionInfo(**{k: v for k, v in replay.items() if k in names}), True


def _claim(conn: Connection, actor: Actor, key: str, fingerprint: str) -> bool:
    """Claim ``key`` for the actor in this transaction; False if a committed upload holds it.

    Keys older than :data:`IDEMPOTENCY_TTL` are forgotten first.
    """
    now = time.time()
    conn.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < now - IDEMPOTENCY_TTL))
    ins = pg_insert(IdempotencyKey) if conn.dialect.name == "postgresql" else sqlite_insert(IdempotencyKey)
    claimed = conn.execute(
        ins.values(user_id=actor.id, key=key, fingerprint=fingerprint, response={}, created_at=now)
        .on_conflict_do_nothing(index_elements=["user_id", "key"])
        .returning(IdempotencyKey.key)  # rowcount is not reliable here (-1 with psycopg)
    ).first()
    return claimed is not None
