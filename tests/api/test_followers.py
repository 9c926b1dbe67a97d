"""Long-lived responses: no thread per follower, bounded replays, and no streaming past the token.

Event streams, followed logs and waits of a real server over HTTP on 127.0.0.1, on SQLite and
PostgreSQL. The task followed here is held running by a gate file (``held_pipeline.py``) and
executed by an embedded client in a thread, so it runs for exactly as long as a test needs.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from datamill import events
from datamill.api import ServerHandle
from datamill.api.streams import StreamGuard
from datamill.client.local import LocalClient
from datamill.home import Home
from tests.helpers import open_home, wait_for

from .held_pipeline import HELD_REF

#: Generous: a loaded machine may be slow; nothing here is a timing assertion.
TIMEOUT = 120.0


@pytest.fixture
def home(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[Home]:
    """A fresh home whose open streams re-check their token every 0.2 s."""
    path = tmp_path_factory.mktemp("home")
    h = open_home(path, db_url, stream_recheck_ms=200)
    try:
        yield h
    finally:
        h.close()


def guard_of(server: ServerHandle) -> StreamGuard:
    guard: StreamGuard = server.app.state.guard
    return guard


@dataclass
class Held:
    """A run whose one task is running until :meth:`release`."""

    run_id: int
    task_id: int
    gate: Path
    thread: threading.Thread
    result: list[dict[str, Any]] = field(default_factory=list)

    def release(self) -> dict[str, Any]:
        self.gate.touch()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()
        return self.result[0]


@pytest.fixture
def bob(local: LocalClient) -> str:
    """A user who may read the source folder of the held run; returns a token of theirs."""
    local.create_user("bob")
    local.create_folder("Raw")
    local.share("Raw", "bob", "read")
    return local.create_token("bob").token


@pytest.fixture
def held(server: ServerHandle, local: LocalClient, bob: str, tmp_path: Path) -> Iterator[Held]:
    local.put("Raw", "a.txt", b"1\n")
    gate = tmp_path / "gate"
    started: list[int] = []
    ready = threading.Event()
    result: list[dict[str, Any]] = []

    def on_start(run_id: int) -> None:
        started.append(run_id)
        ready.set()

    def run() -> None:
        result.append(local.run(HELD_REF, "Raw", params={"hold.gate": str(gate)}, executor="inline", on_start=on_start))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(TIMEOUT)
    run_id = started[0]
    held = Held(run_id, local.tasks(run_id)[0]["id"], gate, thread, result)
    # Running for sure once its first line can be read (the follow ends there: we read no further).
    with httpx.Client(timeout=TIMEOUT) as c:
        url = f"{server.url}/api/v1/tasks/{held.task_id}/logs"
        with c.stream("GET", url, params={"follow": True}, headers=bearer(bob)) as r:
            assert r.status_code == 200
            read_until(r.iter_text(), "holding")
    try:
        yield held
    finally:
        if thread.is_alive():
            held.release()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def read_until(chunks: Iterator[str], needle: str) -> str:
    text = ""
    for chunk in chunks:
        text += chunk
        if needle in text:
            return text
    raise AssertionError(f"the stream ended before {needle!r}: {text!r}")


def whoami(server: ServerHandle, token: str) -> dict[str, Any]:
    r = httpx.get(f"{server.url}/api/v1/whoami", headers=bearer(token), timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# ------------------------------------------------------------------ no thread per follower


FOLLOWERS = 60


def test_many_log_followers_take_no_thread_each_and_are_released(server: ServerHandle, held: Held, bob: str) -> None:
    guard = guard_of(server)
    for _ in range(3):  # warm the thread pool up: threads it keeps are not the followers'
        whoami(server, bob)
    baseline = threading.active_count()
    url = f"{server.url}/api/v1/tasks/{held.task_id}/logs"
    with httpx.Client(timeout=TIMEOUT, limits=httpx.Limits(max_connections=FOLLOWERS + 10)) as c:
        responses = []
        readers = []  # kept: a dropped reader closes its connection
        try:
            for _ in range(FOLLOWERS):
                r = c.send(c.build_request("GET", url, params={"follow": True}, headers=bearer(bob)), stream=True)
                assert r.status_code == 200
                responses.append(r)
                readers.append(r.iter_text())
                read_until(readers[-1], "holding")
            assert guard.open == FOLLOWERS
            # Every other request is answered while they are open, the token check included.
            assert whoami(server, bob)["name"] == "bob"
            grown = threading.active_count() - baseline
            assert grown < FOLLOWERS // 3, f"{grown} more threads for {FOLLOWERS} followers"
        finally:
            for r in responses:
                r.close()
    # Disconnected followers are released: nothing left open, nothing left watched.
    assert wait_for("no follower open", lambda: guard.open == 0, timeout=TIMEOUT)
    assert wait_for("the tailer to forget the task", lambda: guard.tailer.state(held.task_id) is None, timeout=TIMEOUT)
    # A follower still sees the rest of the log and the end of the task.
    with httpx.stream("GET", url, params={"follow": True}, headers=bearer(bob), timeout=TIMEOUT) as r:
        chunks = r.iter_text()
        read_until(chunks, "holding")
        held.release()
        rest = "".join(chunks)
    assert "released a.txt" in rest


# ------------------------------------------------------------------ bounded replays


def make_events(home: Home, folder: str, n: int) -> None:
    """``n`` events about ``folder``, written at once (a replay of them takes many pages)."""
    folder_id = LocalClient(home).folder(folder).id
    pad = "x" * 300
    with home.db.write() as conn:
        for start in range(0, n, 2000):
            events.append_many(
                conn,
                [
                    {"kind": "test.filler", "folder_id": folder_id, "data": {"n": i, "pad": pad}}
                    for i in range(start, min(n, start + 2000))
                ],
            )


REPLAYS = 300


def test_replays_are_bounded_per_user_and_others_still_answered(
    server: ServerHandle, home: Home, local: LocalClient, bob: str
) -> None:
    guard = guard_of(server)
    # Enough events that a replay not read by its client cannot finish: it waits on the socket.
    make_events(home, "Raw", 20_000)
    url = f"{server.url}/api/v1/events/stream"
    limits = httpx.Limits(max_connections=REPLAYS + 10, max_keepalive_connections=0)
    with httpx.Client(timeout=TIMEOUT, limits=limits) as c:

        def open_replay(_: int) -> httpx.Response:
            return c.send(c.build_request("GET", url, params={"since": 0}, headers=bearer(bob)), stream=True)

        with ThreadPoolExecutor(32) as pool:
            responses = list(pool.map(open_replay, range(REPLAYS)))
        try:
            admitted = [r for r in responses if r.status_code == 200]
            refused = [r for r in responses if r.status_code != 200]
            assert len(admitted) == home.settings.replays_per_user
            for r in refused:
                r.read()
                assert r.status_code == 429
                body = r.json()
                assert body["code"] == "too_many_requests" and "replaying" in body["error"]
                assert int(r.headers["Retry-After"]) > 0
            # The same user's other requests, and a stream from now on, are still served.
            assert whoami(server, bob)["name"] == "bob"
            latest = home.events.latest()
            with c.stream("GET", url, params={"since": latest}, headers=bearer(bob)) as live:
                assert live.status_code == 200
            # Another user is not limited by bob's replays.
            assert whoami(server, home.admin_token())["is_admin"] is True
        finally:
            for r in responses:
                r.close()
    assert wait_for("no follower open", lambda: guard.open == 0, timeout=TIMEOUT)
    # Slots are given back on disconnect: a replay is admitted again and reads every event.
    with httpx.stream("GET", url, params={"since": 0, "kinds": "test."}, headers=bearer(bob), timeout=TIMEOUT) as r:
        assert r.status_code == 200
        seen = 0
        for line in r.iter_lines():
            if line.startswith("event: test.filler"):
                seen += 1
                if seen == 20_000:
                    break
    assert seen == 20_000


# ------------------------------------------------------------------ the token is re-checked


def read_sse(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            fields[key] = value


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # handed to the test
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def ends(thread: threading.Thread) -> bool:
    thread.join(TIMEOUT)
    return not thread.is_alive()


@pytest.fixture(params=["revoked", "expired"])
def ending_token(request: pytest.FixtureRequest, local: LocalClient, bob: str) -> tuple[str, Callable[[], None]]:
    """A token of bob's and how it ends: revoked by the test, or expiring by itself in 3 s."""
    if request.param == "revoked":
        new = local.create_token("bob")
        return new.token, lambda: local.revoke_token(new.id)
    return local.create_token("bob", ttl=3).token, lambda: None


