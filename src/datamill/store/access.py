"""Who may do what: actors, access levels and their resolution over the folder tree.

A level granted on a folder holds for every folder below it. The owner of a folder (or of any
folder above it) has ``ADMIN``; a site admin has ``ADMIN`` everywhere; ``public_read`` on a folder
or an ancestor gives everyone ``READ``. Callers that may not read a folder are told it does not
exist, so names never leak.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from sqlalchemy import Connection, select

from datamill.db.models import Folder, FolderAccess
from datamill.errors import NotFound, PermissionDenied


class Level(IntEnum):
    """Access levels, each including the ones below it."""

    NONE = 0
    #: see the folder, its items and their bytes
    READ = 1
    #: add, change and remove items and subfolders
    WRITE = 2
    #: share, rename, move and delete the folder itself
    ADMIN = 3

    @classmethod
    def parse(cls, text: str) -> Level:
        """``"read"`` -> ``Level.READ``."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown access level {text!r}; use read, write or admin") from None


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


def level_on(conn: Connection, actor: Actor, folder_path: str) -> Level:
    """The actor's effective level on the folder at ``folder_path`` (which must exist)."""
    if actor.is_admin:
        return Level.ADMIN
    rows = conn.execute(
        select(Folder.id, Folder.owner_id, Folder.public_read).where(
            Folder.path.in_(ancestor_paths(folder_path))
        )
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
        granted = conn.execute(
            select(FolderAccess.level).where(
                FolderAccess.folder_id.in_(ids), FolderAccess.user_id == actor.id
            )
        ).scalars()
        for lv in granted:
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
