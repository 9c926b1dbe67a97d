"""The floor and the ceiling of the local pool's recorded trivial tasks, against a bare ``Pool.imap``, in one run.

Issue 13's target: recorded trivial tasks on the 2-worker local pool at ≥ 0.25 x a bare
``multiprocessing.Pool(2).imap(fn, names, chunksize=1)`` of the same function, in the same run. ``engine.py``
measures datamill against that baseline; this script says where the gap is, by measuring in the same rounds,
interleaved:

* ``datamill``: ``engine.py``'s trivial pipeline over the same items on the local pool, recorded (as
  ``engine.py`` drives it: submitted, then driven; the figure is the drive).
* ``unrecorded``: the same drive by a scheduler whose group commit writes nothing: its
  ``Recorder.commit`` is replaced by :func:`unrecorded_commit`, which claims every task asked for and ends
  every task in the driver's memory only. Everything else is datamill's (planning, the event loop, the
  attempts, the pool, its wire and workers). A **ceiling**: what any recorder design (a process of its own,
  another database, ...) could reach with this loop and pool, since recording then costs nothing at all.
  Measured on a home of its own, whose runs are ended after each drive.
* ``floor``: no datamill code. The same function on a bare ``Pool(workers).imap(chunksize=1)``, each call
  recorded as a recorded task must be, in plain ``sqlite3`` (WAL, ``synchronous=NORMAL``, as datamill's
  SQLite): before its batch is sent, its claim (its task row set running under a lease, a ``task.started``
  event); after, its end (its row set succeeded, its output's row with the value's BLAKE3 digest, a
  ``task.finished`` event with the same JSON datamill writes). One transaction per batch of ``BATCH``
  (the ends of one batch with the claims of the next), on a committing thread while the next batch runs,
  as datamill's group commit; one statement per kind of row for a batch, its rows made by SQLite.
  Tables and indexes as datamill's (``tasks``, ``events``, ``task_outputs``).
  No plan, key, cache, lease renewal, log capture, retries or cancellation: the least work of a design
  that records each task and hands each call over as the baseline does.
* ``floor_chunked``: the same, with each batch's calls handed over in chunks (``imap``'s ``chunksize`` a
  quarter of a batch's share per worker), as datamill's pool hands them over: the **least work** of any
  design that records each task.
* ``imap``: the baseline, bare.

Prints one JSON object: per round each rate and its ratio to that round's imap, the medians, and
``ok`` (datamill's median ratio ≥ 0.25) beside ``ceiling_ok``, ``floor_ok`` and ``floor_chunked_ok``
(the same test for the others): where ``floor_chunked_ok`` is false the target is out of reach of any
design on this machine at that moment; where ``ceiling_ok`` is false it is out of reach of any recorder
with datamill's loop and pool.

    python benchmarks/pool_floor.py [--items 4000] [--rounds 5] [--workers 2]
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
import types
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

TARGET_RATIO = 0.25
#: what is measured against ``Pool.imap`` in each round, in this order
_MEASURES = ("datamill", "unrecorded", "floor", "floor_chunked")
#: Tasks a group commit ends (and claims) at once: the half of datamill's in-flight tasks it commits.
BATCH = 256

_SCHEMA = """
CREATE TABLE tasks (id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL, planned_id TEXT NOT NULL, step TEXT NOT NULL,
    step_code TEXT NOT NULL, key TEXT, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    started_at REAL, finished_at REAL, lease_owner TEXT, lease_expires REAL, executor TEXT);
CREATE INDEX ix_tasks_run_status ON tasks (run_id, status);
CREATE INDEX ix_tasks_step_code ON tasks (step, step_code);
CREATE INDEX ix_tasks_key ON tasks (key);
CREATE TABLE events (seq INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, run_id INTEGER,
    task_id INTEGER, data TEXT NOT NULL);
CREATE INDEX ix_events_kind ON events (kind);
CREATE INDEX ix_events_run ON events (run_id);
CREATE TABLE task_outputs (task_id INTEGER NOT NULL, name TEXT NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL,
    inline BLOB);
