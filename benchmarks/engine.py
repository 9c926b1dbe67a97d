"""Engine throughput: trivial tasks per second, an unchanged re-run, and the local pool's speedup.

    .venv/bin/python benchmarks/engine.py [--items 10000] [--rounds 3] [--cpu-items 8] [--cpu-seconds 0.2] [--home DIR]

Prints ONE JSON object on stdout (progress goes to stderr). Embedded SQLite, and every task is
recorded in the database (task rows, their outputs and events) as in any run. Measured:

1. ``trivial``: a one-step pipeline over ``--items`` tiny items (``tiny(item) -> str`` returns the
   item's name). Each task is claimed, run, and recorded with its output (kept inline in the
   database: a few bytes), a ``task.started`` and a ``task.finished`` event. Timed separately:
   ``submit`` (plan + record the run, its tasks and their ``task.queued`` events) and ``drive`` (a
   scheduler runs every task to its recorded end); ``tasks_per_s`` = items / drive seconds,
   ``end_to_end_tasks_per_s`` counts submit too. With ``inline`` and with ``local`` (one worker per
   CPU; the pool is started before timing), no destination folder. Targets: >= 5,000 tasks/s
   inline, >= 2,000 tasks/s local (2 cores) and >= 0.25 x a bare ``multiprocessing.Pool.imap`` of
   the same function (``plain_tiny``) over as many names with as many processes (its default
   chunksize 1). The local pool and the bare imap are measured **interleaved**, in ``--rounds``
   rounds (3 by default): both pools are started and warmed up first (the local pool with an untimed
   run of 8 tasks a worker, the imap pool with 100 calls), both live in this process for the whole
   measurement, and each round is one recorded run over every item on the local pool (a new salt
   each round, so nothing is cached) and then one ``imap`` of as many names, run in the event
   loop's thread while the scheduler and its pool are idle. ``rounds`` lists each round's figures
   (tasks/s, drive CPU and the event loop thread's CPU per task, imap's calls/s and its parent's
   threads' CPU per call, the round's own ratio). ``tasks_per_s`` (local) is the median of the
   rounds' tasks/s, ``baseline_pool_imap_tasks_per_s`` the median of the rounds' imap calls/s, and
   ``ratio_to_pool_imap`` = the first over the second (the ratio of the medians; its ``ok`` uses
   it); ``ratio_to_pool_imap_min_max`` is the lowest and highest round's own ratio. ``drive_s`` and
   ``submit_s`` are those of the median round; the CPU times and context switches per task below
   are over all rounds together (their sum over every round's tasks). One imap with ``Pool.map``'s
   chunk size (n / (4 x workers)) follows the rounds (``..._auto_chunks``). ``executor_only_*``: the
   local executor alone (no scheduler, no database) on the same calls, with as many in flight as
   the scheduler keeps, and the mean chunk it sent.
   ``inline_publishing`` is the same with a destination folder: every output also becomes an item
   version (a blob file written and fsynced, the item, the version with provenance, an
   ``item.created`` event), which is what a dataflow does.
   ``drive_cpu_us_per_task``: the CPU time of the whole process (every thread) during the drive
   per task, which other jobs on the machine change less than the wall time;
   ``database_threads_cpu_us_per_task``: the part of it in the event loop's default executor's
   threads (``asyncio_*``), where the group commits run: the database thread(s).
   ``workers_cpu_us_per_task`` (local): the pool's worker processes' CPU time (every thread, from
   submit to the drive's end) per task, summed over the workers, and their context switches per
   task (``workers_voluntary_switches_per_task``: they waited; ``..._involuntary_...``: the kernel
   took the core from them); ``parent_*_switches_per_task`` this process's during the drive.
   ``parent_threads_cpu_us_per_task``: this process's three busiest threads' CPU per task during
   the drive, by thread name; ``parent_cores_busy`` and ``workers_cores_busy``: CPU seconds over wall seconds.
   ``baseline_pool_imap_workers_cpu_us_per_call`` and ``..._switches_per_call`` are the same for the
   bare ``Pool.imap`` (chunksize 1) workers, ``baseline_pool_imap_parent_*`` its parent's (this
   process, every thread; ``..._threads_...`` by thread: on Python 3.11 the pool's
   ``_handle_workers`` thread also wakes whenever results wait unread, and what it spins then is
   most of the swing of imap's rate from round to round), and ``executor_only_workers_*`` for the
   local executor alone.
   ``baseline_plain_calls_per_s`` is the same function called in a plain loop over the same items
   in the same run (``ratio_to_plain`` = tasks/s over it), and ``load_avg_1m`` the load then: this
   machine is shared, so compare figures by their ratio.
2. ``rerun``: a 3-step pipeline (per item ``parse`` -> per item ``size`` -> aggregate ``total``)
   over the same items is run once, then run again unchanged; the second run is timed end to end
   (``Engine.run``: list the inputs, find the first run by its plan identity and check that it may
   be copied, record the copy with every task cached, end it; a run that may not be copied would be
   planned with bulk cache look-ups instead; nothing is re-published). Target: <= 1 s. Also: the
   SQL statements it executed (counted with SQLAlchemy's ``before_cursor_execute``), and
   ``baseline_sqlite_floor_s``, the same rows written with plain ``sqlite3.executemany`` and the
   keys hashed (:func:`floor_baseline`), with the ratio, and the re-run's CPU time
   (``rerun_cpu_s``; on a shared machine the wall time mostly measures the others).
3. ``cpu``: a CPU-bound step (``--cpu-seconds`` of pure-Python work per item) over ``--cpu-items``
   items with the local executor and 1 worker, then 2 workers (pools started and warmed up with a
   short run before timing, the timed run forced so nothing is cached). ``speedup`` = 1-worker
   seconds / 2-worker seconds. ``baseline_process_pool_speedup`` is the same work in a plain
   ``ProcessPoolExecutor``: the most this machine gives at the time (other load lowers both).
   Target: >= 1.8 on 2 cores.

Setup (not timed): the items are put with ``Store.put_many``, 1,000 at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from datamill.config import load_settings
from datamill.engine.engine import Engine
from datamill.engine.scheduler import Scheduler
from datamill.home import Home
from datamill.pipeline import InputFile, Pipeline, step

HERE = Path(__file__).resolve()
TARGET_INLINE = 5000
TARGET_LOCAL = 2000
TARGET_LOCAL_RATIO = 0.25  # x a bare multiprocessing.Pool.imap of the same function, same run
TARGET_RERUN_S = 1.0
TARGET_SPEEDUP = 1.8


# ---------------------------------------------------------------------------------- pipelines


@step
def tiny(item: InputFile, *, salt: str = "") -> str:
    """A trivial task: the item's name (``salt`` keeps measurements apart in the cache)."""
    return item.name


