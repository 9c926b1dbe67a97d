"""Directory dataflows: site admins only, below the watch roots, landing files a new-items dataflow processes once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from datamill.client.local import LocalClient
from datamill.client.remote import RemoteClient
from datamill.dataflows.dataflow import HIDDEN_DIRECTORY
from datamill.errors import InvalidDataflow, NotFound, PermissionDenied
from datamill.home import Home
from tests.dataflows.flow_pipelines import ref
from tests.helpers import add_user, open_home, serve, wait_for

FAST = {"stable_seconds": 0.1}


def make(client: LocalClient | RemoteClient, directory: str, name: str = "xrd-in", **watch: object) -> object:
    return client.create_dataflow(
        name, "", "Landing", "", kind="directory", directory=directory, watch={**FAST, **watch}
    )


def test_only_site_admins_below_the_watch_roots(local: LocalClient, home: Home, src: Path, tmp_path: Path) -> None:
    local.create_folder("Landing")
    add_user(home, "bob")
    local.share("Landing", "bob", "admin")
    bob = local.as_user("bob")
    with pytest.raises(PermissionDenied, match="only a site admin") as refused:
        make(bob, str(src))
    assert str(src) not in refused.value.message
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(PermissionDenied, match="outside the allowed watch roots"):
        make(local, str(outside))
    with pytest.raises(PermissionDenied, match="outside the allowed watch roots"):
        make(local, str(src / ".." / ".." / "elsewhere"))  # no escape through '..'
    (src / "link").symlink_to(outside)
    with pytest.raises(PermissionDenied, match="outside the allowed watch roots"):
        make(local, str(src / "link"))  # nor through a symbolic link
    with pytest.raises(InvalidDataflow, match="does not exist on the server"):
        make(local, str(src / "missing"))
    with pytest.raises(InvalidDataflow, match="absolute path"):
        make(local, "relative/dir")
    with pytest.raises(InvalidDataflow, match="not a regular expression"):
        make(local, str(src), include=["("])

    info = make(local, str(src))
    assert local.dataflow("xrd-in").directory == str(src.resolve())
    # Bob administers the destination: he sees the dataflow, not the server's path, and may not change it.
    assert bob.dataflow("xrd-in").directory == HIDDEN_DIRECTORY
    assert all(v.config["directory"] == HIDDEN_DIRECTORY for v in bob.dataflow_history("xrd-in"))
    with pytest.raises(PermissionDenied, match="only a site admin"):
        bob.edit_dataflow("xrd-in", watch={"stable_seconds": 3})
    assert info is not None


def test_no_watch_roots_means_no_directory_dataflows(tmp_path: Path) -> None:
    home = open_home(tmp_path / "home", executor="inline")
    try:
        client = LocalClient(home)
        client.create_folder("Landing")
        with pytest.raises(PermissionDenied, match="set watch_roots"):
            make(client, str(tmp_path))
    finally:
        home.close()


@pytest.fixture
def served(home: Home, local: LocalClient) -> Iterator[RemoteClient]:
    with serve(home, services=True) as server, RemoteClient(server.url, home.admin_token()) as client:
        yield client


def landed(client: LocalClient, path: str) -> bool:
    try:
        client.item(path)
        return True
    except NotFound:
        return False


def test_a_directory_dataflow_lands_files_and_a_new_items_dataflow_processes_each_once(
    served: RemoteClient, local: LocalClient, home: Home, src: Path
) -> None:
    for folder in ("Landing", "Derived"):
        served.create_folder(folder)
    add_user(home, "carol")
    token = local.create_token("carol").token
    with RemoteClient(served.url, token) as as_carol, pytest.raises(PermissionDenied, match="only a site admin"):
        make(as_carol, str(src), name="carols")  # over the API a non-admin gets a 403 too
    make(served, str(src), exclude=[r"\.tmp$"])
    served.create_dataflow("derive", "Landing", "Derived", ref("echo_pipeline"))
    served.start_dataflow("derive")
    (src / "sub").mkdir()
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    (src / "skip.tmp").write_text("left out")
    served.start_dataflow("xrd-in")
    wait_for("the files to land", lambda: landed(local, "Landing/a.txt") and landed(local, "Landing/sub/b.txt"))
    meta = local.item("Landing/sub/b.txt").metadata["watch"]
    assert meta["path"] == "sub/b.txt" and meta["dataflow"] == "xrd-in" and meta["mtime"] > 0
    assert local.version("Landing/a.txt").created_via == "directory"
    (src / "c.txt").write_text("c, later")
    wait_for("the later file", lambda: landed(local, "Landing/c.txt"))
    # The live status over the API, as the server running the watcher last reported it.
    wait_for("the status", lambda: (served.dataflow("xrd-in").status or {}).get("files_landed") == 3)
    status = served.dataflow("xrd-in").status or {}
    assert status["running"] and status["files_skipped"] == 1 and status["bytes_landed"] == len("abc, later")
    # A workflow's source is its folder's own items (not subfolders): a.txt and c.txt.
    wait_for("two results", lambda: len(local.find("Derived")) == 2, timeout=60)
    served.stop_dataflow("xrd-in")
    assert local.find("Landing", name="skip.tmp") == []
    # Each landed file was processed once: one version of each result.
    assert sorted(len(local.versions(f"{i.folder}/{i.name}")) for i in local.find("Derived")) == [1, 1]
    assert sum(len(served.tasks(r.id)) for r in served.runs()) == 2

    # Started again (a restart of the watcher), it sends nothing already there.
    cursor = local.events()[-1].seq
    served.start_dataflow("xrd-in")
    (src / "d.txt").write_text("d")
    wait_for("the file after the restart", lambda: landed(local, "Landing/d.txt"))
    served.stop_dataflow("xrd-in")
    new = [
        e for e in local.events(cursor) if e.kind in ("item.created", "item.updated") and e.data["folder"] == "Landing"
    ]
    assert [e.data["name"] for e in new] == ["d.txt"]
    assert served.dataflow("xrd-in").state == "stopped"
