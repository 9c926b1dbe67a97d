"""A driver's pass looks at a run's queued tasks (``_triage``): which are ready, where it stops, and
whether their keys still need resolving."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamill.engine.planner import Plan, plan
from datamill.engine.scheduler import _triage
from datamill.engine.tasks import TaskRow, TaskStatus
from datamill.pipeline import InputRef, load_pipeline

EXAMPLE = Path(__file__).resolve().parents[1] / "pipeline" / "example_pipeline.py"


def ref(name: str) -> InputRef:
    return InputRef.for_bytes(name, b"x,y,label\n1,2,a\n", folder="Raw Data", content_type="text/csv")


@pytest.fixture(scope="module")
def the_plan() -> Plan:
    return plan(load_pipeline(f"{EXAMPLE}:pipeline"), [ref("a.csv"), ref("b.csv"), ref("c.csv")])


def rows(the_plan: Plan) -> dict[str, TaskRow]:
    """The plan's tasks as queued rows, each looked up in the cache and missed (as recorded at submit)."""
    out = {}
    for i, pt in enumerate(the_plan.tasks, 1):
        out[pt.id] = TaskRow(
            id=i, run_id=1, planned_id=pt.id, step=pt.step, step_code=pt.step_code, key=f"key-{i}",
            status=TaskStatus.QUEUED, attempts=0, max_attempts=1, progress=0.0, message="", item_version_id=None,
            item_name=None, deps=list(pt.deps), params_digest=None, queued_at=0.0, started_at=None,
            finished_at=None, error=None, traceback=None, log_digest=None, cached_from=None, executor=None,
            cache_missed=True,
        )  # fmt: skip
    return out


def test_a_pass_stops_at_its_slots_and_says_whether_tasks_were_left(the_plan: Plan) -> None:
    by_id = rows(the_plan)
    parses = [t for t in by_id.values() if t.step == "parse"]
    parses[0].status = TaskStatus.RUNNING  # walked over: not queued
    got = _triage(the_plan, by_id, 0.0, slots=1)
    assert got.ready == [parses[1]] and got.capped and got.resolved and not got.blocked
    assert [pt.id for pt in got.planned] == [parses[1].planned_id]
    # The last ready task fills the slots: nothing is left to look at, so the look did not stop short.
    assert _triage(the_plan, by_id, 0.0, list(by_id.values())[:3], slots=2).capped is False
    # Without slots every ready task comes (the others wait for their inputs).
    got = _triage(the_plan, by_id, 0.0)
    assert got.ready == parses[1:] and not got.capped
    assert _triage(the_plan, by_id, 0.0, slots=0) == ([], [], [], True, True)


def test_ready_tasks_needing_a_key_or_a_look_up_are_resolved(the_plan: Plan) -> None:
    by_id = rows(the_plan)
    parses = [t for t in by_id.values() if t.step == "parse"]
    parses[2].key = None  # its key is worked out by the pass
    assert not _triage(the_plan, by_id, 0.0).resolved
    parses[2].key, parses[0].cache_missed = "key", False  # the cache is asked about it
    got = _triage(the_plan, by_id, 0.0, slots=1)
    assert not got.resolved and got.ready == parses[:2]  # a task to look up takes no slot