@step
def parse(item: InputFile) -> str:
    return item.read_text()


@step
def size(parse: str) -> int:
    return len(parse)


@step(aggregate=True)
def total(size: list) -> int:
    return sum(size)


@step
def burn(item: InputFile, *, scale: float = 1.0) -> int:
    """Pure-Python work: the item holds a loop count (calibrated in the parent), times ``scale``."""
    n = int(int(item.read_text()) * scale)
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) % 1_000_003
    return acc


trivial = Pipeline("trivial", steps=[tiny])
three = Pipeline("three", steps=[parse, size, total])
cpu = Pipeline("cpu", steps=[burn])


def ref(name: str) -> str:
    return f"{HERE}:{name}"


# ---------------------------------------------------------------------------------- helpers


def proc_counters(pids: list[int]) -> tuple[float, int, int]:
    """CPU seconds and voluntary / involuntary context switches of the processes ``pids``, summed
    over their live threads (Linux: ``/proc/<pid>/task/<tid>/schedstat``, nanoseconds, and
    ``.../status``); a thread that ends between two readings is lost, which none of the measured
    ones do (a worker's threads live as long as it)."""
    cpu, voluntary, involuntary = 0.0, 0, 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    cpu += int(f.read().split()[0]) / 1e9
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches"):
                            voluntary += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches"):
                            involuntary += int(line.split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return cpu, voluntary, involuntary


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by thread id (Linux; empty elsewhere)."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/self/task/{tid}/schedstat") as f:
                out[tid] = int(f.read().split()[0]) / 1e9
    return out