CREATE INDEX ix_task_outputs_task_id ON task_outputs (task_id);
"""


def plain_tiny(name: str) -> str:
    """What ``engine.py``'s ``tiny`` step does, as a plain function of the item's name."""
    return name


class FloorRecorder:
    """The least a recorder of pool tasks writes, in plain ``sqlite3``: claims and ends in group commits.

    Every task is claimed once (queued → running, a ``task.started`` event) before it is sent and ended
    once (running → succeeded, its output, a ``task.finished`` event) after its value came back; a
    transaction ends one batch and claims the next, on one committing thread.
    """

    def __init__(self, path: Path, run_id: int = 1) -> None:
        self.path = path
        self.run_id = run_id
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        if not self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'tasks'").fetchone():
            self.conn.executescript(_SCHEMA)
        self.committing = ThreadPoolExecutor(1, thread_name_prefix="floor-commit")

    def queue(self, names: list[str]) -> list[int]:
        """Record a run's tasks, one per name, queued; their ids."""
        with self.transaction() as c:
            first = c.execute("SELECT coalesce(max(id), 0) + 1 FROM tasks").fetchone()[0]
            c.executemany(
                "INSERT INTO tasks (id, run_id, planned_id, step, step_code, status) "
                "VALUES (?, ?, ?, 'tiny', 'c', 'queued')",
                [(first + i, self.run_id, f"tiny/{n}") for i, n in enumerate(names)],
            )
        return list(range(first, first + len(names)))

    def transaction(self) -> Any:
        """A write transaction on the connection (``BEGIN IMMEDIATE`` ... ``COMMIT``, or rolled back)."""
        conn = self.conn

        class _Tx:
            def __enter__(self) -> sqlite3.Connection:
                conn.execute("BEGIN IMMEDIATE")
                return conn

            def __exit__(self, kind: Any, *rest: Any) -> None:
                conn.execute("ROLLBACK" if kind else "COMMIT")

        return _Tx()

    def commit(self, ends: list[tuple[int, str]], claims: list[int], owner: str = "floor") -> list[int]:
        """End ``ends`` (task id, value) and claim ``claims`` in one transaction; the ids claimed.

        A statement per kind of row for the whole batch, the rows made by SQLite from an id list or
        one JSON array (no statement step per row): the least Python per task."""
        now = time.time()
        with self.transaction() as c:
            if ends:
                ids = [t for t, _ in ends]
                marks = ",".join("?" * len(ids))
                done = c.execute(
                    "UPDATE tasks SET status = 'succeeded', finished_at = ?, lease_owner = NULL, lease_expires = NULL "
                    f"WHERE id IN ({marks}) AND status = 'running'",
                    (now, *ids),
                ).rowcount
                if done != len(ids):
                    raise RuntimeError(f"{len(ids) - done} of {len(ids)} ends were not running")
                rows = [[t, blake3.blake3(v.encode()).hexdigest(), len(v), v] for t, v in ends]
                c.execute(
                    "INSERT INTO task_outputs (task_id, name, digest, size, inline) SELECT j.value ->> 0, 'tiny', "
                    "j.value ->> 1, j.value ->> 2, CAST(j.value ->> 3 AS BLOB) FROM json_each(?) AS j",
                    (json.dumps(rows),),
                )
                c.execute(
                    "INSERT INTO events (ts, kind, run_id, task_id, data) SELECT ?, 'task.finished', ?, o.task_id, "
                    "json_object('status', 'succeeded', 'error', NULL, 'outputs', json_array(json_object('name', "
                    "o.name, 'digest', o.digest, 'size', o.size)), 'cached_from', NULL) "
                    f"FROM task_outputs AS o WHERE o.task_id IN ({marks}) ORDER BY o.task_id",
                    (now, self.run_id, *ids),
                )
            claimed: list[int] = []
            if claims:
                marks = ",".join("?" * len(claims))
                c.execute(
                    "UPDATE tasks SET status = 'running', attempts = attempts + 1, started_at = ?, lease_owner = ?, "
                    f"lease_expires = ?, executor = 'local' WHERE id IN ({marks}) AND status = 'queued'",
                    (now, owner, now + 60, *claims),
                )
                added = c.execute(
                    "INSERT INTO events (ts, kind, run_id, task_id, data) SELECT ?, 'task.started', run_id, id, "
                    "json_object('attempt', attempts, 'step', step, 'executor', 'local', 'owner', ?) FROM tasks "
                    f"WHERE id IN ({marks}) AND status = 'running' AND lease_owner = ? AND started_at = ? ORDER BY id",
                    (now, owner, *claims, owner, now),
                ).rowcount
                if added != len(claims):
                    raise RuntimeError(f"{len(claims) - added} of {len(claims)} claims were not queued")
                claimed = claims
        return claimed

    def drive(self, imap: Callable[[list[str]], Iterable[str]], names: list[str]) -> int:
        """Run ``names`` as recorded tasks: each batch's calls through ``imap`` while the commit that
        ends the batch before it and claims the next is in flight; the number of tasks ended."""
        ids = self.queue(names)
        by_id = dict(zip(ids, names, strict=True))
        batches = [ids[i : i + BATCH] for i in range(0, len(ids), BATCH)]
        running = self.commit([], batches[0])
        ends: list[tuple[int, str]] = []
        ended = 0
        for k in range(len(batches)):
            following = batches[k + 1] if k + 1 < len(batches) else []
            # In flight while this batch runs: the last batch's ends, the next batch's claims.
            pending = self.committing.submit(self.commit, ends, following)
            ended += len(ends)
            ends = list(zip(running, imap([by_id[t] for t in running]), strict=True))
            running = pending.result()
        self.commit(ends, [])
        return ended + len(ends)

    def close(self) -> None:
        """Stop the committing thread and close the connection."""
        self.committing.shutdown()
        self.conn.close()


