"""The one writer of versions: stored bytes become the next versions of items, with their events.

Every new version goes through :func:`write_versions`, whether one upload, a batch of small files
(``put_many``) or a task's published output: it holds the blobs, creates or bumps the items,
inserts the versions and appends ``item.created``/``item.updated`` events, all in the caller's
transaction and in bulk statements, so a batch of one costs what one ``put`` did and a batch of
thousands a few statements more.
"""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, select, update
from sqlalchemy.exc import IntegrityError

from datamill import events
from datamill.db.bulk import insert_rows
from datamill.db.models import Item, json_text
from datamill.store.access import Actor
from datamill.store.blobs import BlobInfo, BlobStore
from datamill.store.garbage import hold_blobs
from datamill.store.records import VersionInfo

#: Names per ``IN (...)`` look-up of existing items.
CHUNK = 500


def guess_content_type(name: str) -> str:
    """A MIME type from the file name, ``application/octet-stream`` when unknown."""
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


@dataclass(frozen=True)
class NewVersion:
    """Stored bytes to record as the next version of the item ``name`` (the content type guessed when None).

    ``metadata`` (checked by the caller) is merged into this item's metadata over the batch's own.
    """

    name: str
    blob: BlobInfo
    content_type: str | None = None
    metadata: dict[str, Any] | None = None


def write_versions(
    conn: Connection,
    blobs: BlobStore,
    actor: Actor,
    frow: Row[Any],
    new: Sequence[NewVersion],
    meta: dict[str, Any],
    created_via: str,
    run_id: int | None = None,
    task_id: int | None = None,
) -> list[VersionInfo]:
    """Record ``new`` as the next versions of their items in folder ``frow``, in order.

    The caller has checked write access on the folder, the names and ``meta`` (merged into each
    item's metadata). A name may come more than once: each occurrence is its own version, in order.
    The blobs are held first (:func:`~datamill.store.garbage.hold_blobs`), so a release running
    at the same time cannot remove their bytes before this transaction commits.
    """
    if not new:
        return []
    hold_blobs(conn, blobs, [n.blob for n in new])
    now = time.time()
    out: list[VersionInfo] = []
    for part in _distinct_runs(new):
        out += _write(conn, actor, frow, part, meta, created_via, run_id, task_id, now)
    return out


def _distinct_runs(new: Sequence[NewVersion]) -> list[list[NewVersion]]:
    """``new`` cut into consecutive runs without a repeated name (one statement per run cannot bump twice)."""
    runs: list[list[NewVersion]] = [[]]
    seen: set[str] = set()
    for n in new:
        if n.name in seen:
            runs.append([])
            seen = set()
        runs[-1].append(n)
        seen.add(n.name)
    return runs


def _write(
    conn: Connection,
    actor: Actor,
    frow: Row[Any],
    new: list[NewVersion],
    meta: dict[str, Any],
    created_via: str,
    run_id: int | None,
    task_id: int | None,
    now: float,
) -> list[VersionInfo]:
    names = [n.name for n in new]
    metas = {n.name: {**meta, **n.metadata} if n.metadata else meta for n in new}
    item_ids, numbers, created = _bump_items(conn, frow.id, names, metas, now)
    ctypes = {n.name: n.content_type or guess_content_type(n.name) for n in new}
    # A run's names are distinct (_distinct_runs), so are its items: each new version is found by its item.
    vid_of = dict(
        insert_rows(
            conn,
            _VERSION_SQL,
            [
                (item_ids[n.name], numbers[n.name], n.blob.digest, n.blob.size, ctypes[n.name], actor.id,
                 created_via, run_id, task_id, now)
                for n in new
            ],
            " RETURNING item_id, id",
        )
    )  # fmt: skip
    vids = [vid_of[item_ids[n.name]] for n in new]
    events.append_rows(
        conn,
        [
            (
                now,
                "item.created" if n.name in created else "item.updated",
                actor.id,
                frow.id,
                item_ids[n.name],
                run_id,
                task_id,
                None,
                {
                    "folder": frow.path,
                    "name": n.name,
                    "version": numbers[n.name],
                    "version_id": int(vid),
                    "digest": n.blob.digest,
                    "size": n.blob.size,
                },
            )
            for n, vid in zip(new, vids, strict=True)
        ],
    )
    return [
        VersionInfo(
            item_id=item_ids[n.name],
            version_id=int(vid),
            folder=frow.path,
            name=n.name,
            version=numbers[n.name],
            digest=n.blob.digest,
            size=n.blob.size,
            content_type=ctypes[n.name],
            created_by=actor.name,
            created_via=created_via,
            created_at=now,
            run_id=run_id,
            task_id=task_id,
        )
        for n, vid in zip(new, vids, strict=True)
    ]


def _bump_items(
    conn: Connection, folder_id: int, names: list[str], metas: dict[str, dict[str, Any]], now: float
) -> tuple[dict[str, int], dict[str, int], set[str]]:
    """Create the missing items and bump the others' current version: ``(ids, new numbers, created names)``.

    ``metas`` is each name's metadata, merged into what the item holds.
    """
    item_ids: dict[str, int] = {}
    numbers: dict[str, int] = {}
    created: set[str] = set()
    existing = _existing(conn, folder_id, names)
    for attempt in range(3):
        fresh = [n for n in names if n not in existing]
        if not fresh:
            break
        try:
            with conn.begin_nested():
                rows = insert_rows(
                    conn,
                    _ITEM_SQL,
                    [(folder_id, n, json_text(metas[n]), 1, now, now) for n in fresh],
                    " RETURNING id, name",
                    json_at=(2,),
                )
        except IntegrityError:
            # Another writer created some of them between our look-up and insert (PostgreSQL
            # only): those get a next version instead.
            if attempt == 2:
                raise
            existing = _existing(conn, folder_id, names)
            continue
        for iid, n in rows:
            item_ids[n], numbers[n] = int(iid), 1
            created.add(n)
        break
    for n, (iid, old_meta) in existing.items():
        item_ids[n] = iid
        # The UPDATE takes the row lock, so concurrent uploads get distinct version numbers.
        numbers[n] = conn.execute(
            update(Item)
            .where(Item.id == iid)
            .values(current_version=Item.current_version + 1, updated_at=now, meta={**(old_meta or {}), **metas[n]})
            .returning(Item.current_version)
        ).scalar_one()
    return item_ids, numbers, created


#: The rows :func:`write_versions` inserts, by the driver (:func:`~datamill.db.bulk.insert_rows`).
_ITEM_SQL = "INSERT INTO items (folder_id, name, metadata, current_version, created_at, updated_at)"
_VERSION_SQL = (
    "INSERT INTO versions (item_id, number, digest, size, content_type, created_by, created_via, run_id, task_id, "
    "created_at)"
)


def _existing(conn: Connection, folder_id: int, names: list[str]) -> dict[str, tuple[int, Any]]:
    """``name -> (item id, metadata)`` of the items among ``names`` already in the folder."""
    found: dict[str, tuple[int, Any]] = {}
    for i in range(0, len(names), CHUNK):
        q = select(Item.id, Item.name, Item.meta.label("meta")).where(
            Item.folder_id == folder_id, Item.name.in_(names[i : i + CHUNK])
        )
        found.update({r.name: (int(r.id), r.meta) for r in conn.execute(q)})
    return found
