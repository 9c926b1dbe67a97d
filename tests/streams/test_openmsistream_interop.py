"""Interop with the real OpenMSIStream (PyPI ``openmsistream``, a test-only dependency), through a real broker.

- its ``UploadDataFile`` and ``DataFileUploadDirectory`` -> broker -> a datamill stream dataflow:
  items byte-identical (SHA-512), subfolders kept;
- ``datamill stream send`` -> broker -> its ``DataFileDownloadDirectory``: files byte-identical;
- datamill's encoder gives the keys and bytes OpenMSIStream's serializer gives (no broker).

OpenMSIStream's long-running programs stop only on ``q`` on stdin; importing it changes global
logging, so it only ever runs in subprocesses here.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from datamill.client.remote import RemoteClient
from datamill.home import Home
from datamill.streams.chunks import chunk_file
from tests.helpers import cli_env, datamill, open_home, serve, wait_for
from tests.streams.conftest import TansuBroker

BIN = Path(sys.executable).parent
DEST = "Instrument"


def oms_config(path: Path, bootstrap: str) -> Path:
    """An OpenMSIStream config for the test broker (short group timeouts: Tansu joins take ~half of them)."""
    path.write_text(
        f"""[broker]
bootstrap.servers = {bootstrap}

[producer]
batch.size = 2000000
linger.ms = 100
compression.type = lz4
key.serializer = StringSerializer
value.serializer = DataFileChunkSerializer

[consumer]
group.id = create_new
auto.offset.reset = earliest
enable.auto.commit = False
fetch.min.bytes = 100000
session.timeout.ms = 6000
heartbeat.interval.ms = 1000
key.deserializer = StringDeserializer
value.deserializer = DataFileChunkDeserializer
"""
    )
    return path


def sha(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


def make_files(root: Path) -> dict[str, str]:
    """1 B, exactly one chunk, many chunks, Unicode names, nested subdirectories (OpenMSIStream sends no
    empty file, so none here). Relative path -> SHA-512."""
    files = {
        "one.txt": b"1",
        "sub/exact.bin": os.urandom(262144),
        "sub/deeper/many.bin": os.urandom(262144 * 5 + 17),
        "Mëssung/δ.dat": "grüße".encode() * 100,
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return {rel: sha(data) for rel, data in files.items()}


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    h = open_home(tmp_path / "home", executor="inline")
    h.store.create_folder(h.admin, DEST)
    yield h
    h.close()


def landed(home: Home) -> dict[str, str]:
    out = {}
    for item in home.store.find_items(home.admin, DEST):
        path = f"{item.folder}/{item.name}"
        _info, chunks = home.store.iter_bytes(home.admin, path)
        out[path[len(DEST) + 1 :]] = sha(b"".join(chunks))
    return out


@pytest.mark.slow
def test_openmsistream_uploaders_to_a_datamill_stream_dataflow(
    home: Home, kafka_broker: TansuBroker, tmp_path: Path
) -> None:
    topic = kafka_broker.create_topic(2)
    cfg = oms_config(tmp_path / "oms.config", kafka_broker.bootstrap)
    up = (tmp_path / "up").resolve()  # absolute: with a relative directory the uploader sends nothing
    want = make_files(up)
    single = tmp_path / "single"
    single.mkdir()
    (single / "solo.bin").write_bytes(os.urandom(600_000))
    with serve(home, services=True) as server:
        client = RemoteClient(server.url, home.admin_token())
        client.create_stream_dataflow("oms", topic, DEST, broker={"bootstrap": kafka_broker.bootstrap})
        client.start_dataflow("oms")
        one = subprocess.run(
            [str(BIN / "UploadDataFile"), str(single / "solo.bin"), "--config", str(cfg), "--topic_name", topic],
            capture_output=True, text=True, timeout=180, cwd=tmp_path,
        )  # fmt: skip
        assert one.returncode == 0, one.stderr[-2000:]
        uploader = subprocess.Popen(
            [str(BIN / "DataFileUploadDirectory"), str(up), "--config", str(cfg), "--topic_name", topic,
             "--upload_existing", "--chunk_size", "262144"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        )  # fmt: skip
        try:
            want_all = {**want, "solo.bin": sha((single / "solo.bin").read_bytes())}
            wait_for(
                "OpenMSIStream's files in datamill",
                lambda: {k: v for k, v in landed(home).items() if k in want_all} == want_all,
                timeout=150,
            )
        finally:
            assert uploader.stdin is not None
            uploader.stdin.write("q\n")
            uploader.stdin.close()
            uploader.wait(timeout=60)
        item = home.store.get_item(home.admin, f"{DEST}/sub/deeper/many.bin")
        assert item.metadata["stream"]["sha512"] == want["sub/deeper/many.bin"]
        assert client.dataflow("oms").stream["rejected"] == 0
        client.close()


@pytest.mark.slow
def test_datamill_stream_send_to_openmsistreams_download_directory(kafka_broker: TansuBroker, tmp_path: Path) -> None:
    topic = kafka_broker.create_topic(2)
    cfg = oms_config(tmp_path / "oms.config", kafka_broker.bootstrap)
    src = tmp_path / "src"
    want = make_files(src)
    sent = subprocess.run(
        datamill("stream", "send", str(src), "--topic", topic, "--bootstrap", kafka_broker.bootstrap,
                 "--chunk-size", "262144"),
        env=cli_env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    down = (tmp_path / "down").resolve()
    down.mkdir()
    reader = subprocess.Popen(
        [str(BIN / "DataFileDownloadDirectory"), str(down), "--config", str(cfg), "--topic_name", topic,
         "--consumer_group_id", f"oms-{topic}"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip

    def got() -> dict[str, str]:
        return {
            p.relative_to(down).as_posix(): sha(p.read_bytes())
            for p in down.rglob("*")
            if p.is_file() and p.relative_to(down).as_posix() in want
        }

    try:
        wait_for("the files in OpenMSIStream's download directory", lambda: got() == want, timeout=150)
    finally:
        assert reader.stdin is not None
        reader.stdin.write("q\n")
        reader.stdin.close()
        reader.wait(timeout=60)


ENCODE = """
import json, pathlib, queue, sys
from openmsistream import UploadDataFile
from openmsistream.kafka_wrapper.serialization import DataFileChunkSerializer
root = pathlib.Path(sys.argv[1]).resolve()
udf = UploadDataFile(root / "sub" / "data.bin", rootdir=root)
q = queue.Queue()
udf.enqueue_chunks_for_upload(q, chunk_size=4096)
out = []
while not q.empty():
    c = q.get()
    out.append([c.msg_key, DataFileChunkSerializer()(c).hex()])
print(json.dumps(out))
"""


def test_datamills_encoder_equals_openmsistreams_serializer(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "data.bin"
    f.write_bytes(os.urandom(4096 * 3 + 100))
    r = subprocess.run([sys.executable, "-c", ENCODE, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    theirs = sorted((k, bytes.fromhex(v)) for k, v in json.loads(r.stdout.strip().splitlines()[-1]))
    ours = sorted(chunk_file(f, tmp_path, 4096))
    assert [k for k, _ in ours] == [k for k, _ in theirs]
    assert ours == theirs
