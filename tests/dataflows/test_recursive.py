"""Recursive ``new-items`` dataflows: items landed anywhere below the source fire them, and each output
lands in the destination's subfolder mirroring its item's.

Triggers are polled on a hand-moved clock and runs driven by an inline scheduler (nothing sleeps).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from datamill.dataflows import sources
from datamill.errors import InvalidDataflow
from datamill.store.access import Level
from tests.helpers import DEST, SOURCE, T0, open_home, serve

from .flow_pipelines import ref
from .flow_world import FlowWorld


def _folders(w: FlowWorld, *paths: str) -> None:
    for p in paths:
        w.home.store.create_folder(w.admin, p, parents=True, exist_ok=True)


def test_only_a_recursive_dataflow_sees_items_in_subfolders(db_world: FlowWorld) -> None:
    w = db_world
    _folders(w, f"{SOURCE}/run-7/deep", "Flat")
    w.create("flat", destination="Flat")
    w.create("tree", recursive=True)
    w.start("flat")
    w.start("tree")
    assert w.poll(T0) == []
    w.put("top.txt", "t")
    w.put("a.txt", "a", folder=f"{SOURCE}/run-7")
    w.put("b.txt", "b", folder=f"{SOURCE}/run-7/deep")
    runs = w.poll(T0 + 1)
    assert len(runs) == 2
    by_flow = {w.run(r)["dataflow_id"]: r for r in runs}
    flat_run = by_flow[w.flow_row("flat").id]
    tree_run = by_flow[w.flow_row("tree").id]
    assert w.run_inputs(flat_run) == ["top.txt"]
    assert sorted(f"{i['folder']}/{i['name']}" for i in w.run(tree_run)["inputs"]) == [
        f"{SOURCE}/run-7/a.txt",
        f"{SOURCE}/run-7/deep/b.txt",
        f"{SOURCE}/top.txt",
    ]
    w.drive()
    assert w.run(tree_run)["status"] == "succeeded"
    # Mirrored: the subfolders of the destination were created as needed.
    assert sorted(w.out()) == ["top.echo.bin"]
    assert w.read("a.echo.bin", folder=f"{DEST}/run-7") == b"v1:a"
    assert w.read("b.echo.bin", folder=f"{DEST}/run-7/deep") == b"v1:b"
    assert sorted(w.out("Flat")) == ["top.echo.bin"]
    # A later item in a subfolder made after the start fires only the recursive dataflow.
    _folders(w, f"{SOURCE}/run-8")
    w.put("c.txt", "c", folder=f"{SOURCE}/run-8")
    (again,) = w.poll(T0 + 2)
    assert w.run(again)["dataflow_id"] == w.flow_row("tree").id
    assert w.run_inputs(again) == ["c.txt"]
    w.drive()
    assert w.read("c.echo.bin", folder=f"{DEST}/run-8") == b"v1:c"
    assert w.poll(T0 + 3) == []


def test_start_backfills_the_whole_tree_and_same_names_do_not_collide(world: FlowWorld) -> None:
    w = world
    _folders(w, f"{SOURCE}/x", f"{SOURCE}/y/z")
    for folder in (SOURCE, f"{SOURCE}/x", f"{SOURCE}/y/z"):
        w.put("same.txt", folder, folder=folder)
    w.create(recursive=True)
    w.start()
    (run_id,) = w.poll(T0)
    assert len(w.run(run_id)["inputs"]) == 3
    w.drive()
    assert w.run(run_id)["status"] == "succeeded"
    # One name in three folders: three outputs, one per mirrored subfolder (no collision).
    for folder in (DEST, f"{DEST}/x", f"{DEST}/y/z"):
        assert w.read("same.echo.bin", folder=folder) == f"v1:{folder.replace(DEST, SOURCE, 1)}".encode()
    # Started again: everything is done under this configuration.
    w.stop()
    w.start()
    assert w.poll(T0 + 10) == []


def test_an_aggregate_step_sees_the_whole_tree_and_publishes_at_the_top(world: FlowWorld) -> None:
    w = world
    _folders(w, f"{SOURCE}/sub")
    w.put("a.txt", "a")
    w.put("b.txt", "b", folder=f"{SOURCE}/sub")
    w.create(recursive=True, pipeline=ref("echo_all"))
    w.start()
    (run_id,) = w.poll(T0)
    w.drive()
    assert w.run(run_id)["status"] == "succeeded"
    assert "a.echo.bin" in w.out()
    assert "b.echo.bin" in w.out(f"{DEST}/sub")
    # The aggregate output (no item of its own) lands at the top of the destination.
    assert [n for n in w.out() if "listing" in n]


def test_flow_run_covers_subfolders(world: FlowWorld) -> None:
    w = world
    _folders(w, f"{SOURCE}/s")
    w.put("a.txt", "a", folder=f"{SOURCE}/s")
    w.create(recursive=True, trigger="manual")
    run_id = w.triggers.run_now("flow", w.admin)
    assert run_id is not None
    w.drive()
    assert w.read("a.echo.bin", folder=f"{DEST}/s") == b"v1:a"


def test_recursive_is_validated_shown_and_editable(world: FlowWorld) -> None:
    w = world
    info = w.create()
    assert info.recursive is False
    for bad in ("yes", 1, "true"):
        with pytest.raises(InvalidDataflow) as err:
            w.create("bad", recursive=bad)
        assert err.value.detail.get("field") == "recursive"
        assert "true or false" in err.value.message
    info = w.flows.edit(w.admin, "flow", {"recursive": True})
    assert info.recursive is True and info.version == 2
    assert w.flows.get(w.admin, "flow").recursive is True
    # The destination inside the source is still refused, recursive or not.
    _folders(w, f"{SOURCE}/out")
    with pytest.raises(InvalidDataflow) as err:
        w.create("inside", destination=f"{SOURCE}/out", recursive=True)
    assert err.value.detail.get("field") == "destination"
    # Only a workflow dataflow watches subfolders: a stream dataflow has no source.
    with pytest.raises(InvalidDataflow) as err:
        w.flows.create(w.admin, "s", {"kind": "stream", "topic": "t", "destination": DEST, "recursive": True})
    assert err.value.detail.get("field") == "recursive"
    # A stream dataflow saved without it is unaffected by the field (False is no field set).
    stream = w.flows.create(w.admin, "s", {"kind": "stream", "topic": "t", "destination": DEST})
    assert stream.recursive is False
    assert w.flows.edit(w.admin, "s", {"description": "d"}).version == 2


def test_subfolders_the_owner_may_not_read_are_not_watched(world: FlowWorld) -> None:
    w = world
    _folders(w, "Shared/open", "Shared/closed")
    alice = w.user("alice")
    w.home.store.share(w.admin, "Shared/open", "alice", Level.READ)
    with w.home.db.read() as conn:
        from datamill.store import lookups

        root = lookups.folder_id(conn, "Shared")
        assert root is not None
        seen = sources.watched_folders(conn, "Shared", root, True, alice)
        everything = sources.watched_folders(conn, "Shared", root, True, w.admin)
        alone = sources.watched_folders(conn, "Shared", root, False, w.admin)
    assert sorted(seen.values()) == ["Shared", "Shared/open"]
    assert sorted(everything.values()) == ["Shared", "Shared/closed", "Shared/open"]
    assert list(alone.values()) == ["Shared"]


def test_the_api_takes_and_checks_recursive(tmp_path: Path) -> None:
    home = open_home(tmp_path / "home", executor="inline")
    try:
        for f in (SOURCE, DEST):
            home.store.create_folder(home.admin, f)
        with serve(home) as server, httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as http:
            headers = {"Authorization": f"Bearer {home.admin_token()}"}
            body = {"name": "tree", "source": SOURCE, "dest": DEST, "pipeline": ref("echo_pipeline")}
            bad = http.post("/dataflows", json={**body, "recursive": "yes"}, headers=headers)
            assert bad.status_code in (400, 422) and "recursive" in bad.text
            stream = {"name": "s", "kind": "stream", "topic": "t", "dest": DEST, "recursive": True}
            refused = http.post("/dataflows", json=stream, headers=headers)
            assert refused.status_code == 400 and refused.json()["detail"]["field"] == "recursive"
            made = http.post("/dataflows", json={**body, "recursive": True}, headers=headers)
            assert made.status_code == 201 and made.json()["recursive"] is True
            edited = http.patch("/dataflows/tree", json={"recursive": False}, headers=headers)
            assert edited.status_code == 200 and edited.json()["recursive"] is False
    finally:
        home.close()


def test_the_web_form_carries_recursive(world: FlowWorld) -> None:
    from datamill.web.dataflows import form_values, parse_form

    ticked, errors = parse_form({"source": SOURCE, "destination": DEST, "recursive": "on"})
    assert not errors and ticked["recursive"] is True
    assert parse_form({"source": SOURCE, "destination": DEST})[0]["recursive"] is False
    info = world.create(recursive=True)
    assert form_values(info)["recursive"] == "on"
    assert form_values(world.flows.edit(world.admin, "flow", {"recursive": False}))["recursive"] == ""
