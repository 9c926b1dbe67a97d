"""Property: whatever happens to runs, the state folded from the event log equals the tables.

Hypothesis draws a pipeline per run and a short history of operations (inputs added, changed,
re-tagged and deleted; runs, forced runs, runs as triggers make them (skipping what failed before),
cancelled runs, failures, retries) and checks after each one that
``runs.fold(events) == runs.state_from_tables(conn)``, plus a few invariants of runs.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datamill.engine.runs import FINISHED_RUN
from datamill.errors import InvalidInput
from tests.helpers import open_home

from .engine_world import World
from .pipelines import ref

NAMES = ["a.txt", "b.txt", "c.txt"]
#: "Alpha" parses like "alpha" (early cutoff), "raise" fails, "flaky 1" fails on its first execution
TEXTS = ["alpha", "Alpha", "beta gamma", "raise now", "flaky 1"]
PIPELINES = ["basic", "peritem", "wide", "retrying", "forced"]

operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(NAMES), st.sampled_from(TEXTS)),
        st.tuples(st.just("tag"), st.sampled_from(NAMES), st.integers(0, 3)),
        st.tuples(st.just("delete"), st.sampled_from(NAMES), st.none()),
        st.tuples(st.just("run"), st.sampled_from(PIPELINES), st.booleans()),
        st.tuples(st.just("trigger"), st.sampled_from(PIPELINES), st.none()),
        st.tuples(st.just("cancel"), st.sampled_from(PIPELINES), st.none()),
        st.tuples(st.just("retry"), st.none(), st.none()),
    ),
    min_size=1,
    max_size=8,
)


def apply(world: World, op: tuple[str, Any, Any], marks: Path) -> None:
    kind, arg, extra = op
    present = {i.name for i in world.inputs()}
    if kind == "put":
        world.put(arg, extra)
    elif kind == "tag":
        if arg in present:
            world.home.store.set_item_metadata(world.admin, f"Raw/{arg}", {"tag": extra})
    elif kind == "delete":
        if arg in present:
            world.home.store.delete_item(world.admin, f"Raw/{arg}")
    elif not present and kind in ("run", "cancel", "trigger"):
        with pytest.raises(InvalidInput, match="no input items"):
            world.submit(ref(arg))
    elif kind == "run":
        run = world.run(ref(arg), force=extra, params={"marks": str(marks)})
        assert run["status"] in FINISHED_RUN
    elif kind == "trigger":
        run = world.run(ref(arg), params={"marks": str(marks)}, skip_failed=True)
        assert run["status"] in FINISHED_RUN and run["skip_failed"]
    elif kind == "cancel":
        run_id = world.submit(ref(arg), params={"marks": str(marks)})
        assert world.engine.cancel(world.admin, run_id)
        assert world.run_submitted(run_id)["status"] == "cancelled"
    elif kind == "retry":
        ended = [r for r in world.engine.list_runs(world.admin) if r["status"] in ("failed", "cancelled")]
        if ended:
            again = world.run_submitted(world.engine.retry(world.admin, ended[0]["id"]))
            assert again["parent_run_id"] == ended[0]["id"]


def check_invariants(world: World) -> None:
    state = world.check_fold()
    finished = world.per_task("task.finished")
    for run in world.engine.list_runs(world.admin, limit=0):
        assert run["status"] in FINISHED_RUN  # everything here is driven to the end
        tasks = world.engine.tasks(world.admin, run["id"])
        counts = Counter(str(t.status) for t in tasks)
        if run["status"] == "succeeded":
            assert set(counts) <= {"succeeded", "cached", "skipped"}, counts
        if counts["skipped"]:
            assert run["skip_failed"], run
        elif run["status"] == "failed":
            assert counts["failed"] and not counts["queued"] and not counts["running"], counts
        for t in tasks:
            assert finished[t.id] == 1  # each task ended exactly once
            assert state["tasks"][t.id]["status"] == t.status
            if t.status == "cached":
                source = world.engine.task(world.admin, t.cached_from)  # type: ignore[arg-type]
                assert (source.status, source.key) == ("succeeded", t.key)
                assert [o.digest for o in source.outputs] == [o.digest for o in t.outputs]
            if t.status == "skipped":
                # It failed in its step before, in the run its note names (or its input was skipped).
                assert t.note is not None and t.error is None and t.attempts == 0, t
                if not t.note.startswith("its input"):
                    earlier = int(t.note.removeprefix("failed earlier (see run ").removesuffix(")"))
                    assert earlier < run["id"]
                    failed = [e for e in world.engine.tasks(world.admin, earlier) if e.key == t.key]
                    assert failed and all((e.status, e.failure) == ("failed", "step") for e in failed)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, first=st.lists(st.sampled_from(TEXTS), min_size=1, max_size=3))
def test_folded_events_always_equal_the_tables(ops: list[tuple[str, Any, Any]], first: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = open_home(Path(tmp) / "home")
        try:
            world = World(home)
            for name, text in zip(NAMES, first, strict=False):
                world.put(name, text)
            for op in ops:
                apply(world, op, Path(tmp) / "marks")
                check_invariants(world)
        finally:
            home.close()
