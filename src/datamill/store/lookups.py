"""Read-only look-ups on the store's tables for the layers above it.

SQL on the folder, item, version and user tables lives in :mod:`datamill.store`; the engine,
dataflows and provenance ask these functions instead of copying queries. Each takes an open
:class:`~sqlalchemy.Connection` (the caller's transaction) and checks no access: callers apply
their own rule (:mod:`datamill.store.access`) to what they get.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import Connection, Row, and_, select

from datamill.db.models import Folder, Item, User, Version
from datamill.store.access import Actor

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


# --- engine


#: names per query: well under every database's limit on bound parameters
_CHUNK = 500


@dataclass(frozen=True)
class PublishedVersion:
    """A version as the engine's publishing rules need it: its bytes, and the run and task that made it."""

    folder: str
    name: str
    version_id: int
    digest: str
    #: the run that committed it (None: uploaded, or committed by no run)
    run_id: int | None
    #: the task that committed it, if a task did
    task_id: int | None


def current_versions(
    conn: Connection, wanted: Collection[tuple[str, str]], *, lock: bool = False
) -> dict[tuple[str, str], PublishedVersion]:
    """The current version of each ``(folder path, item name)`` of ``wanted`` that has one.

    A few queries per 500 names instead of one per item. With ``lock`` (PostgreSQL) the items are
    locked first (``FOR UPDATE``, in id order), so what is read stays true until the transaction
    commits; SQLite's write transaction already excludes every other writer.
    """
    names = sorted({name for _folder, name in wanted})
    folders = sorted({folder for folder, _name in wanted})
    out: dict[tuple[str, str], PublishedVersion] = {}
    for i in range(0, len(names), _CHUNK):
        chunk = names[i : i + _CHUNK]
        if lock:
            conn.execute(
                select(Item.id)
                .join(Folder, Folder.id == Item.folder_id)
                .where(Folder.path.in_(folders), Item.name.in_(chunk))
                .order_by(Item.id)
                .with_for_update(of=Item)
            ).all()
        rows = conn.execute(
            select(Folder.path, Item.name, Version.id, Version.digest, Version.run_id, Version.task_id)
            .join(Item, Item.folder_id == Folder.id)
            .join(Version, and_(Version.item_id == Item.id, Version.number == Item.current_version))
            .where(Folder.path.in_(folders), Item.name.in_(chunk))
        )
        for r in rows:
            if (r.path, r.name) in wanted:
                out[(r.path, r.name)] = PublishedVersion(r.path, r.name, int(r.id), str(r.digest), r.run_id, r.task_id)
    return out


def item_version(conn: Connection, item_id: int, number: int) -> PublishedVersion | None:
    """Version ``number`` of the item ``item_id``, or None if there is no such version."""
    r = conn.execute(
        select(Folder.path, Item.name, Version.id, Version.digest, Version.run_id, Version.task_id)
        .join(Item, Item.folder_id == Folder.id)
        .join(Version, Version.item_id == Item.id)
        .where(Item.id == item_id, Version.number == number)
    ).first()
    if r is None:
        return None
    return PublishedVersion(r.path, r.name, int(r.id), str(r.digest), r.run_id, r.task_id)


def actor_by_id(conn: Connection, user_id: int) -> Actor | None:
    """The user ``user_id`` as an :class:`Actor`, or None if that user is gone."""
    u = conn.execute(select(User.id, User.name, User.is_admin).where(User.id == user_id)).first()
    return None if u is None else Actor(u.id, u.name, u.is_admin)
