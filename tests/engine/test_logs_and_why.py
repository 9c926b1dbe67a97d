"""Task logs (``Engine.log_text`` / ``iter_log``) and explanations (``Engine.why``)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.helpers import wait_for

from .engine_world import World
from .pipelines import ref


@pytest.mark.parametrize("executor", ["inline", "local"])
def test_lines_logged_by_a_step_are_in_its_log(world: World, executor: str) -> None:
    world.put("a.txt", "hello")
    world.put("b.txt", "hi")
    run = world.run(ref("chatty"), executor=executor)
    tasks = world.tasks(run["id"])
    for name, size in (("a.txt", 5), ("b.txt", 2)):
        task = tasks[f"talk[Raw/{name}]"]
        assert task.status == "succeeded" and task.log_digest is not None
        assert world.engine.log_text(world.admin, task.id) == (
            f"INFO processing {name} ({size} bytes)\nWARNING done with {name}\n"
        )
    assert not list((world.home.path / "logs").iterdir())  # live log files are gone once stored
    world.check_fold()


def test_a_failed_task_log_holds_the_traceback(world: World) -> None:
    world.put("a.txt", "raise on purpose")
    run = world.run(ref("narrating"))
    (task,) = world.tasks(run["id"]).values()
    text = world.engine.log_text(world.admin, task.id)
    assert text.startswith("INFO starting a.txt\nTraceback (most recent call last):")
    assert "ValueError: cannot process a.txt: on purpose" in text
    assert "finished" not in text


def test_following_a_running_task_log(world: World) -> None:
    world.put("a.txt", "sleep 1")
    errors: list[BaseException] = []

    def go() -> None:
        try:
            world.run(ref("narrating"), executor="local", workers=1)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    runs = wait_for("the run to be recorded", lambda: world.engine.list_runs(world.admin))
    (task,) = world.tasks(runs[0]["id"]).values()
    chunks = list(world.engine.iter_log(world.admin, task.id, follow=True, poll=0.05))
    thread.join(30)
    assert not errors and not thread.is_alive()
    assert "".join(chunks) == "INFO starting a.txt\nINFO finished a.txt\n"
    assert len(chunks) >= 2  # the first line came while the task was still sleeping
    assert world.engine.task(world.admin, task.id).status == "succeeded"


def test_why_names_the_input_that_changed(world: World) -> None:
    world.put("a.txt", "alpha beta")
    world.put("b.txt", "gamma")
    first = world.run(ref("basic"))
    world.put("b.txt", "gamma delta")
    second = world.run(ref("basic"))
    old, new = world.tasks(first["id"]), world.tasks(second["id"])

    parse_b = world.engine.why(world.admin, new["parse[Raw/b.txt]"].id)
    assert parse_b["status"] == "succeeded"
    assert parse_b["nearest"] == {
        "task": old["parse[Raw/b.txt]"].id,
        "run": first["id"],
        "differs": ["inputs.item:b.txt"],
    }
    assert parse_b["explanation"].endswith("these parts differ: inputs.item:b.txt")
    assert parse_b["parts"]["step"] == "parse" and parse_b["key"] == new["parse[Raw/b.txt]"].key

    count_b = world.engine.why(world.admin, new["count[Raw/b.txt]"].id)
    assert count_b["nearest"]["differs"] == ["inputs.parse:return.txt"]
    total = world.engine.why(world.admin, new["total"].id)
    assert total["nearest"]["differs"] == ["inputs.count[1]:return.json"]

    cached = world.engine.why(world.admin, new["parse[Raw/a.txt]"].id)
    assert (
        cached["explanation"]
        == f"cached: task {old['parse[Raw/a.txt]'].id} had the same key and its outputs were reused"
    )


def test_why_names_a_changed_parameter(world: World, tmp_path: Path) -> None:
    world.put("a.txt", "alpha")
    world.run(ref("peritem"))
    run = world.run(ref("peritem"), params={"parse.marks": str(tmp_path / "marks")})
    tasks = world.tasks(run["id"])
    assert world.engine.why(world.admin, tasks["parse[Raw/a.txt]"].id)["nearest"]["differs"] == ["params.marks"]
    # Same output, so the next step was cached despite the new parameter upstream.
    assert tasks["count[Raw/a.txt]"].status == "cached"


def test_why_for_a_first_run(world: World) -> None:
    world.put("a.txt", "alpha")
    run = world.run(ref("peritem"))
    task = world.tasks(run["id"])["parse[Raw/a.txt]"]
    assert world.engine.why(world.admin, task.id)["explanation"] == (
        "ran: no earlier task of step 'parse' had a key to compare with"
    )


def test_progress_is_filed_under_its_own_run(world: World) -> None:
    # One scheduler drives two runs at once; each run's driver records progress in batches.
    world.home.store.create_folder(world.admin, "Other")
    for i in range(12):
        world.put(f"a{i}.txt", "x")
        world.put(f"b{i}.txt", "y", folder="Other")
    first = world.engine.submit(world.admin, ref("chatty"), world.inputs(), source="Raw")
    second = world.engine.submit(world.admin, ref("chatty"), world.inputs("Other"), source="Other")
    world.drive([first, second], "local", workers=2)
    owner = {t.id: t.run_id for rid in (first, second) for t in world.engine.tasks(world.admin, rid)}
    folder = {first: world.home.store.get_folder(world.admin, "Raw").id}
    folder[second] = world.home.store.get_folder(world.admin, "Other").id
    progress = world.events("task.progress")
    assert progress and all(e.data == {"progress": 0.5, "message": "half way"} for e in progress)
    assert [(e.task_id, e.run_id, e.folder_id) for e in progress] == [
        (e.task_id, owner[e.task_id], folder[owner[e.task_id]]) for e in progress
    ]
    world.check_fold()
