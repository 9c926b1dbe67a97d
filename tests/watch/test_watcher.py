"""The watcher core over a real client: stability, rules, subfolders, resume, changes, vanished files, polling."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from datamill.cli.watch import ClientLanding
from datamill.client.base import Client
from datamill.client.local import LocalClient
from datamill.client.remote import RemoteClient
from datamill.dataflows.watcher import SMALL_FILE, SmallFile, Watcher, WatchEvent, WatchRules
from datamill.errors import InvalidInput, NotFound, PermissionDenied
from datamill.home import Home
from datamill.store.blobs.base import digest_bytes
from tests.helpers import Clock, add_user, serve, wait_for


def watcher(client: Client, root: Path, folder: str = "Raw", **rules: object) -> tuple[Watcher, list[WatchEvent]]:
    seen: list[WatchEvent] = []
    rules.setdefault("stable_seconds", 0)
    return Watcher(root, folder, ClientLanding(client), WatchRules(**rules), on_event=seen.append), seen  # type: ignore[arg-type]


def has(client: Client, path: str, version: int = 1) -> bool:
    """Whether item ``path`` exists with at least ``version`` versions."""
    try:
        return client.item(path).version >= version
    except NotFound:
        return False


def kinds(events: list[WatchEvent], kind: str) -> list[str]:
    return sorted(e.path for e in events if e.kind == kind)


def test_new_files_land_once_with_subfolders_provenance_and_hidden_skipped(local: LocalClient, src: Path) -> None:
    (src / "run-7" / "deep").mkdir(parents=True)
    (src / ".cache").mkdir()
    (src / "a.csv").write_text("x,y\n1,2\n")
    (src / "run-7" / "b.txt").write_text("b")
    (src / "run-7" / "deep" / "c.txt").write_text("c")
    (src / ".hidden.txt").write_text("h")
    (src / ".cache" / "x.txt").write_text("x")
    (src / "catalog.log").write_text("no silent 'log' filter")
    w, seen = watcher(local, src)
    counts = w.run_once()
    assert counts["uploaded"] == 4 and counts["hidden"] == 2
    assert kinds(seen, "hidden") == [".cache", ".hidden.txt"]
    assert local.get("Raw/run-7/deep/c.txt") == b"c"
    assert local.get("Raw/catalog.log") == b"no silent 'log' filter"
    assert local.item("Raw/run-7/b.txt").metadata["watch"]["path"] == "run-7/b.txt"
    mtime = local.item("Raw/a.csv").metadata["watch"]["mtime"]
    assert mtime == pytest.approx((src / "a.csv").stat().st_mtime)
    assert {i.name for i in local.find("Raw")} == {"a.csv", "b.txt", "c.txt", "catalog.log"}

    # A second watcher (a restart) sends nothing: the content digests match the current versions.
    again, seen2 = watcher(local, src)
    assert again.run_once()["uploaded"] == 0
    assert len(kinds(seen2, "unchanged")) == 4
    assert [v.version for v in local.versions("Raw/a.csv")] == [1]


def test_include_and_exclude_are_regexes_on_the_relative_path(local: LocalClient, src: Path) -> None:
    (src / "tmp").mkdir()
    for rel in ("a.csv", "b.txt", "tmp/c.csv", "d.CSV"):
        (src / rel).write_text(rel)
    w, seen = watcher(local, src, include=(r"\.csv$",), exclude=("^tmp/",))
    w.run_once()
    assert [i.name for i in local.find("Raw")] == ["a.csv"]
    assert kinds(seen, "excluded") == ["b.txt", "d.CSV", "tmp/c.csv"]
    with pytest.raises(InvalidInput, match="not a regular expression"):
        WatchRules(include=("(",))


def test_a_file_still_being_written_lands_only_once_stable(local: LocalClient, src: Path) -> None:
    clock = Clock(100.0)
    f = src / "growing.bin"
    f.write_bytes(b"part one;")
    w = Watcher(src, "Raw", ClientLanding(local), WatchRules(stable_seconds=1.0), clock=clock)
    w.scan()
    clock.set(100.6)
    assert w.settle() == []  # not unchanged for a second yet
    with open(f, "ab") as out:
        out.write(b"part two")
    clock.set(101.2)
    assert w.settle() == []  # it changed: the second starts again
    clock.set(101.9)
    assert w.settle() == []
    clock.set(102.3)
    ready = w.settle()
    assert ready == ["growing.bin"]
    w.land(ready)
    assert local.get("Raw/growing.bin") == b"part one;part two"
    assert [v.version for v in local.versions("Raw/growing.bin")] == [1]


def test_a_changed_file_becomes_a_new_version_and_a_touched_one_does_not(local: LocalClient, src: Path) -> None:
    f = src / "a.txt"
    f.write_text("one")
    watcher(local, src)[0].run_once()
    os.utime(f, (1, 1))  # touched: same bytes
    w, seen = watcher(local, src)
    w.run_once()
    assert kinds(seen, "unchanged") == ["a.txt"]
    f.write_text("two")
    watcher(local, src)[0].run_once()
    assert [v.version for v in local.versions("Raw/a.txt")] == [1, 2]
    assert local.get("Raw/a.txt") == b"two"


class RewritingLanding(ClientLanding):
    """The real client landing; the first batch rewrites one file while it is being sent (a writer racing)."""

    def __init__(self, client: Client, path: Path) -> None:
        super().__init__(client)
        self.path = path
        self.done = False

    def land_folders(self, batches: list[tuple[str, list[SmallFile]]]) -> list[list[tuple[str, int]]]:
        if not self.done:
            self.done = True
            self.path.write_text("final, longer content")
        return super().land_folders(batches)


def test_a_file_changed_while_sent_is_sent_again_once_stable(local: LocalClient, src: Path) -> None:
    f = src / "a.txt"
    f.write_text("first")
    seen: list[WatchEvent] = []
    w = Watcher(src, "Raw", RewritingLanding(local, f), WatchRules(stable_seconds=0), on_event=seen.append)
    counts = w.run_once()
    assert counts["changed"] == 1 and counts["uploaded"] == 2
    assert [local.get("Raw/a.txt", v.version) for v in local.versions("Raw/a.txt")] == [
        b"first",
        b"final, longer content",
    ]


def test_a_vanished_file_is_reported_not_fatal(local: LocalClient, src: Path) -> None:
    (src / "gone.txt").write_text("soon gone")
    (src / "kept.txt").write_text("kept")
    w, seen = watcher(local, src, stable_seconds=5.0)
    w.scan()
    (src / "gone.txt").unlink()
    assert w.settle() == []
    assert kinds(seen, "vanished") == ["gone.txt"]
    assert w.pending == 1


def test_large_files_are_streamed_and_resumed_by_digest(local: LocalClient, src: Path) -> None:
    data = os.urandom(SMALL_FILE * 3 + 17)
    (src / "big.bin").write_bytes(data)
    w, _ = watcher(local, src)
    assert w.run_once()["uploaded"] == 1
    info = local.version("Raw/big.bin")
    assert info.digest == digest_bytes(data) and info.size == len(data)
    assert watcher(local, src)[0].run_once()["unchanged"] == 1
    assert len(local.versions("Raw/big.bin")) == 1


def test_bad_directories_and_folders_are_clear_errors(local: LocalClient, home: Home, src: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        watcher(local, src / "nope")
    (src / "f.txt").write_text("f")
    with pytest.raises(InvalidInput, match="not a directory"):
        watcher(local, src / "f.txt")
    local.create_folder("Shared")
    add_user(home, "bob")
    local.share("Shared", "bob", "read")
    bob = local.as_user("bob")
    with pytest.raises(PermissionDenied):
        watcher(bob, src, "Shared")[0].run_once()
    assert local.list_items("Shared") == []


@pytest.fixture
def remote(home: Home, local: LocalClient) -> Iterator[RemoteClient]:
    with serve(home) as server, RemoteClient(server.url, home.admin_token()) as client:
        yield client


def test_over_http_small_and_large_files_land_and_a_restart_resends_nothing(
    remote: RemoteClient, local: LocalClient, src: Path
) -> None:
    (src / "sub").mkdir()
    (src / "sub" / "a.txt").write_text("a")
    (src / "big.bin").write_bytes(os.urandom(SMALL_FILE + 1))
    w, _ = watcher(remote, src)
    assert w.run_once()["uploaded"] == 2
    cursor = local.events()[-1].seq
    assert watcher(remote, src)[0].run_once()["unchanged"] == 2
    assert [e for e in local.events(cursor) if e.kind.startswith("item.")] == []
    assert local.item("Raw/sub/a.txt").metadata["watch"]["path"] == "sub/a.txt"


@pytest.mark.parametrize("poll", [False, True], ids=["notify", "poll"])
def test_watching_lands_new_and_changed_files(local: LocalClient, src: Path, poll: bool) -> None:
    (src / "before.txt").write_text("there at start")
    w, _ = watcher(local, src, stable_seconds=0.1, poll=poll, poll_interval=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=w.run, args=(stop,))
    thread.start()
    try:
        wait_for("the existing file", lambda: has(local, "Raw/before.txt"))
        assert w.started.is_set()
        (src / "new").mkdir()
        (src / "new" / "n.txt").write_text("new")
        wait_for("the new file", lambda: has(local, "Raw/new/n.txt"))
        (src / "before.txt").write_text("changed")
        wait_for("the new version", lambda: has(local, "Raw/before.txt", 2))
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert local.get("Raw/new/n.txt") == b"new" and local.get("Raw/before.txt") == b"changed"


def test_no_existing_lands_only_later_changes(local: LocalClient, src: Path) -> None:
    (src / "old.txt").write_text("old")
    w, _ = watcher(local, src, stable_seconds=0.1, existing=False)
    stop = threading.Event()
    thread = threading.Thread(target=w.run, args=(stop,))
    thread.start()
    try:
        assert w.started.wait(30)
        (src / "fresh.txt").write_text("fresh")
        wait_for("the fresh file", lambda: has(local, "Raw/fresh.txt"))
    finally:
        stop.set()
        thread.join(10)
    assert local.find("Raw", name="old.txt") == []


def test_a_resume_compares_size_and_mtime_with_the_watch_metadata_before_reading(local: LocalClient, src: Path) -> None:
    (src / "a.txt").write_bytes(b"aaaa")
    (src / "b.txt").write_bytes(b"bbbb")
    assert watcher(local, src)[0].run_once()["uploaded"] == 2
    assert local.item("Raw/a.txt").metadata["watch"]["digest"] == digest_bytes(b"aaaa")
    # Same size and mtime as recorded: taken as landed without being read, even though its bytes
    # changed behind the file system's back (what an mtime-preserving rewrite does).
    st = (src / "a.txt").stat()
    (src / "a.txt").write_bytes(b"AAAA")
    os.utime(src / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    # Someone else wrote a version of b.txt: the recorded digest is not the current one, so the
    # file is read and compared, and lands again.
    local.put("Raw", "b.txt", b"zzzz")
    w, _ = watcher(local, src)
    counts = w.run_once()
    assert counts["unchanged"] == 1 and counts["uploaded"] == 1
    assert local.get("Raw/a.txt") == b"aaaa" and local.get("Raw/b.txt") == b"bbbb"
