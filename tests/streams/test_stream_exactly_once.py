"""Exactly once: files produced while the datamill server is SIGKILLed at random moments all land once,
with the right digest, and a new-items dataflow on the destination processes each once; two servers on one
PostgreSQL consuming one 4-partition topic land each file once.

The crash test runs a real ``datamill up`` (SQLite home, inline executor, a short task lease) and kills it
with SIGKILL at seeded random moments while this process produces; the broker keeps the messages, the
server's database keeps the offsets. Kept small here (``DATAMILL_STREAM_CRASH_FILES``, default 100;
benchmarks/stream.py and an opt-in run take more).
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from datamill.db.models import Item, Version
from datamill.home import Home
from datamill.streams.broker import Broker
from datamill.streams.sender import send
from tests.dataflows.flow_pipelines import ref
from tests.helpers import Up, open_home, serve, wait_for
from tests.streams.conftest import TansuBroker

pytestmark = pytest.mark.slow

FILES = int(os.environ.get("DATAMILL_STREAM_CRASH_FILES", "100"))
KILLS = int(os.environ.get("DATAMILL_STREAM_CRASH_KILLS", "3"))
SEED = int(os.environ.get("DATAMILL_CRASH_SEED", "20261203"))
CHUNK = 4096
DEST = "Instrument"
DERIVED = "Derived"


def make_files(root: Path, n: int, rng: random.Random) -> dict[str, str]:
    """``n`` files, every fifth of several chunks; name -> SHA-512."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        size = CHUNK * rng.randint(2, 4) + rng.randint(0, 100) if i % 5 == 0 else rng.randint(1, 2000)
        data = rng.randbytes(size)
        (root / f"f{i:04d}.bin").write_bytes(data)
        out[f"f{i:04d}.bin"] = hashlib.sha512(data).hexdigest()
    return out


def landed(home: Home, folder: str = DEST) -> dict[str, str]:
    out = {}
    for item in home.store.list_items(home.admin, folder):
        _info, chunks = home.store.iter_bytes(home.admin, f"{folder}/{item.name}")
        out[item.name] = hashlib.sha512(b"".join(chunks)).hexdigest()
    return out


def versions_per_item(home: Home, folder: str) -> Counter[str]:
    folder_id = home.store.get_folder(home.admin, folder).id
    with home.db.read() as conn:
        rows = conn.execute(
            select(Item.name, func.count(Version.id))
            .join(Version, Version.item_id == Item.id)
            .where(Item.folder_id == folder_id)
            .group_by(Item.name)
        ).all()
    return Counter({r[0]: int(r[1]) for r in rows})


def test_sigkilled_server_lands_every_file_exactly_once(kafka_broker: TansuBroker, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    topic = kafka_broker.create_topic(3)
    home_dir = tmp_path / "home"
    home = open_home(home_dir)
    for f in (DEST, DERIVED):
        home.store.create_folder(home.admin, f)
    from datamill.service import Service

    svc = Service(home)
    svc.create_stream_dataflow("instrument", topic, DEST, broker={"bootstrap": kafka_broker.bootstrap})
    svc.create_dataflow("derive", DEST, DERIVED, ref("echo_pipeline"))
    svc.start_dataflow("instrument")
    svc.start_dataflow("derive")
    home.close()
    want = make_files(tmp_path / "src", FILES, rng)
    names = sorted(want)
    env = {"DATAMILL_EXECUTOR": "inline", "DATAMILL_LEASE_SECONDS": "1.5"}
    broker = Broker(kafka_broker.bootstrap)
    sent = threading.Event()

    def produce() -> None:
        pace = random.Random(SEED + 1)
        for i in range(0, len(names), 10):
            send([tmp_path / "src" / n for n in names[i : i + 10]], topic, broker, chunk_size=CHUNK)
            threading.Event().wait(pace.uniform(0.0, 1.0))  # spread production over the kills
        sent.set()

    server = Up(home_dir, env=env)
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        for _ in range(KILLS):
            threading.Event().wait(rng.uniform(1.0, 6.0))
            server.kill()
            server = Up(home_dir, env=env)
        producer.join(timeout=300)
        assert sent.is_set(), "the producer did not finish"
        home = open_home(home_dir)
        try:
            wait_for("every file landed", lambda: landed(home) == want, timeout=240)
            wait_for(
                "every file derived",
                lambda: len(home.store.list_items(home.admin, DERIVED)) == len(want),
                timeout=240,
            )
            assert set(versions_per_item(home, DEST).values()) == {1}, "a file landed twice"
            assert set(versions_per_item(home, DERIVED).values()) == {1}, "a file was derived twice"
            for item in home.store.list_items(home.admin, DERIVED)[:10]:
                _i, chunks = home.store.iter_bytes(home.admin, f"{DERIVED}/{item.name}")
                src = (tmp_path / "src" / item.name.replace(".echo.bin", ".bin")).read_bytes()
                assert b"".join(chunks) == b"v1:" + src
        finally:
            home.close()
    finally:
        server.stop()


@pytest.fixture
def two_homes(tmp_path: Path, postgres_db_url: str) -> Iterator[tuple[Home, Home]]:
    blobs = f"file://{tmp_path / 'blobs'}"
    a = open_home(tmp_path / "a", postgres_db_url, blob_url=blobs, executor="inline")
    b = open_home(tmp_path / "b", postgres_db_url, blob_url=blobs, executor="inline")
    yield a, b
    a.close()
    b.close()


@pytest.mark.postgres
def test_two_servers_on_one_postgresql_land_each_file_once(
    two_homes: tuple[Home, Home], kafka_broker: TansuBroker, tmp_path: Path
) -> None:
    a, b = two_homes
    topic = kafka_broker.create_topic(4)
    a.store.create_folder(a.admin, DEST)
    from datamill.service import Service

    svc = Service(a)
    svc.create_stream_dataflow("instrument", topic, DEST, broker={"bootstrap": kafka_broker.bootstrap})
    svc.start_dataflow("instrument")
    want = make_files(tmp_path / "src", 60, random.Random(SEED))
    with serve(a, services=True), serve(b, services=True):
        info = wait_for(
            "both servers consuming",
            lambda: len([c for c in (svc.dataflow("instrument").stream or {}).get("consumers", [])
                         if c["partitions"]]) == 2 and svc.dataflow("instrument"),
            timeout=90,
        )  # fmt: skip
        parts = [set(c["partitions"]) for c in info.stream["consumers"] if c["partitions"]]
        assert parts[0].isdisjoint(parts[1]) and parts[0] | parts[1] == {0, 1, 2, 3}
        send([tmp_path / "src"], topic, Broker(kafka_broker.bootstrap), chunk_size=CHUNK)
        wait_for("every file landed", lambda: landed(a) == want, timeout=180)
    assert set(versions_per_item(a, DEST).values()) == {1}
