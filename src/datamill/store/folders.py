"""Folders: the tree of paths, created, listed, moved and deleted under access checks.

Functions here run inside the caller's transaction (``conn``) and append their events to it;
:class:`datamill.store.store.Store` opens the transactions and removes blob files after commit.
A folder the caller may not read gets the same answer as a missing one, so names never leak.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, Row, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from datamill import events, hooks
from datamill.db.models import Folder, FolderAccess, GroupAccess, Item, User, Version
from datamill.errors import AlreadyExists, InvalidInput, NotEmpty, NotFound
from datamill.store.access import Actor, Level, level_on, require
from datamill.store.metadata import changed, check_metadata
from datamill.store.names import check_name, join_path, split_path
from datamill.store.records import ROOT, FolderInfo


def folder_row(conn: Connection, path: str) -> Row[Any]:
    """The row of the folder at the normalised ``path``, without an access check."""
    row = conn.execute(select(Folder).where(Folder.path == path)).first()
    if row is None:
        raise NotFound(f"no folder {path!r}, or you may not see it", path=path)
    return row


def folder_info(conn: Connection, row: Row[Any]) -> FolderInfo:
    """A folder row as callers see it."""
    owner = None
    if row.owner_id is not None:
        owner = conn.execute(select(User.name).where(User.id == row.owner_id)).scalar()
    parent = row.path.rsplit("/", 1)[0] if "/" in row.path else (ROOT if row.parent_id is None else None)
    return FolderInfo(
        id=row.id,
        path=row.path,
        name=row.name,
        parent=parent,
        owner=owner,
        public_read=row.public_read,
        metadata=dict(row.metadata or {}),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def readable_folder(conn: Connection, actor: Actor, path: str, needed: Level = Level.READ) -> Row[Any]:
    """The row of the folder at ``path`` if the actor has ``needed`` on it; raise otherwise."""
    parts = split_path(path)
    norm = "/".join(parts)
    if not norm:
        raise InvalidInput("the root is not a folder; name one, e.g. 'Raw Data'")
    row = conn.execute(select(Folder).where(Folder.path == norm)).first()
    if row is None:
        raise NotFound(f"no folder {norm!r}, or you may not see it", path=norm)
    require(conn, actor, norm, needed)
    return row


def create_folder(
    conn: Connection,
    actor: Actor,
    path: str,
    parents: bool,
    exist_ok: bool,
    metadata: Mapping[str, Any] | None,
    public_read: bool,
) -> FolderInfo:
    """Create the folder at ``path`` (and missing parents when ``parents``)."""
    parts = split_path(path)
    if not parts:
        raise InvalidInput("give a folder path, e.g. 'Raw Data/2026'")
    meta = check_metadata(metadata or {})
    if actor.anonymous:
        raise NotFound("sign in to create folders")

    def no_folder(sub: str) -> NotFound:
        # The same answer for a missing folder and one the caller may not read: no existence oracle.
        hint = "" if parents else "; pass parents=True (or --parents) to create missing folders"
        return NotFound(f"no folder {sub!r}, or you may not see it{hint}", path=sub)

    parent: Row[Any] | None = None
    readable = False  # a level holds below the folder it is granted on: one readable ancestor decides
    for depth, name in enumerate(parts):
        sub = "/".join(parts[: depth + 1])
        row = conn.execute(select(Folder).where(Folder.path == sub)).first()
        last = depth == len(parts) - 1
        if row is not None:
            if not readable:
                if level_on(conn, actor, sub) < Level.READ:
                    raise no_folder(sub)
                readable = True
            if last:
                if not exist_ok:
                    raise AlreadyExists(f"folder {sub!r} already exists", path=sub)
                return folder_info(conn, row)
            parent = row
            continue
        if not last and not parents:
            raise no_folder(sub)
        if parent is not None:
            require(conn, actor, parent.path, Level.WRITE)
        now = time.time()
        try:
            with conn.begin_nested():
                fid = conn.execute(
                    insert(Folder)
                    .values(
                        parent_id=parent.id if parent else None,
                        name=name,
                        path=sub,
                        owner_id=actor.id,
                        public_read=public_read if last else False,
                        meta=meta if last else {},
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(Folder.id)
                ).scalar_one()
        except IntegrityError:
            # Another writer created it between our look-up and insert (PostgreSQL only).
            row = conn.execute(select(Folder).where(Folder.path == sub)).one()
            if last:
                require(conn, actor, sub, Level.READ)
                if not exist_ok:
                    raise AlreadyExists(f"folder {sub!r} already exists", path=sub) from None
                return folder_info(conn, row)
            parent = row
            continue
        events.append(conn, "folder.created", actor_id=actor.id, folder_id=fid, data={"path": sub, "name": name})
        parent = conn.execute(select(Folder).where(Folder.id == fid)).one()
    assert parent is not None
    return folder_info(conn, parent)


def list_folders(conn: Connection, actor: Actor, path: str) -> list[FolderInfo]:
    """The subfolders of ``path`` (the top level for the root) that the actor may read."""
    if split_path(path):
        parent = readable_folder(conn, actor, path)
        rows = conn.execute(select(Folder).where(Folder.parent_id == parent.id).order_by(Folder.name)).all()
        return [folder_info(conn, r) for r in rows]
    rows = conn.execute(select(Folder).where(Folder.parent_id.is_(None)).order_by(Folder.name)).all()
    return [folder_info(conn, r) for r in rows if level_on(conn, actor, r.path) >= Level.READ]


def move_folder(conn: Connection, actor: Actor, path: str, new_parent: str, new_name: str | None) -> FolderInfo:
    """Move a folder (with everything below it) under ``new_parent`` ("" for the top level)."""
    row = readable_folder(conn, actor, path, Level.ADMIN)
    target: Row[Any] | None = None
    if split_path(new_parent):
        target = readable_folder(conn, actor, new_parent, Level.WRITE)
        if target.path == row.path or target.path.startswith(row.path + "/"):
            raise InvalidInput(f"cannot move {row.path!r} into itself", path=row.path)
    name = check_name(new_name, "folder name") if new_name else row.name
    new_path = join_path(target.path if target else "", name)
    split_path(new_path)
    if new_path == row.path:
        return folder_info(conn, row)
    if conn.execute(select(Folder.id).where(Folder.path == new_path)).first():
        raise AlreadyExists(f"folder {new_path!r} already exists", path=new_path)
    old = row.path
    below = select(Folder.path).where(Folder.path.startswith(old + "/", autoescape=True))
    for sub in conn.execute(below).scalars():
        split_path(new_path + sub[len(old) :])  # refuses a path the move would make too long
    # Rewrite the materialized paths of the whole subtree in one statement.
    prefix_len = len(old)
    conn.execute(
        update(Folder)
        .where(Folder.path.startswith(old + "/", autoescape=True))
        .values(path=new_path + func.substr(Folder.path, prefix_len + 1))
    )
    conn.execute(
        update(Folder)
        .where(Folder.id == row.id)
        .values(path=new_path, name=name, parent_id=target.id if target else None, updated_at=time.time())
    )
    events.append(conn, "folder.moved", actor_id=actor.id, folder_id=row.id, data={"from": old, "to": new_path})
    if hooks.folder_moved is not None:
        hooks.folder_moved(conn, actor.id, old, new_path)
    return folder_info(conn, folder_row(conn, new_path))


def delete_folder(conn: Connection, actor: Actor, path: str, recursive: bool) -> tuple[int, set[str]]:
    """Delete a folder (with ``recursive``, everything below it): ``(items removed, their digests)``.

    The caller releases the digests' blobs once this transaction has committed.
    """
    row = readable_folder(conn, actor, path, Level.ADMIN)
    sub_ids = [row.id] + list(
        conn.execute(select(Folder.id).where(Folder.path.startswith(row.path + "/", autoescape=True))).scalars()
    )
    n_items = conn.execute(select(func.count()).select_from(Item).where(Item.folder_id.in_(sub_ids))).scalar_one()
    if not recursive and (n_items or len(sub_ids) > 1):
        raise NotEmpty(
            f"folder {row.path!r} holds {n_items} items and {len(sub_ids) - 1} subfolders; "
            "pass --recursive to delete them too",
            path=row.path,
        )
    digests: set[str] = set()
    item_ids = list(conn.execute(select(Item.id).where(Item.folder_id.in_(sub_ids))).scalars())
    if item_ids:
        digests.update(conn.execute(select(Version.digest).where(Version.item_id.in_(item_ids))).scalars())
        events.append_many(
            conn,
            [
                {
                    "kind": "item.deleted",
                    "actor_id": actor.id,
                    "item_id": iid,
                    "folder_id": fid,
                    "data": {"name": name, "reason": "folder deleted"},
                }
                for iid, fid, name in conn.execute(
                    select(Item.id, Item.folder_id, Item.name).where(Item.id.in_(item_ids))
                )
            ],
        )
        conn.execute(delete(Version).where(Version.item_id.in_(item_ids)))
        conn.execute(delete(Item).where(Item.id.in_(item_ids)))
    conn.execute(delete(FolderAccess).where(FolderAccess.folder_id.in_(sub_ids)))
    conn.execute(delete(GroupAccess).where(GroupAccess.folder_id.in_(sub_ids)))
    # Children first: the parent FK would refuse otherwise where cascades are off.
    for fid in sorted(sub_ids, reverse=True):
        conn.execute(delete(Folder).where(Folder.id == fid))
    events.append(
        conn,
        "folder.deleted",
        actor_id=actor.id,
        folder_id=row.id,
        data={"path": row.path, "items": len(item_ids)},
    )
    return len(item_ids), digests


def set_folder_metadata(
    conn: Connection, actor: Actor, path: str, set_: Mapping[str, Any] | None, unset: Iterable[str]
) -> FolderInfo:
    """Set and unset metadata keys on a folder."""
    changes = check_metadata(set_ or {})
    unset = list(unset)
    row = readable_folder(conn, actor, path, Level.WRITE)
    meta = changed(row.metadata, changes, unset)
    conn.execute(update(Folder).where(Folder.id == row.id).values(meta=meta, updated_at=time.time()))
    events.append(
        conn,
        "metadata.changed",
        actor_id=actor.id,
        folder_id=row.id,
        data={"path": row.path, "set": sorted(changes), "unset": sorted(unset)},
    )
    return folder_info(conn, folder_row(conn, row.path))
