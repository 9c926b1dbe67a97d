"""The store: folders, items, versions, metadata and blobs, with access checks and events.

Every public method takes the :class:`~datamill.store.access.Actor` it acts for, checks access,
and appends its events in the same transaction as the change. Blob bytes are written before the
transaction that records them (and only after the access check), so a broken upload leaves
nothing behind and a committed version always points at bytes that exist. They are removed only
after the transaction that drops their last reference has committed (``_release_blobs``), so a
crash in the middle of a delete never leaves a listed item without its bytes.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import logging
import mimetypes
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, BinaryIO

from sqlalchemy import Connection, Row, String, and_, delete, func, insert, or_, select, type_coerce, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from datamill import events
from datamill.db.database import Database
from datamill.db.models import (
    Blob,
    Folder,
    FolderAccess,
    Group,
    GroupAccess,
    IdempotencyKey,
    Item,
    Meta,
    Task,
    TaskOutput,
    User,
    Version,
)
from datamill.errors import (
    AlreadyExists,
    BlobNotFound,
    IdempotencyKeyReused,
    InvalidInput,
    NotEmpty,
    NotFound,
)
from datamill.records import FolderInfo, ItemInfo, VersionInfo, check_metadata
from datamill.store import groups
from datamill.store.access import Actor, Level, level_on, require
from datamill.store.blobs import ALGORITHM, BlobInfo, BlobStore, BlobWriter
from datamill.store.names import check_name, join_path, split_item_path, split_path
from datamill.store.visibility import Visibility, visible_events

log = logging.getLogger("datamill.store")

#: A folder the actor can reach is identified by its path; the root is "".
ROOT = ""

#: How long an upload's Idempotency-Key is remembered (a retry after that makes a new version).
IDEMPOTENCY_TTL = 24 * 3600.0


def check_idempotency_key(key: str) -> str:
    """An ``Idempotency-Key`` must be 1-255 visible ASCII characters (a UUID is a good choice)."""
    if not 0 < len(key) <= 255 or any(not 0x21 <= ord(c) <= 0x7E for c in key):
        raise InvalidInput(
            "Idempotency-Key must be 1-255 visible ASCII characters, e.g. a UUID; send a fresh one per upload"
        )
    return key


def guess_content_type(name: str) -> str:
    """A MIME type from the file name, ``application/octet-stream`` when unknown."""
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class Store:
    """Folders, items, versions and blobs over one database and one blob store."""

    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self.db = db
        self.blobs = blobs

    # ---------------------------------------------------------------- setup

    def initialize(self) -> None:
        """Migrate the schema and record the digest algorithm the first time."""
        self.db.migrate()
        with self.db.write() as conn:
            algo = conn.execute(select(Meta.value).where(Meta.key == "digest_algorithm")).scalar()
            if algo is None:
                conn.execute(insert(Meta).values(key="digest_algorithm", value=ALGORITHM))
            elif algo != ALGORITHM:
                raise InvalidInput(
                    f"this store was created with {algo} digests but this datamill uses {ALGORITHM}; "
                    "use a datamill version that supports it"
                )

    # ---------------------------------------------------------------- folders

    def _folder_row(self, conn: Connection, path: str) -> Row[Any]:
        row = conn.execute(select(Folder).where(Folder.path == path)).first()
        if row is None:
            raise NotFound(f"no folder {path!r}, or you may not see it", path=path)
        return row

    def _folder_info(self, conn: Connection, row: Row[Any]) -> FolderInfo:
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

    def _readable_folder(self, conn: Connection, actor: Actor, path: str, needed: Level = Level.READ) -> Row[Any]:
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
        self,
        actor: Actor,
        path: str,
        parents: bool = True,
        exist_ok: bool = False,
        metadata: Mapping[str, Any] | None = None,
        public_read: bool = False,
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

        with self.db.write() as conn:
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
                        return self._folder_info(conn, row)
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
                        return self._folder_info(conn, row)
                    parent = row
                    continue
                events.append(
                    conn, "folder.created", actor_id=actor.id, folder_id=fid, data={"path": sub, "name": name}
                )
                parent = conn.execute(select(Folder).where(Folder.id == fid)).one()
            assert parent is not None
            return self._folder_info(conn, parent)

    def get_folder(self, actor: Actor, path: str) -> FolderInfo:
        """The folder at ``path``."""
        with self.db.read() as conn:
            return self._folder_info(conn, self._readable_folder(conn, actor, path))

    def list_folders(self, actor: Actor, path: str = ROOT) -> list[FolderInfo]:
        """The subfolders of ``path`` (the top level for the root) that the actor may read."""
        with self.db.read() as conn:
            if split_path(path):
                parent = self._readable_folder(conn, actor, path)
                rows = conn.execute(select(Folder).where(Folder.parent_id == parent.id).order_by(Folder.name)).all()
                return [self._folder_info(conn, r) for r in rows]
            rows = conn.execute(select(Folder).where(Folder.parent_id.is_(None)).order_by(Folder.name)).all()
            return [self._folder_info(conn, r) for r in rows if level_on(conn, actor, r.path) >= Level.READ]

    def rename_folder(self, actor: Actor, path: str, new_name: str) -> FolderInfo:
        """Rename a folder in place."""
        new_name = check_name(new_name, "folder name")
        parent = path.strip("/").rsplit("/", 1)[0] if "/" in path.strip("/") else ROOT
        return self.move_folder(actor, path, parent, new_name=new_name)

    def move_folder(self, actor: Actor, path: str, new_parent: str, new_name: str | None = None) -> FolderInfo:
        """Move a folder (with everything below it) under ``new_parent`` ("" for the top level)."""
        with self.db.write() as conn:
            row = self._readable_folder(conn, actor, path, Level.ADMIN)
            target_parts = split_path(new_parent)
            target: Row[Any] | None = None
            if target_parts:
                target = self._readable_folder(conn, actor, new_parent, Level.WRITE)
                if target.path == row.path or target.path.startswith(row.path + "/"):
                    raise InvalidInput(f"cannot move {row.path!r} into itself", path=row.path)
            name = check_name(new_name, "folder name") if new_name else row.name
            new_path = join_path(target.path if target else "", name)
            split_path(new_path)
            if new_path == row.path:
                return self._folder_info(conn, row)
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
            return self._folder_info(conn, self._folder_row(conn, new_path))

    def delete_folder(self, actor: Actor, path: str, recursive: bool = False) -> int:
        """Delete a folder; with ``recursive``, everything below it. Returns the items removed."""
        digests: set[str] = set()
        with self.db.write() as conn:
            row = self._readable_folder(conn, actor, path, Level.ADMIN)
            sub_ids = [row.id] + list(
                conn.execute(select(Folder.id).where(Folder.path.startswith(row.path + "/", autoescape=True))).scalars()
            )
            n_items = conn.execute(
                select(func.count()).select_from(Item).where(Item.folder_id.in_(sub_ids))
            ).scalar_one()
            if not recursive and (n_items or len(sub_ids) > 1):
                raise NotEmpty(
                    f"folder {row.path!r} holds {n_items} items and {len(sub_ids) - 1} subfolders; "
                    "pass --recursive to delete them too",
                    path=row.path,
                )
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
        # Only now that the rows are gone for good may their bytes go (see _release_blobs).
        self._release_blobs(digests)
        return len(item_ids)

    def set_folder_metadata(
        self, actor: Actor, path: str, set_: Mapping[str, Any] | None = None, unset: Iterable[str] = ()
    ) -> FolderInfo:
        """Set and unset metadata keys on a folder."""
        changes = check_metadata(set_ or {})
        with self.db.write() as conn:
            row = self._readable_folder(conn, actor, path, Level.WRITE)
            meta = {k: v for k, v in dict(row.metadata or {}).items() if k not in set(unset)}
            meta.update(changes)
            conn.execute(update(Folder).where(Folder.id == row.id).values(meta=meta, updated_at=time.time()))
            events.append(
                conn,
                "metadata.changed",
                actor_id=actor.id,
                folder_id=row.id,
                data={"path": row.path, "set": sorted(changes), "unset": sorted(unset)},
            )
            return self._folder_info(conn, self._folder_row(conn, row.path))

    def share(self, actor: Actor, path: str, user: str, level: Level) -> None:
        """Grant ``user`` a level on a folder (``Level.NONE`` removes the grant)."""
        with self.db.write() as conn:
            row = self._readable_folder(conn, actor, path, Level.ADMIN)
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

    def share_group(self, actor: Actor, path: str, group: str, level: Level) -> None:
        """Grant a group a level on a folder (``Level.NONE`` removes the grant); its members get it.

        Needs admin on the folder. A grant is made only to a group the actor may see (a member,
        or a site admin), so that sharing does not tell who is in which group; a grant already
        on the folder (shown by :meth:`access_list`) can always be removed by the folder's admins.
        """
        with self.db.write() as conn:
            row = self._readable_folder(conn, actor, path, Level.ADMIN)
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

    def set_public(self, actor: Actor, path: str, public: bool) -> None:
        """Switch public read access on a folder."""
        with self.db.write() as conn:
            row = self._readable_folder(conn, actor, path, Level.ADMIN)
            conn.execute(update(Folder).where(Folder.id == row.id).values(public_read=public))
            events.append(
                conn,
                "access.changed",
                actor_id=actor.id,
                folder_id=row.id,
                data={"path": row.path, "public_read": public},
            )

    def access_list(self, actor: Actor, path: str) -> list[dict[str, Any]]:
        """The grants on a folder (not inherited ones): ``{"user", "level"}``, then ``{"group", "level"}``."""
        with self.db.read() as conn:
            row = self._readable_folder(conn, actor, path, Level.READ)
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

    def my_level(self, actor: Actor, path: str) -> Level:
        """The actor's effective level on a folder (NONE if it does not exist)."""
        with self.db.read() as conn:
            norm = "/".join(split_path(path))
            if not conn.execute(select(Folder.id).where(Folder.path == norm)).first():
                return Level.NONE
            return level_on(conn, actor, norm)

    # ---------------------------------------------------------------- groups

    def create_group(self, actor: Actor, name: str) -> groups.GroupInfo:
        """Create a group; the actor becomes its first group admin."""
        with self.db.write() as conn:
            return groups.create_group(conn, actor, name)

    def delete_group(self, actor: Actor, name: str) -> int:
        """Delete a group and its folder grants (group admins and site admins); how many grants went."""
        with self.db.write() as conn:
            return groups.delete_group(conn, actor, name)

    def get_group(self, actor: Actor, name: str) -> groups.GroupInfo:
        """A group with its members and grants (its members and site admins only)."""
        with self.db.read() as conn:
            return groups.get_group(conn, actor, name)

    def list_groups(self, actor: Actor) -> list[groups.GroupInfo]:
        """The actor's groups (all of them for a site admin)."""
        with self.db.read() as conn:
            return groups.list_groups(conn, actor)

    def add_group_member(
        self, actor: Actor, group: str, user: str, admin: bool | None = None
    ) -> groups.GroupInfo:
        """Add a member to a group, or change whether they are a group admin (None: leave as is)."""
        with self.db.write() as conn:
            return groups.add_member(conn, actor, group, user, admin)

    def remove_group_member(self, actor: Actor, group: str, user: str) -> None:
        """Remove a member from a group; their access through it ends at once."""
        with self.db.write() as conn:
            groups.remove_member(conn, actor, group, user)

    # ---------------------------------------------------------------- items

    def begin_upload(
        self,
        actor: Actor,
        folder: str,
        name: str,
        expected_digest: str | None = None,
        expected_size: int | None = None,
    ) -> BlobWriter:
        """Check write access and open a blob writer for a new version of ``folder/name``.

        The access check comes first so that no bytes are stored for a caller who may not write.
        """
        check_name(name, "item name")
        with self.db.read() as conn:
            self._readable_folder(conn, actor, folder, Level.WRITE)
        return self.blobs.writer(expected_digest, expected_size)

    def put(
        self,
        actor: Actor,
        folder: str,
        name: str,
        data: bytes | BinaryIO | Iterable[bytes],
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        expected_digest: str | None = None,
        created_via: str = "upload",
    ) -> VersionInfo:
        """Store bytes as a new version of ``folder/name`` (creating the item when new)."""
        meta = check_metadata(metadata or {})
        writer = self.begin_upload(actor, folder, name, expected_digest)
        try:
            if isinstance(data, bytes | bytearray | memoryview):
                writer.write(bytes(data))
            elif hasattr(data, "read"):
                while chunk := data.read(1 << 20):
                    writer.write(chunk)
            else:
                for chunk in data:
                    writer.write(chunk)
            blob = writer.commit()
        finally:
            writer.abort()
        return self.commit_version(actor, folder, name, blob, content_type, meta, created_via=created_via)

    def put_many(
        self,
        actor: Actor,
        folder: str,
        entries: Iterable[tuple[str, bytes | BinaryIO]],
        metadata: Mapping[str, Any] | None = None,
        created_via: str = "upload",
    ) -> list[VersionInfo]:
        """Store many (small) files in one folder at once: one sync, one transaction.

        Each entry is ``(name, bytes or file)``. Much faster than :meth:`put` per file (no
        fsync per file, bulk statements); all or none of them are recorded.
        """
        meta = check_metadata(metadata or {})
        with self.db.read() as conn:
            self._readable_folder(conn, actor, folder, Level.WRITE)
        rows: list[tuple[str, BlobInfo]] = []
        for name, data in entries:
            rows.append((check_name(name, "item name"), self.blobs.put(data, durable=False)))
        if not rows:
            return []
        # The bytes must be durable before any version points at them.
        self.blobs.sync()
        names = [n for n, _ in rows]
        if len(set(names)) != len(names):
            # The same name twice in one batch: each becomes its own version, in order.
            return [self.commit_version(actor, folder, n, b, None, meta, created_via) for n, b in rows]
        with self.db.write() as conn:
            frow = self._readable_folder(conn, actor, folder, Level.WRITE)
            try:
                with conn.begin_nested():
                    return self._commit_many(conn, actor, frow, rows, meta, created_via)
            except IntegrityError:
                # Another process created one of these items meanwhile (PostgreSQL): go one by one.
                return [self.commit_version(actor, folder, n, b, None, meta, created_via, conn=conn) for n, b in rows]

    def _commit_many(
        self,
        conn: Connection,
        actor: Actor,
        frow: Row[Any],
        rows: list[tuple[str, BlobInfo]],
        meta: dict[str, Any],
        created_via: str,
    ) -> list[VersionInfo]:
        now = time.time()
        self._hold_blob(conn, [b for _, b in rows])
        existing: dict[str, tuple[int, Any]] = {}
        names = [n for n, _ in rows]
        for i in range(0, len(names), 500):
            q = select(Item.id, Item.name, Item.meta.label("meta")).where(
                Item.folder_id == frow.id, Item.name.in_(names[i : i + 500])
            )
            existing.update({r.name: (r.id, r.meta) for r in conn.execute(q)})
        item_ids: dict[str, int] = {}
        numbers: dict[str, int] = {}
        new = [n for n in names if n not in existing]
        if new:
            created = conn.execute(
                insert(Item).returning(Item.id, Item.name, sort_by_parameter_order=True),
                [
                    {
                        "folder_id": frow.id,
                        "name": n,
                        "metadata": meta,  # executemany binds column keys, not attribute names
                        "current_version": 1,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for n in new
                ],
            )
            for iid, n in created:
                item_ids[n], numbers[n] = int(iid), 1
        for n, (iid, old_meta) in existing.items():
            item_ids[n] = iid
            numbers[n] = conn.execute(
                update(Item)
                .where(Item.id == iid)
                .values(current_version=Item.current_version + 1, updated_at=now, meta={**(old_meta or {}), **meta})
                .returning(Item.current_version)
            ).scalar_one()
        ctypes = {n: guess_content_type(n) for n in names}
        vids = (
            conn.execute(
                insert(Version).returning(Version.id, sort_by_parameter_order=True),
                [
                    {
                        "item_id": item_ids[n],
                        "number": numbers[n],
                        "digest": b.digest,
                        "size": b.size,
                        "content_type": ctypes[n],
                        "created_by": actor.id,
                        "created_via": created_via,
                        "created_at": now,
                    }
                    for n, b in rows
                ],
            )
            .scalars()
            .all()
        )
        events.append_many(
            conn,
            [
                {
                    "kind": "item.created" if n not in existing else "item.updated",
                    "actor_id": actor.id,
                    "folder_id": frow.id,
                    "item_id": item_ids[n],
                    "data": {
                        "folder": frow.path,
                        "name": n,
                        "version": numbers[n],
                        "version_id": int(vid),
                        "digest": b.digest,
                        "size": b.size,
                    },
                    "ts": now,
                }
                for (n, b), vid in zip(rows, vids, strict=True)
            ],
        )
        return [
            VersionInfo(
                item_id=item_ids[n],
                version_id=int(vid),
                folder=frow.path,
                name=n,
                version=numbers[n],
                digest=b.digest,
                size=b.size,
                content_type=ctypes[n],
                created_by=actor.name,
                created_via=created_via,
                created_at=now,
            )
            for (n, b), vid in zip(rows, vids, strict=True)
        ]

    def commit_upload(
        self,
        actor: Actor,
        folder: str,
        name: str,
        blob: BlobInfo,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[VersionInfo, bool]:
        """Record an upload as the next version, once per ``idempotency_key``; returns ``(version, replayed)``.

        The key (per user, remembered for :data:`IDEMPOTENCY_TTL`) is claimed in the transaction
        that commits the version, so a client whose answer was lost can send the same upload
        again: it gets the version the first request made (``replayed`` True) instead of a second
        one. The same key for other bytes or another item raises :class:`IdempotencyKeyReused`.
        """
        if idempotency_key is None:
            return self.commit_version(actor, folder, name, blob, content_type, metadata), False
        key = check_idempotency_key(idempotency_key)
        name = check_name(name, "item name")
        what = json.dumps(["/".join(split_path(folder)), name, blob.digest, blob.size])
        fingerprint = hashlib.sha256(what.encode()).hexdigest()
        replay: dict[str, Any] | None = None
        with self.db.write() as conn:
            now = time.time()
            conn.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < now - IDEMPOTENCY_TTL))
            ins = pg_insert(IdempotencyKey) if conn.dialect.name == "postgresql" else sqlite_insert(IdempotencyKey)
            claimed = conn.execute(
                ins.values(user_id=actor.id, key=key, fingerprint=fingerprint, response={}, created_at=now)
                .on_conflict_do_nothing(index_elements=["user_id", "key"])
                .returning(IdempotencyKey.key)  # rowcount is not reliable here (-1 with psycopg)
            ).first()
            if claimed is not None:
                info = self.commit_version(actor, folder, name, blob, content_type, metadata, conn=conn)
                conn.execute(
                    update(IdempotencyKey)
                    .where(IdempotencyKey.user_id == actor.id, IdempotencyKey.key == key)
                    .values(response=info.to_dict())
                )
                return info, False
            # Taken by a committed upload (on PostgreSQL the insert waited for it to commit).
            row = conn.execute(
                select(IdempotencyKey.fingerprint, IdempotencyKey.response).where(
                    IdempotencyKey.user_id == actor.id, IdempotencyKey.key == key
                )
            ).one()
            if row.fingerprint == fingerprint:
                replay = dict(row.response)
        # The bytes this request stored are referred to by nothing new: let them go if unused.
        self._discard_upload(blob)
        if replay is None:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was already used for another upload (other bytes or another item); "
                "send a new key for a new upload",
                key=key,
            )
        names = {f.name for f in dataclasses.fields(VersionInfo)}
        return VersionInfo(**{k: v for k, v in replay.items() if k in names}), True

    def _discard_upload(self, blob: BlobInfo) -> None:
        """Remove the bytes of an upload that was not recorded, unless something refers to them."""
        with self.db.write() as conn:
            ins = pg_insert(Blob) if conn.dialect.name == "postgresql" else sqlite_insert(Blob)
            conn.execute(
                ins.values(digest=blob.digest, size=blob.size, created_at=time.time()).on_conflict_do_nothing(
                    index_elements=["digest"]
                )
            )
        self._release_blobs([blob.digest])

    def commit_version(
        self,
        actor: Actor,
        folder: str,
        name: str,
        blob: BlobInfo,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        created_via: str = "upload",
        run_id: int | None = None,
        task_id: int | None = None,
        conn: Connection | None = None,
    ) -> VersionInfo:
        """Record stored bytes as the next version of ``folder/name``.

        Pass ``conn`` to join the caller's write transaction (the engine records task outputs
        and their versions together).
        """
        if conn is None:
            with self.db.write() as own:
                return self.commit_version(
                    actor, folder, name, blob, content_type, metadata, created_via, run_id, task_id, own
                )
        name = check_name(name, "item name")
        meta = check_metadata(metadata or {})
        frow = self._readable_folder(conn, actor, folder, Level.WRITE)
        self._hold_blob(conn, [blob])
        now = time.time()
        ctype = content_type or guess_content_type(name)
        item = conn.execute(
            select(Item.id, Item.meta.label("metadata")).where(Item.folder_id == frow.id, Item.name == name)
        ).first()
        created = False
        if item is None:
            try:
                with conn.begin_nested():
                    item_id = conn.execute(
                        insert(Item)
                        .values(
                            folder_id=frow.id,
                            name=name,
                            meta=meta,
                            current_version=1,
                            created_at=now,
                            updated_at=now,
                        )
                        .returning(Item.id)
                    ).scalar_one()
                number = 1
                created = True
            except IntegrityError:
                # Another writer created it between our look-up and insert (PostgreSQL only).
                item = conn.execute(
                    select(Item.id, Item.meta.label("metadata")).where(Item.folder_id == frow.id, Item.name == name)
                ).one()
        if not created:
            assert item is not None
            item_id = item.id
            merged = {**dict(item.metadata or {}), **meta}
            # The UPDATE takes the row lock, so concurrent uploads get distinct version numbers.
            number = conn.execute(
                update(Item)
                .where(Item.id == item_id)
                .values(current_version=Item.current_version + 1, updated_at=now, meta=merged)
                .returning(Item.current_version)
            ).scalar_one()
        vid = conn.execute(
            insert(Version)
            .values(
                item_id=item_id,
                number=number,
                digest=blob.digest,
                size=blob.size,
                content_type=ctype,
                created_by=actor.id,
                created_via=created_via,
                run_id=run_id,
                task_id=task_id,
                created_at=now,
            )
            .returning(Version.id)
        ).scalar_one()
        events.append(
            conn,
            "item.created" if created else "item.updated",
            actor_id=actor.id,
            folder_id=frow.id,
            item_id=item_id,
            run_id=run_id,
            task_id=task_id,
            data={
                "folder": frow.path,
                "name": name,
                "version": number,
                "version_id": vid,
                "digest": blob.digest,
                "size": blob.size,
            },
        )
        return VersionInfo(
            item_id=item_id,
            version_id=vid,
            folder=frow.path,
            name=name,
            version=number,
            digest=blob.digest,
            size=blob.size,
            content_type=ctype,
            created_by=actor.name,
            created_via=created_via,
            created_at=now,
            run_id=run_id,
            task_id=task_id,
        )

    def _item_row(
        self, conn: Connection, actor: Actor, path: str, needed: Level = Level.READ
    ) -> tuple[Row[Any], Row[Any]]:
        folder, name = split_item_path(path)
        frow = self._readable_folder(conn, actor, folder, needed)
        irow = conn.execute(select(Item).where(Item.folder_id == frow.id, Item.name == name)).first()
        if irow is None:
            raise NotFound(f"no item {name!r} in {frow.path!r}", path=join_path(frow.path, name))
        return frow, irow

    def _version_info(self, conn: Connection, frow: Row[Any], irow: Row[Any], v: Row[Any]) -> VersionInfo:
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

    def current_version(self, conn: Connection, folder: str, name: str) -> tuple[int, str] | None:
        """``(version id, digest)`` of the current version of ``folder/name``, without access checks.

        For the engine, inside its write transaction, after it checked access itself.
        """
        row = conn.execute(
            select(Version.id, Version.digest)
            .join(Item, and_(Item.id == Version.item_id, Version.number == Item.current_version))
            .join(Folder, Folder.id == Item.folder_id)
            .where(Folder.path == folder, Item.name == name)
        ).first()
        return None if row is None else (int(row.id), str(row.digest))

    def get_item(self, actor: Actor, path: str) -> ItemInfo:
        """An item and its current version."""
        with self.db.read() as conn:
            frow, irow = self._item_row(conn, actor, path)
            v = conn.execute(
                select(Version).where(Version.item_id == irow.id, Version.number == irow.current_version)
            ).one()
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

    def get_version(self, actor: Actor, path: str, version: int | None = None) -> VersionInfo:
        """One version of an item: the current one unless ``version`` is given."""
        with self.db.read() as conn:
            frow, irow = self._item_row(conn, actor, path)
            number = irow.current_version if version is None else version
            v = conn.execute(select(Version).where(Version.item_id == irow.id, Version.number == number)).first()
            if v is None:
                raise NotFound(
                    f"{join_path(frow.path, irow.name)!r} has no version {number}; "
                    f"it has versions 1..{irow.current_version}",
                    version=number,
                )
            return self._version_info(conn, frow, irow, v)

    def versions(self, actor: Actor, path: str) -> list[VersionInfo]:
        """Every version of an item, oldest first."""
        with self.db.read() as conn:
            frow, irow = self._item_row(conn, actor, path)
            rows = conn.execute(select(Version).where(Version.item_id == irow.id).order_by(Version.number)).all()
            return [self._version_info(conn, frow, irow, v) for v in rows]

    def version_by_id(self, actor: Actor, version_id: int) -> VersionInfo:
        """A version by its id (as provenance records it)."""
        with self.db.read() as conn:
            v = conn.execute(select(Version).where(Version.id == version_id)).first()
            if v is None:
                raise NotFound(f"no version {version_id}")
            irow = conn.execute(select(Item).where(Item.id == v.item_id)).one()
            frow = conn.execute(select(Folder).where(Folder.id == irow.folder_id)).one()
            if level_on(conn, actor, frow.path) < Level.READ:
                # Asked by id: do not name the folder the caller may not see.
                raise NotFound(f"no version {version_id}")
            return self._version_info(conn, frow, irow, v)

    def list_items(
        self, actor: Actor, folder: str, after: str | None = None, limit: int | None = None
    ) -> list[ItemInfo]:
        """Items in a folder by name, with their current versions; page with ``after``/``limit``."""
        with self.db.read() as conn:
            frow = self._readable_folder(conn, actor, folder)
            q = _current_items().where(Item.folder_id == frow.id).order_by(Item.name)
            if after is not None:
                q = q.where(Item.name > after)
            if limit is not None:
                q = q.limit(limit)
            path = frow.path
            out = [_item_info(r, path) for r in conn.execute(q).tuples()]
            Visibility(conn, actor).items(out)
            return out

    def find_items(
        self,
        actor: Actor,
        folder: str,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        recursive: bool = True,
    ) -> list[ItemInfo]:
        """Items under ``folder`` whose name matches the glob ``name`` and whose metadata holds ``metadata``.

        A metadata filter value matches an equal value, or an element of a list value.
        """
        with self.db.read() as conn:
            frow = self._readable_folder(conn, actor, folder)
            folder_q = select(Folder.id, Folder.path).where(
                or_(Folder.id == frow.id, Folder.path.startswith(frow.path + "/", autoescape=True))
                if recursive
                else Folder.id == frow.id
            )
            paths = dict(conn.execute(folder_q).tuples().all())
            q = _current_items().where(Item.folder_id.in_(list(paths))).order_by(Item.folder_id, Item.name)
            if name:
                # LIKE narrows cheaply; fnmatch below decides exactly ('[...]' classes, case).
                like = "".join("%" if c == "*" else "_" if c == "?" else _like_escape(c) for c in name)
                if "[" not in name:
                    q = q.where(Item.name.like(like, escape="\\"))
            wanted = check_metadata(metadata or {})
            found = [
                _item_info(r, paths[r.folder_id])
                for r in conn.execute(q)
                if not name or fnmatch.fnmatchcase(r.name, name)
            ]
            # Filter on what the caller may see, so a filter cannot confirm a guess of hidden provenance.
            Visibility(conn, actor).items(found)
            return [
                info
                for info in found
                if all(_meta_matches(info.metadata.get(k, _MISSING), v) for k, v in wanted.items())
            ]

    def set_item_metadata(
        self, actor: Actor, path: str, set_: Mapping[str, Any] | None = None, unset: Iterable[str] = ()
    ) -> ItemInfo:
        """Set and unset metadata keys on an item; no new version is made."""
        changes = check_metadata(set_ or {})
        unset = list(unset)
        with self.db.write() as conn:
            frow, irow = self._item_row(conn, actor, path, Level.WRITE)
            meta = {k: v for k, v in dict(irow.metadata or {}).items() if k not in set(unset)}
            meta.update(changes)
            conn.execute(update(Item).where(Item.id == irow.id).values(meta=meta, updated_at=time.time()))
            events.append(
                conn,
                "metadata.changed",
                actor_id=actor.id,
                folder_id=frow.id,
                item_id=irow.id,
                data={"folder": frow.path, "name": irow.name, "set": sorted(changes), "unset": sorted(unset)},
            )
        return self.get_item(actor, path)

    def delete_item(self, actor: Actor, path: str) -> None:
        """Delete an item with all its versions; blobs nothing else refers to are removed."""
        with self.db.write() as conn:
            frow, irow = self._item_row(conn, actor, path, Level.WRITE)
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
        self._release_blobs(digests)

    def open_version(self, actor: Actor, path: str, version: int | None = None) -> tuple[VersionInfo, BinaryIO]:
        """A version's info and a verifying stream of its bytes."""
        info = self.get_version(actor, path, version)
        return info, self.blobs.open(info.digest)

    def iter_bytes(
        self, actor: Actor, path: str, version: int | None = None, start: int = 0, end: int | None = None
    ) -> tuple[VersionInfo, Iterator[bytes]]:
        """A version's info and its bytes ``start..end`` (inclusive) in chunks."""
        info = self.get_version(actor, path, version)
        return info, self.blobs.iter_range(info.digest, start, end)

    # ---------------------------------------------------------------- events

    def visible_events(self, actor: Actor, records: Iterable[events.EventRecord]) -> list[events.EventRecord]:
        """The events among ``records`` the actor may see, redacted for them.

        An event about a folder (or something in it) is visible to readers of that folder;
        events about a group (``group.*``) to the group's current members; other events about
        no folder (users, tokens) only to site admins. Events of a deleted folder or group stay
        visible to site admins only. Levels and memberships are read now, on every call, so a
        member who left a group stops seeing its folders' events at once. Payload fields naming
        what the actor may not read are hidden (see :func:`datamill.store.visibility.visible_events`).
        """
        if actor.is_admin:
            return list(records)
        with self.db.read() as conn:
            return visible_events(conn, actor, records)

    # ---------------------------------------------------------------- blobs

    #: Columns whose digests keep a blob alive: item versions, task outputs and task logs.
    blob_referrers: list[Any] = [Version.digest, TaskOutput.digest, Task.log_digest]

    #: Digests checked (and their files removed) per transaction when blobs are released.
    RELEASE_BATCH = 500

    def _hold_blob(self, conn: Connection, blobs: Iterable[BlobInfo]) -> None:
        """Record ``blobs`` and hold their rows until ``conn`` commits; raise if a file is gone.

        Whoever is about to refer to a blob calls this in the transaction that adds the reference.
        The shared row lock (PostgreSQL; SQLite has one writer anyway) keeps :meth:`_release_blobs`
        from removing the file in between; the file is checked once the row is held, so a release
        that won the race is noticed here and the caller is told to upload again.
        """
        wanted = {b.digest: b for b in blobs}
        if not wanted:
            return
        digests = sorted(wanted)
        ins = pg_insert(Blob) if conn.dialect.name == "postgresql" else sqlite_insert(Blob)
        now = time.time()
        missing = digests
        for _ in range(3):
            # Usually one round; another only when a release deleted a row between the two statements.
            conn.execute(
                ins.on_conflict_do_nothing(index_elements=["digest"]),
                [{"digest": d, "size": wanted[d].size, "created_at": now} for d in missing],
            )
            held: set[str] = set()
            for i in range(0, len(missing), self.RELEASE_BATCH):
                chunk = missing[i : i + self.RELEASE_BATCH]
                q = select(Blob.digest).where(Blob.digest.in_(chunk)).order_by(Blob.digest).with_for_update(read=True)
                held.update(conn.execute(q).scalars())
            missing = [d for d in missing if d not in held]
            if not missing:
                break
        for digest in digests:
            if digest in missing or not self.blobs.exists(digest):
                raise BlobNotFound(
                    "the uploaded bytes were removed by a delete that ran at the same time; upload the file again",
                    digest=digest,
                )

    def _release_blobs(self, digests: Iterable[str]) -> int:
        """Remove the files of blobs among ``digests`` that nothing refers to; returns how many.

        Called only after the transaction that dropped the references committed: a crash before
        that commit rolls the rows back and their bytes are still there. Each batch runs in its
        own write transaction that locks the blob rows, re-checks every reference, deletes the
        rows and only then unlinks the files, before it commits. An upload of the same bytes
        holds the row (:meth:`_hold_blob`), so it either commits its version first (the blob is
        then referenced and kept) or finds the file gone and says so; it never commits a version
        without bytes. A crash after an unlink but before the commit leaves an unreferenced row
        without a file, which :meth:`collect_garbage` removes. Failures here are logged, not
        raised: what the caller asked for has already happened, and garbage collection retries.
        """
        todo = sorted(set(digests))
        removed = 0
        for i in range(0, len(todo), self.RELEASE_BATCH):
            chunk = todo[i : i + self.RELEASE_BATCH]
            try:
                with self.db.write() as conn:
                    # SKIP LOCKED: a row held by an upload is about to be referenced again; never wait
                    # on it (uploads lock in their own order, so waiting could deadlock).
                    q = (
                        select(Blob.digest)
                        .where(Blob.digest.in_(chunk))
                        .order_by(Blob.digest)
                        .with_for_update(skip_locked=True)
                    )
                    locked = list(conn.execute(q).scalars())
                    if not locked:
                        continue
                    used: set[str] = set()
                    for col in self.blob_referrers:
                        used.update(conn.execute(select(col).where(col.in_(locked)).distinct()).scalars())
                    free = [d for d in locked if d not in used]
                    if not free:
                        continue
                    conn.execute(delete(Blob).where(Blob.digest.in_(free)))
                    for digest in free:
                        self.blobs.delete(digest)
                    removed += len(free)
            except Exception:
                log.exception("could not remove %d unreferenced blobs; `collect_garbage` will retry", len(chunk))
        return removed

    def collect_garbage(self) -> int:
        """Remove every blob that no version (or engine record) refers to; returns how many."""
        with self.db.read() as conn:
            digests = list(conn.execute(select(Blob.digest)).scalars())
        return self._release_blobs(digests)


_MISSING = object()


def _current_items() -> Any:
    """Items joined with their current version: the columns :func:`_item_info` reads, in its order.

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


def _meta(raw: Any) -> dict[str, Any]:
    if raw is None or raw == "{}":
        return {}
    if isinstance(raw, str):
        out: dict[str, Any] = json.loads(raw)
        return out
    return dict(raw)  # PostgreSQL's driver already decoded JSONB


def _item_info(r: Any, folder: str) -> ItemInfo:
    iid, _fid, name, meta, created, updated, number, digest, size, ctype, vid = r
    return ItemInfo(iid, folder, name, _meta(meta), number, digest, size, ctype, created, updated, vid)


def _meta_matches(value: Any, wanted: Any) -> bool:
    if value is _MISSING:
        return False
    if value == wanted:
        return True
    return isinstance(value, list) and wanted in value
