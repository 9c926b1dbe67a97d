"""The store contract: folders, items, versions, metadata, search, names, events and concurrency.

Every test that takes ``home`` runs twice: on a real SQLite file and on a real PostgreSQL database.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import textwrap
import threading
import time
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from datamill import events
from datamill.client import LocalClient
from datamill.db.models import Blob, Item, Version
from datamill.errors import (
    AlreadyExists,
    BlobCorrupted,
    DigestMismatch,
    InvalidInput,
    InvalidMetadata,
    InvalidName,
    NotEmpty,
    NotFound,
)
from datamill.home import Home
from datamill.store.access import Level
from datamill.store.blobs import LocalBlobStore, digest_bytes
from datamill.store.store import ROOT, Store
from tests.helpers import add_user, open_home


def _store(home: Home) -> Store:
    return home.store


def _blob_rows(home: Home) -> set[str]:
    with home.db.read() as conn:
        return set(conn.execute(select(Blob.digest)).scalars())


def _kinds_since(home: Home, cursor: int) -> list[str]:
    return [e.kind for e in home.events.read(cursor)]


# ------------------------------------------------------------------------------------ folders


def test_create_folder_with_parents(home: Home) -> None:
    s, admin = home.store, home.admin
    info = s.create_folder(admin, "a/b/c", metadata={"k": 1})
    assert (info.path, info.name, info.parent, info.owner) == ("a/b/c", "c", "a/b", "admin")
    assert info.metadata == {"k": 1}
    top = s.get_folder(admin, "a")
    assert (top.path, top.parent, top.metadata) == ("a", ROOT, {})
    assert s.get_folder(admin, "/a/b/").path == "a/b"  # slashes around a path do not matter

    with pytest.raises(AlreadyExists, match="a/b/c"):
        s.create_folder(admin, "a/b/c")
    assert s.create_folder(admin, "a/b/c", exist_ok=True).id == info.id
    assert s.create_folder(admin, "a/b", exist_ok=True).id == s.get_folder(admin, "a/b").id

    with pytest.raises(NotFound, match="parents"):
        s.create_folder(admin, "x/y/z", parents=False)
    with pytest.raises(NotFound):
        s.get_folder(admin, "x")  # nothing half-made
    assert s.create_folder(admin, "a/b/d", parents=False).path == "a/b/d"
    for empty in ("", "/"):
        with pytest.raises(InvalidInput):
            s.create_folder(admin, empty)
    with pytest.raises(NotFound, match="nope"):
        s.get_folder(admin, "nope")


def test_list_folders(home: Home) -> None:
    s, admin = home.store, home.admin
    for path in ("zeta", "alpha/one", "alpha/two/deep", "mid"):
        s.create_folder(admin, path)
    assert [f.path for f in s.list_folders(admin)] == ["alpha", "mid", "zeta"]
    assert [f.path for f in s.list_folders(admin, ROOT)] == ["alpha", "mid", "zeta"]
    assert [f.path for f in s.list_folders(admin, "alpha")] == ["alpha/one", "alpha/two"]
    assert [f.path for f in s.list_folders(admin, "alpha/two")] == ["alpha/two/deep"]
    assert s.list_folders(admin, "alpha/two/deep") == []
    with pytest.raises(NotFound):
        s.list_folders(admin, "missing")


def test_rename_folder(home: Home) -> None:
    s, admin = home.store, home.admin
    s.create_folder(admin, "a/b/c")
    s.create_folder(admin, "a/sibling")
    s.put(admin, "a/b/c", "x.txt", b"x")
    renamed = s.rename_folder(admin, "a/b", "z")
    assert (renamed.path, renamed.name, renamed.parent) == ("a/z", "z", "a")
    with pytest.raises(NotFound):
        s.get_folder(admin, "a/b")
    assert s.get_folder(admin, "a/z/c").parent == "a/z"
    assert s.get_item(admin, "a/z/c/x.txt").folder == "a/z/c"
    assert [f.path for f in s.list_folders(admin, "a")] == ["a/sibling", "a/z"]
    with pytest.raises(AlreadyExists):
        s.rename_folder(admin, "a/z", "sibling")
    with pytest.raises(InvalidName):
        s.rename_folder(admin, "a/z", "..")
    assert s.rename_folder(admin, "a", "top").path == "top"
    assert s.get_item(admin, "top/z/c/x.txt").size == 1


def test_move_folder(home: Home) -> None:
    s, admin = home.store, home.admin
    s.create_folder(admin, "src/b/c/d")
    s.create_folder(admin, "src/bx/c")  # shares a prefix with src/b, must not move
    s.create_folder(admin, "dst")
    s.put(admin, "src/b/c/d", "deep.txt", b"deep")
    s.put(admin, "src/b", "top.txt", b"top")

    moved = s.move_folder(admin, "src/b", "dst")
    assert (moved.path, moved.parent) == ("dst/b", "dst")
    assert {f.path for f in s.list_folders(admin, "dst/b")} == {"dst/b/c"}
    assert s.get_folder(admin, "dst/b/c/d").path == "dst/b/c/d"
    assert s.get_item(admin, "dst/b/c/d/deep.txt").folder == "dst/b/c/d"
    assert s.get_item(admin, "dst/b/top.txt").folder == "dst/b"
    for gone in ("src/b", "src/b/c", "src/b/c/d"):
        with pytest.raises(NotFound):
            s.get_folder(admin, gone)
    assert s.get_folder(admin, "src/bx/c").path == "src/bx/c"
    assert [f.path for f in s.list_folders(admin, "src")] == ["src/bx"]

    # Into itself or below itself is refused, and nothing changes.
    for target in ("dst/b", "dst/b/c", "dst/b/c/d"):
        with pytest.raises(InvalidInput, match="into itself"):
            s.move_folder(admin, "dst/b", target)
    assert s.get_folder(admin, "dst/b/c/d").path == "dst/b/c/d"

    # To the top level, with a new name; a taken name is refused.
    s.create_folder(admin, "taken")
    with pytest.raises(AlreadyExists):
        s.move_folder(admin, "dst/b", ROOT, new_name="taken")
    top = s.move_folder(admin, "dst/b", ROOT, new_name="b2")
    assert (top.path, top.parent) == ("b2", ROOT)
    assert s.get_item(admin, "b2/c/d/deep.txt").size == 4
    with pytest.raises(NotFound):
        s.move_folder(admin, "b2", "no/such/parent")


def test_move_rewrites_paths_with_like_wildcards_and_unicode(home: Home) -> None:
    # '%' and '_' are LIKE wildcards; the subtree match must treat them literally.
    s, admin = home.store, home.admin
    s.create_folder(admin, "p_1%/kid")
    s.create_folder(admin, "pX1Y/kid")
    s.create_folder(admin, "Grüße 数据/ünter/blätter")
    s.create_folder(admin, "new")
    s.move_folder(admin, "p_1%", "new")
    assert s.get_folder(admin, "new/p_1%/kid").path == "new/p_1%/kid"
    assert s.get_folder(admin, "pX1Y/kid").path == "pX1Y/kid"
    s.move_folder(admin, "Grüße 数据", "new", new_name="Ærø")
    assert s.get_folder(admin, "new/Ærø/ünter/blätter").name == "blätter"
    assert [f.path for f in s.list_folders(admin, "new/Ærø")] == ["new/Ærø/ünter"]


def test_move_refuses_to_make_a_path_too_long(home: Home) -> None:
    # Paths are limited to 1024 bytes; a move must not push a descendant past that (it would
    # become unreachable on SQLite and overflow the column on PostgreSQL).
    s, admin = home.store, home.admin
    deep = "/".join(["d" * 200] * 4)
    s.create_folder(admin, f"src/{deep}")
    s.put(admin, f"src/{deep}", "f.txt", b"f")
    s.create_folder(admin, "x" * 250)
    before = home.events.latest()
    with pytest.raises(InvalidName, match="longer than 1024"):
        s.move_folder(admin, "src", "x" * 250)
    with pytest.raises(InvalidName, match="longer than 1024"):
        s.rename_folder(admin, "src", "y" * 250)
    assert home.events.latest() == before
    assert s.get_item(admin, f"src/{deep}/f.txt").size == 1
    assert s.list_folders(admin, "x" * 250) == []
    # A move that stays within the limit is fine.
    d, x = "d" * 200, "x" * 250
    assert s.move_folder(admin, f"src/{d}/{d}", x).path == f"{x}/{d}"
    assert s.get_item(admin, f"{x}/{d}/{d}/{d}/f.txt").size == 1


def test_delete_folder(home: Home) -> None:
    s, admin, blobs = home.store, home.admin, home.blobs
    s.create_folder(admin, "empty")
    assert s.delete_folder(admin, "empty") == 0
    with pytest.raises(NotFound):
        s.get_folder(admin, "empty")

    s.create_folder(admin, "only/subfolders")
    with pytest.raises(NotEmpty, match="recursive"):
        s.delete_folder(admin, "only")

    s.create_folder(admin, "tree/sub/deeper")
    s.create_folder(admin, "keep")
    shared = s.put(admin, "tree/sub", "shared.bin", b"shared bytes").digest
    own1 = s.put(admin, "tree", "own.bin", b"only here, v1").digest
    own2 = s.put(admin, "tree", "own.bin", b"only here, v2").digest
    own3 = s.put(admin, "tree/sub/deeper", "deep.bin", b"deep").digest
    s.put(admin, "keep", "copy.bin", b"shared bytes")
    with pytest.raises(NotEmpty, match="3 items"):
        s.delete_folder(admin, "tree")
    assert s.get_item(admin, "tree/own.bin").version == 2

    assert s.delete_folder(admin, "tree", recursive=True) == 3
    for gone in ("tree", "tree/sub", "tree/sub/deeper"):
        with pytest.raises(NotFound):
            s.get_folder(admin, gone)
    for digest in (own1, own2, own3):
        assert not blobs.exists(digest)
    assert blobs.exists(shared)  # keep/copy.bin still refers to it
    assert _blob_rows(home) == {shared}
    assert s.get_item(admin, "keep/copy.bin").digest == shared
    with home.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(Item)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(Version)).scalar_one() == 1

    # The same name can be used again afterwards.
    s.create_folder(admin, "tree")
    assert s.put(admin, "tree", "own.bin", b"new").version == 1


def test_delete_folder_whose_subtree_was_moved_in(home: Home) -> None:
    # A folder created early (small id) moved under one created later (bigger id).
    s, admin = home.store, home.admin
    s.create_folder(admin, "early/inner")
    s.put(admin, "early/inner", "f.txt", b"f")
    s.create_folder(admin, "late")
    s.move_folder(admin, "early", "late")
    assert s.delete_folder(admin, "late", recursive=True) == 1
    with pytest.raises(NotFound):
        s.get_folder(admin, "late/early/inner")
    assert s.list_folders(admin) == []
    assert _blob_rows(home) == set()


def test_folder_metadata(home: Home) -> None:
    s, admin = home.store, home.admin
    s.create_folder(admin, "f", metadata={"a": 1, "b": [1, 2]})
    info = s.set_folder_metadata(admin, "f", {"c": {"nested": True}}, unset=["a"])
    assert info.metadata == {"b": [1, 2], "c": {"nested": True}}
    assert s.get_folder(admin, "f").metadata == {"b": [1, 2], "c": {"nested": True}}
    assert s.set_folder_metadata(admin, "f", unset=["missing", "b"]).metadata == {"c": {"nested": True}}
    with pytest.raises(InvalidMetadata):
        s.set_folder_metadata(admin, "f", {"x": math.nan})
    assert s.get_folder(admin, "f").metadata == {"c": {"nested": True}}


# -------------------------------------------------------------------------------------- items


def test_put_versions_and_get_version(home: Home) -> None:
    s, admin = home.store, home.admin
    s.create_folder(admin, "d")
    v1 = s.put(admin, "d", "data.csv", b"x,y\n1,2\n")
    assert (v1.version, v1.path, v1.size, v1.content_type) == (1, "d/data.csv", 8, "text/csv")
    assert (v1.digest, v1.created_by, v1.created_via) == (digest_bytes(b"x,y\n1,2\n"), "admin", "upload")
    v2 = s.put(admin, "d", "data.csv", b"x,y\n1,3\n", content_type="application/x-mine")
    assert v2.version == 2 and v2.item_id == v1.item_id and v2.version_id != v1.version_id
    v3 = s.put(admin, "d", "data.csv", [b"x,y\n", b"9,9\n"])
    assert v3.version == 3

    assert [(v.version, v.digest) for v in s.versions(admin, "d/data.csv")] == [
        (1, v1.digest),
        (2, v2.digest),
        (3, v3.digest),
    ]
    item = s.get_item(admin, "d/data.csv")
    assert (item.version, item.digest, item.size, item.version_id) == (3, v3.digest, 8, v3.version_id)
    assert s.get_version(admin, "d/data.csv").version == 3
    for v in (v1, v2, v3):
        got = s.get_version(admin, "d/data.csv", v.version)
        assert (got.digest, got.version_id) == (v.digest, v.version_id)
        assert s.version_by_id(admin, v.version_id).version == v.version
    assert s.get_version(admin, "d/data.csv", 2).content_type == "application/x-mine"

    info, chunks = s.iter_bytes(admin, "d/data.csv", 1)
    assert info.version == 1 and b"".join(chunks) == b"x,y\n1,2\n"
    info, chunks = s.iter_bytes(admin, "d/data.csv", start=4, end=6)
    assert info.version == 3 and b"".join(chunks) == b"9,9"
    info, f = s.open_version(admin, "d/data.csv", 2)
    with f:
        assert f.read() == b"x,y\n1,3\n"

    for missing in (4, 0, 99):
        with pytest.raises(NotFound, match=rf"has no version {missing}; it has versions 1\.\.3") as err:
            s.get_version(admin, "d/data.csv", missing)
        assert "d/data.csv" in err.value.message
    with pytest.raises(NotFound, match=r"no item 'nope\.csv' in 'd'"):
        s.get_item(admin, "d/nope.csv")
    with pytest.raises(NotFound):
        s.put(admin, "no-such-folder", "a.csv", b"a")
    with pytest.raises(InvalidName, match="names no folder"):
        s.get_item(admin, "data.csv")


def test_put_refuses_mismatched_bytes(home: Home) -> None:
    s, admin = home.store, home.admin
    s.create_folder(admin, "d")
    with pytest.raises(DigestMismatch):
        s.put(admin, "d", "a.bin", b"abc", expected_digest=digest_bytes(b"abd"))
    with pytest.raises(NotFound):
        s.get_item(admin, "d/a.bin")
    assert not home.blobs.exists(digest_bytes(b"abc"))
    assert s.put(admin, "d", "a.bin", b"abc", expected_digest=digest_bytes(b"abc")).version == 1


def test_item_metadata_changes_make_no_version(home: Home) -> None:
    s, admin = home.store, home.admin
    s.create_folder(admin, "d")
    s.put(admin, "d", "a.txt", b"a", metadata={"a": 1, "tags": ["x"]})
    assert s.get_item(admin, "d/a.txt").metadata == {"a": 1, "tags": ["x"]}
    info = s.set_item_metadata(admin, "d/a.txt", {"b": "two"}, unset=["a"])
    assert info.metadata == {"tags": ["x"], "b": "two"}
    assert info.version == 1 and len(s.versions(admin, "d/a.txt")) == 1
    assert s.set_item_metadata(admin, "d/a.txt", unset=["tags", "never-set"]).metadata == {"b": "two"}
    # A new version merges the metadata it brings.
    s.put(admin, "d", "a.txt", b"a2", metadata={"c": None})
    item = s.get_item(admin, "d/a.txt")
    assert (item.version, item.metadata) == (2, {"b": "two", "c": None})
    assert s.list_items(admin, "d")[0].metadata == {"b": "two", "c": None}


def test_delete_item_collects_unshared_blobs(home: Home) -> None:
    s, admin, blobs = home.store, home.admin, home.blobs
    s.create_folder(admin, "d/e")
    x1 = s.put(admin, "d", "x", b"same").digest
    x2 = s.put(admin, "d", "x", b"x only").digest
    y = s.put(admin, "d/e", "y", b"same").digest
    assert x1 == y
    item_id = s.get_item(admin, "d/x").id

    s.delete_item(admin, "d/x")
    for call in (lambda: s.get_item(admin, "d/x"), lambda: s.versions(admin, "d/x")):
        with pytest.raises(NotFound):
            call()
    with home.db.read() as conn:
        assert conn.execute(select(Version.id).where(Version.item_id == item_id)).all() == []
    assert not blobs.exists(x2)
    assert blobs.exists(x1)  # d/e/y has the same bytes
    assert _blob_rows(home) == {x1}
    _, chunks = s.iter_bytes(admin, "d/e/y")
    assert b"".join(chunks) == b"same"

    s.delete_item(admin, "d/e/y")
    assert not blobs.exists(y)
    assert _blob_rows(home) == set()
    with pytest.raises(NotFound):
        s.delete_item(admin, "d/e/y")
    # The name and the bytes can come back.
    again = s.put(admin, "d", "x", b"same")
    assert again.version == 1 and blobs.exists(again.digest)


def test_find_by_glob_and_metadata(home: Home) -> None:
    s, admin = home.store, home.admin
    s.create_folder(admin, "proj/raw/2026")
    s.create_folder(admin, "other")
    s.put(admin, "proj", "readme.md", b"r", metadata={"kind": "doc"})
    s.put(admin, "proj/raw", "a.csv", b"a", metadata={"tags": ["raw", "2026"], "site": "north"})
    s.put(admin, "proj/raw", "b.csv", b"b", metadata={"tags": ["raw"], "site": "south"})
    s.put(admin, "proj/raw", "B.CSV", b"B", metadata={"tags": "raw"})
    s.put(admin, "proj/raw/2026", "c_1.csv", b"c", metadata={"site": "north", "n": 3})
    s.put(admin, "proj/raw/2026", "cx1.csv", b"d", metadata={"site": "north", "n": 3.5})
    s.put(admin, "other", "a.csv", b"o", metadata={"tags": ["raw"]})

    def names(**kw: Any) -> list[str]:
        return sorted(i.path for i in s.find_items(admin, **kw))

    assert names(folder="proj", name="*.csv") == [
        "proj/raw/2026/c_1.csv",
        "proj/raw/2026/cx1.csv",
        "proj/raw/a.csv",
        "proj/raw/b.csv",
    ]
    assert names(folder="proj", name="*.csv", recursive=False) == []
    assert names(folder="proj/raw", name="*.csv", recursive=False) == ["proj/raw/a.csv", "proj/raw/b.csv"]
    assert names(folder="proj", name="?.csv") == ["proj/raw/a.csv", "proj/raw/b.csv"]
    assert names(folder="proj", name="[ab].csv") == ["proj/raw/a.csv", "proj/raw/b.csv"]
    assert names(folder="proj", name="*.CSV") == ["proj/raw/B.CSV"]  # case matters
    assert names(folder="proj", name="c_1*") == ["proj/raw/2026/c_1.csv"]  # '_' is literal
    assert names(folder="proj", name="c?1*") == ["proj/raw/2026/c_1.csv", "proj/raw/2026/cx1.csv"]
    assert names(folder="proj") == [
        "proj/raw/2026/c_1.csv",
        "proj/raw/2026/cx1.csv",
        "proj/raw/B.CSV",
        "proj/raw/a.csv",
        "proj/raw/b.csv",
        "proj/readme.md",
    ]
    # Metadata: equal values, membership in a list value, all keys at once.
    assert names(folder="proj", metadata={"site": "north"}) == [
        "proj/raw/2026/c_1.csv",
        "proj/raw/2026/cx1.csv",
        "proj/raw/a.csv",
    ]
    assert names(folder="proj", metadata={"tags": "raw"}) == ["proj/raw/B.CSV", "proj/raw/a.csv", "proj/raw/b.csv"]
    assert names(folder="proj", metadata={"tags": "2026"}) == ["proj/raw/a.csv"]
    assert names(folder="proj", metadata={"tags": ["raw"]}) == ["proj/raw/b.csv"]
    assert names(folder="proj", metadata={"tags": "raw", "site": "south"}) == ["proj/raw/b.csv"]
    assert names(folder="proj", metadata={"n": 3}) == ["proj/raw/2026/c_1.csv"]
    assert names(folder="proj", metadata={"missing": "x"}) == []
    assert names(folder="proj", name="*.csv", metadata={"site": "north"}, recursive=False) == []
    assert names(folder="proj/raw", name="a*", metadata={"site": "north"}) == ["proj/raw/a.csv"]
    found = s.find_items(admin, "proj/raw", name="a.csv")[0]
    assert (found.folder, found.version, found.metadata["site"]) == ("proj/raw", 1, "north")
    with pytest.raises(NotFound):
        s.find_items(admin, "nope", name="*")


def test_find_items_paging_crosses_folders_and_filtered_batches(home: Home) -> None:
    """Pages of a search, concatenated, are the whole search; a short page is the last.

    2,600 items in three folders, one in seven matching: the pages' rows are read in batches of
    1,000 that the metadata filter mostly empties, and pages end inside and across folders.
    """
    from datamill.store import items as store_items

    s, admin = home.store, home.admin
    s.create_folder(admin, "big/a/deep")
    s.create_folder(admin, "big/b")
    for folder, count in (("big/a", 1200), ("big/b", 900), ("big/a/deep", 500)):
        entries = [(f"f{i:04d}", b"x") for i in range(count)]
        meta = [{"keep": i % 7 == 0} for i in range(count)]
        s.put_many(admin, folder, entries, item_metadata=meta)
    everything = [i.path for i in s.find_items(admin, "big", metadata={"keep": True})]
    assert len(everything) == 172 + 129 + 72
    assert 2 * store_items.FIND_BATCH < 2600  # the filter empties whole batches
    for limit in (1, 50, 172, 373, 1000):
        pages: list[list[str]] = []
        after = None
        while True:
            page = [i.path for i in s.find_items(admin, "big", metadata={"keep": True}, after=after, limit=limit)]
            pages.append(page)
            if len(page) < limit:
                break
            after = page[-1]
        assert [p for page in pages for p in page] == everything, limit
        assert all(len(page) == limit for page in pages[:-1])
    assert [i.name for i in s.find_items(admin, "big/a", name="f000*", after="big/a/f0003", limit=3)] == [
        "f0004",
        "f0005",
        "f0006",
    ]
    with pytest.raises(InvalidInput, match="last item of the previous page"):
        s.find_items(admin, "big/a", after="big/b/f0001", limit=3, recursive=False)


def test_list_items_paging(home: Home) -> None:
    s, admin = home.store, home.admin
    s.create_folder(admin, "many/sub")
    names = [f"item-{i:03d}" for i in range(25)]
    for n in reversed(names):
        s.put(admin, "many", n, n.encode())
    s.put(admin, "many/sub", "not-listed", b"x")
    s.put(admin, "many", "item-000", b"second version")
    listed = s.list_items(admin, "many")
    assert [i.name for i in listed] == names
    assert listed[0].version == 2 and listed[0].digest == digest_bytes(b"second version")
    assert all(i.folder == "many" and i.path == f"many/{i.name}" for i in listed)

    pages: list[list[str]] = []
    after = None
    while True:
        page = [i.name for i in s.list_items(admin, "many", after=after, limit=10)]
        if not page:
            break
        pages.append(page)
        after = page[-1]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [n for p in pages for n in p] == names
    assert [i.name for i in s.list_items(admin, "many", after="item-010", limit=3)] == [
        "item-011",
        "item-012",
        "item-013",
    ]
    assert s.list_items(admin, "many", after="item-024") == []
    assert s.list_items(admin, "many", limit=0) == []
    assert s.list_items(admin, "many/sub")[0].name == "not-listed"


def test_unicode_names(home: Home) -> None:
    s, admin = home.store, home.admin
    folder = "Données/数据 — 2026"
    name = "naïve café ☕.csv"
    s.create_folder(admin, folder)
    # Decomposed input (as macOS file names come) is stored and found in composed form.
    nfd = unicodedata.normalize("NFD", name)
    assert nfd != name
    v = s.put(admin, unicodedata.normalize("NFD", folder), nfd, "ü".encode())
    assert (v.folder, v.name) == (folder, name)
    assert s.get_item(admin, f"{folder}/{name}").size == 2
    assert s.get_item(admin, unicodedata.normalize("NFD", f"{folder}/{name}")).name == name
    assert s.put(admin, folder, name, b"v2").version == 2
    assert [i.name for i in s.list_items(admin, folder)] == [name]
    assert [i.name for i in s.find_items(admin, "Données", name="*café*")] == [name]
    assert [f.name for f in s.list_folders(admin, "Données")] == ["数据 — 2026"]
    longest = "é" * 127 + "a"  # 255 bytes: the limit exactly
    assert s.put(admin, folder, longest, b"x").name == longest


INVALID_NAMES = [
    "",
    ".",
    "..",
    "a/b",
    "a\\b",
    "a\x00b",
    "a\x01b",
    "\x7f",
    "tab\there",
    "new\nline",
    " lead",
    "trail ",
    "a" * 256,
    "é" * 128,  # 128 characters, 256 bytes
]


def _refused(exc: type[Exception], call: Any, what: str) -> None:
    """Like pytest.raises, but a failure names the case."""
    try:
        call()
    except exc:
        return
    except Exception as other:
        pytest.fail(f"{what}: raised {other!r}, not {exc.__name__}")
    pytest.fail(f"{what}: did not raise {exc.__name__}")


def test_invalid_names(home: Home) -> None:
    s, admin = home.store, home.admin
    s.create_folder(admin, "ok")
    cursor = home.events.latest()
    for bad in INVALID_NAMES:
        _refused(InvalidName, lambda bad=bad: s.put(admin, "ok", bad, b"x"), f"put {bad!r}")
        _refused(InvalidName, lambda bad=bad: s.rename_folder(admin, "ok", bad), f"rename to {bad!r}")
        _refused(InvalidName, lambda bad=bad: s.commit_version(admin, "ok", bad, home.blobs.put(b"x")), repr(bad))
        if "/" not in bad and bad:
            _refused(InvalidName, lambda bad=bad: s.create_folder(admin, f"ok/{bad}"), f"folder ok/{bad!r}")
            _refused(InvalidName, lambda bad=bad: s.create_folder(admin, bad), f"folder {bad!r}")
            _refused(InvalidName, lambda bad=bad: s.get_item(admin, f"ok/{bad}"), f"get ok/{bad!r}")
    assert s.list_items(admin, "ok") == []
    assert [f.path for f in s.list_folders(admin)] == ["ok"]
    assert home.events.latest() == cursor
    assert _blob_rows(home) == set()


class _NotJSON:
    pass


INVALID_METADATA = [
    [1, 2],
    "text",
    3,
    b"bytes",
    {"x": math.nan},
    {"x": math.inf},
    {"x": -math.inf},
    {"x": _NotJSON()},
    {"x": {1, 2}},
    {"x": [1, b"bytes"]},
    {"": 1},
    {"k" * 256: 1},
]


def test_invalid_metadata(home: Home) -> None:
    s, admin = home.store, home.admin
    s.create_folder(admin, "ok")
    s.put(admin, "ok", "a", b"a", metadata={"keep": 1})
    cursor = home.events.latest()
    for bad in INVALID_METADATA:
        what = repr(bad)[:40]
        _refused(InvalidMetadata, lambda bad=bad: s.put(admin, "ok", "b", b"b", metadata=bad), f"new item {what}")
        _refused(InvalidMetadata, lambda bad=bad: s.put(admin, "ok", "a", b"a2", metadata=bad), f"version {what}")
        _refused(InvalidMetadata, lambda bad=bad: s.set_item_metadata(admin, "ok/a", bad), f"set {what}")
        _refused(InvalidMetadata, lambda bad=bad: s.create_folder(admin, "ok/sub", metadata=bad), f"folder {what}")
        _refused(InvalidMetadata, lambda bad=bad: s.set_folder_metadata(admin, "ok", bad), f"folder set {what}")
        _refused(InvalidMetadata, lambda bad=bad: s.find_items(admin, "ok", metadata=bad), f"find {what}")
    assert home.events.latest() == cursor
    item = s.get_item(admin, "ok/a")
    assert (item.version, item.metadata) == (1, {"keep": 1})
    assert [i.name for i in s.list_items(admin, "ok")] == ["a"]
    assert [f.path for f in s.list_folders(admin, "ok")] == []
    assert _blob_rows(home) == {digest_bytes(b"a")}


# ------------------------------------------------------------------------------------- events


def test_each_change_appends_its_events_in_order(home: Home) -> None:
    s, admin = home.store, home.admin
    bob = add_user(home, "bob")
    start = home.events.latest()
    s.create_folder(admin, "e/f")
    s.put(admin, "e/f", "x", b"1")
    s.put(admin, "e/f", "x", b"2")
    s.set_item_metadata(admin, "e/f/x", {"k": 1})
    s.set_folder_metadata(admin, "e", {"k": 1})
    s.share(admin, "e", "bob", Level.READ)
    s.set_public(admin, "e", True)
    s.rename_folder(admin, "e/f", "g")
    s.put(admin, "e/g", "y", b"3")
    s.delete_item(admin, "e/g/x")
    s.delete_folder(admin, "e", recursive=True)
    evs = home.events.read(start)
    assert [e.kind for e in evs] == [
        "folder.created",
        "folder.created",
        "item.created",
        "item.updated",
        "metadata.changed",
        "metadata.changed",
        "access.changed",
        "access.changed",
        "folder.moved",
        "item.created",
        "item.deleted",
        "item.deleted",
        "folder.deleted",
    ]
    seqs = [e.seq for e in evs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] > start
    assert home.events.latest() == seqs[-1]
    assert all(e.actor_id == admin.id for e in evs)
    assert [e.data["path"] for e in evs[:2]] == ["e", "e/f"]
    created, updated = evs[2], evs[3]
    assert (created.data["version"], updated.data["version"]) == (1, 2)
    assert updated.data["digest"] == digest_bytes(b"2") and updated.item_id == created.item_id
    assert updated.folder_id == evs[1].folder_id
    assert evs[6].data == {"path": "e", "user": "bob", "level": "read"}
    assert evs[8].data == {"from": "e/f", "to": "e/g"}
    assert evs[10].item_id == created.item_id
    assert evs[-1].data["path"] == "e"
    # Filters by kind and prefix.
    assert [e.kind for e in home.events.read(start, kinds=["item."])].count("item.deleted") == 2
    assert {e.kind for e in home.events.read(start, kinds=["folder.moved", "access.*"])} == {
        "folder.moved",
        "access.changed",
    }
    assert len(home.events.read(start, limit=3)) == 3
    assert bob.id is not None


def test_failed_operations_append_nothing(home: Home) -> None:
    s, admin = home.store, home.admin
    add_user(home, "carol")
    s.create_folder(admin, "a/b")
    s.create_folder(admin, "a/c")
    s.put(admin, "a/b", "x", b"x")
    before = home.events.latest()
    failing = [
        (AlreadyExists, lambda: s.create_folder(admin, "a/b")),
        (NotEmpty, lambda: s.delete_folder(admin, "a")),
        (InvalidInput, lambda: s.move_folder(admin, "a", "a/b")),
        (AlreadyExists, lambda: s.rename_folder(admin, "a/b", "c")),
        (NotFound, lambda: s.put(admin, "nope", "x", b"x")),
        (NotFound, lambda: s.share(admin, "a", "nobody", Level.READ)),
        (NotFound, lambda: s.delete_item(admin, "a/b/nope")),
        (DigestMismatch, lambda: s.put(admin, "a/b", "x", b"y", expected_digest=digest_bytes(b"z"))),
    ]
    for exc, call in failing:
        with pytest.raises(exc):
            call()
    assert home.events.latest() == before
    assert s.get_item(admin, "a/b/x").version == 1


def test_events_share_the_transaction_of_the_change(home: Home) -> None:
    # The engine records versions inside its own write transaction (commit_version(conn=...)):
    # if that transaction fails after the version was recorded, neither the version nor its event stays.
    s, admin = home.store, home.admin
    s.create_folder(admin, "t")
    blob = home.blobs.put(b"output bytes")
    before = home.events.latest()
    with pytest.raises(RuntimeError, match="engine failed"), home.db.write() as conn:
        v = s.commit_version(admin, "t", "out.bin", blob, created_via="run", conn=conn)
        assert v.version == 1
        events.append(conn, "task.finished", actor_id=admin.id)
        raise RuntimeError("engine failed")
    assert home.events.latest() == before
    with pytest.raises(NotFound):
        s.get_item(admin, "t/out.bin")
    with home.db.write() as conn:
        v = s.commit_version(admin, "t", "out.bin", blob, created_via="run", conn=conn)
    assert _kinds_since(home, before) == ["item.created"]
    assert s.get_version(admin, "t/out.bin").created_via == "run"


def test_event_log_wait(home: Home) -> None:
    s, admin = home.store, home.admin
    log = home.events
    cursor = log.latest()
    assert log.wait(cursor - 1, timeout=5) is True  # already there

    t0 = time.monotonic()
    assert log.wait(cursor, timeout=0.3) is False
    waited = time.monotonic() - t0
    assert waited >= 0.29  # it waited for the timeout (no upper bound: a busy machine is slow)

    timer = threading.Timer(0.1, lambda: s.create_folder(admin, "woken"))
    t0 = time.monotonic()
    timer.start()
    try:
        assert log.wait(cursor, timeout=10) is True
    finally:
        timer.join()
    assert [e.kind for e in log.read(cursor)] == ["folder.created"]


def test_visible_events_hide_other_users_folders(home: Home) -> None:
    s, admin = home.store, home.admin
    alice = add_user(home, "alice")
    bob = add_user(home, "bob")
    start = home.events.latest()
    s.create_folder(alice, "alice-private")
    s.put(alice, "alice-private", "secret.txt", b"s")
    s.create_folder(alice, "alice-shared")
    s.put(alice, "alice-shared", "hello.txt", b"h")
    s.create_folder(bob, "bob-own")
    s.put(bob, "bob-own", "mine.txt", b"m")
    s.create_folder(alice, "alice-public", public_read=True)
    s.create_folder(alice, "gone")
    s.delete_folder(alice, "gone")
    with home.db.write() as conn:
        events.append(conn, "user.note", actor_id=admin.id)  # about no folder
    s.share(alice, "alice-shared", "bob", Level.READ)
    records = home.events.read(start)

    def paths(actor: Any) -> set[str]:
        out = set()
        for e in s.visible_events(actor, records):
            out.add(e.data.get("path") or e.data.get("folder") or e.kind)
        return out

    assert paths(bob) == {"alice-shared", "bob-own", "alice-public"}
    assert paths(alice) == {"alice-private", "alice-shared", "alice-public"}
    assert paths(admin) == {"alice-private", "alice-shared", "bob-own", "alice-public", "gone", "user.note"}
    assert s.visible_events(bob, []) == []


# -------------------------------------------------------------------------------- concurrency


def _run_threads(targets: list[Any]) -> None:
    errors: list[BaseException] = []

    def wrap(fn: Any) -> Any:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors


def test_concurrent_uploads_lose_no_version(home: Home) -> None:
    s, admin = home.store, home.admin
    s.create_folder(admin, "c")
    barrier = threading.Barrier(2)
    start = home.events.latest()

    def uploader(tag: str) -> Any:
        def run() -> None:
            barrier.wait()
            for i in range(20):
                s.put(admin, "c", "shared.bin", f"{tag}-{i}".encode())

        return run

    _run_threads([uploader("a"), uploader("b")])
    versions = s.versions(admin, "c/shared.bin")
    assert [v.version for v in versions] == list(range(1, 41))
    assert {v.digest for v in versions} == {digest_bytes(f"{t}-{i}".encode()) for t in "ab" for i in range(20)}
    assert s.get_item(admin, "c/shared.bin").version == 40
    kinds = _kinds_since(home, start)
    assert (kinds.count("item.created"), kinds.count("item.updated")) == (1, 39)


def test_concurrent_creation_of_one_item(home: Home) -> None:
    s, admin = home.store, home.admin
    s.create_folder(admin, "race")
    for round_ in range(5):
        barrier = threading.Barrier(2)
        name = f"new-{round_}"

        def create(tag: str, name: str = name, barrier: threading.Barrier = barrier) -> Any:
            def run() -> None:
                barrier.wait()
                s.put(admin, "race", name, tag.encode())

            return run

        _run_threads([create("a"), create("b")])
        versions = s.versions(admin, f"race/{name}")
        assert [v.version for v in versions] == [1, 2]
        assert len({v.item_id for v in versions}) == 1
    items = s.list_items(admin, "race")
    assert [i.name for i in items] == [f"new-{r}" for r in range(5)]
    with home.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(Item)).scalar_one() == 5


def test_concurrent_batches_of_the_same_new_items(home: Home) -> None:
    """Two put_many of overlapping new names at once: every entry becomes a version, each item is made once."""
    s, admin = home.store, home.admin
    s.create_folder(admin, "batches")
    names = [f"n{i:03d}" for i in range(40)]
    for round_ in range(3):
        barrier = threading.Barrier(2)
        start = home.events.latest()

        def batch(tag: str, barrier: threading.Barrier = barrier, round_: int = round_) -> Any:
            def run() -> None:
                barrier.wait()
                s.put_many(admin, "batches", [(n, f"{tag}-{round_}-{n}".encode()) for n in names])

            return run

        _run_threads([batch("a"), batch("b")])
        items = s.list_items(admin, "batches")
        assert [i.name for i in items] == names
        assert {i.version for i in items} == {2 * round_ + 2}
        kinds = _kinds_since(home, start)
        created = len(names) if round_ == 0 else 0
        assert (kinds.count("item.created"), kinds.count("item.updated")) == (created, 2 * len(names) - created)
    with home.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(Item)).scalar_one() == len(names)


def test_batch_meets_items_another_transaction_is_creating(home: Home, db_url: str, tmp_path: Path) -> None:
    """A batch whose new items another writer creates meanwhile waits for it, then adds versions to them."""
    if home.db.is_sqlite:
        pytest.skip("SQLite has one writer at a time: a batch never meets another's uncommitted item")
    s, admin = home.store, home.admin
    s.create_folder(admin, "flight")
    first = home.blobs.put(b"first")
    # A second Home on the same database, as another process would be: its writes do not queue
    # behind this one's in-process write lock.
    other = open_home(tmp_path / "home", db_url)
    done: list[Any] = []
    batch = threading.Thread(
        target=lambda: done.append(other.store.put_many(admin, "flight", [(n, n.encode()) for n in "abc"]))
    )
    try:
        with home.db.write() as conn:  # creates "a" and "b", uncommitted until the batch waits on them
            for name in ("a", "b"):
                s.commit_version(admin, "flight", name, first, conn=conn)
            me = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            batch.start()
            waiting = text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> :me"
            )
            deadline = time.monotonic() + 60  # against a hang only; the batch waits within milliseconds
            while time.monotonic() < deadline:
                with home.db.read() as watcher:
                    if watcher.execute(waiting, {"me": me}).scalar_one():
                        break
                time.sleep(0.01)
            else:
                pytest.fail("the batch never waited on the items this transaction creates")
        batch.join(timeout=60)
    finally:
        other.close()
    assert done, "the batch failed; see the thread's exception above"
    assert [(v.name, v.version) for v in done[0]] == [("a", 2), ("b", 2), ("c", 1)]
    assert [v.digest for v in s.versions(admin, "flight/a")] == [first.digest, digest_bytes(b"a")]


_WRITER = textwrap.dedent(
    """
    import sys
    from datamill.config import load_settings
    from datamill.home import Home

    def work(home, who, folders, puts):
        # The same new folders (exist_ok) and items as the other process, then versions of one item.
        for i in range(folders):
            home.store.create_folder(home.admin, f"race-{i}/sub", exist_ok=True)
            home.store.put(home.admin, f"race-{i}/sub", "x.bin", f"{who}-{i}".encode())
        for i in range(puts):
            home.store.put(home.admin, "shared", "x.bin", f"{who}-{i}".encode())

    if __name__ == "__main__":
        home = Home(load_settings(environ={}, home=sys.argv[1], database_url=sys.argv[2], demo=False))
        print("ready", flush=True)
        sys.stdin.readline()  # go
        work(home, "child", int(sys.argv[3]), int(sys.argv[4]))
        home.close()
        print("done", flush=True)
    """
)


@pytest.mark.slow
def test_second_process_writes(db_url: str, tmp_path: Path) -> None:
    # SQLite: another process writing at the same time never meets "database is locked".
    # PostgreSQL: racing creations of the same folders and items from two processes all succeed.
    folders, puts = (30, 200) if db_url.startswith("sqlite") else (30, 50)
    home = open_home(tmp_path / "home", db_url)
    namespace: dict[str, Any] = {}
    exec(_WRITER, namespace)  # the parent runs the very same code as the child
    try:
        home.store.create_folder(home.admin, "shared")
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path / "home"), db_url, str(folders), str(puts)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdin is not None
            assert child.stdout.readline().strip() == "ready", child.stderr and child.stderr.read()
            child.stdin.write("go\n")
            child.stdin.flush()
            namespace["work"](home, "parent", folders, puts)
            out, err = child.communicate(timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == 0, err
        assert "locked" not in err
        assert out.strip() == "done"
        s, admin = home.store, home.admin
        for i in range(folders):
            raced = s.versions(admin, f"race-{i}/sub/x.bin")
            assert [v.version for v in raced] == [1, 2]
            assert {v.digest for v in raced} == {digest_bytes(f"{who}-{i}".encode()) for who in ("parent", "child")}
        assert len(s.list_folders(admin)) == folders + 1
        versions = s.versions(admin, "shared/x.bin")
        assert [v.version for v in versions] == list(range(1, 2 * puts + 1))
        parent_digests = {digest_bytes(f"parent-{i}".encode()) for i in range(puts)}
        child_digests = {digest_bytes(f"child-{i}".encode()) for i in range(puts)}
        assert {v.digest for v in versions} == parent_digests | child_digests
        # Both processes really interleaved (the child did not simply run before or after us).
        owners = ["parent" if v.digest in parent_digests else "child" for v in versions]
        assert sum(1 for a, b in itertools.pairwise(owners) if a != b) >= 1
    finally:
        home.close()


# ----------------------------------------------------------------------------- the client


def test_client_put_and_download(home: Home, tmp_path: Path) -> None:
    client = LocalClient(home)
    client.create_folder("up")
    src = tmp_path / "src.bin"
    payload = bytes(range(256)) * 20000  # a few chunks
    src.write_bytes(payload)
    seen: list[int] = []
    with open(src, "rb") as f:
        info = client.put("up", "data.bin", f, progress=seen.append, size=len(payload))
    assert sum(seen) == len(payload) and info.digest == digest_bytes(payload)
    assert client.get("up/data.bin") == payload

    out = tmp_path / "out"
    out.mkdir()
    got = client.download("up/data.bin", out, progress=seen.append)
    assert got.version == 1 and (out / "data.bin").read_bytes() == payload
    client.download("up/data.bin", out / "renamed.bin")
    assert (out / "renamed.bin").read_bytes() == payload

    # A corrupted blob: the download fails and leaves neither the file nor a partial one.
    assert isinstance(home.blobs, LocalBlobStore)
    path = home.blobs.path_of(info.digest)
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(12345)
        f.write(b"\x00\x01\x02")
    with pytest.raises(BlobCorrupted):
        client.download("up/data.bin", out / "broken.bin")
    assert sorted(p.name for p in out.iterdir()) == ["data.bin", "renamed.bin"]
    # Uploading the same bytes again repairs it.
    with open(src, "rb") as f:
        assert client.put("up", "data.bin", f).digest == info.digest
    assert client.get("up/data.bin", version=1) == payload


def test_client_upload_interrupted_mid_copy_leaves_no_blob_and_no_version(home: Home, tmp_path: Path) -> None:
    client = LocalClient(home)
    client.create_folder("up")
    src = tmp_path / "src.bin"
    src.write_bytes(b"interrupted upload " * 200_000)  # several copy and hash steps' worth
    assert isinstance(home.blobs, LocalBlobStore)
    root = home.blobs.root

    def files() -> set[Path]:  # blobs and temporary files, not the lock files of live stores
        return {p for p in root.rglob("*") if p.is_file() and p.name != "lock"}

    before = files()

    def interrupt(n: int) -> None:
        raise KeyboardInterrupt  # as a Ctrl-C while the kernel copies the file in

    with open(src, "rb") as f, pytest.raises(KeyboardInterrupt):
        client.put("up", "data.bin", f, progress=interrupt)
    assert client.list_items("up") == []
    assert files() == before
    assert digest_bytes(src.read_bytes()) not in {f"blake3:{p.name}" for p in before}