def unrecorded_commit(
    self: Any, run: Any, done: list[Any], claim: Any = None, answered: list[Any] | None = None
) -> Any:
    """A ``Recorder.commit`` that writes nothing: every task asked for is claimed, and every end is
    applied to the driver's memory only (as ``Recorder._end_tasks`` applies it after writing)."""
    from datamill.engine.recording import Committed
    from datamill.records import RunStatus

    got = Committed()
    for d in done + (answered or []):
        t = d.task
        t.status, t.outputs, t.error, t.note = d.status, list(d.outputs), d.error, d.note
    if (done or answered) and next(run.unfinished(), None) is None:
        got.final = RunStatus.SUCCEEDED
        got.released = claim is not None
    elif claim is not None and claim.ids:
        got.claimed = set(claim.ids)
        run.started = True
    self.workdirs.remove_attempts([d.work_base for d in done if d.work_base is not None])
    return got


def _median(values: list[float]) -> float:
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


async def _rounds(root: Path, items: int, rounds: int, workers: int) -> list[dict[str, Any]]:
    """``rounds`` rounds of the four measures, interleaved, on schedulers and pools started once."""
    import multiprocessing

    import engine as bench  # benchmarks/engine.py: its pipeline, items and timed drive
    from datamill.config import load_settings
    from datamill.engine.engine import Engine
    from datamill.engine.scheduler import Scheduler
    from datamill.home import Home

    homes = [
        Home(load_settings(environ={}, home=str(root / name), database_url="", demo=False))
        for name in ("recorded", "unrecorded")
    ]
    for home in homes:
        bench.fill(home, "src", items)
    names = [f"i{i:05}.txt" for i in range(items)]
    out: list[dict[str, Any]] = []
    engines = [Engine(home) for home in homes]
    async with (
        Scheduler(homes[0], "local", workers=workers) as recorded,
        Scheduler(homes[1], "local", workers=workers) as unrecorded,
    ):
        unrecorded.recorder.commit = types.MethodType(unrecorded_commit, unrecorded.recorder)  # type: ignore[method-assign]
        for engine, sched in zip(engines, (recorded, unrecorded), strict=True):
            await bench.warm_run(
                engine, sched, bench.ref("trivial"), "src", {"items": 8 * workers, "params": {"salt": "warm"}}
            )
        floor = FloorRecorder(root / "floor.sqlite", run_id=0)
        with multiprocessing.get_context("forkserver").Pool(workers) as pool:
            list(pool.imap(bench.plain_tiny, names[:100]))  # the processes started before timing

            def imap(batch: list[str]) -> Iterable[str]:
                return pool.imap(bench.plain_tiny, batch, chunksize=1)

            def imap_chunked(batch: list[str]) -> Iterable[str]:
                return pool.imap(bench.plain_tiny, batch, chunksize=max(1, len(batch) // (4 * workers)))

            for r in range(rounds):
                bench.say(f"round {r + 1}/{rounds}: datamill, unrecorded, floors, imap")
                load = os.getloadavg()[0]
                got: dict[str, Any] = {"round": r + 1, "load_avg_1m": round(load, 2)}
                for name, engine, sched in (("datamill", engines[0], recorded), ("unrecorded", engines[1], unrecorded)):
                    d = await bench.timed_drive(
                        engine, sched, "local", bench.ref("trivial"), "src", None, params={"salt": f"r{r}"}
                    )
                    if name == "datamill":
                        counts = d["run"]["counts"]
                        assert d["run"]["status"] == "succeeded" and counts == {"succeeded": items}, counts
                    else:
                        # Nothing of it was recorded: ended here, so that no scheduler takes it up again.
                        with engine.home.db.write() as conn:
                            conn.exec_driver_sql(
                                "UPDATE tasks SET status = 'cancelled' WHERE run_id = ?", (d["run"]["id"],)
                            )
                            conn.exec_driver_sql("UPDATE runs SET status = 'cancelled' WHERE id = ?", (d["run"]["id"],))
                    got[f"{name}_tasks_per_s"] = round(items / d["drive_s"])
                    got[f"{name}_parent_cpu_us_per_task"] = round(d["drive_cpu_s"] / items * 1e6, 1)
                for name, handover in (("floor", imap), ("floor_chunked", imap_chunked)):
                    floor.run_id += 1
                    c0, t0 = time.process_time(), time.perf_counter()
                    ended = floor.drive(handover, names)
                    took, cpu = time.perf_counter() - t0, time.process_time() - c0
                    assert ended == items, ended
                    got[f"{name}_tasks_per_s"] = round(items / took)
                    got[f"{name}_parent_cpu_us_per_task"] = round(cpu / items * 1e6, 1)
                got["imap_calls_per_s"] = round(bench.imap_round(pool, names, 1)["calls_per_s"])
                for name in _MEASURES:
                    got[f"{name}_ratio"] = round(got[f"{name}_tasks_per_s"] / got["imap_calls_per_s"], 3)
                out.append(got)
        floor.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="datamill-bench-pool-floor."))
    try:
        rounds = asyncio.run(_rounds(root, args.items, args.rounds, args.workers))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    medians = {f"{name}_median_ratio": round(_median([r[f"{name}_ratio"] for r in rounds]), 3) for name in _MEASURES}
    result = {
        "benchmark": "pool_floor",
        "cpus": os.cpu_count(),
        "items": args.items,
        "workers": args.workers,
        "rounds": rounds,
        **{
            f"{name}_median_per_s": round(_median([r[f"{name}_{unit}_per_s"] for r in rounds]))
            for name, unit in (*((m, "tasks") for m in _MEASURES), ("imap", "calls"))
        },
        **medians,
        "target_ratio": TARGET_RATIO,
        "ok": medians["datamill_median_ratio"] >= TARGET_RATIO,
        "ceiling_ok": medians["unrecorded_median_ratio"] >= TARGET_RATIO,
        "floor_ok": medians["floor_median_ratio"] >= TARGET_RATIO,
        "floor_chunked_ok": medians["floor_chunked_median_ratio"] >= TARGET_RATIO,
        "rounds_ok": sum(r["datamill_ratio"] >= TARGET_RATIO for r in rounds),
        "rounds_ceiling_ok": sum(r["unrecorded_ratio"] >= TARGET_RATIO for r in rounds),
        "rounds_floor_ok": sum(r["floor_ratio"] >= TARGET_RATIO for r in rounds),
        "rounds_floor_chunked_ok": sum(r["floor_chunked_ratio"] >= TARGET_RATIO for r in rounds),
        "load_average": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
