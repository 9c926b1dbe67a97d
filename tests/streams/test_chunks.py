"""OpenMSIStream's chunk messages: encode/decode round trips, every malformed case, path checks, generations."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datamill.errors import BadChunk, InvalidInput
from datamill.streams.assembly import Decision, DirectoryReceiver, Generation, decide
from datamill.streams.chunks import (
    EMPTY_HASH,
    Chunk,
    check_chunk_size,
    check_relative_path,
    chunk_file,
    chunk_key,
    decode,
)


def _chunk(data: bytes = b"abc", **kw: object) -> Chunk:
    fields: dict[str, object] = {
        "filename": "a.txt",
        "file_hash": hashlib.sha512(data).digest(),
        "chunk_hash": hashlib.sha512(data).digest(),
        "offset": 0,
        "index": 1,
        "total": 1,
        "subdir": "",
        "filename_append": "",
        "data": data,
        "mtime": 12.5,
    }
    fields.update(kw)
    return Chunk(**fields)  # type: ignore[arg-type]


def _fields(c: Chunk) -> list[object]:
    return msgpack.unpackb(c.encode(), raw=False)


segment = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\x00"), min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(max_size=2048),
    name=segment,
    subdir=st.lists(segment, max_size=3).map("/".join),
    mtime=st.one_of(st.none(), st.floats(min_value=1, max_value=4e9)),
    with_mtime=st.booleans(),
)
def test_encode_decode_round_trip(data: bytes, name: str, subdir: str, mtime: float | None, with_mtime: bool) -> None:
    c = _chunk(data, filename=name, subdir=subdir, mtime=mtime)
    value = c.encode(with_mtime=with_mtime)
    assert len(msgpack.unpackb(value)) == (10 if with_mtime else 9)
    back = decode(value)
    assert back.data == data and back.filename == name and back.subdir == subdir
    assert back.mtime == (mtime if with_mtime else None)
    assert back.path == (f"{subdir}/{name}" if subdir else name)


def test_keys_are_openmsistreams() -> None:
    assert chunk_key("", "top.txt", 1, 1) == "_top.txt_chunk_1_of_1"
    assert chunk_key("sub", "data.bin", 2, 3) == "sub_data.bin_chunk_2_of_3"
    assert chunk_key("a/b", "x", 1, 2) == "a_b_x_chunk_1_of_2"


def test_filename_append_goes_before_the_suffix() -> None:
    assert _chunk(filename="scan.tif", filename_append="_v2").path == "scan_v2.tif"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (b"\xc1\xc1 not msgpack", "not msgpack"),
        (msgpack.packb({"a": 1}), "not a chunk array"),
        (msgpack.packb([1, 2, 3]), "3 fields"),
        (msgpack.packb(list(range(11))), "11 fields"),
    ],
)
def test_garbage_is_refused(value: bytes, words: str) -> None:
    with pytest.raises(BadChunk, match=words):
        decode(value)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_bad_chunk(value: bytes) -> None:
    try:
        decode(value)
    except BadChunk as exc:
        assert exc.code == "bad_chunk"


def test_wrong_chunk_hash_is_refused() -> None:
    fields = _fields(_chunk(b"payload"))
    fields[8] = b"tampered"
    with pytest.raises(BadChunk, match="SHA-512 of its data does not match"):
        decode(msgpack.packb(fields, use_bin_type=True))


@pytest.mark.parametrize(
    ("index", "value", "words"),
    [
        (0, 7, "filename must be text"),
        (1, b"short", "file_hash must be 64 bytes"),
        (3, -1, "chunk_offset_write"),
        (4, 0, "chunk_i"),
        (4, 5, "past the count"),
        (5, "2", "n_total_chunks"),
        (8, "text", "data must be bytes"),
        (9, "soon", "file_mtime must be a number"),
    ],
)
def test_wrong_field_types_are_refused(index: int, value: object, words: str) -> None:
    fields = _fields(_chunk())
    fields[index] = value
    with pytest.raises(BadChunk, match=words):
        decode(msgpack.packb(fields, use_bin_type=True))


@pytest.mark.parametrize(
    ("subdir", "name", "words"),
    [
        ("../../escape", "x", "'..' segment"),
        ("a/../b", "x", "'..' segment"),
        ("/etc", "passwd", "absolute"),
        ("a//b", "x", "empty segment"),
        ("a/", "x", "empty segment"),
        ("", "..", "'..' segment"),
        ("", ".", "'.' segment"),
        ("", "a/b", "contains '/'"),
        ("a\\..", "x", "backslash"),
        ("ok", "tab\there", "control character"),
    ],
)
def test_bad_paths_are_refused_on_decode(subdir: str, name: str, words: str) -> None:
    value = _chunk(filename=name, subdir=subdir).encode()
    with pytest.raises(BadChunk, match=words):
        decode(value)


def test_a_good_nested_unicode_path_passes() -> None:
    assert check_relative_path("Messung/été", "δ.bin") == "Messung/été/δ.bin"


@pytest.mark.parametrize("size", [0, 1000, 1023, 3 << 10, 1 << 27, -1024])
def test_chunk_size_must_be_a_power_of_two_in_range(size: int) -> None:
    with pytest.raises(InvalidInput, match="power of two"):
        check_chunk_size(size)


def test_chunk_file_streams_a_file_in_pieces(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "d.bin"
    f.write_bytes(bytes(range(256)) * 17)  # 4352 bytes: 5 chunks of 1 KiB, the last shorter
    msgs = list(chunk_file(f, tmp_path, chunk_size=1024))
    assert [k for k, _ in msgs] == [f"sub_d.bin_chunk_{i}_of_5" for i in range(1, 6)]
    chunks = [decode(v) for _, v in msgs]
    assert b"".join(c.data for c in chunks) == f.read_bytes()
    assert {c.file_hash for c in chunks} == {hashlib.sha512(f.read_bytes()).digest()}
    assert [c.offset for c in chunks] == [0, 1024, 2048, 3072, 4096]


def test_an_empty_file_is_one_empty_chunk(tmp_path: Path) -> None:
    (tmp_path / "e").write_bytes(b"")
    ((key, value),) = chunk_file(tmp_path / "e", tmp_path)
    c = decode(value)
    assert key == "_e_chunk_1_of_1" and c.data == b"" and c.file_hash == EMPTY_HASH and c.total == 1


# ------------------------------------------------------------------ generations and reassembly


def test_generation_rules() -> None:
    cur = Generation(b"h" * 64, total=3, mtime=10.0)
    same = _chunk(file_hash=b"h" * 64, total=3, index=1)
    assert decide(None, same, False) == Decision.ADD
    assert decide(cur, same, False) == Decision.ADD
    assert decide(cur, same, True) == Decision.DUPLICATE
    assert decide(cur, _chunk(file_hash=b"n" * 64, total=4, index=1), False) == Decision.SWITCH
    assert decide(cur, _chunk(file_hash=b"n" * 64, total=2, index=1), False) == Decision.STALE
    assert decide(cur, _chunk(file_hash=b"n" * 64, total=3, index=1, mtime=11.0), False) == Decision.SWITCH
    assert decide(cur, _chunk(file_hash=b"n" * 64, total=3, index=1, mtime=10.0), False) == Decision.STALE
    with pytest.raises(BadChunk, match="two chunk counts"):
        decide(cur, _chunk(file_hash=b"h" * 64, total=5, index=1), False)


@settings(max_examples=25, deadline=None)
@given(data=st.binary(max_size=4000), order=st.randoms(use_true_random=False), dup=st.booleans())
def test_receiver_rebuilds_in_any_order_with_duplicates(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, order: random.Random, dup: bool
) -> None:
    src = tmp_path_factory.mktemp("src")
    out = tmp_path_factory.mktemp("out")
    (src / "d").mkdir()
    (src / "d" / "f.bin").write_bytes(data)
    chunks = [decode(v) for _, v in chunk_file(src / "d" / "f.bin", src, chunk_size=1024)]
    if dup:
        chunks += chunks[:1]
    order.shuffle(chunks)
    rx = DirectoryReceiver(out)
    landed = [x for c in chunks if (x := rx.add(c)) is not None]
    rx.close()
    assert [x.path for x in landed] == ["d/f.bin"]
    assert (out / "d" / "f.bin").read_bytes() == data
    assert not (out / ".datamill-partial").exists()


def test_receiver_refuses_a_file_whose_whole_hash_fails(tmp_path: Path) -> None:
    data = b"x" * 10
    c = _chunk(data, file_hash=hashlib.sha512(b"other").digest())
    rx = DirectoryReceiver(tmp_path)
    with pytest.raises(BadChunk, match="does not match its SHA-512"):
        rx.add(c)
    assert not (tmp_path / "a.txt").exists()
