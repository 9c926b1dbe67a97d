"""The folder store: folders, items, versions, metadata, access and blobs."""

from datamill.store.access import ANONYMOUS, Actor, Level
from datamill.store.blobs import BlobInfo, BlobStore, LocalBlobStore, MemoryBlobStore, open_blob_store
from datamill.store.groups import GroupGrant, GroupInfo, GroupMember
from datamill.store.store import FolderInfo, ItemInfo, Store, VersionInfo

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
