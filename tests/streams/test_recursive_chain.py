"""The DMS's chain, recursive: instrument → stream → derived data, with subdirectories all the way.

A file sent into a subdirectory lands (through the real Tansu broker and a stream dataflow) in a
subfolder of the stream's destination; a recursive ``new-items`` dataflow on that folder derives it,
and the result lands in the mirrored subfolder of its own destination.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from datamill.client.remote import RemoteClient
from datamill.home import Home
from datamill.streams.broker import Broker
from datamill.streams.sender import send
from tests.dataflows.flow_pipelines import ref
from tests.helpers import open_home, serve, wait_for
from tests.streams.conftest import TansuBroker

pytestmark = pytest.mark.slow

LANDED = "Instrument"
DERIVED = "Derived"


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    h = open_home(tmp_path / "home", executor="inline")
    for f in (LANDED, DERIVED):
        h.store.create_folder(h.admin, f)
    yield h
    h.close()


def items(home: Home, folder: str) -> dict[str, bytes]:
    """Relative path below ``folder`` -> current bytes of every item there."""
    out = {}
    for item in home.store.find_items(home.admin, folder):
        path = f"{item.folder}/{item.name}"
        _info, chunks = home.store.iter_bytes(home.admin, path)
        out[path[len(folder) + 1 :]] = b"".join(chunks)
    return out


def test_a_file_streamed_into_a_subdirectory_is_derived_into_the_mirrored_subfolder(
    home: Home, kafka_broker: TansuBroker, tmp_path: Path
) -> None:
    topic = kafka_broker.create_topic(1)
    src = tmp_path / "src"
    (src / "run-7" / "deep").mkdir(parents=True)
    (src / "run-7" / "deep" / "scan.txt").write_bytes(b"spectrum")
    (src / "top.txt").write_bytes(b"top")
    with serve(home, services=True) as server:
        client = RemoteClient(server.url, home.admin_token())
        client.create_stream_dataflow("instrument", topic, LANDED, broker={"bootstrap": kafka_broker.bootstrap})
        info = client.create_dataflow("derive", LANDED, DERIVED, ref("echo_pipeline"), recursive=True)
        assert info.recursive is True
        client.start_dataflow("instrument")
        client.start_dataflow("derive")
        send([src], topic, Broker(kafka_broker.bootstrap), chunk_size=4096)
        wait_for(
            "both files derived",
            lambda: items(home, DERIVED) == {"run-7/deep/scan.echo.bin": b"v1:spectrum", "top.echo.bin": b"v1:top"},
            timeout=90,
        )
        assert items(home, LANDED) == {"run-7/deep/scan.txt": b"spectrum", "top.txt": b"top"}
        client.stop_dataflow("instrument")
        client.close()
