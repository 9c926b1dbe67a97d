"""Triggers on a hand-moved clock: backfill on start, new items, batching, stop, edits, cron, chaining, run now.

Every pass is a direct ``Triggers.poll(now)`` and every run is driven to its end by an inline
scheduler in this process, so nothing here sleeps.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from datamill.dataflows.triggers import active_runs
from tests.helpers import DEST, SOURCE, T0, check_fold, finished_per_task, wait_for

from .flow_pipelines import ref
from .flow_world import FlowWorld


def test_start_processes_items_already_there_exactly_once(db_world: FlowWorld) -> None:
    w = db_world
    for name in ("a.txt", "b.txt", "c.txt"):
        w.put(name, name.upper())
    w.create()
    assert w.poll(T0) == []  # stopped: nothing happens
    w.start()
    (run_id,) = w.poll(T0 + 1)
    assert w.run_inputs(run_id) == ["a.txt", "b.txt", "c.txt"]
    assert "start" in w.run(run_id)["reason"]
    assert w.poll(T0 + 2) == []
    w.drive()
    assert w.run(run_id)["status"] == "succeeded"
    assert sorted(w.out()) == ["a.echo.bin", "b.echo.bin", "c.echo.bin"]
    assert w.read("b.echo.bin") == b"v1:B.TXT"

    # Stopping and starting again finds every item done under this configuration: no run.
    w.stop()
    w.start()
    assert w.poll(T0 + 10) == []
    assert w.poll(T0 + 20) == []
    assert all(len(w.versions(n)) == 1 for n in w.out())
    check_fold(w.home)


def test_items_landing_right_after_start_are_run_once(world: FlowWorld) -> None:
    w = world
    w.put("a.txt", "a")
    w.create()
    w.start()
    w.put("b.txt", "b")  # after Start, before the first pass
    (run_id,) = w.poll(T0)
    assert w.run_inputs(run_id) == ["a.txt", "b.txt"]
    assert w.poll(T0 + 5) == []  # b's event is behind the cursor now


def test_new_items_make_a_run(db_world: FlowWorld) -> None:
    w = db_world
    w.create()
    w.start()
    assert w.poll(T0) == []  # empty source: nothing to backfill
    w.put("x.txt", "x")
    (run_id,) = w.poll(T0 + 1)
    assert w.run_inputs(run_id) == ["x.txt"]
    assert w.run(run_id)["reason"] == "dataflow flow: 1 new or updated item(s)"
    w.drive()
    assert w.read("x.echo.bin") == b"v1:x"
    # A new version of an item is a new item for the dataflow.
    w.put("x.txt", "x2")
    (again,) = w.poll(T0 + 2)
    w.drive()
    assert w.run(again)["inputs"][0]["version"] == 2
    assert [v.version for v in w.versions("x.echo.bin")] == [1, 2]
    assert w.read("x.echo.bin") == b"v1:x2"
    # Items elsewhere do not concern it.
    w.home.store.create_folder(w.admin, "Elsewhere")
    w.put("y.txt", "y", folder="Elsewhere")
    w.put("z.txt", "z", folder=DEST)
    assert w.poll(T0 + 3) == []


def test_a_burst_is_one_run_after_the_leading_edge(world: FlowWorld) -> None:
    w = world
    w.create(batch_window_ms=1000)
    w.start()
    w.poll(T0)
    w.put("first.txt", "1")
    (lead,) = w.poll(T0 + 10.0)  # the first item after a quiet spell runs at once
    assert w.run_inputs(lead) == ["first.txt"]
    for i in range(5):
        w.put(f"burst-{i}.txt", str(i))
        assert w.poll(T0 + 10.1 + i * 0.1) == []  # inside the window: held back
    assert w.triggers.next_wakeup(T0 + 10.5) == pytest.approx(0.5)
    (rest,) = w.poll(T0 + 11.0)  # the window closed: the rest together
    assert w.run_inputs(rest) == [f"burst-{i}.txt" for i in range(5)]
    assert w.poll(T0 + 12.5) == []
    assert w.triggers.next_wakeup(T0 + 12.5) is None  # no window open, nothing scheduled
    w.drive()
    assert len(w.out()) == 6
    assert finished_per_task(w.home) and set(finished_per_task(w.home).values()) == {1}


def test_the_default_window_does_not_delay_the_first_item(world: FlowWorld) -> None:
    w = world
    w.create()
    w.start()
    w.poll(T0)
    w.put("a.txt", "a")
    assert len(w.poll(T0 + 0.001)) == 1
    w.put("b.txt", "b")
    assert w.poll(T0 + 0.002) == []  # within the 30 ms window of the first
    assert len(w.poll(T0 + 0.05)) == 1


def test_stop_means_no_new_runs(db_world: FlowWorld) -> None:
    w = db_world
    w.create()
    w.start()
    w.poll(T0)
    w.stop()
    w.put("a.txt", "a")
    assert w.poll(T0 + 1) == []
    assert w.poll(T0 + 100) == []
    assert w.out() == {}
    # Started again, the item that landed meanwhile is found by the backfill.
    w.start()
    (run_id,) = w.poll(T0 + 200)
    assert w.run_inputs(run_id) == ["a.txt"]


def test_runs_already_recorded_go_on_after_stop(world: FlowWorld) -> None:
    w = world
    w.create()
    w.start()
    w.poll(T0)
    w.put("a.txt", "a")
    (run_id,) = w.poll(T0 + 1)
    w.stop()
    assert active_runs(w.home, w.flow_row().id) == [run_id]
    w.drive()
    assert w.run(run_id)["status"] == "succeeded"
    assert active_runs(w.home, w.flow_row().id) == []


def test_edit_while_running_new_runs_use_the_new_version(world: FlowWorld) -> None:
    w = world
    w.create()
    w.start()
    w.poll(T0)
    w.put("a.txt", "a")
    (old,) = w.poll(T0 + 1)  # recorded under version 1, not run yet
    w.flows.edit(w.admin, "flow", {"params": {"prefix": "v2"}})
    w.put("b.txt", "b")
    (new,) = w.poll(T0 + 2)  # the new configuration covers everything without a result under it
    assert w.run_inputs(new) == ["a.txt", "b.txt"]
    assert w.poll(T0 + 3) == []
    w.drive()
    assert (w.run(old)["dataflow_version"], w.run(new)["dataflow_version"]) == (1, 2)
    assert w.run(old)["status"] == w.run(new)["status"] == "succeeded"
    assert w.read("a.echo.bin") == b"v2:a" and w.read("b.echo.bin") == b"v2:b"
    w.put("c.txt", "c")
    (later,) = w.poll(T0 + 4)
    assert w.run(later)["dataflow_version"] == 2
    w.drive()
    assert w.read("c.echo.bin") == b"v2:c"


def _edited_while_in_flight(w: FlowWorld, gate: Path) -> tuple[int, int]:
    """A run under version 1 (held back by ``gate``) and, after an edit, one under version 2; both over a.txt."""
    w.create(pipeline=ref("gated_pipeline"), params={"prefix": "v1", "gate": str(gate)})
    w.start()
    w.poll(T0)
    w.put("a.txt", "a")
    (old,) = w.poll(T0 + 1)
    w.flows.edit(w.admin, "flow", {"params": {"prefix": "v2", "gate": ""}})
    (new,) = w.poll(T0 + 2)
    assert (w.run(old)["dataflow_version"], w.run(new)["dataflow_version"]) == (1, 2)
    return old, new


def test_an_older_run_finishing_last_does_not_replace_the_newer_output(db_world: FlowWorld, tmp_path: Path) -> None:
    w = db_world
    gate = tmp_path / "gate"
    old, new = _edited_while_in_flight(w, gate)
    # The old run starts and waits at its gate; the new one runs to its end meanwhile.
    old_driver = threading.Thread(target=w.drive, args=([old],), name="old-run")
    old_driver.start()
    try:
        wait_for("the old run's task to start", lambda: w.run(old)["status"] == "running")
        w.drive([new])
        assert w.read("a.echo.bin") == b"v2:a"
    finally:
        gate.touch()
        old_driver.join()
    # The old run ends later: its output is recorded but not made current.
    assert w.run(old)["status"] == w.run(new)["status"] == "succeeded"
    assert w.read("a.echo.bin") == b"v2:a"
    assert [v.run_id for v in w.versions("a.echo.bin")] == [new]
    (task,) = w.engine.tasks(w.admin, old)
    assert task.note is not None and task.note.startswith(f"superseded by run {new}: 'a.echo.bin' not published")
    assert [o.version_id for o in task.outputs] == [None]
    (finished,) = [e for e in w.events("task.finished") if e.task_id == task.id]
    assert finished.data["note"] == task.note
    check_fold(w.home)


def test_a_newer_run_finishing_last_replaces_the_older_output(db_world: FlowWorld, tmp_path: Path) -> None:
    w = db_world
    gate = tmp_path / "gate"
    gate.touch()  # no waiting: the runs end one after the other, oldest first
    old, new = _edited_while_in_flight(w, gate)
    w.drive([old])
    assert w.read("a.echo.bin") == b"v1:a"
    w.drive([new])
    assert w.read("a.echo.bin") == b"v2:a"
    assert [v.run_id for v in w.versions("a.echo.bin")] == [old, new]
    assert all(t.note is None for r in (old, new) for t in w.engine.tasks(w.admin, r))


def test_an_older_run_does_not_replace_an_output_a_newer_run_found_in_the_cache(world: FlowWorld) -> None:
    w = world
    w.create()
    w.start()
    w.poll(T0)
    w.put("a.txt", "a")
    (first,) = w.poll(T0 + 1)
    w.drive()  # a.echo.bin = v1:a, published by the first run
    # Three runs over a.txt in flight: v2 (older), then v1 again (newer, a cache hit of the current bytes).
    w.flows.edit(w.admin, "flow", {"params": {"prefix": "v2"}})
    (v2,) = w.poll(T0 + 2)
    w.flows.edit(w.admin, "flow", {"params": {"prefix": "v1"}})
    (v1_again,) = w.poll(T0 + 3)
    assert w.run_inputs(v1_again) == ["a.txt"]
    w.drive([v1_again])  # the newest request: cached, its output is the current version already
    w.drive([v2])  # the older request ends last
    assert w.read("a.echo.bin") == b"v1:a"
    assert [v.run_id for v in w.versions("a.echo.bin")] == [first]
    (task,) = w.engine.tasks(w.admin, v2)
    assert task.note is not None and task.note.startswith(f"superseded by run {v1_again}")


def test_a_failed_item_is_not_tried_again_until_it_changes_or_a_user_asks(db_world: FlowWorld) -> None:
    w = db_world
    w.put("a.txt", "a")
    w.put("bad.txt", "fail: not like the others")
    w.create(pipeline=ref("echo_all"))
    w.start()
    (first,) = w.poll(T0)
    w.drive()
    assert w.run(first)["status"] == "failed"
    bad_first = w.engine.tasks(w.admin, first)[1]
    assert (bad_first.planned_id, bad_first.status, bad_first.failure) == ("echo[Raw/bad.txt]", "failed", "step")

    # A new item: the run covers every item (an aggregate step); bad.txt is not run again.
    w.put("c.txt", "c")
    (second,) = w.poll(T0 + 1)
    w.drive()
    run = w.run(second)
    assert run["status"] == "succeeded"
    assert run["counts"] == {"skipped": 1, "cached": 1, "succeeded": 2}
    tasks = {t.planned_id: t for t in w.engine.tasks(w.admin, second)}
    bad = tasks["echo[Raw/bad.txt]"]
    assert (bad.status, bad.note, bad.error, bad.attempts) == ("skipped", f"failed earlier (see run {first})", None, 0)
    assert json.loads(w.read("listing.json")) == {"echoed": 2, "missing": 1}  # skipped reaches it as None
    assert not [e for e in w.events("task.started") if e.task_id == bad.id]
    (finished,) = [e for e in w.events("task.finished") if e.task_id == bad.id]
    assert finished.data["status"] == "skipped" and finished.data["note"] == bad.note
    check_fold(w.home)

    # A user asking for a run (flow run, runs retry) runs it again.
    again = w.triggers.run_now("flow", w.admin)
    assert again is not None
    w.drive()
    assert w.run(again)["status"] == "failed"
    assert {t.planned_id: t.status for t in w.engine.tasks(w.admin, again)}["echo[Raw/bad.txt]"] == "failed"
    retried = w.engine.retry(w.admin, first)
    w.drive()
    assert {t.planned_id: t.status for t in w.engine.tasks(w.admin, retried)}["echo[Raw/bad.txt]"] == "failed"

    # Later trigger runs point at the newest failure; a new version of the item is a new key: it runs.
    w.put("d.txt", "d")
    (third,) = w.poll(T0 + 2)
    w.drive()
    bad = {t.planned_id: t for t in w.engine.tasks(w.admin, third)}["echo[Raw/bad.txt]"]
    assert bad.note == f"failed earlier (see run {retried})"
    w.put("bad.txt", "fine now")
    (fixed,) = w.poll(T0 + 3)
    w.drive()
    assert w.run(fixed)["status"] == "succeeded"
    assert w.read("bad.echo.bin") == b"v1:fine now"
    check_fold(w.home)


def _utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_cron_fires_at_its_times_and_skips_missed_ticks(db_world: FlowWorld) -> None:
    w = db_world
    w.put("a.txt", "a")
    w.create(trigger="cron:*/5 * * * *")
    w.start()
    (backfill,) = w.poll(_utc("2026-01-01 00:01:00"))
    assert "start" in w.run(backfill)["reason"]
    w.drive()
    assert w.poll(_utc("2026-01-01 00:01:01")) == []  # schedules the next tick
    assert w.flow_row().next_fire_at == _utc("2026-01-01 00:05:00")
    assert w.poll(_utc("2026-01-01 00:04:59")) == []
    (tick,) = w.poll(_utc("2026-01-01 00:05:00"))
    assert w.run(tick)["reason"] == "dataflow flow: cron"
    assert w.run_inputs(tick) == ["a.txt"]  # a cron run covers the whole source
    assert w.flow_row().next_fire_at == _utc("2026-01-01 00:10:00")
    # New items do not start a cron dataflow.
    w.put("b.txt", "b")
    assert w.poll(_utc("2026-01-01 00:06:00")) == []
    # Down from 00:07 to 00:23: the ticks at 00:10, 00:15 and 00:20 are skipped, not replayed.
    (late,) = w.poll(_utc("2026-01-01 00:23:00"))
    assert w.run_inputs(late) == ["a.txt", "b.txt"]
    assert w.poll(_utc("2026-01-01 00:23:01")) == []
    assert w.flow_row().next_fire_at == _utc("2026-01-01 00:25:00")
    assert w.triggers.next_wakeup(_utc("2026-01-01 00:24:00")) == pytest.approx(60.0)
    (on_time,) = w.poll(_utc("2026-01-01 00:25:00"))
    w.drive()
    runs = [backfill, tick, late, on_time]
    assert [w.run(r)["status"] for r in runs] == ["succeeded"] * 4
    # Unchanged inputs: the later runs are cache hits and publish no new versions.
    assert [len(w.versions(n)) for n in ("a.echo.bin", "b.echo.bin")] == [1, 1]


def test_chaining_a_flow_whose_source_is_another_flows_destination(db_world: FlowWorld) -> None:
    w = db_world
    w.home.store.create_folder(w.admin, "Final")
    w.create("first")
    w.create("second", source=DEST, destination="Final", params={"prefix": "B"})
    w.start("first")
    w.start("second")
    assert w.poll(T0) == []
    w.put("x.txt", "x")
    (a_run,) = w.poll(T0 + 1)
    w.drive()
    assert w.read("x.echo.bin") == b"v1:x"
    (b_run,) = w.poll(T0 + 2)  # the second flow sees the first one's output land
    assert w.run_inputs(b_run) == ["x.echo.bin"]
    w.drive()
    assert w.read("x.echo.echo.bin", "Final") == b"B:v1:x"
    prov = w.out("Final")["x.echo.echo.bin"].metadata["provenance"]
    assert prov["wasDerivedFrom"] == [
        {"folder": DEST, "name": "x.echo.bin", "version": 1, "digest": w.out()["x.echo.bin"].digest}
    ]
    assert w.poll(T0 + 3) == []
    assert [r["dataflow_id"] for r in (w.run(a_run), w.run(b_run))] == [
        w.flow_row("first").id,
        w.flow_row("second").id,
    ]


def test_run_now(world: FlowWorld) -> None:
    w = world
    w.put("a.txt", "a")
    w.put("b.txt", "b")
    w.create(trigger="manual")
    w.start()
    # A manual dataflow covers what is there when started, then only runs when asked.
    (start,) = w.poll(T0)
    w.drive()
    w.put("c.txt", "c")
    assert w.poll(T0 + 1) == []
    run_id = w.triggers.run_now("flow", w.admin)
    assert run_id is not None and run_id != start
    assert w.run(run_id)["reason"] == "dataflow flow: run by admin"
    assert w.run_inputs(run_id) == ["a.txt", "b.txt", "c.txt"]
    w.drive()
    assert w.run(run_id)["status"] == "succeeded"
    assert w.read("c.echo.bin") == b"v1:c"
    assert len(w.versions("a.echo.bin")) == 1  # a and b were cache hits
    with pytest.raises(Exception, match="no dataflow 'nope'"):
        w.triggers.run_now("nope", w.admin)


def test_a_dataflow_whose_pipeline_breaks_is_marked_failed(world: FlowWorld, tmp_path: Path) -> None:
    path = tmp_path / "movable.py"
    path.write_text((Path(ref("echo_pipeline").split(":")[0])).read_text())
    w = world
    w.create(pipeline=f"{path}:echo_pipeline")
    w.start()
    w.poll(T0)
    path.unlink()  # the pipeline file goes away while the dataflow runs
    w.put("a.txt", "a")
    assert w.poll(T0 + 1) == []
    info = w.flows.get(w.admin, "flow")
    assert info.state == "failed"
    assert info.state_reason and "movable.py" in info.state_reason
    assert [e.data["reason"] for e in w.events("dataflow.failed")] == [info.state_reason]
    assert w.poll(T0 + 2) == []


def test_the_source_of_a_chained_flow_can_be_the_same_for_two_flows(world: FlowWorld) -> None:
    w = world
    w.home.store.create_folder(w.admin, "Other")
    w.create("one")
    w.create("two", destination="Other", params={"prefix": "two"})
    w.start("one")
    w.start("two")
    w.put("a.txt", "a")
    created = w.poll(T0)
    assert len(created) == 2
    w.drive()
    assert w.read("a.echo.bin") == b"v1:a"
    assert w.read("a.echo.bin", "Other") == b"two:a"
    assert SOURCE in {w.run(r)["source_folder"] for r in created}
