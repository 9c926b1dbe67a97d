"""Read-only look-ups the engine, dataflows and provenance use.

The store owns the folder, item, version and blob tables: code outside :mod:`datamill.store`
asks these functions instead of querying them. Each takes a ``Connection`` so that callers can
use it inside their own transaction (a trigger reads a folder's items in the transaction that
records the run). They check no access unless their name says so: callers decide who may see
what (:mod:`datamill.store.access`, :mod:`datamill.store.visibility`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, Row, and_, bindparam, func, select

from datamill.db.models import Folder, Item, User, Version
from datamill.store.access import Actor, Level, level_on, memo
from datamill.store.items import current_items, item_info
from datamill.store.records import ItemInfo

# --- folders


#: built once: a trigger asks for a few folder ids per run, and building the statement cost more than running it
_FOLDER_ID = select(Folder.id).where(Folder.path == bindparam("path"))


def folder_id(conn: Connection, path: str) -> int | None:
    """The id of the folder at the normalised ``path``, None if there is none (read once per block
    of :func:`~datamill.store.access.remembered`)."""
    kept = memo(conn)
    key = ("folder", path)
    if kept is not None and key in kept:
        fid: int | None = kept[key]
        return fid
    found = conn.execute(_FOLDER_ID, {"path": path}).scalar()
    fid = None if found is None else int(found)
    if kept is not None:
        kept[key] = fid
    return fid


_FOLDER_IDS = select(Folder.path, Folder.id).where(Folder.path.in_(bindparam("paths", expanding=True)))


def remember_folder_ids(conn: Connection, paths: Iterable[str]) -> None:
    """Read the ids of the folders at ``paths`` in one statement, for :func:`folder_id` to answer
    from inside this block of :func:`~datamill.store.access.remembered` (outside one: nothing).

    A trigger's run asks for its source and its destination: one statement instead of two.
    """
    kept = memo(conn)
    if kept is None:
        return
    wanted = [p for p in dict.fromkeys(paths) if ("folder", p) not in kept]
    if not wanted:
        return
    found = {str(path): int(fid) for path, fid in conn.execute(_FOLDER_IDS, {"paths": wanted})}
    for path in wanted:
        kept[("folder", path)] = found.get(path)


def item_places(conn: Connection, ids: Iterable[int]) -> dict[int, tuple[str, str]]:
    """``{item id: (folder path, name)}`` of the items of ``ids`` that exist (no access check)."""
    wanted = list(ids)
    found: dict[int, tuple[str, str]] = {}
    for i in range(0, len(wanted), 500):
        rows = conn.execute(
            select(Item.id, Folder.path, Item.name)
            .join(Folder, Folder.id == Item.folder_id)
            .where(Item.id.in_(wanted[i : i + 500]))
        )
        found.update({int(r.id): (r.path, r.name) for r in rows})
    return found


def folder_paths(conn: Connection, ids: Iterable[int]) -> dict[int, str]:
    """Folder id -> path for the folders among ``ids`` that exist (the caller checked access)."""
    wanted = sorted(set(ids))
    out: dict[int, str] = {}
    for i in range(0, len(wanted), 500):
        rows = conn.execute(select(Folder.id, Folder.path).where(Folder.id.in_(wanted[i : i + 500])))
        out.update({int(fid): path for fid, path in rows.tuples()})
    return out


def folders_below(conn: Connection, path: str) -> dict[int, str]:
    """Folder id -> path of every folder strictly below the normalised ``path`` (no access check)."""
    rows = conn.execute(select(Folder.id, Folder.path).where(Folder.path.startswith(path + "/", autoescape=True)))
    return {int(fid): p for fid, p in rows.tuples()}


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
    wanted = None if only is None else set(only)
    if wanted is not None and len(wanted) <= 500:  # beyond that, filtering the listing is as good
        rows = conn.execute(_SOME_CURRENT, {"folder_id": folder_id, "ids": sorted(wanted)})
    else:
        rows = conn.execute(_ALL_CURRENT, {"folder_id": folder_id})
    return [item_info(r, folder) for r in rows if wanted is None or r[0] in wanted]


#: the statements of :func:`items_with_current_versions`, built once (a trigger asks per landed item)
_ALL_CURRENT = current_items().where(Item.folder_id == bindparam("folder_id")).order_by(Item.name)
_SOME_CURRENT = _ALL_CURRENT.where(Item.id.in_(bindparam("ids", expanding=True)))


def count_items(conn: Connection, folder_id: int) -> int:
    """How many items the folder holds (not counting subfolders)."""
    return int(conn.execute(select(func.count()).select_from(Item).where(Item.folder_id == folder_id)).scalar_one())


# --- provenance


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
