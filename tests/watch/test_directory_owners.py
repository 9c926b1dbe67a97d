"""Directory dataflows across servers: one owner at a time (a lease), take-over; live status and heartbeats."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from datamill.client.local import LocalClient
from datamill.dataflows.directory import DirectoryFlows
from datamill.home import Home
from tests.helpers import add_user, open_home, wait_for


def make(client: LocalClient, directory: Path, name: str = "xrd-in") -> None:
    client.create_folder("Landing", exist_ok=True)
    client.create_dataflow(
        name, "", "Landing", "", kind="directory", directory=str(directory), watch={"stable_seconds": 0}
    )
    client.start_dataflow(name)


def landed(client: LocalClient, path: str) -> bool:
    return any(i.path == path for i in client.find("Landing"))


def synced(flows: DirectoryFlows, until: object) -> bool:
    """One round of the directory service (what ``serve`` does every second), then the condition."""
    flows.sync()
    return bool(until() if callable(until) else until)


def test_status_in_the_record_and_rate_limited_heartbeats(local: LocalClient, home: Home, src: Path) -> None:
    (src / "sub").mkdir()
    (src / "a.txt").write_text("aaa")
    (src / "sub" / "b.txt").write_text("bb")
    (src / ".hidden").write_text("h")
    make(local, src)
    flows = DirectoryFlows(home, lease_seconds=30)
    flows.heartbeat_seconds = 0.0  # every change makes a heartbeat here; the default limits them
    try:
        wait_for("the files", lambda: synced(flows, lambda: landed(local, "Landing/sub/b.txt")))
        wait_for(
            "the status to report them",
            lambda: synced(flows, lambda: (local.dataflow("xrd-in").status or {}).get("files_landed") == 2),
        )
        status = local.dataflow("xrd-in").status or {}
        assert status["bytes_landed"] == 5 and status["files_skipped"] == 1 and status["files_seen"] == 3
        assert status["running"] is True and status["owner"] == flows.owner
        assert status["last_landed"]["path"] in ("Landing/a.txt", "Landing/sub/b.txt")
        assert status["last_error"] is None
        beats = [e for e in local.events() if e.kind == "dataflow.heartbeat"]
        assert beats and beats[-1].data["status"]["files_landed"] == 2
        # Unchanged status: no further heartbeat however often the service syncs.
        for _ in range(3):
            flows.sync()
        assert len([e for e in local.events() if e.kind == "dataflow.heartbeat"]) == len(beats)
        # A reader of the destination sees the status; one who may not read it does not see paths.
        add_user(home, "bob")
        local.share("Landing", "bob", "read")
        assert (local.as_user("bob").dataflow("xrd-in").status or {})["last_landed"]["path"].startswith("Landing/")
    finally:
        flows.close()
    status = local.dataflow("xrd-in").status or {}
    assert status["running"] is False and status["files_landed"] == 2  # kept after the watcher stopped


def test_the_cli_shows_the_status(local: LocalClient, home: Home, src: Path) -> None:
    from typer.testing import CliRunner

    from datamill.cli import app

    (src / "a.txt").write_text("a")
    make(local, src)
    flows = DirectoryFlows(home)
    try:
        wait_for("the file", lambda: synced(flows, lambda: landed(local, "Landing/a.txt")))
        wait_for(
            "the status", lambda: synced(flows, lambda: (local.dataflow("xrd-in").status or {}).get("files_landed"))
        )
    finally:
        flows.close()
    out = CliRunner().invoke(app, ["--home", str(home.settings.home_path), "flow", "show", "xrd-in"])
    assert out.exit_code == 0, out.output
    assert "landed 1 file" in out.output and "Landing/a.txt" in out.output


@pytest.fixture
def two_homes(tmp_path: Path, postgres_db_url: str, roots: Path) -> Iterator[tuple[Home, Home]]:
    blobs = f"file://{tmp_path / 'blobs'}"
    a = open_home(tmp_path / "a", postgres_db_url, blob_url=blobs, executor="inline", watch_roots=str(roots))
    b = open_home(tmp_path / "b", postgres_db_url, blob_url=blobs, executor="inline", watch_roots=str(roots))
    yield a, b
    b.close()
    a.close()


@pytest.mark.postgres
def test_two_servers_on_postgresql_run_each_directory_dataflow_once_and_take_over(
    two_homes: tuple[Home, Home], src: Path
) -> None:
    home_a, home_b = two_homes
    admin = LocalClient(home_a)
    (src / "a.txt").write_text("a")
    make(admin, src)
    one = DirectoryFlows(home_a, lease_seconds=1.0)
    two = DirectoryFlows(home_b, lease_seconds=1.0)
    try:
        one.sync()
        two.sync()
        fid = admin.dataflow("xrd-in").id
        assert one.owned() == {fid} and two.owned() == set()
        wait_for("a.txt", lambda: synced(one, lambda: landed(admin, "Landing/a.txt")))
        for _ in range(3):  # the owner renews; the other never starts a watcher
            one.sync()
            two.sync()
            assert one.owned() == {fid} and two.owned() == set()

        # The owner dies: its watcher stops and it renews no more (no release: a crash).
        with one._lock:
            dead = one._running.pop(fid)
        dead.stop.set()
        dead.thread.join(5)
        wait_for("the other server to take over", lambda: synced(two, lambda: two.owned() == {fid}))
        (src / "b.txt").write_text("b")
        wait_for("b.txt through the new owner", lambda: synced(two, lambda: landed(admin, "Landing/b.txt")))
        # The old server comes back: the lease is taken, it runs nothing.
        one.sync()
        assert one.owned() == set()
    finally:
        one.close()
        two.close()
    # Each file landed once, whoever ran the watcher (the new owner sent nothing again).
    for name in ("a.txt", "b.txt"):
        assert len(admin.versions(f"Landing/{name}")) == 1
    assert (admin.dataflow("xrd-in").status or {})["owner"] == two.owner
