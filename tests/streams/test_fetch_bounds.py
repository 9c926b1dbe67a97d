"""What a stream dataflow's consumer may hold in memory is bounded by its librdkafka settings (issue 11),
and a chunk bigger than one fetch's bound still lands."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from datamill.dataflows.dataflow import Dataflows
from datamill.dataflows.ingest import FETCH_BYTES, StreamIngest, consumer_settings
from datamill.streams.broker import Broker, kafka
from datamill.streams.sender import send
from tests.helpers import open_home, wait_for
from tests.streams.conftest import TansuBroker

#: What librdkafka may hold ahead of datamill for one consumer: its queue plus one fetch landing on top.
BOUND = 16 << 20


def test_the_consumer_settings_bound_what_librdkafka_buffers() -> None:
    cfg = consumer_settings(Broker("127.0.0.1:9"), "datamill-g", "member")
    # The queue stops new fetches once over its size; a fetch asked for before lands whole on top.
    assert cfg["queued.max.messages.kbytes"] * 1024 + cfg["fetch.max.bytes"] <= BOUND
    assert cfg["max.partition.fetch.bytes"] <= cfg["fetch.max.bytes"]
    # librdkafka refuses a consumer whose message.max.bytes is over its fetch.max.bytes: it accepts these.
    assert cfg["message.max.bytes"] <= cfg["fetch.max.bytes"]
    kafka().Consumer(cfg).close()


@pytest.mark.slow
def test_chunks_bigger_than_a_fetch_land(kafka_broker: TansuBroker, tmp_path: Path) -> None:
    chunk = 2 * FETCH_BYTES  # each message is over fetch.max.bytes: the broker sends it alone
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(3 * chunk + 7)
    (src / "big.bin").write_bytes(data)
    home = open_home(tmp_path / "home")
    ingest = StreamIngest(home)
    try:
        home.store.create_folder(home.admin, "Landed")
        topic = kafka_broker.create_topic(2)
        flows = Dataflows(home.db)
        broker = {"bootstrap": kafka_broker.bootstrap}
        flows.create(home.admin, "big", {"kind": "stream", "topic": topic, "destination": "Landed", "broker": broker})
        flows.set_state(home.admin, "big", "running")
        send([src], topic, Broker(kafka_broker.bootstrap), chunk_size=chunk)
        ingest.reconcile()
        wait_for("the file landed", lambda: home.store.find_items(home.admin, "Landed"), timeout=120)
        _info, pieces = home.store.iter_bytes(home.admin, "Landed/big.bin")
        assert hashlib.sha512(b"".join(pieces)).digest() == hashlib.sha512(data).digest()
    finally:
        ingest.stop_all()
        home.close()
