"""The event log page: ``/events`` (the newest events the user may see, filterable by kind and
folder) and ``/events/live`` (new ones as they are appended, as rendered rows).

Only what the user may see is read: the same :meth:`~datamill.store.store.Store.visible_events`
filter as ``/api/v1/events``, with its redactions. A folder filter names a folder the user may
read; one they may not read gets the same answer as one that does not exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy import select

from datamill.api.deps import blocking
from datamill.db.models import User
from datamill.events import EventRecord
from datamill.home import Home
from datamill.limits import INT64_MAX
from datamill.store import lookups
from datamill.store.access import Actor
from datamill.store.names import split_path
from datamill.web.live import Message, live_response
from datamill.web.render import environment, render
from datamill.web.session import SessionDep

router = APIRouter(include_in_schema=False)

#: The kind filter's choices: prefixes of event kinds.
KIND_CHOICES = (
    ("", "All kinds"),
    ("item.", "Items"),
    ("folder.", "Folders"),
    ("metadata.", "Metadata"),
    ("access.", "Sharing"),
    ("run.", "Runs"),
    ("task.", "Tasks"),
    ("dataflow.", "Dataflows"),
    ("pipeline.", "Pipelines"),
    ("user.", "Users"),
    ("token.", "Tokens"),
    ("group.", "Groups"),
)
#: Events on the page.
SHOWN = 100
#: The page looks this many events back at most (a page of the log at a time) to fill itself.
LOOK_BACK = 20_000
PAGE = 1000


@dataclass(frozen=True)
class EventRow:
    """An event as the page shows it: where (folder path) and who (user name) resolved."""

    event: EventRecord
    folder: str | None
    who: str | None


@dataclass(frozen=True)
class Filter:
    """What the page shows: a kind prefix and a folder (with the folders inside it)."""

    kind: str
    folder: str

    @property
    def kinds(self) -> list[str] | None:
        """The kind filter as the event log reads it."""
        return [self.kind] if self.kind else None

    def keeps(self, row: EventRow) -> bool:
        """Whether an event passes the folder filter."""
        if not self.folder:
            return True
        return row.folder is not None and (row.folder == self.folder or row.folder.startswith(self.folder + "/"))


def describe(home: Home, events: Iterable[EventRecord]) -> list[EventRow]:
    """Events with their folders' paths and their actors' names (events the user may see only)."""
    events = list(events)
    folder_ids = {e.folder_id for e in events if e.folder_id is not None}
    user_ids = {e.actor_id for e in events if e.actor_id is not None}
    with home.db.read() as conn:
        paths = lookups.folder_paths(conn, folder_ids)
        names = dict(conn.execute(select(User.id, User.name).where(User.id.in_(user_ids))).tuples().all())
    return [
        EventRow(e, paths.get(e.folder_id) if e.folder_id else None, names.get(e.actor_id) if e.actor_id else None)
        for e in events
    ]


def check_folder(home: Home, actor: Actor, path: str) -> str | None:
    """The normalised folder path if the user may read it, else None (missing and hidden alike)."""
    norm = "/".join(split_path(path))
    with home.db.read() as conn:
        return norm if norm and lookups.readable_folder_id(conn, actor, norm) is not None else None


def recent(home: Home, actor: Actor, flt: Filter) -> list[EventRow]:
    """The newest :data:`SHOWN` events the user may see that pass the filter, newest first."""
    latest = home.events.latest()
    out: list[EventRow] = []
    start = latest
    while start > 0 and latest - start < LOOK_BACK and len(out) < SHOWN:
        after = max(0, start - PAGE)
        raw = home.events.read(after, PAGE, flt.kinds)
        raw = [e for e in raw if e.seq <= start]
        visible = home.store.visible_events(actor, raw)
        out.extend(r for r in reversed(describe(home, visible)) if flt.keeps(r))
        start = after
    return out[:SHOWN]


def _filter(kind: str, folder: str) -> Filter:
    kinds = {k for k, _ in KIND_CHOICES}
    return Filter(kind if kind in kinds else "", folder.strip().strip("/"))


@router.get("/events")
async def events_page(request: Request, session: SessionDep, kind: str = "", folder: str = "") -> Response:
    """The event log, newest first, updated live."""
    home: Home = request.app.state.home
    flt = _filter(kind, folder)
    error = None
    if flt.folder:
        found = await blocking(check_folder, home, session.actor, flt.folder)
        if found is None:
            error = f"no folder {flt.folder!r} (or you may not see it); check the path"
            rows: list[EventRow] = []
        else:
            flt = Filter(flt.kind, found)
    seq = await blocking(home.events.latest)
    if error is None:
        rows = await blocking(recent, home, session.actor, flt)
    return render(
        request,
        "events/list.html",
        session,
        rows=rows,
        flt=flt,
        choices=KIND_CHOICES,
        seq=seq,
        error=error,
        status=404 if error else 200,
    )


@router.get("/events/live")
async def events_live(
    request: Request, session: SessionDep, since: int = Query(0, ge=0, le=INT64_MAX), kind: str = "", folder: str = ""
) -> Response:
    """New events (that the user may see and that pass the filter) as rendered rows."""
    home: Home = request.app.state.home
    flt = _filter(kind, folder)

    def rows(actor: Actor, events: list[EventRecord]) -> list[Message]:
        template = environment().get_template("events/row.html")
        return [Message("event", template.render(r=r)) for r in describe(home, events) if flt.keeps(r)]

    return await live_response(request, session, since, flt.kinds, rows)
