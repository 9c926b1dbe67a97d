"""A step with a big parameter: what it costs per task, in time and in database, against a tiny one.

    .venv/bin/python benchmarks/params.py [--items 50] [--sizes 1,4] [--executors inline,local] [--home DIR]

Prints ONE JSON object on stdout (progress goes to stderr). Embedded SQLite. A one-step pipeline
(``lookup(item, *, table)``: the item's name and how many entries ``table`` has) runs over tiny
items, its parameter ``table`` a lookup table (a JSON object of short strings) of about 1 MiB and
4 MiB, and, as the baseline in the same run, of a few bytes. Each run is timed end to end
(``submit``: plan, keys and the recorded run; ``drive``: a scheduler runs every task to its
recorded end), with the table new each time (its keys salted) so nothing is cached.

Each size runs twice: over ``--items`` items and over three times as many, each with a new table
of that size. What a task costs is the difference between the two over the ``2 x --items`` tasks
more (``cpu_ms_per_task`` and ``db_bytes_per_task``); what a run costs once, whatever its tasks (the
parameters encoded and hashed for its plan and keys, its own row with the parameters the user gave,
the set stored once), is what is left (``per_run_cpu_ms``, ``per_run_bytes``). Measured directly
too: ``submit_cpu_ms``, the CPU time of the thread that plans and records each run (what a run costs
once, the keys of its tasks included), and ``run_row_bytes``, the bytes of each run's own row. Time is CPU time,
of this process and of the local pool's workers (``/proc/<pid>/stat``): on a shared machine the
wall time of a run of a few dozen tasks mostly measures the other jobs. The wall times are printed
too (``submit_s``, ``drive_s``: the two runs), and ``end_to_end_ms_per_task``: the run over
``--items`` items, wall time over its tasks, once-per-run costs included.

Targets (issue: a big parameter must not cost its size per task): a task with a 1 MiB parameter
costs at most 2 x the CPU of a task with a tiny one (``cpu_ratio``) and adds less than 1 KiB of
database over it (``added_bytes_per_task``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from datamill.config import load_settings
from datamill.engine.engine import Engine
from datamill.engine.scheduler import Scheduler
from datamill.home import Home
from datamill.pipeline import InputFile, Pipeline, step

HERE = Path(__file__).resolve()
TARGET_CPU_RATIO = 2.0  # a task's CPU with a 1 MiB parameter over a task's with a tiny one
TARGET_ADDED_BYTES = 1024  # database bytes a task with a 1 MiB parameter adds over one with a tiny one
LARGE = 3  # the second run of each size is over this many times --items items


@step
def lookup(item: InputFile, *, table: dict = {}) -> str:  # noqa: B006 (a default read, never changed)
    """The item's name and the size of the table: the step reads its parameter."""
    return f"{item.name} {len(table)}"


pipeline = Pipeline("params", steps=[lookup])


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def table(mib: float, salt: str) -> dict[str, str]:
    """A lookup table of about ``mib`` MiB of canonical JSON (entries of ~100 bytes); ``salt`` makes it new."""

    def entry(i: int) -> tuple[str, str]:
        return f"{salt}-{i:07}", f"value {i:07} " + "x" * 36

    size = len(json.dumps(dict([entry(0)]), separators=(",", ":")))  # an entry and its comma
    return dict(entry(i) for i in range(max(1, int(mib * 1024 * 1024 / size))))


def db_bytes(home: Home) -> int:
    """The SQLite database's size once its WAL is written back (what the runs stored)."""
    path = Path(home.settings.resolved_database_url.removeprefix("sqlite:///"))
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
    finally:
        db.close()
    return int(page_size * pages)


def run_row_bytes(home: Home, run_id: int) -> int:
    """Bytes of the values of a run's own row (whatever its columns: the same measure before and after a migration)."""
    path = Path(home.settings.resolved_database_url.removeprefix("sqlite:///"))
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    finally:
        db.close()
    return sum(len(v.encode() if isinstance(v, str) else v) if isinstance(v, (str, bytes)) else 8 for v in row)


def workers_cpu(pids: list[int]) -> float:
    """CPU seconds (user and system) the processes ``pids`` used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


async def one_run(home: Home, executor: str, source: str, params: dict[str, Any], workers: int | None) -> dict:
    """Submit and drive one run over the items of ``source``; seconds of each part, and CPU seconds."""
    engine = Engine(home)
    ref = f"{HERE}:pipeline"
    async with Scheduler(home, executor, workers=workers) as sched:
        inputs = engine.inputs_from_folder(home.admin, source)
        if executor == "local":  # the workers load the pipeline first (not timed; forced: never cached)
            first = await asyncio.to_thread(
                engine.submit,
                home.admin,
                ref,
                inputs[: 8 * (workers or 1)],
                source=source,
                params={"table": {}},
                force=True,
            )
            await sched.run_until_idle([first])
        pids = list(getattr(sched.executor, "pids", []))
        c0, w0, t0 = time.process_time(), workers_cpu(pids), time.perf_counter()

        def submit() -> tuple[int, float]:
            """The run's id and the CPU time its submission took (in its thread: planned and recorded)."""
            start = time.thread_time()
            rid = engine.submit(
                home.admin, ref, inputs, source=source, params=params, executor=executor, scheduler=sched
            )
            return rid, time.thread_time() - start

        run_id, submit_cpu = await asyncio.to_thread(submit)
        t1 = time.perf_counter()
        await sched.run_until_idle([run_id])
        c2, w2, t2 = time.process_time(), workers_cpu(pids), time.perf_counter()
    run = engine.get_run(home.admin, run_id)
    assert run["status"] == "succeeded", run
    return {
        "run_id": run_id,
        "submit_s": t1 - t0,
        "drive_s": t2 - t1,
        "cpu_s": (c2 - c0) + (w2 - w0),
        "submit_cpu_s": submit_cpu,
        "run_row_bytes": run_row_bytes(home, run_id),
        "tasks": sum(run["counts"].values()),
    }


