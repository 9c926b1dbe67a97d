"""The records the store returns: a folder, an item with its current version, one version.

Plain dataclasses with no database behind them, so clients and the API can import them cheaply.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from datamill.store.names import join_path

#: A folder the actor can reach is identified by its path; the root is "".
ROOT = ""


@dataclass(frozen=True)
class FolderInfo:
    """A folder as callers see it."""

    id: int
    path: str
    name: str
    parent: str | None
    owner: str | None
    public_read: bool
    metadata: dict[str, Any]
    created_at: float
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


@dataclass(frozen=True)
class VersionInfo:
    """One version of an item."""

    item_id: int
    version_id: int
    folder: str
    name: str
    version: int
    digest: str
    size: int
    content_type: str
    created_by: str | None
    created_via: str
    created_at: float
    run_id: int | None = None
    task_id: int | None = None

    @property
    def path(self) -> str:
        """``folder/name``."""
        return join_path(self.folder, self.name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {**asdict(self), "path": self.path}


@dataclass(slots=True)
class ItemInfo:
    """An item with its current version.

    Not frozen: listings build 100,000 of these, and a frozen dataclass's ``__init__`` costs
    several times more.
    """

    id: int
    folder: str
    name: str
    metadata: dict[str, Any]
    version: int
    digest: str
    size: int
    content_type: str
    created_at: float
    updated_at: float
    version_id: int = 0

    @property
    def path(self) -> str:
        """``folder/name``."""
        return join_path(self.folder, self.name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        # Written out rather than asdict(): asdict deep-copies, and API listings call this 100k times.
        return {
            "id": self.id,
            "folder": self.folder,
            "name": self.name,
            "metadata": self.metadata,
            "version": self.version,
            "digest": self.digest,
            "size": self.size,
            "content_type": self.content_type,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "version_id": self.version_id,
            "path": self.path,
        }
