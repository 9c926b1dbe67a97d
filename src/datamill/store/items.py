"""Items and their versions, read: one item, a folder's listing, a search, one version, the history.

Also deleting an item and setting its metadata. Writing a version is :mod:`datamill.store.versions`.
Functions run inside the caller's transaction; what the actor may not see is redacted through
:class:`~datamill.store.visibility.Visibility` before anything is returned.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, Row, String, and_, delete, or_, select, type_coerce, update

from datamill import events
from datamill.db.models import Folder, Item, User, Version
from datamill.errors import InvalidInput, NotFound
from datamill.store.access import Actor, Level, level_on
from datamill.store.folders import readable_folder
from datamill.store.metadata import changed, check_metadata, decode, matches
from datamill.store.names import join_path, split_item_path
from datamill.store.records import ItemInfo, VersionInfo
from datamill.store.visibility import Visibility


def current_items() -> Any:
    """Items joined with their current version: the columns :func:`item_info` reads, in its order.

    The metadata comes as raw text on SQLite (``type_coerce``): most items have ``{}``, and
    skipping the JSON type's per-row processing is most of what makes a 100k listing fast.
    """
    return select(
        Item.id,
        Item.folder_id,
        Item.name,
        type_coerce(Item.meta, String).label("meta"),
        Item.created_at,
        Item.updated_at,
        Version.number,
        Version.digest,
        Version.size,
        Version.content_type,
        Version.id.label("vid"),
    ).join(Version, and_(Version.item_id == Item.id, Version.number == Item.current_version))


def item_info(r: Any, folder: str) -> ItemInfo:
    """A row of :func:`current_items` in ``folder`` as an :class:`ItemInfo`."""
    iid, _fid, name, meta, created, updated, number, digest, size, ctype, vid = r
    return ItemInfo(iid, folder, name, decode(meta), number, digest, size, ctype, created, updated, vid)


def item_row(conn: Connection, actor: Actor, path: str, needed: Level = Level.READ) -> tuple[Row[Any], Row[Any]]:
    """The folder and item rows of ``folder/name`` if the actor has ``needed`` on the folder."""
    folder, name = split_item_path(path)
    frow = readable_folder(conn, actor, folder, needed)
    irow = conn.execute(select(Item).where(Item.folder_id == frow.id, Item.name == name)).first()
    if irow is None:
        raise NotFound(f"no item {name!r} in {frow.path!r}", path=join_path(frow.path, name))
    return frow, irow


def version_info(conn: Connection, frow: Row[Any], irow: Row[Any], v: Row[Any]) -> VersionInfo:
    """A version row (of item ``irow`` in folder ``frow``) as callers see it."""
    by = conn.execute(select(User.name).where(User.id == v.created_by)).scalar() if v.created_by else None
    return VersionInfo(
        item_id=irow.id,
        version_id=v.id,
        folder=frow.path,
        name=irow.name,
        version=v.number,
        digest=v.digest,
        size=v.size,
        content_type=v.content_type,
        created_by=by,
        created_via=v.created_via,
        created_at=v.created_at,
        run_id=v.run_id,
        task_id=v.task_id,
    )


def get_item(conn: Connection, actor: Actor, path: str) -> ItemInfo:
    """An item and its current version."""
    frow, irow = item_row(conn, actor, path)
    v = conn.execute(select(Version).where(Version.item_id == irow.id, Version.number == irow.current_version)).one()
    info = ItemInfo(
        id=irow.id,
        folder=frow.path,
        name=irow.name,
        metadata=dict(irow.metadata or {}),
        version=v.number,
        digest=v.digest,
        size=v.size,
        content_type=v.content_type,
        created_at=irow.created_at,
        updated_at=irow.updated_at,
        version_id=v.id,
    )
    Visibility(conn, actor).items([info])
    return info


def get_version(conn: Connection, actor: Actor, path: str, version: int | None) -> VersionInfo:
    """One version of an item: the current one unless ``version`` is given."""
    frow, irow = item_row(conn, actor, path)
    number = irow.current_version if version is None else version
    v = conn.execute(select(Version).where(Version.item_id == irow.id, Version.number == number)).first()
    if v is None:
        raise NotFound(
            f"{join_path(frow.path, irow.name)!r} has no version {number}; it has versions 1..{irow.current_version}",
            version=number,
        )
    return version_info(conn, frow, irow, v)


def versions(conn: Connection, actor: Actor, path: str) -> list[VersionInfo]:
    """Every version of an item, oldest first."""
    frow, irow = item_row(conn, actor, path)
    rows = conn.execute(select(Version).where(Version.item_id == irow.id).order_by(Version.number)).all()
    return [version_info(conn, frow, irow, v) for v in rows]


def version_by_id(conn: Connection, actor: Actor, version_id: int) -> VersionInfo:
    """A version by its id (as provenance records it)."""
    v = conn.execute(select(Version).where(Version.id == version_id)).first()
    if v is None:
        raise NotFound(f"no version {version_id}")
    irow = conn.execute(select(Item).where(Item.id == v.item_id)).one()
    frow = conn.execute(select(Folder).where(Folder.id == irow.folder_id)).one()
    if level_on(conn, actor, frow.path) < Level.READ:
        # Asked by id: do not name the folder the caller may not see.
        raise NotFound(f"no version {version_id}")
    return version_info(conn, frow, irow, v)


def list_items(conn: Connection, actor: Actor, folder: str, after: str | None, limit: int | None) -> list[ItemInfo]:
    """Items in a folder by name, with their current versions; page with ``after``/``limit``."""
    frow = readable_folder(conn, actor, folder)
    q = current_items().where(Item.folder_id == frow.id).order_by(Item.name)
    if after is not None:
        q = q.where(Item.name > after)
    if limit is not None:
        q = q.limit(limit)
    path = frow.path
    out = [item_info(r, path) for r in conn.execute(q).tuples()]
    Visibility(conn, actor).items(out)
    return out


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


#: Rows read per statement while a page of a search fills (the filters may drop most of them).
FIND_BATCH = 1000


def find_items(
    conn: Connection,
    actor: Actor,
    folder: str,
    name: str | None,
    metadata: Mapping[str, Any] | None,
    recursive: bool,
    after: str | None = None,
    limit: int | None = None,
) -> list[ItemInfo]:
    """Items under ``folder`` whose name matches the glob ``name`` and whose metadata holds ``metadata``.

    In folder creation order, then by name. Paged with ``after`` (the path of the last item of the
    previous page) and ``limit``: a page shorter than ``limit`` is the last. Rows are read
    :data:`FIND_BATCH` at a time until the page is full, so a search of a large folder holds one
    page in memory, not every item.
    """
    frow = readable_folder(conn, actor, folder)
    folder_q = select(Folder.id, Folder.path).where(
        or_(Folder.id == frow.id, Folder.path.startswith(frow.path + "/", autoescape=True))
        if recursive
        else Folder.id == frow.id
    )
    paths = dict(conn.execute(folder_q).tuples().all())
    q = current_items().where(Item.folder_id.in_(list(paths))).order_by(Item.folder_id, Item.name)
    if name:
        # LIKE narrows cheaply; fnmatch below decides exactly ('[...]' classes, case).
        like = "".join("%" if c == "*" else "_" if c == "?" else _like_escape(c) for c in name)
        if "[" not in name:
            q = q.where(Item.name.like(like, escape="\\"))
    wanted = check_metadata(metadata or {})
    cursor = _find_cursor(after, paths) if after is not None else None
    found: list[ItemInfo] = []
    while limit is None or len(found) < limit:
        page = q if cursor is None else q.where(_past(*cursor))
        rows = conn.execute(page.limit(FIND_BATCH)).all()
        batch = [item_info(r, paths[r.folder_id]) for r in rows if not name or fnmatch.fnmatchcase(r.name, name)]
        # Filter on what the caller may see, so a filter cannot confirm a guess of hidden provenance.
        Visibility(conn, actor).items(batch)
        for info in batch:
            if matches(info.metadata, wanted):
                found.append(info)
                if limit is not None and len(found) == limit:
                    return found
        if len(rows) < FIND_BATCH:
            break
        cursor = (rows[-1].folder_id, rows[-1].name)
    return found


def _find_cursor(after: str, paths: Mapping[int, str]) -> tuple[int, str]:
    """The (folder id, name) a search continues after, from the path of the previous page's last item."""
    folder, name = split_item_path(after)
    for fid, path in paths.items():
        if path == folder:
            return fid, name
    raise InvalidInput(
        f"cannot continue the search after {after!r}: it is not an item path below the folder searched; "
        "pass the path of the last item of the previous page",
        path=after,
    )


