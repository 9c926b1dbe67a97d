"""Copying a home's blobs to another blob store (``datamill blobs migrate``), resumable and verified.

A laptop install grows by moving its blobs from ``HOME/blobs`` to an S3 bucket: every blob the
database knows is read from the old store (its digest checked as it streams) and written to the
new one announced under that digest (checked again on arrival), so a copy that does not match is
refused rather than stored. Blobs the target already holds are skipped, which makes an interrupted
migration resumable: run it again and it carries on. The database is not changed: digests name
bytes wherever they are, so pointing ``blob_url`` at the new store is the whole switch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select

from datamill.db.database import Database
from datamill.db.models import Blob
from datamill.errors import BlobCorrupted, BlobNotFound
from datamill.store.blobs.base import BlobStore


@dataclass
class MigrationReport:
    """What a migration did; ``problems`` lists the blobs it could not copy, with why."""

    total: int = 0
    copied: int = 0
    skipped: int = 0
    bytes_copied: int = 0
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every blob is now in the target."""
        return not self.problems


def migrate_blobs(
    db: Database,
    source: BlobStore,
    target: BlobStore,
    progress: Callable[[MigrationReport, str], None] | None = None,
) -> MigrationReport:
    """Copy every blob the database records from ``source`` to ``target``; see the module's text."""
    with db.read() as conn:
        rows = list(conn.execute(select(Blob.digest, Blob.size).order_by(Blob.digest)))
    report = MigrationReport(total=len(rows))
    for digest, size in rows:
        try:
            if target.exists(digest):
                report.skipped += 1
            else:
                with source.open(digest) as stream:
                    target.put(stream, expected_digest=digest, expected_size=size)
                report.copied += 1
                report.bytes_copied += size
        except (BlobNotFound, BlobCorrupted) as exc:
            # Reported and left out, not fatal: the rest still moves, and the user decides.
            report.problems[digest] = exc.message
        if progress is not None:
            progress(report, digest)
    return report
