"""Input that used to make the server answer 500 gets a clear 4xx in the one error shape.

Integers outside a signed 64-bit range (ids, versions, cursors), JSON nested too deeply for
Python's recursive parser (metadata header, find filter, request bodies), a token lifetime of
infinity and cron expressions that never fire. Each over real HTTP, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from datamill.api import ServerHandle
from datamill.client.local import LocalClient
from datamill.home import Home
from datamill.limits import INT64_MAX, MAX_JSON_DEPTH

SHAPE = {"ok", "status", "code", "error", "detail"}
TOO_BIG = str(INT64_MAX + 1)
TOO_SMALL = str(-(2**63) - 1)


@pytest.fixture
def home(make_home: Callable[..., Home], db_url: str) -> Home:
    """The served home: once on SQLite, once on PostgreSQL."""
    return make_home(db_url)


@pytest.fixture
def api(server: ServerHandle, home: Home, local: LocalClient) -> Iterator[httpx.Client]:
    local.create_folder("f")
    local.put("f", "a.txt", b"hello")
    # Generous timeout: saving a dataflow imports its pipeline (pandas) on a busy machine.
    auth = {"Authorization": f"Bearer {home.admin_token()}"}
    with httpx.Client(base_url=f"{server.url}/api/v1", headers=auth, timeout=120) as client:
        yield client


def assert_error(r: httpx.Response, status: int) -> dict[str, object]:
    body = r.json()
    assert r.status_code == status, (r.request.method, r.request.url, r.status_code, body)
    assert set(body) == SHAPE and body["status"] == status
    return dict(body)


# Every route that takes an id, version or cursor: (method, path, query).
OUT_OF_RANGE = [
    ("GET", "/runs/{n}", {}),
    ("GET", "/runs/{n}/tasks", {}),
    ("GET", "/runs/1/tasks", {"after": "{n}"}),
    ("GET", "/runs/1/tasks", {"limit": "{n}"}),
    ("GET", "/runs/{n}/params/blake3:00", {}),
    ("POST", "/runs/{n}/cancel", {}),
    ("POST", "/runs/{n}/retry", {}),
    ("GET", "/runs/{n}/ro-crate", {}),
    ("GET", "/tasks/{n}", {}),
    ("GET", "/tasks/{n}/why", {}),
    ("GET", "/tasks/{n}/logs", {}),
    ("DELETE", "/tokens/{n}", {}),
    ("GET", "/content/f/a.txt", {"version": "{n}"}),
    ("HEAD", "/content/f/a.txt", {"version": "{n}"}),
    ("GET", "/version/f/a.txt", {"version": "{n}"}),
    ("GET", "/lineage/f/a.txt", {"version": "{n}"}),
    ("GET", "/lineage/f/a.txt", {"depth": "{n}"}),
    ("GET", "/events", {"since": "{n}"}),
    ("GET", "/events/stream", {"since": "{n}"}),
    ("GET", "/folder-items/f", {"limit": "{n}"}),
    ("GET", "/runs", {"limit": "{n}"}),
    ("GET", "/events", {"limit": "{n}"}),
]


@pytest.mark.parametrize("n", [TOO_BIG, TOO_SMALL])
def test_integers_outside_int64_are_422(api: httpx.Client, n: str) -> None:
    for method, path, query in OUT_OF_RANGE:
        r = api.request(method, path.format(n=n), params={k: v.format(n=n) for k, v in query.items()})
        if method == "HEAD":
            assert r.status_code == 422, (path, query)
            continue
        body = assert_error(r, 422)
        assert body["code"] == "invalid_request"
        assert "less than or equal" in str(body["error"]) or "greater than or equal" in str(body["error"])


def test_a_huge_content_length_is_422(server: ServerHandle, home: Home, api: httpx.Client) -> None:
    # No HTTP client sends a body shorter than its Content-Length, so the request is written by hand.
    url = urlsplit(server.url)
    request = (
        f"PUT /api/v1/content/f/b.txt HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: Bearer {home.admin_token()}\r\nContent-Length: {TOO_BIG}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(request.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 422"), head
    body = json.loads(payload)
    assert set(body) == SHAPE and "content-length" in body["error"]


def test_a_last_event_id_out_of_range_is_ignored(api: httpx.Client) -> None:
    # Unicode digits ('²'.isdigit() is True) and numbers past int64 are no seq: the stream
    # starts from ``since`` instead of failing once the headers have gone out.
    for bad in [TOO_BIG, "\u00b2", "99999999999999999999999"]:
        headers = {"Last-Event-ID": bad.encode("latin-1")}
        with api.stream("GET", "/events/stream", params={"since": 0}, headers=headers) as r:
            assert r.status_code == 200
            seen = []
            for line in r.iter_lines():
                if line.startswith("event: "):
                    seen.append(line)
                    break
        assert seen == ["event: user.created"], bad


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def test_deeply_nested_json_is_400(api: httpx.Client) -> None:
    deep = nested(2000)  # Python's parser recursion gives up near 1000
    r = api.put("/content/f/b.txt", content=b"x", headers={"X-Datamill-Metadata": deep})
    body = assert_error(r, 400)
    assert body["code"] == "invalid_metadata" and f"deeper than {MAX_JSON_DEPTH}" in str(body["error"])
    for value in [deep, "[" * 2000 + "]" * 2000]:
        body = assert_error(api.get("/find/f", params={"metadata": value}), 400)
        assert body["code"] == "invalid_metadata" and "metadata filter" in str(body["error"])
    # A body too deep for the JSON parser itself.
    for method, path in [("PATCH", "/metadata/f/a.txt"), ("POST", "/folders/g"), ("POST", "/plan")]:
        r = api.request(method, path, content=f'{{"set": {deep}}}', headers={"Content-Type": "application/json"})
        body = assert_error(r, 400)
        assert body["code"] == "invalid_input" and "nested" in str(body["error"])
    # Deep, but parseable: refused as metadata, for folders and items alike.
    value: object = 1
    for _ in range(MAX_JSON_DEPTH):
        value = [value]
    too_deep = {"set": {"a": value}}
    for path in ["/metadata/f/a.txt", "/folder-metadata/f"]:
        body = assert_error(api.patch(path, json=too_deep), 400)
        assert body["code"] == "invalid_metadata" and f"deeper than {MAX_JSON_DEPTH}" in str(body["error"])
    assert_error(api.post("/folders/g", json={"metadata": too_deep["set"]}), 400)
    # Just within the bound still works.
    fine: object = 1
    for _ in range(MAX_JSON_DEPTH - 2):
        fine = [fine]
    assert api.patch("/metadata/f/a.txt", json={"set": {"a": fine}}).status_code == 200
    assert api.get("/find/f", params={"metadata": '{"a": 1}'}).json() == []


def test_an_infinite_token_lifetime_is_422(api: httpx.Client) -> None:
    r = api.post("/tokens", content=b'{"ttl": 1e400}', headers={"Content-Type": "application/json"})
    body = assert_error(r, 422)
    assert "ttl" in str(body["error"])


def test_a_cron_that_never_fires_is_refused_at_save(api: httpx.Client, local: LocalClient) -> None:
    local.create_folder("out")
    spec = {"name": "feb31", "source": "f", "dest": "out", "pipeline": "datamill.demo.pipeline:tabular"}
    for cron in ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4 *"]:
        body = assert_error(api.post("/dataflows", json={**spec, "trigger": f"cron:{cron}"}), 400)
        assert body["code"] == "invalid_dataflow" and "never fires" in str(body["error"])
        assert body["detail"] == {"field": "trigger"}
    # A rare one (29 February) is fine; editing it into a never-firing one is refused too.
    assert api.post("/dataflows", json={**spec, "trigger": "cron:0 0 29 2 *"}).status_code == 201
    body = assert_error(api.patch("/dataflows/feb31", json={"trigger": "cron:0 0 31 2 *"}), 400)
    assert "never fires" in str(body["error"])
    started = api.post("/dataflows/feb31/start")
    assert started.status_code == 200, started.text
    assert api.get("/dataflows/feb31").json()["trigger"] == "cron:0 0 29 2 *"
