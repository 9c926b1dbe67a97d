"""The HTTP executor against a real HTTP server on 127.0.0.1: the parts of the executor contract that apply
(results, messages, timeouts, cancel, unsupported calls, options) and its own (retries, per-app limit)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from datamill.errors import ConfigError, StepFailed, TaskTimeout
from datamill.executors import (
    CommandCall,
    HttpCall,
    HttpResponse,
    LogMessage,
    ProgressMessage,
    PythonCall,
    get_executor,
)
from datamill.executors.http import HttpExecutor
from tests.helpers import free_port

from .conftest import Harness


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.hits: dict[str, int] = {}
        self.released = threading.Event()
        self.slow_started = threading.Event()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: _State

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # the client stopped waiting (the timeout and cancel tests)
            self.wfile.write(body)

    def do_POST(self) -> None:
        st = self.state
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        with st.lock:
            st.hits[path] = st.hits.get(path, 0) + 1
            st.in_flight[path] = st.in_flight.get(path, 0) + 1
            st.most[path] = max(st.most.get(path, 0), st.in_flight[path])
        try:
            if path == "/slow":
                st.slow_started.set()
                st.released.wait(10)
            elif path == "/held":
                st.released.wait(10)
            if path == "/unavailable":
                self._answer(503, b"try later")
            elif path == "/teapot":
                self._answer(418, b"short and stout")
            else:
                self._answer(200, body[::-1] + b"|" + self.path.encode())
        finally:
            with st.lock:
                st.in_flight[path] -= 1


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, _State]]:
    state = _State()
    handler = type("H", (_Handler,), {"state": state})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", state
    finally:
        state.released.set()
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def hx(make_harness: Callable[..., Harness], server: tuple[str, _State]) -> Harness:
    server[1].released.clear()
    server[1].slow_started.clear()
    return make_harness("http")


def test_get_executor_builds_it_and_checks_options() -> None:
    assert isinstance(get_executor("http", concurrency=2), HttpExecutor)
    with pytest.raises(ConfigError) as e:
        get_executor("http", workers=2)
    assert "concurrency" in e.value.message


def test_supports_only_http_calls(hx: Harness) -> None:
    assert hx.executor.supports(HttpCall("http://127.0.0.1:1/"))
    assert not hx.executor.supports(PythonCall(print))
    with pytest.raises(TypeError):
        hx.run(hx.executor.run(CommandCall(["true"]), lambda m: None))


def test_returns_the_response_with_logs_and_progress(hx: Harness, server: tuple[str, _State]) -> None:
    url, _ = server
    result, messages = hx.call(HttpCall(url + "/echo", params=[("k", "v")], body=b"abc"))
    assert isinstance(result, HttpResponse)
    assert result.status == 200 and result.body == b"cba|/echo?k=v" and result.content_type == "text/plain"
    assert result.attempts == 1
    logs = [m.line for m in messages if isinstance(m, LogMessage)]
    progress = [m.fraction for m in messages if isinstance(m, ProgressMessage)]
    assert any("-> 200" in line for line in logs)
    assert progress[0] == 0.0 and progress[-1] == 1.0


def test_streams_a_body_from_a_file(hx: Harness, server: tuple[str, _State], tmp_path: Any) -> None:
    f = tmp_path / "in.bin"
    f.write_bytes(b"x" * 200_000 + b"END")
    result, _ = hx.call(HttpCall(server[0] + "/echo", body_path=str(f)))
    assert result.body.startswith(b"DNE" + b"x" * 10) and len(result.body) == 200_003 + len(b"|/echo")


def test_5xx_is_retried_then_returned(hx: Harness, server: tuple[str, _State]) -> None:
    url, state = server
    before = state.hits.get("/unavailable", 0)
    result, messages = hx.call(HttpCall(url + "/unavailable", retries=2, backoff=0.01))
    assert result.status == 503 and result.attempts == 3
    assert state.hits["/unavailable"] - before == 3
    assert sum("retrying in" in m.line for m in messages if isinstance(m, LogMessage)) == 2


def test_other_statuses_are_not_retried(hx: Harness, server: tuple[str, _State]) -> None:
    url, state = server
    result, _ = hx.call(HttpCall(url + "/teapot", retries=3, backoff=0.01))
    assert result.status == 418 and result.attempts == 1 and state.hits["/teapot"] == 1
    result, _ = hx.call(HttpCall(url + "/unavailable", retries=3, retry_statuses=frozenset({502})))
    assert result.attempts == 1


def test_unreachable_fails_naming_url_and_reason(hx: Harness) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    with pytest.raises(StepFailed) as e:
        hx.call(HttpCall(url, retries=1, backoff=0.01))
    assert url in e.value.message and "connection refused" in e.value.message and "2 attempt(s)" in e.value.message
    assert e.value.detail["reason"] == "unreachable"


def test_timeout_stops_the_request(hx: Harness, server: tuple[str, _State]) -> None:
    url, state = server
    with pytest.raises(TaskTimeout) as e:
        hx.call(HttpCall(url + "/slow"), timeout=0.3)
    assert "0.3 s" in e.value.message
    assert state.slow_started.is_set()


def test_cancel_stops_the_request(hx: Harness, server: tuple[str, _State]) -> None:
    url, state = server

    async def go() -> None:
        task = asyncio.ensure_future(hx.executor.run(HttpCall(url + "/slow"), lambda m: None))
        await asyncio.to_thread(state.slow_started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    hx.run(go())


def test_the_per_app_limit_holds(hx: Harness, server: tuple[str, _State]) -> None:
    url, state = server

    async def go() -> list[HttpResponse]:
        calls = [hx.executor.run(HttpCall(url + "/held", app="held", concurrency=2), lambda m: None) for _ in range(6)]
        running = asyncio.gather(*calls)
        # let the first requests arrive, then release them all
        await asyncio.to_thread(_wait_in_flight, state, 2)
        state.released.set()
        return await running

    results = hx.run(go())
    assert [r.status for r in results] == [200] * 6
    assert state.most["/held"] == 2


def _wait_in_flight(state: _State, n: int) -> None:
    deadline = time.monotonic() + 10
    while state.in_flight.get("/held", 0) < n and time.monotonic() < deadline:
        time.sleep(0.005)
