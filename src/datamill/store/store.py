"""The store: folders, items, versions, metadata and blobs, with access checks and events.

:class:`Store` is the facade the rest of datamill uses; the work is done by one module per noun:

* :mod:`~datamill.store.folders` - the folder tree; :mod:`~datamill.store.sharing` - grants;
* :mod:`~datamill.store.items` - items and versions, read and deleted;
* :mod:`~datamill.store.versions` - the one writer of new versions;
* :mod:`~datamill.store.uploads` - bytes in, idempotent uploads;
* :mod:`~datamill.store.metadata` - what metadata may hold and how filters match it;
* :mod:`~datamill.store.garbage` - blob rows, holding and releasing blobs;
* :mod:`~datamill.store.groups`, :mod:`~datamill.store.visibility`, :mod:`~datamill.store.lookups`.

Every public method takes the :class:`~datamill.store.access.Actor` it acts for, checks access,
and appends its events in the same transaction as the change. Blob bytes are written before the
transaction that records them (and only after the access check), so a broken upload leaves
nothing behind and a committed version always points at bytes that exist. They are removed only
after the transaction that drops their last reference has committed
(:func:`~datamill.store.garbage.release_blobs`), so a crash in the middle of a delete never
leaves a listed item without its bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

from sqlalchemy import Connection, insert, select

from datamill import events
from datamill.db.database import Database
from datamill.db.models import Meta
from datamill.errors import InvalidInput
from datamill.store import folders, garbage, groups, item_pages, items, lookups, sharing, uploads
from datamill.store.access import Actor, Level
from datamill.store.blobs import ALGORITHM, BlobInfo, BlobStore, BlobWriter
from datamill.store.metadata import check_metadata
from datamill.store.names import check_name
from datamill.store.records import ROOT, FolderInfo, ItemInfo, VersionInfo
from datamill.store.uploads import IDEMPOTENCY_TTL, check_idempotency_key
from datamill.store.versions import guess_content_type
from datamill.store.visibility import visible_events

# Names other modules and tests import from here.
__all__ = [
    "IDEMPOTENCY_TTL",
    "ROOT",
    "FolderInfo",
    "ItemInfo",
    "Store",
    "VersionInfo",
    "check_idempotency_key",
    "check_metadata",
    "guess_content_type",
]


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
        with self.db.write() as conn:
            return folders.create_folder(conn, actor, path, parents, exist_ok, metadata, public_read)

    def get_folder(self, actor: Actor, path: str) -> FolderInfo:
        """The folder at ``path``."""
        with self.db.read() as conn:
            return folders.folder_info(conn, folders.readable_folder(conn, actor, path))

    def list_folders(self, actor: Actor, path: str = ROOT) -> list[FolderInfo]:
        """The subfolders of ``path`` (the top level for the root) that the actor may read."""
        with self.db.read() as conn:
            return folders.list_folders(conn, actor, path)

    def rename_folder(self, actor: Actor, path: str, new_name: str) -> FolderInfo:
        """Rename a folder in place."""
        new_name = check_name(new_name, "folder name")
        parent = path.strip("/").rsplit("/", 1)[0] if "/" in path.strip("/") else ROOT
        return self.move_folder(actor, path, parent, new_name=new_name)

    def move_folder(self, actor: Actor, path: str, new_parent: str, new_name: str | None = None) -> FolderInfo:
        """Move a folder (with everything below it) under ``new_parent`` ("" for the top level)."""
        with self.db.write() as conn:
            return folders.move_folder(conn, actor, path, new_parent, new_name)

    def delete_folder(self, actor: Actor, path: str, recursive: bool = False) -> int:
        """Delete a folder; with ``recursive``, everything below it. Returns the items removed."""
        with self.db.write() as conn:
            n_items, digests = folders.delete_folder(conn, actor, path, recursive)
        # Only now that the rows are gone for good may their bytes go (see garbage.release_blobs).
        garbage.release_blobs(self.db, self.blobs, digests)
        return n_items

    def set_folder_metadata(
        self, actor: Actor, path: str, set_: Mapping[str, Any] | None = None, unset: Iterable[str] = ()
    ) -> FolderInfo:
        """Set and unset metadata keys on a folder."""
        with self.db.write() as conn:
            return folders.set_folder_metadata(conn, actor, path, set_, unset)

    # ---------------------------------------------------------------- sharing

    def share(self, actor: Actor, path: str, user: str, level: Level) -> None:
        """Grant ``user`` a level on a folder (``Level.NONE`` removes the grant)."""
        with self.db.write() as conn:
            sharing.share(conn, actor, path, user, level)

    def share_group(self, actor: Actor, path: str, group: str, level: Level) -> None:
        """Grant a group a level on a folder (``Level.NONE`` removes the grant); its members get it.

        Needs admin on the folder. A grant is made only to a group the actor may see (a member,
        or a site admin), so that sharing does not tell who is in which group; a grant already
        on the folder (shown by :meth:`access_list`) can always be removed by the folder's admins.
        """
        with self.db.write() as conn:
            sharing.share_group(conn, actor, path, group, level)

    def set_public(self, actor: Actor, path: str, public: bool) -> None:
        """Switch public read access on a folder."""
        with self.db.write() as conn:
            sharing.set_public(conn, actor, path, public)

    def access_list(self, actor: Actor, path: str) -> list[dict[str, Any]]:
        """The grants on a folder (not inherited ones): ``{"user", "level"}``, then ``{"group", "level"}``."""
        with self.db.read() as conn:
            return sharing.access_list(conn, actor, path)

    def my_level(self, actor: Actor, path: str) -> Level:
        """The actor's effective level on a folder (NONE if it does not exist)."""
        with self.db.read() as conn:
            return sharing.my_level(conn, actor, path)

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

    def add_group_member(self, actor: Actor, group: str, user: str, admin: bool | None = None) -> groups.GroupInfo:
        """Add a member to a group, or change whether they are a group admin (None: leave as is)."""
        with self.db.write() as conn:
            return groups.add_member(conn, actor, group, user, admin)

    def remove_group_member(self, actor: Actor, group: str, user: str) -> None:
        """Remove a member from a group; their access through it ends at once."""
        with self.db.write() as conn:
            groups.remove_member(conn, actor, group, user)

    # ---------------------------------------------------------------- uploads

    def check_writable(self, actor: Actor, folder: str) -> None:
        """Raise (NotFound, PermissionDenied) unless ``actor`` may write in ``folder``; nothing is changed."""
        uploads.check_writable(self.db, actor, folder)

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
        return uploads.begin_upload(self.db, self.blobs, actor, folder, name, expected_digest, expected_size)

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
        progress: Callable[[int], None] | None = None,
    ) -> VersionInfo:
        """Store bytes as a new version of ``folder/name`` (creating the item when new).

        ``progress`` is called with each count of bytes stored from a file or chunks.
        """
        return uploads.put(
            self.db,
            self.blobs,
            actor,
            folder,
            name,
            data,
            content_type,
            metadata,
            expected_digest,
            created_via,
            progress,
        )

    def put_many(
        self,
        actor: Actor,
        folder: str,
        entries: Iterable[tuple[str, bytes | BinaryIO]],
        metadata: Mapping[str, Any] | None = None,
        created_via: str = "upload",
        item_metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[VersionInfo]:
        """Store many (small) files in one folder at once: one sync, one transaction.

        Each entry is ``(name, bytes or file)``. Much faster than :meth:`put` per file (no
        fsync per file, bulk statements); all or none of them are recorded. A name given twice
        becomes two versions, in order. ``item_metadata`` (one mapping or None per entry) is
        merged into each item's metadata over ``metadata``.
        """
        return uploads.put_many(self.db, self.blobs, actor, folder, entries, metadata, created_via, item_metadata)

    def put_folders(
        self,
        actor: Actor,
        batches: Sequence[uploads.FolderBatch],
        created_via: str = "upload",
        create: bool = False,
    ) -> list[list[VersionInfo]]:
        """Store small files into several folders at once: one sync, one transaction, all or none.

        Each batch is ``(folder, [(name, bytes)], item metadata per file or None)``, as for
        :meth:`put_many`; the versions come back per batch. With ``create``, missing folders
        (and parents) are created first. A tree of many small folders (``datamill watch``) then
        costs one sync and one transaction per batch instead of one per folder.
        """
        return uploads.put_folders(self.db, self.blobs, actor, batches, created_via, create)

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
        return uploads.commit_upload(
            self.db, self.blobs, actor, folder, name, blob, content_type, metadata, idempotency_key
        )

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
        args = (self.blobs, actor, folder, name, blob, content_type, metadata, created_via, run_id, task_id)
        if conn is not None:
            return uploads.commit_version(conn, *args)
        with self.db.write() as own:
            return uploads.commit_version(own, *args)

    # ---------------------------------------------------------------- items and versions

    def current_version(self, conn: Connection, folder: str, name: str) -> tuple[int, str] | None:
        """``(version id, digest)`` of the current version of ``folder/name``, without access checks.

        For the engine, inside its write transaction, after it checked access itself.
        """
        return lookups.current_version(conn, folder, name)

    def get_item(self, actor: Actor, path: str) -> ItemInfo:
        """An item and its current version."""
        with self.db.read() as conn:
            return items.get_item(conn, actor, path)

    def get_version(self, actor: Actor, path: str, version: int | None = None) -> VersionInfo:
        """One version of an item: the current one unless ``version`` is given."""
        with self.db.read() as conn:
            return items.get_version(conn, actor, path, version)

    def versions(self, actor: Actor, path: str) -> list[VersionInfo]:
        """Every version of an item, oldest first."""
        with self.db.read() as conn:
            return items.versions(conn, actor, path)

    def version_by_id(self, actor: Actor, version_id: int) -> VersionInfo:
        """A version by its id (as provenance records it)."""
        with self.db.read() as conn:
            return items.version_by_id(conn, actor, version_id)

    def list_items(
        self, actor: Actor, folder: str, after: str | None = None, limit: int | None = None
    ) -> list[ItemInfo]:
        """Items in a folder by name, with their current versions; page with ``after``/``limit``."""
        with self.db.read() as conn:
            return items.list_items(conn, actor, folder, after, limit)

    def page_items(
        self,
        actor: Actor,
        folder: str,
        sort: str = "name",
        descending: bool = False,
        offset: int = 0,
        limit: int = 100,
        contains: str = "",
    ) -> item_pages.ItemPage:
        """One page of a folder's items, sorted by ``sort`` and filtered by a name substring, with the total."""
        with self.db.read() as conn:
            return item_pages.page_items(conn, actor, folder, sort, descending, offset, limit, contains)

    def items_after(
        self,
        actor: Actor,
        folder: str,
        cursor: str | None = None,
        limit: int = item_pages.DEFAULT_BATCH,
        sort: str = "name",
        descending: bool = False,
    ) -> item_pages.ItemBatch:
        """The next keyset page of a folder's items after ``cursor``, with the cursor of the page after it."""
        with self.db.read() as conn:
            return item_pages.items_after(conn, actor, folder, cursor, limit, sort, descending)

    def item_dicts_after(
        self,
        actor: Actor,
        folder: str,
        cursor: str | None = None,
        limit: int = item_pages.DEFAULT_BATCH,
        sort: str = "name",
        descending: bool = False,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """:meth:`items_after` as the API sends it: JSON-ready dicts (for orjson) and the next cursor."""
        with self.db.read() as conn:
            return item_pages.item_dicts_after(conn, actor, folder, cursor, limit, sort, descending)

    def find_items(
        self,
        actor: Actor,
        folder: str,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        recursive: bool = True,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[ItemInfo]:
        """Items under ``folder`` whose name matches the glob ``name`` and whose metadata holds ``metadata``.

        A metadata filter value matches an equal value, or an element of a list value. Paged with
        ``after`` (the last item path of the previous page) and ``limit``; a short page is the last.
        """
        with self.db.read() as conn:
            return items.find_items(conn, actor, folder, name, metadata, recursive, after, limit)

    def set_item_metadata(
        self, actor: Actor, path: str, set_: Mapping[str, Any] | None = None, unset: Iterable[str] = ()
    ) -> ItemInfo:
        """Set and unset metadata keys on an item; no new version is made."""
        with self.db.write() as conn:
            items.set_item_metadata(conn, actor, path, set_, unset)
        return self.get_item(actor, path)

    def delete_item(self, actor: Actor, path: str) -> None:
        """Delete an item with all its versions; blobs nothing else refers to are removed."""
        with self.db.write() as conn:
            digests = items.delete_item(conn, actor, path)
        garbage.release_blobs(self.db, self.blobs, digests)

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

    def collect_garbage(self) -> int:
        """Remove every blob that no version (or engine record) refers to; returns how many."""
        return garbage.collect_garbage(self.db, self.blobs)
