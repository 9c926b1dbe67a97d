"""Idle server: how much CPU do the services use with a running dataflow and nothing landing?

    .venv/bin/python benchmarks/idle.py [--seconds 60] [--executors inline,local]
                                        [--database-url URL | --no-postgres] [--no-sqlite]

Prints ONE JSON object on stdout (progress goes to stderr).

What ``datamill up`` runs in the background (scheduler, triggers, notifier, directory watchers,
stream consumers, the node heartbeat: :class:`datamill.services.Services`) is started in this
process with a running dataflow watching ``Raw``. One item is landed and its output awaited (the
pipeline is imported, the local pool's workers are started), then nothing happens for
``--seconds``: the CPU time of this process and of its child processes (the local pool's fork
server and workers, read from ``/proc``) over that time is the idle cost. Also counted: the SQL
statements the services executed, the commits, and the threads alive at the end.

Target: < 1 % of one core (``cpu_percent_of_one_core``), per database and executor; ``ok`` per
configuration. Baseline in the same run: the same process sleeping for a tenth of ``--seconds``
with nothing started (``baseline_cpu_percent``: what an idle Python interpreter costs here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import func, select

from datamill.config import load_settings
from datamill.dataflows.dataflow import Dataflows
from datamill.db.models import Event, Folder
from datamill.home import Home
from datamill.services import Services

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import PIPELINE_SOURCE, fresh_database, throwaway_postgres

TARGET_PERCENT = 1.0
_TICKS = os.sysconf("SC_CLK_TCK")


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (children, their children, ...), read from ``/proc``."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` (those still alive)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / _TICKS


async def wait_outputs(home: Home, n: int, timeout: float) -> None:
    """Until ``n`` outputs exist in ``Out`` (woken by the event log)."""
    deadline = time.monotonic() + timeout

    def count() -> tuple[int, int]:
        with home.db.read() as conn:
            seq = conn.execute(select(func.coalesce(func.max(Event.seq), 0))).scalar_one()
            out = conn.execute(select(Folder.id).where(Folder.path == "Out")).scalar_one()
            made = conn.execute(
                select(func.count()).where(Event.kind == "item.created", Event.folder_id == out)
            ).scalar_one()
        return int(seq), int(made)

    while True:
        seq, made = await asyncio.to_thread(count)
        if made >= n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {made} of {n} outputs")
        await asyncio.to_thread(home.events.wait, seq, 1.0)


async def idle_services(home: Home, executor: str, seconds: float) -> dict[str, Any]:
    services = Services(home, executor=executor)
    await services.start()
    statements = [0]
    commits = [0]

    def count(*_args: Any) -> None:
        statements[0] += 1

    def commit(*_args: Any) -> None:
        commits[0] += 1

    engines = list({id(e): e for e in (home.db.engine, home.db.write_engine)}.values())
    try:
        await asyncio.to_thread(home.store.put, home.admin, "Raw", "first.txt", b"one item\n", "text/plain")
        await wait_outputs(home, 1, 120.0)
        await asyncio.sleep(2.0)  # let the run's end and its notifications settle
        for e in engines:
            sa_event.listen(e, "before_cursor_execute", count)
            sa_event.listen(e, "commit", commit)
        me = os.getpid()
        pids = [me, *descendants(me)]
        c0, t0, k0 = cpu_seconds(pids), time.monotonic(), cpu_seconds(pids[1:])
        await asyncio.sleep(seconds)
        c1, t1, k1 = cpu_seconds(pids), time.monotonic(), cpu_seconds(pids[1:])
        for e in engines:
            sa_event.remove(e, "before_cursor_execute", count)
            sa_event.remove(e, "commit", commit)
        import threading

        threads = threading.active_count()
    finally:
        await services.stop()
    took = t1 - t0
    return {
        "seconds": round(took, 1),
        "processes": len(pids),
        "cpu_s": round(c1 - c0, 3),
        "child_processes_cpu_s": round(k1 - k0, 3),
        "cpu_percent_of_one_core": round((c1 - c0) / took * 100, 3),
        "statements": statements[0],
        "statements_per_s": round(statements[0] / took, 2),
        "commits": commits[0],
        "threads": threads,
    }


def baseline(seconds: float) -> float:
    """CPU percent of this process sleeping, nothing started: the interpreter's own floor here."""
    me = os.getpid()
    c0, t0 = cpu_seconds([me]), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds([me]) - c0) / (time.monotonic() - t0) * 100


def one(database_url: str | None, executor: str, seconds: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="idle."))
    try:
        module = work / "idle_pipeline.py"
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
            flows.create(admin, "idle", {"source": "Raw", "destination": "Out", "pipeline": f"{module}:pipeline"})
            flows.set_state(admin, "idle", "running")
            base = baseline(max(1.0, seconds / 10))
            result = asyncio.run(idle_services(home, executor, seconds))
            result["baseline_cpu_percent"] = round(base, 3)
            result["load_average"] = [round(x, 2) for x in os.getloadavg()]
            result["target_percent"] = TARGET_PERCENT
            result["ok"] = result["cpu_percent_of_one_core"] < TARGET_PERCENT
            return result
        finally:
            home.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to stay idle per configuration")
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
    report: dict[str, Any] = {
        "benchmark": "idle server",
        "seconds": args.seconds,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "target_percent_of_one_core": TARGET_PERCENT,
        "sqlite": {},
        "postgres": {},
    }
    for ex in [] if args.no_sqlite else executors:
        say(f"sqlite / {ex} ...")
        report["sqlite"][ex] = res = one(None, ex, args.seconds)
        say(json.dumps(res))
    if not args.no_postgres:
        with nullcontext(args.database_url) if args.database_url else throwaway_postgres() as srv:
            for ex in executors:
                say(f"postgres / {ex} ...")
                with fresh_database(srv) as url:
                    report["postgres"][ex] = res = one(url, ex, args.seconds)
                say(json.dumps(res))
    report["ok"] = all(r["ok"] for db in ("sqlite", "postgres") for r in report[db].values())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
