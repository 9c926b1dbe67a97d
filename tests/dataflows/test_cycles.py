"""Dataflows may not feed on each other's results in a cycle: refused at save and at start, stopped if found running.

Issue 8, item 13: ``A -> B`` and ``B -> A`` both started, and one file became hundreds of runs
with names growing until publishing failed.
"""

from __future__ import annotations

import pytest
from sqlalchemy import update

from datamill.db.models import Dataflow
from datamill.engine.registry import Pipelines
from datamill.errors import Conflict, InvalidDataflow
from datamill.store.access import Level
from tests.helpers import DEST, SOURCE

from .flow_pipelines import ref
from .flow_world import FlowWorld


def folders(w: FlowWorld, *paths: str) -> None:
    for path in paths:
        w.home.store.create_folder(w.admin, path, exist_ok=True)


def test_a_dataflow_closing_a_cycle_with_a_running_one_is_refused_at_save(db_world: FlowWorld) -> None:
    w = db_world
    w.create("a")  # Raw -> Out
    w.start("a")
    with pytest.raises(InvalidDataflow) as info:
        w.create("b", source=DEST, destination=SOURCE)
    msg = info.value.message
    assert "cycle" in msg and "'b' → 'a' → 'b'" in msg, msg
    assert "'b' writes into 'Raw', which 'a' watches" in msg, msg
    assert "'a' writes into 'Out', which 'b' watches" in msg, msg
    assert "Choose a destination" in msg
    assert [f.name for f in w.flows.all(w.admin)] == ["a"]  # nothing saved

    # An edit that would close the cycle is refused the same way; the version stays.
    folders(w, "Other")
    w.create("b", source=DEST, destination="Other")
    with pytest.raises(InvalidDataflow, match="cycle"):
        w.flows.edit(w.admin, "b", {"destination": SOURCE})
    assert w.flows.get(w.admin, "b").version == 1


def test_the_second_of_two_stopped_dataflows_in_a_cycle_is_refused_at_start(db_world: FlowWorld) -> None:
    w = db_world
    w.create("a")
    w.create("b", source=DEST, destination=SOURCE)  # neither runs: no cycle yet
    w.start("a")
    with pytest.raises(Conflict) as info:
        w.start("b")
    msg = info.value.message
    assert "cannot start dataflow 'b'" in msg and "'b' → 'a' → 'b'" in msg, msg
    assert "Stop one of the others first" in msg
    assert w.flow_row("b").state == "stopped"
    w.stop("a")
    assert w.start("b").state == "running"  # with 'a' stopped there is no cycle
    with pytest.raises(Conflict, match="'a' → 'b' → 'a'"):
        w.start("a")


def test_a_longer_cycle_through_subfolders_is_refused(world: FlowWorld) -> None:
    w = world
    folders(w, "X", "X/in", "Y", "Y/sub", "Z")
    w.create("a", source="X", destination="Y")
    w.create("b", source="Y/sub", destination="Z")  # a's results may be published into Y/sub
    w.start("a")
    w.start("b")
    with pytest.raises(InvalidDataflow) as info:
        w.create("c", source="Z", destination="X/in")  # a destination inside a's source counts
    msg = info.value.message
    assert "'c' → 'a' → 'b' → 'c'" in msg, msg
    assert "'c' writes into 'X/in', which 'a' watches ('X')" in msg, msg
    assert "'a' writes into 'Y', which 'b' watches ('Y/sub')" in msg, msg


def test_a_dataflow_feeding_itself_is_still_refused(world: FlowWorld) -> None:
    with pytest.raises(InvalidDataflow, match="lies inside the source"):
        world.create("self", destination=SOURCE)


def test_chains_and_fan_outs_without_a_cycle_are_accepted(db_world: FlowWorld) -> None:
    w = db_world
    folders(w, "Z", "W", "Out/plots")
    w.create("a")  # Raw -> Out
    w.create("b", source=DEST, destination="Z")
    w.create("c", source="Z", destination="W")
    w.create("d", source="Out/plots", destination="W")
    w.create("e", source=SOURCE, destination="Z")  # a second reader of Raw
    for name in "abcde":
        assert w.start(name).state == "running"


def test_the_message_does_not_name_what_the_caller_may_not_see(world: FlowWorld) -> None:
    w = world
    ana = w.user("ana")
    folders(w, "P", "Q", "H1", "H2")
    for path in ("P", "Q"):
        w.home.store.share(w.admin, path, "ana", Level.WRITE)
    w.create("visible-in", source="Q", destination="H1")
    w.create("secret-middle", source="H1", destination="H2")
    w.create("visible-out", source="H2", destination="P")
    for name in ("visible-in", "secret-middle", "visible-out"):
        w.start(name)
    Pipelines(w.home.db).add(w.admin, "echo", ref("echo_pipeline"))  # ana chooses it by name
    with pytest.raises(InvalidDataflow) as info:
        w.create("anas", actor=ana, source="P", destination="Q", pipeline="echo")
    msg = info.value.message
    assert "'anas' → 'visible-in' → a dataflow you cannot see → 'visible-out' → 'anas'" in msg, msg
    assert "secret" not in msg and "H1" not in msg and "H2" not in msg, msg
    assert "a folder you cannot see" in msg


def test_a_cycle_saved_before_the_check_is_stopped_by_the_triggers(world: FlowWorld) -> None:
    w = world
    folders(w, "Other")
    w.create("a")
    w.create("b", source=DEST, destination="Other")
    w.start("a")
    w.start("b")
    # As a home from before the check could hold it: 'b' writes into Raw, which 'a' watches.
    with w.home.db.write() as conn:
        row = w.flow_row("b")
        conn.execute(update(Dataflow).where(Dataflow.id == row.id).values(config={**row.config, "destination": SOURCE}))
    w.put("x.txt", "hello")
    w.poll()
    states = {name: w.flow_row(name).state for name in ("a", "b")}
    assert sorted(states.values()) == ["failed", "running"], states
    failed = next(name for name, state in states.items() if state == "failed")
    assert "cycle" in (w.flow_row(failed).state_reason or "")
