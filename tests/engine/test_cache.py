"""The cache through the engine: reruns, changed inputs, early cutoff, force, metadata, publishing, provenance.

Every test runs on SQLite and on PostgreSQL (``db_world``), with the inline executor.
"""

from __future__ import annotations

import json

from .engine_world import World
from .pipelines import ref

BASIC = ref("basic")
FORCED = ref("forced")


def fill(world: World) -> None:
    world.put("a.txt", "Hello World")
    world.put("b.txt", "the quick brown fox")
    world.put("c.txt", "one")


def test_unchanged_rerun_is_fully_cached_and_publishes_nothing_new(db_world: World) -> None:
    fill(db_world)
    first = db_world.run(BASIC)
    assert first["status"] == "succeeded"
    assert db_world.status_counts(first["id"]) == {"succeeded": 7}
    published = db_world.out()
    assert sorted(published) == [
        "a.count.json", "a.parse.txt", "b.count.json", "b.parse.txt", "c.count.json", "c.parse.txt", "total.json",
    ]  # fmt: skip

    second = db_world.run(BASIC)
    assert second["status"] == "succeeded"
    assert db_world.status_counts(second["id"]) == {"cached": 7}
    tasks1, tasks2 = db_world.tasks(first["id"]), db_world.tasks(second["id"])
    for pid, t in tasks2.items():
        assert t.cached_from == tasks1[pid].id
        assert t.key == tasks1[pid].key
        assert [o.digest for o in t.outputs] == [o.digest for o in tasks1[pid].outputs]
    # Same bytes into the same folder: no new versions.
    assert {n: len(db_world.versions(n)) for n in published} == dict.fromkeys(published, 1)
    db_world.check_fold()


def test_changed_input_reruns_only_its_tasks_and_their_dependents(db_world: World) -> None:
    fill(db_world)
    db_world.run(BASIC)
    db_world.put("b.txt", "a slow red fox jumps")
    run = db_world.run(BASIC)
    assert run["status"] == "succeeded"
    assert db_world.statuses(run["id"]) == {
        "parse[Raw/a.txt]": "cached",
        "parse[Raw/b.txt]": "succeeded",
        "parse[Raw/c.txt]": "cached",
        "count[Raw/a.txt]": "cached",
        "count[Raw/b.txt]": "succeeded",
        "count[Raw/c.txt]": "cached",
        "total": "succeeded",
    }
    assert json.loads(db_world.read("total.json")) == {"items": 3, "words": 2 + 5 + 1}
    assert [v.version for v in db_world.versions("b.parse.txt")] == [1, 2]
    assert len(db_world.versions("a.parse.txt")) == 1
    db_world.check_fold()


def test_new_input_runs_only_its_tasks_and_the_aggregate(db_world: World) -> None:
    fill(db_world)
    db_world.run(BASIC)
    db_world.put("d.txt", "four more words here")
    run = db_world.run(BASIC)
    assert db_world.status_counts(run["id"]) == {"cached": 6, "succeeded": 3}
    assert {pid for pid, s in db_world.statuses(run["id"]).items() if s == "succeeded"} == {
        "parse[Raw/d.txt]",
        "count[Raw/d.txt]",
        "total",
    }


def test_upstream_rerun_with_identical_output_leaves_downstream_cached(db_world: World) -> None:
    fill(db_world)
    db_world.run(BASIC)
    # Different bytes, same parsed text ("hello world"): parse reruns, nothing after it does.
    db_world.put("a.txt", "  HELLO world\n")
    run = db_world.run(BASIC)
    statuses = db_world.statuses(run["id"])
    assert statuses["parse[Raw/a.txt]"] == "succeeded"
    assert statuses["count[Raw/a.txt]"] == "cached"
    assert statuses["total"] == "cached"
    assert db_world.status_counts(run["id"]) == {"cached": 6, "succeeded": 1}


def test_forced_step_reruns_while_its_unchanged_output_keeps_downstream_cached(db_world: World) -> None:
    fill(db_world)
    first = db_world.run(FORCED)
    assert db_world.status_counts(first["id"]) == {"succeeded": 6}
    second = db_world.run(FORCED)
    statuses = db_world.statuses(second["id"])
    assert {s for pid, s in statuses.items() if pid.startswith("fetch[")} == {"succeeded"}
    assert {s for pid, s in statuses.items() if pid.startswith("shout[")} == {"cached"}
    assert db_world.read("a.shout.txt") == b"HELLO WORLD"
    assert len(db_world.versions("a.fetch.txt")) == 1  # rerun, same bytes: no new version


