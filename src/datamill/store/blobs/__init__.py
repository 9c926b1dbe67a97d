"""Blobs: immutable bytes addressed by their BLAKE3 digest, behind a small interface.

A digest reads ``blake3:<64 hex>``; the algorithm is part of the name so a store can say what it
holds. Writing streams the bytes through the hasher into a temporary file, fsyncs it and renames
it into place, so a crash or a broken upload never leaves a partial blob under a real digest.
Reading hashes again and raises :class:`BlobCorrupted` at the end of a stream whose bytes changed.

Backends: :mod:`~datamill.store.blobs.local` (files) and :mod:`~datamill.store.blobs.memory`; the
interface every backend implements (checked by the contract suite in ``tests/store/test_blobs.py``)
is :class:`~datamill.store.blobs.base.BlobStore`. The backends are loaded on first use (PEP 562):
the remote client needs the digest helpers of this package, not a file store's locks and threads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from datamill.errors import ConfigError
from datamill.store.blobs.base import (
    ALGORITHM,
    CHUNK,
    BlobInfo,
    BlobStore,
    BlobWriter,
    VerifyingReader,
    check_digest,
    check_digests,
    digest_bytes,
    hasher,
)

if TYPE_CHECKING:
    from datamill.config import Settings
    from datamill.store.blobs.local import LocalBlobStore
    from datamill.store.blobs.memory import MemoryBlobStore

__all__ = [
    "ALGORITHM",
    "CHUNK",
    "BlobInfo",
    "BlobStore",
    "BlobWriter",
    "LocalBlobStore",
    "MemoryBlobStore",
    "VerifyingReader",
    "check_digest",
    "check_digests",
    "digest_bytes",
    "hasher",
    "open_blob_store",
]


def open_blob_store(url: str, settings: Settings | None = None) -> BlobStore:
    """The blob store for a URL: ``file:///path``, ``s3://bucket/prefix`` or ``memory://``.

    ``settings`` supplies an S3 store's endpoint, region and credentials (``s3_*``).
    """
    from datamill.store.blobs.local import LocalBlobStore
    from datamill.store.blobs.memory import MemoryBlobStore

    parts = urlsplit(url)
    if parts.scheme == "s3":
        from datamill.store.blobs.s3 import S3BlobStore, S3Options

        options = S3Options()
        if settings is not None:
            options = S3Options(
                endpoint_url=settings.s3_endpoint_url,
                region=settings.s3_region,
                access_key_id=settings.s3_access_key_id,
                secret_access_key=settings.s3_secret_access_key,
                profile=settings.s3_profile,
            )
        return S3BlobStore(url, options)
    if parts.scheme == "file":
        return LocalBlobStore(parts.path)
    if parts.scheme == "memory":
        return MemoryBlobStore()
    if parts.scheme == "" and url:
        return LocalBlobStore(url)
    raise ConfigError(
        f"unsupported blob store URL {url!r}: use file:///path or s3://BUCKET[/PREFIX]",
        key="blob_url",
    )


def __getattr__(name: str) -> Any:
    """:class:`LocalBlobStore` and :class:`MemoryBlobStore`, imported when first asked for."""
    if name == "LocalBlobStore":
        from datamill.store.blobs.local import LocalBlobStore

        return LocalBlobStore
    if name == "MemoryBlobStore":
        from datamill.store.blobs.memory import MemoryBlobStore

        return MemoryBlobStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
