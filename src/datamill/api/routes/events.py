"""The event log, as pages (with optional long poll) and as a Server-Sent Events stream.

* ``GET /api/v1/events?since=N&limit=L&kinds=a,b&wait=S``: events after ``since`` you may see, and
  ``next``, the cursor to continue from (it may pass events you may not see). With ``wait``, an
  empty answer waits up to S seconds (at most 60) for a visible event.
* ``GET /api/v1/events/stream?since=N&kinds=...``: ``text/event-stream``; each event is sent as
  ``id: <seq>``, ``event: <kind>``, ``data: <event JSON>``. A reconnecting client's
  ``Last-Event-ID`` header takes precedence over ``since``. A ``: keep-alive`` comment goes out
  every ~15 s. The stream ends when the client disconnects or the server shuts down.

``kinds`` takes exact kinds or prefixes ending in ``.`` or ``*`` (``item.`` matches
``item.created``), repeated or comma-separated. Only events of folders you may read are shown
(events about no folder, such as users and tokens, only to site admins).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from datamill.api.broadcast import EventBroadcaster
from datamill.api.deps import ActorDep, HomeDep, blocking
from datamill.api.ids import parse_last_event_id
from datamill.api.openapi import event_stream
from datamill.api.schemas import EventsOut
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
    home: HomeDep,
    since: int = Query(0, ge=0, le=INT64_MAX, description="Return events after this seq."),
    limit: int = Query(1000, ge=1, le=10_000, description="Read at most this many events of the log."),
    kinds: list[str] | None = Query(None, description=KINDS_DOC),
    wait: float = Query(0, ge=0, le=MAX_WAIT, description="Seconds to wait for an event if there is none yet."),
) -> dict[str, Any]:
    """Events after ``since`` that you may see, oldest first, and the cursor to continue from."""
    wanted = split_kinds(kinds)
    broadcaster: EventBroadcaster = request.app.state.broadcaster
    deadline = time.monotonic() + wait
    cursor = since
    while True:
        events, cursor, full = await blocking(read_visible, home, actor, cursor, limit, wanted)
        remaining = deadline - time.monotonic()
        if events or remaining <= 0:
            break
        if not full and not await broadcaster.wait(cursor, remaining):
            break
    return {"events": [e.to_dict() for e in events], "next": cursor}


def sse_event(ev: EventRecord) -> str:
    """One event in ``text/event-stream`` framing."""
    return f"id: {ev.seq}\nevent: {ev.kind}\ndata: {json.dumps(ev.to_dict(), separators=(',', ':'))}\n\n"


class EventStreamResponse(StreamingResponse):
    """A streaming response that always stops when the client disconnects.

    Starlette only watches for the disconnect message with older ASGI servers; an event stream
    can sit idle for minutes, so it listens for it itself whatever the server's spec version.
    """

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:

            async def stream() -> None:
                await self.stream_response(send)
                tg.cancel_scope.cancel()

            tg.start_soon(stream)
            await self.listen_for_disconnect(receive)
            tg.cancel_scope.cancel()


async def _stream(
    request: Request, home: Home, actor: Actor, cursor: int, kinds: list[str] | None
) -> AsyncIterator[str]:
    state = request.app.state
    broadcaster: EventBroadcaster = state.broadcaster
    keepalive: float = state.sse_keepalive
    state.active_streams += 1
    try:
        yield "retry: 3000\n: connected\n\n"
        last_sent = time.monotonic()
        while not broadcaster.closed:
            events, cursor, full = await blocking(read_visible, home, actor, cursor, STREAM_BATCH, kinds)
            for ev in events:
                yield sse_event(ev)
            if events:
                last_sent = time.monotonic()
            if full:
                continue
            if time.monotonic() - last_sent >= keepalive:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
            await broadcaster.wait(cursor, max(0.05, keepalive - (time.monotonic() - last_sent)))
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
    home: HomeDep,
    since: int = Query(0, ge=0, le=INT64_MAX, description="Start after this seq."),
    kinds: list[str] | None = Query(None, description=KINDS_DOC),
    last_event_id: str | None = Header(None, description="Resume after this seq (sent by reconnecting clients)."),
) -> EventStreamResponse:
    """Events as they are appended, as Server-Sent Events."""
    resumed = parse_last_event_id(last_event_id)
    cursor = since if resumed is None else resumed
    return EventStreamResponse(
        _stream(request, home, actor, cursor, split_kinds(kinds)),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
