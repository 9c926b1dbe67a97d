"""A stream dataflow on a real broker, served with its services: files sent to the topic land as items,
byte-identical with subfolders; a new-items dataflow on the destination derives each once; the status
shows the counters over the API and `flow show`; bad input is reported; a missing topic is said so."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from datamill.client.remote import RemoteClient
from datamill.events import EventKind
from datamill.home import Home
from datamill.streams.broker import Broker, kafka
from datamill.streams.sender import send
from tests.dataflows.flow_pipelines import ref
from tests.helpers import all_events, open_home, serve, wait_for
from tests.streams.conftest import TansuBroker

pytestmark = pytest.mark.slow

DEST = "Instrument"
DERIVED = "Derived"


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    h = open_home(tmp_path / "home", executor="inline", stream_heartbeat_seconds=0.5)
    for f in (DEST, DERIVED):
        h.store.create_folder(h.admin, f)
    yield h
    h.close()


def digests(home: Home, folder: str) -> dict[str, str]:
    """Relative path below ``folder`` -> SHA-512 of every item's current bytes."""
    out = {}
    for item in home.store.find_items(home.admin, folder):
        path = f"{item.folder}/{item.name}"
        _info, chunks = home.store.iter_bytes(home.admin, path)
        out[path[len(folder) + 1 :]] = hashlib.sha512(b"".join(chunks)).hexdigest()
    return out


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha512(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_sent_files_land_and_are_derived(home: Home, kafka_broker: TansuBroker, tmp_path: Path) -> None:
    topic = kafka_broker.create_topic(3)
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "empty.txt").write_bytes(b"")
    (src / "one.txt").write_bytes(b"1")
    (src / "sub" / "exact.bin").write_bytes(os.urandom(4096))
    (src / "sub" / "deeper" / "many.bin").write_bytes(os.urandom(4096 * 9 + 5))
    (src / "Ünïcode naïve.txt").write_bytes("grüße".encode())
    with serve(home, services=True) as server:
        client = RemoteClient(server.url, home.admin_token())
        client.create_stream_dataflow(
            "instrument", topic, DEST, broker={"bootstrap": kafka_broker.bootstrap}, partial_timeout_s=600
        )
        client.create_dataflow("derive", DEST, DERIVED, ref("echo_pipeline"))
        client.start_dataflow("instrument")
        client.start_dataflow("derive")
        send([src], topic, Broker(kafka_broker.bootstrap), chunk_size=4096)
        wait_for("every file landed", lambda: digests(home, DEST) == tree(src), timeout=90)
        # Each item landed at the top of the destination is derived (a new-items dataflow watches its
        # source folder itself, not subfolders): echo makes one output per input.
        wait_for("derived", lambda: len(home.store.find_items(home.admin, DERIVED)) == 3, timeout=90)
        info = wait_for(
            "status reported",
            lambda: (i := client.dataflow("instrument")).stream and i.stream["files"] == 5 and i,
            timeout=30,
        )
        assert info.kind == "stream" and info.topic == topic
        assert info.stream["messages"] == 1 + 1 + 1 + 10 + 1 and info.stream["rejected"] == 0
        assert info.stream["in_progress"] == []
        heartbeat = wait_for("a heartbeat", lambda: all_events(home, EventKind.STREAM_HEARTBEAT), timeout=30)
        assert heartbeat[-1].data["name"] == "instrument"
        # Sending the same files again lands new versions only where the content changed: here none
        # (a landed file's generation is remembered by hash).
        send([src / "one.txt"], topic, Broker(kafka_broker.bootstrap), chunk_size=4096)
        (src / "one.txt").write_bytes(b"2")
        send([src / "one.txt"], topic, Broker(kafka_broker.bootstrap), chunk_size=4096)
        wait_for("the new version", lambda: digests(home, DEST)["one.txt"] == tree(src)["one.txt"], timeout=60)
        assert [v.version for v in home.store.versions(home.admin, f"{DEST}/one.txt")] == [1, 2]
        client.stop_dataflow("instrument")
        client.close()
    derived = home.store.find_items(home.admin, DERIVED)
    # one.txt got a second version, derived once more; the others once each.
    assert sorted(i.name.split(".")[0] for i in derived) == ["empty", "one", "Ünïcode naïve"]
    assert {i.name.split(".")[0]: i.version for i in derived}["one"] == 2


def test_bad_input_and_a_missing_topic_are_reported(home: Home, kafka_broker: TansuBroker) -> None:
    topic = kafka_broker.create_topic(1)
    ck = kafka()
    p = ck.Producer({"bootstrap.servers": kafka_broker.bootstrap})
    p.produce(topic, value=b"\xc1 not msgpack")
    assert p.flush(30) == 0
    with serve(home, services=True) as server:
        client = RemoteClient(server.url, home.admin_token())
        client.create_stream_dataflow("bad", topic, DEST, broker={"bootstrap": kafka_broker.bootstrap})
        client.create_stream_dataflow(
            "nowhere", "no-such-topic-xyz", DEST, broker={"bootstrap": kafka_broker.bootstrap}
        )
        client.start_dataflow("bad")
        client.start_dataflow("nowhere")
        st = wait_for("the bad message reported", lambda: (client.dataflow("bad").stream or {}).get("rejected"), 60)
        assert st == 1
        assert "not msgpack" in client.dataflow("bad").stream["last_error"]
        missing = wait_for(
            "the missing topic reported", lambda: (client.dataflow("nowhere").stream or {}).get("last_error"), 60
        )
        assert "does not exist" in missing and "no-such-topic-xyz" in missing
        ev = all_events(home, EventKind.STREAM_REJECTED)
        assert ev and "not msgpack" in ev[0].data["reason"]
        # flow show over the API: the status is in the answer, nothing landed.
        body = httpx.get(
            f"{server.url}/api/v1/dataflows/bad", headers={"Authorization": f"Bearer {home.admin_token()}"}
        ).json()
        assert body["stream"]["rejected"] == 1
        assert home.store.find_items(home.admin, DEST) == []
        client.close()


def test_a_broker_that_does_not_answer_is_reported_and_retried(home: Home) -> None:
    from tests.helpers import free_port

    with serve(home, services=True) as server:
        client = RemoteClient(server.url, home.admin_token())
        client.create_stream_dataflow("down", "t", DEST, broker={"bootstrap": f"127.0.0.1:{free_port()}"})
        client.start_dataflow("down")
        err = wait_for("the broker reported", lambda: (client.dataflow("down").stream or {}).get("last_error"), 90)
        assert "does not answer" in err and "retrying" in err
        consumers = client.dataflow("down").stream["consumers"]
        assert consumers and consumers[0]["state"] == "retrying"
        client.close()
