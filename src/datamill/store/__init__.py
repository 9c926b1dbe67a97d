"""The folder store: folders, items, versions, metadata, access and blobs.

:class:`Store` (``store.py``) is the facade; one module per noun does the work (see its docstring).
Code outside this package reads the store's tables only through it and :mod:`datamill.store.lookups`.
"""

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
