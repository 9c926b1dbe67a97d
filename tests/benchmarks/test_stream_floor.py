"""The floor of ``benchmarks/stream.py`` (``benchmarks/stream_floor.py``): it must land what datamill's sender
sends, byte for byte, and refuse what the rules refuse, or the figures it gives are not a floor."""

from __future__ import annotations

import hashlib
import importlib.util
import sqlite3
import sys
from pathlib import Path

import blake3
import pytest

from datamill.streams.chunks import chunk_file

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "stream_floor.py"
_spec = importlib.util.spec_from_file_location("stream_floor", _PATH)
assert _spec is not None and _spec.loader is not None
stream_floor = importlib.util.module_from_spec(_spec)
sys.modules["stream_floor"] = stream_floor  # dataclasses look the module up by name
_spec.loader.exec_module(stream_floor)


def _messages(root: Path, files: dict[str, bytes], chunk_size: int = 1024) -> list[bytes]:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return [v for name in files for _k, v in chunk_file(root / name, root, chunk_size)]


def test_lands_files_whose_chunks_come_in_any_order_and_records_them(tmp_path: Path) -> None:
    big = bytes(range(256)) * 13  # 3,328 bytes: 4 chunks of 1 KiB, the last one short
    files = {"one.txt": b"a small file", "sub/big.bin": big}
    values = _messages(tmp_path / "src", files)
    one, chunks = values[0], values[1:]
    order = [chunks[2], one, chunks[0], chunks[3], chunks[1]]  # the file's first bytes in the second batch
    floor = stream_floor.Floor(tmp_path / "out", tmp_path / "floor.sqlite", workers=2)
    try:
        # Each batch completes one file: the small one, then the big one once its first chunk came.
        for batch, ends in ((order[:2], {0: 2}), (order[2:], {0: 5, 1: 7})):
            assert floor.commit([floor._pool.submit(floor.prepare, v) for v in batch], ends) == 1
    finally:
        floor.close()
    out = tmp_path / "out"
    assert (out / "one.txt").read_bytes() == files["one.txt"]
    assert (out / "sub%big.bin").read_bytes() == big
    db = sqlite3.connect(tmp_path / "floor.sqlite")
    rows = dict((n, (s, h, b)) for n, s, h, b in db.execute("SELECT name, size, sha512, blake3 FROM files"))
    for name, data in (("one.txt", files["one.txt"]), ("sub%big.bin", big)):
        assert rows[name] == (len(data), hashlib.sha512(data).digest(), blake3.blake3(data).hexdigest())
    assert db.execute("SELECT count(*) FROM chunks").fetchone() == (4,)
    assert dict(db.execute("SELECT partition, next_offset FROM offsets")) == {0: 5, 1: 7}
    db.close()


def test_refuses_a_chunk_whose_bytes_do_not_match_its_hash(tmp_path: Path) -> None:
    (value,) = _messages(tmp_path / "src", {"f.txt": b"x" * 100})
    bad = value.replace(b"x" * 100, b"x" * 99 + b"y")
    floor = stream_floor.Floor(tmp_path / "out")
    try:
        with pytest.raises(stream_floor.FloorError, match="SHA-512 does not match"):
            floor.prepare(bad)
    finally:
        floor.close()
    assert not (tmp_path / "out" / "f.txt").exists()


@pytest.mark.parametrize("subdir, name", [("..", "f"), ("a//b", "f"), ("", ".."), ("a", "b\\c")])
def test_refuses_a_path_that_is_not_plainly_relative(subdir: str, name: str) -> None:
    with pytest.raises(stream_floor.FloorError, match="not plainly relative"):
        stream_floor.flat_name(subdir, name, "")


def test_inserts_the_append_before_the_suffix_and_flattens_the_directories() -> None:
    assert stream_floor.flat_name("a/b", "data.csv", "_v2") == "a%b%data_v2.csv"
    assert stream_floor.flat_name("", "README", "_v2") == "README_v2"


class _Msg:
    """What the floor reads of a confluent-kafka message."""

    def __init__(self, partition: int, offset: int, value: bytes) -> None:
        self._p, self._o, self._v = partition, offset, value

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes:
        return self._v


class _Consumer:
    """A stand-in for a subscribed confluent-kafka consumer: ``poll`` gives one message, ``consume`` up to
    ``batch - 1`` more, so the floor sees several batches."""

    def __init__(self, messages: list[_Msg], batch: int) -> None:
        self.left, self.batch = list(messages), batch

    def poll(self, timeout: float) -> _Msg | None:
        return self.left.pop(0) if self.left else None

    def consume(self, num_messages: int, timeout: float) -> list[_Msg]:
        taken, self.left = self.left[: self.batch - 1], self.left[self.batch - 1 :]
        return taken


@pytest.mark.parametrize("ahead", [1, 3])
def test_consume_lands_every_file_and_stores_each_partitions_last_offset(tmp_path: Path, ahead: int) -> None:
    files = {f"f{i}.txt": f"file {i} ".encode() * (50 + i) for i in range(7)}
    files["big.bin"] = bytes(range(256)) * 20  # 5 chunks of 1 KiB
    values = _messages(tmp_path / "src", files)
    msgs = [_Msg(i % 3, i // 3, v) for i, v in enumerate(values)]  # 12 messages over 3 partitions
    floor = stream_floor.Floor(tmp_path / "out", tmp_path / "floor.sqlite", workers=2, ahead=ahead)
    try:
        run = floor.consume(_Consumer(msgs, batch=2), len(msgs))
    finally:
        floor.close()
    assert run["files"] == len(files) and run["bytes"] == sum(len(v) for v in values) and run["batches"] == 6
    for name, data in files.items():
        assert (tmp_path / "out" / name).read_bytes() == data
    db = sqlite3.connect(tmp_path / "floor.sqlite")
    assert dict(db.execute("SELECT partition, next_offset FROM offsets")) == {0: 4, 1: 4, 2: 4}
    db.close()