def test_force_recomputes_everything_and_leaves_earlier_runs_alone(db_world: World) -> None:
    fill(db_world)
    first = db_world.run(BASIC)
    second = db_world.run(BASIC)
    before = {rid: db_world.tasks(rid) for rid in (first["id"], second["id"])}
    before_runs = {rid: db_world.engine.get_run(db_world.admin, rid) for rid in before}

    forced = db_world.run(BASIC, force=True)
    assert forced["status"] == "succeeded"
    assert forced["force"] is True
    assert db_world.status_counts(forced["id"]) == {"succeeded": 7}
    new = db_world.tasks(forced["id"])
    old = before[first["id"]]
    # Same keys and (deterministic steps) the same outputs, recomputed by new tasks.
    assert {pid: t.key for pid, t in new.items()} == {pid: t.key for pid, t in old.items()}
    assert {pid: t.cached_from for pid, t in new.items()} == dict.fromkeys(new)
    assert {pid: [o.digest for o in t.outputs] for pid, t in new.items()} == {
        pid: [o.digest for o in t.outputs] for pid, t in old.items()
    }
    for rid, tasks in before.items():
        assert db_world.tasks(rid) == tasks
        assert db_world.engine.get_run(db_world.admin, rid) == before_runs[rid]
    # The next normal run is cached again (from the newest successful task).
    after = db_world.run(BASIC)
    assert {t.cached_from for t in db_world.tasks(after["id"]).values()} == {t.id for t in new.values()}
    db_world.check_fold()


def test_metadata_only_changes_do_not_invalidate_tasks(db_world: World) -> None:
    fill(db_world)
    db_world.run(BASIC)
    db_world.home.store.set_item_metadata(db_world.admin, "Raw/a.txt", {"reviewed": True, "owner": "ann"})
    run = db_world.run(BASIC)
    assert db_world.status_counts(run["id"]) == {"cached": 7}
    # A new version with the same bytes and other metadata is still the same input for the cache.
    v = db_world.put("b.txt", "the quick brown fox", source="re-upload")
    assert v.version == 2
    run = db_world.run(BASIC)
    assert db_world.status_counts(run["id"]) == {"cached": 7}
    assert {i["name"]: i["version"] for i in run["inputs"]}["b.txt"] == 2


def test_outputs_are_published_with_run_task_and_provenance(db_world: World) -> None:
    fill(db_world)
    run = db_world.run(BASIC)
    tasks = db_world.tasks(run["id"])
    inputs = {i.name: i for i in db_world.inputs()}
    expected = {
        "a.parse.txt": ("parse[Raw/a.txt]", b"hello world"),
        "a.count.json": ("count[Raw/a.txt]", None),
        "total.json": ("total", None),
    }
    for name, (pid, data) in expected.items():
        (version,) = db_world.versions(name)
        task = tasks[pid]
        assert (version.run_id, version.task_id, version.created_via) == (run["id"], task.id, "run")
        assert [o.version_id for o in task.outputs] == [version.version_id]
        assert [o.digest for o in task.outputs] == [version.digest]
        if data is not None:
            assert db_world.read(name) == data
        prov = db_world.out()[name].metadata["provenance"]
        assert prov["wasGeneratedBy"]["run"] == run["id"]
        assert prov["wasGeneratedBy"]["task"] == task.id
        assert prov["wasGeneratedBy"]["step"] == task.step
        derived = {(d["folder"], d["name"], d["version"], d["digest"]) for d in prov["wasDerivedFrom"]}
        sources = ["a.txt"] if name.startswith("a.") else sorted(inputs)
        assert derived == {("Raw", n, inputs[n].version, inputs[n].digest) for n in sources}
    assert json.loads(db_world.read("a.count.json")) == {"words": 2, "chars": 11}
    assert json.loads(db_world.read("total.json")) == {"items": 3, "words": 7}


def test_cached_tasks_publish_into_a_new_destination(db_world: World) -> None:
    fill(db_world)
    db_world.run(BASIC)
    db_world.home.store.create_folder(db_world.admin, "Elsewhere")
    run = db_world.run(BASIC, dest="Elsewhere")
    assert db_world.status_counts(run["id"]) == {"cached": 7}
    tasks = db_world.tasks(run["id"])
    (version,) = db_world.versions("a.count.json", folder="Elsewhere")
    assert (version.run_id, version.task_id) == (run["id"], tasks["count[Raw/a.txt]"].id)
    assert db_world.read("total.json", folder="Elsewhere") == db_world.read("total.json")
