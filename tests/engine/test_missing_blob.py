"""An input item whose blob file is missing from the store: the task that reads it fails, saying so.

The scheduler does not look for the blob files of the items it claims (a stat per task in the group
commit); the step that reads one (its bytes, or its path) finds it missing instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from datamill.engine import tasks as task_records

from .engine_world import World
from .value_pipelines import PIPELINES_FILE


def ref(name: str) -> str:
    return f"{PIPELINES_FILE}:{name}"


def remove_blobs(world: World) -> None:
    root = world.home.path / "blobs"
    for p in list(root.rglob("*")):
        if p.is_file() and ".tmp" not in p.parts:
            p.unlink()


@pytest.mark.parametrize("executor", ["inline", "local"])
@pytest.mark.parametrize("pipeline", ["values", "paths"])
def test_a_task_reading_an_item_whose_blob_is_missing_fails_saying_so(
    world: World, executor: str, pipeline: str, tmp_path: Path
) -> None:
    world.put("a.txt", "some text")
    remove_blobs(world)
    run = world.run(ref(pipeline), executor=executor, dest=None, params={"work": str(tmp_path / "work")})
    assert run["status"] == "failed", run
    (t,) = [t for t in world.tasks(run["id"]).values() if t.step in ("look", "named")]
    assert t.status == "failed"
    assert t.error is not None and "missing from the blob store" in t.error, t.error
    assert "a.txt" in t.error
    # Not the key's failure: restored, the blob's task runs again (see tasks.failed_earlier).
    assert t.failure != task_records.STEP_FAILURE
    assert t.outputs == []
    world.check_fold()


@pytest.mark.parametrize("executor", ["inline", "local"])
def test_a_task_reading_only_the_name_of_an_item_whose_blob_is_missing_needs_no_blob(
    world: World, executor: str
) -> None:
    world.put("a.txt", "some text")
    remove_blobs(world)
    run = world.run(ref("names"), executor=executor, dest=None)
    assert run["status"] == "succeeded", run
    (t,) = world.tasks(run["id"]).values()
    assert t.outputs[0].inline == b"a.txt"
