"""The floor of ``benchmarks/pool_floor.py``: it must record every task as a recorded task is recorded,
once each, or the figures it gives are not a floor."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
from pathlib import Path

import blake3
import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "pool_floor.py"
_spec = importlib.util.spec_from_file_location("pool_floor", _PATH)
assert _spec is not None and _spec.loader is not None
pool_floor = importlib.util.module_from_spec(_spec)
sys.modules["pool_floor"] = pool_floor
_spec.loader.exec_module(pool_floor)


def test_every_task_is_claimed_then_ended_once_with_its_output_and_events_in_order(tmp_path: Path) -> None:
    names = [f"i{i:05}.txt" for i in range(pool_floor.BATCH * 2 + 7)]  # three batches, the last one short
    calls: list[list[str]] = []

    def imap(batch: list[str]) -> list[str]:
        calls.append(batch)
        return [pool_floor.plain_tiny(n) for n in batch]

    floor = pool_floor.FloorRecorder(tmp_path / "floor.sqlite")
    try:
        assert floor.drive(imap, names) == len(names)
    finally:
        floor.close()
    assert [n for batch in calls for n in batch] == names
    db = sqlite3.connect(tmp_path / "floor.sqlite")
    statuses = db.execute("SELECT status, attempts, count(*) FROM tasks GROUP BY status, attempts").fetchall()
    assert statuses == [("succeeded", 1, len(names))]
    outputs = db.execute(
        "SELECT t.planned_id, o.digest, o.size, o.inline FROM task_outputs o JOIN tasks t ON t.id = o.task_id "
        "ORDER BY t.id"
    ).fetchall()
    assert len(outputs) == len(names)
    for (planned, digest, size, inline), name in zip(outputs, names, strict=True):
        assert planned == f"tiny/{name}"
        assert (digest, size, bytes(inline)) == (blake3.blake3(name.encode()).hexdigest(), len(name), name.encode())
    events = db.execute("SELECT kind, task_id, data FROM events ORDER BY seq").fetchall()
    # each task: started before finished, once each
    seen: dict[int, list[str]] = {}
    for kind, task_id, _ in events:
        seen.setdefault(task_id, []).append(kind)
    assert set(map(tuple, seen.values())) == {("task.started", "task.finished")}
    first_finished = next(json.loads(d) for k, _, d in events if k == "task.finished")
    assert first_finished == {
        "status": "succeeded",
        "error": None,
        "outputs": [{"name": "tiny", "digest": blake3.blake3(names[0].encode()).hexdigest(), "size": len(names[0])}],
        "cached_from": None,
    }
    started = json.loads(next(d for k, _, d in events if k == "task.started"))
    assert started == {"attempt": 1, "step": "tiny", "executor": "local", "owner": "floor"}


def test_an_end_of_a_task_not_running_or_a_claim_of_one_not_queued_rolls_the_batch_back(tmp_path: Path) -> None:
    floor = pool_floor.FloorRecorder(tmp_path / "floor.sqlite")
    try:
        ids = floor.queue(["a", "b"])
        with pytest.raises(RuntimeError, match="1 of 1 ends were not running"):
            floor.commit([(ids[0], "a")], [])
        assert floor.commit([], ids) == ids
        with pytest.raises(RuntimeError, match="1 of 1 claims were not queued"):
            floor.commit([(ids[0], "a")], [ids[1]])  # b is running already: the end of a goes too
        status = floor.conn.execute("SELECT status FROM tasks ORDER BY id").fetchall()
        assert status == [("running",), ("running",)]
        assert floor.conn.execute("SELECT count(*) FROM task_outputs").fetchone() == (0,)
    finally:
        floor.close()
