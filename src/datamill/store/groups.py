"""Groups of users: folders are shared with a group as with a user, and every member gets the grant.

Who may do what:

* any signed-in user may create a group and becomes its first **group admin**;
* group admins (members with the admin flag) and site admins add and remove members, make
  members group admins, and delete the group; a member may leave on their own;
* a group's details (members, grants) are seen by its members and site admins only; anyone else
  is told the group does not exist, so group names do not leak. The one exception is the same as
  for user names: a folder's grants (``access``, ``folder.shared`` events) name the groups granted
  on it to those who may read that folder.

Levels are resolved in :func:`datamill.store.access.level_on`, which reads memberships on every
call: removing a member takes effect on the next check. Every change appends a ``group.*`` event
whose ``data`` names the group (``group``, ``group_id``); such events are shown to site admins and
to the group's current members only.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, Row, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from datamill import events
from datamill.db.models import Folder, Group, GroupAccess, GroupMembership, User
from datamill.errors import AlreadyExists, InvalidInput, NotFound, PermissionDenied
from datamill.events import EventKind
from datamill.records import GroupGrant, GroupInfo, GroupMember
from datamill.store.access import Actor, Level

MAX_GROUP_NAME = 64


def check_group_name(name: str) -> str:
    """Group names: 1-64 letters, digits, ``.``, ``_``, ``-``, ``@``, starting with a letter or digit.

    The same characters as user names (they are typed on command lines and sit in URLs); the
    first must be a letter or digit so that ``.``/``..`` cannot name a group.
    """
    ok = (
        isinstance(name, str)
        and 0 < len(name) <= MAX_GROUP_NAME
        and name[0].isalnum()
        and all(c.isalnum() or c in "._-@" for c in name)
    )
    if not ok:
        raise InvalidInput(
            f"group name {str(name)[:80]!r} is not allowed; use 1-{MAX_GROUP_NAME} letters, digits, "
            "'.', '_', '-' or '@', starting with a letter or digit",
            name=str(name)[:80],
        )
    return name


def _not_found(name: str) -> NotFound:
    # Same words whether the group is missing or the caller may not see it.
    return NotFound(f"no group {name!r}, or you are not a member of it", group=name)


def _membership(conn: Connection, group_id: int, user_id: int | None) -> Any:
    if user_id is None:
        return None
    return conn.execute(
        select(GroupMembership.user_id, GroupMembership.is_admin).where(
            GroupMembership.group_id == group_id, GroupMembership.user_id == user_id
        )
    ).first()


def visible_group(conn: Connection, actor: Actor, name: str) -> Row[Any]:
    """The group row if the actor is a site admin or a member; :class:`NotFound` otherwise."""
    if not isinstance(name, str) or not name:
        raise _not_found(str(name))
    row = conn.execute(select(Group).where(Group.name == name)).first()
    if row is None or not (actor.is_admin or _membership(conn, row.id, actor.id) is not None):
        raise _not_found(name)
    return row


def _managed_group(conn: Connection, actor: Actor, name: str) -> Row[Any]:
    """The group row if the actor may manage it (a site admin or a group admin)."""
    row = visible_group(conn, actor, name)
    if not actor.is_admin:
        mine = _membership(conn, row.id, actor.id)
        if mine is None or not mine.is_admin:
            raise PermissionDenied(
                f"only admins of group {name!r} or a site admin may change it; ask one of its admins "
                f"(`datamill group show {name}` lists them)",
                group=name,
            )
    return row


def _user_id(conn: Connection, user: str) -> int:
    uid = conn.execute(select(User.id).where(User.name == user)).scalar()
    if uid is None:
        raise NotFound(f"no user {user!r}", user=user)
    return int(uid)


def _infos(conn: Connection, rows: Iterable[Row[Any]]) -> list[GroupInfo]:
    """GroupInfo for each row, with members and grants loaded in one query each."""
    rows = list(rows)
    ids = [r.id for r in rows]
    members: dict[int, list[GroupMember]] = {i: [] for i in ids}
    grants: dict[int, list[GroupGrant]] = {i: [] for i in ids}
    creators: dict[int, str] = {}
    if ids:
        for gid, user, is_admin, added in conn.execute(
            select(GroupMembership.group_id, User.name, GroupMembership.is_admin, GroupMembership.added_at)
            .join(User, User.id == GroupMembership.user_id)
            .where(GroupMembership.group_id.in_(ids))
            .order_by(User.name)
        ):
            members[gid].append(GroupMember(user, bool(is_admin), added))
        for gid, path, level in conn.execute(
            select(GroupAccess.group_id, Folder.path, GroupAccess.level)
            .join(Folder, Folder.id == GroupAccess.folder_id)
            .where(GroupAccess.group_id.in_(ids))
            .order_by(Folder.path)
        ):
            grants[gid].append(GroupGrant(path, Level(level).name.lower()))
        creator_ids = {r.created_by for r in rows if r.created_by is not None}
        if creator_ids:
            creators = dict(conn.execute(select(User.id, User.name).where(User.id.in_(creator_ids))).tuples().all())
    return [
        GroupInfo(
            id=r.id,
            name=r.name,
            created_by=creators.get(r.created_by) if r.created_by is not None else None,
            created_at=r.created_at,
            members=members[r.id],
            grants=grants[r.id],
        )
        for r in rows
    ]


def _event(conn: Connection, kind: str, actor: Actor, row: Row[Any], **data: Any) -> None:
    events.append(conn, kind, actor_id=actor.id, data={"group": row.name, "group_id": row.id, **data})


def create_group(conn: Connection, actor: Actor, name: str) -> GroupInfo:
    """Create a group; the actor becomes its first member and group admin."""
    check_group_name(name)
    if actor.anonymous:
        raise PermissionDenied("sign in to create groups")
    if conn.execute(select(Group.id).where(Group.name == name)).first():
        raise AlreadyExists(f"a group named {name!r} already exists; choose another name", group=name)
    now = time.time()
    try:
        with conn.begin_nested():
            gid = conn.execute(
                insert(Group).values(name=name, created_by=actor.id, created_at=now).returning(Group.id)
            ).scalar_one()
    except IntegrityError:
        # Created by another writer between the look-up and the insert (PostgreSQL only).
        raise AlreadyExists(f"a group named {name!r} already exists; choose another name", group=name) from None
    conn.execute(insert(GroupMembership).values(group_id=gid, user_id=actor.id, is_admin=True, added_at=now))
    row = conn.execute(select(Group).where(Group.id == gid)).one()
    _event(conn, EventKind.GROUP_CREATED, actor, row)
    return _infos(conn, [row])[0]


def delete_group(conn: Connection, actor: Actor, name: str) -> int:
    """Delete a group with its memberships and its folder grants; returns how many grants went."""
    row = _managed_group(conn, actor, name)
    grants = conn.execute(
        select(GroupAccess.folder_id, Folder.path)
        .join(Folder, Folder.id == GroupAccess.folder_id)
        .where(GroupAccess.group_id == row.id)
        .order_by(Folder.path)
    ).all()
    conn.execute(delete(GroupAccess).where(GroupAccess.group_id == row.id))
    conn.execute(delete(GroupMembership).where(GroupMembership.group_id == row.id))
    conn.execute(delete(Group).where(Group.id == row.id))
    # Each folder that loses a grant says so, as when the grant is removed by hand.
    events.append_many(
        conn,
        [
            {
                "kind": EventKind.FOLDER_SHARED,
                "actor_id": actor.id,
                "folder_id": fid,
                "data": {"path": path, "group": row.name, "level": "none", "reason": "group deleted"},
            }
            for fid, path in grants
        ],
    )
    _event(conn, EventKind.GROUP_DELETED, actor, row, grants=len(grants))
    return len(grants)


def add_member(conn: Connection, actor: Actor, name: str, user: str, admin: bool | None = None) -> GroupInfo:
    """Add ``user`` to a group, or change whether an existing member is a group admin.

    ``admin`` None adds an ordinary member and leaves an existing member as they are.
    """
    row = _managed_group(conn, actor, name)
    uid = _user_id(conn, user)
    existing = _membership(conn, row.id, uid)
    if existing is None:
        conn.execute(
            insert(GroupMembership).values(group_id=row.id, user_id=uid, is_admin=bool(admin), added_at=time.time())
        )
        _event(conn, EventKind.GROUP_MEMBER_ADDED, actor, row, user=user, admin=bool(admin))
    elif admin is not None and bool(existing.is_admin) != admin:
        if not admin:
            _refuse_last_admin(conn, actor, row, uid, user)
        conn.execute(
            update(GroupMembership)
            .where(GroupMembership.group_id == row.id, GroupMembership.user_id == uid)
            .values(is_admin=admin)
        )
        _event(conn, EventKind.GROUP_MEMBER_CHANGED, actor, row, user=user, admin=admin)
    return _infos(conn, [row])[0]


def _refuse_last_admin(conn: Connection, actor: Actor, row: Row[Any], uid: int, user: str) -> None:
    """A group admin may not leave their group without an admin (a site admin may)."""
    if actor.is_admin:
        return
    others = conn.execute(
        select(func.count())
        .select_from(GroupMembership)
        .where(GroupMembership.group_id == row.id, GroupMembership.is_admin, GroupMembership.user_id != uid)
    ).scalar_one()
    if not others:
        raise InvalidInput(
            f"{user!r} is the last admin of group {row.name!r}; make another member an admin first "
            f"(`datamill group add {row.name} USER --admin`) or delete the group",
            group=row.name,
        )


def remove_member(conn: Connection, actor: Actor, name: str, user: str) -> None:
    """Remove ``user`` from a group: by a group admin or site admin, or by the member themselves."""
    if actor.name == user and not actor.anonymous:
        row = visible_group(conn, actor, name)
    else:
        row = _managed_group(conn, actor, name)
    uid = _user_id(conn, user)
    existing = _membership(conn, row.id, uid)
    if existing is None:
        raise NotFound(f"{user!r} is not a member of group {name!r}", group=name, user=user)
    if existing.is_admin:
        _refuse_last_admin(conn, actor, row, uid, user)
    conn.execute(delete(GroupMembership).where(GroupMembership.group_id == row.id, GroupMembership.user_id == uid))
    _event(conn, EventKind.GROUP_MEMBER_REMOVED, actor, row, user=user)


def get_group(conn: Connection, actor: Actor, name: str) -> GroupInfo:
    """One group, with its members and grants; only for its members and site admins."""
    return _infos(conn, [visible_group(conn, actor, name)])[0]


def list_groups(conn: Connection, actor: Actor) -> list[GroupInfo]:
    """The groups the actor belongs to (every group for a site admin), by name."""
    q = select(Group).order_by(Group.name)
    if not actor.is_admin:
        if actor.id is None:
            return []
        q = q.join(GroupMembership, GroupMembership.group_id == Group.id).where(GroupMembership.user_id == actor.id)
    return _infos(conn, conn.execute(q).all())


def group_ids_of(conn: Connection, actor: Actor) -> set[int]:
    """Ids of the groups the actor is a member of now."""
    if actor.id is None:
        return set()
    return set(conn.execute(select(GroupMembership.group_id).where(GroupMembership.user_id == actor.id)).scalars())
