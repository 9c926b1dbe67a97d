"""Stream dataflows at work: one Kafka consumer per running ``kind: stream`` dataflow, in the server.

:class:`StreamIngest` (started with the other services) keeps a :class:`StreamConsumer` thread
for each running stream dataflow and stops it when the dataflow stops or changes. A consumer:

- joins the consumer group ``datamill-<name>-<tag>`` (one stable group per dataflow, so servers
  sharing a database share the partitions); on assignment it **seeks to the offsets stored in
  datamill's database**, never to Kafka's (datamill commits nothing to Kafka);
- reads in small batches (librdkafka's queue is bounded too) and hands each to
  :class:`~datamill.dataflows.staging.Stager`, which stages chunks, lands files and stores the
  offsets in one transaction (exactly once across crashes);
- retries with backoff when the broker or the database is away, saying so in its status;
- drops partial files that got no chunk for ``partial_timeout_s`` (reported);
- reports its status (counters, lag per partition, files in progress, last error) in
  ``stream_status`` every few seconds, and as a ``stream.heartbeat`` event at most every
  ``stream_heartbeat_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, insert, select

from datamill import events
from datamill.dataflows.dataflow import FLOW_FAMILIES
from datamill.dataflows.staging import (
    Message,
    Prepared,
    Stager,
    Target,
    destination_folder_id,
    in_progress,
    remove_orphan_staging,
)
from datamill.db.models import Dataflow, StreamStatus, User
from datamill.errors import DatamillError, Unavailable
from datamill.events import EventKind
from datamill.home import Home
from datamill.store.access import Actor
from datamill.streams.broker import Broker

log = logging.getLogger("datamill.streams")

#: Most messages handed to the database per transaction: a batch takes only what is already queued, and
#: the queue is bounded by ``QUEUE_KBYTES``, so big chunks make small batches and small files big ones.
BATCH = 500
#: librdkafka's prefetch queue per consumer, in KiB: what may wait in memory ahead of the database.
QUEUE_KBYTES = 8 * 1024
#: How long librdkafka waits before fetching again for a partition whose queue went over ``QUEUE_KBYTES``
#: (its default, 1,000 ms, left this consumer, always slower than a fetch, waiting on an empty queue for
#: most of a big file: measured 5.5 MB/s with a 4 MiB queue at 1,000 ms, 242 MB/s at 5 ms). A queue kept
#: full holds more memory, hence 8 MiB (was 16): RSS growth for a 512 MiB file +44 MB, +64-90 MB at 16 MiB.
FETCH_QUEUE_BACKOFF_MS = 5
#: The most one fetch may bring, over all partitions and per partition (librdkafka's ``fetch.max.bytes`` and
#: ``max.partition.fetch.bytes``). ``QUEUE_KBYTES`` only stops new fetches once the queue is over it: a
#: fetch already asked for lands on top whole, and the client default (64 MiB, see
#: :meth:`~datamill.streams.broker.Broker.consumer_config`) let a big file's chunks overshoot the queue by
#: up to that much (issue 11: RSS growth for a 2 GiB file +72-94 MB). A message bigger than these still
#: comes, alone (Kafka's fetch protocol, KIP-74): they bound memory, not the chunk size.
FETCH_BYTES = 4 << 20
PARTITION_FETCH_BYTES = 2 << 20
#: librdkafka settings a stream dataflow's consumer puts over :meth:`Broker.consumer_config`: together
#: they bound what librdkafka holds ahead of datamill to about ``QUEUE_KBYTES`` + ``FETCH_BYTES``.
#: ``message.max.bytes`` (a producer's limit; librdkafka wants it no larger than ``fetch.max.bytes``) is
#: lowered with it; what a consumer may receive is ``receive.message.max.bytes``, left as it is.
FETCH_SETTINGS: dict[str, int] = {
    "queued.max.messages.kbytes": QUEUE_KBYTES,
    "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
    "fetch.max.bytes": FETCH_BYTES,
    "max.partition.fetch.bytes": PARTITION_FETCH_BYTES,
    "message.max.bytes": FETCH_BYTES,
}
#: Default seconds a partial file may go without a chunk before it is dropped and reported.
PARTIAL_TIMEOUT = 3600.0
#: Status rows are written at most this often (seconds).
STATUS_EVERY = 2.0
#: The longest wait (seconds) between two attempts to reach a broker or database that is away.
MAX_BACKOFF = 10.0
#: A consumer that has not reported for this long (seconds) no longer counts for the lag (it died).
STALE_STATUS = 30.0
#: How long an idle stream service (no consumer here) waits for an event before it looks again.
IDLE_SECONDS = 30.0


def group_id(dataflow_id: int, name: str, created_at: float) -> str:
    """The consumer group of a stream dataflow: stable, so a restart and other servers on the same
    database share it; the creation time keeps two installations' dataflow 1 apart on one cluster."""
    tag = hashlib.sha256(f"{dataflow_id}:{created_at!r}".encode()).hexdigest()[:12]
    return f"datamill-{name}-{tag}"


