"""Live pages: server-sent events carrying rendered HTML, fed by the event log.

A live page (the runs list, a run, the event log) opens an ``EventSource`` on one of its own
``.../live`` URLs. The response follows the event log exactly as ``/api/v1/events/stream`` does
(the app's :class:`~datamill.api.streams.StreamGuard` re-checks the session, the
:class:`~datamill.api.broadcast.EventBroadcaster` wakes it, only events the user may see are
read); each batch of new events is turned by the page's ``render`` function into messages whose
data is HTML (a table row), rendered with the same templates as the page. So the browser needs no
templates of its own: ``static/live.js`` puts each row in place by its ``id``.

No update is lost between the page and its stream: the stream starts after the ``seq`` the page
was rendered at (or a reconnect's ``Last-Event-ID``), however far behind the head that is; one
more than a page of events behind catches up a page at a time, as a replay (limited per user,
like ``/api/v1/events/stream``'s). Only the last message of a batch carries the batch's ``id``,
so a client cut off in the middle of a batch resumes before it (rows replace themselves), never
after rows it did not get.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import Request

from datamill.api.ids import parse_last_event_id
from datamill.api.routes.events import STREAM_BATCH, EventStreamResponse, EventWriter, follow_events
from datamill.api.streams import Follower, StreamGuard
from datamill.events import EventRecord
from datamill.home import Home
from datamill.store.access import Actor
from datamill.web.session import Session


@dataclass(frozen=True)
class Message:
    """One server-sent message: its event name and its HTML."""

    event: str
    html: str
    #: what the HTML shows the state of (a run's status), for renderers that act on changes
    state: str = ""


#: Turns a batch of visible events into messages, acting as the given user (runs in a thread).
Renderer = Callable[[Actor, list[EventRecord]], list[Message]]


def sse_message(message: Message, seq: int | None) -> str:
    """``message`` in ``text/event-stream`` framing, each line of its HTML a ``data:`` line; ``id: seq`` if given."""
    lines = "".join(f"data: {line}\n" for line in message.html.splitlines() or [""])
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {message.event}\n{lines}\n"


def _writer(guard: StreamGuard, follower: Follower, render: Renderer) -> EventWriter:
    """Writes a batch as ``render``'s messages, the batch's last seq as the id of the last one."""

    async def write(events: list[EventRecord]) -> AsyncIterator[str]:
        messages = await guard.read(render, follower.actor, events)
        for n, message in enumerate(messages, 1):
            # The id (where a reconnect resumes) only once the whole batch is out.
            yield sse_message(message, events[-1].seq if n == len(messages) else None)

    return write


async def live_response(
    request: Request,
    session: Session,
    since: int,
    kinds: list[str] | None,
    render: Renderer,
    min_interval: float = 0.0,
) -> EventStreamResponse:
    """A live stream of ``render``'s messages for the events after ``since`` (a reconnect resumes)."""
    guard: StreamGuard = request.app.state.guard
    home: Home = request.app.state.home
    resumed = parse_last_event_id(request.headers.get("last-event-id"))
    cursor = since if resumed is None else resumed
    latest = await guard.read(home.events.latest)
    # A cursor past the head (a page of a home since restored from a backup, or a hand-made URL)
    # would wait for seqs the log has not reached and show nothing new until then: start at the head.
    cursor = min(cursor, latest)
    # A page asks from the seq it was rendered at. Starting one far behind at the head instead
    # lost every update in between (the page showed a run running for good): it replays.
    follower = guard.open_follower(session.token, session.actor, replay=latest - cursor > STREAM_BATCH)
    return EventStreamResponse(
        follow_events(request, guard, follower, cursor, kinds, _writer(guard, follower, render), min_interval),
        follower=follower,
        guard=guard,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