def counters_delta(
    before: tuple[float, int, int], after: tuple[float, int, int], n: int, prefix: str, unit: str
) -> dict[str, Any]:
    """Per-``unit`` figures of two :func:`proc_counters` readings over ``n`` calls."""
    return {
        f"{prefix}_cpu_us_per_{unit}": round((after[0] - before[0]) / n * 1e6, 1),
        f"{prefix}_voluntary_switches_per_{unit}": round((after[1] - before[1]) / n, 3),
        f"{prefix}_involuntary_switches_per_{unit}": round((after[2] - before[2]) / n, 3),
    }


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def fill(home: Home, folder: str, n: int, data: Any = None) -> float:
    """Put ``n`` tiny items into ``folder``; returns seconds taken."""
    home.store.create_folder(home.admin, folder, exist_ok=True)
    started = time.perf_counter()
    entries = [(f"i{i:05}.txt", data(i) if callable(data) else f"item {i}\n".encode()) for i in range(n)]
    for at in range(0, n, 1000):  # one sync and one transaction per 1,000 items
        home.store.put_many(home.admin, folder, entries[at : at + 1000])
    return time.perf_counter() - started


async def timed_run(
    home: Home,
    executor: str,
    pipeline: str,
    source: str,
    dest: str | None,
    workers: int | None = None,
    warm_up: dict[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Submit and drive a run with a started scheduler; times the two parts.

    With ``warm_up`` (submit options; ``items``: over how many of the inputs, all by default), an
    untimed run goes first, so that every worker has loaded the pipeline before the timed one.
    """
    engine = Engine(home)
    async with Scheduler(home, executor, workers=workers) as sched:
        if warm_up is not None:
            await warm_run(engine, sched, pipeline, source, warm_up)
        return await timed_drive(engine, sched, executor, pipeline, source, dest, **options)


async def warm_run(engine: Engine, sched: Scheduler, pipeline: str, source: str, warm_up: dict[str, Any]) -> None:
    """An untimed run over ``warm_up["items"]`` of the inputs (all by default), with the other submit options."""
    options = dict(warm_up)
    inputs = engine.inputs_from_folder(engine.home.admin, source)
    some = inputs[: options.pop("items", len(inputs))]
    first = await asyncio.to_thread(engine.submit, engine.home.admin, pipeline, some, source=source, **options)
    await sched.run_until_idle([first])


async def timed_drive(
    engine: Engine, sched: Scheduler, executor: str, pipeline: str, source: str, dest: str | None, **options: Any
) -> dict[str, Any]:
    """One run over every input of ``source`` on the started scheduler ``sched``: ``submit_s`` (plan
    and record it) and ``drive_s`` (run every task to its recorded end), this process's CPU during the
    drive, by thread too, and the pool's workers' counters from submit to the drive's end."""
    home = engine.home
    inputs = engine.inputs_from_folder(home.admin, source)
    pids: list[int] = list(getattr(sched.executor, "pids", []))
    w0 = proc_counters(pids)
    t0 = time.perf_counter()
    # The plan is handed to the scheduler, as ``Engine.run`` and the server do: it is not made twice.
    run_id = await asyncio.to_thread(
        engine.submit,
        home.admin,
        pipeline,
        inputs,
        source=source,
        dest=dest,
        executor=executor,
        scheduler=sched,
        **options,
    )
    t1, c1, p1, h1 = time.perf_counter(), time.process_time(), proc_counters([os.getpid()]), thread_cpu()
    await sched.run_until_idle([run_id])
    t2, c2, p2, h2 = time.perf_counter(), time.process_time(), proc_counters([os.getpid()]), thread_cpu()
    w2 = proc_counters(pids)
    run = engine.get_run(home.admin, run_id)
    tasks = sum(run["counts"].values())
    out = {"run": run, "submit_s": t1 - t0, "drive_s": t2 - t1, "drive_cpu_s": c2 - c1, "tasks": tasks}
    names = {str(t.native_id): t.name for t in threading.enumerate()}
    threads = sorted(((h2[t] - h1.get(t, 0.0), names.get(t, t)) for t in h2), reverse=True)
    return {**out, "parent": (p1, p2), "threads": threads, "workers": (w0, w2) if pids else None, "t0": t0, "t2": t2}


def trivial_throughput(
    home: Home, executor: str, source: str, publish: bool = False, rounds: int = 3
) -> dict[str, Any]:
    dest = f"out-{executor}" if publish else None
    if dest:
        home.store.create_folder(home.admin, dest, exist_ok=True)
    workers = (os.cpu_count() or 1) if executor == "local" else None
    say(f"trivial tasks, {executor}{', publishing' if publish else ''}")
    salt = f"{executor}-{publish}"
    target = TARGET_INLINE if executor == "inline" else TARGET_LOCAL
    if executor == "local" and not publish:
        return local_against_imap(home, source, workers or 1, rounds, salt, target)
    # The pool's workers load the pipeline with their first call (seconds on a busy machine): a few
    # untimed tasks first.
    warm = {"items": 8 * (workers or 1), "params": {"salt": f"{salt}-warm-up"}} if executor == "local" else None
    r = asyncio.run(timed_run(home, executor, ref("trivial"), source, dest, workers, warm, params={"salt": salt}))
    n = r["tasks"]
    assert r["run"]["status"] == "succeeded" and r["run"]["counts"] == {"succeeded": n}, r["run"]["counts"]
    tps = n / r["drive_s"]
    plain = plain_calls_per_s(home, source)
    return {
        "tasks": n,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "baseline_plain_calls_per_s": round(plain),
        "ratio_to_plain": round(tps / plain, 5),
        "workers": workers,
        "submit_s": round(r["submit_s"], 3),
        "drive_s": round(r["drive_s"], 3),
        # CPU of this process (every thread) per recorded task: steadier than the wall time when
        # other jobs share the cores
        "drive_cpu_us_per_task": round(r["drive_cpu_s"] / n * 1e6),
        # the threads of the loop's default executor, where the group commits run (database work)
        "database_threads_cpu_us_per_task": round(
            sum(c for c, name in r["threads"] if str(name).startswith("asyncio_")) / n * 1e6, 1
        ),
        "tasks_per_s": round(tps),
        "end_to_end_tasks_per_s": round(n / (r["submit_s"] + r["drive_s"])),
        "published": len(home.store.list_items(home.admin, dest)) if dest else 0,
        "target_tasks_per_s": None if publish else target,
        "ok": None if publish else tps >= target,
    }


def _median(values: list[float]) -> float:
    """The median (of an odd count: the middle value; of an even count: the mean of the middle two)."""
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


async def local_rounds(home: Home, source: str, workers: int, rounds: int, salt: str) -> dict[str, Any]:
    """``rounds`` rounds, each a recorded run of the trivial pipeline over every input of ``source``
    on the local pool, then a bare ``Pool(workers).imap(plain_tiny, names, chunksize=1)`` over as
    many names: both pools started and warmed up first, both in this process, each idle while the
    other is timed."""
    import multiprocessing

    engine = Engine(home)
    async with Scheduler(home, "local", workers=workers) as sched:
        # The pool's workers load the pipeline with their first call (seconds on a busy machine).
        warm = {"items": 8 * workers, "params": {"salt": f"{salt}-warm-up"}}
        await warm_run(engine, sched, ref("trivial"), source, warm)
        # The fork server, as the local executor uses: this process has threads (SQLite), so no fork.
        with multiprocessing.get_context("forkserver").Pool(workers) as pool:
            n = len(engine.inputs_from_folder(home.admin, source))
            names = [f"i{i:05}.txt" for i in range(n)]
            list(pool.imap(plain_tiny, names[:100]))  # start the processes before timing
            drives, imaps = [], []
            for r in range(rounds):
                # A new salt each round: every task runs (nothing is found in the cache).
                say(f"  round {r + 1}/{rounds}: datamill's local pool, then Pool.imap")
                drives.append(await timed_drive(engine, sched, "local", ref("trivial"), source, None,
                                                params={"salt": f"{salt}-{r}"}))  # fmt: skip
                # In the event loop's thread, blocking it: the scheduler and its pool are idle meanwhile.
                imaps.append(imap_round(pool, names, 1))
            auto = imap_round(pool, names, max(1, n // (4 * workers)))
    return {"drives": drives, "imaps": imaps, "auto": auto}


def imap_round(pool: Any, names: list[str], chunksize: int) -> dict[str, Any]:
    """One timed ``pool.imap(plain_tiny, names, chunksize=...)``: calls/s, and the CPU time and context
    switches of its workers and of this process, by thread too (the pool's own threads are named
    after their functions: ``_handle_tasks``, ``_handle_results``, ``_handle_workers``)."""
    pids = [p.pid for p in pool._pool]  # no public way to its processes
    n = len(names)
    w0, p0, h0 = proc_counters(pids), proc_counters([os.getpid()]), thread_cpu()
    started = time.perf_counter()
    got = list(pool.imap(plain_tiny, names, chunksize=chunksize))
    took = time.perf_counter() - started
    w1, p1, h1 = proc_counters(pids), proc_counters([os.getpid()]), thread_cpu()
    assert got == names
    named = {str(t.native_id): t.name.rsplit("(", 1)[-1].rstrip(")") for t in threading.enumerate()}
    threads = {named.get(t, t): (h1[t] - h0.get(t, 0.0)) for t in h1}
    return {"calls_per_s": n / took, "n": n, "workers": (w0, w1), "parent": (p0, p1), "threads": threads}


def local_against_imap(home: Home, source: str, workers: int, rounds: int, salt: str, target: int) -> dict[str, Any]:
    """The local pool's trivial tasks against a bare ``Pool.imap``, interleaved in ``rounds`` rounds
    (:func:`local_rounds`); ``ratio_to_pool_imap`` = the median of the pool's rounds' tasks/s over the
    median of imap's rounds' calls/s. Rates are the medians of the rounds; CPU times and context
    switches a task are those of every round together (their sum over the rounds' tasks)."""
    got = asyncio.run(local_rounds(home, source, workers, rounds, salt))
    drives, imaps = got["drives"], got["imaps"]
    for d in drives:
        assert d["run"]["status"] == "succeeded" and d["run"]["counts"] == {"succeeded": d["tasks"]}, d["run"]["counts"]
    n = drives[0]["tasks"]
    total = sum(d["tasks"] for d in drives)
    rates = [d["tasks"] / d["drive_s"] for d in drives]
    imap_rates = [b["calls_per_s"] for b in imaps]
    tps, imap_tps = _median(rates), _median(imap_rates)
    ratio = tps / imap_tps
    say("the local executor alone on the same calls")
    alone = asyncio.run(executor_only(n, workers))
    plain = plain_calls_per_s(home, source)

    Counters = tuple[float, int, int]

    def summed(pairs: list[tuple[Counters, Counters]]) -> tuple[Counters, Counters]:
        """Two readings whose difference is the sum of the pairs' differences."""
        cpu = sum(after[0] - before[0] for before, after in pairs)
        voluntary = sum(after[1] - before[1] for before, after in pairs)
        involuntary = sum(after[2] - before[2] for before, after in pairs)
        return (0.0, 0, 0), (cpu, voluntary, involuntary)

    threads: dict[str, float] = {}
    for d in drives:
        for c, name in d["threads"]:
            threads[name] = threads.get(name, 0.0) + c
    imap_threads: dict[str, float] = {}
    for b in imaps:
        for name, c in b["threads"].items():
            imap_threads[name] = imap_threads.get(name, 0.0) + c
    imap_calls = sum(b["n"] for b in imaps)
    w0, w2 = summed([d["workers"] for d in drives])
    p1, p2 = summed([d["parent"] for d in drives])
    bw0, bw1 = summed([b["workers"] for b in imaps])
    bp0, bp1 = summed([b["parent"] for b in imaps])
    drive_cpu = sum(d["drive_cpu_s"] for d in drives)
    drive_s = sum(d["drive_s"] for d in drives)
    mid = sorted(range(len(drives)), key=lambda i: rates[i])[len(drives) // 2]  # the median round

    def busiest(threads: dict[str, float], n: int, top: int) -> dict[str, float]:
        """The ``top`` busiest threads' CPU µs per call (of ``n``), by name."""
        return {name: round(c / n * 1e6, 1) for name, c in sorted(threads.items(), key=lambda kv: -kv[1])[:top]}

    each = [
        {
            "round": i + 1,
            "tasks_per_s": round(rates[i]),
            "drive_cpu_us_per_task": round(d["drive_cpu_s"] / d["tasks"] * 1e6, 1),
            # the event loop's thread: the stage the pool's handover is in
            "loop_thread_cpu_us_per_task": busiest({nm: c for c, nm in d["threads"]}, d["tasks"], 99).get("MainThread"),
            # the loop's default executor's threads: the group commits (as the inline figure's)
            "database_threads_cpu_us_per_task": round(
                sum(c for c, nm in d["threads"] if str(nm).startswith("asyncio_")) / d["tasks"] * 1e6, 1
            ),
            "pool_imap_calls_per_s": round(b["calls_per_s"]),
            "pool_imap_parent_threads_cpu_us_per_call": busiest(b["threads"], b["n"], 4),
            "ratio": round(rates[i] / b["calls_per_s"], 3),
        }
        for i, (d, b) in enumerate(zip(drives, imaps, strict=True))
    ]
    return {
        "tasks": n,
        "rounds": each,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "baseline_plain_calls_per_s": round(plain),
        "ratio_to_plain": round(tps / plain, 5),
        "workers": workers,
        "submit_s": round(drives[mid]["submit_s"], 3),
        "drive_s": round(drives[mid]["drive_s"], 3),
        # CPU of this process (every thread) per recorded task: steadier than the wall time when
        # other jobs share the cores
        "drive_cpu_us_per_task": round(drive_cpu / total * 1e6),
        "tasks_per_s": round(tps),
        "end_to_end_tasks_per_s": round(n / (drives[mid]["submit_s"] + drives[mid]["drive_s"])),
        "published": 0,
        "target_tasks_per_s": target,
        # How much of a core each side kept busy: the parent's Python threads share one GIL.
        "parent_cores_busy": round(drive_cpu / drive_s, 2),
        "workers_cores_busy": round(w2[0] / sum(d["t2"] - d["t0"] for d in drives), 2),
        # the busiest threads of this process during the drives (event loop, database, ...)
        "parent_threads_cpu_us_per_task": busiest(threads, total, 3),
        "database_threads_cpu_us_per_task": round(
            sum(c for name, c in threads.items() if str(name).startswith("asyncio_")) / total * 1e6, 1
        ),
        **counters_delta(w0, w2, total, "workers", "task"),
        **{k: v for k, v in counters_delta(p1, p2, total, "parent", "task").items() if "switches" in k},
        **counters_delta(bw0, bw1, imap_calls, "baseline_pool_imap_workers", "call"),
        **counters_delta(bp0, bp1, imap_calls, "baseline_pool_imap_parent", "call"),
        "baseline_pool_imap_parent_threads_cpu_us_per_call": busiest(imap_threads, imap_calls, 4),
        **{k: v for k, v in alone.items() if k.startswith("executor_only_")},
        "executor_only_tasks_per_s": round(alone["tasks_per_s"]),
        "executor_only_ratio_to_pool_imap": round(alone["tasks_per_s"] / imap_tps, 3),
        "executor_only_mean_chunk": alone["mean_chunk"],
        "baseline_pool_imap_tasks_per_s": round(imap_tps),
        "ratio_to_pool_imap": round(ratio, 3),
        "ratio_to_pool_imap_min_max": [min(e["ratio"] for e in each), max(e["ratio"] for e in each)],
        "target_ratio_to_pool_imap": TARGET_LOCAL_RATIO,
        "baseline_pool_imap_auto_chunks_tasks_per_s": round(got["auto"]["calls_per_s"]),
        "ratio_to_pool_imap_auto_chunks": round(tps / got["auto"]["calls_per_s"], 3),
        "load_average": round(os.getloadavg()[0], 1),
        "ok": tps >= target and ratio >= TARGET_LOCAL_RATIO,
    }


def plain_calls_per_s(home: Home, source: str) -> float:
    """The same function called in a plain Python loop over the same items (no engine): the machine's pace now."""
    refs = Engine(home).inputs_from_folder(home.admin, source)
    fn = tiny.fn
    assert fn is not None  # a step made from a function keeps it
    calls, started = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - started < 0.2:  # long enough to be measured on a busy machine
        for r in refs:
            fn(InputFile(r, None), salt="")
        calls += len(refs)
    return calls / (time.perf_counter() - started)


def plain_tiny(name: str) -> str:
    """What ``tiny`` does, as a plain function of the item's name (for the baseline)."""
    return name


def pool_call(reporter: Any, name: str) -> str:
    """``plain_tiny`` as a call of the local executor (whose functions take a reporter first)."""
    return name


async def executor_only(n: int, workers: int) -> dict[str, Any]:
    """Tasks/s of the local executor alone (no scheduler, no recording) on ``n`` trivial calls,
    keeping as many in flight as the scheduler would; and the chunk sizes it chose."""
    from datamill.executors.base import PythonCall
    from datamill.executors.local import LocalExecutor

    ex = LocalExecutor(workers)
    async with ex:
        window = asyncio.Semaphore(16)

        async def one(i: int) -> str:
            async with window:
                return str(await ex.run(PythonCall(pool_call, (f"i{i:05}.txt",)), lambda m: None))

        await asyncio.gather(*(one(i) for i in range(200)))  # warm up: workers started, durations known
        window = asyncio.Semaphore(ex.in_flight or 16)  # what the scheduler keeps in flight now
        ex.chunks.clear()
        pids = ex.pids
        w0 = proc_counters(pids)
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        took = time.perf_counter() - started
        w1 = proc_counters(pids)
    sends = sum(ex.chunks.values())
    return {
        "tasks_per_s": n / took,
        "chunks_sent": sends,
        "mean_chunk": round(n / max(1, sends), 1),
        **counters_delta(w0, w1, n, "executor_only_workers", "call"),
    }


def floor_baseline(tasks: int, root: Path) -> float:
    """The least a recorded re-run of ``tasks`` cached tasks can cost here: plain ``sqlite3`` and BLAKE3.

    Hash ``tasks`` keys, then insert as many task rows and outputs and twice as many event rows
    (JSON data) with ``executemany`` into a new SQLite file in WAL mode, in one transaction. No
    planning, no checks: what is left of a re-run once everything else is removed.
    """
    import sqlite3

    import blake3

    path = root / "floor.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, run INT, planned TEXT, key TEXT, status TEXT, deps TEXT)")
    db.execute("CREATE TABLE o (id INTEGER PRIMARY KEY, task INT, name TEXT, digest TEXT, size INT, inline BLOB)")
    db.execute("CREATE TABLE e (seq INTEGER PRIMARY KEY, kind TEXT, task INT, data TEXT)")
    started = time.perf_counter()
    keys = [
        "blake3:" + blake3.blake3(json.dumps({"step": "s", "inputs": [[f"item:{i}", "d"]]}).encode()).hexdigest()
        for i in range(tasks)
    ]
    with db:
        db.executemany(
            "INSERT INTO t (id, run, planned, key, status, deps) VALUES (?, 1, ?, ?, 'cached', '[]')",
            [(i, f"s[{i}]", k) for i, k in enumerate(keys)],
        )
        db.executemany(
            "INSERT INTO o (task, name, digest, size, inline) VALUES (?, 'return.txt', ?, 6, ?)",
            [(i, k, b"item 0") for i, k in enumerate(keys)],
        )
        events = [(kind, i, json.dumps({"status": "cached", "key": k})) for kind in "qf" for i, k in enumerate(keys)]
        db.executemany("INSERT INTO e (kind, task, data) VALUES (?, ?, ?)", events)
    took = time.perf_counter() - started
    db.close()
    path.unlink()
    return took


def rerun(home: Home, source: str) -> dict[str, Any]:
    from sqlalchemy import event

    dest = "out-three"
    home.store.create_folder(home.admin, dest, exist_ok=True)
    engine = Engine(home)
    say("3-step pipeline, first run")
    t0 = time.perf_counter()
    first = engine.run(home.admin, ref("three"), engine.inputs_from_folder(home.admin, source),
                       source=source, dest=dest, executor="inline")  # fmt: skip
    t1 = time.perf_counter()
    assert first["status"] == "succeeded", first["counts"]
    say("3-step pipeline, unchanged re-run")
    statements = [0]

    def count(*_args: Any) -> None:
        statements[0] += 1

    engines = {id(e): e for e in (home.db.engine, home.db.write_engine)}.values()
    for e in engines:
        event.listen(e, "before_cursor_execute", count)
    load = os.getloadavg()[0]
    c2, t2 = time.process_time(), time.perf_counter()
    inputs = engine.inputs_from_folder(home.admin, source)
    again = engine.run(home.admin, ref("three"), inputs, source=source, dest=dest, executor="inline")
    c3, t3 = time.process_time(), time.perf_counter()
    for e in engines:
        event.remove(e, "before_cursor_execute", count)
    n = sum(again["counts"].values())
    assert again["counts"] == {"cached": n}, again["counts"]
    floor = floor_baseline(n, Path(home.path))
    return {
        "tasks": n,
        "first_run_s": round(t1 - t0, 3),
        "rerun_s": round(t3 - t2, 3),
        # CPU time of this process: what the re-run costs on a machine others share
        "rerun_cpu_s": round(c3 - c2, 3),
        "cached": again["counts"]["cached"],
        "statements": statements[0],
        "statements_per_1000_tasks": round(statements[0] * 1000 / n, 1),
        "baseline_sqlite_floor_s": round(floor, 3),
        "ratio_to_floor": round((t3 - t2) / floor, 1),
        "load_average": round(load, 1),
        "target_s": TARGET_RERUN_S,
        "ok": t3 - t2 <= TARGET_RERUN_S,
    }


def spin(n: int) -> int:
    """The work ``burn`` does, as a plain function (for the baseline)."""
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) % 1_000_003
    return acc


def baseline_speedup(loops: list[int]) -> float:
    """The same work in a plain ``ProcessPoolExecutor`` with 1, then 2 processes: what this machine allows."""
    from concurrent.futures import ProcessPoolExecutor

    took = []
    for workers in (1, 2):
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(spin, [1000] * workers))  # start the processes before timing
            started = time.perf_counter()
            list(pool.map(spin, loops))
            took.append(time.perf_counter() - started)
    return took[0] / took[1]


def calibrate(seconds: float) -> int:
    """The loop count of ``burn`` that takes about ``seconds`` here."""
    n = 200_000
    while True:
        started = time.perf_counter()
        acc = 0
        for i in range(n):
            acc = (acc * 31 + i) % 1_000_003
        took = time.perf_counter() - started
        if took > 0.05:
            return int(n * seconds / took)
        n *= 4


def cpu_speedup(home: Home, items: int, seconds: float) -> dict[str, Any]:
    loops = calibrate(seconds)
    fill(home, "cpu", items, lambda i: str(loops + i).encode())
    out: dict[str, Any] = {"items": items, "seconds_per_item": seconds, "loops_per_item": loops}
    for workers in (1, 2):
        say(f"cpu-bound step, {workers} worker(s)")
        warm_up = {"force": True, "params": {"scale": 0.01}}
        r = asyncio.run(timed_run(home, "local", ref("cpu"), "cpu", None, workers, warm_up, force=True))
        assert r["run"]["counts"] == {"succeeded": items}, r["run"]["counts"]
        out[f"workers_{workers}_s"] = round(r["drive_s"], 3)
    out["speedup"] = round(out["workers_1_s"] / out["workers_2_s"], 2)
    out["baseline_process_pool_speedup"] = round(baseline_speedup([loops + i for i in range(items)]), 2)
    out["target_speedup"] = TARGET_SPEEDUP
    out["ok"] = out["speedup"] >= TARGET_SPEEDUP
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10000, help="tiny items for 1. and 2. (default 10000)")
    parser.add_argument("--cpu-items", type=int, default=8, help="items for the CPU-bound step (default 8)")
    parser.add_argument("--cpu-seconds", type=float, default=0.2, help="work per CPU-bound item (default 0.2)")
    parser.add_argument("--home", help="datamill home to use (default: a temporary directory, removed afterwards)")
    parser.add_argument("--only", default="trivial,rerun,cpu", help="which parts to run (default: all)")
    parser.add_argument("--executors", default="inline,local", help="executors for 1. (default: inline,local)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of the local pool against Pool.imap, alternating (default 3)"
    )
    args = parser.parse_args(argv)
    only = set(args.only.split(","))

    temp = None if args.home else tempfile.mkdtemp(prefix="datamill-bench-engine.")
    root = Path(args.home or temp or ".").resolve()
    home = Home(load_settings(environ={}, home=str(root / "home"), database_url="", demo=False))
    result: dict[str, Any] = {
        "benchmark": "engine",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "database": "sqlite",
    }
    try:
        if only & {"trivial", "rerun"}:
            say(f"putting {args.items} items")
            result["setup_put_s"] = round(fill(home, "raw", args.items), 1)
        if "trivial" in only:
            executors = args.executors.split(",")
            result["trivial"] = {ex: trivial_throughput(home, ex, "raw", rounds=args.rounds) for ex in executors}
            if "inline" in executors:
                result["trivial"]["inline_publishing"] = trivial_throughput(home, "inline", "raw", publish=True)
        if "rerun" in only:
            result["rerun"] = rerun(home, "raw")
        if "cpu" in only:
            result["cpu"] = cpu_speedup(home, args.cpu_items, args.cpu_seconds)
    finally:
        home.close()
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