def consumer_settings(broker: Broker, group: str, member: str) -> dict[str, Any]:
    """The librdkafka settings of a stream dataflow's consumer in ``group`` (its callbacks aside):
    :meth:`Broker.consumer_config` with :data:`FETCH_SETTINGS` over it."""
    return {**broker.consumer_config(group), **FETCH_SETTINGS, "client.id": f"datamill-{member}"}


def broker_for(home: Home, cfg: dict[str, Any]) -> Broker:
    """The dataflow's broker fields over the server's ``kafka_*`` settings."""
    s = home.settings
    base = {
        "bootstrap": s.kafka_bootstrap,
        "security_protocol": s.kafka_security_protocol,
        "sasl_mechanism": s.kafka_sasl_mechanism,
        "sasl_username": s.kafka_sasl_username,
        "sasl_password": s.kafka_sasl_password,
    }
    own = {k: v for k, v in dict(cfg.get("broker") or {}).items() if v}
    return Broker.parse({**base, **own}, where="broker")


@dataclass
class Status:
    """A consumer's live counters (this process's share of a stream dataflow)."""

    started_at: float = field(default_factory=time.time)
    state: str = "starting"
    messages: int = 0
    bytes: int = 0
    files: int = 0
    rejected: int = 0
    duplicates: int = 0
    stale: int = 0
    partitions: list[int] = field(default_factory=list)
    lag: dict[str, int] = field(default_factory=dict)
    last_file: str | None = None
    last_error: str | None = None
    last_error_at: float | None = None

    def error(self, message: str) -> None:
        """Record ``message`` as the last error."""
        self.last_error, self.last_error_at = message, time.time()

    def to_dict(self) -> dict[str, Any]:
        """As JSON."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class StreamConsumer(threading.Thread):
    """The consumer of one stream dataflow (see the module docstring); stop with :meth:`stop`."""

    def __init__(self, home: Home, row: Any, owner: Actor, member: str) -> None:
        super().__init__(name=f"stream-{row.name}", daemon=True)
        self.home = home
        self.cfg = dict(row.config or {})
        self.version = row.version
        self.target = Target(row.id, row.name, str(self.cfg["topic"]), str(self.cfg["destination"]), owner)
        self.stager = Stager(home, self.target)
        self.member = member
        self.group = group_id(row.id, row.name, row.created_at)
        self.status = Status()
        self.partial_timeout = float(self.cfg.get("partial_timeout_s") or PARTIAL_TIMEOUT)
        self._halt = threading.Event()
        self._consumer: Any = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stream-{row.name}-writer")
        self._status_at = 0.0
        self._heartbeat_at = 0.0
        self._expire_at = 0.0

    def stop(self) -> None:
        """Ask the thread to end after its current batch."""
        self._halt.set()

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        """Consume until stopped; broker and database trouble is retried with backoff, never fatal."""
        backoff = 0.5
        while not self._halt.is_set():
            try:
                self._consume()
                backoff = 0.5
            except Exception as exc:  # the broker or the database is away, or a bug: report, wait, retry
                message = exc.message if isinstance(exc, DatamillError) else f"{type(exc).__name__}: {exc}"
                log.warning("stream dataflow %s: %s; retrying in %.1f s", self.target.name, message, backoff)
                self.status.error(message)
                self.status.state = "retrying"
                self._close()
                self._report(force=True)
                self._halt.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        self._close()
        self._writer.shutdown(wait=True)
        self.status.state = "stopped"
        self._report(force=True)

    def _close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                consumer.close()

    def _open(self) -> Any:
        from datamill.streams.broker import kafka

        ck = kafka()
        broker = broker_for(self.home, self.cfg)
        consumer = ck.Consumer(
            {
                **consumer_settings(broker, self.group, self.member),
                # A broker that goes away is not an exception: librdkafka reconnects by itself and says so
                # only here. Its own log lines (one per reconnect attempt) are left to debugging.
                "error_cb": self._on_error,
                "logger": logging.getLogger("datamill.streams.kafka"),
                "log_level": 2,
            }
        )
        self._consumer = consumer
        try:
            meta = consumer.list_topics(timeout=10)  # all topics: asking for one would create it on some brokers
        except ck.KafkaException as exc:
            err = exc.args[0] if exc.args else exc
            text = err.str() if hasattr(err, "str") else str(err)
            raise Unavailable(
                f"the Kafka broker at {broker.bootstrap} does not answer ({text}); is it running? retrying"
            ) from None
        if self.target.topic not in meta.topics:
            raise DatamillError(
                f"topic {self.target.topic!r} does not exist on the broker {broker.bootstrap}; create it "
                "(or fix the dataflow's topic); retrying"
            )
        consumer.subscribe([self.target.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_revoke)  # fmt: skip
        return consumer

    def _on_error(self, err: Any) -> None:
        """librdkafka's error events (called from poll, in this thread): the broker down or back is status."""
        from datamill.streams.broker import kafka

        ck = kafka()
        text = err.str() if hasattr(err, "str") else str(err)
        if err.code() in (ck.KafkaError._ALL_BROKERS_DOWN, ck.KafkaError._TRANSPORT, ck.KafkaError._RESOLVE):
            message = f"the Kafka broker does not answer ({text}); is it running? retrying"
            if self.status.state != "retrying":  # librdkafka says so at every reconnect: log the change only
                log.warning("stream dataflow %s: %s", self.target.name, message)
            self.status.state = "retrying"
        else:
            message = f"Kafka: {text}"
            log.warning("stream dataflow %s: %s", self.target.name, message)
        self.status.error(message)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        # Seek to datamill's stored offsets: what was committed with the data, not Kafka's idea.
        from datamill.streams.broker import kafka

        stored = self.stager.positions([tp.partition for tp in partitions])
        for tp in partitions:
            tp.offset = stored.get(tp.partition, kafka().OFFSET_BEGINNING)
        consumer.assign(partitions)
        self.status.partitions = sorted({*self.status.partitions, *(tp.partition for tp in partitions)})
        log.info("stream dataflow %s: assigned partitions %s", self.target.name, self.status.partitions)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        # Nothing to commit: every batch applied is already stored with its offsets.
        gone = {tp.partition for tp in partitions}
        self.status.partitions = [p for p in self.status.partitions if p not in gone]
        for p in gone:
            self.status.lag.pop(str(p), None)
        with contextlib.suppress(Exception):
            consumer.unassign()

    def _consume(self) -> None:
        consumer = self._consumer or self._open()
        self.status.state = "running"
        # A pipeline one batch deep: while the writer thread commits batch N (database, fsyncs), this
        # thread reads batch N+1 and starts preparing it (hashes, blobs). Batches are bounded by what
        # librdkafka has queued (QUEUE_KBYTES), so at most two are in memory besides that queue.
        pending: Future[None] | None = None
        try:
            while not self._halt.is_set():
                batch = self._read(consumer)
                if batch:
                    if self.status.state != "running":
                        log.info("stream dataflow %s: the broker answers again", self.target.name)
                        self.status.state = "running"
                    prepared = self.stager.prepare(batch)
                    if pending is not None:
                        pending.result()  # the database's errors surface here, in this thread
                    pending = self._writer.submit(self._apply, batch, prepared)
                elif pending is not None and pending.done():
                    done: Future[None] = pending
                    pending = None
                    done.result()
                self._housekeeping(consumer, idle=pending is None)
        finally:
            if pending is not None:
                # Stored offsets must be the committed ones before anything seeks to them again.
                with contextlib.suppress(Exception):  # raised by the loop already, or retried with it
                    pending.result()

    def _read(self, consumer: Any) -> list[Message]:
        """The next batch: one message waited for, then what is already queued behind it (consume()
        with a timeout would wait out the whole timeout for a batch that is not full: latency)."""
        first = consumer.poll(0.5)
        msgs = [first, *consumer.consume(num_messages=BATCH - 1, timeout=0)] if first is not None else []
        batch: list[Message] = []
        for m in msgs:
            err = m.error()
            if err is None:
                batch.append(Message(m.partition(), m.offset(), m.value()))
            elif err.fatal():
                raise DatamillError(f"Kafka: {err.str()}")
            elif not _benign(err):
                self.status.error(f"Kafka: {err.str()}")
        return batch

    def _apply(self, batch: list[Message], prepared: Prepared | None = None) -> None:
        out = self.stager.apply(batch, prepared)
        s = self.status
        s.messages += out.messages
        s.bytes += out.bytes
        s.files += len(out.files)
        s.duplicates += out.duplicates
        s.stale += out.stale
        s.rejected += len(out.rejected)
        if out.files:
            s.last_file = out.files[-1]
        if out.rejected:
            s.error(out.rejected[-1])
            log.warning("stream dataflow %s: %s", self.target.name, out.rejected[-1])

    def _housekeeping(self, consumer: Any, idle: bool = True) -> None:
        now = time.monotonic()
        if idle and now >= self._expire_at:  # not beside a batch being committed
            self._expire_at = now + min(5.0, self.partial_timeout / 4)
            for reason in self.stager.expire(self.partial_timeout):
                self.status.rejected += 1
                self.status.error(reason)
        if idle:
            self._report(consumer=consumer)
        elif time.monotonic() - self._status_at >= STATUS_EVERY:
            # Busy: the lag from the watermarks of the last fetch (no round trip to the broker), and the
            # row written by the writer thread between two batches: this thread never waits for the
            # database's write lock while the writer holds it, it reads and prepares the next batch.
            self._status_at = time.monotonic()
            self._lag(consumer, cached=True)
            self._writer.submit(self._write_report)

    def _lag(self, consumer: Any, cached: bool = False) -> None:
        from datamill.streams.broker import kafka

        ck = kafka()
        parts = [ck.TopicPartition(self.target.topic, p) for p in self.status.partitions]
        if not parts:
            return
        lag = dict(self.status.lag)  # replaced whole: the writer thread may be reporting the old one
        with contextlib.suppress(Exception):
            positions = consumer.position(parts)
            for tp in positions:
                _low, high = consumer.get_watermark_offsets(tp, timeout=1, cached=cached)
                pos = tp.offset if tp.offset >= 0 else _low
                lag[str(tp.partition)] = max(0, high - pos)
        self.status.lag = lag

    def _report(self, consumer: Any = None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._status_at < STATUS_EVERY:
            return
        self._status_at = now
        if consumer is not None:
            self._lag(consumer)
        self._write_report()

    def _write_report(self) -> None:
        heartbeat = time.monotonic() - self._heartbeat_at >= self.home.settings.stream_heartbeat_seconds
        try:
            write_status(self.home, self.target, self.member, self.status, heartbeat)
        except Exception:  # the database is away: the next report tries again
            log.debug("stream status not written", exc_info=True)
            return
        if heartbeat:
            self._heartbeat_at = time.monotonic()


def _benign(err: Any) -> bool:
    """Errors librdkafka reports and recovers from on its own (end of partition)."""
    from datamill.streams.broker import kafka

    return bool(err.code() == kafka().KafkaError._PARTITION_EOF)


def write_status(home: Home, target: Target, member: str, status: Status, heartbeat: bool) -> None:
    """Store a consumer's status; with ``heartbeat``, also as a ``stream.heartbeat`` event."""
    data = status.to_dict()
    now = time.time()
    with home.db.write() as conn:
        conn.execute(
            delete(StreamStatus).where(StreamStatus.dataflow_id == target.dataflow_id, StreamStatus.member == member)
        )
        conn.execute(
            insert(StreamStatus).values(dataflow_id=target.dataflow_id, member=member, status=data, updated_at=now)
        )
        if heartbeat:
            events.append(
                conn,
                EventKind.STREAM_HEARTBEAT,
                dataflow_id=target.dataflow_id,
                folder_id=destination_folder_id(conn, target.dataflow_id),
                data={"name": target.name, "topic": target.topic, "member": member, **_brief(data)},
            )


def _brief(data: dict[str, Any]) -> dict[str, Any]:
    keys = ("state", "messages", "bytes", "files", "rejected", "partitions", "lag", "last_error")
    return {k: data[k] for k in keys}


def stream_status(home: Home, dataflow_id: int) -> dict[str, Any]:
    """A stream dataflow's status over every consumer that reported: sums, lag, files in progress, last error."""
    with home.db.read() as conn:
        rows = conn.execute(select(StreamStatus).where(StreamStatus.dataflow_id == dataflow_id)).all()
    members = []
    total = {"messages": 0, "bytes": 0, "files": 0, "rejected": 0}
    lag: dict[str, int] = {}
    last_error: tuple[float, str] | None = None
    for r in rows:
        st = dict(r.status or {})
        members.append({"member": r.member, "updated_at": r.updated_at, **_brief(st)})
        for k in total:
            total[k] += int(st.get(k) or 0)
        if st.get("state") == "running" and time.time() - r.updated_at < STALE_STATUS:
            lag.update({str(p): int(v) for p, v in (st.get("lag") or {}).items()})
        if st.get("last_error") and (last_error is None or (st.get("last_error_at") or 0) > last_error[0]):
            last_error = (float(st.get("last_error_at") or 0), str(st["last_error"]))
    return {
        **total,
        "lag": dict(sorted(lag.items())),
        "in_progress": in_progress(home, dataflow_id),
        "last_error": last_error[1] if last_error else None,
        "last_error_at": last_error[0] if last_error else None,
        "consumers": members,
    }


class StreamIngest:
    """Runs a :class:`StreamConsumer` for each running stream dataflow in this process."""

    def __init__(self, home: Home, member: str | None = None) -> None:
        self.home = home
        self.member = member or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.consumers: dict[int, StreamConsumer] = {}

    def reconcile(self) -> None:
        """Start consumers for running stream dataflows, stop those of stopped or edited ones."""
        from datamill.dataflows.dataflow import DataflowKind, DataflowState

        with self.home.db.read() as conn:
            rows = conn.execute(
                select(Dataflow).where(Dataflow.kind == DataflowKind.STREAM, Dataflow.state == DataflowState.RUNNING)
            ).all()
            wanted = {r.id: (r, _owner(conn, self.home, r.owner_id)) for r in rows}
        for fid, consumer in list(self.consumers.items()):
            if fid not in wanted or wanted[fid][0].version != consumer.version or not consumer.is_alive():
                consumer.stop()
                consumer.join(timeout=30)
                del self.consumers[fid]
        for fid, (row, owner) in wanted.items():
            if fid not in self.consumers:
                consumer = StreamConsumer(self.home, row, owner, self.member)
                consumer.start()
                self.consumers[fid] = consumer
        for gone in remove_orphan_staging(self.home):
            log.info("stream dataflow %d was deleted: its staging directory was removed", gone)

    def stop_all(self) -> None:
        """Stop every consumer and wait for them (each finishes its batch)."""
        for c in self.consumers.values():
            c.stop()
        for c in self.consumers.values():
            c.join(timeout=30)
        self.consumers.clear()

    async def serve(self, stop: asyncio.Event, poll: float = 1.0) -> None:
        """Reconcile every ``poll`` seconds until ``stop`` is set, then stop the consumers."""
        try:
            seen, last = -1, -events.PACE_SECONDS
            while not stop.is_set():
                # Only a dataflow's start, stop or edit concerns it: not every commit of landing items.
                last = await events.pace(last, stop)
                if stop.is_set():
                    break
                head = await asyncio.to_thread(self.home.events.latest, FLOW_FAMILIES)
                if head != seen or self.consumers:  # consumers may have ended: look every ``poll``
                    try:
                        await asyncio.to_thread(self.reconcile)
                        seen = head
                    except Exception:
                        log.exception("stream dataflows: reconcile failed; trying again")
                if self.consumers or seen != head:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), poll)
                else:
                    # No stream dataflow runs here: only an event (one started, edited or deleted) matters.
                    await self.home.events.wait_or_stop(head, IDLE_SECONDS, stop, FLOW_FAMILIES)
        finally:
            await asyncio.to_thread(self.stop_all)


def _owner(conn: Any, home: Home, owner_id: int | None) -> Actor:
    if owner_id is None:
        return home.admin
    u = conn.execute(select(User.id, User.name, User.is_admin).where(User.id == owner_id)).first()
    return home.admin if u is None else Actor(u.id, u.name, u.is_admin)
