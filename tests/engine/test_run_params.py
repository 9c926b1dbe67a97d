"""A run's own parameters are stored once per distinct set too (``runs.params_digest``, ``params_meta``).

The run row names the set of the parameters the user gave and each step's share of them
(:func:`datamill.engine.paramsets.run_params`); a big table is one set however many runs use it.
Every reader still sees the run's parameters as recorded, and an unchanged re-run after the upgrade
(0016) is still a copy of the earlier run.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
from sqlalchemy import text

from datamill.canonical import Unkeyable, canonical_json, canonical_value
from datamill.engine import keys, paramsets, replay
from datamill.engine.params import RunParams, split_params
from datamill.engine.planner import OutputDigest, plan
from datamill.pipeline.loader import load_pipeline
from tests.helpers import migrate_to

from .engine_world import World
from .pipelines import ref
from .test_replay import queued_data

LOOKUPS = ref("lookups")
#: a lookup table of about 330 KiB of JSON
TABLE = {f"i{i:03}": f"entry {i}" for i in range(3)} | {f"pad{i:05}": "p" * 30 for i in range(8000)}
#: what the run records for ``params={"table": TABLE}``: both steps take ``table``
RECORDED = {"user": {"table": TABLE}, "steps": {"look_up": {"table": TABLE}, "label": {"table": TABLE}}}


def _row_params_bytes(world: World, run_id: int) -> int:
    """Bytes of a run row's parameter columns as the database stores them."""
    with world.home.db.read() as conn:
        meta = "CAST(params_meta AS TEXT)" if conn.dialect.name == "postgresql" else "params_meta"
        q = text(f"SELECT coalesce(length(params_digest), 0) + length({meta}) FROM runs WHERE id = :r")
        return int(conn.execute(q, {"r": run_id}).scalar_one())


def _sets(world: World) -> tuple[int, int]:
    """``(rows, bytes)`` of the ``params`` table."""
    with world.home.db.read() as conn:
        rows, size = conn.execute(text("SELECT count(*), coalesce(sum(length(data)), 0) FROM params")).one()
    return int(rows), int(size)


def test_a_runs_big_parameter_is_stored_once_not_in_each_run_row(db_world: World) -> None:
    w = db_world
    size = len(paramsets.encode({"table": TABLE})[1])  # type: ignore[index]
    runs: list[dict[str, Any]] = []
    for i in range(3):  # as a trigger does: a run per landed item, each with the same parameters
        w.put(f"i{i:03}.txt", f"item {i}")
        runs.append(w.run(LOOKUPS, params={"table": TABLE}))
        assert runs[-1]["status"] == "succeeded", runs[-1]
        if i == 0:
            first = _sets(w)
    # The run's set, its steps' and look_up's resolved one are one set; label's ({"mark": ""} more)
    # the other: two sets, however many runs.
    assert first[0] == 2 and first[1] < 2 * size + 100
    assert _sets(w) == first
    for run in runs:
        assert _row_params_bytes(w, run["id"]) < 400  # was twice the table (user and steps) per run
        assert run["params"] == RECORDED
    assert w.read("i002.label.txt") == b"item 2=entry 2 of 8003"


def test_every_reader_sees_the_run_params_as_recorded(db_world: World) -> None:
    w = db_world
    w.put("i001.txt", "item 1")
    # Recorded without a scheduler: the one that drives it plans it from the recorded parameters.
    run_id = w.submit(LOOKUPS, params={"label.mark": "!", "table": TABLE})
    done = w.run_submitted(run_id)
    assert done["status"] == "succeeded", done
    assert w.read("i001.label.txt") == b"item 1=entry 1 of 8003!"
    recorded = {
        "user": {"label.mark": "!", "table": TABLE},
        "steps": {"label": {"mark": "!", "table": TABLE}, "look_up": {"table": TABLE}},
    }
    assert w.engine.get_run(w.admin, run_id).params == recorded
    assert [r.params for r in w.engine.list_runs(w.admin) if r.id == run_id] == [recorded]
    # `why` plans the run again from them: the key parts hash the same parameters.
    label = w.tasks(run_id)["label[Raw/i001.txt]"]
    assert w.engine.why(w.admin, label.id).parts["params"] == {"table": TABLE, "mark": "!"}
    # A retry submits the parameters the user gave again.
    w.put("i002.txt", "item 2")
    cancelled = w.submit(LOOKUPS, params={"label.mark": "?", "table": {"i002": "two"}})
    w.engine.cancel(w.admin, cancelled)
    assert w.run_submitted(cancelled)["status"] == "cancelled"
    again = w.run_submitted(w.engine.retry(w.admin, cancelled))
    assert again["status"] == "succeeded" and again["params"]["user"] == {"label.mark": "?", "table": {"i002": "two"}}
    assert w.read("i002.label.txt") == b"item 2=two of 1?"


