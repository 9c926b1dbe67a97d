"""Bytes and events as streams: ranges, conditional requests, flat memory, SSE, long polls."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from datamill.api import ServerHandle, start_background_server
from datamill.client.local import LocalClient
from datamill.client.remote import RemoteClient
from datamill.home import Home
from tests.helpers import serve, wait_for

DATA = bytes(range(256)) * 4  # 1024 bytes


def auth(home: Home) -> dict[str, str]:
    return {"Authorization": f"Bearer {home.admin_token()}"}


RANGES = [
    # header, status, first byte, last byte
    ("bytes=0-9", 206, 0, 9),
    ("bytes=1000-", 206, 1000, 1023),
    ("bytes=-5", 206, 1019, 1023),
    ("bytes=-5000", 206, 0, 1023),
    ("bytes=1020-5000", 206, 1020, 1023),
    ("bytes=0-", 206, 0, 1023),
    ("bytes = 3 - 4", 206, 3, 4),
    ("bytes=5-3", 200, 0, 1023),  # invalid: ignored, as RFC 9110 says
    ("bytes=0-1,5-6", 200, 0, 1023),  # several ranges: not supported, ignored
    ("items=0-5", 200, 0, 1023),
]


def test_ranges(server: ServerHandle, home: Home) -> None:
    LocalClient(home).create_folder("f")
    LocalClient(home).put("f", "data.bin", DATA)
    with httpx.Client(base_url=server.url, headers=auth(home)) as c:
        for header, status, first, last in RANGES:
            r = c.get("/api/v1/content/f/data.bin", headers={"Range": header})
            assert r.status_code == status, header
            assert r.content == DATA[first : last + 1], header
            assert r.headers["Content-Length"] == str(last - first + 1)
            assert r.headers["Accept-Ranges"] == "bytes"
            if status == 206:
                assert r.headers["Content-Range"] == f"bytes {first}-{last}/{len(DATA)}"


def test_unsatisfiable_ranges(server: ServerHandle, home: Home) -> None:
    local = LocalClient(home)
    local.create_folder("f")
    local.put("f", "data.bin", DATA)
    local.put("f", "empty", b"")
    with httpx.Client(base_url=server.url, headers=auth(home)) as c:
        for path, header in [("data.bin", "bytes=1024-"), ("data.bin", "bytes=2000-3000"), ("data.bin", "bytes=-0")]:
            r = c.get(f"/api/v1/content/f/{path}", headers={"Range": header})
            assert r.status_code == 416, header
            assert r.json()["code"] == "range_not_satisfiable"
            assert r.headers["Content-Range"] == "bytes */1024"
        r = c.get("/api/v1/content/f/empty", headers={"Range": "bytes=0-"})
        assert r.status_code == 416


def test_download_headers_head_and_etag(server: ServerHandle, home: Home) -> None:
    local = LocalClient(home)
    local.create_folder("f")
    v1 = local.put("f", "r é.csv", b"a,b\n", content_type="text/csv")
    v2 = local.put("f", "r é.csv", b"a,b\n1,2\n")
    with httpx.Client(base_url=server.url, headers=auth(home)) as c:
        r = c.get("/api/v1/content/f/r%20%C3%A9.csv")
        assert r.content == b"a,b\n1,2\n"
        assert r.headers["ETag"] == f'"{v2.digest}"'
        assert r.headers["X-Datamill-Digest"] == v2.digest
        assert r.headers["X-Datamill-Version"] == "2"
        assert r.headers["Content-Type"].startswith("text/csv")
        assert "filename*=UTF-8''r%20%C3%A9.csv" in r.headers["Content-Disposition"]
        old = c.get("/api/v1/content/f/r%20%C3%A9.csv", params={"version": 1})
        assert old.content == b"a,b\n" and old.headers["X-Datamill-Digest"] == v1.digest
        head = c.head("/api/v1/content/f/r%20%C3%A9.csv")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["Content-Length"] == str(v2.size)
        same = c.get("/api/v1/content/f/r%20%C3%A9.csv", headers={"If-None-Match": f'"{v2.digest}"'})
        assert same.status_code == 304 and same.content == b""
        assert c.get("/api/v1/content/f/r%20%C3%A9.csv", params={"version": 7}).status_code == 404


class Pattern:
    """A file-like object producing ``size`` bytes of a repeated random block, never all at once."""

    def __init__(self, size: int) -> None:
        self.block = os.urandom(1 << 20)
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        whole, part = divmod(n, len(self.block))
        return self.block * whole + self.block[:part]


def rss_bytes() -> int:
    """This process's resident set size (the server runs in a thread of it)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class PeakRSS:
    """Sample RSS in a thread while a block runs; ``growth`` is the peak above the start."""

    def __init__(self) -> None:
        self.start = rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def test_200_mb_upload_and_download_keep_memory_flat(admin: RemoteClient, home: Home) -> None:
    size = 200 << 20
    admin.create_folder("big")
    admin.put("big", "warm-up.bin", Pattern(4 << 20), size=4 << 20)  # threads, buffers, caches
    sent: list[int] = []
    with PeakRSS() as up:
        info = admin.put("big", "stream.bin", Pattern(size), size=size, progress=sent.append)
    assert info.size == size and sum(sent) == size
    received = 0
    with PeakRSS() as down:
        got, chunks = admin.iter_bytes("big/stream.bin")
        for chunk in chunks:
            received += len(chunk)
    assert received == size and got.digest == info.digest
    assert up.growth < 100 << 20, f"upload grew RSS by {up.growth >> 20} MiB"
    assert down.growth < 100 << 20, f"download grew RSS by {down.growth >> 20} MiB"


