"""A Dagster job as a datamill step: real Dagster in worker subprocesses, driven by a real scheduler."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datamill.engine.tasks import TaskStatus
from tests.dataflows.flow_world import FlowWorld
from tests.helpers import DEST, T0, world_of

from .dagster_pipelines import ref

pytestmark = pytest.mark.slow


@pytest.fixture
def world(tmp_path: Path) -> Iterator[FlowWorld]:
    yield from world_of(FlowWorld, tmp_path / "home")


def _tasks(w: FlowWorld, run_id: int) -> list[Any]:
    return w.engine.tasks(w.admin, run_id)


def _submit(w: FlowWorld, pipeline: str) -> int:
    """A run of ``pipeline`` over the items of ``Raw`` into ``Out``, driven to its end."""
    run_id = w.engine.submit(
        w.admin, ref(pipeline), w.engine.inputs_from_folder(w.admin, "Raw"), source="Raw", dest=DEST
    )
    w.drive([run_id])
    return run_id


def test_a_dataflow_runs_the_dagster_job_over_new_items(world: FlowWorld) -> None:
    w = world
    w.create(pipeline=ref("counts"), trigger="new-items")
    w.start()
    w.put("a.txt", "the quick brown fox")
    w.put("b.txt", "jumps")
    (run_id,) = w.poll(T0)
    w.drive()
    assert w.run(run_id)["status"] == "succeeded"
    out = w.out()
    # Each materialisation is an item version; the provenance file stays out of the folder.
    assert sorted(out) == ["a.summary.txt", "a.words.json", "b.summary.txt", "b.words.json"]
    assert w.read("a.words.json") == b'{"a.txt": 4}\n'
    assert w.read("b.summary.txt") == b"1 words in 1 files\n"

    prov = out["a.words.json"].metadata["provenance"]
    dagster = prov["dagster"]
    assert dagster["job"] == "counts"
    assert dagster["op"] == "words" and dagster["asset_key"] == "words"
    assert dagster["code_version"] == "words-1"  # the asset's own code_version
    assert len(dagster["run_id"]) == 36
    # datamill's own provenance next to it: the run and task, derived from the item version.
    assert prov["wasGeneratedBy"]["run"] == run_id
    assert prov["wasGeneratedBy"]["step_code"].startswith("dagster:")
    assert prov["wasDerivedFrom"] == [
        {"folder": "Raw", "name": "a.txt", "version": 1, "digest": w.versions("a.txt", "Raw")[0].digest}
    ]
    # Both outputs of one task come from one Dagster run; the two items ran separately.
    assert out["a.summary.txt"].metadata["provenance"]["dagster"]["run_id"] == dagster["run_id"]
    assert out["b.words.json"].metadata["provenance"]["dagster"]["run_id"] != dagster["run_id"]

    # Dagster's log (stderr) is the task's log.
    task = _tasks(w, run_id)[0]
    log = w.engine.log_text(w.admin, task.id)
    assert "RUN_SUCCESS" in log and "succeeded: 2 outputs" in log

    # An unchanged re-run is answered from the cache: no worker, no new versions.
    again = _submit(w, "counts")
    assert {t.status for t in _tasks(w, again)} == {TaskStatus.CACHED}
    assert all(len(w.versions(n)) == 1 for n in out)
    w.check_fold()


def test_an_asset_selection_over_all_items(world: FlowWorld) -> None:
    w = world
    w.put("a.txt", "one two")
    w.put("b.txt", "three")
    run_id = _submit(w, "words_only")
    assert w.run(run_id)["status"] == "succeeded"
    assert sorted(w.out()) == ["words.json"]  # summary was not selected
    assert w.read("words.json") == b'{"a.txt": 2, "b.txt": 1}\n'


def test_a_failing_op_fails_its_task_with_the_ops_error(world: FlowWorld) -> None:
    w = world
    w.put("a.txt", "x")
    run_id = _submit(w, "failing")
    assert w.run(run_id)["status"] == "failed"
    (task,) = _tasks(w, run_id)
    assert task.status == TaskStatus.FAILED
    assert "op 'explode' failed: ValueError: row 7 has no value" in (task.error or "")
    assert w.out() == {}
