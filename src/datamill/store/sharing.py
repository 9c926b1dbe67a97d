"""Sharing a folder: grants to users and groups, public read, and who holds what on a folder.

How grants combine into one level is :mod:`datamill.store.access`; this module writes and lists
them. Functions run inside the caller's transaction and append their events to it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from datamill import events
from datamill.db.models import Folder, FolderAccess, Group, GroupAccess, User
from datamill.errors import NotFound
from datamill.store import groups
from datamill.store.access import Actor, Level, level_on
from datamill.store.folders import readable_folder
from datamill.store.names import split_path


def share(conn: Connection, actor: Actor, path: str, user: str, level: Level) -> None:
    """Grant ``user`` a level on a folder (``Level.NONE`` removes the grant); needs admin on it."""
    row = readable_folder(conn, actor, path, Level.ADMIN)
    uid = conn.execute(select(User.id).where(User.name == user)).scalar()
    if uid is None:
        raise NotFound(f"no user {user!r}", user=user)
    conn.execute(delete(FolderAccess).where(FolderAccess.folder_id == row.id, FolderAccess.user_id == uid))
    if level > Level.NONE:
        conn.execute(insert(FolderAccess).values(folder_id=row.id, user_id=uid, level=int(level)))
    events.append(
        conn,
        "access.changed",
        actor_id=actor.id,
        folder_id=row.id,
        data={"path": row.path, "user": user, "level": level.name.lower()},
    )


def share_group(conn: Connection, actor: Actor, path: str, group: str, level: Level) -> None:
    """Grant a group a level on a folder (``Level.NONE`` removes the grant); see ``Store.share_group``."""
    row = readable_folder(conn, actor, path, Level.ADMIN)
    if level > Level.NONE:
        gid = groups.visible_group(conn, actor, group).id
    else:
        gid = conn.execute(
            select(Group.id)
            .join(GroupAccess, GroupAccess.group_id == Group.id)
            .where(Group.name == group, GroupAccess.folder_id == row.id)
        ).scalar()
        if gid is None:
            gid = groups.visible_group(conn, actor, group).id  # nothing to remove; just say why not
    conn.execute(delete(GroupAccess).where(GroupAccess.folder_id == row.id, GroupAccess.group_id == gid))
    if level > Level.NONE:
        conn.execute(insert(GroupAccess).values(folder_id=row.id, group_id=gid, level=int(level)))
    events.append(
        conn,
        "folder.shared",
        actor_id=actor.id,
        folder_id=row.id,
        data={"path": row.path, "group": group, "level": level.name.lower()},
    )


def set_public(conn: Connection, actor: Actor, path: str, public: bool) -> None:
    """Switch public read access on a folder; needs admin on it."""
    row = readable_folder(conn, actor, path, Level.ADMIN)
    conn.execute(update(Folder).where(Folder.id == row.id).values(public_read=public))
    events.append(
        conn,
        "access.changed",
        actor_id=actor.id,
        folder_id=row.id,
        data={"path": row.path, "public_read": public},
    )


def access_list(conn: Connection, actor: Actor, path: str) -> list[dict[str, Any]]:
    """The grants on a folder (not inherited ones): ``{"user", "level"}``, then ``{"group", "level"}``."""
    row = readable_folder(conn, actor, path, Level.READ)
    rows = conn.execute(
        select(User.name, FolderAccess.level)
        .join(User, User.id == FolderAccess.user_id)
        .where(FolderAccess.folder_id == row.id)
        .order_by(User.name)
    )
    out: list[dict[str, Any]] = [{"user": n, "level": Level(lv).name.lower()} for n, lv in rows]
    by_group = conn.execute(
        select(Group.name, GroupAccess.level)
        .join(Group, Group.id == GroupAccess.group_id)
        .where(GroupAccess.folder_id == row.id)
        .order_by(Group.name)
    )
    return out + [{"group": n, "level": Level(lv).name.lower()} for n, lv in by_group]


def my_level(conn: Connection, actor: Actor, path: str) -> Level:
    """The actor's effective level on a folder (NONE if it does not exist)."""
    norm = "/".join(split_path(path))
    if not conn.execute(select(Folder.id).where(Folder.path == norm)).first():
        return Level.NONE
    return level_on(conn, actor, norm)
