"""Idempotent uploads: ``Idempotency-Key`` on ``PUT /content``, and the client's retries that use it.

On SQLite and PostgreSQL, over real HTTP. A real TCP proxy between client and server forwards the
first upload but drops the connection as the server's answer starts, after the commit: the
RemoteClient retries with the same key and gets the version already made.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from datamill.api import ServerHandle
from datamill.client.local import LocalClient
from datamill.client.remote import RemoteClient
from datamill.db.models import IdempotencyKey
from datamill.errors import IdempotencyKeyReused
from datamill.home import Home
from datamill.store.blobs import digest_bytes
from datamill.store.store import IDEMPOTENCY_TTL
from tests.helpers import serve


@pytest.fixture
def home(make_home: Callable[..., Home], db_url: str) -> Home:
    """A fresh home on SQLite, then on PostgreSQL."""
    return make_home(db_url)


class AnswerDroppingProxy:
    """Forwards TCP to ``upstream``; on the first ``drop`` connections it closes the client's side
    as soon as the server starts answering, so the request is processed but its answer is lost."""

    def __init__(self, upstream: tuple[str, int], drop: int = 1) -> None:
        self.upstream = upstream
        self.drop = drop
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            dropping = self.connections <= self.drop
            server = socket.create_connection(self.upstream)
            t = threading.Thread(target=self._pipe, args=(client, server), daemon=True)
            t.start()
            threading.Thread(target=self._answer, args=(server, client, dropping), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _answer(self, server: socket.socket, client: socket.socket, dropping: bool) -> None:
        if dropping:
            with contextlib.suppress(OSError):
                server.recv(1)  # the answer starts: the upload was recorded
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            return
        self._pipe(server, client)

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def served(home: Home) -> Iterator[ServerHandle]:
    with serve(home) as handle:
        yield handle


def _upstream(handle: ServerHandle) -> tuple[str, int]:
    host, port = handle.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@pytest.mark.parametrize("as_file", [False, True], ids=["bytes", "file"])
def test_client_retry_after_a_lost_answer_makes_one_version(
    home: Home, served: ServerHandle, tmp_path: Path, as_file: bool
) -> None:
    local = LocalClient(home)
    local.create_folder("d")
    payload = bytes(range(256)) * 9000
    proxy = AnswerDroppingProxy(_upstream(served))
    client = RemoteClient(proxy.url, home.admin_token())
    try:
        if as_file:
            src = tmp_path / "x.bin"
            src.write_bytes(payload)
            seen: list[int] = []
            with open(src, "rb") as f:
                info = client.put("d", "x.bin", f, progress=seen.append)
            assert sum(seen) == len(payload)  # the retry does not count the bytes twice
        else:
            info = client.put("d", "x.bin", payload)
    finally:
        client.close()
        proxy.close()
    assert proxy.connections == 2  # the first answer was lost; the retry went through
    versions = local.versions("d/x.bin")
    assert [v.version for v in versions] == [1]
    assert info.version_id == versions[0].version_id and info.digest == digest_bytes(payload)


def _put(url: str, token: str | None, body: bytes, key: str, name: str = "x.bin") -> httpx.Response:
    return httpx.put(
        f"{url}/api/v1/content/d/{name}",
        content=body,
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key},
    )


def test_same_key_replays_other_bytes_conflict(home: Home, served: ServerHandle) -> None:
    local = LocalClient(home)
    local.create_folder("d")
    token = home.admin_token()
    first = _put(served.url, token, b"one", "key-1")
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    again = _put(served.url, token, b"one", "key-1")
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    for body, name in ((b"two", "x.bin"), (b"one", "y.bin")):  # other bytes, or another item
        clash = _put(served.url, token, body, "key-1", name)
        assert clash.status_code == 409 and clash.json()["code"] == "idempotency_key_reused"
    assert [v.version for v in local.versions("d/x.bin")] == [1]
    assert _put(served.url, token, b"one", "key-2").json()["version"] == 2  # a new key, a new version
    # The bytes the refused request sent are not kept.
    assert not home.blobs.exists(digest_bytes(b"two"))
    for bad_key in ("has a space", "k" * 256):
        bad = _put(served.url, token, b"one", bad_key)
        assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["error"]


def test_keys_are_per_user_and_expire(home: Home, served: ServerHandle) -> None:
    local = LocalClient(home)
    local.create_folder("d")
    local.create_user("bo")
    local.share("d", "bo", "write")
    bo = local.create_token("bo").token
    token = home.admin_token()
    assert _put(served.url, token, b"a", "same").json()["version"] == 1
    assert _put(served.url, bo, b"a", "same").json()["version"] == 2  # bo's key is bo's own
    assert _put(served.url, bo, b"a", "same").headers.get("Idempotent-Replayed") == "true"
    with home.db.write() as conn:  # a day later
        conn.execute(update(IdempotencyKey).values(created_at=IdempotencyKey.created_at - IDEMPOTENCY_TTL - 1))
    late = _put(served.url, token, b"a", "same")
    assert late.status_code == 201 and "Idempotent-Replayed" not in late.headers
    assert late.json()["version"] == 3


def test_concurrent_requests_with_one_key_make_one_version(home: Home) -> None:
    home.store.create_folder(home.admin, "d")
    blob = home.blobs.put(b"racing bytes")
    results: list[tuple[int, bool]] = []
    errors: list[BaseException] = []
    go = threading.Barrier(4)

    def upload() -> None:
        try:
            go.wait()
            info, replayed = home.store.commit_upload(home.admin, "d", "x.bin", blob, idempotency_key="k")
            results.append((info.version_id, replayed))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=upload) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({vid for vid, _ in results}) == 1
    assert sorted(replayed for _, replayed in results) == [False, True, True, True]
    assert len(home.store.versions(home.admin, "d/x.bin")) == 1
    with pytest.raises(IdempotencyKeyReused):
        home.store.commit_upload(home.admin, "d", "x.bin", home.blobs.put(b"else"), idempotency_key="k")
