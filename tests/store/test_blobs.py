"""The BlobStore contract, run against every backend, plus what only the local store promises.

``BlobStoreContract`` is the suite; each backend is a short subclass saying how to build one and how
to list what it holds. The local store additionally promises read-only files under ``ab/cd/<hex>``,
no temporary files after a commit or an abort, detection of corrupted or truncated files, and that
a crash mid-write leaves no blob (only a temporary file that ``clean_tmp()`` removes).
"""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from datamill.errors import BlobCorrupted, BlobNotFound, DigestMismatch, InvalidInput
from datamill.store.blobs import CHUNK, BlobStore, LocalBlobStore, MemoryBlobStore, digest_bytes
from datamill.store.blobs import local as local_blobs
from datamill.store.blobs.transfer import copy_hashed

SMALL = b"hello, blobs\n"
# A few chunks and a bit, so streaming crosses chunk boundaries.
BIG = bytes(range(256)) * ((3 * CHUNK + 12345) // 256)
MISSING = "blake3:" + "0" * 64

INVALID_DIGESTS = [
    "",
    "blake3:",
    "blake3:abc",
    "sha256:" + "a" * 64,
    "blake3:" + "A" * 64,  # upper-case hex is not the canonical form
    "blake3:" + "g" * 64,
    "blake3:" + "a" * 63,
    "blake3:" + "a" * 65,
    "blake3:../../" + "a" * 58,
    "a" * 64,
]


class BlobStoreContract:
    """What every BlobStore does. Subclasses provide ``make`` and ``stored``."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> BlobStore:
        return self.make(tmp_path)

    def make(self, tmp_path: Path) -> BlobStore:
        raise NotImplementedError

    def stored(self, store: BlobStore) -> set[str]:
        """The digests whose bytes the store holds."""
        raise NotImplementedError

    # --- put ---------------------------------------------------------------------------------
    def test_put_bytes(self, store: BlobStore) -> None:
        info = store.put(SMALL)
        assert info.digest == digest_bytes(SMALL)
        assert info.digest.startswith("blake3:") and len(info.digest) == len("blake3:") + 64
        assert info.size == len(SMALL)
        assert store.exists(info.digest)
        assert store.size(info.digest) == len(SMALL)

    def test_put_file_object(self, store: BlobStore, tmp_path: Path) -> None:
        src = tmp_path / "big.bin"
        src.write_bytes(BIG)
        with open(src, "rb") as f:
            info = store.put(f)
        assert info.digest == digest_bytes(BIG)
        assert info.size == len(BIG)
        assert store.read(info.digest) == BIG

    def test_put_iterable_of_chunks(self, store: BlobStore) -> None:
        chunks = [BIG[i : i + 1000] for i in range(0, len(BIG), 1000)]
        info = store.put(iter(chunks))
        assert info.digest == digest_bytes(BIG)
        assert store.read(info.digest) == BIG

    def test_put_empty(self, store: BlobStore) -> None:
        info = store.put(b"")
        assert info == store.put(io.BytesIO(b""))
        assert info.digest == digest_bytes(b"") and info.size == 0
        assert store.read(info.digest) == b""
        assert list(store.iter_range(info.digest)) == []

    def test_same_bytes_twice_are_stored_once(self, store: BlobStore) -> None:
        a = store.put(SMALL)
        b = store.put(io.BytesIO(SMALL))
        c = store.put([SMALL[:3], SMALL[3:]])
        assert a == b == c
        assert self.stored(store) == {a.digest}

    def test_distinct_bytes_are_distinct_blobs(self, store: BlobStore) -> None:
        a = store.put(b"one")
        b = store.put(b"two")
        assert a.digest != b.digest
        assert self.stored(store) == {a.digest, b.digest}

    # --- read --------------------------------------------------------------------------------
    def test_open_read_round_trip(self, store: BlobStore) -> None:
        digest = store.put(BIG).digest
        with store.open(digest) as f:
            got = b"".join(iter(lambda: f.read(77777), b""))
        assert got == BIG
        assert store.read(digest) == BIG
        store.verify(digest)

    def test_iter_range_whole(self, store: BlobStore) -> None:
        digest = store.put(BIG).digest
        assert b"".join(store.iter_range(digest)) == BIG
        assert b"".join(store.iter_range(digest, 0, len(BIG) - 1)) == BIG
        assert b"".join(store.iter_range(digest, 0, len(BIG) + 100)) == BIG

    @pytest.mark.parametrize(
        ("start", "end"),
        [(0, 0), (0, 9), (5, 5), (1, None), (CHUNK - 1, CHUNK + 1), (CHUNK, 2 * CHUNK + 7), (100, 10**12)],
    )
    def test_iter_range_partial(self, store: BlobStore, start: int, end: int | None) -> None:
        digest = store.put(BIG).digest
        expected = BIG[start:] if end is None else BIG[start : end + 1]
        assert b"".join(store.iter_range(digest, start, end)) == expected

    def test_iter_range_last_byte(self, store: BlobStore) -> None:
        digest = store.put(BIG).digest
        n = len(BIG)
        assert b"".join(store.iter_range(digest, n - 1)) == BIG[-1:]
        assert b"".join(store.iter_range(digest, n - 1, n - 1)) == BIG[-1:]

    # --- exists / delete / size / missing ----------------------------------------------------
    def test_exists_delete_size(self, store: BlobStore) -> None:
        a = store.put(SMALL).digest
        b = store.put(BIG).digest
        assert store.size(a) == len(SMALL) and store.size(b) == len(BIG)
        store.delete(a)
        assert not store.exists(a)
        assert store.exists(b)
        assert self.stored(store) == {b}
        store.delete(a)  # deleting what is gone is fine
        assert store.put(SMALL).digest == a  # and the bytes can come back
        assert store.read(a) == SMALL

    def test_local_path_is_the_bytes_or_none(self, store: BlobStore) -> None:
        """A backend either names a file holding exactly the blob's bytes, or says it has none."""
        digest = store.put(BIG).digest
        path = store.local_path(digest)
        if path is not None:
            assert path.read_bytes() == BIG
        store.delete(digest)
        assert store.local_path(digest) is None  # never a path to bytes that are gone
        assert store.local_path(MISSING) is None

    def test_missing_blob(self, store: BlobStore) -> None:
        assert not store.exists(MISSING)
        with pytest.raises(BlobNotFound):
            store.open(MISSING)
        with pytest.raises(BlobNotFound):
            store.read(MISSING)
        with pytest.raises(BlobNotFound):
            store.size(MISSING)
        with pytest.raises(BlobNotFound):
            list(store.iter_range(MISSING))
        with pytest.raises(BlobNotFound):
            list(store.iter_range(MISSING, 1, 2))
        with pytest.raises(BlobNotFound):
            store.verify(MISSING)
        store.delete(MISSING)

    @pytest.mark.parametrize("digest", INVALID_DIGESTS)
    def test_invalid_digest(self, store: BlobStore, digest: str) -> None:
        store.put(SMALL)
        for call in (
            lambda: store.open(digest),
            lambda: store.read(digest),
            lambda: store.exists(digest),
            lambda: store.size(digest),
            lambda: store.delete(digest),
            lambda: list(store.iter_range(digest)),
            lambda: list(store.iter_range(digest, 1, 2)),
        ):
            with pytest.raises(InvalidInput, match="digest"):
                call()
        assert self.stored(store) == {digest_bytes(SMALL)}

    # --- writers -----------------------------------------------------------------------------
    def test_writer_commit(self, store: BlobStore) -> None:
        w = store.writer()
        for i in range(0, len(BIG), CHUNK // 3):
            w.write(BIG[i : i + CHUNK // 3])
        info = w.commit()
        assert info.digest == digest_bytes(BIG) and info.size == len(BIG)
        w.abort()  # after commit: a no-op, the blob stays
        assert store.read(info.digest) == BIG

    def test_writer_abort_leaves_nothing(self, store: BlobStore) -> None:
        w = store.writer()
        w.write(BIG[:CHUNK])
        w.write(BIG[CHUNK:])
        w.abort()
        w.abort()
        assert not store.exists(digest_bytes(BIG))
        assert self.stored(store) == set()

    def test_writer_as_context_manager_aborts_on_error(self, store: BlobStore) -> None:
        with pytest.raises(RuntimeError), store.writer() as w:
            w.write(SMALL)
            raise RuntimeError("upload broke")
        assert self.stored(store) == set()

    def test_expected_digest_and_size_match(self, store: BlobStore) -> None:
        info = store.put(BIG, expected_digest=digest_bytes(BIG), expected_size=len(BIG))
        assert info.digest == digest_bytes(BIG)

    def test_expected_digest_mismatch(self, store: BlobStore) -> None:
        with pytest.raises(DigestMismatch, match="nothing was stored"):
            store.put(SMALL, expected_digest=digest_bytes(b"something else"))
        assert not store.exists(digest_bytes(SMALL))
        assert self.stored(store) == set()

    def test_expected_size_mismatch(self, store: BlobStore) -> None:
        for wrong in (len(BIG) - 1, len(BIG) + 1, 0):
            with pytest.raises(DigestMismatch, match="nothing was stored") as err:
                store.put(io.BytesIO(BIG), expected_size=wrong)
            assert err.value.detail == {"received": len(BIG), "expected": wrong}
        assert self.stored(store) == set()

    def test_mismatch_on_writer_commit(self, store: BlobStore) -> None:
        w = store.writer(expected_digest=digest_bytes(BIG), expected_size=len(BIG))
        w.write(BIG[:-1])  # one byte short, as an interrupted upload would be
        with pytest.raises(DigestMismatch):
            w.commit()
        w.abort()
        assert self.stored(store) == set()

    # --- file transfers (put_file, copy_to) -----------------------------------------------------
    def test_put_file_stores_the_rest_of_the_file(self, store: BlobStore, tmp_path: Path) -> None:
        src = tmp_path / "big.bin"
        src.write_bytes(b"header" + BIG)
        seen: list[int] = []
        with open(src, "rb") as f:
            assert f.read(6) == b"header"  # a buffered read: the file's own position is further on
            info = store.put_file(f, progress=seen.append)
            assert f.tell() == len(BIG) + 6
        assert info.digest == digest_bytes(BIG) and info.size == len(BIG)
        assert store.read(info.digest) == BIG
        assert sum(seen) == len(BIG)

    def test_put_file_with_known_digest_gives_that_digest(self, store: BlobStore, tmp_path: Path) -> None:
        src = tmp_path / "big.bin"
        src.write_bytes(BIG)
        with open(src, "rb") as f:
            info = store.put_file(f, expected_digest=digest_bytes(BIG), expected_size=len(BIG))
        assert info.digest == digest_bytes(BIG)
        with open(src, "rb") as f, pytest.raises(DigestMismatch):
            store.put_file(f, expected_digest=digest_bytes(SMALL))
        assert self.stored(store) == {info.digest}

    def test_put_file_of_a_non_regular_file(self, store: BlobStore) -> None:
        info = store.put_file(io.BytesIO(BIG))  # no descriptor: read in chunks
        assert info.digest == digest_bytes(BIG)

    def test_copy_to_writes_the_verified_bytes(self, store: BlobStore, tmp_path: Path) -> None:
        digest = store.put(BIG).digest
        fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
        try:
            os.write(fd, b"prefix")  # written at the descriptor's position, which ends after them
            seen: list[int] = []
            assert store.copy_to(digest, fd, seen.append) == len(BIG)
            assert os.lseek(fd, 0, os.SEEK_CUR) == len(BIG) + 6
        finally:
            os.close(fd)
        assert (tmp_path / "out").read_bytes() == b"prefix" + BIG
        assert sum(seen) == len(BIG)
        with open(tmp_path / "none", "w+b") as f, pytest.raises(BlobNotFound):
            store.copy_to(MISSING, f.fileno())

    # --- adopt (a file the caller wrote and hashed) -------------------------------------------------
    def test_adopt_a_file_hashed_by_its_writer(self, store: BlobStore, tmp_path: Path) -> None:
        src = tmp_path / "staged.bin"
        src.write_bytes(BIG)
        info = store.adopt(src, digest_bytes(BIG), len(BIG), durable=False)
        store.sync()
        assert (info.digest, info.size) == (digest_bytes(BIG), len(BIG))
        src.unlink()  # the caller's own name for the file may go: the blob stays
        assert store.read(info.digest) == BIG
        assert self.stored(store) == {info.digest}

    def test_adopt_of_bytes_already_stored_keeps_the_blob(self, store: BlobStore, tmp_path: Path) -> None:
        digest = store.put(BIG).digest
        src = tmp_path / "staged.bin"
        src.write_bytes(BIG)
        assert store.adopt(src, digest, len(BIG)).digest == digest
        assert store.read(digest) == BIG and self.stored(store) == {digest}

    def test_adopt_refuses_a_file_of_another_size(self, store: BlobStore, tmp_path: Path) -> None:
        src = tmp_path / "staged.bin"
        src.write_bytes(BIG)
        with pytest.raises(DigestMismatch):
            store.adopt(src, digest_bytes(BIG), len(BIG) + 1)
        assert self.stored(store) == set()
        assert src.read_bytes() == BIG

    def test_mismatch_does_not_touch_existing_blob(self, store: BlobStore) -> None:
        good = store.put(SMALL).digest
        with pytest.raises(DigestMismatch):
            store.put(b"forged", expected_digest=good)
        assert store.read(good) == SMALL
        assert self.stored(store) == {good}


class TestMemoryBlobStore(BlobStoreContract):
    def make(self, tmp_path: Path) -> BlobStore:
        return MemoryBlobStore()

    def stored(self, store: BlobStore) -> set[str]:
        assert isinstance(store, MemoryBlobStore)
        return set(store.data)

    def test_adopt_checks_the_digest_of_the_copy(self, store: BlobStore, tmp_path: Path) -> None:
        src = tmp_path / "staged.bin"
        src.write_bytes(BIG)
        with pytest.raises(DigestMismatch):
            store.adopt(src, digest_bytes(SMALL), len(BIG))
        assert self.stored(store) == set()


def _temp_files(local: LocalBlobStore) -> list[Path]:
    """Temporary files of every process (not the lock files that mark a live owner)."""
    return [p for p in local.tmp_dir.rglob("*") if p.is_file() and p.name != "lock"]


def _blob_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and ".tmp" not in p.relative_to(root).parts]


class TestLocalBlobStore(BlobStoreContract):
    def make(self, tmp_path: Path) -> BlobStore:
        return LocalBlobStore(tmp_path / "blobs")

    def stored(self, store: BlobStore) -> set[str]:
        assert isinstance(store, LocalBlobStore)
        return {f"blake3:{p.name}" for p in _blob_files(store.root)}

    @pytest.fixture
    def local(self, tmp_path: Path) -> LocalBlobStore:
        return LocalBlobStore(tmp_path / "blobs")

    # --- layout ------------------------------------------------------------------------------
    def test_local_path_names_the_blob_file(self, local: LocalBlobStore) -> None:
        info = local.put(SMALL)
        assert local.local_path(info.digest) == local.path_of(info.digest)

    def test_local_files_finds_the_blob_files_there_once_each(self, local: LocalBlobStore) -> None:
        a, b = local.put(SMALL).digest, local.put(BIG).digest
        assert local.local_files([a, MISSING, b, a]) == {a: str(local.path_of(a)), b: str(local.path_of(b))}
        assert local.local_files([]) == {}

    @pytest.mark.parametrize("digest", INVALID_DIGESTS)
    def test_local_files_refuses_a_batch_holding_a_digest_that_is_not_one(
        self, local: LocalBlobStore, digest: str
    ) -> None:
        """Checked as a batch, before any digest is made a path: one bad digest among good ones fails
        it, naming that one, and nothing outside the store is looked at."""
        a = local.put(SMALL).digest
        with pytest.raises(InvalidInput, match="digest") as raised:
            local.local_files([a, MISSING, digest, a])
        assert repr(digest) in str(raised.value)

    def test_local_files_checks_each_digest_not_their_concatenation(self, local: LocalBlobStore) -> None:
        """Two strings that are not digests but join into two (the second starts where the first's
        extra hex digit ends) are refused: the batch is checked one digest a line."""
        first, second = "blake3:" + "a" * 64 + "b", "lake3:" + "b" * 63 + "c"
        assert first + second == "blake3:" + "a" * 64 + "blake3:" + "b" * 63 + "c"
        assert len(first + second) == 2 * len(MISSING)
        with pytest.raises(InvalidInput, match="digest"):
            local.local_files([first, second])
        with pytest.raises(InvalidInput, match="digest"):  # nor one string hold two digests
            local.local_files([MISSING, f"{MISSING}\n{MISSING}"])

    def test_local_places_names_each_blob_file_without_looking(self, local: LocalBlobStore) -> None:
        """The file a digest names, there or not (the step that reads it finds a missing one)."""
        a = local.put(SMALL).digest
        assert local.local_places([a, MISSING, a]) == {a: str(local.path_of(a)), MISSING: str(local.path_of(MISSING))}

    @pytest.mark.parametrize("digest", INVALID_DIGESTS)
    def test_local_places_refuses_a_batch_holding_a_digest_that_is_not_one(
        self, local: LocalBlobStore, digest: str
    ) -> None:
        with pytest.raises(InvalidInput, match="digest"):
            local.local_places([MISSING, digest])

    def test_blob_file_layout_and_mode(self, local: LocalBlobStore) -> None:
        info = local.put(BIG)
        hexpart = info.digest.split(":", 1)[1]
        path = local.root / hexpart[:2] / hexpart[2:4] / hexpart
        assert local.path_of(info.digest) == path
        assert _blob_files(local.root) == [path]
        assert path.read_bytes() == BIG
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) == 0, oct(mode)

    def test_small_unsynced_blobs_make_their_directories(self, local: LocalBlobStore) -> None:
        # put(bytes, durable=False) creates the file under its final name and makes its two directory
        # levels itself: a new top level, a new second level under an existing top, an existing pair.
        datas = [f"blob {i}".encode() for i in range(600)]  # 600 digests: many share a first level
        infos = [local.put(d, durable=False) for d in datas]
        infos.append(local.put(datas[0], durable=False))  # stored before: the same blob, kept
        tops = [i.digest.split(":", 1)[1][:2] for i in infos]
        assert len(set(tops)) < len(set(infos))  # some first levels held two blobs
        local.sync()
        assert len(_blob_files(local.root)) == len(datas)
        for d, info in zip(datas, infos, strict=False):
            assert info == local.put(d) and local.read(info.digest) == d
            mode = stat.S_IMODE(local.path_of(info.digest).stat().st_mode)
            assert mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) == 0, oct(mode)
        assert _temp_files(local) == []

    def test_adopt_links_the_file_instead_of_copying_it(self, local: LocalBlobStore, tmp_path: Path) -> None:
        src = tmp_path / "blobs" / ".staging" / "f"  # beside the blobs: the same file system
        src.parent.mkdir(parents=True)
        src.write_bytes(BIG)
        info = local.adopt(src, digest_bytes(BIG), len(BIG))
        blob = local.path_of(info.digest)
        assert os.path.samefile(src, blob) and blob.stat().st_nlink == 2
        assert stat.S_IMODE(blob.stat().st_mode) & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) == 0
        assert _temp_files(local) == []
        src.unlink()
        assert local.read(info.digest) == BIG and blob.stat().st_nlink == 1

    def test_no_temp_file_after_commit_or_abort(self, local: LocalBlobStore) -> None:
        local.put(SMALL)
        local.put(SMALL)  # the deduplicated second write removes its temporary file too
        assert _temp_files(local) == []
        w = local.writer()
        w.write(BIG)
        assert len(_temp_files(local)) == 1  # bytes go to a temporary file first
        w.abort()
        assert _temp_files(local) == []
        with pytest.raises(DigestMismatch):
            local.put(SMALL, expected_size=1)
        assert _temp_files(local) == []

    def test_blobs_survive_reopening(self, local: LocalBlobStore) -> None:
        digest = local.put(BIG).digest
        again = LocalBlobStore(local.root)
        assert again.exists(digest)
        assert again.read(digest) == BIG

    # --- corruption --------------------------------------------------------------------------
    def _corrupt(self, local: LocalBlobStore, digest: str, offset: int) -> None:
        path = local.path_of(digest)
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))

    @pytest.mark.parametrize("offset", [0, CHUNK + 3, len(BIG) - 1])
    def test_flipped_byte_is_detected(self, local: LocalBlobStore, offset: int) -> None:
        digest = local.put(BIG).digest
        self._corrupt(local, digest, offset)
        assert local.exists(digest)
        with pytest.raises(BlobCorrupted, match="corrupted") as err:
            local.read(digest)
        assert err.value.detail["digest"] == digest
        with pytest.raises(BlobCorrupted):
            b"".join(local.iter_range(digest))
        with pytest.raises(BlobCorrupted):
            b"".join(local.iter_range(digest, 0, len(BIG) - 1))
        # A range that does not include the flipped byte is still refused: a range cannot be
        # checked on its own, so the whole blob is verified first.
        start, end = (10, 20) if offset > 20 else (len(BIG) - 20, len(BIG) - 10)
        with pytest.raises(BlobCorrupted):
            b"".join(local.iter_range(digest, start, end))
        with pytest.raises(BlobCorrupted):
            local.verify(digest)

    def test_flipped_byte_in_small_blob(self, local: LocalBlobStore) -> None:
        digest = local.put(SMALL).digest
        self._corrupt(local, digest, 3)
        with pytest.raises(BlobCorrupted):
            local.read(digest)
        with pytest.raises(BlobCorrupted):
            b"".join(local.iter_range(digest, 0, 1))

    def test_partial_range_yields_nothing_from_a_corrupted_blob(self, local: LocalBlobStore) -> None:
        digest = local.put(BIG).digest
        self._corrupt(local, digest, len(BIG) - 1)
        got: list[bytes] = []
        with pytest.raises(BlobCorrupted):
            got.extend(local.iter_range(digest, 0, 99))
        assert got == []

    @pytest.mark.parametrize("keep", [0, 1, CHUNK, len(BIG) - 1])
    def test_truncated_blob_is_detected(self, local: LocalBlobStore, keep: int) -> None:
        digest = local.put(BIG).digest
        path = local.path_of(digest)
        os.chmod(path, 0o644)
        os.truncate(path, keep)
        with pytest.raises(BlobCorrupted):
            local.read(digest)
        with pytest.raises(BlobCorrupted):
            b"".join(local.iter_range(digest))
        if keep:
            with pytest.raises(BlobCorrupted):
                b"".join(local.iter_range(digest, 0, keep - 1))

    def test_uploading_again_repairs_a_corrupted_blob(self, local: LocalBlobStore) -> None:
        # BlobCorrupted tells the user to "upload the file again"; that must actually help.
        digest = local.put(BIG).digest
        self._corrupt(local, digest, 7)
        with pytest.raises(BlobCorrupted):
            local.read(digest)
        assert local.put(BIG).digest == digest
        assert local.read(digest) == BIG
        assert _temp_files(local) == []

    def test_a_big_blob_replaced_is_unlinked_after_the_write(
        self, local: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Big files are set aside under a second name and unlinked by a thread; the repair holds.
        monkeypatch.setattr(local_blobs, "SET_ASIDE_MIN", 1)
        digest = local.put(BIG).digest
        self._corrupt(local, digest, 7)
        old = os.stat(local.path_of(digest)).st_ino
        assert local.put(BIG).digest == digest
        assert os.stat(local.path_of(digest)).st_ino != old  # the new file, not the damaged one
        assert local.read(digest) == BIG
        deadline = time.monotonic() + 60
        while _temp_files(local):  # the set-aside name goes once its thread has run
            assert time.monotonic() < deadline, _temp_files(local)
            time.sleep(0.01)

    # --- crash mid-write ---------------------------------------------------------------------
    @pytest.mark.slow
    def test_crash_mid_write_leaves_no_blob(self, local: LocalBlobStore) -> None:
        child = textwrap.dedent(
            """
            import sys, time
            from datamill.store.blobs import LocalBlobStore
            store = LocalBlobStore(sys.argv[1])
            w = store.writer()
            for i in range(3):
                w.write(bytes([i]) * 1_000_000)
            print("written", flush=True)
            time.sleep(60)  # killed here, before commit
            """
        )
        proc = subprocess.Popen([sys.executable, "-c", child, str(local.root)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "written"
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        partial = b"".join(bytes([i]) * 1_000_000 for i in range(3))
        assert _blob_files(local.root) == []
        assert not local.exists(digest_bytes(partial))
        leftovers = _temp_files(local)
        assert len(leftovers) == 1 and leftovers[0].stat().st_size == len(partial)
        assert local.clean_tmp() == 1
        assert list(local.tmp_dir.iterdir()) == []
        assert local.clean_tmp() == 0
        # The store still works afterwards.
        assert local.read(local.put(partial).digest) == partial

    @pytest.mark.slow
    def test_clean_tmp_spares_a_live_process_upload(self, local: LocalBlobStore) -> None:
        # Opening the home (a `datamill ls` beside a server) must not break the server's uploads.
        child = textwrap.dedent(
            """
            import sys
            from datamill.store.blobs import LocalBlobStore
            store = LocalBlobStore(sys.argv[1])
            w = store.writer()
            w.write(b"a" * 1_000_000)
            print("written", flush=True)
            sys.stdin.readline()  # the parent cleaned meanwhile
            w.write(b"b" * 1_000_000)
            print(w.commit().digest, flush=True)
            sys.stdin.readline()  # killed here, with its temporary directory still there
            """
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", child, str(local.root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().strip() == "written"
            assert LocalBlobStore(local.root).clean_tmp() == 0  # as another process opening the home
            assert local.clean_tmp() == 0
            assert len(_temp_files(local)) == 1
            proc.stdin.write("go\n")
            proc.stdin.flush()
            digest = proc.stdout.readline().strip()
            assert digest == digest_bytes(b"a" * 1_000_000 + b"b" * 1_000_000)
            assert local.exists(digest)
            assert local.clean_tmp() == 0  # still alive: its (empty) directory stays
            assert len(list(local.tmp_dir.iterdir())) == 1
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert local.clean_tmp() == 0  # no temporary file was left, only the directory
        assert list(local.tmp_dir.iterdir()) == []

    def test_each_store_writes_in_its_own_locked_directory(self, local: LocalBlobStore) -> None:
        other = LocalBlobStore(local.root)
        w = other.writer()
        w.write(SMALL)
        assert local.clean_tmp() == 0 and len(_temp_files(local)) == 1
        assert other.read(w.commit().digest) == SMALL
        local.put(BIG)
        assert len(list(local.tmp_dir.iterdir())) == 2  # one directory per open store
        other.close()
        local.close()
        assert list(local.tmp_dir.iterdir()) == []
        assert local.read(local.put(SMALL).digest) == SMALL  # usable again after close

    def test_clean_tmp_removes_old_files_of_older_versions(self, local: LocalBlobStore) -> None:
        old = local.tmp_dir / "upload-abc123"
        old.write_bytes(b"partial")
        assert local.clean_tmp() == 0  # its age is all that can tell: young, so maybe in flight
        os.utime(old, (1, 1))
        assert local.clean_tmp() == 1
        assert not old.exists()

    # --- kernel copies -----------------------------------------------------------------------
    @pytest.mark.parametrize("offset", [0, CHUNK + 3, len(BIG) - 1])
    def test_copy_to_detects_a_corrupted_blob(self, local: LocalBlobStore, tmp_path: Path, offset: int) -> None:
        digest = local.put(BIG).digest
        self._corrupt(local, digest, offset)
        fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
        try:
            with pytest.raises(BlobCorrupted, match="corrupted") as err:
                local.copy_to(digest, fd)
        finally:
            os.close(fd)
        assert err.value.detail["digest"] == digest

    def test_interrupted_put_file_leaves_no_blob(self, local: LocalBlobStore, tmp_path: Path) -> None:
        src = tmp_path / "big.bin"
        src.write_bytes(BIG)

        def stop(n: int) -> None:
            raise KeyboardInterrupt  # as a Ctrl-C half-way through the copy

        with open(src, "rb") as f, pytest.raises(KeyboardInterrupt):
            local.put_file(f, progress=stop)
        assert _blob_files(local.root) == [] and _temp_files(local) == []

    def test_put_file_digest_is_that_of_the_stored_bytes(self, local: LocalBlobStore, tmp_path: Path) -> None:
        src = tmp_path / "big.bin"
        src.write_bytes(BIG)
        with open(src, "rb") as f:
            info = local.put_file(f)
        assert local.path_of(info.digest).read_bytes() == BIG
        local.verify(info.digest)
        mode = stat.S_IMODE(local.path_of(info.digest).stat().st_mode)
        assert mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) == 0, oct(mode)
        assert _temp_files(local) == []


@pytest.mark.parametrize("limit", [None, 5, CHUNK + 1])
def test_copy_hashed_offsets_and_limit(tmp_path: Path, limit: int | None) -> None:
    data = BIG[: 2 * CHUNK + 99]
    (tmp_path / "src").write_bytes(data)
    (tmp_path / "dst").write_bytes(b"0123")
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_RDWR)
    try:
        hexdigest, n = copy_hashed(src, dst, 7, 4, limit)
    finally:
        os.close(src)
        os.close(dst)
    part = data[7:] if limit is None else data[7 : 7 + limit]
    assert n == len(part) and f"blake3:{hexdigest}" == digest_bytes(part)
    assert (tmp_path / "dst").read_bytes() == b"0123" + part


def test_copy_hashed_across_file_systems(tmp_path: Path) -> None:
    """From a RAM file system to the disk: a kernel copy may refuse (EXDEV); the bytes still arrive."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm here")
    src_path = shm / f"datamill-test-{os.getpid()}"
    src_path.write_bytes(BIG)
    try:
        src = os.open(src_path, os.O_RDONLY)
        dst = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT)
        try:
            hexdigest, n = copy_hashed(src, dst)
        finally:
            os.close(src)
            os.close(dst)
    finally:
        src_path.unlink()
    assert n == len(BIG) and f"blake3:{hexdigest}" == digest_bytes(BIG)
    assert (tmp_path / "dst").read_bytes() == BIG
