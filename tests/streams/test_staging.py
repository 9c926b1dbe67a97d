"""The stream dataflow's durable side without a broker: batches of real chunk messages applied to a real
home (SQLite and PostgreSQL): files land once, verified, with subfolders and provenance; bad input is
refused with a reason and commits nothing; partial files survive a restart and expire."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from sqlalchemy import select

from datamill.dataflows import staging
from datamill.dataflows.dataflow import Dataflows
from datamill.dataflows.ingest import StreamIngest
from datamill.dataflows.staging import Message, Stager, Target, in_progress
from datamill.db.models import StreamChunk, StreamFile, StreamOffset
from datamill.errors import InvalidDataflow
from datamill.events import EventKind
from datamill.home import Home
from datamill.records import check_metadata
from datamill.store.blobs import digest_bytes
from datamill.streams.chunks import Chunk, chunk_file
from tests.helpers import all_events, open_home

DEST = "Landed"
TOPIC = "instrument"


@pytest.fixture
def home(tmp_path: Path, db_url: str) -> Iterator[Home]:
    h = open_home(tmp_path / "home", db_url)
    h.store.create_folder(h.admin, DEST)
    yield h
    h.close()


def _stager(home: Home, name: str = "ingest") -> Stager:
    info = Dataflows(home.db).create(
        home.admin, name, {"kind": "stream", "topic": TOPIC, "destination": DEST, "broker": {"bootstrap": "h:1"}}
    )
    return Stager(home, Target(info.id, name, TOPIC, DEST, home.admin))


def _messages(path: Path, root: Path, chunk_size: int = 1024, partitions: int = 2, start: int = 0) -> list[Message]:
    """Chunks of ``path`` spread over partitions round-robin (as keys spread them), offsets from ``start``."""
    out = []
    for i, (_key, value) in enumerate(chunk_file(path, root, chunk_size)):
        out.append(Message(i % partitions, start + i // partitions, value))
    return out


def _read(home: Home, path: str) -> bytes:
    _info, chunks = home.store.iter_bytes(home.admin, path)
    return b"".join(chunks)


def _items(home: Home, folder: str = DEST) -> dict[str, int]:
    return {i.name: i.version for i in home.store.find_items(home.admin, folder)}


def test_a_multi_chunk_file_lands_once_with_subfolders_and_provenance(home: Home, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "run 1" / "é").mkdir(parents=True)
    f = src / "run 1" / "é" / "scan.bin"
    f.write_bytes(os.urandom(5000))
    stager = _stager(home)
    msgs = _messages(f, src)
    first = stager.apply(msgs[:3])
    assert first.files == [] and in_progress(home, stager.t.dataflow_id)[0]["chunks"] == 3
    done = stager.apply(msgs[3:])
    assert done.files == ["run 1/é/scan.bin"]
    assert _read(home, f"{DEST}/run 1/é/scan.bin") == f.read_bytes()
    meta = home.store.get_item(home.admin, f"{DEST}/run 1/é/scan.bin").metadata
    assert meta["stream"]["sha512"] == hashlib.sha512(f.read_bytes()).hexdigest()
    assert meta["stream"]["topic"] == TOPIC and meta["stream"]["dataflow"] == "ingest"
    assert meta["stream"]["offsets"] == {"0": [0, 2], "1": [0, 1]}
    assert meta["stream"]["mtime"] == pytest.approx(f.stat().st_mtime)
    assert meta["KafkaTopic"] == TOPIC
    # Staging is gone; offsets stored past the batch.
    with home.db.read() as conn:
        assert conn.execute(select(StreamChunk)).first() is None
        offs = {r.partition: r.next_offset for r in conn.execute(select(StreamOffset))}
    assert offs == {0: 3, 1: 2}
    # The same messages again (a consumer that restarted from older offsets) change nothing.
    again = stager.apply(msgs)
    assert again.skipped == len(msgs) and again.files == []
    assert _items(home)["scan.bin"] == 1


def _one_chunk(name: str) -> bytes:
    data = f"the bytes of {name}".encode()
    h = hashlib.sha512(data).digest()
    return Chunk(name, h, h, 0, 1, 1, "", "", data, None).encode()


def test_offsets_are_stored_per_dataflow_and_partition_as_partitions_appear(home: Home) -> None:
    a, b = _stager(home, "a"), _stager(home, "b")  # two dataflows reading one topic
    assert a.apply([Message(0, 0, _one_chunk("f0.txt"))]).files == ["f0.txt"]
    assert a.positions([0, 3]) == {0: 1}
    # A partition seen for the first time beside one that has its row already.
    assert a.apply([Message(0, 1, _one_chunk("f1.txt")), Message(3, 5, _one_chunk("f2.txt"))]).messages == 2
    assert a.positions([0, 3]) == {0: 2, 3: 6}
    # The other dataflow's offsets are its own: it starts partition 3 from the beginning.
    assert b.apply([Message(3, 0, _one_chunk("g0.txt"))]).files == ["g0.txt"]
    assert b.positions([0, 3]) == {3: 1} and a.positions([0, 3]) == {0: 2, 3: 6}
    # Below a stored offset, a message was applied before: skipped, under the offsets' lock.
    again = a.apply([Message(3, 5, _one_chunk("f2.txt")), Message(3, 6, _one_chunk("f3.txt"))])
    assert again.skipped == 1 and again.files == ["f3.txt"]
    assert a.positions([0, 3]) == {0: 2, 3: 7}


def test_a_one_chunk_files_metadata_is_checked_json_and_a_non_finite_mtime_is_refused(home: Home) -> None:
    stager = _stager(home)
    msgs = []
    for i, mtime in enumerate([1764850000.25, float("nan"), float("inf"), None]):
        data = f"file {i}".encode()
        h = hashlib.sha512(data).digest()
        msgs.append(Message(i % 2, i // 2, Chunk(f"f{i}.txt", h, h, 0, 1, 1, "sub", "", data, mtime).encode()))
    out = stager.apply(msgs)
    assert out.files == ["sub/f0.txt", "sub/f3.txt"]
    assert len(out.rejected) == 2 and all("not valid JSON" in r for r in out.rejected), out.rejected
    meta = home.store.get_item(home.admin, f"{DEST}/sub/f0.txt").metadata
    assert meta == check_metadata(meta)  # what the generic check would have stored
    assert meta == {
        "KafkaTopic": TOPIC,
        "dataflow": "ingest",
        "stream": {
            "dataflow": "ingest",
            "dataflow_id": stager.t.dataflow_id,
            "mtime": 1764850000.25,
            "offsets": {"0": [0, 0]},
            "path": "sub/f0.txt",
            "sha512": hashlib.sha512(b"file 0").hexdigest(),
            "topic": TOPIC,
        },
    }
    assert home.store.get_item(home.admin, f"{DEST}/sub/f3.txt").metadata["stream"]["mtime"] is None
    assert set(_items(home, f"{DEST}/sub")) == {"f0.txt", "f3.txt"}


def test_chunks_in_any_order_and_duplicates_land_the_file_once(home: Home, tmp_path: Path) -> None:
    f = tmp_path / "d.bin"
    f.write_bytes(os.urandom(4096 + 10))
    stager = _stager(home)
    values = [v for _k, v in chunk_file(f, tmp_path, 1024)]
    order = [4, 2, 2, 0, 3, 1, 1, 4]  # duplicates of chunks, on other partitions
    out = stager.apply([Message(i % 3, i, values[c]) for i, c in enumerate(order)])
    assert out.files == ["d.bin"] and out.duplicates >= 2
    assert _read(home, f"{DEST}/d.bin") == f.read_bytes()
    # A late duplicate of an already-landed file does not land it again.
    late = stager.apply([Message(0, 100, values[0])])
    assert late.duplicates == 1 and _items(home)["d.bin"] == 1


@pytest.mark.parametrize("case", ["in order", "reversed", "shuffled, restarted", "two servers"])
def test_a_file_hashed_as_its_chunks_arrive_lands_with_both_digests_right(
    home: Home, tmp_path: Path, case: str
) -> None:
    """The file's SHA-512 and BLAKE3 are kept while chunks are staged (chunks ahead of a gap hashed once
    it fills) and its staging file becomes the blob; after a restart or with chunks staged by another
    server, the part not hashed here is read at completion. Reading the item checks the BLAKE3."""
    f = tmp_path / "h.bin"
    data = os.urandom(10 * 1024 + 7)
    f.write_bytes(data)
    msgs = _messages(f, tmp_path, partitions=1)
    stager = _stager(home)
    order = list(range(len(msgs)))
    if case == "reversed":
        order.reverse()
    elif case != "in order":
        order = [3, 0, 1, 5, 2, 4, 7, 6, 10, 8, 9]
    other = Stager(home, stager.t)
    for n, i in enumerate(order):
        if case == "shuffled, restarted" and n == 5:
            stager = Stager(home, stager.t)  # a restarted server: no hash state, the chunks are staged
        who = other if case == "two servers" and n % 3 == 1 else stager
        out = who.apply([Message(0, 100 + n, msgs[i].value)])
    assert out.files == ["h.bin"] and out.rejected == []
    item = home.store.get_item(home.admin, f"{DEST}/h.bin")
    assert item.digest == digest_bytes(data)
    assert _read(home, f"{DEST}/h.bin") == data
    assert list(stager.staging_dir.iterdir()) == []


@pytest.mark.parametrize("behind", [1, 16 << 20])
def test_files_land_right_whether_the_hashing_keeps_up_or_not(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, behind: int
) -> None:
    """Batches commit without waiting for their chunks' hashes (only a completing file waits for its
    own), the hashing kept at most ``HASH_BEHIND`` bytes behind: two files whose chunks interleave,
    out of order, over many batches, land with the right SHA-512 and BLAKE3 either way."""
    monkeypatch.setattr(staging, "HASH_BEHIND", behind)
    datas = {name: os.urandom(24 * 1024 - 7 * n) for n, name in enumerate(["a.bin", "b.bin"])}
    per_file = []
    for name, data in datas.items():
        (tmp_path / name).write_bytes(data)
        per_file.append([v for _k, v in chunk_file(tmp_path / name, tmp_path, 1024)])
    values = [v for pair in zip(*per_file, strict=True) for v in pair]
    values = values[2:9] + values[:2] + values[9:]  # the first chunks arrive after others: hashed later
    stager = _stager(home)
    landed: list[str] = []
    for at in range(0, len(values), 5):
        out = stager.apply([Message(0, at + i, v) for i, v in enumerate(values[at : at + 5])])
        assert out.rejected == []
        landed += out.files
    assert sorted(landed) == ["a.bin", "b.bin"]
    for name, data in datas.items():
        assert home.store.get_item(home.admin, f"{DEST}/{name}").digest == digest_bytes(data)
        assert _read(home, f"{DEST}/{name}") == data


def test_zero_and_one_byte_files(home: Home, tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "one").write_bytes(b"1")
    stager = _stager(home)
    out = stager.apply(_messages(tmp_path / "empty", tmp_path) + _messages(tmp_path / "one", tmp_path, start=5))
    assert sorted(out.files) == ["empty", "one"]
    assert _read(home, f"{DEST}/empty") == b"" and _read(home, f"{DEST}/one") == b"1"


def _bad_values() -> dict[str, tuple[bytes, str]]:
    good = b"payload"
    h = hashlib.sha512(good).digest()
    fields = msgpack.unpackb(Chunk("f.txt", h, h, 0, 1, 1, "", "", good).encode())
    wrong_hash = list(fields)
    wrong_hash[8] = b"tampered"
    return {
        "not msgpack": (b"\xc1\xc1garbage", "not msgpack"),
        "wrong field count": (msgpack.packb(fields[:7], use_bin_type=True), "7 fields"),
        "wrong chunk hash": (msgpack.packb(wrong_hash, use_bin_type=True), "SHA-512 of its data does not match"),
        "path traversal": (Chunk("x", h, h, 0, 1, 1, "../../etc", "", good).encode(), "'..' segment"),
        "absolute path": (Chunk("x", h, h, 0, 1, 1, "/abs", "", good).encode(), "absolute"),
        "empty segment": (Chunk("x", h, h, 0, 1, 1, "a//b", "", good).encode(), "empty segment"),
        "whole-file hash": (
            Chunk("w.txt", hashlib.sha512(b"other").digest(), h, 0, 1, 1, "", "", good).encode(),
            "does not match its SHA-512",
        ),
    }


@pytest.mark.parametrize("case", list(_bad_values()))
def test_bad_input_is_refused_with_a_reason_and_nothing_committed(home: Home, case: str) -> None:
    value, words = _bad_values()[case]
    stager = _stager(home)
    out = stager.apply([Message(0, 0, value)])
    assert len(out.rejected) == 1 and words in out.rejected[0], out.rejected
    assert _items(home) == {}
    assert in_progress(home, stager.t.dataflow_id) == []
    ev = all_events(home, EventKind.STREAM_REJECTED)
    assert len(ev) == 1 and words in ev[0].data["reason"] and ev[0].data["name"] == "ingest"
    # The bad message is behind the consumer: the next one after it is read, not this one again.
    assert stager.positions([0]) == {0: 1}


def test_a_file_whose_chunks_do_not_add_up_is_refused(home: Home) -> None:
    data = b"a" * 2048
    whole = hashlib.sha512(data).digest()
    part = data[:1024]
    ph = hashlib.sha512(part).digest()
    # Two chunks that claim the same bytes twice at offsets 0 and 2048 (a gap): never committed.
    c1 = Chunk("g.bin", whole, ph, 0, 1, 2, "", "", part).encode()
    c2 = Chunk("g.bin", whole, ph, 2048, 2, 2, "", "", part).encode()
    out = _stager(home).apply([Message(0, 0, c1), Message(0, 1, c2)])
    assert out.files == [] and "do not fit together" in out.rejected[0]
    assert _items(home) == {}


def test_a_rejected_file_sent_again_lands_though_a_late_clean_up_of_the_rejected_one_runs(home: Home) -> None:
    """A file whose reassembly fails its SHA-512 is rejected and its staging file removed after the commit;
    with two servers, that removal may run while the other server already stages the file sent again.
    The re-sent file stages into a file of its own, so the late removal cannot take its bytes."""
    stager = _stager(home)
    data = os.urandom(3000)
    whole = hashlib.sha512(data).digest()

    def chunks(payload: bytes, start: int) -> list[Message]:
        parts = [payload[i : i + 1024] for i in range(0, len(payload), 1024)]
        return [
            Message(
                0, start + i, Chunk("r.bin", whole, hashlib.sha512(p).digest(), i * 1024, i + 1, 3, "", "", p).encode()
            )
            for i, p in enumerate(parts)
        ]

    bad = chunks(b"X" + data[1:], 0)  # a producer that corrupted a byte before hashing the chunk
    stager.apply(bad[:2])
    rejected_staging = list(stager.staging_dir.iterdir())
    assert len(rejected_staging) == 1
    out = stager.apply(bad[2:])
    assert out.files == [] and "does not match its SHA-512" in out.rejected[0]
    good = chunks(data, 3)
    stager.apply(good[:2])
    for leftover in rejected_staging:  # the other server's clean-up, late
        leftover.unlink(missing_ok=True)
    out = stager.apply(good[2:])
    assert out.files == ["r.bin"] and out.rejected == []
    assert _read(home, f"{DEST}/r.bin") == data
    assert list(stager.staging_dir.iterdir()) == []


def test_generations_more_chunks_replace_a_partial_older_one(home: Home, tmp_path: Path) -> None:
    stager = _stager(home)
    f = tmp_path / "g.bin"
    f.write_bytes(os.urandom(2048 + 1))  # 3 chunks
    old = _messages(f, tmp_path, partitions=1)
    stager.apply(old[:2])
    f.write_bytes(os.urandom(4096 + 1))  # 5 chunks: a newer version of the same path
    new = _messages(f, tmp_path, partitions=1, start=10)
    out = stager.apply([new[0], old[2], *new[1:]])  # the old generation's last chunk is now stale
    assert out.files == ["g.bin"] and out.stale == 1
    assert _read(home, f"{DEST}/g.bin") == f.read_bytes()


def test_partial_files_survive_a_restart_and_expire(home: Home, tmp_path: Path) -> None:
    f = tmp_path / "big.bin"
    f.write_bytes(os.urandom(3000))
    msgs = _messages(f, tmp_path, partitions=1)
    first = _stager(home)
    first.apply(msgs[:2])
    # A new stager (a restarted server) finishes the file from the staged chunks.
    again = Stager(home, first.t)
    assert again.positions([0]) == {0: 2}
    assert again.apply(msgs[2:]).files == ["big.bin"]
    # A file that never completes is dropped after the timeout, and said so.
    g = tmp_path / "never.bin"
    g.write_bytes(os.urandom(3000))
    again.apply(_messages(g, tmp_path, partitions=1, start=10)[:1])
    assert again.expire(3600) == []
    reasons = again.expire(-1)
    assert len(reasons) == 1 and "1 of 3 chunk(s)" in reasons[0] and "truncated" in reasons[0]
    assert in_progress(home, first.t.dataflow_id) == []
    assert "never.bin" not in _items(home)


def test_staged_bytes_live_in_staging_files_removed_once_the_file_lands(home: Home, tmp_path: Path) -> None:
    f = tmp_path / "s.bin"
    f.write_bytes(os.urandom(2500))
    stager = _stager(home)
    msgs = _messages(f, tmp_path, partitions=1)
    stager.apply(msgs[:2])
    staged = list(stager.staging_dir.iterdir())
    assert len(staged) == 1 and staged[0].read_bytes() == f.read_bytes()[:2048]
    # A stray file (a process killed between a commit and its clean-up) goes once it is old; the
    # partial file's own staging file stays even when old.
    stray = stager.staging_dir / "stray"
    stray.write_bytes(b"x")
    for p in (stray, staged[0]):
        os.utime(p, (1, 1))
    assert stager.expire(3600) == []
    assert not stray.exists() and staged[0].exists()
    assert stager.apply(msgs[2:]).files == ["s.bin"]
    assert list(stager.staging_dir.iterdir()) == []
    assert _read(home, f"{DEST}/s.bin") == f.read_bytes()


def test_stream_dataflow_validation(home: Home) -> None:
    flows = Dataflows(home.db)
    base = {"kind": "stream", "topic": TOPIC, "destination": DEST}
    for cfg, words in (
        ({**base, "topic": "bad topic!"}, "topic"),
        ({**base, "source": "Raw"}, "has no source"),
        ({**base, "destination": "Nope"}, "does not exist"),
        ({**base, "broker": {"bootstrap": "x"}}, "HOST:PORT"),
        ({**base, "partial_timeout_s": -1}, "positive"),
    ):
        with pytest.raises(InvalidDataflow, match=words):
            flows.create(home.admin, "s", cfg)
    info = flows.create(
        home.admin, "s", {**base, "broker": {"bootstrap": "k:9092", "sasl_username": "u", "sasl_password": "pw!"}}
    )
    assert info.broker == {"bootstrap": "k:9092", "sasl_username": "u", "sasl_password": "***"}
    assert "pw!" not in str(info.to_dict()) and "pw!" not in str([v.to_dict() for v in flows.history(home.admin, "s")])
    # Sending the masked password back keeps the stored one.
    flows.edit(home.admin, "s", {"broker": {**info.broker, "bootstrap": "k:9093"}})
    from datamill.db.models import Dataflow

    with home.db.read() as conn:
        cfg = conn.execute(select(Dataflow.config).where(Dataflow.name == "s")).scalar_one()
    assert cfg["broker"]["sasl_password"] == "pw!" and cfg["broker"]["bootstrap"] == "k:9093"
    assert all("pw!" not in str(e.data) for e in all_events(home))


def test_deleting_a_stream_dataflow_removes_its_staging_and_offsets(home: Home, tmp_path: Path) -> None:
    f = tmp_path / "p.bin"
    f.write_bytes(os.urandom(3000))
    stager = _stager(home)
    kept = _stager(home, "kept")
    stager.apply(_messages(f, tmp_path, partitions=1)[:2])
    kept.apply(_messages(f, tmp_path, partitions=1)[:1])
    assert len(list(stager.staging_dir.iterdir())) == 1 and len(list(kept.staging_dir.iterdir())) == 1
    Dataflows(home.db).delete(home.admin, "ingest")
    with home.db.read() as conn:
        assert (
            conn.execute(
                select(StreamChunk).where(
                    StreamChunk.file_id.in_(select(StreamFile.id).where(StreamFile.dataflow_id == stager.t.dataflow_id))
                )
            ).first()
            is None
        )
        assert (
            conn.execute(select(StreamOffset).where(StreamOffset.dataflow_id == stager.t.dataflow_id)).first() is None
        )
    # Its partial file is reported as dropped, in the deletion's event.
    deleted = all_events(home, EventKind.DATAFLOW_DELETED)
    assert deleted[-1].data == {"name": "ingest", "dropped_partial_files": 1, "dropped_bytes": 2048}
    # The server's reconcile of stream dataflows removes the staging directory of the deleted one only.
    StreamIngest(home).reconcile()
    assert not stager.staging_dir.exists()
    assert len(list(kept.staging_dir.iterdir())) == 1
    assert in_progress(home, kept.t.dataflow_id)[0]["chunks"] == 1
