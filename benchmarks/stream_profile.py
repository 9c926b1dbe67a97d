"""Where a stream dataflow's ingest time goes: every thread's stack sampled, timers around each stage.

    .venv/bin/python benchmarks/stream_profile.py small 300 0.1     # 300 files of 0.1 MB
    .venv/bin/python benchmarks/stream_profile.py big 1 200 --timeline

Like ``stream.py`` (a Tansu broker in RAM, the files produced first, a bare confluent-kafka consumer
reading the topic, then the real consumer of a stream dataflow on an embedded SQLite home), with a
profiler in this process from the first batch applied to the last file landed:

* every 2 ms, each thread's Python stack (``sys._current_frames``, py-spy style; a thread inside a
  C call that released the GIL shows the Python line that called it): the leaf lines and the
  4-frame stacks, as shares of that thread's samples;
* wall and thread-CPU seconds around each stage (poll, prepare, decode and chunk check, blob put,
  staging ``pwrite``, hashing, ``fdatasync``, ``syncfs``, the transaction and its statements, the
  version writer), per thread; a thread whose CPU is far below its wall time waits (a core, the
  GIL, the disk);
* with ``--timeline``, each batch's poll, apply, ``fdatasync`` and ``syncfs`` in time order (a
  pipeline's bubbles).

Prints a JSON line (window, bare consumer, ratio, load), then the tables. Not a benchmark: the
profiler itself costs a few percent.
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stream as bench  # this directory's stream.py, importable once the path is set

from datamill.dataflows import ingest, staging
from datamill.store.blobs import local

#: (thread name, stage) -> [wall seconds, calls, thread CPU seconds]
TIMERS: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0.0, 0, 0.0])
TIMELINE: list[tuple[str, str, float, float]] = []
TIMELINE_STAGES = {"poll", "apply", "fdatasync staging", "syncfs", "write_versions"}
ON = threading.Event()
START = [0.0]

#: (owner, attribute, stage): what is timed, where it exists in this version of the code
STAGES: list[tuple[Any, str, str]] = [
    (ingest.StreamConsumer, "_read", "poll"),
    (staging.Stager, "prepare", "prepare (start)"),
    (staging, "_prepare", "decode + blob put"),
    (staging, "decode", "decode + chunk SHA-512"),
    (staging, "_pwrite", "staging pwrite"),
    (staging, "_stage_chunk", "staging pwrite + hash"),
    (staging._Hashing, "_hash", "hashing"),
    (staging._Hashing, "digests", "completion: BLAKE3 wait"),
    (staging.Stager, "_hashed", "completion: hashing wait"),
    (staging.Stager, "_behind", "hashing back-pressure"),
    (staging._Batch, "wait", "wait for staging writes"),
    (staging._Batch, "sync", "fdatasync staging"),
    (local.LocalBlobStore, "sync", "syncfs"),
    (local.LocalBlobStore, "adopt", "adopt"),
    (staging, "write_versions", "write_versions"),
    (staging.Stager, "apply", "apply"),
    (staging.Stager, "_lock_offsets", "lock offsets"),
    (staging.Stager, "_load_rows", "load rows"),
    (staging.Stager, "_one", "one message"),
    (staging.Stager, "_flush_rows", "flush rows"),
    (staging.Stager, "_flush_chunks", "flush chunks"),
    (staging.Stager, "_assemble", "assemble"),
]


def timed(owner: Any, name: str, stage: str) -> None:
    """Wrap ``owner.name`` to add its wall and CPU time to ``stage`` (the calling thread's)."""
    fn: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            if ON.is_set():
                end = time.perf_counter()
                entry = TIMERS[(threading.current_thread().name, stage)]
                entry[0] += end - wall
                entry[1] += 1
                entry[2] += time.thread_time() - cpu
                if stage in TIMELINE_STAGES:
                    TIMELINE.append((threading.current_thread().name, stage, wall - START[0], end - START[0]))

    setattr(owner, name, wrapper)


_GC_STARTED: dict[int, tuple[float, float]] = {}


def _gc_timer(phase: str, info: dict[str, Any]) -> None:
    """``gc.callbacks``: each cyclic collection's wall and CPU as the stage ``gc gen N`` of its thread."""
    me = threading.get_ident()
    if phase == "start":
        _GC_STARTED[me] = (time.perf_counter(), time.thread_time())
        return
    began = _GC_STARTED.pop(me, None)
    if began is not None and ON.is_set():
        entry = TIMERS[(threading.current_thread().name, f"gc gen {info['generation']}")]
        entry[0] += time.perf_counter() - began[0]
        entry[1] += 1
        entry[2] += time.thread_time() - began[1]


def instrument() -> None:
    """Time every stage that exists, and the cyclic GC; start the profile at the first batch applied."""
    gc.callbacks.append(_gc_timer)
    for owner, name, stage in STAGES:
        if hasattr(owner, name):
            timed(owner, name, stage)
    apply = staging.Stager.apply

    def first(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not ON.is_set():
            START[0] = time.perf_counter()
            ON.set()
        return apply(self, *args, **kwargs)

    staging.Stager.apply = first  # type: ignore[method-assign]


def task_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of every OS thread of this process, by thread id, with a name: the
    Python thread's, else the kernel's (librdkafka names its threads ``rdk:...``)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                comm, rest = f.read().rsplit(")", 1)
            fields = rest.split()
        except FileNotFoundError:
            continue  # ended meanwhile
        name = names.get(int(tid)) or comm.split("(", 1)[1]
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def task_report(label: str, before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> None:
    """Each OS thread's CPU between two :func:`task_cpu` snapshots, grouped by name, biggest first."""
    used: dict[str, float] = collections.defaultdict(float)
    for tid, (name, cpu) in after.items():
        used[name] += cpu - before.get(tid, (name, 0.0))[1]
    print(f"\n== OS threads' CPU s, {label}: total {sum(used.values()):.2f}")
    for name, cpu in sorted(used.items(), key=lambda named: named[1], reverse=True):
        if cpu > 0:
            print(f"  {cpu:7.3f}  {name}")


SAMPLES: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
LEAVES: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)


def sample(stop: threading.Event) -> None:
    """Every 2 ms while profiling, each other thread's stack."""
    me = threading.get_ident()
    while not stop.wait(0.002):
        if not ON.is_set():
            continue
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            name = names.get(ident, str(ident))
            if ident == me or name == "MainThread":
                continue
            stack: list[str] = []
            f: Any = frame
            while f is not None and len(stack) < 4:
                stack.append(f"{Path(f.f_code.co_filename).stem}:{f.f_code.co_name}:{f.f_lineno}")
                f = f.f_back
            SAMPLES[name][" < ".join(stack)] += 1
            LEAVES[name][stack[0]] += 1


def topic_messages(broker: Any, topic: str) -> int:
    """Messages in ``topic`` (its high watermarks)."""
    ck = bench.kafka()
    c = ck.Consumer(broker.consumer_config("count"))
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            hi - lo for lo, hi in (c.get_watermark_offsets(ck.TopicPartition(topic, p), timeout=10) for p in parts)
        )
    finally:
        c.close()


def report(wall: float, timeline: bool) -> None:
    """The timers, the timeline and the samples, on stdout."""
    print("\n== stages (thread, stage): wall s, calls, % of the profiled window, thread CPU s")
    for (thread, stage), (secs, calls, cpu) in sorted(TIMERS.items(), key=lambda kv: (kv[0][0], -kv[1][0])):
        print(f"{thread:28s} {stage:28s} {secs:8.3f} {int(calls):6d} {100 * secs / wall:6.1f}%  cpu {cpu:7.3f}")
    if timeline:
        print("\n== timeline (ms from the first batch applied): start, end, duration")
        for thread, stage, a, b in sorted(TIMELINE, key=lambda x: x[2]):
            print(f"{a * 1000:8.1f} {b * 1000:8.1f} {1000 * (b - a):7.1f}  {thread:24s} {stage}")
    for thread, counts in sorted(SAMPLES.items()):
        total = sum(counts.values())
        print(f"\n-- {thread}: {total} samples; leaf lines")
        for key, n in LEAVES[thread].most_common(12):
            print(f"  {100 * n / total:5.1f}%  {key}")
        print("   stacks")
        for key, n in counts.most_common(10):
            print(f"  {100 * n / total:5.1f}%  {key}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help="a label (and the source directory's name)")
    ap.add_argument("files", type=int)
    ap.add_argument("mb", type=float, help="MB per file")
    ap.add_argument("--timeline", action="store_true")
    args = ap.parse_args()
    instrument()
    workdir = Path(tempfile.mkdtemp(prefix="dm-stream-profile."))
    tansu = bench.Tansu(workdir)
    try:
        broker = bench.Broker(tansu.bootstrap)
        topic = tansu.topic(4)
        src = workdir / args.name
        total = bench.write_files(src, args.files, int(args.mb * bench.MB))
        bench.send([src], topic, broker)
        shutil.rmtree(src)
        bare = bench.bare_consume(broker, topic, topic_messages(broker, topic), tansu.proc.pid)
        ing = bench.Ingest(workdir, broker, topic)
        stop = threading.Event()
        sampler = threading.Thread(target=sample, args=(stop,), daemon=True, name="sampler")
        sampler.start()
        try:
            tasks0 = task_cpu()
            ing.start()
            while not ON.wait(0.001):
                pass
            tasks1 = task_cpu()  # the first batch is being applied: start-up and group join before this
            ing.wait(args.files, timeout=3600)
            wall = time.perf_counter() - START[0]
            ON.clear()
            tasks2 = task_cpu()
            seconds = ing.window()
        finally:
            stop.set()
            ing.close()
        summary = {
            "name": args.name, "mb": total / bench.MB, "window_s": round(seconds, 3), "profiled_s": round(wall, 3),
            "bare_s": round(bare["seconds"], 3), "ratio": round(bare["seconds"] / seconds, 3),
            "load": [round(x, 2) for x in os.getloadavg()],
        }  # fmt: skip
        print(json.dumps(summary))
        task_report("start to first batch applied", tasks0, tasks1)
        task_report("first batch applied to last file landed", tasks1, tasks2)
        report(wall, args.timeline)
    finally:
        tansu.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
