"""``datamill stream send``: files into a Kafka topic as OpenMSIStream chunk messages.

Each file is hashed, then read again chunk by chunk (never whole in memory); the producer's queue is
bounded, so a slow broker slows the reading down instead of filling memory. Empty files are sent
as one empty chunk (OpenMSIStream sends nothing for them). Nothing is filtered silently: every
regular file below a directory is sent, hidden ones included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datamill.errors import InvalidInput, Unavailable
from datamill.streams.broker import Broker, kafka
from datamill.streams.chunks import DEFAULT_CHUNK_SIZE, check_chunk_size, chunk_file

#: The producer's queue in KiB: what may wait for the broker before reading pauses.
QUEUE_KBYTES = 64 * 1024


@dataclass
class SendReport:
    """What a send did: files, messages and bytes of chunk data produced, and delivery errors."""

    files: int = 0
    messages: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """As JSON."""
        return {"files": self.files, "messages": self.messages, "bytes": self.bytes, "errors": self.errors}


def files_to_send(paths: Iterable[Path]) -> Iterator[tuple[Path, Path]]:
    """``(file, root)`` pairs: a file is sent at the top level, a directory's files with their subfolders."""
    for p in paths:
        if p.is_dir():
            root = p.resolve()
            for f in sorted(root.rglob("*")):
                if f.is_file() and not f.is_symlink():
                    yield f, root
        elif p.is_file():
            yield p.resolve(), p.resolve().parent
        else:
            raise InvalidInput(f"{p}: no such file or directory")


def send(
    paths: Iterable[Path],
    topic: str,
    broker: Broker,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_mtime: bool = True,
    on_file: Callable[[str, int], None] | None = None,
    timeout: float = 60.0,
) -> SendReport:
    """Produce every file of ``paths`` into ``topic``; returns once the broker acknowledged all of it.

    ``with_mtime`` False sends the 9-field form, for OpenMSIStream readers older than 1.8.6.1.
    """
    check_chunk_size(chunk_size)
    check_topic(topic)
    ck = kafka()
    producer = ck.Producer({**broker.producer_config(chunk_size), "queue.buffering.max.kbytes": QUEUE_KBYTES})
    report = SendReport()

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            report.errors.append(f"{msg.key().decode(errors='replace')}: {err.str()}")

    for path, root in files_to_send(paths):
        size = 0
        for key, value in chunk_file(path, root, chunk_size, with_mtime):
            while True:
                try:
                    producer.produce(topic, key=key.encode(), value=value, on_delivery=delivered)
                    break
                except BufferError:  # the bounded queue is full: wait for the broker
                    producer.poll(0.1)
            producer.poll(0)
            report.messages += 1
            size += len(value)
        report.files += 1
        report.bytes += path.stat().st_size
        if on_file is not None:
            on_file(path.relative_to(root).as_posix(), size)
    left = producer.flush(timeout)
    if left:
        raise Unavailable(
            f"{left} message(s) were not acknowledged by the broker at {broker.bootstrap} within {timeout:.0f} s; "
            "check that it is running and send again"
        )
    if report.errors:
        raise Unavailable(f"the broker refused {len(report.errors)} message(s), first: {report.errors[0]}")
    return report


def check_topic(topic: str) -> str:
    """Kafka topic names: 1-249 letters, digits, ``.``, ``_``, ``-`` (not ``.`` or ``..``)."""
    ok = 0 < len(topic) < 250 and topic not in (".", "..") and all(c.isalnum() or c in "._-" for c in topic)
    if not ok or not topic.isascii():
        raise InvalidInput(f"topic {topic!r} is not a Kafka topic name; use 1-249 ASCII letters, digits, '.', '_', '-'")
    return topic
