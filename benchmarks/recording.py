"""The database thread alone: a scheduler's group commits of trivial tasks, without the tasks.

``Recorder.commit`` is called as the local pool's driver calls it, over a recorded run of the
``trivial`` pipeline of ``engine.py`` (``--items`` tasks): each group commit records the ends of the
previous batch (succeeded, one small inline output, as a trivial task's) and claims the next
``--batch`` tasks (with their items looked for), in one transaction. No event loop, no executor:
``cpu_us_per_task`` is this thread's CPU (``time.thread_time``) in those calls per task, for
``--runs`` runs one after the other in the same home (the tables grow as in a home that keeps its
history), so a cost that grows with the tables shows as a rising ``runs_cpu_us_per_task``.
``statements_us_per_task`` splits it by SQL statement (and ``COMMIT``), for the last run.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

from datamill.config import load_settings
from datamill.engine.ends import Done
from datamill.engine.engine import Engine
from datamill.engine.recording import Claim, RunView
from datamill.engine.scheduler import Scheduler, freeze_long_lived
from datamill.engine.tasks import OutputRecord, TaskRow, TaskStatus
from datamill.home import Home
from datamill.store.blobs.base import digest_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent))
# engine.py's trivial pipeline and items, imported as the module beside this one
import engine as bench


def _statement(sql: str) -> str:
    """A statement's kind: its text without the marks of its lists, cut short."""
    return re.sub(r"\((\?, )*\?\)(, \((\?, )*\?\))*", "(...)", sql)[:100]


class Meter:
    """This thread's CPU in each kind of statement (and ``COMMIT``) while :attr:`on`."""

    def __init__(self) -> None:
        self.on = False
        self.stats: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
        self._at = 0.0

    def before(self, *_args: Any) -> None:
        self._at = time.thread_time()

    def after(self, _conn: Any, _cursor: Any, sql: str, *_rest: Any) -> None:
        self.add(_statement(sql), time.thread_time() - self._at)

    def add(self, kind: str, seconds: float) -> None:
        if self.on:
            s = self.stats[kind]
            s[0] += 1
            s[1] += seconds


def drive(home: Home, sched: Scheduler, salt: str, batch: int, meter: Meter) -> float:
    """Record one run of trivial tasks through group commits; this thread's CPU seconds in them."""
    engine = Engine(home)
    inputs = engine.inputs_from_folder(home.admin, "raw")
    run_id = engine.submit(
        home.admin, bench.ref("trivial"), inputs, source="raw", executor="local", params={"salt": salt}
    )
    row, the_plan, actor, by_id = sched._load_run(run_id)
    assert the_plan is not None
    run = RunView(row, the_plan, actor, by_id)
    planned = {p.id: p for p in the_plan.tasks}
    order = list(by_id.values())
    gc.collect()
    cpu = 0.0
    previous: list[TaskRow] = []
    final = None
    for at in [*range(0, len(order), batch), len(order)]:
        claiming = order[at : at + batch]
        done = []
        for t in previous:
            data = str(t.item_name).encode()
            out = OutputRecord("return.txt", digest_bytes(data), len(data), "text/plain", "text", data)
            done.append(Done(t, planned[t.planned_id], TaskStatus.SUCCEEDED, [out], key=t.key))
        items = [d for t in claiming if (item := planned[t.planned_id].item) is not None for d in [item.digest]]
        claim = Claim([t.id for t in claiming], sched.owner, 30.0, "local", items) if claiming else None
        started = time.thread_time()
        meter.on = True
        got = sched.recorder.commit(run, done, claim)
        meter.on = False
        cpu += time.thread_time() - started
        assert claim is None or got.claimed == set(claim.ids)
        for t in claiming:
            t.status = TaskStatus.RUNNING
        previous, final = claiming, got.final
    assert final is not None and str(final) == "succeeded", final
    return cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=4000, help="tasks a run (default 4000)")
    parser.add_argument("--batch", type=int, default=250, help="tasks claimed a group commit (default 250)")
    parser.add_argument("--runs", type=int, default=5, help="runs one after the other (default 5)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="datamill-bench-recording."))
    home = Home(load_settings(environ={}, home=str(root / "home"), database_url="", demo=False))
    meter = Meter()
    try:
        bench.fill(home, "raw", args.items)
        sched = Scheduler(home, "inline")
        freeze_long_lived()  # as the first scheduler of a process does when it starts
        event.listen(home.db.write_engine, "before_cursor_execute", meter.before)
        event.listen(home.db.write_engine, "after_cursor_execute", meter.after)
        dialect = home.db.write_engine.dialect
        plain_commit = dialect.do_commit

        def timed_commit(dbapi_conn: Any) -> None:
            started = time.thread_time()
            plain_commit(dbapi_conn)
            meter.add("COMMIT", time.thread_time() - started)

        dialect.do_commit = timed_commit  # type: ignore[method-assign,assignment]
        per_run = []
        for i in range(args.runs):
            meter.stats.clear()
            per_run.append(drive(home, sched, f"run-{i}", args.batch, meter) / args.items * 1e6)
            print(f"run {i}: {per_run[-1]:.1f} µs a task", file=sys.stderr, flush=True)
        slowest = sorted(meter.stats.items(), key=lambda kv: -kv[1][1])
        statements = {k: round(t / args.items * 1e6, 2) for k, (_n, t) in slowest}
        result = {
            "benchmark": "recording",
            "database": "sqlite",
            "tasks_a_run": args.items,
            "batch": args.batch,
            "runs_cpu_us_per_task": [round(x, 1) for x in per_run],
            "cpu_us_per_task": round(statistics.median(per_run), 1),
            "statements_us_per_task": statements,
            "statements_total_us_per_task": round(sum(statements.values()), 1),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        home.close()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