@pytest.fixture
def fast_server(home: Home) -> Iterator[ServerHandle]:
    """A server whose idle SSE streams send a keep-alive every 0.2 s."""
    with serve(home, sse_keepalive=0.2) as handle:
        yield handle


def read_event(lines: Iterator[str]) -> dict[str, str]:
    """The next event's fields (comments skipped)."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in fields:
                return fields
            fields = {}
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(": ")
        fields[key] = value
    raise AssertionError("the stream ended")


def test_sse_delivers_new_events_and_resumes(fast_server: ServerHandle, home: Home) -> None:
    local = LocalClient(home)
    local.create_folder("live")
    start = home.events.latest()
    url = f"{fast_server.url}/api/v1/events/stream"
    with httpx.Client(timeout=5) as c:
        with c.stream("GET", url, params={"since": start, "kinds": "item."}, headers=auth(home)) as r:
            assert r.status_code == 200
            assert r.headers["Content-Type"].startswith("text/event-stream")
            lines = r.iter_lines()
            assert next(lines) == "retry: 3000"
            assert next(lines) == ": connected"
            local.put("live", "one.csv", b"1")
            first = read_event(lines)
            assert first["event"] == "item.created" and '"one.csv"' in first["data"]
            keepalive = [next(lines) for _ in range(2)]
            assert ": keep-alive" in keepalive
        # Disconnected: two more items; a reconnect with Last-Event-ID gets both, in order.
        local.put("live", "two.csv", b"2")
        local.set_metadata("live/two.csv", {"x": 1})
        local.put("live", "three.csv", b"3")
        with c.stream(
            "GET",
            url,
            params={"kinds": ["item.created", "metadata."]},
            headers={**auth(home), "Last-Event-ID": first["id"]},
        ) as r:
            lines = r.iter_lines()
            got = [read_event(lines) for _ in range(3)]
    assert [e["event"] for e in got] == ["item.created", "metadata.changed", "item.created"]
    assert [int(e["id"]) for e in got] == sorted(int(e["id"]) for e in got)
    assert int(got[0]["id"]) > int(first["id"])


def test_sse_stops_on_disconnect_and_on_shutdown(home: Home, caplog: pytest.LogCaptureFixture) -> None:
    """A stream ends when its client leaves, and the server's shutdown ends it: the app finishes it.

    Each step first awaits the stream waiting for events, so the disconnect and the stop always
    find it in the same place, and the client leaves only when the test says so (a discarded
    ``iter_lines()`` closes the response, which once raced the ``active_streams == 1`` check).
    No clock decides the outcome: a stream the shutdown did not end would be cut off by uvicorn
    once its graceful timeout passed, which httpx reports as an incomplete body
    (RemoteProtocolError) and uvicorn logs; the timeouts only bound how long a failing run takes.
    """
    handle = start_background_server(home)
    broadcaster = handle.app.state.broadcaster
    url = f"{handle.url}/api/v1/events/stream"
    try:
        with httpx.Client(timeout=60) as c:
            with c.stream("GET", url, headers=auth(home)) as r:
                # Keep the iterator: a discarded one closes the response, i.e. the client leaves at once.
                lines = r.iter_lines()
                next(lines)
                assert handle.app.state.active_streams == 1
                assert wait_for("the stream to wait for events", lambda: broadcaster.waiters == 1)
            # The generator ends first, then the response gives its follower back.
            assert wait_for(
                "no open stream", lambda: handle.app.state.active_streams == handle.app.state.guard.open == 0
            )
            with c.stream("GET", url, headers=auth(home)) as r:
                lines = r.iter_lines()
                next(lines)
                assert wait_for("the stream to wait for events", lambda: broadcaster.waiters == 1)
                stopper = threading.Thread(target=handle.stop)
                stopper.start()
                rest = list(lines)  # the whole body, up to its last chunk: the app ended the stream
                stopper.join(60)
                assert not stopper.is_alive()
        # Shutdown is no error: the stream just ends (after the log's first events, sent from seq 0).
        assert rest[0] == ": connected" and "event: error" not in rest
        assert handle.app.state.active_streams == 0
        assert not [rec for rec in caplog.records if "graceful shutdown exceeded" in rec.getMessage()]
    finally:
        handle.stop()


def test_long_poll_wait_events(admin: RemoteClient, server: ServerHandle, home: Home) -> None:
    local = LocalClient(home)
    local.create_folder("poll")
    since = home.events.latest()
    assert admin.wait_events(since, 0.2) is False
    result: list[object] = []

    def waiter() -> None:
        t0 = time.monotonic()
        result.append(admin.wait_events(since, 10))
        result.append(time.monotonic() - t0)

    thread = threading.Thread(target=waiter)
    thread.start()
    assert wait_for("one waiter", lambda: server.app.state.broadcaster.waiters == 1, timeout=5)
    local.put("poll", "x", b"x")
    thread.join(10)
    assert result[0] is True and isinstance(result[1], float) and result[1] < 5
    page = httpx.get(f"{server.url}/api/v1/events", params={"since": since, "wait": 5}, headers=auth(home)).json()
    assert [e["kind"] for e in page["events"]] == ["item.created"]
    assert page["next"] == page["events"][-1]["seq"]


def test_follow_skips_what_the_caller_may_not_see(
    server: ServerHandle, home: Home, user_client: Callable[..., RemoteClient]
) -> None:
    local = LocalClient(home)
    bob = user_client("bob")
    local.create_folder("hidden")
    for n in range(5):
        local.put("hidden", f"{n}.csv", b"x")
    local.as_user("bob").create_folder("bobs")
    local.as_user("bob").create_folder("bobs/sub")
    seen = []
    for ev in bob.follow(0):
        seen.append(ev)
        if len(seen) == 2:
            break
    assert [e.kind for e in seen] == ["folder.created", "folder.created"]
    assert [e.data["path"] for e in seen] == ["bobs", "bobs/sub"]


class _Unsized:
    """A non-seekable stream of unknown length: the client must send it chunked."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    def read(self, n: int = -1) -> bytes:
        return self.parts.pop(0) if self.parts else b""


def test_upload_of_unknown_length_is_chunked(admin: RemoteClient) -> None:
    admin.create_folder("f")
    parts = [os.urandom(700_000) for _ in range(3)]
    expected = b"".join(parts)
    info = admin.put("f", "unsized.bin", _Unsized(list(parts)))
    assert info.size == len(expected)
    assert admin.get("f/unsized.bin") == expected
