"""Batched uploads: many small files in one sync and one transaction, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamill.client import LocalClient
from datamill.errors import InvalidName, NotFound, PermissionDenied
from datamill.home import Home
from datamill.store.access import Level
from tests.helpers import add_user


def test_put_many_creates_items_then_versions(home: Home) -> None:
    a = home.admin
    home.store.create_folder(a, "batch")
    before = home.events.latest()
    first = home.store.put_many(a, "batch", [(f"f{i}.txt", f"v1 {i}".encode()) for i in range(50)], {"k": 1})
    assert [v.version for v in first] == [1] * 50
    second = home.store.put_many(a, "batch", [("f3.txt", b"v2"), ("new.txt", b"new")])
    assert [(v.name, v.version) for v in second] == [("f3.txt", 2), ("new.txt", 1)]
    items = {i.name: i for i in home.store.list_items(a, "batch")}
    assert len(items) == 51
    assert items["f3.txt"].version == 2 and items["f3.txt"].metadata == {"k": 1}
    assert home.store.get_version(a, "batch/f3.txt", 1).digest == first[3].digest
    assert home.blobs.read(items["f3.txt"].digest) == b"v2"
    kinds = [e.kind for e in home.events.read(before)]
    assert kinds.count("item.created") == 51 and kinds.count("item.updated") == 1


def test_put_many_with_a_name_twice_keeps_both_versions(home: Home) -> None:
    a = home.admin
    home.store.create_folder(a, "dup")
    out = home.store.put_many(a, "dup", [("x", b"1"), ("x", b"2")])
    assert [v.version for v in out] == [1, 2]
    assert home.blobs.read(home.store.get_item(a, "dup/x").digest) == b"2"


def test_put_many_refuses_before_storing_anything(home: Home) -> None:
    a = home.admin
    home.store.create_folder(a, "private")
    bob = add_user(home, "bob")
    home.store.share(a, "private", "bob", Level.READ)
    root = Path(home.settings.home_path / "blobs")
    blobs_before = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "lock")  # not temp-dir locks
    with pytest.raises(PermissionDenied):
        home.store.put_many(bob, "private", [("a", b"never stored")])
    with pytest.raises(NotFound):
        home.store.put_many(bob, "missing", [("a", b"never stored")])
    with pytest.raises(InvalidName):
        home.store.put_many(a, "private", [("ok", b"fine"), ("bad/name", b"x")])
    assert home.store.list_items(a, "private") == []
    blobs_after = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "lock")
    # An invalid name in the batch may leave the bytes of earlier entries, never an item or version.
    assert len(blobs_after) - len(blobs_before) <= 1


def test_put_path_batches_small_files_and_keeps_subfolders(home: Home, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    for i in range(30):
        (src / f"f{i:02d}.txt").write_text(f"top {i}")
    (src / "sub" / "deep.txt").write_text("deep")
    (src / "big.bin").write_bytes(b"x" * (300 * 1024))  # above the batching limit: sent on its own
    client = LocalClient(home)
    seen: list[str] = []
    infos = client.put_path(src, "up", on_file=lambda p, _i: seen.append(p.name))
    assert len(infos) == 32 and len(seen) == 32
    assert len(client.list_items("up/tree")) == 31
    assert client.get("up/tree/sub/deep.txt") == b"deep"
    assert client.item("up/tree/big.bin").size == 300 * 1024


def test_put_many_writes_new_small_blobs_in_place_and_repairs_a_half_written_one(home: Home) -> None:
    from datamill.store.blobs.base import digest_bytes
    from datamill.store.blobs.local import LocalBlobStore

    blobs = home.blobs
    assert isinstance(blobs, LocalBlobStore)
    admin = home.admin
    home.store.create_folder(admin, "Raw")
    # A crash left a half-written file under the name the bytes of b.txt will have.
    broken = blobs.path_of(digest_bytes(b"bbbb"))
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"bb")
    home.store.put_many(admin, "Raw", [("a.txt", b"aaaa"), ("b.txt", b"bbbb")])
    assert blobs.read(digest_bytes(b"aaaa")) == b"aaaa"
    assert blobs.read(digest_bytes(b"bbbb")) == b"bbbb"  # replaced, not trusted
    assert list(blobs.own_tmp_dir().glob("upload-*")) == []


def test_put_many_over_several_statements_matches_each_version_to_its_item(home: Home) -> None:
    """More rows than one multi-row statement takes (500), new and existing items mixed: every returned
    version, version row, item metadata and event names the right item and bytes."""
    a = home.admin
    home.store.create_folder(a, "many")
    home.store.put_many(a, "many", [(f"old{i}", f"old {i}".encode()) for i in range(0, 1203, 7)], {"from": "first"})
    before = home.events.latest()
    names = [f"old{i}" if i % 7 == 0 else f"new{i}" for i in range(1203)]
    out = home.store.put_many(
        a, "many", [(n, f"v {n}".encode()) for n in names], {"batch": 2}, item_metadata=[{"n": n} for n in names]
    )
    assert [v.name for v in out] == names
    for v in out:
        assert v.version == (2 if v.name.startswith("old") else 1)
        stored = home.store.get_version(a, f"many/{v.name}", v.version)
        assert (stored.version_id, stored.item_id, stored.digest) == (v.version_id, v.item_id, v.digest)
        assert home.blobs.read(v.digest) == f"v {v.name}".encode()
    item = home.store.get_item(a, "many/old14")
    assert item.metadata == {"from": "first", "batch": 2, "n": "old14"}
    assert home.store.get_item(a, "many/new15").metadata == {"batch": 2, "n": "new15"}
    by_name = {v.name: v for v in out}
    events = [e for e in home.events.read(before, limit=5000) if e.kind in ("item.created", "item.updated")]
    assert len(events) == len(names)
    for e in events:
        v = by_name[e.data["name"]]
        assert (e.item_id, e.data["version_id"], e.data["version"], e.data["digest"]) == (
            v.item_id, v.version_id, v.version, v.digest,
        )  # fmt: skip
        assert e.kind == ("item.updated" if v.name.startswith("old") else "item.created")
