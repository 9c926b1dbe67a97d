"""The S3 blob backend against a real S3-compatible server (SeaweedFS): the contract suite and what only S3 promises.

Every test gets its own prefix in one session bucket, so the contract's ``stored`` sees only its
own objects. What is checked behind the store's back goes through a plain boto3 client.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from datamill.client.remote import RemoteClient
from datamill.config import load_settings
from datamill.errors import BlobCorrupted, BlobNotFound, ConfigError, Unavailable
from datamill.home import Home
from datamill.store.blobs import BlobStore, digest_bytes, open_blob_store
from datamill.store.blobs.s3 import S3BlobStore, S3Options
from tests.conftest import S3Server
from tests.helpers import free_port, open_home, serve
from tests.store.test_blobs import BlobStoreContract

MIB = 1 << 20
PART = 5 * MIB
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    return s3_server.new_bucket()


def _options(server: S3Server, **changes: str) -> S3Options:
    values = {
        "endpoint_url": server.endpoint,
        "region": "us-east-1",
        "access_key_id": server.access_key,
        "secret_access_key": server.secret_key,
    }
    values.update(changes)
    return S3Options(**values)


def _keys(server: S3Server, bucket: str, prefix: str) -> list[str]:
    client: Any = server.client()
    out: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.extend(o["Key"] for o in page.get("Contents", []))
    return out


def _uploads(server: S3Server, bucket: str, prefix: str) -> list[dict[str, Any]]:
    client: Any = server.client()
    return list(client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []))


class TestS3BlobStore(BlobStoreContract):
    @pytest.fixture(autouse=True)
    def _server(self, s3_server: S3Server, bucket: str) -> None:
        self.server = s3_server
        self.bucket = bucket

    def make(self, tmp_path: Path) -> BlobStore:
        return S3BlobStore(f"s3://{self.bucket}/{uuid.uuid4().hex}", _options(self.server), part_size=PART)

    def stored(self, store: BlobStore) -> set[str]:
        assert isinstance(store, S3BlobStore)
        keys = _keys(self.server, store.bucket, f"{store.prefix}blobs/")
        assert set(store.digests()) == {f"blake3:{k.rsplit('/', 1)[-1]}" for k in keys}
        return set(store.digests())


@pytest.fixture
def s3(s3_server: S3Server, bucket: str) -> S3BlobStore:
    return S3BlobStore(f"s3://{bucket}/{uuid.uuid4().hex}/", _options(s3_server), part_size=PART)


@contextmanager
def _watching(store: S3BlobStore, event: str, handler: Any) -> Iterator[None]:
    """``handler`` on botocore's ``event`` of the store's (shared) client, for the block only."""
    events = store.client.meta.events
    events.register(event, handler, unique_id=f"test-{id(handler)}")
    try:
        yield
    finally:
        events.unregister(event, unique_id=f"test-{id(handler)}")


def _data(size: int) -> bytes:
    return (b"datamill-s3 " * (size // 12 + 1))[:size]


def test_object_names_follow_the_digest(s3: S3BlobStore, s3_server: S3Server) -> None:
    digest = s3.put(b"named").digest
    hexpart = digest.split(":")[1]
    assert _keys(s3_server, s3.bucket, s3.prefix) == [f"{s3.prefix}blobs/{hexpart[:2]}/{hexpart[2:4]}/{hexpart}"]


def test_streamed_multipart_write_leaves_no_temporary_object(s3: S3BlobStore, s3_server: S3Server) -> None:
    data = _data(2 * PART + 123)
    w = s3.writer()  # digest unknown: the parts go to a temporary name, then are copied inside the store
    for i in range(0, len(data), MIB):
        w.write(data[i : i + MIB])
    info = w.commit()
    assert info.digest == digest_bytes(data) and info.size == len(data)
    assert s3.read(info.digest) == data
    assert _keys(s3_server, s3.bucket, f"{s3.prefix}tmp/") == []
    assert _uploads(s3_server, s3.bucket, s3.prefix) == []


def test_file_on_disk_is_hashed_first_and_sent_once(s3: S3BlobStore, tmp_path: Path) -> None:
    data = _data(2 * PART + 7)
    src = tmp_path / "f.bin"
    src.write_bytes(data)
    calls: list[str] = []
    with _watching(s3, "before-call.s3.*", lambda model, **kw: calls.append(model.name)):
        with open(src, "rb") as f:
            first = s3.put(f)
        assert first.digest == digest_bytes(data)
        assert "CopyObject" not in calls and "UploadPartCopy" not in calls  # straight to its final name
        assert calls.count("UploadPart") == 3
        calls.clear()
        with open(src, "rb") as f:
            assert s3.put(f) == first
    assert "UploadPart" not in calls and "PutObject" not in calls  # stored already: only hashed


def test_aborted_multipart_upload_leaves_nothing(s3: S3BlobStore, s3_server: S3Server) -> None:
    data = _data(2 * PART + 5)
    w = s3.writer()
    w.write(data)  # two parts sent (or on their way)
    assert len(_uploads(s3_server, s3.bucket, s3.prefix)) == 1
    w.abort()
    assert _uploads(s3_server, s3.bucket, s3.prefix) == []
    assert _keys(s3_server, s3.bucket, s3.prefix) == []
    assert not s3.exists(digest_bytes(data))


def test_a_killed_writer_leaves_nothing_visible_and_clean_tmp_removes_its_upload(
    s3: S3BlobStore, s3_server: S3Server
) -> None:
    child = textwrap.dedent(
        f"""
        import os, sys
        from datamill.store.blobs.s3 import S3BlobStore, S3Options
        store = S3BlobStore({s3.url!r}, S3Options({s3_server.endpoint!r}, "us-east-1", {s3_server.access_key!r},
                            {s3_server.secret_key!r}), part_size={PART})
        w = store.writer()
        w.write(b"x" * ({2 * PART}))
        for f in w._parts:
            f.result()
        print("parts sent", flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "parts sent"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert len(_uploads(s3_server, s3.bucket, s3.prefix)) == 1  # left behind by the killed process
    assert list(s3.digests()) == []  # but nothing visible under any digest
    assert s3.clean_tmp() == 0  # younger than an hour: maybe a live writer's
    assert s3.clean_tmp(older_than=0) == 1
    assert _uploads(s3_server, s3.bucket, s3.prefix) == []


def test_memory_stays_flat_for_a_large_streamed_write(s3: S3BlobStore) -> None:
    size = 16 * PART  # 80 MiB through a writer of 5 MiB parts, 4 in flight
    tracemalloc.start()
    try:
        w = s3.writer()
        chunk = b"m" * MIB
        for _ in range(size // MIB):
            w.write(chunk)
        info = w.commit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == size
    assert peak < 8 * PART, f"peak {peak / MIB:.1f} MiB for a {size // MIB} MiB write"
    assert s3.size(info.digest) == size


def test_a_tampered_object_is_detected_on_read(s3: S3BlobStore, s3_server: S3Server) -> None:
    digest = s3.put(_data(3 * MIB)).digest
    client: Any = s3_server.client()
    client.put_object(Bucket=s3.bucket, Key=s3.key_of(digest), Body=_data(3 * MIB - 1) + b"!")
    with pytest.raises(BlobCorrupted):
        s3.read(digest)
    with pytest.raises(BlobCorrupted):
        list(s3.iter_range(digest, 10, 20))  # a range is not served from bytes that fail the check


def test_copy_to_fetches_parts_in_parallel_and_writes_them_in_place(s3: S3BlobStore, tmp_path: Path) -> None:
    data = _data(3 * PART + 12345)  # four ranged GETs, the last one short
    digest = s3.put(data).digest
    ranges: list[Any] = []
    seen: list[int] = []
    out = tmp_path / "out.bin"
    with (
        open(out, "w+b") as f,
        _watching(s3, "before-parameter-build.s3.GetObject", lambda params, **kw: ranges.append(params.get("Range"))),
    ):
        f.write(b"head")  # the parts land after what the descriptor already holds
        f.flush()
        assert s3.copy_to(digest, f.fileno(), seen.append) == len(data)
        assert os.lseek(f.fileno(), 0, os.SEEK_CUR) == len(data) + 4
    assert out.read_bytes() == b"head" + data
    assert sum(seen) == len(data) and len(seen) == 4
    assert sorted(ranges) == sorted(f"bytes={a}-{min(a + PART, len(data)) - 1}" for a in range(0, len(data), PART))


def test_copy_to_of_a_tampered_multipart_object_raises_after_writing(
    s3: S3BlobStore, s3_server: S3Server, tmp_path: Path
) -> None:
    data = _data(2 * PART + 7)
    digest = s3.put(data).digest
    client: Any = s3_server.client()
    client.put_object(Bucket=s3.bucket, Key=s3.key_of(digest), Body=data[:-1] + b"!")
    with open(tmp_path / "out.bin", "w+b") as f, pytest.raises(BlobCorrupted):
        s3.copy_to(digest, f.fileno())
    with pytest.raises(BlobCorrupted):
        list(s3.iter_range(digest, 0, 10))  # not remembered as verified
    # a descriptor open for writing only cannot be read back: the parts are hashed in memory instead
    with open(tmp_path / "w.bin", "wb") as f, pytest.raises(BlobCorrupted):
        s3.copy_to(digest, f.fileno())
    client.put_object(Bucket=s3.bucket, Key=s3.key_of(digest), Body=data)
    with open(tmp_path / "w.bin", "wb") as f:
        assert s3.copy_to(digest, f.fileno()) == len(data)
    assert (tmp_path / "w.bin").read_bytes() == data


def test_ranged_reads_verify_once_then_fetch_only_the_range(s3: S3BlobStore) -> None:
    data = _data(3 * MIB)
    digest = s3.put(data).digest
    ranges: list[Any] = []
    with _watching(s3, "before-parameter-build.s3.GetObject", lambda params, **kw: ranges.append(params.get("Range"))):
        assert b"".join(s3.iter_range(digest, 100, 199)) == data[100:200]
        assert b"".join(s3.iter_range(digest, 5000, None)) == data[5000:]
    # The whole object once (to verify it), then only the ranges asked for.
    assert ranges == [f"bytes=0-{len(data) - 1}", "bytes=100-199", f"bytes=5000-{len(data) - 1}"]


def test_presigned_url_downloads_the_bytes(s3: S3BlobStore) -> None:
    data = b"presigned bytes"
    digest = s3.put(data).digest
    url = s3.presigned_url(digest, 60, filename="a.txt")
    assert url is not None and "X-Amz-Signature=" in url
    with urllib.request.urlopen(url) as answer:
        assert answer.read() == data
        assert 'filename="a.txt"' in answer.headers["Content-Disposition"]


def test_wrong_credentials_give_one_clear_error(s3_server: S3Server, bucket: str) -> None:
    with pytest.raises(ConfigError) as err:
        S3BlobStore(f"s3://{bucket}", _options(s3_server, secret_access_key="not-the-secret"))
    assert "refused the credentials" in err.value.message and "s3_secret_access_key" in err.value.message
    assert "not-the-secret" not in str(err.value) and s3_server.secret_key not in str(err.value)


def test_missing_bucket_and_unreachable_store_are_named(s3_server: S3Server) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        S3BlobStore("s3://no-such-bucket-here", _options(s3_server))
    with pytest.raises(Unavailable, match="cannot reach"):
        S3BlobStore("s3://b-b-b", _options(s3_server, endpoint_url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(ConfigError, match="s3://BUCKET"):
        open_blob_store("s3:///nobucket")


def test_missing_blob_is_blob_not_found(s3: S3BlobStore) -> None:
    missing = "blake3:" + "1" * 64
    with pytest.raises(BlobNotFound):
        s3.size(missing)
    with pytest.raises(BlobNotFound):
        s3.read(missing)


def test_a_home_on_s3_stores_items_there(s3_server: S3Server, bucket: str, tmp_path: Path) -> None:
    prefix = uuid.uuid4().hex
    settings = load_settings(
        environ={},
        home=str(tmp_path / "home"),
        demo=False,
        blob_url=f"s3://{bucket}/{prefix}",
        s3_endpoint_url=s3_server.endpoint,
        s3_region="us-east-1",
        s3_access_key_id=s3_server.access_key,
        s3_secret_access_key=s3_server.secret_key,
    )
    assert settings.public_dict()["s3_secret_access_key"] == "***"
    assert s3_server.secret_key not in repr(settings)
    home = Home(settings)
    try:
        assert isinstance(home.blobs, S3BlobStore)
        home.store.create_folder(home.admin, "/Raw")
        info = home.store.put(home.admin, "/Raw", "a.txt", b"on s3")
        _, stream = home.store.open_version(home.admin, "/Raw/a.txt")
        with stream:
            assert stream.read() == b"on s3"
        assert _keys(s3_server, bucket, f"{prefix}/blobs/") == [home.blobs.key_of(info.digest)]
        assert not (tmp_path / "home" / "blobs").exists()
    finally:
        home.close()


def test_presigned_downloads_go_straight_to_the_store(s3_server: S3Server, bucket: str, tmp_path: Path) -> None:
    home = open_home(
        tmp_path / "home",
        blob_url=f"s3://{bucket}/{uuid.uuid4().hex}",
        s3_endpoint_url=s3_server.endpoint,
        s3_region="us-east-1",
        s3_access_key_id=s3_server.access_key,
        s3_secret_access_key=s3_server.secret_key,
        s3_presign_downloads=True,
    )
    try:
        home.store.create_folder(home.admin, "/Raw")
        data = _data(2 * MIB)
        home.store.put(home.admin, "/Raw", "big.bin", data)
        token = home.admin_token()
        assert token is not None
        with serve(home) as server:
            url = server.url
            answer = httpx.get(f"{url}/api/v1/content/Raw/big.bin", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 307
            location = answer.headers["location"]
            assert location.startswith(s3_server.endpoint) and "X-Amz-Signature=" in location
            assert token not in location
            client = RemoteClient(url, token)
            try:
                info, chunks = client.iter_bytes("/Raw/big.bin")
                assert b"".join(chunks) == data and info.size == len(data)
                # A range still comes from the server (a presigned URL is for whole downloads).
                ranged = httpx.get(
                    f"{url}/api/v1/content/Raw/big.bin",
                    headers={"Authorization": f"Bearer {token}", "Range": "bytes=10-19"},
                )
                assert ranged.status_code == 206 and ranged.content == data[10:20]
            finally:
                client.close()
    finally:
        home.close()
