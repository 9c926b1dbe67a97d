"""Publishing outputs: one input per published name (``same.csv`` and ``same.tsv`` do not share ``same.count.json``)."""

from __future__ import annotations

import json

from datamill.engine.registry import Pipelines
from datamill.store import users
from datamill.store.access import Level

from .engine_world import World
from .pipelines import ref

PERITEM = ref("peritem")


def test_two_inputs_with_one_output_name_in_one_run(db_world: World) -> None:
    w = db_world
    w.put("same.csv", "one two three")
    w.put("same.tsv", "four")
    plan = w.engine.plan(PERITEM, w.inputs()).to_dict()
    refused = {t["id"]: t["refused"] for t in plan["tasks"] if "refused" in t}
    assert set(refused) == {"parse[Raw/same.tsv]", "count[Raw/same.tsv]"}

    run = w.run(PERITEM)
    assert run["status"] == "failed"
    tasks = w.tasks(run["id"])
    assert {pid: t.status for pid, t in tasks.items()} == {
        "parse[Raw/same.csv]": "succeeded",
        "parse[Raw/same.tsv]": "failed",
        "count[Raw/same.csv]": "succeeded",
        "count[Raw/same.tsv]": "failed",
    }
    refused_task = tasks["count[Raw/same.tsv]"]
    assert refused_task.failure == "collision" and refused_task.attempts == 0  # refused, not run
    error = refused_task.error
    assert error is not None
    assert "'Raw/same.tsv'" in error and "'Raw/same.csv'" in error and "'same.count.json'" in error
    assert "rename one of the inputs" in error and "name_template" in error
    # The first input (in name order) keeps the names; nothing of the other one replaced them.
    assert sorted(w.out()) == ["same.count.json", "same.parse.txt"]
    assert json.loads(w.read("same.count.json")) == {"words": 3, "chars": 13}
    assert len(w.versions("same.count.json")) == 1
    w.check_fold()


def test_an_input_does_not_replace_the_output_of_another_input_of_an_earlier_run(db_world: World) -> None:
    w = db_world
    w.put("same.csv", "one two three")
    first = w.run(PERITEM)
    assert first["status"] == "succeeded"
    w.put("same.tsv", "four")
    only_tsv = [r for r in w.inputs() if r.name == "same.tsv"]
    second = w.engine.run(w.admin, PERITEM, only_tsv, source="Raw", dest="Out", executor="inline")
    assert second["status"] == "failed"
    tasks = w.tasks(second["id"])
    parse = tasks["parse[Raw/same.tsv]"]
    assert (parse.status, parse.failure) == ("failed", "collision")
    assert parse.error is not None
    assert "'Raw/same.tsv'" in parse.error and "'Raw/same.csv'" in parse.error
    assert "now 'Out/same.parse.txt'" in parse.error and "delete it first" in parse.error
    assert tasks["count[Raw/same.tsv]"].status == "failed"
    # The existing outputs are intact: one version each, from same.csv.
    assert json.loads(w.read("same.count.json")) == {"words": 3, "chars": 13}
    assert [len(w.versions(n)) for n in ("same.parse.txt", "same.count.json")] == [1, 1]

    # The input that owns the names goes on publishing new versions.
    w.put("same.csv", "five six")
    third = w.engine.run(
        w.admin, PERITEM, [r for r in w.inputs() if r.name == "same.csv"], source="Raw", dest="Out", executor="inline"
    )
    assert third["status"] == "succeeded"
    assert json.loads(w.read("same.count.json")) == {"words": 2, "chars": 8}
    w.check_fold()


def test_a_collision_names_the_other_input_only_to_who_may_read_it(db_world: World) -> None:
    w = db_world
    w.home.store.create_folder(w.admin, "Private")
    w.put("same.csv", "secret words", folder="Private")
    w.engine.run(w.admin, PERITEM, w.inputs("Private"), source="Private", dest="Out", executor="inline")
    with w.home.db.write() as conn:
        bob = users.create_user(conn, "bob")
    w.home.store.share(w.admin, "Out", "bob", Level.WRITE)
    w.home.store.share(w.admin, "Raw", "bob", Level.WRITE)
    w.put("same.tsv", "mine")
    Pipelines(w.home.db).add(w.admin, "peritem", PERITEM)  # bob chooses it by name
    run = w.engine.run(bob, "peritem", w.inputs(), source="Raw", dest="Out", executor="inline")
    parse = w.tasks(run["id"])["parse[Raw/same.tsv]"]
    assert parse.error is not None and "the output of another input" in parse.error
    assert "Private" not in parse.error
    assert w.read("same.parse.txt") == b"secret words"
