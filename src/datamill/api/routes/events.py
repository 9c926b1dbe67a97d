"""The event log, as pages (with optional long poll) and as a Server-Sent Events stream.

* ``GET /api/v1/events?since=N&limit=L&kinds=a,b&wait=S``: events after ``since`` you may see, and
  ``next``, the cursor to continue from (it may pass events you may not see). With ``wait``, an
  empty answer waits up to S seconds (at most 60) for a visible event.
* ``GET /api/v1/events/stream?since=N&kinds=...``: ``text/event-stream``; each event is sent as
  ``id: <seq>``, ``event: <kind>``, ``data: <event JSON>``. A reconnecting client's
  ``Last-Event-ID`` header takes precedence over ``since``. A ``: keep-alive`` comment goes out
  every ~15 s. The stream ends when the client disconnects or the server shuts down, and with an
  ``event: error`` (the JSON error shape) once the token is revoked or expires. Replays from far
  back are limited per user (429 with ``Retry-After``).

``kinds`` takes exact kinds or prefixes ending in ``.`` or ``*`` (``item.`` matches
``item.created``), repeated or comma-separated. Only events of folders you may read are shown
(events about no folder, such as users and tokens, only to site admins).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from typing import Any

import anyio
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from datamill.api.broadcast import EventBroadcaster
from datamill.api.deps import ActorDep, GuardDep, HomeDep, TokenDep, blocking
from datamill.api.errors import public_error
from datamill.api.ids import parse_last_event_id
from datamill.api.openapi import event_stream
from datamill.api.schemas import EventsOut
from datamill.api.streams import Follower, StreamGuard
from datamill.errors import DatamillError, Unavailable
from datamill.events import EventRecord
from datamill.home import Home
from datamill.limits import INT64_MAX
from datamill.store.access import Actor

router = APIRouter(tags=["events"])

MAX_WAIT = 60.0
STREAM_BATCH = 1000

KINDS_DOC = "Event kinds, or prefixes ending in '.' or '*'; repeated or comma-separated."


def split_kinds(kinds: list[str] | None) -> list[str] | None:
    """``["item.,run.created", "task."]`` -> ``["item.", "run.created", "task."]``; None when empty."""
    out = [k.strip() for entry in kinds or [] for k in entry.split(",") if k.strip()]
    return out or None


def read_visible(
    home: Home, actor: Actor, after: int, limit: int, kinds: list[str] | None
) -> tuple[list[EventRecord], int, bool]:
    """Events after ``after`` the actor may see, the cursor to continue from, and whether the page was full.

    The log's newest ``seq`` is read first: events commit in ``seq`` order, so when the read
    comes back short, every matching event up to that ``seq`` was in it and the cursor can jump
    there, past events filtered out by kind or access (else a waiter would wake for them forever).
    """
    latest = home.events.latest()
    raw = home.events.read(after, limit, kinds)
    visible = home.store.visible_events(actor, raw)
    full = len(raw) >= limit
    cursor = raw[-1].seq if full else max(after, latest, raw[-1].seq if raw else 0)
    return visible, cursor, full


@router.get("/events", response_model=EventsOut, summary="Read events")
async def read_events(
    request: Request,
    actor: ActorDep,
    token: TokenDep,
    guard: GuardDep,
    home: HomeDep,
    since: int = Query(0, ge=0, le=INT64_MAX, description="Return events after this seq."),
    limit: int = Query(1000, ge=1, le=10_000, description="Read at most this many events of the log."),
    kinds: list[str] | None = Query(None, description=KINDS_DOC),
    wait: float = Query(0, ge=0, le=MAX_WAIT, description="Seconds to wait for an event if there is none yet."),
) -> dict[str, Any]:
    """Events after ``since`` that you may see, oldest first, and the cursor to continue from."""
    wanted = split_kinds(kinds)
    if wait <= 0:
        events, cursor, _ = await blocking(read_visible, home, actor, since, limit, wanted)
        return {"events": [e.to_dict() for e in events], "next": cursor}
    broadcaster: EventBroadcaster = request.app.state.broadcaster
    deadline = time.monotonic() + wait
    cursor = since
    with guard.follow(token, actor) as follower:
        while True:
            events, cursor, full = await guard.read(read_visible, home, follower.actor, cursor, limit, wanted)
            remaining = deadline - time.monotonic()
            if events or remaining <= 0:
                break
            if not full and not await follower.pause(broadcaster.wait, cursor, remaining):
                break
            if broadcaster.closed:
                break
        if follower.reason is not None and not isinstance(follower.reason, Unavailable):
            raise follower.reason
    return {"events": [e.to_dict() for e in events], "next": cursor}


def sse_event(ev: EventRecord) -> str:
    """One event in ``text/event-stream`` framing."""
    return f"id: {ev.seq}\nevent: {ev.kind}\ndata: {json.dumps(ev.to_dict(), separators=(',', ':'))}\n\n"


class EventStreamResponse(StreamingResponse):
    """A streaming response that always stops when the client disconnects.

    Starlette only watches for the disconnect message with older ASGI servers; an event stream
    can sit idle for minutes, so it listens for it itself whatever the server's spec version.
    With a ``follower``, the guard is told when the response ends, however it ends (its
    generator may never have started if the client left at once).
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        content: Any,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        follower: Follower | None = None,
        guard: StreamGuard | None = None,
    ) -> None:
        # status_code is in the signature for FastAPI, which reads its default for the OpenAPI document.
        super().__init__(content, status_code=status_code, headers=headers)
        self.follower = follower
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def stream() -> None:
                    await self.stream_response(send)
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                await self.listen_for_disconnect(receive)
                tg.cancel_scope.cancel()
        finally:
            if self.follower is not None and self.guard is not None:
                self.guard.release(self.follower)


