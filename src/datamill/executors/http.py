"""The HTTP executor: an :class:`~datamill.executors.base.HttpCall` is one request to an HTTP app, sent with httpx.

Requests run in the event loop (no thread, no process): an app step spends its time waiting for the
service, so hundreds can be in flight at once. What the executor adds to a bare ``httpx`` request:

* **retries** with exponential backoff on connection errors and on the call's ``retry_statuses``
  (by default every 5xx), each logged without the values of secret headers;
* a **per-app limit**: at most ``call.concurrency`` requests to one ``call.app`` at a time, so a
  batch of 10 000 items does not open 10 000 connections to one small service;
* the **timeout** covers the whole call, retries and waits included (:class:`TaskTimeout`), and a
  cancelled task closes its request at once.

A response that is still an error after the retries is returned, not raised: what an error means
(a CLAMS app's 500 carries an MMIF with the app's message) is for the step to say. A request that
never got an answer raises :class:`StepFailed` naming the URL and the reason.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from datamill.errors import StepFailed, TaskTimeout

from .base import Call, Executor, HttpCall, HttpResponse, LogMessage, OnMessage, ProgressMessage, deliver

__all__ = ["HttpExecutor"]

#: Chunk size when streaming a request body from a file.
_CHUNK = 1 << 16


class HttpExecutor(Executor):
    """Runs :class:`HttpCall` s with one shared ``httpx.AsyncClient``; see the module docstring.

    ``concurrency`` is the per-app limit for calls that do not set their own; ``connect_timeout`` bounds
    each connection attempt (the call's ``timeout`` bounds the whole call).
    """

    name = "http"

    def __init__(
        self, concurrency: int = 8, connect_timeout: float = 10.0, clock: Callable[[], float] = time.time
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._default_concurrency = concurrency
        self._connect_timeout = connect_timeout
        self._clock = clock
        self._client: httpx.AsyncClient | None = None
        self._limits: dict[str, asyncio.Semaphore] = {}

    async def start(self) -> None:
        """Open the connection pool. Idempotent."""
        if self._client is None:
            # No pool-wide cap: the per-app semaphores are the limit that matters.
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(None, connect=self._connect_timeout),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
                follow_redirects=False,
                trust_env=False,
            )

    async def close(self) -> None:
        """Close the connection pool; requests in flight fail. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def supports(self, call: Call) -> bool:
        """Only HTTP calls."""
        return isinstance(call, HttpCall)

    def limit(self, call: HttpCall) -> asyncio.Semaphore:
        """The semaphore of ``call.app`` (made on first use with the call's, or the default, concurrency)."""
        key = call.app or call.url
        sem = self._limits.get(key)
        if sem is None:
            sem = self._limits[key] = asyncio.Semaphore(call.concurrency or self._default_concurrency)
        return sem

    async def run(self, call: Call, on_message: OnMessage, timeout: float | None = None) -> HttpResponse:
        """Send the request; return the final response, or raise ``StepFailed``/``TaskTimeout``."""
        self._check(call)
        assert isinstance(call, HttpCall)
        await self.start()
        try:
            async with asyncio.timeout(timeout):
                return await self._run(call, on_message)
        except TimeoutError:
            raise TaskTimeout(
                f"{call.method} {call.url} ran past the timeout of {timeout:g} s (retries included) and was "
                "stopped; raise the step's timeout or make the app faster",
                url=call.url,
                reason="timeout",
            ) from None

    async def _run(self, call: HttpCall, on_message: OnMessage) -> HttpResponse:
        started = time.perf_counter()
        wait = call.backoff
        for attempt in range(1, call.retries + 2):
            last = attempt == call.retries + 1
            async with self.limit(call):
                deliver(
                    on_message, ProgressMessage(0.0, f"{call.method} {call.url} (attempt {attempt})", self._clock())
                )
                try:
                    response = await self._send(call)
                except httpx.TransportError as exc:
                    reason = _reason(exc)
                    self._log(on_message, f"{call.method} {call.url}: {reason}")
                    if last:
                        raise StepFailed(
                            f"{call.method} {call.url} failed after {attempt} attempt(s): {reason}; check that the app "
                            "is running and reachable",
                            url=call.url,
                            reason="unreachable",
                            attempts=attempt,
                        ) from None
                else:
                    seconds = time.perf_counter() - started
                    self._log(on_message, f"{call.method} {call.url} -> {response.status_code} ({seconds:.3f} s)")
                    if last or response.status_code not in call.retry_statuses:
                        deliver(on_message, ProgressMessage(1.0, f"HTTP {response.status_code}", self._clock()))
                        return HttpResponse(
                            response.status_code,
                            {k.lower(): v for k, v in response.headers.items()},
                            response.content,
                            attempt,
                            seconds,
                        )
            self._log(on_message, f"retrying in {wait:g} s ({call.retries + 1 - attempt} retries left)")
            await asyncio.sleep(wait)
            wait *= 2
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _send(self, call: HttpCall) -> httpx.Response:
        assert self._client is not None
        content: Any = call.body
        headers = dict(call.headers)
        if call.body_path is not None:
            content = _file_chunks(call.body_path)
            # A known length instead of chunked encoding: not every app reads chunked bodies.
            headers["Content-Length"] = str(os.path.getsize(call.body_path))
        request = self._client.build_request(
            call.method, call.url, params=list(call.params), headers=headers, content=content
        )
        return await self._client.send(request)

    def _log(self, on_message: OnMessage, line: str) -> None:
        deliver(on_message, LogMessage(line, self._clock()))


async def _file_chunks(path: str) -> AsyncIterator[bytes]:
    """A file's bytes in chunks, read in a thread so a slow disk does not stall the event loop."""
    with open(path, "rb") as f:
        while True:
            chunk = await asyncio.to_thread(f.read, _CHUNK)
            if not chunk:
                return
            yield chunk


def _reason(exc: httpx.TransportError) -> str:
    """A short reason for a transport error: ``connection refused``, ``timed out``, …"""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        # httpx says "All connection attempts failed"; the OS error under it says why.
        cause: BaseException | None = exc
        while cause is not None and not (isinstance(cause, OSError) and cause.errno):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, ConnectionRefusedError) or "refused" in text.lower():
            return "connection refused"
        if isinstance(cause, OSError) and cause.strerror:
            return f"cannot connect: {cause.strerror.lower()}"
        return f"cannot connect ({text})"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    return f"{type(exc).__name__}: {text}"