def measure(home: Home, executor: str, mib: float, items: int, tag: str) -> dict[str, Any]:
    """Time and database bytes per task and per run with a table of ``mib`` MiB (see the module docstring)."""
    workers = (os.cpu_count() or 1) if executor == "local" else None
    say(f"{executor}: a {mib} MiB parameter over {items} and {LARGE * items} items")
    before = db_bytes(home)
    small = asyncio.run(one_run(home, executor, "small", {"table": table(mib, f"{tag}-a")}, workers))
    grown_small = db_bytes(home) - before
    before = db_bytes(home)
    large = asyncio.run(one_run(home, executor, "large", {"table": table(mib, f"{tag}-b")}, workers))
    grown_large = db_bytes(home) - before
    more = large["tasks"] - small["tasks"]
    bytes_per_task = (grown_large - grown_small) / more
    small_s = small["submit_s"] + small["drive_s"]
    per_task_cpu = (large["cpu_s"] - small["cpu_s"]) / more
    return {
        "parameter_bytes": len(json.dumps(table(mib, f"{tag}-a"), separators=(",", ":"))),
        "tasks": [small["tasks"], large["tasks"]],
        "submit_s": [round(small["submit_s"], 3), round(large["submit_s"], 3)],
        "drive_s": [round(small["drive_s"], 3), round(large["drive_s"], 3)],
        "cpu_s": [round(small["cpu_s"], 3), round(large["cpu_s"], 3)],
        "cpu_ms_per_task": round(per_task_cpu * 1000, 3),
        "per_run_cpu_ms": round((small["cpu_s"] - per_task_cpu * small["tasks"]) * 1000, 1),
        "end_to_end_ms_per_task": round(small_s / small["tasks"] * 1000, 3),
        "end_to_end_tasks_per_s": round(small["tasks"] / small_s, 1),
        "db_bytes_per_task": round(bytes_per_task),
        "per_run_bytes": round(grown_small - bytes_per_task * small["tasks"]),
        "submit_cpu_ms": [round(small["submit_cpu_s"] * 1000, 1), round(large["submit_cpu_s"] * 1000, 1)],
        "run_row_bytes": [small["run_row_bytes"], large["run_row_bytes"]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=50, help="items per run (default 50)")
    parser.add_argument("--sizes", default="1,4", help="parameter sizes in MiB (default 1,4)")
    parser.add_argument("--executors", default="inline,local", help="executors (default: inline,local)")
    parser.add_argument("--home", help="datamill home to use (default: a temporary directory, removed afterwards)")
    args = parser.parse_args(argv)
    temp = None if args.home else tempfile.mkdtemp(prefix="datamill-bench-params.")
    root = Path(args.home or temp or ".").resolve()
    home = Home(load_settings(environ={}, home=str(root / "home"), database_url="", demo=False))
    result: dict[str, Any] = {"benchmark": "params", "database": "sqlite", "items": args.items}
    ok = True
    try:
        for folder, n in (("small", args.items), ("large", LARGE * args.items)):
            home.store.create_folder(home.admin, folder, exist_ok=True)
            home.store.put_many(home.admin, folder, [(f"i{i:05}.txt", f"item {i}\n".encode()) for i in range(n)])
        stamp = str(time.time_ns())
        for executor in args.executors.split(","):
            tiny = measure(home, executor, 0.0, args.items, f"{stamp}-{executor}-tiny")
            figures: dict[str, Any] = {"load_avg_1m": round(os.getloadavg()[0], 2), "tiny": tiny}
            for size in args.sizes.split(","):
                big = measure(home, executor, float(size), args.items, f"{stamp}-{executor}-{size}")
                big["cpu_ratio"] = round(big["cpu_ms_per_task"] / tiny["cpu_ms_per_task"], 2)
                big["end_to_end_time_ratio"] = round(big["end_to_end_ms_per_task"] / tiny["end_to_end_ms_per_task"], 2)
                big["added_bytes_per_task"] = big["db_bytes_per_task"] - tiny["db_bytes_per_task"]
                if float(size) == 1.0:
                    big["ok"] = (
                        big["cpu_ratio"] <= TARGET_CPU_RATIO and big["added_bytes_per_task"] < TARGET_ADDED_BYTES
                    )
                    ok = ok and big["ok"]
                figures[f"{size}MiB"] = big
            result[executor] = figures
    finally:
        home.close()
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    result["targets"] = {"cpu_ratio": TARGET_CPU_RATIO, "added_bytes_per_task": TARGET_ADDED_BYTES}
    result["ok"] = ok
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
