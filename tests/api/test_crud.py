"""The main CRUD paths through the API, on SQLite and PostgreSQL.

The contract test runs one scenario through the embedded client and through the remote client
and compares everything they return; the rest checks what only a server can get wrong
(concurrent writers, announced digests, tokens).
"""

from __future__ import annotations

import dataclasses
import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from datamill.api import ServerHandle
from datamill.client.base import Client
from datamill.client.local import LocalClient
from datamill.client.remote import RemoteClient, quote_path
from datamill.errors import DatamillError, NotFound, Unauthorized
from datamill.home import Home

VOLATILE = {"created_at", "updated_at", "ts", "expires_at"}


@pytest.fixture
def home(make_home: Callable[..., Home], db_url: str) -> Home:
    """The served home: once on SQLite, once on PostgreSQL."""
    return make_home(db_url)


def normalize(value: Any) -> Any:
    """Dataclasses to dicts, timestamps dropped, recursively: comparable across two homes."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list | tuple):
        return [normalize(v) for v in value]
    return value


def attempt(fn: Callable[[], Any]) -> Any:
    """The result of ``fn()``, or the class and code of the DatamillError it raised."""
    try:
        return fn()
    except DatamillError as exc:
        return {"raised": type(exc).__name__, "code": exc.code}


def scenario(c: Client, scratch: Path) -> list[Any]:
    """Everything a client offers, in one sequence; returns what each step returned."""
    out: list[Any] = [c.whoami()]
    out.append(c.create_folder("Raw Data/2026", metadata={"site": "A"}))
    out.append(c.create_folder("Raw Data", exist_ok=True))
    out.append(attempt(lambda: c.create_folder("Raw Data")))
    out.append(attempt(lambda: c.create_folder("x/y", parents=False)))
    out.append(c.list_folders())
    out.append(c.list_folders("Raw Data"))
    weird = "a b#?%&+;.csv"
    out.append(c.put("Raw Data/2026", weird, b"x,y\n1,2\n", metadata={"kind": "csv", "tags": ["t1", "t2"]}))
    out.append(c.put("Raw Data/2026", weird, io.BytesIO(b"x,y\n3,4\n"), content_type="text/plain"))
    out.append(c.put("Raw Data", "été 2026 ✓.txt", b"hello"))
    out.append(c.put("Raw Data", "empty", b""))
    path = f"Raw Data/2026/{weird}"
    out += [c.item(path), c.versions(path), c.version(path), c.version(path, 1)]
    out += [c.get(path), c.get(path, 1), c.get("Raw Data/empty")]
    info, chunks = c.iter_bytes(path, 1)
    out += [info, b"".join(chunks)]
    dest = scratch / "dl"
    dest.mkdir(parents=True)
    out.append(c.download(path, dest, version=2))
    out.append(sorted(p.name for p in dest.iterdir()))
    out.append((dest / weird).read_bytes())
    out.append(c.set_metadata(path, {"q": 1, "nested": {"a": [1, 2]}}, unset=["kind"]))
    out.append(c.find("Raw Data", name="*.csv"))
    out.append(c.find("Raw Data", metadata={"tags": "t1"}))
    out.append(c.find("Raw Data", recursive=False))
    out.append(c.find("Raw Data", name="*.txt", metadata={"nope": 1}))
    out.append(c.set_folder_metadata("Raw Data", {"owner": "lab", "n": 2}))
    out.append(c.set_folder_metadata("Raw Data", unset=["n"]))
    out.append(c.rename_folder("Raw Data/2026", "y2026"))
    out.append(c.create_folder("Derived"))
    out.append(c.move_folder("Raw Data/y2026", "Derived", "moved"))
    out.append(c.list_folders("Derived"))
    out.append(c.create_user("ana"))
    out.append(attempt(lambda: c.create_user("ana")))
    out.append(c.list_users())
    c.share("Derived", "ana", "write")
    out.append(c.access_list("Derived"))
    c.share("Derived", "ana", "none")
    c.set_public("Derived", True)
    out.append(c.folder("Derived"))
    out.append(c.access_list("Derived"))
    out.append(attempt(lambda: c.folder("Nowhere")))
    out.append(attempt(lambda: c.item("Raw Data/none.csv")))
    out.append(attempt(lambda: c.version("Derived/moved/" + weird, 9)))
    out.append(attempt(lambda: c.put("Raw Data", "..", b"x")))
    out.append(attempt(lambda: c.put("Raw Data", "a/b", b"x")))
    out.append(attempt(lambda: c.put("", "a", b"x")))
    out.append(attempt(lambda: c.folder("")))
    out.append(attempt(lambda: c.delete_folder("Derived")))
    c.delete_item("Raw Data/été 2026 ✓.txt")
    out.append(attempt(lambda: c.item("Raw Data/été 2026 ✓.txt")))
    out.append(c.delete_folder("Derived", recursive=True))
    out.append(c.list_folders())
    out.append(c.events())
    out.append(c.events(3, limit=5, kinds=["item."]))
    out.append(c.events(0, kinds=["folder.created", "metadata."]))
    return out


def test_remote_client_matches_local_client(
    server: ServerHandle, home: Home, make_home: Callable[..., Home], tmp_path: Path
) -> None:
    reference = LocalClient(make_home())
    expected = normalize(scenario(reference, tmp_path / "local"))
    with RemoteClient(server.url, home.admin_token()) as remote:
        got = normalize(scenario(remote, tmp_path / "remote"))
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g == e, f"step {i} differs"


def test_concurrent_uploads_of_one_item_keep_every_version(server: ServerHandle, home: Home) -> None:
    token = home.admin_token()
    LocalClient(home).create_folder("inbox")
    failures: list[BaseException] = []

    def upload(who: int) -> None:
        try:
            with RemoteClient(server.url, token) as c:
                for n in range(10):
                    c.put("inbox", "same.txt", f"client {who} upload {n}".encode())
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=upload, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures
    versions = LocalClient(home).versions("inbox/same.txt")
    assert sorted(v.version for v in versions) == list(range(1, 21))
    contents = {LocalClient(home).get("inbox/same.txt", v.version) for v in versions}
    assert contents == {f"client {w} upload {n}".encode() for w in range(2) for n in range(10)}


def blob_files(home: Home) -> list[Path]:
    """Every file under the blob directory, the temporary directory included (not its lock files)."""
    root = Path(home.settings.resolved_blob_url.removeprefix("file://"))
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "lock")


def test_digest_mismatch_stores_nothing(server: ServerHandle, home: Home) -> None:
    LocalClient(home).create_folder("inbox")
    before = blob_files(home)
    r = httpx.put(
        f"{server.url}/api/v1/content/inbox/x.bin",
        content=b"some bytes",
        headers={"Authorization": f"Bearer {home.admin_token()}", "X-Datamill-Digest": "blake3:" + "0" * 64},
    )
    assert r.status_code == 400
    assert r.json()["code"] == "digest_mismatch"
    with pytest.raises(NotFound):
        LocalClient(home).item("inbox/x.bin")
    assert blob_files(home) == before


def test_folder_and_item_paths_with_awkward_names(admin: RemoteClient, local: LocalClient) -> None:
    names = ["Données", "été 2026 ✓", "50% #1 ?", "a+b&c=d", "日本語", "tab\u00a0nbsp", "...", "%2F"]
    for name in names:
        admin.create_folder(f"top/{name}")
        admin.put(f"top/{name}", f"{name}.csv", name.encode())
    assert [f.name for f in admin.list_folders("top")] == sorted(names)
    for name in names:
        assert local.get(f"top/{name}/{name}.csv") == name.encode()
        assert admin.item(f"top/{name}/{name}.csv").name == f"{name}.csv"
    assert quote_path("a b/.") == "a%20b/%2E"


def test_a_search_larger_than_a_page_comes_whole_and_in_order(
    admin: RemoteClient, local: LocalClient, home: Home
) -> None:
    """The remote client pages through ``/find`` (1,000 per answer); awkward paths continue the pages."""
    from datamill.client import remote

    for folder, count in (("scan/été 50% #1", remote.FIND_PAGE + 1), ("scan/a+b&c=d ?", remote.FIND_PAGE)):
        home.store.create_folder(home.admin, folder)
        home.store.put_many(home.admin, folder, [(f"n {i:04d} ✓", b"x") for i in range(count)])
    found = [i.path for i in admin.find("scan")]
    assert found == [i.path for i in local.find("scan")]
    assert len(found) == len(set(found)) == 2 * remote.FIND_PAGE + 1
    last = admin._call("GET", "/find/scan", params={"after": found[-3], "limit": 5})
    assert [f"{d['folder']}/{d['name']}" for d in last] == found[-2:]  # a short page: the last


def test_tokens_users_and_revocation(server: ServerHandle, admin: RemoteClient) -> None:
    admin.create_user("bob")
    new = admin.create_token("bob", name="laptop", ttl=3600)
    assert new.user == "bob" and new.token.startswith("dm_") and new.expires_at is not None
    with RemoteClient(server.url, new.token) as bob:
        assert bob.whoami()["name"] == "bob"
        own = bob.create_token(name="second")
        with pytest.raises(DatamillError) as denied:
            bob.create_token("admin")
        assert denied.value.code == "permission_denied"
        with pytest.raises(DatamillError):
            bob.list_users()
        bob.revoke_token(own.id)
        with RemoteClient(server.url, own.token) as gone, pytest.raises(Unauthorized):
            gone.whoami()
        admin.revoke_token(new.id)
        with pytest.raises(Unauthorized):
            bob.whoami()


def test_events_wake_long_polls_and_streams(server: ServerHandle, home: Home, admin: RemoteClient) -> None:
    """On PostgreSQL the wake-up comes through LISTEN/NOTIFY, on SQLite through polling."""
    local = LocalClient(home)
    local.create_folder("live")
    since = home.events.latest()
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(admin.wait_events(since, 10)))
    waiter.start()
    with (
        httpx.Client(timeout=10) as c,
        c.stream(
            "GET",
            f"{server.url}/api/v1/events/stream",
            params={"since": since},
            headers={"Authorization": f"Bearer {home.admin_token()}"},
        ) as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines) == "retry: 3000"
        local.put("live", "a.csv", b"1")
        event = next(line for line in lines if line.startswith("event:"))
    waiter.join(10)
    assert event == "event: item.created"
    assert woke == [True]