def test_an_unchanged_rerun_after_the_upgrade_is_still_a_copy(db_world: World) -> None:
    w = db_world
    for i in range(3):
        w.put(f"i{i:03}.txt", f"item {i}")
    first = w.run(LOOKUPS, params={"table": TABLE})
    assert first["status"] == "succeeded"
    # As a database recorded before 0016 is upgraded: down to 0015 (runs.params back) and up again.
    migrate_to(w.home.db, "0015_params", down=True)
    migrate_to(w.home.db, "head")
    assert w.engine.get_run(w.admin, first["id"]).params == RECORDED
    second = w.run(LOOKUPS, params={"table": TABLE})
    assert queued_data(w, second["id"])["replay_of"] == first["id"]
    assert second["counts"] == {"cached": 6}
    keys = {pid: t.key for pid, t in w.tasks(first["id"]).items()}
    assert {pid: t.key for pid, t in w.tasks(second["id"]).items()} == keys
    # Planned rather than copied (forced), the keys are the same too.
    forced = w.run(LOOKUPS, params={"table": TABLE}, force=True)
    assert {pid: t.key for pid, t in w.tasks(forced["id"]).items()} == keys


def test_the_encoder_writes_each_set_as_canonical_json_encoding_each_value_once() -> None:
    table = {"b": [1, 2.5, {"z": None, "y": "é"}], "a": "x" * 1000}
    given = {"table": table, "n": 1, "tag": ("a", "b")}
    enc = paramsets.Encoder()
    # Checked copies (as resolve_params makes them): the container's shares the given one's text;
    # the int given for a float parameter does not (its text changes).
    checked = {"table": canonical_value(table), "n": 1.0, "tag": ["a", "b"]}
    for name, value in given.items():
        enc.same(value, checked[name])
    for params in (given, checked, {"table": table}, {"other": checked["table"], "tag": given["tag"]}):
        assert enc.encode(params) == paramsets.encode(params)
        assert enc.canonical_text(params) == canonical_json(canonical_value(params))
    assert enc.encoded < len(canonical_json(table)) + 100  # the table once, however many sets hold it
    assert enc.encode({}) is None
    # No canonical form: stored as paramsets.encode stores it; never a key part.
    assert enc.encode({"x": math.nan}) == paramsets.encode({"x": math.nan})
    with pytest.raises(Unkeyable):
        enc.canonical_text({"x": math.nan})
    with pytest.raises(Unkeyable):
        enc.canonical_text({1: "a"})  # type: ignore[dict-item]


def test_keys_and_plan_identity_made_from_the_encoded_params_are_byte_identical(world: World) -> None:
    for i in range(3):
        world.put(f"i{i:03}.txt", f"item {i}")
    p = load_pipeline(LOOKUPS)
    inputs = world.inputs()
    given = {"table": TABLE, "label.mark": "!"}
    rp = RunParams(p, given)
    assert rp.steps == split_params(p, given)
    plain, made = plan(p, inputs, rp.steps), plan(p, inputs, rp.steps, run_params=rp)
    assert [t.key for t in made.tasks] == [t.key for t in plain.tasks]
    assert all(t.key for t in made.tasks if t.step == "look_up")
    # The keys of a step reached later (label, once look_up's outputs are known) too.
    ups = {
        t.id: [OutputDigest("return.txt", f"blake3:{i:064}", 1, "text/plain", "")] for i, t in enumerate(plain.tasks)
    }
    for t in plain.tasks:
        if t.step == "label":
            assert (
                made.key_for(t.id, ups)
                == plain.key_for(t.id, ups)
                == keys.task_key(t.step, t.step_code, t.params, plain.input_digests(t, ups), t.image_digest)
            )
    assert replay.plan_identity(p, made.inputs, rp.steps, {}, "Raw", 7, rp) == replay.plan_identity(
        p, made.inputs, rp.steps, {}, "Raw", 7
    )
    # The table was checked once per step that takes it and encoded once for all of it.
    assert rp.encoder.encoded < len(canonical_json(TABLE)) + 1000