def sse_error(reason: DatamillError) -> str:
    """The last message of a stream closed by the server: ``event: error`` with the JSON error shape."""
    return f"event: error\ndata: {json.dumps(public_error(reason), separators=(',', ':'))}\n\n"


#: Writes a batch of visible events as stream text.
EventWriter = Callable[[list[EventRecord]], AsyncIterator[str]]


async def follow_events(
    request: Request,
    guard: StreamGuard,
    follower: Follower,
    cursor: int,
    kinds: list[str] | None,
    write: EventWriter,
    min_interval: float = 0.0,
) -> AsyncGenerator[str, None]:
    """The text of an event stream: the events after ``cursor`` the follower may see, as ``write`` puts them.

    ``/events/stream`` and the web app's live pages follow the log this one way. A ``: keep-alive``
    comment goes out when nothing was sent for the app's ``sse_keepalive`` seconds; after a batch
    that was not a full page, at least ``min_interval`` seconds pass before the next read. The
    stream ends when the server shuts down or the follower is ended, with ``event: error`` unless
    the server is going away.
    """
    home: Home = request.app.state.home
    broadcaster: EventBroadcaster = request.app.state.broadcaster
    keepalive: float = request.app.state.sse_keepalive
    yield "retry: 3000\n: connected\n\n"
    last_sent = time.monotonic()
    while not broadcaster.closed:
        if follower.reason is not None:
            break
        # A page at a time, each read a short one: a replay never holds a thread or a
        # connection for its whole length. Each event is checked against the caller's
        # rights as of the last token re-check.
        events, cursor, full = await guard.read(read_visible, home, follower.actor, cursor, STREAM_BATCH, kinds)
        if follower.reason is not None:
            break
        if events:
            async for text in write(events):
                yield text
            last_sent = time.monotonic()
            if min_interval and not full:
                # A busy run sends many events a second: a live page refreshes once per interval.
                await anyio.sleep(min_interval)
        if full:
            continue
        guard.caught_up(follower)
        if time.monotonic() - last_sent >= keepalive:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        timeout = max(0.05, keepalive - (time.monotonic() - last_sent))
        if not await follower.pause(broadcaster.wait, cursor, timeout):
            break
    if follower.reason is not None and not isinstance(follower.reason, Unavailable):
        yield sse_error(follower.reason)


async def _write_events(events: list[EventRecord]) -> AsyncIterator[str]:
    for ev in events:
        yield sse_event(ev)


async def _stream(
    request: Request, guard: StreamGuard, follower: Follower, cursor: int, kinds: list[str] | None
) -> AsyncIterator[str]:
    state = request.app.state
    state.active_streams += 1
    try:
        async with aclosing(follow_events(request, guard, follower, cursor, kinds, _write_events)) as stream:
            async for text in stream:
                yield text
    finally:
        state.active_streams -= 1


@router.get(
    "/events/stream",
    summary="Stream events (SSE)",
    response_class=EventStreamResponse,
    responses={200: event_stream("A stream of events, each one's `data` an Event.", "#/components/schemas/Event")},
)
async def stream_events(
    request: Request,
    actor: ActorDep,
    token: TokenDep,
    guard: GuardDep,
    home: HomeDep,
    since: int = Query(0, ge=0, le=INT64_MAX, description="Start after this seq."),
    kinds: list[str] | None = Query(None, description=KINDS_DOC),
    last_event_id: str | None = Header(None, description="Resume after this seq (sent by reconnecting clients)."),
) -> EventStreamResponse:
    """Events as they are appended, as Server-Sent Events.

    A stream starting more than a page of events behind the newest is a replay: each user may
    run a few at once (429 with ``Retry-After`` beyond that). The stream ends with an ``error``
    event once the token is revoked or expires.
    """
    resumed = parse_last_event_id(last_event_id)
    cursor = since if resumed is None else resumed
    latest = await guard.read(home.events.latest)
    follower = guard.open_follower(token, actor, replay=latest - cursor > STREAM_BATCH)
    return EventStreamResponse(
        _stream(request, guard, follower, cursor, split_kinds(kinds)),
        follower=follower,
        guard=guard,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
