"""Blob rows and garbage collection: holding a blob while a version is recorded, releasing unused ones.

Blob bytes are written before the transaction that records them and removed only after the
transaction that drops their last reference has committed (:func:`release_blobs`), so a crash in
the middle of a delete never leaves a listed item without its bytes. Between the two, whoever is
about to refer to a blob holds its row (:func:`hold_blobs`), so a release running at the same
time either sees the new reference or leaves the file alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, and_, delete, select

from datamill.db.bulk import insert_rows
from datamill.db.database import Database
from datamill.db.models import Blob, Task, TaskOutput, Version
from datamill.errors import BlobNotFound
from datamill.store.blobs import BlobInfo, BlobStore

log = logging.getLogger("datamill.store")

#: Columns whose digests keep a blob alive, each with what else says that a row refers to a blob:
#: item versions, task outputs not kept inline (an inline output's bytes are in its row; the digest
#: index covers only the others, see 0017_outputblobs) and task logs.
BLOB_REFERRERS: list[tuple[Any, Any]] = [
    (Version.digest, None),
    (TaskOutput.digest, TaskOutput.inline.is_(None)),
    (Task.log_digest, None),
]

#: Digests checked (and their files removed) per transaction when blobs are released.
RELEASE_BATCH = 500


def _record(conn: Connection, rows: list[tuple[str, int, float]]) -> None:
    """Insert blob rows ``(digest, size, created_at)``, leaving the ones already there as they are."""
    insert_rows(conn, "INSERT INTO blobs (digest, size, created_at)", rows, " ON CONFLICT (digest) DO NOTHING")


def hold_blobs(conn: Connection, store: BlobStore, blobs: Iterable[BlobInfo]) -> None:
    """Record ``blobs`` and hold their rows until ``conn`` commits; raise if a file is gone.

    Whoever is about to refer to a blob calls this in the transaction that adds the reference.
    The shared row lock (PostgreSQL; SQLite has one writer anyway) keeps :func:`release_blobs`
    from removing the file in between; the file is checked once the row is held, so a release
    that won the race is noticed here and the caller is told to upload again.
    """
    wanted = {b.digest: b for b in blobs}
    if not wanted:
        return
    digests = sorted(wanted)
    now = time.time()
    missing = digests
    for _ in range(3):
        # Usually one round; another only when a release deleted a row between the two statements.
        _record(conn, [(d, wanted[d].size, now) for d in missing])
        if conn.dialect.name == "sqlite":
            # From its insert on (at the latest), the transaction holds SQLite's one write lock until
            # it commits: no release deletes a row in between, so every row is there and held.
            missing = []
            break
        held: set[str] = set()
        for i in range(0, len(missing), RELEASE_BATCH):
            chunk = missing[i : i + RELEASE_BATCH]
            q = select(Blob.digest).where(Blob.digest.in_(chunk)).order_by(Blob.digest).with_for_update(read=True)
            held.update(conn.execute(q).scalars())
        missing = [d for d in missing if d not in held]
        if not missing:
            break
    for digest in digests:
        if digest in missing or not store.exists(digest):
            raise BlobNotFound(
                "the uploaded bytes were removed by a delete that ran at the same time; upload the file again",
                digest=digest,
            )


def release_blobs(db: Database, store: BlobStore, digests: Iterable[str]) -> int:
    """Remove the files of blobs among ``digests`` that nothing refers to; returns how many.

    Called only after the transaction that dropped the references committed: a crash before
    that commit rolls the rows back and their bytes are still there. Each batch runs in its
    own write transaction that locks the blob rows, re-checks every reference, deletes the
    rows and only then unlinks the files, before it commits. An upload of the same bytes
    holds the row (:func:`hold_blobs`), so it either commits its version first (the blob is
    then referenced and kept) or finds the file gone and says so; it never commits a version
    without bytes. A crash after an unlink but before the commit leaves an unreferenced row
    without a file, which :func:`collect_garbage` removes. Failures here are logged, not
    raised: what the caller asked for has already happened, and garbage collection retries.
    """
    todo = sorted(set(digests))
    removed = 0
    for i in range(0, len(todo), RELEASE_BATCH):
        chunk = todo[i : i + RELEASE_BATCH]
        try:
            with db.write() as conn:
                # SKIP LOCKED: a row held by an upload is about to be referenced again; never wait
                # on it (uploads lock in their own order, so waiting could deadlock).
                q = (
                    select(Blob.digest)
                    .where(Blob.digest.in_(chunk))
                    .order_by(Blob.digest)
                    .with_for_update(skip_locked=True)
                )
                locked = list(conn.execute(q).scalars())
                if not locked:
                    continue
                used: set[str] = set()
                for col, refers in BLOB_REFERRERS:
                    which = col.in_(locked) if refers is None else and_(col.in_(locked), refers)
                    used.update(conn.execute(select(col).where(which).distinct()).scalars())
                free = [d for d in locked if d not in used]
                if not free:
                    continue
                conn.execute(delete(Blob).where(Blob.digest.in_(free)))
                for digest in free:
                    store.delete(digest)
                removed += len(free)
        except Exception:
            log.exception("could not remove %d unreferenced blobs; `collect_garbage` will retry", len(chunk))
    return removed


def discard_upload(db: Database, store: BlobStore, blob: BlobInfo) -> None:
    """Remove the bytes of an upload that was not recorded, unless something refers to them."""
    with db.write() as conn:
        _record(conn, [(blob.digest, blob.size, time.time())])
    release_blobs(db, store, [blob.digest])


def collect_garbage(db: Database, store: BlobStore) -> int:
    """Remove every blob that no version (or engine record) refers to; returns how many."""
    with db.read() as conn:
        digests = list(conn.execute(select(Blob.digest)).scalars())
    return release_blobs(db, store, digests)
