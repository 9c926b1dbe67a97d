"""A dataflow follows its folders when they are moved or renamed (same commit as the move)."""

from __future__ import annotations

from tests.helpers import DEST, SOURCE, T0, check_fold

from .flow_world import FlowWorld


def test_a_dataflow_follows_its_moved_source_and_renamed_destination(db_world: FlowWorld) -> None:
    w = db_world
    store, admin = w.home.store, w.admin
    store.create_folder(admin, "Lab")
    w.create()
    w.start()
    assert w.poll(T0) == []

    store.move_folder(admin, SOURCE, "Lab", "Raw2")  # moved under another folder and renamed
    store.move_folder(admin, DEST, "", "Results")  # renamed in place
    info = w.flows.get(admin, "flow")
    assert (info.source, info.destination) == ("Lab/Raw2", "Results")
    assert info.version == 3  # one configuration version per move, made by the mover
    history = w.flows.history(admin, "flow")
    assert [(v.config["source"], v.config["destination"]) for v in history] == [
        (SOURCE, DEST),
        ("Lab/Raw2", DEST),
        ("Lab/Raw2", "Results"),
    ]

    # A folder made under the old name is a different folder: it gets nothing.
    store.create_folder(admin, DEST)
    w.put("x.txt", "x", folder="Lab/Raw2")
    (run_id,) = w.poll(T0 + 1)
    w.drive()
    assert w.run(run_id)["status"] == "succeeded"
    assert [i.name for i in store.list_items(admin, "Results")] == ["x.echo.bin"]
    assert store.list_items(admin, DEST) == []
    check_fold(w.home)


def test_moving_a_parent_folder_moves_the_paths_below_it_and_leaves_others(world: FlowWorld) -> None:
    w = world
    store, admin = w.home.store, w.admin
    store.create_folder(admin, "Top")
    store.create_folder(admin, "Top/In")
    store.create_folder(admin, "Topmost")  # shares the prefix "Top" but is not below it
    w.create("below", source="Top/In")
    w.create("beside", source="Topmost")
    store.move_folder(admin, "Top", "", "Moved")
    assert w.flows.get(admin, "below").source == "Moved/In"
    beside = w.flows.get(admin, "beside")
    assert (beside.source, beside.version) == ("Topmost", 1)
    updates = w.events("dataflow.updated")
    assert [(e.data["name"], e.data["changed"], e.data["reason"]) for e in updates] == [
        ("below", ["source"], "folder moved")
    ]