def test_sse_stream_ends_with_an_error_event_when_the_token_ends(
    server: ServerHandle, ending_token: tuple[str, Callable[[], None]], bob: str
) -> None:
    token, end = ending_token
    guard = guard_of(server)

    def stream() -> list[dict[str, str]]:
        with httpx.stream("GET", f"{server.url}/api/v1/events/stream", headers=bearer(token), timeout=TIMEOUT) as r:
            assert r.status_code == 200
            return list(read_sse(r.iter_lines()))

    thread, out = in_thread(stream)
    assert wait_for("one follower open", lambda: guard.open == 1, timeout=TIMEOUT)
    end()
    assert ends(thread), "the stream outlived its token"
    got = out[0]
    assert not isinstance(got, BaseException), got
    last = got[-1]
    assert last["event"] == "error"
    error = json.loads(last["data"])
    assert error["code"] == "unauthorized" and error["status"] == 401
    assert "revoked" in error["error"] or "expired" in error["error"]
    assert wait_for("no follower open", lambda: guard.open == 0, timeout=TIMEOUT)
    # The token no longer opens a stream.
    r = httpx.get(f"{server.url}/api/v1/events/stream", headers=bearer(token), timeout=TIMEOUT)
    assert r.status_code == 401


def test_log_follow_ends_when_the_token_ends(
    server: ServerHandle, held: Held, ending_token: tuple[str, Callable[[], None]]
) -> None:
    token, end = ending_token
    url = f"{server.url}/api/v1/tasks/{held.task_id}/logs"
    opened = threading.Event()

    def follow() -> str:
        with httpx.stream("GET", url, params={"follow": True}, headers=bearer(token), timeout=TIMEOUT) as r:
            assert r.status_code == 200
            chunks = r.iter_text()
            text = read_until(chunks, "holding")
            opened.set()
            return text + "".join(chunks)

    thread, out = in_thread(follow)
    assert opened.wait(TIMEOUT)
    end()
    assert ends(thread), "the log follow outlived its token"
    text = out[0]
    assert isinstance(text, str), text
    assert "[datamill] log stream closed: the token" in text
    assert "released" not in text  # the task is still running: the stream was closed, not finished


