"""`datamill plan` and `datamill why` for Dagster steps: the key covers the job's code and run config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dataflows.flow_world import FlowWorld
from tests.helpers import DEST, world_of

from .dagster_pipelines import ref

pytestmark = pytest.mark.slow


@pytest.fixture
def world(tmp_path: Path) -> Iterator[FlowWorld]:
    yield from world_of(FlowWorld, tmp_path / "home")


def test_plan_and_why_show_a_dagster_steps_key(world: FlowWorld) -> None:
    w = world
    w.put("a.txt", "one two")
    w.put("b.txt", "three")
    inputs = w.engine.inputs_from_folder(w.admin, "Raw")

    planned = w.engine.plan(ref("counts"), inputs).to_dict()
    assert [t["decision"] for t in planned["tasks"]] == ["run", "run"]  # one Dagster run per item
    assert all(t["key"].startswith("blake3:") for t in planned["tasks"])
    # Another run config is another key, without starting Dagster.
    other = w.engine.plan(ref("counts"), inputs, params={"counts.config": {"ops": {}}}).to_dict()
    assert {t["key"] for t in other["tasks"]}.isdisjoint(t["key"] for t in planned["tasks"])

    run_id = w.engine.submit(w.admin, ref("words_only"), inputs, source="Raw", dest=DEST)
    w.drive([run_id])
    (task,) = w.engine.tasks(w.admin, run_id)
    why = w.engine.why(w.admin, task.id)
    assert why.key == task.key
    # The code part names the Dagster module by the digest of its package's source, and the
    # selection; the run config is the step's parameter.
    assert why.parts["code"].startswith("dagster:")
    assert "config" in why.parts["params"]
    assert len(why.parts["inputs"]) == 2  # both items (an aggregate step)
    # Planned again, the same task is answered from the cache.
    again = w.engine.plan(ref("words_only"), inputs).to_dict()
    assert [t["decision"] for t in again["tasks"]] == ["cached"]