def _past(folder_id: int, name: str) -> Any:
    """Rows after (folder id, name) in the search's order."""
    return or_(Item.folder_id > folder_id, and_(Item.folder_id == folder_id, Item.name > name))


def set_item_metadata(
    conn: Connection, actor: Actor, path: str, set_: Mapping[str, Any] | None, unset: Iterable[str]
) -> None:
    """Set and unset metadata keys on an item; no new version is made."""
    changes = check_metadata(set_ or {})
    unset = list(unset)
    frow, irow = item_row(conn, actor, path, Level.WRITE)
    meta = changed(irow.metadata, changes, unset)
    conn.execute(update(Item).where(Item.id == irow.id).values(meta=meta, updated_at=time.time()))
    events.append(
        conn,
        "metadata.changed",
        actor_id=actor.id,
        folder_id=frow.id,
        item_id=irow.id,
        data={"folder": frow.path, "name": irow.name, "set": sorted(changes), "unset": sorted(unset)},
    )


def delete_item(conn: Connection, actor: Actor, path: str) -> set[str]:
    """Delete an item with all its versions; returns their digests, for the caller to release after commit."""
    frow, irow = item_row(conn, actor, path, Level.WRITE)
    digests = set(conn.execute(select(Version.digest).where(Version.item_id == irow.id)).scalars())
    conn.execute(delete(Version).where(Version.item_id == irow.id))
    conn.execute(delete(Item).where(Item.id == irow.id))
    events.append(
        conn,
        "item.deleted",
        actor_id=actor.id,
        folder_id=frow.id,
        item_id=irow.id,
        data={"folder": frow.path, "name": irow.name},
    )
    return digests