def test_run_wait_answers_401_when_the_token_ends(
    server: ServerHandle, held: Held, ending_token: tuple[str, Callable[[], None]]
) -> None:
    token, end = ending_token
    guard = guard_of(server)

    def wait() -> httpx.Response:
        return httpx.get(
            f"{server.url}/api/v1/runs/{held.run_id}", params={"wait": 60}, headers=bearer(token), timeout=TIMEOUT
        )

    thread, out = in_thread(wait)
    assert wait_for("one follower open", lambda: guard.open == 1, timeout=TIMEOUT)
    end()
    assert ends(thread), "the wait outlived its token"
    r = out[0]
    assert isinstance(r, httpx.Response), r
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"


def test_events_wait_answers_401_when_the_token_is_revoked(
    server: ServerHandle, local: LocalClient, bob: str, home: Home
) -> None:
    new = local.create_token("bob")
    guard = guard_of(server)
    since = home.events.latest()

    def wait() -> httpx.Response:
        return httpx.get(
            f"{server.url}/api/v1/events",
            params={"since": since, "wait": 60},
            headers=bearer(new.token),
            timeout=TIMEOUT,
        )

    thread, out = in_thread(wait)
    assert wait_for("one follower open", lambda: guard.open == 1, timeout=TIMEOUT)
    local.revoke_token(new.id)
    assert ends(thread)
    assert out[0].status_code == 401


def test_losing_access_stops_events_and_closes_log_follow(
    server: ServerHandle, held: Held, local: LocalClient, bob: str, home: Home
) -> None:
    guard = guard_of(server)
    local.create_folder("Shared")
    local.share("Shared", "bob", "read")
    url = f"{server.url}/api/v1/events/stream"
    log_url = f"{server.url}/api/v1/tasks/{held.task_id}/logs"
    with (
        httpx.Client(timeout=TIMEOUT) as c,
        c.stream("GET", log_url, params={"follow": True}, headers=bearer(bob)) as log,
    ):
        log_chunks = log.iter_text()
        read_until(log_chunks, "holding")
        since = home.events.latest()
        with c.stream("GET", url, params={"since": since, "kinds": "item."}, headers=bearer(bob)) as r:
            events_seen = read_sse(r.iter_lines())
            next(events_seen)  # the 'retry' line's block: the stream is open
            local.put("Shared", "one.csv", b"1")
            first = next(events_seen)
            assert first["event"] == "item.created" and "one.csv" in first["data"]
            # Bob loses access to both folders: no more of their events, and the log closes.
            local.share("Shared", "bob", "none")
            local.share("Raw", "bob", "none")
            local.put("Shared", "two.csv", b"2")
            rest = "".join(log_chunks)
            assert "[datamill] log stream closed" in rest
            local.as_user("bob").create_folder("Mine")
            local.as_user("bob").put("Mine", "three.csv", b"3")
            nxt = next(events_seen)
            assert "three.csv" in nxt["data"], nxt  # two.csv was skipped
    assert wait_for("no follower open", lambda: guard.open == 0, timeout=TIMEOUT)
