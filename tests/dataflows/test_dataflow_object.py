"""The Dataflow object: creating with every field, validation, versions, deletion and who may see what."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from datamill.dataflows.dataflow import Trigger
from datamill.engine.registry import Pipelines
from datamill.errors import Conflict, InvalidDataflow, NotFound, PermissionDenied
from datamill.store.access import Level
from tests.helpers import DEST, SOURCE

from .flow_pipelines import ref
from .flow_world import FlowWorld

EVERY_FIELD: dict[str, Any] = {
    "description": "Echo every **raw** file.",
    "kind": "workflow",
    "source": SOURCE,
    "destination": DEST,
    "topic": "raw-files",
    "pipeline": ref("echo_pipeline"),
    "params": {"echo.prefix": "v9"},
    "trigger": "cron:*/5 * * * *",
    "webhooks": ["http://127.0.0.1:9/hook", "https://example.org/hook"],
    "batch_window_ms": 250,
}


def test_create_with_every_field(db_world: FlowWorld) -> None:
    w = db_world
    info = w.flows.create(w.admin, "every-field", EVERY_FIELD)
    assert info.name == "every-field"
    assert (info.kind, info.state, info.version, info.owner) == ("workflow", "stopped", 1, "admin")
    assert info.description == EVERY_FIELD["description"]
    assert (info.source, info.destination, info.topic) == (SOURCE, DEST, "raw-files")
    assert info.pipeline == ref("echo_pipeline")
    assert info.params == {"echo.prefix": "v9"}
    assert info.trigger == "cron:*/5 * * * *"
    assert info.webhooks == EVERY_FIELD["webhooks"]
    assert info.batch_window_ms == 250
    assert info.created_at == info.updated_at > 0
    assert info.next_fire_times == []  # stopped: nothing is scheduled

    assert w.flows.get(w.admin, "every-field").to_dict() == info.to_dict()
    assert [f.name for f in w.flows.all(w.admin)] == ["every-field"]
    (v1,) = w.flows.history(w.admin, "every-field")
    assert v1["version"] == 1 and v1["created_by"] == "admin" and v1["runs"] == []
    assert {k: v1["config"][k] for k in EVERY_FIELD} == EVERY_FIELD
    assert [e.data for e in w.events("dataflow.created")] == [{"name": "every-field", "version": 1}]

    running = w.flows.set_state(w.admin, "every-field", "running")
    assert running.state == "running"
    assert len(running.next_fire_times) == 3 and all(t % 300 == 0 for t in running.next_fire_times)


def test_defaults_and_paths_are_normalised(world: FlowWorld) -> None:
    info = world.flows.create(
        world.admin, "minimal", {"source": f"/{SOURCE}/", "destination": DEST, "pipeline": ref("echo_pipeline")}
    )
    assert (info.kind, info.trigger, info.source, info.params, info.webhooks) == (
        "workflow",
        "new-items",
        SOURCE,
        {},
        [],
    )
    assert info.batch_window_ms is None  # the setting applies


@pytest.fixture
def not_importable(tmp_path: Path) -> str:
    path = tmp_path / "broken_pipeline.py"
    path.write_text("import no_such_module_for_datamill_tests\n")
    return f"{path}:pipeline"


INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    ("missing source", {"source": "Nope"}, ["source", "'Nope' does not exist", "create it first"]),
    ("missing destination", {"destination": "Nowhere"}, ["destination", "'Nowhere' does not exist"]),
    ("no source", {"source": ""}, ["source", "required"]),
    ("destination is the source", {"destination": SOURCE}, ["lies inside the source", "Choose a destination"]),
    ("destination inside the source", {"destination": f"{SOURCE}/derived"}, ["'Raw/derived' lies inside"]),
    ("no pipeline", {"pipeline": ""}, ["pipeline", "required"]),
    ("pipeline file missing", {"pipeline": "/no/such/file.py:pipeline"}, ["pipeline", "/no/such/file.py"]),
    ("pipeline does not import", {"pipeline": "NOT_IMPORTABLE"}, ["pipeline", "no_such_module_for_datamill_tests"]),
    ("unknown parameter", {"params": {"nope": 1}}, ["params", "'nope'", "echo.prefix"]),
    ("parameter of the wrong type", {"params": {"echo.prefix": 3}}, ["params", "prefix"]),
    ("bad cron", {"trigger": "cron:61 * * * *"}, ["'61 * * * *' is not a cron expression", "five fields"]),
    ("unknown trigger", {"trigger": "hourly"}, ["'hourly' is not a trigger", "new-items"]),
    ("unknown field", {"colour": "red"}, ["unknown field(s) colour", "known:"]),
    ("unknown kind", {"kind": "batch"}, ["kind", "'batch'"]),
    ("stream kind with a source and pipeline", {"kind": "stream"}, ["stream dataflow has no", "pipeline, source"]),
    ("webhook not http", {"webhooks": ["ftp://example.org/x"]}, ["webhooks", "not an http(s) URL"]),
    ("negative window", {"batch_window_ms": -1}, ["batch_window_ms", "0 to 60000"]),
]


@pytest.mark.parametrize(("case", "change", "phrases"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_configurations_are_refused_with_clear_messages(
    world: FlowWorld, not_importable: str, case: str, change: dict[str, Any], phrases: list[str]
) -> None:
    world.home.store.create_folder(world.admin, f"{SOURCE}/derived")
    cfg = {"source": SOURCE, "destination": DEST, "pipeline": ref("echo_pipeline")}
    cfg.update({k: (not_importable if v == "NOT_IMPORTABLE" else v) for k, v in change.items()})
    with pytest.raises(InvalidDataflow) as info:
        world.flows.create(world.admin, "bad", cfg)
    for phrase in phrases:
        assert phrase in info.value.message, info.value.message
    assert info.value.status == 400
    # Nothing was saved.
    assert world.flows.all(world.admin) == []
    assert world.events("dataflow.created") == []


def test_edit_is_validated_too(world: FlowWorld) -> None:
    world.create()
    with pytest.raises(InvalidDataflow, match="lies inside the source"):
        world.flows.edit(world.admin, "flow", {"destination": SOURCE})
    with pytest.raises(InvalidDataflow, match="not a cron expression"):
        world.flows.edit(world.admin, "flow", {"trigger": "cron:every day"})
    assert world.flows.get(world.admin, "flow").version == 1


def test_bad_names_are_refused(world: FlowWorld) -> None:
    for name in ("", "-lead", "has space", "a/b", "x" * 101):
        with pytest.raises(InvalidDataflow, match="not allowed"):
            world.create(name)
    world.create("ok-name_1.2")
    with pytest.raises(Exception, match="exists"):
        world.create("ok-name_1.2")


def test_cron_trigger_next_fire_times() -> None:
    t = Trigger.parse("cron:*/5 * * * *")
    assert str(t) == "cron:*/5 * * * *"
    assert t.next_fire(1767225600.0, 3) == [1767225900.0, 1767226200.0, 1767226500.0]
    assert t.next_fire(1767225900.0) == [1767226200.0]  # strictly after
    assert Trigger.parse("manual").next_fire(0) == []
    assert Trigger.parse(" new-items ").kind == "new-items"


# ------------------------------------------------------------------------------ versions


def test_each_edit_is_a_new_immutable_version(db_world: FlowWorld) -> None:
    w = db_world
    w.create(description="first")
    assert w.flows.edit(w.admin, "flow", {"description": "second"}).version == 2
    assert w.flows.edit(w.admin, "flow", {"description": "second"}).version == 2  # unchanged: no new version
    third = w.flows.edit(w.admin, "flow", {"trigger": "manual", "params": {"prefix": "v3"}})
    assert (third.version, third.trigger, third.params, third.description) == (3, "manual", {"prefix": "v3"}, "second")

    history = w.flows.history(w.admin, "flow")
    assert [h["version"] for h in history] == [1, 2, 3]
    assert [h["config"]["description"] for h in history] == ["first", "second", "second"]
    assert [h["config"]["trigger"] for h in history] == ["new-items", "new-items", "manual"]
    assert history[0]["config"]["params"] == {}
    updated = w.events("dataflow.updated")
    assert [(e.data["version"], e.data["changed"]) for e in updated] == [
        (2, ["description"]),
        (3, ["params", "trigger"]),
    ]
    with w.home.db.read() as conn:
        assert w.flows.version_config(conn, w.flow_row().id, 1)["description"] == "first"


def test_runs_record_the_version_they_used(world: FlowWorld) -> None:
    w = world
    w.create()
    w.start()
    w.put("a.txt", "A")
    (first,) = w.poll()
    w.drive()
    w.flows.edit(w.admin, "flow", {"params": {"prefix": "v2"}})
    (second,) = w.poll()  # the new configuration covers what is already there
    w.put("b.txt", "B")
    (third,) = w.poll(w.clock.now + 1)
    w.drive()
    assert [w.run(r)["dataflow_version"] for r in (first, second, third)] == [1, 2, 2]
    history = w.flows.history(w.admin, "flow")
    assert [[r["id"] for r in h["runs"]] for h in history] == [[first], [second, third]]
    assert all(r["status"] == "succeeded" for h in history for r in h["runs"])
    assert w.read("a.echo.bin") == b"v2:A" and w.read("b.echo.bin") == b"v2:B"
    assert [v.run_id for v in w.versions("a.echo.bin")] == [first, second]
    meta = w.out()["b.echo.bin"].metadata
    assert meta["dataflow"] == "flow"
    assert meta["provenance"]["wasGeneratedBy"]["dataflow_version"] == 2


# ------------------------------------------------------------------------------ state and deletion


def test_start_is_idempotent_and_rm_is_refused_while_running(world: FlowWorld) -> None:
    w = world
    w.create()
    w.start()
    w.start()
    assert len(w.events("dataflow.started")) == 1
    with pytest.raises(Conflict) as info:
        w.flows.delete(w.admin, "flow")
    assert "running" in info.value.message and "stop it first" in info.value.message
    assert w.flows.get(w.admin, "flow").state == "running"
    w.stop()
    w.flows.delete(w.admin, "flow")
    with pytest.raises(NotFound):
        w.flows.get(w.admin, "flow")
    assert [e.data["name"] for e in w.events("dataflow.deleted")] == ["flow"]
    w.create("again")
    with pytest.raises(InvalidDataflow, match="not one of"):
        w.flows.set_state(w.admin, "again", "paused")


# ------------------------------------------------------------------------------ permissions


def test_a_user_cannot_create_a_dataflow_writing_where_they_cannot_write(world: FlowWorld) -> None:
    w = world
    bob = w.user("bob")
    # Nothing shared: the folders do not even exist for bob.
    with pytest.raises(InvalidDataflow, match="'Raw' does not exist"):
        w.create("bobs", actor=bob)
    w.home.store.share(w.admin, SOURCE, "bob", Level.READ)
    with pytest.raises(InvalidDataflow, match="destination: folder 'Out' does not exist"):
        w.create("bobs", actor=bob)
    w.home.store.share(w.admin, DEST, "bob", Level.READ)
    with pytest.raises(PermissionDenied) as info:
        w.create("bobs", actor=bob)
    assert "write access on 'Out'" in info.value.message
    assert w.flows.all(w.admin) == []

    w.home.store.create_folder(bob, "Bob Out")
    # bob is no site admin: he chooses a registered pipeline by name.
    Pipelines(w.home.db).add(w.admin, "echo", ref("echo_pipeline"))
    info_ok = w.create("bobs", actor=bob, destination="Bob Out", pipeline="echo")
    assert info_ok.owner == "bob"
    # Read access on a source is enough; write access on it is not needed.
    w.home.store.share(w.admin, DEST, "bob", Level.WRITE)
    assert w.flows.edit(bob, "bobs", {"destination": DEST}).destination == DEST


def test_a_user_without_access_cannot_see_anothers_dataflow(world: FlowWorld) -> None:
    w = world
    carol = w.user("carol")
    w.create("private")
    assert w.flows.all(carol) == []
    for call in (
        lambda: w.flows.get(carol, "private"),
        lambda: w.flows.history(carol, "private"),
        lambda: w.flows.set_state(carol, "private", "running"),
        lambda: w.flows.edit(carol, "private", {"description": "mine"}),
        lambda: w.flows.delete(carol, "private"),
    ):
        with pytest.raises(NotFound) as info:
            call()
        assert "no dataflow 'private'" in info.value.message
    # Read access on its destination lets carol see it, not change it.
    w.home.store.share(w.admin, DEST, "carol", Level.READ)
    assert [f.name for f in w.flows.all(carol)] == ["private"]
    assert w.flows.get(carol, "private").owner == "admin"
    with pytest.raises(PermissionDenied, match="owner"):
        w.flows.set_state(carol, "private", "running")
    assert w.flows.get(w.admin, "private").state == "stopped"
