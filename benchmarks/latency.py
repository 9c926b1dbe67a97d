"""Dataflow latency: how soon after an item lands does its task run, and its result exist?

    .venv/bin/python benchmarks/latency.py [--items 200] [--gap-ms 50] [--executors inline,local]
                                           [--database-url URL | --no-postgres]

Prints ONE JSON object on stdout (progress goes to stderr).

A running dataflow with a one-step pipeline (a per-item step returning a few bytes) watches
``Raw``; the services (scheduler, triggers, notifier) run in this process, as they do inside
``datamill up``. ``--items`` items are put into ``Raw`` one at a time, ``--gap-ms`` apart, so that
each is its own run. From the event log, per item:

* (a) ``item -> task running``: the ``task.started`` event of the item's task minus the input's
  ``item.created`` event;
* (b) ``item -> output``: the output item's ``item.created`` event minus the input's.

p50, p99 and max of each, plus the median of the stages in between (item -> run.queued ->
task.started -> task.finished -> output) and the CPU time this process spent per item (services
and landing together: when it approaches the gap, items queue up behind each other), for each
executor (``inline``, ``local``) on embedded SQLite and on PostgreSQL. PostgreSQL is
``--database-url``, else ``$DATABASE_URL``, else a throw-away server started here with
initdb/pg_ctl as ``tests/conftest.py`` does.
The first ``--warmup`` items of each configuration (pipeline import, worker start) are landed and
waited for but left out of the figures.

Targets (SQLite and PostgreSQL, both executors): (a) p50 <= 20 ms, p99 <= 100 ms; (b) p50 <= 50 ms,
p99 <= 200 ms; the trigger path (the CPU time of the triggers' passes, measured in their thread)
at most 5 ms per item. ``ok`` per target.

Baseline, measured in the same run before each configuration: the same put, the step's body called
on it, and its output put, into folders no dataflow watches (``baseline``: latencies and CPU per
item); ``ratios`` divides the dataflow's figures by it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from datamill.config import load_settings
from datamill.dataflows.dataflow import Dataflows
from datamill.db.models import Event, Folder, Run, Task, Version
from datamill.home import Home
from datamill.services import Services

TARGETS = {"task_running": {"p50": 20.0, "p99": 100.0}, "output": {"p50": 50.0, "p99": 200.0}}
#: "a few milliseconds of CPU per landed item" for the trigger path (its passes' thread CPU)
TRIGGER_CPU_MS = 5.0
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))

PIPELINE_SOURCE = '''
"""One trivial per-item step (written by benchmarks/latency.py)."""
from datamill.pipeline import InputFile, Pipeline, step


@step
def echo(item: InputFile) -> bytes:
    """A few bytes per item."""
    return b"seen " + item.read_bytes()[:16]


pipeline = Pipeline("latency", [echo])
'''


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[k]


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(ms), 1),
        "p99": round(pct(ms, 0.99), 1),
        "max": round(max(ms), 1),
    }


# ------------------------------------------------------------------------------ PostgreSQL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL server in a temporary directory (fsync off, like the test fixtures)."""
    d = Path(tempfile.mkdtemp(prefix="pgbench."))
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg:
        shutil.chown(d, "postgres", "postgres")
    port = _free_port()
    started = False

    def run(cmd: list[str]) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            log = (d / "log").read_text(errors="replace") if (d / "log").exists() else ""
            raise RuntimeError(f"{cmd[len(as_pg)]} failed: {proc.stdout}{proc.stderr}{log}")

    try:
        run(
            [
                *as_pg,
                str(PG_BIN / "initdb"),
                "-D",
                f"{d}/data",
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ]
        )
        started = True
        run(
            [
                *as_pg,
                str(PG_BIN / "pg_ctl"),
                "-D",
                f"{d}/data",
                "-l",
                f"{d}/log",
                "-w",
                "-t",
                "60",
                "-o",
                f"-c listen_addresses=127.0.0.1 -p {port} -k {d} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off",
                "start",
            ]
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run(
                [*as_pg, str(PG_BIN / "pg_ctl"), "-D", f"{d}/data", "-m", "immediate", "-w", "stop"],
                capture_output=True,
            )
        shutil.rmtree(d, ignore_errors=True)


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on ``server_url``'s server, dropped afterwards."""
    import psycopg
    from psycopg import sql

    from datamill.db.database import normalize_url

    libpq = normalize_url(server_url).replace("postgresql+psycopg://", "postgresql://", 1)
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, _ = libpq.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# ------------------------------------------------------------------------------ one configuration


class TriggerClock:
    """CPU time (of the worker thread) spent in the triggers' passes: the trigger path alone."""

    def __init__(self, services: Services) -> None:
        self.seconds = 0.0
        self.passes = 0
        #: how often the scheduler planned a run itself (0 when the trigger handed each over with its plan)
        self.stats = services.scheduler.stats
        triggers = services.triggers
        inner = triggers._pass

        def timed() -> tuple[int, list[int], float | None]:
            t0 = time.thread_time()
            try:
                return inner()
            finally:
                self.seconds += time.thread_time() - t0
                self.passes += 1

        triggers._pass = timed  # type: ignore[method-assign]


async def land_and_wait(home: Home, executor: str, n: int, gap: float, warmup: int) -> TriggerClock:
    services = Services(home, executor=executor)
    clock = TriggerClock(services)
    await services.start()
    try:
        admin = home.admin
        for i in range(warmup + n):
            data = f"item {i}\n".encode()
            await asyncio.to_thread(home.store.put, admin, "Raw", f"i{i:05d}.txt", data, "text/plain")
            if i + 1 == warmup:  # let the warm-up finish before measuring
                await wait_outputs(home, warmup, 60.0)
            await asyncio.sleep(gap)
        await wait_outputs(home, warmup + n, 120.0)
    finally:
        await services.stop()
    return clock


async def wait_outputs(home: Home, n: int, timeout: float) -> None:
    """Until ``n`` outputs exist and no run is left, woken by the event log (not a polling loop of ours)."""
    deadline = time.monotonic() + timeout

    def count() -> tuple[int, int, int]:
        with home.db.read() as conn:
            seq = conn.execute(select(func.coalesce(func.max(Event.seq), 0))).scalar_one()
            out = conn.execute(select(Folder.id).where(Folder.path == "Out")).scalar_one()
            made = conn.execute(
                select(func.count()).where(Event.kind == "item.created", Event.folder_id == out)
            ).scalar_one()
            busy = conn.execute(select(func.count()).where(Run.status.in_(["queued", "running"]))).scalar_one()
        return int(seq), int(made), int(busy)

    while True:
        seq, made, busy = await asyncio.to_thread(count)
        if made >= n and not busy:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {made} of {n} outputs, {busy} runs not ended")
        await asyncio.to_thread(home.events.wait, seq, 1.0)


def baseline(home: Home, n: int, gap: float) -> dict[str, Any]:
    """The floor, in the same run: the same put, the step's function called on it, its output put.

    No dataflow watches the folder; what a dataflow adds on top of this is the trigger, the
    scheduler and the recording. Latency: item put -> function returned -> output put.
    """
    admin = home.admin
    home.store.create_folder(admin, "BaseIn")
    home.store.create_folder(admin, "BaseOut")
    called: list[float] = []
    done: list[float] = []
    cpu0 = time.process_time()
    for i in range(n):
        data = f"item {i}\n".encode()
        t0 = time.perf_counter()
        home.store.put(admin, "BaseIn", f"b{i:05d}.txt", data, "text/plain")
        out = b"seen " + data[:16]  # the step's body
        called.append((time.perf_counter() - t0) * 1000)
        home.store.put(admin, "BaseOut", f"b{i:05d}.txt", out, "application/octet-stream")
        done.append((time.perf_counter() - t0) * 1000)
        time.sleep(gap)
    cpu = time.process_time() - cpu0
    return {
        "items": n,
        "put_and_call_ms": summary(called),
        "put_call_put_ms": summary(done),
        "cpu_ms_per_item": round(cpu / n * 1000, 2),
    }


def measure(home: Home, warmup: int) -> dict[str, Any]:
    """Per-item latencies from the event log and the tables."""
    with home.db.read() as conn:
        raw = conn.execute(select(Folder.id).where(Folder.path == "Raw")).scalar_one()
        out = conn.execute(select(Folder.id).where(Folder.path == "Out")).scalar_one()
        created = {
            r.item_id: r.ts
            for r in conn.execute(
                select(Event.item_id, Event.ts).where(Event.kind == "item.created", Event.folder_id.in_([raw, out]))
            )
        }
        inputs = conn.execute(
            select(Version.id, Version.item_id)
            .join(Event, Event.item_id == Version.item_id)
            .where(Event.kind == "item.created", Event.folder_id == raw)
            .order_by(Version.id)
        ).all()
        tasks = conn.execute(select(Task.id, Task.run_id, Task.item_version_id).order_by(Task.id)).all()
        first_task: dict[int, Any] = {}
        for t in tasks:
            first_task.setdefault(t.item_version_id, t)
        ts: dict[tuple[str, int], float] = {}
        for e in conn.execute(
            select(Event.kind, Event.task_id, Event.run_id, Event.ts)
            .where(Event.kind.in_(["task.started", "task.finished", "run.queued"]))
            .order_by(Event.seq)
        ):
            key = (e.kind, e.task_id if e.kind.startswith("task.") else e.run_id)
            ts.setdefault(key, e.ts)
        output_item = {
            r.task_id: r.item_id
            for r in conn.execute(select(Version.task_id, Version.item_id).where(Version.task_id.is_not(None)))
        }
        runs = conn.execute(select(Run.id)).all()
    running: list[float] = []
    done: list[float] = []
    stages: dict[str, list[float]] = {
        "item_to_run_queued": [],
        "run_queued_to_task_started": [],
        "task_started_to_finished": [],
        "task_finished_to_output": [],
    }
    for vid, item_id in inputs[warmup:]:
        t = first_task[vid]
        t0 = created[item_id]
        started = ts[("task.started", t.id)]
        output = created[output_item[t.id]]
        queued = ts[("run.queued", t.run_id)]
        finished = ts[("task.finished", t.id)]
        running.append((started - t0) * 1000)
        done.append((output - t0) * 1000)
        stages["item_to_run_queued"].append((queued - t0) * 1000)
        stages["run_queued_to_task_started"].append((started - queued) * 1000)
        stages["task_started_to_finished"].append((finished - started) * 1000)
        stages["task_finished_to_output"].append((output - finished) * 1000)
    return {
        "items": len(running),
        "runs": len(runs),
        "task_running_ms": summary(running),
        "output_ms": summary(done),
        "stage_p50_ms": {k: round(statistics.median(v), 1) for k, v in stages.items()},
    }


def one(database_url: str | None, executor: str, n: int, gap: float, warmup: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="latency."))
    try:
        module = work / "latency_pipeline.py"
        module.write_text(PIPELINE_SOURCE)
        overrides: dict[str, Any] = {"home": str(work / "home"), "demo": False, "executor": executor}
        if database_url:
            overrides["database_url"] = database_url
        home = Home(load_settings(**overrides))
        try:
            admin = home.admin
            home.store.create_folder(admin, "Raw")
            home.store.create_folder(admin, "Out")
            flows = Dataflows(home.db)
            flows.create(admin, "latency", {"source": "Raw", "destination": "Out", "pipeline": f"{module}:pipeline"})
            flows.set_state(admin, "latency", "running")
            base = baseline(home, min(n, 100), gap)
            t0 = time.perf_counter()
            cpu0 = time.process_time()
            clock = asyncio.run(land_and_wait(home, executor, n, gap, warmup))
            cpu = time.process_time() - cpu0
            result = measure(home, warmup)
            result["seconds"] = round(time.perf_counter() - t0, 1)
            # CPU of this process (services and the landing) per item: above the gap, it cannot keep up.
            result["cpu_ms_per_item"] = round(cpu / (n + warmup) * 1000, 1)
            # The trigger path alone (its passes' thread CPU): the target is a few ms per item.
            result["trigger_cpu_ms_per_item"] = round(clock.seconds / (n + warmup) * 1000, 2)
            result["trigger_passes_per_item"] = round(clock.passes / (n + warmup), 1)
            result["scheduler_plans_per_run"] = round(clock.stats["plans"] / max(1, result["runs"]), 2)
            result["baseline"] = base
            result["ratios"] = {
                "cpu_per_item_vs_baseline": round(result["cpu_ms_per_item"] / max(base["cpu_ms_per_item"], 1e-3), 1),
                # the trigger path against the floor's own CPU (two puts and a call): how many "puts" it costs
                "trigger_cpu_vs_baseline": round(
                    result["trigger_cpu_ms_per_item"] / max(base["cpu_ms_per_item"], 1e-3), 2
                ),
                "task_running_p50_vs_put_and_call": round(
                    result["task_running_ms"]["p50"] / max(base["put_and_call_ms"]["p50"], 1e-3), 1
                ),
                "output_p50_vs_put_call_put": round(
                    result["output_ms"]["p50"] / max(base["put_call_put_ms"]["p50"], 1e-3), 1
                ),
            }
            result["load_average"] = [round(x, 2) for x in os.getloadavg()]
            return result
        finally:
            home.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check(result: dict[str, Any]) -> dict[str, bool]:
    ok = {
        f"{what}_{q}": result[f"{what}_ms"][q] <= limit
        for what, limits in TARGETS.items()
        for q, limit in limits.items()
    }
    ok["trigger_cpu_ms_per_item"] = result["trigger_cpu_ms_per_item"] <= TRIGGER_CPU_MS
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--gap-ms", type=float, default=50.0, help="pause between two items")
    ap.add_argument("--warmup", type=int, default=5, help="items landed first and left out of the figures")
    ap.add_argument("--executors", default="inline,local")
    ap.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", ""),
        help="PostgreSQL server to use (a fresh database is made on it) [default: $DATABASE_URL, "
        "else a throw-away server]",
    )
    ap.add_argument("--no-postgres", action="store_true", help="SQLite only")
    ap.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    args = ap.parse_args()
    executors = [e.strip() for e in args.executors.split(",") if e.strip()]
    gap = args.gap_ms / 1000
    report: dict[str, Any] = {
        "benchmark": "dataflow latency",
        "items": args.items,
        "gap_ms": args.gap_ms,
        "warmup": args.warmup,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "targets": {**TARGETS, "trigger_cpu_ms_per_item": TRIGGER_CPU_MS},
        "sqlite": {},
        "postgres": {},
    }
    for ex in [] if args.no_sqlite else executors:
        say(f"sqlite / {ex} ...")
        res = one(None, ex, args.items, gap, args.warmup)
        res["ok"] = check(res)
        report["sqlite"][ex] = res
        say(json.dumps(res))
    if not args.no_postgres:
        with nullcontext(args.database_url) if args.database_url else throwaway_postgres() as srv:
            for ex in executors:
                say(f"postgres / {ex} ...")
                with fresh_database(srv) as url:
                    res = one(url, ex, args.items, gap, args.warmup)
                res["ok"] = check(res)
                report["postgres"][ex] = res
                say(json.dumps(res))
    report["ok"] = all(all(r["ok"].values()) for db in ("sqlite", "postgres") for r in report[db].values())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
