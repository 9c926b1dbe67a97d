"""Who may do what: actors, access levels and their resolution over the folder tree.

A level granted on a folder holds for every folder below it, whether it was granted to the user
or to a group they belong to. The owner of a folder (or of any folder above it) has ``ADMIN``; a
site admin has ``ADMIN`` everywhere; ``public_read`` on a folder or an ancestor gives everyone
``READ``. A user's effective level is the highest of these. Callers that may not read a folder are
told it does not exist, so names never leak.

:func:`level_on` is the one place that decides; every access check goes through it, and it reads
group memberships fresh on every call (no cache across transactions), so leaving a group takes
effect at once. Inside a block of :func:`remembered`, one transaction that changes no folder or
grant asks the database once per folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, union_all

from datamill.db.models import Folder, FolderAccess, GroupAccess, GroupMembership
from datamill.errors import NotFound, PermissionDenied
from datamill.events import EventKind
from datamill.records import Level


@dataclass(frozen=True)
class Actor:
    """The user on whose behalf an operation runs. ``id`` None is an anonymous caller."""

    id: int | None
    name: str
    is_admin: bool = False

    @property
    def anonymous(self) -> bool:
        """True for a caller without a token."""
        return self.id is None


ANONYMOUS = Actor(None, "anonymous")


def ancestor_paths(path: str) -> list[str]:
    """``"a/b/c"`` -> ``["a", "a/b", "a/b/c"]``."""
    parts = path.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


#: ``Connection.info`` key of what :func:`remembered` keeps for the block in progress
MEMO = "datamill.remembered"


@contextmanager
def remembered(conn: Connection) -> Iterator[None]:
    """Inside the block, folder ids (:func:`datamill.store.lookups.folder_id`) and access levels
    (:func:`level_on`) read through ``conn`` are read once each.

    For one transaction that creates, moves and shares no folder (a trigger recording a run:
    its checks ask for the same source and destination several times). Nested blocks share the
    outer one's memory.
    """
    info = conn.info  # held: after an interrupt the invalidated connection's ``info`` raises
    if MEMO in info:
        yield
        return
    info[MEMO] = {}
    try:
        yield
    finally:
        info.pop(MEMO, None)


def memo(conn: Connection) -> dict[Any, Any] | None:
    """What :func:`remembered` keeps for ``conn``'s block in progress, None outside one."""
    found: dict[Any, Any] | None = conn.info.get(MEMO)
    return found


def level_on(conn: Connection, actor: Actor, folder_path: str) -> Level:
    """The actor's effective level on the folder at ``folder_path`` (which must exist).

    The highest of: ownership of the folder or an ancestor, public read, the actor's own grants
    and the grants of every group the actor is a member of, on the folder or an ancestor. Two
    queries whatever the number of groups: the ancestors, then all grants that reach the actor
    (once per block of :func:`remembered`).
    """
    if actor.is_admin:
        return Level.ADMIN
    kept = memo(conn)
    if kept is None:
        return _level_on(conn, actor, folder_path)
    key = ("level", actor.id, folder_path)
    if key not in kept:
        kept[key] = _level_on(conn, actor, folder_path)
    level: Level = kept[key]
    return level


def _level_on(conn: Connection, actor: Actor, folder_path: str) -> Level:
    rows = conn.execute(
        select(Folder.id, Folder.owner_id, Folder.public_read).where(Folder.path.in_(ancestor_paths(folder_path)))
    ).all()
    best = Level.NONE
    ids = []
    for fid, owner_id, public in rows:
        ids.append(fid)
        if actor.id is not None and owner_id == actor.id:
            return Level.ADMIN
        if public:
            best = Level.READ
    if actor.id is not None and ids:
        own = select(FolderAccess.level).where(FolderAccess.folder_id.in_(ids), FolderAccess.user_id == actor.id)
        via_groups = (
            select(GroupAccess.level)
            .join(GroupMembership, GroupMembership.group_id == GroupAccess.group_id)
            .where(GroupAccess.folder_id.in_(ids), GroupMembership.user_id == actor.id)
        )
        for lv in conn.execute(union_all(own, via_groups)).scalars():
            best = max(best, Level(lv))
    return best


def require(conn: Connection, actor: Actor, folder_path: str, needed: Level) -> Level:
    """Raise unless the actor has ``needed`` on the folder.

    Without read access the folder is reported as not found, so its name does not leak.
    """
    have = level_on(conn, actor, folder_path)
    if have >= needed:
        return have
    if have < Level.READ:
        raise NotFound(f"no folder {folder_path!r}, or you may not see it", path=folder_path)
    raise PermissionDenied(
        f"you need {needed.name.lower()} access on {folder_path!r} but have {have.name.lower()}; "
        "ask an admin of the folder to share it with you",
        path=folder_path,
        needed=needed.name.lower(),
    )


#: Event kinds after which an actor's level on some folders may differ. Anything that keeps
#: levels between calls of :func:`level_on` (a per-stream cache) must drop them on these.
ACCESS_CHANGING_KINDS = frozenset(
    {
        EventKind.ACCESS_CHANGED,
        EventKind.FOLDER_SHARED,
        EventKind.FOLDER_MOVED,
        EventKind.FOLDER_DELETED,
        EventKind.GROUP_DELETED,
        EventKind.GROUP_MEMBER_ADDED,
        EventKind.GROUP_MEMBER_CHANGED,
        EventKind.GROUP_MEMBER_REMOVED,
    }
)
