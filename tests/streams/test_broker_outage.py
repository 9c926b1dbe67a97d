"""A broker that is down or goes away, with a real Tansu: the stream dataflow retries with backoff, says so
in its status, never crashes, and resumes without loss or duplicates once the broker is back.

* Down at the start: the dataflow starts while nothing listens on the broker's port; its status shows
  the error; Tansu then starts on that port and the files sent land.
* Goes away: Tansu on S3 storage (``--storage-engine s3://BUCKET/`` on a real SeaweedFS; this Tansu
  build has no PostgreSQL or file storage) is SIGKILLed while a file is half sent and restarted on the
  same port, its topics and messages intact; the rest of that file and new files land, each file exactly
  once, and the files committed before the outage are not landed again.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datamill.client.remote import RemoteClient
from datamill.home import Home
from datamill.streams.broker import Broker, kafka
from datamill.streams.chunks import chunk_file
from datamill.streams.sender import send
from tests.conftest import S3Server
from tests.helpers import free_port, open_home, serve, wait_for
from tests.streams.conftest import TansuBroker

pytestmark = pytest.mark.slow

DEST = "Instrument"


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    h = open_home(tmp_path / "home", executor="inline")
    h.store.create_folder(h.admin, DEST)
    yield h
    h.close()


def landed(home: Home) -> dict[str, tuple[int, str]]:
    """Item name -> (number of versions, SHA-512 of the current bytes)."""
    out = {}
    for item in home.store.list_items(home.admin, DEST):
        _info, chunks = home.store.iter_bytes(home.admin, f"{DEST}/{item.name}")
        versions = len(home.store.versions(home.admin, f"{DEST}/{item.name}"))
        out[item.name] = (versions, hashlib.sha512(b"".join(chunks)).hexdigest())
    return out


def files(root: Path, names: list[str], size: int) -> dict[str, tuple[int, str]]:
    """Files of ``size`` random bytes; what :func:`landed` should say of them (one version each)."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for n in names:
        data = os.urandom(size)
        (root / n).write_bytes(data)
        out[n] = (1, hashlib.sha512(data).hexdigest())
    return out


def status(client: RemoteClient, name: str) -> dict[str, Any]:
    return client.dataflow(name).stream or {}


def test_a_broker_that_is_down_at_the_start_is_retried_until_it_comes_up(home: Home, tmp_path: Path) -> None:
    port = free_port()
    broker = TansuBroker(tmp_path / "tansu.log")
    src = tmp_path / "src"
    want = files(src, ["a.bin", "b.bin"], 3000)
    with serve(home, services=True) as server:
        client = RemoteClient(server.url, home.admin_token())
        topic = f"late-{uuid.uuid4().hex[:8]}"
        client.create_stream_dataflow("late", topic, DEST, broker={"bootstrap": f"127.0.0.1:{port}"})
        client.start_dataflow("late")
        err = wait_for("the broker reported", lambda: status(client, "late").get("last_error"), 90)
        assert "does not answer" in str(err) and "retrying" in str(err)
        consumers = status(client, "late")["consumers"]
        assert isinstance(consumers, list) and consumers[0]["state"] == "retrying"
        try:
            broker.start(port)
            broker.create_topic(2, name=topic)
            send([src], topic, Broker(broker.bootstrap), chunk_size=1024)
            wait_for("the files landed once the broker was up", lambda: landed(home) == want, timeout=120)
            wait_for(
                "the status says running, with the files",
                lambda: (
                    (c := status(client, "late").get("consumers"))
                    and c[0]["state"] == "running"
                    and status(client, "late")["files"] == 2
                ),
                timeout=60,
            )
        finally:
            client.stop_dataflow("late")
            client.close()
            broker.stop()


def test_a_broker_that_goes_away_mid_file_is_resumed_without_loss_or_duplicates(
    home: Home, tmp_path: Path, s3_server: S3Server
) -> None:
    # Tansu's S3 storage on a real S3 server (SeaweedFS): topics and messages outlive the broker process.
    bucket = s3_server.new_bucket()
    port = free_port()
    broker = TansuBroker(tmp_path / "tansu.log", storage=f"s3://{bucket}/", env=s3_server.aws_env()).start(port)
    src = tmp_path / "src"
    before = files(src / "before", ["b1.bin", "b2.bin", "b3.bin"], 2500)
    half = files(src / "half", ["half.bin"], 8 * 1024 + 17)  # 9 chunks of 1 KiB: 4 before the outage
    after = files(src / "after", ["a1.bin", "a2.bin"], 1500)
    everything = {**before, **half, **after}
    topic = broker.create_topic(2, prefix="away")
    ck = kafka()
    try:
        with serve(home, services=True) as server:
            client = RemoteClient(server.url, home.admin_token())
            client.create_stream_dataflow("away", topic, DEST, broker={"bootstrap": broker.bootstrap})
            client.start_dataflow("away")
            send([src / "before"], topic, Broker(broker.bootstrap), chunk_size=1024)
            wait_for("the first files landed", lambda: landed(home) == before, timeout=120)
            msgs = list(chunk_file(src / "half" / "half.bin", src / "half", 1024))
            producer = ck.Producer(Broker(broker.bootstrap).producer_config(1024))
            for key, value in msgs[:4]:
                producer.produce(topic, key=key.encode(), value=value)
            assert producer.flush(30) == 0
            wait_for(
                "the half file in progress",
                lambda: [f["chunks"] for f in status(client, "away").get("in_progress") or []] == [4],
                timeout=60,
            )
            broker.kill()
            err = wait_for(
                "the outage reported",
                lambda: (e := status(client, "away").get("last_error")) and "does not answer" in str(e) and e,
                timeout=90,
            )
            assert landed(home) == before  # nothing lost, nothing half-landed
            broker.start(port)
            producer = ck.Producer(Broker(broker.bootstrap).producer_config(1024))
            for key, value in msgs[4:]:
                producer.produce(topic, key=key.encode(), value=value)
            assert producer.flush(30) == 0
            send([src / "after"], topic, Broker(broker.bootstrap), chunk_size=1024)
            wait_for("every file landed once", lambda: landed(home) == everything, timeout=180)
            # The status is written every few seconds: it catches up with what landed, and says running.
            st = wait_for(
                "the status counts every file once",
                lambda: (s := status(client, "away"))["files"] == len(everything) and s,
                timeout=60,
            )
            assert st["rejected"] == 0 and st["in_progress"] == [] and st["messages"] == 3 * 3 + 9 + 2 * 2, (st, err)
            assert st["consumers"][0]["state"] == "running"
            client.stop_dataflow("away")
            client.close()
    finally:
        broker.stop()
    assert landed(home) == everything