MUTATING = ref("mutating")


@pytest.mark.parametrize("executor", ["inline", "local"])
@pytest.mark.parametrize(
    ("params", "answer"),
    [({"seen": ["given"]}, b"2 1"), ({"notes": {"given": 0}}, b"1 2"), ({}, b"1 1")],
    ids=["list", "dict", "defaults"],
)
def test_a_step_that_changes_its_parameters_changes_no_other_call(
    world: World, executor: str, params: dict[str, Any], answer: bytes
) -> None:
    """``keeps_notes`` appends to its list parameter and sets a key in its dict parameter: every call
    gets values of its own, so each answer is the same, in this process (inline) as in a worker
    that runs all the calls one after the other (the local pool with one worker); the plan's values
    and the step's defaults stay as given, so an unchanged re-run is all cached."""
    stems = [f"i{i}" for i in range(8)]
    for stem in stems:
        world.put(f"{stem}.txt", stem)
    workers = {"workers": 1} if executor == "local" else {}
    first = world.run(MUTATING, executor=executor, params=params, **workers)
    assert first["status"] == "succeeded", first
    assert {s: world.read(f"{s}.keeps_notes.txt") for s in stems} == dict.fromkeys(stems, answer)
    assert load_pipeline(MUTATING).step("keeps_notes").params == {"seen": [], "notes": {}}
    again = world.run(MUTATING, executor=executor, params=params, **workers)
    assert world.status_counts(again["id"]) == {"cached": len(stems)}  # the keys still describe what ran


def test_each_call_gets_values_of_its_own_and_shares_only_immutable_ones() -> None:
    """``call_params``: immutable values are shared as they are; a flat container is copied; a nested
    one comes whole and new for each call (a value two parameters share stays one value in a call);
    the step's defaults and the given mapping are never changed through a call's values."""
    from datamill.pipeline.callparams import call_params

    shared = ["x"]
    defaults = {"n": 1, "label": "a", "pair": (1, ("b", 2.0)), "rows": [{"k": [1]}], "flags": set()}
    given = {"n": 2, "table": {"a": "1"}, "left": shared, "right": shared, "raw": bytearray(b"ab")}
    calls = [call_params(defaults, given) for _ in range(3)]
    for params in calls:
        assert params == {**defaults, **given}
        assert params["label"] is defaults["label"] and params["pair"] is defaults["pair"]
        params["rows"][0]["k"].append(2)
        params["table"]["b"] = "2"
        params["left"].append("y")
        params["flags"].add("f")
        params["raw"] += b"c"
        assert params["right"] == ["x", "y"] and params["right"] is params["left"]
    assert defaults == {"n": 1, "label": "a", "pair": (1, ("b", 2.0)), "rows": [{"k": [1]}], "flags": set()}
    assert given == {"n": 2, "table": {"a": "1"}, "left": ["x"], "right": ["x"], "raw": bytearray(b"ab")}
    assert calls[0]["rows"][0]["k"] is not calls[1]["rows"][0]["k"]
    # The values of a mapping replaced since its last call: the call gets (copies of) the new ones.
    given["table"] = {"c": "3"}
    assert call_params(defaults, given)["table"] == {"c": "3"}
    # A value that cannot be pickled (a lambda in a list) is deep-copied; one that cannot be copied
    # either (a lock) is passed as it is: never a run's parameter, as those are plain JSON data.
    lock, fns = threading.Lock(), [lambda: 1, [1]]
    made = call_params({}, {"fns": fns, "lock": lock})
    assert made["lock"] is lock and made["fns"] == fns and made["fns"] is not fns and made["fns"][1] is not fns[1]
