"""Store records that clients receive without the store itself: users and folder grants.

Folders, items and versions are in :mod:`datamill.records` (the lowest layer, so that the remote
client loads no database code); they are re-exported here for the store's own modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from datamill.record import Record
from datamill.records import FolderInfo, ItemInfo, VersionInfo

#: The root of the folder tree; a folder the actor can reach is identified by its path.
ROOT = ""

__all__ = ["ROOT", "AccessGrant", "FolderInfo", "ItemInfo", "UserInfo", "VersionInfo"]

if TYPE_CHECKING:
    from datamill.store.access import Actor


@dataclass(frozen=True, slots=True)
class UserInfo(Record):
    """A user as callers see them."""

    id: int | None
    name: str
    is_admin: bool

    @classmethod
    def of(cls, actor: Actor) -> UserInfo:
        """The record of an acting user."""
        return cls(id=actor.id, name=actor.name, is_admin=actor.is_admin)


@dataclass(frozen=True, slots=True)
class AccessGrant(Record):
    """A grant made on a folder: to a ``user`` or to a ``group`` (the other is None), at ``level``."""

    _optional = frozenset({"user", "group"})

    level: str
    user: str | None = None
    group: str | None = None
