"""The client interface: one set of methods, whether datamill is embedded or on a server.

:class:`Client` declares the primitives each transport implements; composite operations
(uploading a whole directory, downloading to a file with verification) are written once here
on top of them.
"""

from __future__ import annotations

import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from datamill.errors import BlobCorrupted, InvalidInput, NotFound
from datamill.events import EventRecord
from datamill.store.blobs import hasher
from datamill.store.names import check_name, join_path
from datamill.store.store import FolderInfo, ItemInfo, VersionInfo
from datamill.store.users import NewToken

#: Called with the number of bytes just transferred.
ProgressFn = Callable[[int], None]


class Client(ABC):
    """Folders, items, versions, metadata, users and events, through some transport."""

    # --- identity -------------------------------------------------------------------------
    @abstractmethod
    def whoami(self) -> dict[str, Any]:
        """The user this client acts as: ``{"id", "name", "is_admin"}``."""

    # --- folders --------------------------------------------------------------------------
    @abstractmethod
    def create_folder(
        self,
        path: str,
        parents: bool = True,
        exist_ok: bool = False,
        metadata: Mapping[str, Any] | None = None,
    ) -> FolderInfo:
        """Create a folder (and missing parents)."""

    @abstractmethod
    def folder(self, path: str) -> FolderInfo:
        """One folder."""

    @abstractmethod
    def list_folders(self, path: str = "") -> list[FolderInfo]:
        """Subfolders of ``path``; the top level for ``""``."""

    @abstractmethod
    def move_folder(self, path: str, new_parent: str, new_name: str | None = None) -> FolderInfo:
        """Move (and optionally rename) a folder."""

    def rename_folder(self, path: str, new_name: str) -> FolderInfo:
        """Rename a folder in place."""
        parent = path.strip("/").rsplit("/", 1)[0] if "/" in path.strip("/") else ""
        return self.move_folder(path, parent, new_name)

    @abstractmethod
    def delete_folder(self, path: str, recursive: bool = False) -> int:
        """Delete a folder; returns how many items went with it."""

    @abstractmethod
    def set_folder_metadata(
        self, path: str, set_: Mapping[str, Any] | None = None, unset: Iterable[str] = ()
    ) -> FolderInfo:
        """Set/unset folder metadata keys."""

    @abstractmethod
    def share(self, path: str, user: str, level: str) -> None:
        """Grant ``user`` read, write or admin (or none) on a folder."""

    @abstractmethod
    def set_public(self, path: str, public: bool) -> None:
        """Switch public read on a folder."""

    @abstractmethod
    def access_list(self, path: str) -> list[dict[str, Any]]:
        """Grants made on a folder."""

    # --- items ----------------------------------------------------------------------------
    @abstractmethod
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
        """Upload bytes as a new version of ``folder/name``."""

    @abstractmethod
    def item(self, path: str) -> ItemInfo:
        """An item with its current version."""

    @abstractmethod
    def list_items(self, folder: str) -> list[ItemInfo]:
        """Items of a folder, by name."""

    @abstractmethod
    def versions(self, path: str) -> list[VersionInfo]:
        """All versions of an item."""

    @abstractmethod
    def version(self, path: str, version: int | None = None) -> VersionInfo:
        """One version (the current one by default)."""

    @abstractmethod
    def iter_bytes(self, path: str, version: int | None = None) -> tuple[VersionInfo, Iterator[bytes]]:
        """A version's info and its bytes in chunks."""

    @abstractmethod
    def set_metadata(
        self, path: str, set_: Mapping[str, Any] | None = None, unset: Iterable[str] = ()
    ) -> ItemInfo:
        """Set/unset item metadata keys (no new version)."""

    @abstractmethod
    def find(
        self,
        folder: str,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        recursive: bool = True,
    ) -> list[ItemInfo]:
        """Items below ``folder`` by name glob and metadata."""

    @abstractmethod
    def delete_item(self, path: str) -> None:
        """Delete an item and its versions."""

    # --- users ----------------------------------------------------------------------------
    @abstractmethod
    def create_user(self, name: str, password: str | None = None, admin: bool = False) -> dict[str, Any]:
        """Create a user (site admins only)."""

    @abstractmethod
    def list_users(self) -> list[dict[str, Any]]:
        """All users (site admins only)."""

    @abstractmethod
    def create_token(self, user: str | None = None, name: str = "", ttl: float | None = None) -> NewToken:
        """A new token for ``user`` (yourself by default; others need a site admin)."""

    @abstractmethod
    def revoke_token(self, token_id: int) -> None:
        """Revoke one of your tokens (or anyone's, as a site admin)."""

    # --- events ---------------------------------------------------------------------------
    @abstractmethod
    def events(
        self, since: int = 0, limit: int = 1000, kinds: Iterable[str] | None = None
    ) -> list[EventRecord]:
        """Events after ``since`` that you may see."""

    @abstractmethod
    def wait_events(self, since: int, timeout: float) -> bool:
        """Block until there may be events after ``since`` (or ``timeout`` passes)."""

    def follow(
        self, since: int = 0, kinds: Iterable[str] | None = None, stop: Callable[[], bool] | None = None
    ) -> Iterator[EventRecord]:
        """Yield events as they are appended, starting after ``since``, until ``stop()`` is true."""
        cursor = since
        kinds = list(kinds) if kinds else None
        while not (stop and stop()):
            batch = self.events(cursor, 1000, kinds)
            for ev in batch:
                cursor = max(cursor, ev.seq)
                yield ev
            if not batch:
                self.wait_events(cursor, 1.0)

    def close(self) -> None:
        """Release what the client holds."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- composite operations, written once ------------------------------------------------
    def get(self, path: str, version: int | None = None) -> bytes:
        """All bytes of a (small) item version."""
        _, chunks = self.iter_bytes(path, version)
        return b"".join(chunks)

    def download(
        self, path: str, dest: str | Path, version: int | None = None, progress: ProgressFn | None = None
    ) -> VersionInfo:
        """Stream a version to ``dest`` (a file, or a directory to put it in), verifying its digest.

        Writes to a temporary file beside ``dest`` and renames it at the end, so a broken or
        corrupted transfer never leaves a partial file under the real name.
        """
        info, chunks = self.iter_bytes(path, version)
        target = Path(dest)
        if target.is_dir():
            target = target / info.name
        target.parent.mkdir(parents=True, exist_ok=True)
        h = hasher()
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    f.write(chunk)
                    if progress:
                        progress(len(chunk))
            if f"blake3:{h.hexdigest()}" != info.digest:
                raise BlobCorrupted(
                    f"the bytes received for {path!r} do not match digest {info.digest}; try again",
                    digest=info.digest,
                )
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return info

    def put_path(
        self,
        src: str | Path,
        folder: str,
        metadata: Mapping[str, Any] | None = None,
        progress: ProgressFn | None = None,
        on_file: Callable[[Path, VersionInfo], None] | None = None,
    ) -> list[VersionInfo]:
        """Upload a file, or a directory with its subfolders kept, into ``folder``."""
        src = Path(src)
        if not src.exists():
            raise NotFound(f"{src} does not exist on this machine", path=str(src))
        self.create_folder(folder, parents=True, exist_ok=True)
        if src.is_file():
            files = [(src, folder)]
        elif src.is_dir():
            base = join_path(folder, check_name(src.resolve().name, "folder name"))
            files = []
            made: set[str] = set()
            for root, dirs, names in os.walk(src):
                dirs.sort()
                rel = Path(root).relative_to(src)
                target = join_path(base, *rel.parts)
                if names and target not in made:
                    self.create_folder(target, parents=True, exist_ok=True)
                    made.add(target)
                files += [(Path(root) / n, target) for n in sorted(names)]
        else:
            raise InvalidInput(f"{src} is neither a file nor a directory")
        out = []
        for path, target in files:
            with open(path, "rb") as f:
                info = self.put(
                    target, path.name, f, metadata=metadata, progress=progress, size=path.stat().st_size
                )
            out.append(info)
            if on_file:
                on_file(path, info)
        return out


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout``; for scripts and examples, not the engine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
