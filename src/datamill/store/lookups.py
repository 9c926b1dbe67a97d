"""Read-only look-ups on the store's tables for the layers above it.

SQL on the folder, item, version and user tables lives in :mod:`datamill.store`; the engine,
dataflows and provenance ask these functions instead of copying queries. Each takes an open
:class:`~sqlalchemy.Connection` (the caller's transaction) and checks no access: callers apply
their own rule (:mod:`datamill.store.access`) to what they get.
"""

from __future__ import annotations

from sqlalchemy import Connection, Row, select

from datamill.db.models import Folder, Item, User, Version

# --- provenance


def folder_id(conn: Connection, path: str) -> int | None:
    """The id of the folder at ``path``, or None when there is none."""
    fid = conn.execute(select(Folder.id).where(Folder.path == path)).scalar()
    return None if fid is None else int(fid)


def user_name(conn: Connection, uid: int) -> str | None:
    """The name of user ``uid``, or None when there is none (deleted)."""
    name = conn.execute(select(User.name).where(User.id == uid)).scalar()
    return None if name is None else str(name)


def version_in_place(conn: Connection, vid: int) -> Row[Version, str, str] | None:
    """Version ``vid`` (every column) with ``item_name`` and ``folder`` (its path); None when it is gone."""
    return conn.execute(
        select(Version, Item.name.label("item_name"), Folder.path.label("folder"))
        .join(Item, Item.id == Version.item_id)
        .join(Folder, Folder.id == Item.folder_id)
        .where(Version.id == vid)
    ).first()
