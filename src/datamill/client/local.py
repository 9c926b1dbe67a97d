"""The embedded client: works directly on a home directory, with the same access checks as the API."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, BinaryIO

from datamill.client.base import Client, ProgressFn
from datamill.errors import PermissionDenied
from datamill.events import EventRecord
from datamill.home import Home
from datamill.store import users
from datamill.store.access import Actor, Level
from datamill.store.blobs import CHUNK
from datamill.store.store import FolderInfo, ItemInfo, VersionInfo
from datamill.store.users import NewToken


class LocalClient(Client):
    """A client on a local :class:`~datamill.home.Home`, acting as one user (the admin by default)."""

    def __init__(self, home: Home, actor: Actor | None = None, owns_home: bool = False) -> None:
        self.home = home
        self.actor = actor or home.admin
        self._owns_home = owns_home

    @property
    def store(self) -> Any:
        """The underlying :class:`~datamill.store.store.Store`."""
        return self.home.store

    def close(self) -> None:
        if self._owns_home:
            self.home.close()

    def as_user(self, name: str) -> LocalClient:
        """A client on the same home acting as another user (to try access rules)."""
        return LocalClient(self.home, self.home.actor(name))

    def whoami(self) -> dict[str, Any]:
        return {"id": self.actor.id, "name": self.actor.name, "is_admin": self.actor.is_admin}

    # folders
    def create_folder(
        self,
        path: str,
        parents: bool = True,
        exist_ok: bool = False,
        metadata: Mapping[str, Any] | None = None,
    ) -> FolderInfo:
        return self.store.create_folder(
            self.actor, path, parents=parents, exist_ok=exist_ok, metadata=metadata
        )

    def folder(self, path: str) -> FolderInfo:
        return self.store.get_folder(self.actor, path)

    def list_folders(self, path: str = "") -> list[FolderInfo]:
        return self.store.list_folders(self.actor, path)

    def move_folder(self, path: str, new_parent: str, new_name: str | None = None) -> FolderInfo:
        return self.store.move_folder(self.actor, path, new_parent, new_name)

    def delete_folder(self, path: str, recursive: bool = False) -> int:
        return self.store.delete_folder(self.actor, path, recursive)

    def set_folder_metadata(
        self, path: str, set_: Mapping[str, Any] | None = None, unset: Iterable[str] = ()
    ) -> FolderInfo:
        return self.store.set_folder_metadata(self.actor, path, set_, unset)

    def share(self, path: str, user: str, level: str) -> None:
        self.store.share(self.actor, path, user, Level.parse(level))

    def set_public(self, path: str, public: bool) -> None:
        self.store.set_public(self.actor, path, public)

    def access_list(self, path: str) -> list[dict[str, Any]]:
        return self.store.access_list(self.actor, path)

    # items
    def put(
        self,
        folder: str,
        name: str,
        data: bytes | BinaryIO,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        progress: ProgressFn | None = None,
        size: int | None = None,
    ) -> VersionInfo:
        if progress is None or isinstance(data, bytes | bytearray):
            info: VersionInfo = self.store.put(self.actor, folder, name, data, content_type, metadata)
            if progress:
                progress(info.size)
            return info

        def chunks() -> Iterator[bytes]:
            while chunk := data.read(CHUNK):
                progress(len(chunk))
                yield chunk

        return self.store.put(self.actor, folder, name, chunks(), content_type, metadata)

    def item(self, path: str) -> ItemInfo:
        return self.store.get_item(self.actor, path)

    def list_items(self, folder: str) -> list[ItemInfo]:
        return self.store.list_items(self.actor, folder)

    def versions(self, path: str) -> list[VersionInfo]:
        return self.store.versions(self.actor, path)

    def version(self, path: str, version: int | None = None) -> VersionInfo:
        return self.store.get_version(self.actor, path, version)

    def iter_bytes(self, path: str, version: int | None = None) -> tuple[VersionInfo, Iterator[bytes]]:
        return self.store.iter_bytes(self.actor, path, version)

    def set_metadata(
        self, path: str, set_: Mapping[str, Any] | None = None, unset: Iterable[str] = ()
    ) -> ItemInfo:
        return self.store.set_item_metadata(self.actor, path, set_, unset)

    def find(
        self,
        folder: str,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        recursive: bool = True,
    ) -> list[ItemInfo]:
        return self.store.find_items(self.actor, folder, name, metadata, recursive)

    def delete_item(self, path: str) -> None:
        self.store.delete_item(self.actor, path)

    # users
    def _require_admin(self) -> None:
        if not self.actor.is_admin:
            raise PermissionDenied("only a site admin may manage users")

    def create_user(self, name: str, password: str | None = None, admin: bool = False) -> dict[str, Any]:
        self._require_admin()
        with self.home.db.write() as conn:
            user = users.create_user(conn, name, password, admin, by=self.actor)
        return {"id": user.id, "name": user.name, "is_admin": user.is_admin}

    def list_users(self) -> list[dict[str, Any]]:
        self._require_admin()
        with self.home.db.read() as conn:
            return [{"id": u.id, "name": u.name, "is_admin": u.is_admin} for u in users.list_users(conn)]

    def create_token(self, user: str | None = None, name: str = "", ttl: float | None = None) -> NewToken:
        if user is not None and user != self.actor.name:
            self._require_admin()
        with self.home.db.write() as conn:
            target = users.get_user(conn, user) if user else self.actor
            return users.create_token(conn, target, name, ttl, by=self.actor)

    def revoke_token(self, token_id: int) -> None:
        with self.home.db.write() as conn:
            users.revoke_token(conn, token_id, self.actor)

    # events
    def events(
        self, since: int = 0, limit: int = 1000, kinds: Iterable[str] | None = None
    ) -> list[EventRecord]:
        records = self.home.events.read(since, limit, kinds)
        return self.store.visible_events(self.actor, records)

    def wait_events(self, since: int, timeout: float) -> bool:
        return self.home.events.wait(since, timeout)
