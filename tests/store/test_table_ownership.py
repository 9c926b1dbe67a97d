"""The store owns its tables: no module outside ``datamill.store`` queries them or knows a blob backend.

Outside :mod:`datamill.store` (and :mod:`datamill.db`, which defines the tables), code reads
folders, items, versions and blobs through the store and :mod:`datamill.store.lookups`, and asks a
blob store for a local file through ``BlobStore.local_path`` rather than checking its class.
"""

from __future__ import annotations

import ast
from pathlib import Path

import datamill

SRC = Path(datamill.__file__).parent

#: The models of the tables only ``datamill.store`` may query.
STORE_TABLES = {
    "Blob",
    "Folder",
    "FolderAccess",
    "Group",
    "GroupAccess",
    "GroupMembership",
    "IdempotencyKey",
    "Item",
    "Meta",
    "Version",
}

#: Modules still being moved to store look-ups in parallel work (issue 9); empty this when merged.
PENDING: set[str] = set()


def _outside_store() -> list[tuple[str, ast.Module]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(("store/", "db/")) or rel in PENDING:
            continue
        out.append((rel, ast.parse(path.read_text(), filename=rel)))
    return out


def test_no_module_outside_the_store_imports_its_tables() -> None:
    found = [
        f"{rel}:{node.lineno} imports {alias.name}"
        for rel, tree in _outside_store()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "datamill.db.models"
        for alias in node.names
        if alias.name in STORE_TABLES
    ]
    assert not found, "use the store or datamill.store.lookups instead:\n" + "\n".join(found)


def test_no_module_outside_the_store_names_a_blob_backend() -> None:
    found = [
        f"{rel}:{node.lineno}"
        for rel, tree in _outside_store()
        for node in ast.walk(tree)
        if (isinstance(node, ast.Name) and node.id in {"LocalBlobStore", "MemoryBlobStore"})
        or (isinstance(node, ast.alias) and node.name in {"LocalBlobStore", "MemoryBlobStore"})
    ]
    assert not found, "ask the BlobStore interface (e.g. local_path) instead:\n" + "\n".join(found)
