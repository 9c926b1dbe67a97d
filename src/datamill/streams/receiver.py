"""``datamill stream receive``: a topic of chunk messages back into files in a directory.

Chunks are staged on disk (:class:`~datamill.streams.assembly.DirectoryReceiver`), so memory stays
flat. Offsets are committed to Kafka only while no file is half received: a receiver stopped at
any moment reads again what it had not landed (at least once; a file landed twice is the same
bytes). Bad messages are reported and skipped, never written.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datamill.errors import BadChunk
from datamill.streams.assembly import DirectoryReceiver
from datamill.streams.broker import Broker, kafka
from datamill.streams.chunks import decode
from datamill.streams.sender import check_topic


@dataclass
class ReceiveReport:
    """What a receive did: messages read, files written, bad messages (why) and files left incomplete."""

    messages: int = 0
    files: int = 0
    bytes: int = 0
    bad: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """As JSON."""
        return {
            "messages": self.messages,
            "files": self.files,
            "bytes": self.bytes,
            "bad": self.bad,
            "incomplete": self.incomplete,
        }


def default_group(topic: str, directory: Path) -> str:
    """One consumer group per (topic, directory): a second receive into the same place resumes."""
    tag = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:12]
    return f"datamill-receive-{topic}-{tag}"


def receive(
    topic: str,
    broker: Broker,
    directory: Path,
    stop_after: float | None = None,
    group: str | None = None,
    on_file: Callable[[str, int], None] | None = None,
    on_bad: Callable[[str], None] | None = None,
    partial_timeout: float = 3600.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> ReceiveReport:
    """Write the files of ``topic`` into ``directory`` until ``stop_after`` seconds pass without a
    message (None: until ``should_stop`` or Ctrl-C)."""
    check_topic(topic)
    directory.mkdir(parents=True, exist_ok=True)
    ck = kafka()
    consumer = ck.Consumer(broker.consumer_config(group or default_group(topic, directory)))
    consumer.subscribe([topic])
    rx = DirectoryReceiver(directory)
    report = ReceiveReport()
    last = time.monotonic()
    positions: dict[int, int] = {}  # partition -> next offset to read
    try:
        while not should_stop():
            if stop_after is not None and time.monotonic() - last > stop_after:
                break
            msg = consumer.poll(0.5)
            for path in rx.expire(partial_timeout):
                report.incomplete.append(path)
            if msg is None:
                continue
            if msg.error():
                if msg.error().fatal():
                    raise BadChunk(f"Kafka error: {msg.error().str()}")
                continue
            last = time.monotonic()
            report.messages += 1
            positions[msg.partition()] = msg.offset() + 1
            try:
                landed = rx.add(decode(msg.value() or b""))
            except BadChunk as exc:
                where = f"partition {msg.partition()} offset {msg.offset()}"
                report.bad.append(f"{where}: {exc.message}")
                if on_bad is not None:
                    on_bad(f"{where}: {exc.message}")
                continue
            if landed is not None:
                report.files += 1
                report.bytes += landed.size
                if on_file is not None:
                    on_file(landed.path, landed.size)
            if not rx.partials:
                # Nothing half received: everything read so far is on disk, so its offsets may go.
                offsets = [ck.TopicPartition(topic, p, o) for p, o in positions.items()]
                consumer.commit(offsets=offsets, asynchronous=False)
    finally:
        report.incomplete += sorted(rx.partials)
        rx.close()
        consumer.close()
    return report
