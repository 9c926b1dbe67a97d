"""A step's parameters are stored once per distinct set, however many tasks use them.

The sets live in the ``params`` table under their digest (:mod:`datamill.engine.paramsets`); each
task names its set. What reads a task (the task view, provenance) still shows its parameters, and
task keys are what they were (the key hashes the parameters themselves, not the digest).
"""

from __future__ import annotations

import math

import pytest
from sqlalchemy import text

from datamill.engine import keys, paramsets
from datamill.provenance import Lineage
from datamill.provenance.records import read_run

from .engine_world import DEST, World
from .pipelines import ref

LOOKUPS = ref("lookups")
ITEMS = 12
#: a lookup table of about 400 KiB of JSON: more than a worker of the local pool is sent per call
TABLE = {f"i{i:03}": f"entry {i} " + "v" * 30 for i in range(ITEMS)} | {f"pad{i:05}": "p" * 30 for i in range(8000)}


def _db_size(world: World) -> tuple[int, int]:
    """``(rows, bytes)`` of the ``params`` table."""
    with world.home.db.read() as conn:
        rows, size = conn.execute(text("SELECT count(*), coalesce(sum(length(data)), 0) FROM params")).one()
    return int(rows), int(size)


@pytest.mark.parametrize("executor", ["inline", "local"])
def test_a_big_parameter_is_stored_once_and_every_reader_still_sees_it(db_world: World, executor: str) -> None:
    for i in range(ITEMS):
        db_world.put(f"i{i:03}.txt", f"item {i}")
    run = db_world.run(LOOKUPS, executor=executor, params={"table": TABLE})
    assert run["status"] == "succeeded", run
    assert db_world.read("i003.label.txt") == f"item 3=entry 3 {'v' * 30} of {len(TABLE)}".encode()
    tasks = db_world.tasks(run["id"])
    assert len(tasks) == 2 * ITEMS
    # One row for the table (both steps have the same resolved parameters: {"table": ..., } and
    # {"table": ..., "mark": ""}, two sets), not one per task.
    rows, size = _db_size(db_world)
    assert rows == 2
    assert size < 3 * len(paramsets.encode({"table": TABLE})[1])  # type: ignore[index]
    assert {t.params_digest for t in tasks.values() if t.step == "look_up"} == {
        paramsets.encode({"table": TABLE})[0]  # type: ignore[index]
    }
    # The task view, as the API and `datamill tasks` show it.
    one = db_world.engine.task(db_world.admin, tasks["label[Raw/i003.txt]"].id)
    assert one.params == {"table": TABLE, "mark": ""}
    assert "params_digest" not in one.to_dict()
    assert all(t.params["table"] == TABLE for t in tasks.values())
    # Keys hash the parameters themselves, as before the sets had their own table (`datamill why`).
    for t in (tasks["look_up[Raw/i000.txt]"], tasks["label[Raw/i000.txt]"]):
        why = db_world.engine.why(db_world.admin, t.id)
        assert why.parts["params"] == t.params
        assert keys.key_from_parts(why.parts) == t.key
    # Provenance of an output and of the run.
    crate = read_run(db_world.home.db, db_world.admin, run["id"])
    assert all(crate.params_of(t)["table"] == TABLE for t in crate.tasks)
    # An unchanged re-run is answered from the cache, and adds no parameter set.
    again = db_world.run(LOOKUPS, executor=executor, params={"table": TABLE})
    assert again["counts"] == {"cached": 2 * ITEMS}
    assert _db_size(db_world) == (rows, size)
    assert all(t.params["table"] == TABLE for t in db_world.tasks(again["id"]).values())


def test_a_set_changed_in_one_value_is_a_new_set_and_new_keys(world: World) -> None:
    world.put("i000.txt", "item 0")
    first = world.run(LOOKUPS, params={"table": {"i000": "a"}})
    second = world.run(LOOKUPS, params={"table": {"i000": "b"}})
    assert world.read("i000.label.txt") == b"item 0=b of 1"
    a, b = world.tasks(first["id"]), world.tasks(second["id"])
    assert a["look_up[Raw/i000.txt]"].params == {"table": {"i000": "a"}}
    assert b["look_up[Raw/i000.txt]"].params == {"table": {"i000": "b"}}
    assert a["look_up[Raw/i000.txt]"].key != b["look_up[Raw/i000.txt]"].key
    assert second["counts"] == {"succeeded": 2}


def test_encode_names_a_set_by_its_canonical_json() -> None:
    assert paramsets.encode({}) is None
    one = paramsets.encode({"b": 1, "a": [1, 2.5, {"z": None, "y": "é"}]})
    assert one is not None
    assert one[1] == '{"a":[1,2.5,{"y":"é","z":null}],"b":1}'
    assert paramsets.encode({"a": [1, 2.5, {"y": "é", "z": None}], "b": 1}) == one
    assert one[0].startswith("blake3:") and len(one[0]) == len("blake3:") + 64
    assert paramsets.decode(one[1]) == {"b": 1, "a": [1, 2.5, {"z": None, "y": "é"}]}
    # A value with no canonical form (never part of a key) is still stored, and read back.
    nan = paramsets.encode({"x": math.nan})
    assert nan is not None and math.isnan(paramsets.decode(nan[1])["x"])


def test_tasks_without_parameters_name_no_set(world: World) -> None:
    world.put("a.txt", "words")
    run = world.run(ref("peritem"))  # parse(item, *, marks=""), then count(parse): no parameters
    assert run["status"] == "succeeded"
    tasks = world.tasks(run["id"])
    assert tasks["count[Raw/a.txt]"].params_digest is None and tasks["count[Raw/a.txt]"].params == {}
    assert tasks["parse[Raw/a.txt]"].params == {"marks": ""}
    assert _db_size(world)[0] == 1


def test_the_output_lineage_shows_the_task_parameters(world: World) -> None:
    world.put("i001.txt", "item 1")
    run = world.run(LOOKUPS, params={"table": {"i001": "one"}})
    assert run["status"] == "succeeded"
    graph = Lineage(world.home).upstream(world.admin, f"{DEST}/i001.label.txt")
    shown = {n.attrs["step"]: n.attrs["params"] for n in graph.nodes.values() if n.type == "task"}
    assert shown == {"look_up": {"table": {"i001": "one"}}, "label": {"table": {"i001": "one"}, "mark": ""}}
