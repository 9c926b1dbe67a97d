"""Read-only look-ups the engine, dataflows and provenance use.

The store owns the folder, item, version and blob tables: code outside :mod:`datamill.store`
asks these functions instead of querying them. Each takes a ``Connection`` so that callers can
use it inside their own transaction (a trigger reads a folder's items in the transaction that
records the run). They check no access unless their name says so: callers decide who may see
what (:mod:`datamill.store.access`, :mod:`datamill.store.visibility`).
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import Connection, and_, func, select

from datamill.db.models import Folder, Item, Version
from datamill.store.access import Actor, Level, level_on
from datamill.store.items import current_items, item_info
from datamill.store.records import ItemInfo

# --- folders


def folder_id(conn: Connection, path: str) -> int | None:
    """The id of the folder at the normalised ``path``, None if there is none."""
    found = conn.execute(select(Folder.id).where(Folder.path == path)).scalar()
    return None if found is None else int(found)


def readable_folder_id(conn: Connection, actor: Actor, path: str) -> int | None:
    """The id of the folder at the normalised ``path`` if it exists and ``actor`` may read it, else None.

    A missing folder and one the actor may not read give the same answer (no existence oracle);
    the existence check matters because a level is inherited from ancestors, so
    :func:`~datamill.store.access.level_on` alone would call a missing folder under a readable
    one readable.
    """
    fid = folder_id(conn, path)
    if fid is None or level_on(conn, actor, path) < Level.READ:
        return None
    return fid


# --- items and versions


def current_version(conn: Connection, folder: str, name: str) -> tuple[int, str] | None:
    """``(version id, digest)`` of the current version of ``folder/name``, None if there is no such item."""
    row = conn.execute(
        select(Version.id, Version.digest)
        .join(Item, and_(Item.id == Version.item_id, Version.number == Item.current_version))
        .join(Folder, Folder.id == Item.folder_id)
        .where(Folder.path == folder, Item.name == name)
    ).first()
    return None if row is None else (int(row.id), str(row.digest))


# --- dataflows and triggers


def items_with_current_versions(
    conn: Connection, folder_id: int, folder: str, only: Collection[int] | None = None
) -> list[ItemInfo]:
    """The items of a folder by name with their current versions; only the ids in ``only`` when given.

    ``folder`` is the folder's path, as the returned records carry it. Metadata is the item's
    stored metadata, unredacted: for the engine, which records inputs as they are.
    """
    q = current_items().where(Item.folder_id == folder_id).order_by(Item.name)
    wanted = None if only is None else set(only)
    if wanted is not None and len(wanted) <= 500:  # beyond that, filtering the listing is as good
        q = q.where(Item.id.in_(sorted(wanted)))
    return [item_info(r, folder) for r in conn.execute(q).tuples() if wanted is None or r[0] in wanted]


def count_items(conn: Connection, folder_id: int) -> int:
    """How many items the folder holds (not counting subfolders)."""
    return int(conn.execute(select(func.count()).select_from(Item).where(Item.folder_id == folder_id)).scalar_one())
