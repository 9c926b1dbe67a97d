"""The folder store: folders, items, versions, metadata, access and blobs.

:class:`Store` (``store.py``) is the facade; one module per noun does the work (see its docstring).
Code outside this package reads the store's tables only through it and :mod:`datamill.store.lookups`.

The names below are loaded on first use (PEP 562), so that importing a light module of this package
(:mod:`~datamill.store.blobs`, :mod:`~datamill.store.names`, as the remote client does) does not load
the database layer that :class:`Store` needs.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datamill.store.access import ANONYMOUS, Actor, Level
    from datamill.store.blobs import BlobInfo, BlobStore, LocalBlobStore, MemoryBlobStore, open_blob_store
    from datamill.store.groups import GroupGrant, GroupInfo, GroupMember
    from datamill.store.records import FolderInfo, ItemInfo, VersionInfo
    from datamill.store.store import Store

__all__ = [
    "ANONYMOUS",
    "Actor",
    "BlobInfo",
    "BlobStore",
    "FolderInfo",
    "GroupGrant",
    "GroupInfo",
    "GroupMember",
    "ItemInfo",
    "Level",
    "LocalBlobStore",
    "MemoryBlobStore",
    "Store",
    "VersionInfo",
    "open_blob_store",
]


def __getattr__(name: str) -> Any:
    """The public names of the package, imported when first asked for."""
    if name in {"ANONYMOUS", "Actor", "Level"}:
        from datamill.store import access

        value = getattr(access, name)
    elif name in {"BlobInfo", "BlobStore", "LocalBlobStore", "MemoryBlobStore", "open_blob_store"}:
        from datamill.store import blobs

        value = getattr(blobs, name)
    elif name in {"GroupGrant", "GroupInfo", "GroupMember"}:
        from datamill.store import groups

        value = getattr(groups, name)
    elif name in {"FolderInfo", "ItemInfo", "VersionInfo"}:
        from datamill import records

        value = getattr(records, name)
    elif name == "Store":
        from datamill.store import store

        value = store.Store
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
