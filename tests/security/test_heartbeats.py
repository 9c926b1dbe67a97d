"""``dataflow.heartbeat`` events and a directory dataflow's status leak nothing.

A directory dataflow (run by :class:`~datamill.dataflows.directory.DirectoryFlows`, as ``datamill
up`` runs it) lands files from a server directory into ``Landing``. Its heartbeats carry its
status (the last file landed, the last error) into the event log: a user who may not read
``Landing`` gets none of them and no folder name; a reader of ``Landing`` gets them without the
server's directories. When the watcher stops on an error that names a server path (the directory
was removed), its status, its failure reason and the ``dataflow.failed`` event name it only as
"a directory on the server" to everyone (the server log keeps the path).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from datamill.client.local import LocalClient
from datamill.dataflows.directory import SERVER_DIRECTORY, DirectoryFlows
from datamill.home import Home
from tests.helpers import add_user, open_home, wait_for

LANDING = "Landing Osprey"
SUB = "run-heron"


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    d = tmp_path / "roots-secret-77"
    d.mkdir()
    return d


@pytest.fixture
def home(tmp_path: Path, roots: Path) -> Iterator[Home]:
    h = open_home(tmp_path / "home", executor="inline", watch_roots=str(roots))
    yield h
    h.close()


def _text(client: LocalClient) -> str:
    """Every event the client's user is delivered, as text."""
    return "\n".join(json.dumps([e.kind, e.data], default=str) for e in client.events())


def synced(flows: DirectoryFlows, until: object) -> bool:
    flows.sync()
    return bool(until() if callable(until) else until)


def test_heartbeats_reach_only_readers_of_the_destination_and_name_no_server_path(
    home: Home, roots: Path, tmp_path: Path
) -> None:
    admin = LocalClient(home)
    src = roots / "instrument-kite"
    (src / SUB).mkdir(parents=True)
    (src / "a.txt").write_text("aaa")
    (src / SUB / "b.txt").write_text("bb")
    admin.create_folder(LANDING)
    admin.create_dataflow("kite-in", "", LANDING, "", kind="directory", directory=str(src), watch={"stable_seconds": 0})
    for name in ("bob", "carol"):
        add_user(home, name)
    admin.share(LANDING, "bob", "read")
    bob, carol = admin.as_user("bob"), admin.as_user("carol")
    admin.start_dataflow("kite-in")
    flows = DirectoryFlows(home, lease_seconds=30)
    flows.heartbeat_seconds = 0.0  # every change makes a heartbeat
    try:
        wait_for(
            "a heartbeat with both files",
            lambda: synced(
                flows,
                lambda: any(
                    e.kind == "dataflow.heartbeat" and e.data["status"]["files_landed"] == 2 for e in admin.events()
                ),
            ),
        )
    finally:
        flows.close()
    server_paths = [str(roots), str(src), str(tmp_path)]
    # The reader of the destination: the heartbeats, with item paths, and no server path.
    beats = [e for e in bob.events() if e.kind == "dataflow.heartbeat"]
    assert beats and beats[-1].data["status"]["last_landed"]["path"].startswith(f"{LANDING}/")
    seen = _text(bob)
    assert not [p for p in server_paths if p in seen]
    # A user who may not read it: no heartbeat, no name of the folder, its items or the server's paths.
    assert not [e for e in carol.events() if e.kind.startswith("dataflow.")]
    theirs = _text(carol)
    assert not [s for s in [LANDING, SUB, "a.txt", "b.txt", *server_paths] if s in theirs]

    # The directory goes away; started again, the watcher stops on an error about it.
    shutil.rmtree(src)
    admin.stop_dataflow("kite-in")
    admin.start_dataflow("kite-in")
    flows = DirectoryFlows(home, lease_seconds=30)
    try:
        wait_for("the failure", lambda: synced(flows, lambda: admin.dataflow("kite-in").state == "failed"))
    finally:
        flows.close()
    for client in (admin, bob):
        info = client.dataflow("kite-in")
        shown = json.dumps([info.state_reason, info.status], default=str) + _text(client)
        assert SERVER_DIRECTORY in str(info.state_reason), info.state_reason
        assert not [p for p in server_paths if p in shown], shown
    assert not [e for e in carol.events() if e.kind.startswith("dataflow.")]
